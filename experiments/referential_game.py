"""The main experiment: the text referential game over noisy channels, every protocol at equal power and n.

    python -m experiments.referential_game                     # default sweep, local Ray
    python -m experiments.referential_game --help
    ray submit cluster.yaml experiments/referential_game.py -- --sigmas 0 0.5 1 2

One trial = one (protocol, receiver, channel, n, sigma, seed): ``episodes`` games of the referential game
(DESIGN.md section 2) played by a speaker and a listener agent (``agents.CALMAgent`` Ray actors); its row
holds the DESIGN.md section 7 metrics. The listener holds the candidates, so this task tests *channel
coding*: the hash protocol (a random code) is the yardstick, and meaning can show only through hard
distractors. The sweep engine (``experiments/common/sweep.py``) runs the grid with Ray Tune, keeps every
finished row and resumes; ``experiments/referential_game_report.py`` writes the tables, bounds and plots.

Dim letters: B games per env step, C candidates, L tokens per passage, n channel uses.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

import environments
from agents import ListenerPolicy, SpeakerPolicy
from calm.data import corpus_stats, format_corpus_stats
from calm.files import read_json
from environments.ofdm import OFDM_CHANNELS
from experiments.common.config import SweepConfig, unhashed
from experiments.common.links import fit_or_load, game_passages, game_seed, open_autoencoder
from experiments.common.sweep import Plan, Run, Study, SweepResult, cli, make_channel, run_sweep
from experiments.referential_game_report import (
    console_summary,
    leaks,
    write_extras,
    write_report,
)
from protocols import make_protocol
from protocols.metrics import efficiency, fano_delivered_bits, snr_db, wilson_interval

__all__ = ["COLUMNS", "STUDY", "Config", "SweepResult", "fit_game_protocols", "main", "make_channel", "play_trial",
           "trial_grid"]

ProtocolName = Literal["vector", "quantized", "hash", "coded", "uncoded-tokens", "learned-continuous", "learned-gumbel",
                       "learned-reinforce"]
ReceiverName = Literal["soft", "hard"]
ChannelName = str  # awgn, erasure, rayleigh, or an OFDM link <tdl|cdl>-<a..e>-<perfect|ls|lmmse|none> (environments.ofdm)
PROTOCOLS = ("vector", "quantized", "hash", "coded", "uncoded-tokens")
#: emergent pairs trained through the channel on the CALM latent means (``protocols.learned``): not in the default
#: run (each pair trains for about a minute), asked for by name
LEARNED = ("learned-continuous", "learned-gumbel", "learned-reinforce")

# DESIGN.md section 7, in this order
COLUMNS = [
    "protocol", "receiver", "channel", "sigma", "snr_db", "channel_uses", "candidates", "bits_sent",
    "capacity_bits", "success", "success_ci_low", "success_ci_high", "delivered_bits", "efficiency",
    "token_accuracy", "episodes", "seed", "checkpoint",
]


# ---------------------------------------------------------------------------------------------------------
# config


@dataclass
class Config(SweepConfig):
    """The referential-game sweep. Grid axes: protocols x receivers x channels x channel_uses x sigmas x seeds."""

    passage_length: int = 16
    """L, tokens per message (a multiple of the autoencoder's K)"""
    candidates: int = 8
    """C, candidates per game (target + C-1 distractors); log2 C above a point's capacity lets the leak check fire"""
    distractors: Literal["uniform", "hard"] = "uniform"
    """how distractors are drawn (hard: most shared tokens with the target)"""
    channel_uses: tuple[int, ...] = unhashed((8, 32))
    """n, channel-use budgets (the bandwidth axis); every protocol is fitted to each (equal bandwidth)"""
    channels: tuple[ChannelName, ...] = unhashed(("awgn",))
    """awgn: y = x + sigma N; erasure: each symbol erased (0) with prob erasure_p, then AWGN; rayleigh: y = h x + sigma N
    with a Rayleigh gain h per block, told to the receiver"""
    ofdm_speed: float = unhashed(0.0, if_changed=True)
    """tdl-* and cdl-* channels: terminal speed in m/s (Doppler across the OFDM grid)"""
    ofdm_interpolation: Literal["nn", "lin"] = unhashed("nn", if_changed=True)
    """tdl-*-ls and cdl-*-ls channels: LS estimates reach the data elements from the nearest pilot symbol, or by
    linear interpolation between pilots"""
    erasure_p: float = 0.5
    """erasure probability of the erasure channel"""
    fading_block: int | None = None
    """rayleigh: symbols per fading block (none: one gain per message)"""
    sigmas: tuple[float, ...] = unhashed((0.0, 0.316, 0.5, 0.75, 1.0, 1.5, 2.0))
    """noise standard deviations (SNR_dB = -20 log10 sigma: inf, 10, 6, 2.5, 0, -3.5, -6)"""
    protocols: tuple[ProtocolName, ...] = unhashed(PROTOCOLS)
    """protocols to compare (docs/protocols.md); also learned-continuous, learned-gumbel, learned-reinforce"""
    receivers: tuple[ReceiverName, ...] = unhashed(("soft", "hard"))
    """soft: maximum likelihood over the candidates for the channel applied; hard: decide in the protocol's own
    domain (bits after the channel decoder, latents by least squares), then the nearest candidate"""
    quantized_bits: int = 1
    """bits per principal component of the quantized protocol (1: its sign)"""
    coded_source: Literal["hash", "tokens"] = "hash"
    """coded protocol: source bits from a keyed hash of the passage or from its first token ids"""
    coded_code: Literal["ldpc", "polar"] = "ldpc"
    """coded protocol: Sionna 5G LDPC (belief propagation) or Polar (SC-list) code"""
    coded_rate: float = 0.5
    """coded protocol: code rate"""
    coded_modulation: Literal["bpsk", "qpsk", "16qam", "64qam"] = "bpsk"
    """coded protocol: modulation (per real channel use: bpsk and qpsk 1 bit, 16qam 2, 64qam 3)"""
    seeds: tuple[int, ...] = unhashed((0, 1))
    """game and noise seeds (each seed: the same games and noise draws for every protocol; --full: 0 1 2)"""
    episodes: int = 512
    """games per trial"""
    batch_size: int = 256
    """games per env step (one forward pass per agent)"""
    num_passages: int = 2000
    """held-out (test split) passages the games draw from"""
    fit_passages: int = 4000
    """training passages the protocols' normalisation (and PCA) is fitted on"""
    learned_steps: int = unhashed(1500, if_changed=True)
    """learned protocols: training steps of each pair (one pair per protocol and n)"""
    learned_train_snr_db: tuple[float, ...] = unhashed((-9.0, 20.0), if_changed=True)
    """learned protocols: the training SNR in dB, one value or a (low, high) range drawn per message, through the
    first of channels"""
    agent_pairs: int = unhashed(2)
    """speaker/listener actor pairs serving the trials (the listeners do most of the work: two pairs keep two
    cores busy)"""

    # the default is `make demo`, under 3 minutes from a fresh 2-core machine (issue 30): two seeds of three
    FULL: ClassVar[dict[str, Any]] = {"seeds": (0, 1, 2)}

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("passage_length", "quantized_bits", "episodes", "batch_size", "num_passages", "fit_passages"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.candidates, int) and self.candidates >= 2):
            raise ValueError(f"candidates must be an integer >= 2, got {self.candidates!r}")
        if self.episodes % min(self.batch_size, self.episodes):
            raise ValueError(f"episodes ({self.episodes}) must be a multiple of batch_size ({self.batch_size})")
        if self.num_passages < self.candidates:
            raise ValueError(f"num_passages must be >= candidates ({self.candidates}), got {self.num_passages}")
        for s in self.sigmas:
            if not (math.isfinite(s) and s >= 0):
                raise ValueError(f"sigmas must be finite and >= 0, got {s}")
        if not self.channel_uses or any(not isinstance(n, int) or n < 1 for n in self.channel_uses):
            raise ValueError(f"channel_uses must hold integers >= 1, got {self.channel_uses}")
        for name, allowed in (("protocols", PROTOCOLS + LEARNED), ("receivers", ("soft", "hard")),
                              ("channels", ("awgn", "erasure", "rayleigh", *OFDM_CHANNELS))):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {getattr(self, name)}")
        if not self.sigmas or not self.seeds:
            raise ValueError("sigmas and seeds must each hold at least one value")
        if not (math.isfinite(self.ofdm_speed) and self.ofdm_speed >= 0):
            raise ValueError(f"ofdm_speed must be finite and >= 0 m/s, got {self.ofdm_speed}")
        if not 0.0 <= self.erasure_p <= 1.0:
            raise ValueError(f"erasure_p must be a probability in [0, 1], got {self.erasure_p}")
        if self.fading_block is not None and self.fading_block < 1:
            raise ValueError(f"fading_block must be >= 1 or none, got {self.fading_block}")
        if not 0.0 < self.coded_rate < 1.0:
            raise ValueError(f"coded_rate must be in (0, 1), got {self.coded_rate}")
        if any(p in LEARNED for p in self.protocols):
            from protocols.learned import LearnedProtocolConfig

            LearnedProtocolConfig(**self.learned_settings(), budget=8)  # refuses bad steps, SNRs, channel

    def learned_settings(self) -> dict[str, Any]:
        """``LearnedProtocolConfig`` fields of the learned protocols: trained through the first channel."""
        return {"steps": self.learned_steps, "train_snr_db": tuple(self.learned_train_snr_db),
                "train_channel": self.channels[0], "erasure_p": self.erasure_p}


