"""Latent alignment between heterogeneous agents: how much of the vector link survives different models.

    python -m experiments.alignment                       # default sweep, local Ray (10 and 0 dB)
    python -m experiments.alignment --sigmas 0.1 0.316 1  # and 20 dB, in the same run directory
    python -m experiments.alignment --help
    ray submit cluster.yaml experiments/alignment.py -- --pairings same seed --sigmas 0.316

The vector protocol works between two agents only because both hold the same autoencoder. Here the
listener holds another one (``pairing``):

- ``same``: the speaker's own weights (the reference: no alignment needed);
- ``seed``: the same recipe trained from another seed (``other_seed``);
- ``latent``: another latent size l (``other_latent_dim``);
- ``tokenizer``: another tokenizer (``other_tokenizer``), so another segmentation of the same text.

A listener without its own checkpoint (``--seed-checkpoint`` ...) is trained here once. Next to a given speaker
``--checkpoint`` (a converted released CALM autoencoder, say) it copies the speaker's architecture, and the seed
and latent listeners its tokenizer, so that it differs from the speaker in its pairing's respect only.

The speaker sends its vector protocol's symbols (its CALM latent means, PCA to n, analog). The
listener maps what it receives into its own message space with a ``protocols.alignment`` map fitted on
``anchors`` texts both agents encode (the first 16, 64, ... of one pool of training passages; the
listener re-tokenises their text when the tokenizers differ), then decodes with its own protocol. 0
anchors: the identity (the listener reads the speaker's symbols as its own). Methods: orthogonal
Procrustes (scipy), ridge (scikit-learn's RidgeCV), a one-hidden-layer MLP (scikit-learn).

The token protocols need no alignment: the listener decodes the bits with the speaker's public code
book and tokenizer (**the speaker's ids with the speaker's tokenizer** are sent, not bytes), then, when
its own tokenizer differs, re-tokenises the decoded text. ``separation`` is the strongest digital link
(entropy coding + 5G LDPC/Polar + QAM with oracle rate adaptation over ``pilot_passages``).

One trial = (protocol, pairing, method, anchors, sigma, seed) on AWGN: ``episodes`` passages of L
tokens in n channel uses. Rows carry two tasks from the same transmission: **referential success** (the
listener picks the target among ``num_candidates`` passages, its hard receiver: nearest code for the
vector, fewest token mismatches for the tokens) and **reconstruction** (token accuracy and chrF of
what it writes out, in the listener's tokenization: the first L tokens of the text; pads do not count).
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
from experiments.alignment_agents import fit_alignments, prepare_agents, retokenize
from experiments.alignment_report import console_summary, write_report
from experiments.common.config import unhashed
from experiments.common.links import game_seed, pick_best
from experiments.common.multiagent import LinkConfig, draw_candidates, metric_columns, trial_metrics
from experiments.common.sweep import Plan, Run, Study, SweepResult, cli, make_channel, run_sweep
from experiments.common.tables import mean_interval
from protocols.alignment import METHODS, LatentAlignment
from protocols.metrics import snr_db

__all__ = ["COLUMNS", "STUDY", "Config", "PAIRINGS", "fit_alignments", "main", "prepare_agents", "play_trial", "retokenize", "trial_grid"]

Pairing = Literal["same", "seed", "latent", "tokenizer"]
PAIRINGS = ("same", "seed", "latent", "tokenizer")
TOKEN_PROTOCOLS = ("separation", "uncoded-tokens")
COLUMNS = [
    "protocol", "pairing", "method", "anchors", "sigma", "snr_db", "channel_uses", "passage_length",
    *metric_columns(("success", "token_accuracy", "chrf")), "mcs", "anchor_mse", "example", "example_target",
    "episodes", "seed", "speaker", "listener",
]


@dataclass
class Config(LinkConfig):
    """The alignment sweep. Grid axes: pairings x (methods x anchors, for the vector) x sigmas x seeds."""

    pairings: tuple[Pairing, ...] = unhashed(PAIRINGS)
    """listeners: same (the speaker's weights), seed (another seed), latent (another l), tokenizer (another one)"""
    other_seed: int = 1
    """seed pairing: the listener's autoencoder training seed"""
    other_latent_dim: int = 16
    """latent pairing: the listener's latent size l"""
    other_tokenizer: str = "bpe:1024"
    """tokenizer pairing: the listener's tokenizer spec"""
    seed_checkpoint: str | None = None
    """seed pairing: the listener's checkpoint (none: train it once, cached under runs_dir)"""
    latent_checkpoint: str | None = None
    """latent pairing: the listener's checkpoint (none: train it once)"""
    tokenizer_checkpoint: str | None = None
    """tokenizer pairing: the listener's checkpoint (none: train it once)"""
    anchors: tuple[int, ...] = unhashed((0, 16, 64, 256, 1024, 4096))
    """anchor passages the maps are fitted on (0: no map, the identity); nested: the first a of one pool"""
    methods: tuple[Literal["procrustes", "ridge", "mlp"], ...] = unhashed(METHODS)
    """alignment maps (protocols.alignment): procrustes, ridge, mlp"""
    sigmas: tuple[float, ...] = unhashed((0.316, 1.0))
    """AWGN noise standard deviations (SNR_dB = -20 log10 sigma: 10, 0); add 0.1 for 20 dB (same run directory)"""
    token_protocols: tuple[Literal["separation", "uncoded-tokens"], ...] = unhashed(("separation",))
    """the token links compared on the same pairs (separation: coded with oracle rate adaptation)"""
    alignment_unit: Literal["auto", "passage"] = "auto"
    """auto: map chunk by chunk where both ends send the same chunks' full latents (same tokenizer and K, n = L/K
    * l), else whole messages; passage: always whole messages"""
    episodes: int = 128
    """passages per trial"""
    batch_size: int = 128
    """passages per env step"""
    num_candidates: int = 16
    """referential success: candidates the listener picks the target from (the target and uniform distractors)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in (("pairings", PAIRINGS), ("methods", METHODS), ("token_protocols", TOKEN_PROTOCOLS)):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad or (name != "token_protocols" and not getattr(self, name)):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {getattr(self, name)}")
        if not self.anchors or any(isinstance(a, bool) or int(a) != a or a < 0 for a in self.anchors):
            raise ValueError(f"anchors must be integers >= 0, got {self.anchors}")
        if any(0 < a < 4 for a in self.anchors):
            raise ValueError(f"a map needs >= 4 anchors (0: none), got {self.anchors}")
        if not self.sigmas or any(not (math.isfinite(s) and s >= 0) for s in self.sigmas):
            raise ValueError(f"sigmas must be finite and >= 0, got {self.sigmas}")
        if not self.num_candidates >= 2:
            raise ValueError(f"num_candidates must be >= 2, got {self.num_candidates}")
        if not self.other_latent_dim >= 1:
            raise ValueError(f"other_latent_dim must be >= 1, got {self.other_latent_dim}")


def trial_grid(cfg: Config) -> list[dict[str, Any]]:
    """Every grid point in a fixed order; the vector's same pairing needs no map (method none, 0 anchors)."""
    grid = []
    for pairing in cfg.pairings:
        plans = [("none", 0)] + ([] if pairing == "same" else
                                 [(m, int(a)) for m in cfg.methods for a in sorted(set(cfg.anchors)) if a > 0])
        grid += [{"protocol": "vector", "pairing": pairing, "method": method, "anchors": anchors}
                 for method, anchors in plans]
        grid += [{"protocol": p, "pairing": pairing, "method": "-", "anchors": 0} for p in cfg.token_protocols]
    grid = [{**g, "sigma": float(s), "seed": int(seed)} for g in grid for s in cfg.sigmas for seed in cfg.seeds]
    for spec in grid:
        spec["key"] = (f"{spec['protocol']}-{spec['pairing']}-{spec['method']}-a{spec['anchors']}-s{spec['sigma']!r}"
                       f"-seed{spec['seed']}")
    return grid


# ---------------------------------------------------------------------------------------------------------
# one trial


def _play(key: str | None, spec: dict, speaker, listener, passages: np.ndarray, channel, settings: dict, *,
          episodes: int, text: bool = True) -> dict:
    """``episodes`` passages sent with the speaker's protocol ``key``: success, decoded and target batches."""
    n, B, C = settings["channel_uses"], min(settings["batch_size"], episodes), settings["num_candidates"]
    pair = settings["pairings"][spec["pairing"]]
    env = environments.make("reconstruction_v0", passages=passages, channel_uses=n, batch_size=B, channel=channel,
                            vocab_size=settings["V"])
    speak = SpeakerPolicy(speaker, key)
    align = None
    if spec["protocol"] == "vector" and spec["method"] != "none":
        state = settings["maps"][f"{spec['pairing']}-{spec['method']}-a{spec['anchors']}"]
        align, chunks = LatentAlignment.from_arrays(state), state["chunks"]
    speaker_tok = cached_tokenizer(settings["speaker_tokenizer_path"])
    lookup = settings["lookup"]
    out = {"success": [], "decoded": [], "target": [], "mask": []}
    for step in range(episodes // B):
        obs, _ = env.reset(seed=game_seed(spec["seed"], step))
        index = np.array([lookup[row.tobytes()] for row in np.asarray(obs["speaker"], dtype=np.int64)])
        cands, slot = draw_candidates(np.random.default_rng(game_seed(spec["seed"], step) + 1), index, len(passages), C)
        obs, *_ = env.step({"speaker": speak.act(obs["speaker"])})
        received = obs["listener"]["received"]
        if spec["protocol"] == "vector":  # the listener's adapter, then its own receiver and decoder
            heard = received if align is None else align.transform(
                received.reshape(len(received) * chunks, -1)).reshape(len(received), -1).astype(np.float32)
            own = f"vector@{n}"
            decoded = np.asarray(call(listener, "decode", own, heard), dtype=np.int64)
            scores = call(listener, "score", own, heard, pair["targets"][cands], "hard")
        else:  # the speaker's ids with the speaker's code book; re-tokenised when the listener's tokenizer differs
            decoded = np.asarray(call(listener, "decode", key, received, channel), dtype=np.int64)
            scores = call(listener, "score", key, received, passages[cands], "hard", channel)
            if pair["other_tokenizer"] and text:
                decoded, _ = retokenize(decoded, speaker_tok, cached_tokenizer(pair["tokenizer_path"]),
                                        settings["passage_length"])
        out["success"].append((np.argmax(scores, axis=1) == slot).astype(np.float64))
        target = pair["targets"][index] if text or spec["protocol"] == "vector" else passages[index]
        out["decoded"].append(decoded)
        out["target"].append(target)
        out["mask"].append(pair["mask"][index] if text or spec["protocol"] == "vector" else np.ones(target.shape, bool))
    return out


def play_trial(spec: dict[str, Any], speaker: Any, listener: Any, passages: np.ndarray, settings: dict[str, Any]) -> dict:
    """One grid point: the row (``COLUMNS``). The separation link picks its MCS by the oracle's pilot plays."""
    n = settings["channel_uses"]
    channel = make_channel("awgn", spec["sigma"])
    if spec["protocol"] == "vector":
        key = f"vector@{n}"
    else:
        def pilot_accuracy(k: str) -> float:  # token accuracy in the speaker's ids on the pilot passages
            pilot = _play(k, spec, speaker, listener, passages, channel, settings,
                          episodes=min(settings["pilot"], settings["episodes"]), text=False)
            return float(np.mean([(d == t).mean() for d, t in zip(pilot["decoded"], pilot["target"])]))

        key = pick_best(settings["variants"][f"{spec['protocol']}@{n}"] or [None], pilot_accuracy)
    if key is None:
        raise ValueError(f"no {spec['protocol']} code fits n={n}")
    played = _play(key, spec, speaker, listener, passages, channel, settings, episodes=settings["episodes"])
    pair = settings["pairings"][spec["pairing"]]
    tok = cached_tokenizer(pair["tokenizer_path"])
    row = {"protocol": spec["protocol"], "pairing": spec["pairing"], "method": spec["method"],
           "anchors": spec["anchors"], "sigma": spec["sigma"], "snr_db": snr_db(spec["sigma"]) + 0.0,
           "channel_uses": n, "passage_length": settings["passage_length"],
           **trial_metrics(played["decoded"], played["target"], settings["K"], tok, played["mask"]),
           "mcs": key.split("#", 1)[1] if "#" in key else None,
           "anchor_mse": (settings["maps"][f"{spec['pairing']}-{spec['method']}-a{spec['anchors']}"]["info"]["anchor_mse"]
                          if spec["protocol"] == "vector" and spec["method"] != "none" else float("nan")),
           "example": tok.decode(played["decoded"][0][0][played["mask"][0][0]].tolist()),
           "example_target": tok.decode(played["target"][0][0][played["mask"][0][0]].tolist()),
           "episodes": settings["episodes"], "seed": spec["seed"], "speaker": settings["speaker"],
           "listener": pair["listener"]}
    row["success"], row["success_ci_low"], row["success_ci_high"] = mean_interval(np.concatenate(played["success"]))
    return {k: row[k] for k in COLUMNS}


def _trial(spec: dict[str, Any], *, pool: dict, passages: np.ndarray, settings: dict[str, Any]) -> dict:
    return play_trial(spec, pool["speaker"], pool[f"listener-{spec['pairing']}"], passages, settings)


def trial_settings(cfg: Config, facts: dict, maps: dict, passages: np.ndarray) -> dict[str, Any]:
    """What every trial reads (shipped once through Ray's object store)."""
    return {"channel_uses": cfg.channel_uses, "passage_length": cfg.passage_length, "episodes": cfg.episodes,
            "batch_size": cfg.batch_size, "num_candidates": cfg.num_candidates, "pilot": cfg.pilot_passages,
            "K": facts["K"], "V": facts["V"], "variants": facts["variants"], "maps": maps,
            "speaker": facts["speaker"], "speaker_tokenizer_path": facts["speaker_tokenizer_path"],
            "pairings": {p: {k: v for k, v in f.items() if k != "anchors_target"} for p, f in facts["pairings"].items()},
            "lookup": {row.tobytes(): i for i, row in enumerate(np.asarray(passages, dtype=np.int64))}}


# ---------------------------------------------------------------------------------------------------------
# main


def prepare(cfg: Config, run: Run) -> Plan:
    """Train or load every agent's autoencoder, fit the protocols and the alignment maps; the pool holds the speaker
    and one listener per pairing."""
    members, facts, passages = prepare_agents(cfg, run.dir)
    maps = fit_alignments(cfg, facts, run.dir)
    record = {"listeners": {p: f["listener"] for p, f in facts["pairings"].items()},
              "members": {name: str(ckpt) for name, (ckpt, _) in members.items()},
              "maps": {k: {"anchors": v["anchors"], **v["info"]} for k, v in maps.items()}}
    return Plan(grid=trial_grid(cfg), trial=_trial, pool=members, record=record,
                shared={"passages": passages, "settings": trial_settings(cfg, facts, maps, passages)},
                describe=f"{len(cfg.pairings)} pairings, vector maps {list(cfg.methods)} x anchors {list(cfg.anchors)}, "
                         f"token links {list(cfg.token_protocols)}, {len(cfg.sigmas)} sigmas x {len(cfg.seeds)} seeds; "
                         f"{cfg.episodes} passages of L={cfg.passage_length} in n={cfg.channel_uses} channel uses")


def report(cfg: Config, frame, run: Run, plan: Plan) -> None:
    """summary.md, the plots and the console tables of the finished rows."""
    write_report(frame, run.dir, plots=cfg.plots)
    print(console_summary(frame), flush=True)


STUDY = Study(prefix="alignment", columns=COLUMNS, prepare=prepare, report=report)


def main(cfg: Config) -> SweepResult:
    """Run (or resume) the alignment sweep and write the run directory; prints the summary tables."""
    return run_sweep(cfg, STUDY)


if __name__ == "__main__":
    sys.exit(cli(main, Config, prog="python -m experiments.alignment", description=__doc__.split("\n\n")[0]))
