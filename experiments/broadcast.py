"""Broadcast: one speaker, M listeners at different SNRs; analog vectors serve each at its own quality.

    python -m experiments.broadcast                            # listeners at -3, 3, 10 dB, local Ray
    python -m experiments.broadcast --help
    python -m experiments.broadcast --listener-snrs-db -6 0 6 12 --protocols vector separation uncoded-tokens
    ray submit cluster.yaml experiments/broadcast.py -- --listener-snrs-db -3 3 10

The speaker sends each passage of L tokens once, in n channel uses; the symbols cross one AWGN channel per
listener (``broadcast_v0``, each listener's noise its own) and every listener agent decodes its own copy.
An analog message needs no rate: each listener decodes at the quality its SNR allows. A digital message
carries one rate for everyone: picked for the worst listener, everyone decodes but the good listeners gain
nothing; picked for a better one, the listeners below it lose the frame. Protocols:

- ``vector``: CALM latent means, PCA to n, sent analog; least squares + the CALM decoder (``rate_for = -``).
- ``separation``: range coding under a bigram fitted on train -> 5G LDPC / Polar -> Gray PAM; **one MCS for
  every listener**, picked by the oracle for one listener's SNR: every (code, rate, modulation) of the menu
  plays ``pilot_passages`` (the same passages and noise for each) and the one with that listener's best token
  accuracy plays the trial. One trial per listener SNR (``rate_for``: the SNR the rate was picked for).
- ``uncoded-tokens`` (off by default): the first token ids as raw bits, no rate to pick (``rate_for = -``).

One trial = one (protocol, rate_for, seed): one broadcast of ``episodes`` passages to all listeners, one row
holding every listener's token accuracy and chrF with 95% intervals; ``results.csv`` has one line per
listener. ``summary.md`` tables them (and the diagonal of the digital rows: what separation gives when every
listener gets a link at its own rate, M unicasts at M times the channel uses); ``broadcast.png`` plots them.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

import environments
from agents import SpeakerPolicy, call
from calm.tokenizer import cached_tokenizer
from experiments.broadcast_report import COLUMNS, ROW_COLUMNS, console_summary, long_frame, write_report
from experiments.common.config import unhashed
from experiments.common.links import fit_protocols, game_seed, pick_best
from experiments.common.multiagent import LinkConfig, sigma_of_snr, trial_metrics
from experiments.common.sweep import Plan, Run, Study, SweepResult, cli, run_sweep
from protocols.separation import separation_bound_accuracy

__all__ = ["COLUMNS", "ROW_COLUMNS", "STUDY", "Config", "main", "play_trial", "rate_label", "trial_grid"]

ProtocolName = Literal["vector", "separation", "uncoded-tokens"]
ALL_PROTOCOLS = ("vector", "separation", "uncoded-tokens")
#: protocols with a menu of rates, one of which serves every listener
RATED = ("separation",)
NO_RATE = "-"


@dataclass
class Config(LinkConfig):
    """The broadcast sweep. Grid axes: protocols x rate_for (one per listener SNR for separation) x seeds."""

    listener_snrs_db: tuple[float, ...] = (-3.0, 3.0, 10.0)
    """each listener's SNR in dB (one AWGN channel per listener, sigma = 10^(-SNR/20)); the digital link plays
    one trial with its rate picked for each of them"""
    protocols: tuple[ProtocolName, ...] = unhashed(("vector", "separation"))
    """vector (analog CALM latents), separation (coded digital, one MCS for all) and uncoded-tokens (raw id
    bits, off by default)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.listener_snrs_db or not all(math.isfinite(s) for s in self.listener_snrs_db):
            raise ValueError(f"listener_snrs_db must hold at least one finite SNR, got {self.listener_snrs_db}")
        bad = [p for p in self.protocols if p not in ALL_PROTOCOLS]
        if bad or not self.protocols:
            raise ValueError(f"protocols must be a non-empty subset of {ALL_PROTOCOLS}, got {self.protocols}")


def rate_label(snr_db: float) -> str:
    """The rate policy of a digital trial: the SNR its rate was picked for, e.g. ``-3 dB``."""
    return f"{snr_db:g} dB"