def trial_key(spec: dict[str, Any]) -> str:
    """File-name-safe key of a grid point: ``<protocol>-<receiver>-<channel>-n<n>-s<sigma>-seed<seed>``."""
    return (f"{spec['protocol']}-{spec['receiver']}-{spec['channel']}-n{spec['channel_uses']}-s{spec['sigma']!r}"
            f"-seed{spec['seed']}")


def trial_grid(cfg: Config, skip: set[tuple[str, int]] = frozenset()) -> list[dict[str, Any]]:
    """Every grid point, in a fixed order, but the (protocol, n) pairs in ``skip``; ``index`` picks the agents."""
    grid = [{"protocol": p, "receiver": r, "channel": ch, "channel_uses": int(n), "sigma": float(s), "seed": int(seed)}
            for p in cfg.protocols for r in cfg.receivers for ch in cfg.channels for n in cfg.channel_uses
            for s in cfg.sigmas for seed in cfg.seeds if (p, n) not in skip]
    for i, spec in enumerate(grid):
        spec["index"] = i
        spec["key"] = trial_key(spec)
    return grid


# ---------------------------------------------------------------------------------------------------------
# protocols


def protocol_key(name: str, n: int) -> str:
    """The name an agent knows a fitted protocol by: ``<protocol>@<n>``."""
    return f"{name}@{n}"


