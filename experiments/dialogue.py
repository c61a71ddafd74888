"""Latent dialogue: two CALM agents continue a shared passage in turns, sending their generated vectors.

    python -m experiments.dialogue --checkpoint runs/bench-k2/ae-k2 --lm-checkpoint runs/bench-k2/calm-k2
    python -m experiments.dialogue --help

An episode: a prompt passage of the held-out (test) split is known to both agents. Agent A continues it
by ``chunks_per_message`` CALM steps (one head sample ``z`` of l dims per K tokens, decoded by argmax and
fed back as the next patch input) and sends the message; B receives it, appends what it decoded to its own
view of the dialogue and replies the same way; ``turns`` messages in all. Both agents host the same CALM
checkpoint (``lm_checkpoint``, or one trained once by ``experiments.common.models.ensure_calm``), each with its
own seeded sampling noise. Protocols (grid axis), on the same seeds (the first message is the same in both):

- ``latent``: the vectors themselves, no detokenise / retokenise: every dimension of every ``z`` is one
  real channel use (n = l per chunk), standardised per dimension and scaled to unit mean power on vectors
  the CALM generated from training prompts (``fit_prompts``), sent analog. The receiver estimates each
  symbol (``lmmse``: ``g y / (g^2 + sigma^2)``, the linear MMSE estimate under the unit-power prior; ``ls``:
  ``y / g``), un-scales and decodes the vectors with its autoencoder (argmax per token). The CALM reads
  token ids (the previous patch's K tokens, embedded), not vectors, so the receiver needs those ids anyway:
  they are its context, and the transcript.
- ``tokens``: the same CALM's decoded token ids sent as uncoded BPSK (``protocols.token``,
  ``ceil(log2 V)`` channel uses per token, unit power): the floor of digital links, not a coded baseline.
  The receiver's CALM reads the decoded ids directly: no encoder or decoder pass at all.

Per message a row reports channel uses, analytic FLOPs (``calm.flops``: the sender's generation; the
receiver's prefill of the message into its CALM; the latent receiver's extra autoencoder decoder pass; a KV
cache kept across turns is assumed, the code itself re-prefills the context each turn), wall time (the
sender's generate call; the link: encode, channel, receive and decode), token accuracy of what the receiver
decoded against what the sender generated, and the first episode's transcript. ``transcripts.md`` in the
run directory shows it at every SNR.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agents import CALMAgentCore, call
from calm.checkpoint import load_config
from calm.data import load_token_ids, make_passages
from calm.energy_transformer import EnergyTransformerConfig
from calm.files import atomic_write_text, read_json
from calm.flops import calm_flops
from calm.tokenizer import cached_tokenizer, load_tokenizer
from experiments.common.config import SweepConfig, unhashed
from experiments.common.models import K2_AUTOENCODER, K2_CALM_STEPS, checkpoint_id, ensure_calm
from experiments.common.sweep import Plan, Run, Study, SweepResult, cli, make_channel, run_sweep
from experiments.common.tables import mean_interval
from experiments.dialogue_report import write_report
from protocols.metrics import snr_db
from protocols.token import UncodedTokenProtocol, UncodedTokenProtocolConfig

__all__ = ["COLUMNS", "STUDY", "Config", "SweepResult", "main", "play_trial", "trial_grid"]

PROTOCOLS = ("latent", "tokens")
COLUMNS = [
    "protocol", "channel", "sigma", "snr_db", "message_tokens", "channel_uses", "channel_uses_per_token", "bits_sent",
    "capacity_bits", "flops_sender", "flops_receiver", "flops_message", "token_accuracy", "token_accuracy_ci_low",
    "token_accuracy_ci_high", "message_exact", "wall_generate_s", "wall_link_s", "wall_message_s", "latent_power",
    "messages", "episodes", "turns", "seed", "checkpoint", "transcript",
]


@dataclass
class Config(SweepConfig):
    """The latent dialogue. Grid axes: protocols x channels x sigmas x seeds."""

    tokenizer: str = K2_AUTOENCODER["tokenizer"]
    """tokenizer spec when training an autoencoder (a checkpoint brings its own)"""
    ae_preset: str = K2_AUTOENCODER["ae_preset"]
    """autoencoder size preset when training one (tiny-k2: K = 2, l = 16, the CALM's autoencoder)"""
    ae_steps: int = K2_AUTOENCODER["ae_steps"]
    """optimiser steps when training the autoencoder"""
    lm_checkpoint: str | None = None
    """CALM (EnergyTransformer) checkpoint on the autoencoder; none: train the tiny-k2 one once (about 6 min)"""
    calm_steps: int = K2_CALM_STEPS
    """optimiser steps when training the CALM"""
    protocols: tuple[Literal["latent", "tokens"], ...] = unhashed(PROTOCOLS)
    """latent: the generated vectors sent analog; tokens: their decoded ids as uncoded BPSK (module docstring)"""
    channels: tuple[Literal["awgn", "erasure", "rayleigh"], ...] = unhashed(("awgn",))
    """awgn; rayleigh (one gain per message, told to the receiver); erasure (erasure_p, then AWGN)"""
    erasure_p: float = 0.1
    """erasure probability of the erasure channel"""
    fading_block: int | None = None
    """rayleigh: symbols per fading block (none: one gain per message)"""
    sigmas: tuple[float, ...] = unhashed((0.0, 0.1, 0.5, 1.0))
    """noise standard deviations (SNR_dB = -20 log10 sigma: inf, 20, 6, 0)"""
    seeds: tuple[int, ...] = unhashed((0,))
    """prompt, sampling and noise seeds (each seed: the same prompts and sampling seeds for every protocol)"""
    episodes: int = 16
    """dialogues per trial"""
    turns: int = 4
    """messages per dialogue (A, B, A, B, ...)"""
    chunks_per_message: int = 8
    """CALM steps per message (K tokens each)"""
    prompt_tokens: int = 32
    """tokens of the shared prompt passage"""
    latent_receiver: Literal["lmmse", "ls"] = "lmmse"
    """latent: per-symbol estimate before decoding (lmmse: g y / (g^2 + sigma^2); ls: y / g)"""
    fit_prompts: int = 64
    """training prompts the CALM continues to fit the latent power normalisation on"""
    num_passages: int = 500
    """held-out (test split) prompt passages the episodes draw from"""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("episodes", "turns", "chunks_per_message", "prompt_tokens", "fit_prompts", "num_passages",
                     "calm_steps"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, allowed in (("protocols", PROTOCOLS), ("channels", ("awgn", "erasure", "rayleigh"))):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {getattr(self, name)}")
        if not self.sigmas or not self.seeds or any(not (math.isfinite(s) and s >= 0) for s in self.sigmas):
            raise ValueError(f"sigmas (finite, >= 0) and seeds must each hold at least one value, got {self.sigmas}")
        if self.episodes > self.num_passages:
            raise ValueError(f"episodes ({self.episodes}) must be <= num_passages ({self.num_passages})")


def trial_grid(cfg: Config) -> list[dict[str, Any]]:
    """Every grid point in a fixed order; ``index`` picks the agent pair."""
    grid = [{"protocol": p, "channel": ch, "sigma": float(s), "seed": int(seed)}
            for p in cfg.protocols for ch in cfg.channels for s in cfg.sigmas for seed in cfg.seeds]
    for i, spec in enumerate(grid):
        spec["index"] = i
        spec["key"] = f"{spec['protocol']}-{spec['channel']}-s{spec['sigma']!r}-seed{spec['seed']}"
    return grid


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def fit_latent_power(agent: Any, train_prompts: np.ndarray, chunks: int) -> dict[str, list[float]]:
    """Per-dimension mean and std of the vectors the CALM generates from ``train_prompts`` (N, T), and the one
    scale that makes the standardised vectors' mean power per symbol exactly 1 on them."""
    z = np.concatenate([call(agent, "dialogue_generate", p, chunks, _seed(i, 3))[0] for i, p in enumerate(train_prompts)])
    mean, std = z.mean(0), z.std(0) + 1e-8
    scale = 1.0 / math.sqrt(float((((z - mean) / std) ** 2).mean()))
    return {"mean": mean.tolist(), "std": std.tolist(), "scale": scale}


# ---------------------------------------------------------------------------------------------------------
# one trial


def lm_config_of(path: str | Path):
    """The ``EnergyTransformerConfig`` of a CALM checkpoint directory (no weights loaded)."""
    meta = load_config(path)
    if meta["model_type"] != "calm":
        raise ValueError(f"{path} holds a {meta['model_type']} checkpoint, not a calm EnergyTransformer")
    return EnergyTransformerConfig.from_dict(meta["config"])


def message_flops(lm_config: Any, context_tokens: int, tokens: int) -> dict[str, float]:
    """Analytic forward FLOPs of one message of ``tokens`` tokens after ``context_tokens`` (``calm.flops``):
    the sender's generation, the receiver's prefill of the message, and one autoencoder decoder pass of it."""
    K = lm_config.K
    ctx = min(context_tokens + tokens // 2, lm_config.max_patches * K)  # mean attention context over the message
    parts = calm_flops(lm_config, context=max(ctx, K)).parts  # per token
    prefill = parts["backbone"] + parts["compress"]
    return {"generate": tokens * (prefill + parts["head_per_sample"] + parts["ae_decoder"]),
            "prefill": tokens * prefill, "decode": tokens * parts["ae_decoder"]}


def play_trial(spec: dict[str, Any], agent_a: Any, agent_b: Any, prompts: np.ndarray, settings: dict[str, Any]) -> dict:
    """One grid point: ``episodes`` dialogues of ``turns`` messages; the row (``COLUMNS``)."""
    K, M, dim = settings["K"], settings["chunks"], settings["latent_dim"]
    T = M * K
    channel = make_channel(spec["channel"], spec["sigma"], erasure_p=settings["erasure_p"],
                           fading_block=settings["fading_block"])
    link = UncodedTokenProtocol(UncodedTokenProtocolConfig(vocab_size=settings["vocab_size"])).fit(
        np.zeros((1, T), dtype=np.int64))
    latent = spec["protocol"] == "latent"
    n = M * dim if latent else link.channel_uses(T)
    mean, std = np.asarray(settings["stats"]["mean"]), np.asarray(settings["stats"]["std"])
    scale, var = settings["stats"]["scale"], spec["sigma"] ** 2
    lm_config = lm_config_of(settings["lm_path"])
    tok = cached_tokenizer(settings["tokenizer_path"])
    agents_ = (agent_a, agent_b)
    rng_prompts = np.random.default_rng(_seed(spec["seed"], 5))
    chosen = rng_prompts.choice(len(prompts), settings["episodes"], replace=False)
    acc, exact, wall_gen, wall_link, power, flops, transcript = [], [], [], [], [], [], None
    for e, p in enumerate(chosen):
        prompt = np.asarray(prompts[p], dtype=np.int64)
        views = [prompt.copy(), prompt.copy()]  # each agent's own view of the dialogue
        lines = [{"turn": 0, "sender": "prompt", "sent": tok.decode(prompt.tolist())}] if e == 0 else None
        for turn in range(settings["turns"]):
            s, r = turn % 2, 1 - turn % 2
            t0 = time.perf_counter()
            z, ids = call(agents_[s], "dialogue_generate", views[s], M, _seed(spec["seed"], e, turn, 1))
            t1 = time.perf_counter()
            rng = np.random.default_rng(_seed(spec["seed"], e, turn, 2))
            if latent:
                x = (((np.asarray(z, dtype=np.float64) - mean) / std) * scale).reshape(1, -1).astype(np.float32)
                y, gain = channel.transmit(x, rng)
                g = gain.astype(np.float64)
                est = (g * y / (g**2 + var) if settings["receiver"] == "lmmse"
                       else np.divide(y, g, out=np.zeros_like(g), where=g != 0))
                heard = np.asarray(call(agents_[r], "dialogue_decode", (est.reshape(M, dim) / scale) * std + mean),
                                   dtype=np.int64)
            else:
                x = link.encode(np.asarray(ids, dtype=np.int64)[None])
                y, gain = channel.transmit(x, rng)
                heard = link.decode(y, channel=channel, gain=gain)[0]
            t2 = time.perf_counter()
            f = message_flops(lm_config, len(views[s]), T)
            flops.append((f["generate"], f["prefill"] + (f["decode"] if latent else 0.0)))
            power.append(float((x.astype(np.float64) ** 2).mean()))
            acc.append(float((heard == ids).mean()))
            exact.append(float((heard == ids).all()))
            wall_gen.append(t1 - t0)
            wall_link.append(t2 - t1)
            views[s] = np.concatenate([views[s], ids])
            views[r] = np.concatenate([views[r], heard])
            if lines is not None:
                lines.append({"turn": turn + 1, "sender": "AB"[s], "sent": tok.decode(ids.tolist()),
                              "received": tok.decode(heard.tolist()), "token_accuracy": acc[-1]})
        transcript = transcript or lines
    capacity = n * channel.capacity_per_use()
    f_send, f_recv = (float(np.mean(v)) for v in zip(*flops))
    row = {"protocol": spec["protocol"], "channel": spec["channel"], "sigma": spec["sigma"],
           "snr_db": snr_db(spec["sigma"]) + 0.0, "message_tokens": T, "channel_uses": n, "channel_uses_per_token": n / T,
           "bits_sent": float("nan") if latent else float(link.bits_sent(T)), "capacity_bits": capacity,
           "flops_sender": f_send, "flops_receiver": f_recv, "flops_message": f_send + f_recv,
           "message_exact": float(np.mean(exact)), "wall_generate_s": float(np.mean(wall_gen)),
           "wall_link_s": float(np.mean(wall_link)), "wall_message_s": float(np.mean(wall_gen) + np.mean(wall_link)),
           "latent_power": float(np.mean(power)), "messages": len(acc), "episodes": settings["episodes"],
           "turns": settings["turns"], "seed": spec["seed"], "checkpoint": settings["checkpoint"],
           "transcript": json.dumps(transcript)}
    row["token_accuracy"], row["token_accuracy_ci_low"], row["token_accuracy_ci_high"] = mean_interval(np.array(acc))
    return {k: row[k] for k in COLUMNS}


def _trial(spec: dict[str, Any], *, pairs: list, prompts: np.ndarray, settings: dict[str, Any]) -> dict:
    a, b = pairs[spec["index"] % len(pairs)]
    return play_trial(spec, a, b, prompts, settings)


# ---------------------------------------------------------------------------------------------------------
# main


def calm_of(cfg: Config, checkpoint: Path) -> Path:
    """The CALM both agents host (``lm_checkpoint``, or the one trained once on the autoencoder): it names the run."""
    return ensure_calm(checkpoint, lm_checkpoint=cfg.lm_checkpoint, runs_dir=cfg.runs_dir, corpus=cfg.corpus,
                       steps=cfg.calm_steps, seed=cfg.ae_seed)


def prepare(cfg: Config, run: Run) -> Plan:
    """The prompts, the latent power normalisation (fitted once per run) and the grid; agent pairs (A, B) both
    host the same CALM, each with its own seeded sampling."""
    checkpoint, lm = run.checkpoint, run.model
    lm_config = lm_config_of(lm)
    M, K, dim = cfg.chunks_per_message, lm_config.K, lm_config.ae_config.latent_dim
    if (cfg.prompt_tokens + cfg.turns * M * K) > lm_config.max_patches * K:
        print(f"[run] the dialogue outgrows the CALM's {lm_config.max_patches * K}-token window: each turn sees its "
              "last tokens only", flush=True)
    tok = load_tokenizer(str(lm / "tokenizer.json"))
    prompts = make_passages(load_token_ids(cfg.corpus, tok, "test", progress=False), cfg.prompt_tokens,
                            max_passages=cfg.num_passages, seed=cfg.ae_seed + 1)
    stats_path = run.dir / "latent_stats.json"
    if stats_path.exists():
        stats = read_json(stats_path, what="sender's latent statistics",
                          fix=f"remove it (rm {stats_path}) and rerun: they are refitted")
    else:  # the sender's normalisation, fitted once per run on training prompts (kept for resumed runs)
        train = make_passages(load_token_ids(cfg.corpus, tok, "train", progress=False), cfg.prompt_tokens,
                              max_passages=cfg.fit_prompts, seed=cfg.ae_seed)
        stats = fit_latent_power(CALMAgentCore(str(checkpoint), {}, lm_checkpoint=str(lm)), train, M)
        atomic_write_text(stats_path, json.dumps(stats) + "\n")
    settings = {"K": K, "chunks": M, "latent_dim": dim, "vocab_size": lm_config.vocab_size, "stats": stats,
                "episodes": cfg.episodes, "turns": cfg.turns, "receiver": cfg.latent_receiver,
                "erasure_p": cfg.erasure_p, "fading_block": cfg.fading_block, "checkpoint": run.checkpoint_id,
                "lm_path": str(lm), "tokenizer_path": str(lm / "tokenizer.json")}
    return Plan(grid=trial_grid(cfg), trial=_trial, shared={"prompts": prompts, "settings": settings}, protocols={},
                lm_checkpoint=str(lm), record={"lm_checkpoint": str(lm), "autoencoder_id": checkpoint_id(checkpoint)},
                describe=f"{len(cfg.protocols)} protocols x {len(cfg.channels)} channels x {len(cfg.sigmas)} sigmas x "
                         f"{len(cfg.seeds)} seeds; {cfg.episodes} dialogues of {cfg.turns} messages of {M * K} tokens "
                         f"(K={K}, l={dim})")


def report(cfg: Config, frame, run: Run, plan: Plan) -> None:
    """summary.md and transcripts.md, and the console summary."""
    print(write_report(frame, run.dir), flush=True)


STUDY = Study(prefix="dialogue", columns=COLUMNS, prepare=prepare, report=report, names_run=calm_of)


def main(cfg: Config) -> SweepResult:
    """Run (or resume) the dialogue sweep and write the run directory (results, summary.md, transcripts.md)."""
    return run_sweep(cfg, STUDY)


if __name__ == "__main__":
    sys.exit(cli(main, Config, prog="python -m experiments.dialogue", description=__doc__.split("\n\n")[0]))