def trial_grid(cfg: Config, skip: set[str] = frozenset()) -> list[dict[str, Any]]:
    """Every (protocol, rate_for, seed) in a fixed order, less the protocols in ``skip``."""
    grid = []
    for p in cfg.protocols:
        if p in skip:
            continue
        targets = list(dict.fromkeys(float(s) for s in cfg.listener_snrs_db)) if p in RATED else [None]
        for target in targets:
            for seed in cfg.seeds:
                spec = {"protocol": p, "rate_for": NO_RATE if target is None else rate_label(target),
                        "rate_snr_db": target, "seed": int(seed)}
                spec["key"] = f"{p}-seed{seed}" if target is None else f"{p}-rate{target!r}dB-seed{seed}"
                grid.append(spec)
    return grid


# ---------------------------------------------------------------------------------------------------------
# one trial


def _decode_all(jobs: list[tuple[Any, tuple]]) -> list[np.ndarray]:
    """``decode(*args)`` on each ``(agent, args)``: submitted together to actors (they decode in parallel)."""
    if jobs and all(hasattr(agent.decode, "remote") for agent, _ in jobs):
        import ray

        return [np.asarray(d, dtype=np.int64) for d in ray.get([a.decode.remote(*args) for a, args in jobs])]
    return [np.asarray(call(agent, "decode", *args), dtype=np.int64) for agent, args in jobs]