def fit_game_protocols(cfg: Config, checkpoint: Path, run_dir: Path):
    """Fit (or reload) every protocol at every budget n; draw the held-out game passages.

    Returns:
        ``(dirs, facts, skipped, passages)``: ``protocol@n -> saved dir``; ``protocol@n -> {channel_uses,
        bits_sent}`` (and ``_model``: K, l, V); ``{(protocol, n): why}`` for budgets a protocol cannot be
        built at (e.g. a 5G code below its smallest block); the test passages ``(N, L)``.
    """
    model, tok = open_autoencoder(checkpoint, cfg.passage_length)
    K, ell, V = model.config.K, model.config.latent_dim, model.config.vocab_size
    L = cfg.passage_length
    train, test = game_passages(cfg, tok)
    coded = {"source": cfg.coded_source, "code": cfg.coded_code, "rate": cfg.coded_rate,
             "modulation": cfg.coded_modulation}
    dirs, facts, skipped = {}, {}, {}
    train_learned_in_parallel(cfg, checkpoint, run_dir, train)
    for name in cfg.protocols:
        for n in cfg.channel_uses:
            try:
                p = fit_or_load(run_dir / "protocols" / protocol_key(name, n), model, lambda name=name, n=n: make_protocol(
                    name, model, budget=n, quantized_bits=cfg.quantized_bits, coded=coded,
                    learned=cfg.learned_settings()).fit(train))
            except ValueError as exc:
                skipped[(name, n)] = str(exc)
                continue
            if p.channel_uses(L) != n:
                raise ValueError(f"protocol {name} takes {p.channel_uses(L)} channel uses, not the budget {n}")
            dirs[protocol_key(name, n)] = str(run_dir / "protocols" / protocol_key(name, n))
            facts[protocol_key(name, n)] = {"channel_uses": n, "bits_sent": p.bits_sent(L)}
    facts["_model"] = {"K": K, "latent_dim": ell, "vocab_size": V}
    return dirs, facts, skipped, test


def _fit_learned(checkpoint: str, passage_length: int, name: str, n: int, settings: dict[str, Any],
                 train: np.ndarray, directory: str) -> float:
    """One learned protocol trained and saved in a worker process (one torch thread); returns its seconds."""
    import time

    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    model, _ = open_autoencoder(Path(checkpoint), passage_length)
    make_protocol(name, model, budget=n, learned=settings).fit(train).save(directory)
    return time.time() - t0


