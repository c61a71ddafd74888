"""The parts of ``experiments.emergent_population``: the cached populations and newcomers, and one trial.

Two populations of the same size P are trained per (protocol, P, seed): A with seed s and B with seed
s + ``B_OFFSET``, never in contact. A newcomer is a fresh listener trained for ``newcomer_steps`` against one frozen
speaker (``protocols.emergent_population.train_listener``); one per speaker of A and of B. Each is trained once and
cached under runs_dir by a hash of every setting that shapes it (``ensure``): a trial that finds another one
training an item skips to the next item it needs, and only then waits, so two trials started together train two
things at once (the study orders its grid for that).

Evaluation: every (speaker, listener) pairing plays its own ``episodes`` games on the held-out passages
(``cross_play`` with independent games; seeds from (seed, C, SNR, which pairings, i, j)), so the counts pooled over
pairings are independent draws for these agents and the Wilson interval holds for them; the spread over training
seeds is what the seeds axis shows.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calm.files import atomic_write_text
from protocols.emergent_eval import evaluate_pair
from protocols.emergent_model import EmergentConfig
from protocols.emergent_population import (
    cross_play,
    load_population,
    save_population,
    train_listener,
    train_population,
)
from protocols.emergent_train import load_pair, save_pair
from protocols.metrics import wilson_interval

__all__ = ["B_OFFSET", "PAIRINGS", "POPULATION_PROTOCOLS", "ensure", "play_trial", "population_config"]

#: learned protocol -> (EmergentConfig.kind, training mode)
POPULATION_PROTOCOLS = {"learned-continuous": ("continuous", "continuous"), "learned-gumbel": ("discrete", "gumbel"),
                        "learned-reinforce": ("discrete", "reinforce")}
#: row kinds: trained (a speaker with a listener of its own population), new-partner (with a listener of the other
#: population: never met), new-listener (with a newcomer trained briefly against it)
PAIRINGS = ("trained", "new-partner", "new-listener")
#: population B's seed is population A's + this
B_OFFSET = 1000


# ---------------------------------------------------------------------------------------------------------
# cached populations and newcomers


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def _ready(path: Path) -> bool:
    return (path / "model.safetensors").is_file()


def _build_locked(path: Path, build: Callable[[Path], None], *, wait: bool) -> bool:
    """Build ``path`` under its lock (``build(tmp)`` writes into a fresh directory, renamed into place at once).
    ``wait=False``: give up (False) when another process holds the lock. True when ``path`` is ready."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False  # another trial is building it
        try:
            if not _ready(path):
                tmp = path.with_name(path.name + f".tmp{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                build(tmp)
                tmp.replace(path)  # atomic: a half-written directory is never picked up
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return True


def ensure(items: list[tuple[Path, Callable[[Path], None]]]) -> None:
    """Every ``(path, build)`` of ``items`` ready: first those nobody else is building, then wait for the rest
    (and build any whose builder failed)."""
    pending = [item for item in items if not _ready(item[0])]
    for wait in (False, True):
        pending = [(p, b) for p, b in pending if not _build_locked(p, b, wait=wait)]


def population_config(s: dict[str, Any], protocol: str, feature_dim: int) -> tuple[EmergentConfig, str]:
    """Every member's ``EmergentConfig`` and the training mode, from the study's settings ``s``."""
    kind, mode = POPULATION_PROTOCOLS[protocol]
    n, b = s["channel_uses"], s["vocab_bits"]
    cfg = EmergentConfig(feature_dim=feature_dim, kind=kind, channel_uses=n, vocab_bits=b,
                         message_len=n // b if kind == "discrete" else 8, hidden_size=s["hidden_size"],
                         told_snr=s["told_snr"], entropy_coef=s["entropy_coef"])
    return cfg, mode


def _train_snr(s: dict[str, Any]):
    return s["train_snr_db"][0] if len(s["train_snr_db"]) == 1 else tuple(s["train_snr_db"])


def _write_info(tmp: Path, key: dict[str, Any], t0: float) -> None:
    atomic_write_text(tmp / "train_info.json", json.dumps({**key, "seconds": time.time() - t0}, indent=1) + "\n")


def population_items(s: dict[str, Any], protocol: str, size: int, seed: int, bank: np.ndarray
                     ) -> tuple[list[Path], list[tuple[Path, Callable[[Path], None]]]]:
    """The directories of populations A (``seed``) and B (``seed + B_OFFSET``) and how to build each."""
    cfg, mode = population_config(s, protocol, bank.shape[1])
    paths, items = [], []
    for tag, pop_seed in (("A", seed), ("B", seed + B_OFFSET)):
        train = {"mode": mode, "size": size, "num_candidates": s["train_candidates"], "steps": s["steps"],
                 "snr_db": _train_snr(s), "batch_size": s["batch_size"], "channel": s["channel"],
                 "erasure_p": s["erasure_p"], "seed": pop_seed, "lr": s["lr"]}
        key = {"protocol": protocol, "checkpoint": s["checkpoint_id"], "corpus": s["corpus"],
               "passage_length": s["passage_length"], "fit_passages": s["fit_passages"], "ae_seed": s["ae_seed"],
               "config": cfg.to_dict(), "train": {k: list(v) if isinstance(v, tuple) else v for k, v in train.items()}}
        path = Path(s["pairs_dir"]) / f"emergent-population-{protocol}-P{size}-seed{seed}{tag}-{_digest(key)}"

        def build(tmp: Path, train=train, key=key, name=path.name) -> None:
            t0 = time.time()
            speakers, listeners, history = train_population(cfg, np.array(bank), progress=False, **train)
            save_population(tmp, cfg, speakers, listeners, history)
            _write_info(tmp, key, t0)
            print(f"[emergent-population] trained {name} in {time.time() - t0:.0f} s (training success "
                  f"{history[-1]['success']:.3f})", flush=True)

        paths.append(path)
        items.append((path, build))
    return paths, items


def newcomer_items(s: dict[str, Any], population: Path, pop_seed: int, size: int, bank: np.ndarray
                   ) -> tuple[list[Path], list[tuple[Path, Callable[[Path], None]]]]:
    """One newcomer per speaker of ``population`` (trained with ``pop_seed``): its directory (a ``save_pair``: the
    frozen speaker and the new listener) and how to build it."""
    paths, items = [], []
    for i in range(size):
        train = {"num_candidates": s["train_candidates"], "steps": s["newcomer_steps"], "snr_db": _train_snr(s),
                 "batch_size": s["batch_size"], "channel": s["channel"], "erasure_p": s["erasure_p"],
                 "seed": int(np.random.SeedSequence([pop_seed, i, 77]).generate_state(1)[0]), "lr": s["lr"]}
        key = {"population": population.name, "speaker": i,
               "train": {k: list(v) if isinstance(v, tuple) else v for k, v in train.items()}}
        path = population.with_name(f"{population.name}-newcomer{i}-{_digest(key)}")

        def build(tmp: Path, i=i, train=train, key=key) -> None:
            t0 = time.time()
            cfg, speakers, _, _ = load_population(population)
            listener, history = train_listener(speakers[i], np.array(bank), progress=False, **train)
            save_pair(tmp, cfg, speakers[i], listener, history)
            _write_info(tmp, key, t0)

        paths.append(path)
        items.append((path, build))
    return paths, items


# ---------------------------------------------------------------------------------------------------------
# one trial


def _seed(*parts: float) -> int:
    """A generator seed from integers and SNRs (inf -> a code of its own)."""
    ints = [int(round(p * 100)) + 10**6 if math.isfinite(p) else 3 * 10**6 for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0])