def _broadcast(key: str | None, seed: int, speaker, listeners: list, passages: np.ndarray, settings: dict, *,
               episodes: int, decoding: list[int], text: bool = True) -> list[dict[str, float]]:
    """``episodes`` passages broadcast with agent protocol ``key`` (None: nothing can be sent, every listener
    guesses the source model's most likely token); the listeners in ``decoding`` decode (the others answer the
    guess and are not scored). Returns ``trial_metrics`` per listener of ``decoding`` (chrF only with ``text``)."""
    sigmas = [sigma_of_snr(s) for s in settings["snrs_db"]]
    channels = [environments.AWGN(s) for s in sigmas]
    B = min(settings["batch_size"], episodes)
    env = environments.make("broadcast_v0", passages=passages, channels=channels, channel_uses=settings["n"],
                            batch_size=B, task="reconstruct", vocab_size=settings["vocab_size"])
    speak = SpeakerPolicy(speaker, key) if key else None  # the speaker serves every listener: told no channel
    decoded: dict[int, list[np.ndarray]] = {m: [] for m in decoding}
    targets = []
    for step in range(episodes // B):
        obs, _ = env.reset(seed=game_seed(seed, step))
        target = obs["speaker"]  # (B, L)
        answers = {m: np.full_like(target, settings["guess"]) for m in range(len(channels))}
        if key is not None:
            obs, *_ = env.step({"speaker": speak.act(target)})
            heard = [obs[f"listener_{m}"] for m in decoding]
            outs = _decode_all([(listeners[m], (key, h["received"], channels[m], h["gain"]))
                                for m, h in zip(decoding, heard)])
            answers.update(zip(decoding, outs))
        else:
            env.step({"speaker": np.zeros((B, settings["n"]), np.float32)})  # silence: no message at all
        env.step({f"listener_{m}": a for m, a in answers.items()})  # the listeners answer; the episode ends
        targets.append(target)
        for m in decoding:
            decoded[m].append(answers[m])
    tok = cached_tokenizer(settings["tokenizer_path"]) if text else None
    return [trial_metrics(decoded[m], targets, settings["K"], tok) for m in decoding]


def play_trial(spec: dict[str, Any], speaker: Any, listeners: list, passages: np.ndarray,
               settings: dict[str, Any]) -> dict:
    """One grid point: the row (``ROW_COLUMNS``), its ``listeners`` a list of per-listener results. A rated
    protocol's MCS is the oracle's pick for listener ``rate_for``: every MCS plays the same pilot passages and
    noise, scored by that listener's token accuracy; the pick then serves every listener."""
    snrs, n, L = settings["snrs_db"], settings["n"], settings["passage_length"]
    keys = settings["variants"][f"{spec['protocol']}@{n}"] or [None]
    if spec["rate_snr_db"] is not None:
        m = snrs.index(spec["rate_snr_db"])
        pilot = min(settings["pilot"], settings["episodes"])
        key = pick_best(keys, lambda k: _broadcast(k, spec["seed"], speaker, listeners, passages, settings,
                                                   episodes=pilot, decoding=[m], text=False)[0]["token_accuracy"])
    else:
        key = keys[0]
    results = _broadcast(key, spec["seed"], speaker, listeners, passages, settings, episodes=settings["episodes"],
                         decoding=list(range(len(snrs))))
    bits = settings["bits_sent"].get(key) if key else 0
    per_listener = []
    for m, (snr, metrics) in enumerate(zip(snrs, results)):
        sigma = sigma_of_snr(snr)
        capacity = n * environments.AWGN(sigma).capacity_per_use()
        per_listener.append({"listener": m, "snr_db": float(snr), "sigma": sigma, "capacity_bits": float(capacity),
                             "bound_accuracy": _bound(capacity, settings), **metrics})
    row = {"protocol": spec["protocol"], "rate_for": spec["rate_for"], "rate_snr_db": spec["rate_snr_db"],
           "mcs": key.split("#", 1)[1] if key and "#" in key else ("none fits: the listeners guess" if key is None
                                                                    else None),
           "channel_uses": n, "passage_length": L, "bits_sent": math.nan if bits is None else float(bits),
           "listeners": per_listener, "episodes": settings["episodes"], "seed": spec["seed"],
           "checkpoint": settings["checkpoint"]}
    return {k: row[k] for k in ROW_COLUMNS}


def _bound(capacity: float, settings: dict) -> float:
    return float(separation_bound_accuracy(capacity, settings["entropy_bits_per_token"], settings["passage_length"],
                                           settings["fill_accuracy"]))


def _trial(spec: dict[str, Any], *, pool: dict, passages: np.ndarray, settings: dict[str, Any]) -> dict:
    listeners = [pool[f"listener{m}"] for m in range(len(settings["snrs_db"]))]
    return play_trial(spec, pool["speaker"], listeners, passages, settings)


# ---------------------------------------------------------------------------------------------------------
# main


def prepare(cfg: Config, run: Run) -> Plan:
    """Fit the protocols; a speaker and one listener agent per SNR serve every trial."""
    checkpoint = run.checkpoint
    dirs, variants, facts, skipped, passages = fit_protocols(
        cfg, checkpoint, run.dir / "protocols", protocols=cfg.protocols, budgets=[cfg.channel_uses])
    for (name, n), why in skipped.items():
        print(f"[run] {name} cannot be built at n={n}, left out: {why}", flush=True)
    snrs = [float(s) for s in cfg.listener_snrs_db]
    members = {name: (checkpoint, dirs) for name in ["speaker", *(f"listener{m}" for m in range(len(snrs)))]}
    settings = {"snrs_db": snrs, "n": cfg.channel_uses, "episodes": cfg.episodes, "batch_size": cfg.batch_size,
                "passage_length": cfg.passage_length, "vocab_size": facts["vocab_size"], "K": facts["K"],
                "variants": variants, "bits_sent": facts["bits_sent"], "guess": facts["guess"],
                "entropy_bits_per_token": facts["entropy_bits_per_token"], "fill_accuracy": facts["fill_accuracy"],
                "pilot": cfg.pilot_passages, "checkpoint": run.checkpoint_id,
                "tokenizer_path": str(checkpoint / "tokenizer.json")}
    record = {"facts": {k: v for k, v in facts.items() if k != "bits_sent"},
              "skipped": {f"{p}@{n}": why for (p, n), why in skipped.items()}, "variants": variants,
              "results_columns": COLUMNS}
    return Plan(grid=trial_grid(cfg, {name for name, _ in skipped}), trial=_trial, pool=members, record=record,
                shared={"passages": passages, "settings": settings},
                describe=f"{', '.join(cfg.protocols)}; separation's rate picked for each of {len(set(snrs))} listener "
                         f"SNRs; {len(cfg.seeds)} seed{'s' * (len(cfg.seeds) > 1)}; {cfg.episodes} passages of "
                         f"L={cfg.passage_length} in n={cfg.channel_uses} channel uses to listeners at {snrs} dB")


def report(cfg: Config, frame, run: Run, plan: Plan) -> None:
    """summary.md, the plot and the per-listener console table (``frame``: one line per listener)."""
    write_report(frame, run.dir, plots=cfg.plots)
    print(console_summary(frame), flush=True)


# rows/<key>.json: one row per trial (ROW_COLUMNS); results.csv: one line per listener of each (COLUMNS)
STUDY = Study(prefix="broadcast", columns=ROW_COLUMNS, prepare=prepare, report=report, tabulate=long_frame)


def main(cfg: Config) -> SweepResult:
    """Run (or resume) the sweep and write the run directory; prints the per-listener table. ``rows`` counts
    trials (results.csv holds one line per listener of each)."""
    return run_sweep(cfg, STUDY)


if __name__ == "__main__":
    sys.exit(cli(main, Config, prog="python -m experiments.broadcast", description=__doc__.split("\n\n")[0]))