def train_learned_in_parallel(cfg: Config, checkpoint: Path, run_dir: Path, train: np.ndarray) -> None:
    """Train the learned protocols not saved yet, one process per pair, as many at once as there are CPUs
    (``--num-cpus``); each is saved where ``fit_game_protocols`` then loads it. A pair that cannot be built raises
    there again, in the driver, where it is skipped like any protocol."""
    import concurrent.futures
    import multiprocessing
    import os

    todo = [(name, n) for name in cfg.protocols if name in LEARNED for n in cfg.channel_uses
            if not (run_dir / "protocols" / protocol_key(name, n) / "protocol.json").exists()]
    if not todo:
        return
    workers = max(1, min(len(todo), cfg.num_cpus or os.cpu_count() or 1))
    print(f"[run] training {len(todo)} learned pairs ({cfg.learned_steps} steps each), {workers} at a time", flush=True)
    ctx = multiprocessing.get_context("spawn")  # no forked torch or Ray state
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        jobs = {pool.submit(_fit_learned, str(checkpoint), cfg.passage_length, name, n, cfg.learned_settings(), train,
                            str(run_dir / "protocols" / protocol_key(name, n))): (name, n) for name, n in todo}
        for job in concurrent.futures.as_completed(jobs):
            name, n = jobs[job]
            try:
                print(f"[run] trained {name} at n={n} in {job.result():.0f} s", flush=True)
            except ValueError:
                pass  # cannot be built: fit_game_protocols meets the same error and skips the pair


# ---------------------------------------------------------------------------------------------------------
# one trial