def _train_success(paths: list[Path]) -> float:
    """Mean final training success of the populations (or newcomers) in ``paths``."""
    finals = []
    for p in paths:
        history = json.loads((p / "config.json").read_text()).get("history") or [{}]
        finals.append(float(history[-1].get("success", math.nan)))
    return float(np.mean(finals))


def play_trial(spec: dict[str, Any], *, settings: dict[str, Any], data: dict[str, Any]) -> dict:
    """Train (or reload) what one grid point needs and play its pairings; its row
    (``experiments.emergent_population.COLUMNS``). ``data``: ``train`` and ``test`` feature banks (N, D)."""
    s = settings
    protocol, size, snr, seed, pairing = (spec[k] for k in ("protocol", "size", "snr_db", "seed", "pairing"))
    C, E = s["candidates"], s["episodes"]
    torch.set_num_threads(1)
    train_bank, test_bank = data["train"], np.array(data["test"])  # a writable copy: Ray hands read-only arrays
    pops, items = population_items(s, protocol, size, seed, train_bank)
    ensure(items)
    play = dict(num_candidates=C, snr_db=float(snr), channel=s["channel"], erasure_p=s["erasure_p"], episodes=E,
                batch_size=s["eval_batch"])
    code = PAIRINGS.index(pairing)
    rates: list[float] = []
    trained_from = pops
    if pairing == "new-listener":
        news = [newcomer_items(s, p, pop_seed, size, train_bank) for p, pop_seed in zip(pops, (seed, seed + B_OFFSET))]
        ensure([item for _, its in news for item in its])
        trained_from = [path for paths, _ in news for path in paths]
        for k, path in enumerate(trained_from):
            _, speaker, listener, _ = load_pair(path)
            rates.append(evaluate_pair(speaker, listener, test_bank, seed=_seed(seed, C, snr, code, k), **play)
                         ["success"])
    else:
        (_, sa, la, _), (_, sb, lb, _) = (load_population(p) for p in pops)
        pairs = [(sa, la), (sb, lb)] if pairing == "trained" else [(sa, lb), (sb, la)]
        for k, (speakers, listeners) in enumerate(pairs):
            rates += cross_play(speakers, listeners, test_bank, seed=_seed(seed, C, snr, code, k),
                                independent_games=True, **play).ravel().tolist()
    wins = int(sum(round(r * E) for r in rates))
    games = E * len(rates)
    low, high = wilson_interval(wins, games)
    return {"protocol": protocol, "channel": s["channel"], "channel_uses": s["channel_uses"], "candidates": C,
            "size": size, "pairing": pairing, "snr_db": float(snr), "sigma": 10.0 ** (-snr / 20.0),
            "success": wins / games, "success_ci_low": low, "success_ci_high": high, "episodes": E,
            "pairs_played": len(rates), "pair_min": float(min(rates)), "pair_max": float(max(rates)),
            "chance": 1.0 / C, "train_success": _train_success(trained_from),
            "train_steps": s["newcomer_steps"] if pairing == "new-listener" else s["steps"], "seed": seed,
            "population_a": pops[0].name, "population_b": pops[1].name, "checkpoint": s["checkpoint_id"]}
