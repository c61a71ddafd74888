"""Reconstruction over the channel: the listener has no candidates and writes out the L token ids.

    python -m experiments.reconstruction                       # default sweep (n = 32, seed 0), local Ray
    python -m experiments.reconstruction --full                # n = 8, 16, 32 (three JSCC adapters), seeds 0 1
    python -m experiments.reconstruction --help
    ray submit cluster.yaml experiments/reconstruction.py -- --channels awgn rayleigh erasure

The DeepJSCC question for a continuous-vector language model: the message must compress (source
coding) and survive noise (channel coding) at once. One trial = one (protocol, channel, rho, sigma,
seed), rho = n / L the bandwidth ratio: ``episodes`` passages sent by a speaker agent and decoded by a
listener agent (``reconstruction_v0``). Protocols:

- ``vector``: CALM latent means, PCA to n, sent analog; least squares + the CALM decoder.
- ``jscc``: a learned channel adapter around the frozen CALM autoencoder (``protocols.jscc_model``), trained once
  per n through a simulated channel at sampled SNRs (the SNR and channel kind given to both ends) and
  cached under ``runs/`` like the autoencoder.
- ``lm-jscc``: JSCC whose receiver is the token baseline LM listening to the channel (``protocols.lm_jscc_model``):
  the JSCC adapter's per-token evidence fused with an LM that reads the evidence of earlier positions; one adapter
  per channel family and n, started from a JSCC adapter trained on that family alone and the token baseline,
  then trained end to end (``lm_jscc_steps``; cached under ``runs/``). ``lm-jscc-noiseless``: the same design
  trained at 60 dB on AWGN, played noiseless only: its own ceiling (off by default, like lm-jscc).
- ``separation``: range coding of the token ids under a bigram model fitted on train (constriction) ->
  Sionna 5G LDPC / Polar -> Gray PAM, with **oracle rate adaptation on channel state only** (what 5G link
  adaptation approximates): per channel state (channel kind, sigma, n, and erasure_p on the erasure channel or
  fading_block on rayleigh) every (code, rate, modulation) of the menu plays the same ``pilot_passages`` (512)
  *validation*-split passages, each once, with the same noise, drawn from a seed derived from the state's key
  (never a trial's seed), and the best token accuracy (the first in menu order on ties) is the pick. The
  trial's test passages and noise play no part in it. Each state's pick is computed once and cached in the run
  directory (``rate_picks/<state>.json``, written atomically; a trial that finds another computing it waits), so
  every seed of a state plays the same MCS and a resumed run reuses it. The trial then plays its test passages
  with the pick: the ``mcs`` column, and ``mcs_val_accuracy`` the validation token accuracy it was picked on
  (empty where there was nothing to pick). Wrong frame bits decode to wrong tokens, counted wrong; unsent
  positions get the source model's best guess; a budget no 5G code fits sends nothing.
- ``separation-lm`` (off by default): the same link coding under the **token baseline LM** (``protocols.lm_source``;
  ``token_lm_checkpoint`` or trained once), mixed with the bigram by ``separation_lm_mix``; its oracle scores a wrong
  frame as the fill-only guess (``separation_lm_oracle``), its trials decode every frame. ``separation_menu`` and
  ``separation_header`` apply to both links (docs/experiments.md, "Separation at its strongest").
- ``uncoded-tokens``: the first token ids as raw bits (the floor); its unsent positions get the bigram's guesses,
  also in a run with separation-lm.
- ``vector-prior`` / ``vector-snap`` (off by default): the vector protocol's symbols decoded by the
  **LM-prior listener** (``protocols.prior``): chunk by chunk, the listener's CALM language model draws
  ``prior_samples`` candidates given the decoded prefix; ``vector-prior`` picks by channel likelihood x
  prior (sample counts; the plain estimate stays a candidate, so a flat prior gives plain decoding),
  ``vector-snap`` snaps the least-squares estimate to the most likely sample. The CALM is ``lm_checkpoint``
  or trained once on the autoencoder (``experiments.common.models.ensure_calm``, ``lm_steps``). E.g.

      python -m experiments.reconstruction --checkpoint runs/bench-k2/ae-k2 --lm-checkpoint runs/bench-k2/calm-k2 \
          --protocols vector vector-prior --channels awgn --rhos 8 --sigmas 2 1 0.5 0.1 --episodes 256
- ``uncoded-tokens-prior`` (off by default): the digital link's counterpart (the LLM-SC idea): the
  ``uncoded-tokens`` symbols decoded token by token with the **token baseline** as the prior (every id's
  exact soft-bit likelihood x the baseline's next-token probability, beam search; unsent positions get the
  baseline's most likely token; ``protocols.prior.token_prior_decode``). The baseline is
  ``token_lm_checkpoint`` or trained once on the autoencoder's tokenizer (``ensure_token_lm``, ``token_lm_steps``,
  about the CALM's training FLOPs).

Rows carry token accuracy, chunk and passage exact match and chrF (sacrebleu, detokenised text) with
95% intervals, capacity bits, bits sent and the **separation bound**: the best token accuracy any
separated scheme can reach (tokens deliverable at capacity under the bigram's measured entropy rate).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from environments.ofdm import OFDM_CHANNELS
from experiments.common.config import SweepConfig, unhashed
from experiments.common.html_report import write_report_extras
from experiments.common.links import LM_JSCC_PROTOCOLS, PRIOR_PROTOCOLS, fit_protocols
from experiments.common.models import ensure_calm, ensure_token_lm
from experiments.common.rate_oracle import (
    cached_pick,
    oracle_key,
    oracle_seed,
    validation_passages,
)
from experiments.common.sweep import Plan, Run, Study, SweepResult, cli, run_sweep
from experiments.common.tables import snr_db_header
from experiments.reconstruction_report import LINES, console_summary, examples, pooled, write_report
from experiments.reconstruction_trials import COLUMNS, METRICS, _play, _trial, pick_rate, play_trial  # noqa: F401

__all__ = ["COLUMNS", "STUDY", "Config", "SweepResult", "cached_pick", "fit_protocols", "main", "oracle_key",
           "oracle_seed", "pick_rate", "play_trial", "trial_grid", "validation_passages"]

ProtocolName = Literal["vector", "jscc", "lm-jscc", "lm-jscc-noiseless", "separation", "separation-lm",
                       "uncoded-tokens", "vector-prior", "vector-snap", "uncoded-tokens-prior"]
ChannelName = str  # awgn, erasure, rayleigh, or an OFDM link <tdl|cdl>-<a..e>-<perfect|ls|lmmse|none> (environments.ofdm)
PROTOCOLS = ("vector", "jscc", "separation", "uncoded-tokens")  # the default comparison
ALL_PROTOCOLS = PROTOCOLS + ("separation-lm",) + LM_JSCC_PROTOCOLS + tuple(PRIOR_PROTOCOLS)


@dataclass
class Config(SweepConfig):
    """The reconstruction sweep. Grid axes: protocols x channels x rhos x sigmas x seeds."""

    FULL: ClassVar[dict[str, Any]] = {"rhos": (0.25, 0.5, 1.0), "seeds": (0, 1)}

    passage_length: int = 32
    """L, tokens per passage (a multiple of the autoencoder's K)"""
    rhos: tuple[float, ...] = unhashed((1.0,))
    """bandwidth ratios rho = n / L (channel uses per token); n = round(rho L). Each n trains its own JSCC
    adapter (about 2.5 min), so the laptop default plays n = 32 only; --full adds 0.25 and 0.5 (same run
    directory, more rows). 0.125 (n = 4) fits no 5G code and costs a fourth adapter: --rhos 0.125 0.25 0.5 1"""
    channels: tuple[ChannelName, ...] = unhashed(("awgn", "rayleigh"))
    """awgn; rayleigh (one gain per message, told to the receiver); erasure (erasure_p, then AWGN); OFDM over 3GPP TDL
    <tdl|cdl>-<a..e>-<perfect|ls|lmmse|none> (docs/channels.md: jscc trains on rayleigh for these)"""
    ofdm_speed: float = unhashed(0.0, if_changed=True)
    """tdl-* and cdl-* channels: terminal speed in m/s"""
    ofdm_interpolation: Literal["nn", "lin"] = unhashed("nn", if_changed=True)
    """tdl-*-ls and cdl-*-ls channels: LS estimates reach the data elements from the nearest pilot symbol, or by
    linear interpolation between pilots"""
    erasure_p: float = 0.1
    """erasure probability of the erasure channel (the jscc adapter is trained at it)"""
    fading_block: int | None = None
    """rayleigh: symbols per fading block (none: one gain per message)"""
    sigmas: tuple[float, ...] = unhashed((0.0, 0.1, 0.178, 0.316, 0.5, 0.708, 1.0, 2.0))
    """noise standard deviations (SNR_dB = -20 log10 sigma: inf, 20, 15, 10, 6, 3, 0, -6)"""
    protocols: tuple[ProtocolName, ...] = unhashed(PROTOCOLS)
    """protocols to compare (module docstring); vector-prior, vector-snap and uncoded-tokens-prior (the LM-prior
    listeners) are off by default"""
    lm_checkpoint: str | None = unhashed(None, if_changed=True)
    """vector-prior/vector-snap: the listener's CALM language model (an EnergyTransformer checkpoint on the
    autoencoder); none: train one once (lm_steps) and cache it under runs_dir"""
    lm_steps: int = unhashed(300, if_changed=True)
    """vector-prior/vector-snap without lm_checkpoint: CALM training steps (300: about 6 min on 2 cores)"""
    prior_samples: int = unhashed(32, if_changed=True)
    """vector-prior/vector-snap: CALM head samples N per chunk (the prior's candidates)"""
    prior_weight: float = unhashed(1.0, if_changed=True)
    """vector-prior, uncoded-tokens-prior: weight of the log prior in the score (0: the likelihood alone, i.e. plain
    decoding)"""
    token_lm_checkpoint: str | None = unhashed(None, if_changed=True)
    """uncoded-tokens-prior, separation-lm: the token baseline (a TokenTransformer checkpoint with the autoencoder's
    tokenizer): the listener's prior, the separation link's source model; none: train one once (token_lm_steps) and
    cache it under runs_dir"""
    token_lm_steps: int = unhashed(900, if_changed=True)
    """uncoded-tokens-prior, separation-lm without token_lm_checkpoint: baseline training steps of 8 windows (900:
    about the training FLOPs of the lm_steps = 300 CALM)"""
    token_prior_beam: int = unhashed(4, if_changed=True)
    """uncoded-tokens-prior: beam search width (1: greedy)"""
    source_model: Literal["unigram", "bigram"] = "bigram"
    """separation: the entropy coder's token model (fitted on train)"""
    separation_codes: tuple[Literal["ldpc", "polar"], ...] = ("ldpc", "polar")
    """separation: the 5G codes whose (rate, modulation) menus the oracle picks from"""
    separation_menu: Literal["standard", "fine"] = unhashed("standard", if_changed=True)
    """separation(-lm): the rates (MCS_MENUS): standard 1/5 .. 0.9; fine adds every 0.05 (2.6x the oracle's time)"""
    separation_header: Literal["fixed", "huffman"] = unhashed("fixed", if_changed=True)
    """separation(-lm): T, the tokens a frame carries, in 6 bits (L = 32) or Huffman-coded (1.6 to 4.7 bits)"""
    separation_lm_mix: float = unhashed(0.0, if_changed=True)
    """separation-lm: the bigram's weight in the LM's coding rows, in [0, 1) (0: the LM alone)"""
    separation_lm_oracle: Literal["fill", "exact"] = unhashed("fill", if_changed=True)
    """separation-lm: the oracle scores a frame with bit errors as the fill-only guess, or exact (an LM decode)"""
    pilot_passages: int = 512
    """separation: validation-split passages (drawn with ae_seed, each played once; rounded down to whole batches)
    every MCS of the menu plays, once per channel state, before the oracle picks the best for every trial of that
    state; the test passages are never played for the pick"""
    jscc_steps: int = 800
    """jscc: adapter training steps (per n, about 2.5 min on 2 idle cores; cached under runs_dir)"""
    jscc_hidden_size: int = 256
    jscc_train_snr_db: float | None = unhashed(None, if_changed=True)
    """jscc: train the adapter at this one Es/N0 in dB (it is then told nothing useful: every SNR clamps to it), for
    the SNR-mismatch comparison (scripts/plot_snr_mismatch.py); none: SNR-adaptive over -6..20 dB (the default)"""
    """jscc: width of the adapter's MLPs"""
    lm_jscc_steps: int = unhashed(800, if_changed=True)
    """lm-jscc: end-to-end training steps of each LM-JSCC adapter (per n and channel family; 800: about 13 min on 2
    idle cores, 27 min when shared; cached under runs_dir with the validation curve in train_info.json)"""
    seeds: tuple[int, ...] = unhashed((0,))
    """passage and noise seeds (each seed: the same passages and noise draws for every protocol); --full adds 1"""
    episodes: int = 256
    """passages per trial"""
    batch_size: int = 256
    """passages per env step"""
    num_passages: int = 2000
    """held-out (test split) passages the trials draw from"""
    fit_passages: int = 4000
    """training passages the protocols are fitted on (the source model uses the whole train split)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("passage_length", "episodes", "batch_size", "num_passages", "fit_passages", "jscc_steps",
                     "lm_jscc_steps",
                     "jscc_hidden_size", "pilot_passages", "lm_steps", "prior_samples", "token_lm_steps",
                     "token_prior_beam"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.episodes % min(self.batch_size, self.episodes):
            raise ValueError(f"episodes ({self.episodes}) must be a multiple of batch_size ({self.batch_size})")
        if not self.rhos or any(not (r > 0 and round(r * self.passage_length) >= 1) for r in self.rhos):
            raise ValueError(f"rhos must be > 0 with round(rho * passage_length) >= 1, got {self.rhos}")
        for s in self.sigmas:
            if not (math.isfinite(s) and s >= 0):
                raise ValueError(f"sigmas must be finite and >= 0, got {s}")
        if not (math.isfinite(self.prior_weight) and self.prior_weight >= 0):
            raise ValueError(f"prior_weight must be finite and >= 0, got {self.prior_weight}")
        for name, allowed in (("protocols", ALL_PROTOCOLS), ("channels", ("awgn", "erasure", "rayleigh", *OFDM_CHANNELS)),
                              ("separation_codes", ("ldpc", "polar"))):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {getattr(self, name)}")
        if not self.sigmas or not self.seeds:
            raise ValueError("sigmas and seeds must each hold at least one value")
        for name, allowed in (("separation_menu", ("standard", "fine")), ("separation_lm_oracle", ("fill", "exact")),
                              ("separation_header", ("fixed", "huffman"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not (isinstance(self.separation_lm_mix, (int, float)) and 0.0 <= self.separation_lm_mix < 1.0):
            raise ValueError(f"separation_lm_mix must be in [0, 1), got {self.separation_lm_mix!r}")
        if self.jscc_train_snr_db is not None and not (-30.0 <= self.jscc_train_snr_db <= 60.0):
            raise ValueError(f"jscc_train_snr_db must be in [-30, 60] dB or none, got {self.jscc_train_snr_db}")
        if not (math.isfinite(self.ofdm_speed) and self.ofdm_speed >= 0):
            raise ValueError(f"ofdm_speed must be finite and >= 0 m/s, got {self.ofdm_speed}")
        if any(c in OFDM_CHANNELS for c in self.channels) and set(self.protocols) & set(LM_JSCC_PROTOCOLS):
            raise ValueError("lm-jscc has no adapter for OFDM channels (tdl-*): leave it out of --protocols")
        if not 0.0 <= self.erasure_p < 1.0:
            raise ValueError(f"erasure_p must be a probability in [0, 1), got {self.erasure_p}")


def channel_uses(cfg: Config, rho: float) -> int:
    """n = round(rho L)."""
    return int(round(rho * cfg.passage_length))


def trial_grid(cfg: Config, skip: set[tuple[str, int]] = frozenset()) -> list[dict[str, Any]]:
    """Every grid point in a fixed order but the (protocol, n) pairs in ``skip``; ``index`` picks the agents."""
    grid = [{"protocol": p, "channel": ch, "rho": float(rho), "channel_uses": channel_uses(cfg, rho),
             "sigma": float(s), "seed": int(seed)}
            for p in cfg.protocols for ch in cfg.channels for rho in cfg.rhos for s in cfg.sigmas
            for seed in cfg.seeds if (p, channel_uses(cfg, rho)) not in skip
            and (p != "lm-jscc-noiseless" or (ch == "awgn" and s == 0.0))]  # the ceiling: noiseless AWGN only
    for i, spec in enumerate(grid):
        spec["index"] = i
        spec["key"] = (f"{spec['protocol']}-{spec['channel']}-rho{spec['rho']!r}-s{spec['sigma']!r}"
                       f"-seed{spec['seed']}")
    return grid


# ---------------------------------------------------------------------------------------------------------
# main


def prepare(cfg: Config, run: Run) -> Plan:
    """The listener's language models (LM-prior protocols only), the protocols at every n, and the grid."""
    checkpoint = run.checkpoint
    lm = token_lm = None
    if {"vector-prior", "vector-snap"} & set(cfg.protocols):  # the listener's CALM language model
        lm = ensure_calm(checkpoint, lm_checkpoint=cfg.lm_checkpoint, runs_dir=cfg.runs_dir, corpus=cfg.corpus,
                         steps=cfg.lm_steps)
    if {"uncoded-tokens-prior", "separation-lm", *LM_JSCC_PROTOCOLS} & set(cfg.protocols):  # the token baseline:
        # the listener's prior, the separation link's source model, the LM-JSCC receiver's start
        token_lm = ensure_token_lm(checkpoint, token_lm_checkpoint=cfg.token_lm_checkpoint, runs_dir=cfg.runs_dir,
                                   corpus=cfg.corpus, steps=cfg.token_lm_steps)
    dirs, variants, facts, skipped, passages = fit_protocols(
        cfg, checkpoint, run.dir / "protocols", protocols=cfg.protocols,
        budgets=[channel_uses(cfg, r) for r in cfg.rhos], token_lm=token_lm)
    for (name, n), why in skipped.items():
        print(f"[run] {name} cannot be built at n={n}, left out: {why}", flush=True)
    record = {"lm_checkpoint": None if lm is None else str(lm),
              "token_lm_checkpoint": None if token_lm is None else str(token_lm),
              "facts": {k: v for k, v in facts.items() if k != "bits_sent"},
              "skipped": {f"{p}@{n}": why for (p, n), why in skipped.items()}, "variants": variants}
    settings = {
        "episodes": cfg.episodes, "batch_size": cfg.batch_size, "passage_length": cfg.passage_length,
        "vocab_size": facts["vocab_size"], "K": facts["K"], "variants": variants, "bits_sent": facts["bits_sent"],
        "entropy_bits_per_token": facts["entropy_bits_per_token"], "fill_accuracy": facts["fill_accuracy"],
        "guess": facts["guess"], "checkpoint": run.checkpoint_id,
        "oracle_passages": validation_passages(cfg, checkpoint), "oracle_dir": str(run.dir / "rate_picks"),
        "erasure_p": cfg.erasure_p, "fading_block": cfg.fading_block, "ofdm_speed": cfg.ofdm_speed,
        "ofdm_interpolation": cfg.ofdm_interpolation,
        "tokenizer_path": str(checkpoint / "tokenizer.json"), "prior_samples": cfg.prior_samples,
        "prior_weight": cfg.prior_weight, "token_prior_beam": cfg.token_prior_beam,
        "lm_oracle_rule": cfg.separation_lm_oracle}
    return Plan(grid=trial_grid(cfg, set(skipped)), trial=_trial, shared={"passages": passages, "settings": settings},
                protocols=dirs, lm_checkpoint=lm, token_lm_checkpoint=token_lm, record=record,
                describe=f"{len(cfg.protocols)} protocols x {len(cfg.channels)} channels x rho in {list(cfg.rhos)} x "
                         f"{len(cfg.sigmas)} sigmas x {len(cfg.seeds)} seeds, less {len(skipped)} infeasible "
                         f"protocol/n; {cfg.episodes} passages of L={cfg.passage_length} each; the source model "
                         f"spends {facts['entropy_bits_per_token']:.2f} bits/token"
                         + (f" (the token LM {facts['entropy_bits_per_token_lm']:.2f})"
                            if "entropy_bits_per_token_lm" in facts else ""))


def report(cfg: Config, frame, run: Run, plan: Plan) -> None:
    """summary.md (with decoded examples), the plots, the HTML report's parts, and the console summary."""
    write_report(frame, run.dir, examples=examples(frame) if len(frame) else None, plots=cfg.plots)
    if len(frame):
        _report_extras(frame, run)
    print(console_summary(frame), flush=True)


def _report_extras(frame, run: Run) -> None:
    """The HTML report's headline (token accuracy with its 95% interval at the lowest, middle and highest finite
    Es/N0 of the grid, per protocol, channel and rho), decoded examples and the reference lines."""
    import numpy as np
    import pandas as pd

    table = pooled(frame)
    table = table[np.isfinite(table["snr_db"])]
    snrs = sorted(table["snr_db"].unique())
    picked = [snrs[i] for i in sorted({0, len(snrs) // 2, len(snrs) - 1})] if snrs else []
    lines = []
    for (protocol, channel, rho, n), g in table.groupby(["protocol", "channel", "rho", "channel_uses"], sort=False):
        row = {"protocol": protocol, "channel": channel, "rho": float(rho), "n": int(n)}
        for snr in picked:
            p = g[g["snr_db"] == snr]
            if len(p):
                row.update({f"acc {snr:.1f} dB": p["token_accuracy"].iloc[0], f"low {snr:.1f}": p["token_accuracy_low"].iloc[0],
                            f"high {snr:.1f}": p["token_accuracy_high"].iloc[0]})
        lines.append(row)
    sent = examples(frame)
    shown = pd.DataFrame([{"protocol": e["protocol"], "channel": e["channel"], "Es/N0 (dB)": snr_db_header(e["sigma"]),
                           "text out": e["text"]} for e in sent[1:]])
    write_report_extras(run.dir, headline=pd.DataFrame(lines), examples=shown,
                        bounds=[f"*{name}*: {what}" for name, what in LINES.values()],
                        headline_note="Token accuracy pooled over seeds (episode-weighted) with its 95% interval "
                                      "(low, high), at the grid's lowest, middle and highest finite Es/N0.",
                        examples_note=f"One held-out passage, {sent[0]['text']!r}, as each protocol delivers it."
                        if sent else "")


STUDY = Study(prefix="reconstruction", columns=COLUMNS, prepare=prepare, report=report)


def main(cfg: Config) -> SweepResult:
    """Run (or resume) the sweep and write the run directory; prints the summary tables."""
    return run_sweep(cfg, STUDY)


if __name__ == "__main__":
    sys.exit(cli(main, Config, prog="python -m experiments.reconstruction", description=__doc__.split("\n\n")[0]))