def play_trial(spec: dict[str, Any], speaker: Any, listener: Any, passages: np.ndarray, settings: dict[str, Any]) -> dict:
    """Play ``settings["episodes"]`` games at one grid point and return its results row.

    Args:
        spec: the grid point (protocol, receiver, channel, channel_uses, sigma, seed).
        speaker, listener: agents (actor handles or ``CALMAgentCore``) that loaded ``protocol@n``.
        passages: held-out passages ``(N, L)`` the games draw from.
        settings: episodes, batch_size, candidates, distractors, vocab_size, facts, checkpoint, erasure_p,
            fading_block.

    Returns:
        A dict with exactly the ``COLUMNS`` keys.
    """
    n, sigma, seed = spec["channel_uses"], spec["sigma"], spec["seed"]
    key = protocol_key(spec["protocol"], n)
    C, episodes = settings["candidates"], settings["episodes"]
    B = min(settings["batch_size"], episodes)
    channel = make_channel(spec["channel"], sigma, erasure_p=settings["erasure_p"],
                           fading_block=settings["fading_block"], ofdm_speed=settings.get("ofdm_speed", 0.0),
                           ofdm_interpolation=settings.get("ofdm_interpolation", "nn"))
    env = environments.make("referential_v0", passages=passages, channel_uses=n, batch_size=B, num_candidates=C,
                            channel=channel, distractors=settings["distractors"], vocab_size=settings["vocab_size"])
    speak = SpeakerPolicy(speaker, key)
    # the listener is told the channel model explicitly (and sees the fading gains in its observation)
    listen = ListenerPolicy(listener, key, spec["receiver"], channel=channel)
    wins, token_hits, tokens = 0, 0, 0
    for step in range(episodes // B):
        obs, _ = env.reset(seed=game_seed(seed, step, salt=None))
        target = obs["speaker"]  # (B, L)
        obs, *_ = env.step({"speaker": speak.act(target)})
        choice, decoded = listen.act(obs["listener"])  # (B,), (B, L) or None
        _, _, _, _, infos = env.step({"listener": choice})
        wins += int(infos["listener"]["reward_per_game"].sum())
        if decoded is not None:
            token_hits += int((decoded == target).sum())
            tokens += target.size
    success = wins / episodes
    low, high = wilson_interval(wins, episodes)
    capacity = n * channel.capacity_per_use()
    delivered = fano_delivered_bits(success, C)
    bits = settings["facts"][key]["bits_sent"]
    row = {
        "protocol": spec["protocol"], "receiver": spec["receiver"], "channel": spec["channel"], "sigma": sigma,
        "snr_db": snr_db(sigma) + 0.0, "channel_uses": n, "candidates": C,
        "bits_sent": float("nan") if bits is None else float(bits), "capacity_bits": capacity, "success": success,
        "success_ci_low": low, "success_ci_high": high, "delivered_bits": delivered,
        "efficiency": efficiency(delivered, capacity) if capacity > 0 else 0.0,
        "token_accuracy": token_hits / tokens if tokens else float("nan"),
        "episodes": episodes, "seed": seed, "checkpoint": settings["checkpoint"],
    }
    return {k: row[k] for k in COLUMNS}


def _trial(spec: dict[str, Any], *, pairs: list, passages: np.ndarray, settings: dict[str, Any]) -> dict:
    """The engine's trial function: the agent pair of this grid point plays it."""
    speaker, listener = pairs[spec["index"] % len(pairs)]
    return play_trial(spec, speaker, listener, passages, settings)


# ---------------------------------------------------------------------------------------------------------
# main


def prepare(cfg: Config, run: Run) -> Plan:
    """Fit the protocols and lay out the grid; the agent pairs load the fitted protocols."""
    checkpoint = run.checkpoint
    print(format_corpus_stats(corpus_stats(cfg.corpus, str(checkpoint / "tokenizer.json")), cfg.corpus,
                              f"of {run.checkpoint_id}"), flush=True)
    dirs, facts, skipped, passages = fit_game_protocols(cfg, checkpoint, run.dir)
    for (name, n), why in skipped.items():
        print(f"[run] {name} cannot be built at n={n}, left out: {why}", flush=True)
    model_facts = facts.pop("_model")
    record = {"autoencoder": model_facts, "protocols": facts,
              "skipped": {f"{p}@{n}": why for (p, n), why in skipped.items()}}
    train_info = checkpoint / "train_info.json"
    if train_info.exists():
        record["autoencoder_training"] = read_json(train_info, what="autoencoder's training record")
    settings = {"episodes": cfg.episodes, "batch_size": cfg.batch_size, "candidates": cfg.candidates,
                "distractors": cfg.distractors, "vocab_size": model_facts["vocab_size"], "facts": facts,
                "checkpoint": run.checkpoint_id, "erasure_p": cfg.erasure_p, "fading_block": cfg.fading_block,
                "ofdm_speed": cfg.ofdm_speed, "ofdm_interpolation": cfg.ofdm_interpolation}
    return Plan(grid=trial_grid(cfg, set(skipped)), trial=_trial, shared={"passages": passages, "settings": settings},
                protocols=dirs, record=record,
                describe=f"{len(cfg.protocols)} protocols x {len(cfg.receivers)} receivers x {len(cfg.channels)} "
                         f"channels x n in {list(cfg.channel_uses)} x {len(cfg.sigmas)} sigmas x {len(cfg.seeds)} "
                         f"seeds, less {len(skipped)} infeasible protocol/n; {cfg.episodes} games each, "
                         f"C={cfg.candidates}")


def report(cfg: Config, frame, run: Run, plan: Plan) -> None:
    """Tables, plots and the leak check of the finished rows; the HTML report's headline, examples and bounds."""
    write_report(frame, run.dir, plots=cfg.plots)
    if len(frame):
        write_extras(frame, run.dir, checkpoint=run.checkpoint, protocol_dirs=plan.protocols or {},
                     passage=plan.shared["passages"][0], sigmas=cfg.sigmas, channel=cfg.channels[0],
                     channel_options={"erasure_p": cfg.erasure_p, "fading_block": cfg.fading_block,
                                      "ofdm_speed": cfg.ofdm_speed, "ofdm_interpolation": cfg.ofdm_interpolation})
    # DESIGN.md section 3: delivered bits above capacity (beyond sampling error) mean a leak in a protocol
    for r in leaks(frame).itertuples():
        print(f"[run] WARNING: {r.protocol}/{r.receiver} {r.channel} n={r.channel_uses} sigma {r.sigma} succeeds "
              f">= {r.success_ci_low:.3f} over a {r.capacity_bits:.2f}-bit channel: a protocol leaks information",
              flush=True)
    print(console_summary(frame), flush=True)


STUDY = Study(prefix="referential", columns=COLUMNS, prepare=prepare, report=report)


def main(cfg: Config) -> SweepResult:
    """Run (or resume) the sweep and write the run directory; prints the summary tables."""
    return run_sweep(cfg, STUDY)


if __name__ == "__main__":
    sys.exit(cli(main, Config, prog="python -m experiments.referential_game", description=__doc__.split("\n\n")[0]))
