"""The parts of ``experiments.emergent``: item features, the cached learned pairs, one evaluation trial and its
analysis (what the messages mean, whether the listener uses them).

Every protocol of a trial plays the *same* games: the targets, distractors and candidate orders are drawn from the
held-out passages by ``(seed, C)`` (``protocols.emergent_train.draw_games`` on the CALM features, so "hard" means
nearest by cosine of the CALM latents for every protocol), and the channel noise by ``(seed, C, SNR)``, drawn once
for all the trial's messages (``environments.torch_channels.simulate_channel``), so protocols of one n meet the
same noise and the chunk size of the forwards changes nothing.

Dim letters: N held-out passages, E games of a trial, A analysed games, C candidates, D feature size, n channel
uses, m discrete symbols.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calm.files import atomic_write_text
from environments.torch_channels import CHANNEL_KINDS, simulate_channel
from experiments.common.sweep import make_channel
from protocols.base import log_likelihood
from protocols.coded import code_limit_problem
from protocols.emergent_eval import Games, listen_fn
from protocols.emergent_link import transmit
from protocols.emergent_model import EmergentConfig
from protocols.emergent_train import GameDraw, draw_games, load_pair, save_pair, train_pair
from protocols.influence import causal_influence, control_success
from protocols.meaning import bosdis, posdis, topographic_similarity
from protocols.metrics import fano_delivered_bits, wilson_interval

__all__ = ["ANALYSIS_COLUMNS", "CONTROLS", "PAIR_PROTOCOLS", "ensure_pair",
           "meaning_attributes", "play_trial"]

#: learned protocol -> (EmergentConfig.kind, train_pair mode); learned-coded sends its bits under the 5G code
PAIR_PROTOCOLS = {"learned-continuous": ("continuous", "continuous"), "learned-gumbel": ("discrete", "gumbel"),
                  "learned-reinforce": ("discrete", "reinforce"), "learned-coded": ("discrete", "gumbel")}
#: the message controls reported (protocols.influence), each on what the listener hears; other_task: the same
#: protocol's messages about passages of the unseen corpus, through the same channel
CONTROLS = ("real", "shuffled", "rotation", "gaussian", "zeroed", "other_task")
ANALYSIS_COLUMNS = ["topsim", "posdis", "bosdis", "causal_influence", *[f"control_{c}" for c in CONTROLS],
                    "analysis_games"]
# posdis/bosdis attributes: the top principal components of the meanings, each cut at its quartiles
ATTRIBUTES, LEVELS = 4, 4
# the other-task control's streams lead with these tags, so they never meet a trial's (seed, C) or (seed, C, SNR)
OTHER_TASK_ITEMS, OTHER_TASK_NOISE = -7001, -7002
# pairs sampled for topographic similarity (all pairs of 512 games would be 130k)
TOPSIM_PAIRS = 20000


# ---------------------------------------------------------------------------------------------------------
# features


def meaning_attributes(meanings: np.ndarray) -> np.ndarray:
    """(A, D) meanings -> (A, ATTRIBUTES) int: the top principal components, each cut at its quartiles into
    ``LEVELS`` levels (the discrete attributes posdis and bosdis need)."""
    centred = meanings - meanings.mean(0)
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    proj = centred @ vt[:ATTRIBUTES].T  # (A, ATTRIBUTES)
    edges = np.quantile(proj, np.linspace(0, 1, LEVELS + 1)[1:-1], axis=0)  # (LEVELS - 1, ATTRIBUTES)
    return np.stack([np.searchsorted(edges[:, k], proj[:, k]) for k in range(proj.shape[1])], axis=1)


# ---------------------------------------------------------------------------------------------------------
# learned pairs, trained once and cached


def coded_info_bits(code: str, rate: float, n: int, b: int) -> tuple[int, str | None]:
    """learned-coded at n channel uses: ``(k, problem)``, k = code_rate * n rounded down to a multiple of b, and
    the 5G limit that k in n coded bits breaks (None when the code can be built)."""
    k = int(rate * n) // b * b
    return k, code_limit_problem(code, k, n)


def pair_config(s: dict[str, Any], protocol: str, n: int, feature_dim: int) -> tuple[EmergentConfig, str]:
    """The pair's ``EmergentConfig`` and training mode from the study's settings ``s``."""
    kind, mode = PAIR_PROTOCOLS[protocol]
    b = s["vocab_bits"]
    coded = protocol == "learned-coded"
    bits = coded_info_bits(s["code"], s["code_rate"], n, b)[0] if coded else n
    cfg = EmergentConfig(feature_dim=feature_dim, kind=kind, channel_uses=n, vocab_bits=b,
                         message_len=bits // b if kind == "discrete" else 8, hidden_size=s["hidden_size"],
                         sees_distractors=s["sees_distractors"], told_snr=s["told_snr"],
                         entropy_coef=s["entropy_coef"], link=s["code"] if coded else "uncoded")
    return cfg, mode


def ensure_pair(s: dict[str, Any], protocol: str, n: int, features: str, seed: int, bank: np.ndarray,
                train_snr_db: tuple[float, ...] | None = None) -> Path:
    """The directory of the trained pair for (protocol, n, features, seed, training SNR): trained once on ``bank
    (N, D)`` (the training passages' features) at ``train_snr_db`` (default: the study's) and cached under
    ``s["pairs_dir"]`` by a hash of every setting that shapes it. A trial that finds another training the same
    pair waits for it (a lock beside the directory)."""
    cfg, mode = pair_config(s, protocol, n, bank.shape[1])
    train_db = tuple(s["train_snr_db"] if train_snr_db is None else train_snr_db)
    train_snr = train_db[0] if len(train_db) == 1 else train_db
    train = {"mode": mode, "num_candidates": s["train_candidates"], "steps": s["steps"], "snr_db": train_snr,
             "batch_size": s["batch_size"], "channel": s["channel"], "erasure_p": s["erasure_p"], "seed": seed,
             "lr": s["lr"], "hard_distractors": s["hard_distractors"], "pool_size": s["pool_size"]}
    key = {"protocol": protocol, "features": features, "bag_dim": s["bag_dim"] if features == "bag" else None,
           "checkpoint": s["checkpoint_id"], "corpus": s["corpus"], "passage_length": s["passage_length"],
           "fit_passages": s["fit_passages"], "ae_seed": s["ae_seed"], "config": cfg.to_dict(),
           "train": {k: list(v) if isinstance(v, tuple) else v for k, v in train.items()}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(s["pairs_dir"]) / f"emergent-{protocol}-{features}-n{n}-seed{seed}-{digest}"
    if (path / "model.safetensors").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one trains, the others wait for its directory
        try:
            if (path / "model.safetensors").is_file():
                return path
            t0 = time.time()
            speaker, listener, history = train_pair(cfg, np.array(bank), progress=False, **train)  # writable copy
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            save_pair(tmp, cfg, speaker, listener, history)
            atomic_write_text(tmp / "train_info.json", json.dumps({**key, "seconds": time.time() - t0}, indent=1) + "\n")
            tmp.replace(path)  # atomic: a half-written pair is never picked up
            print(f"[emergent] trained {path.name} in {time.time() - t0:.0f} s (training success "
                  f"{history[-1]['success']:.3f})", flush=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


# ---------------------------------------------------------------------------------------------------------
# one trial


def _seed(*parts: float) -> int:
    """A generator seed from integers and SNRs (inf -> a code of its own)."""
    ints = [int(round(p * 100)) + 10**6 if math.isfinite(p) else 3 * 10**6 for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0])


@dataclass
class Played:
    """What E games of one protocol left behind."""

    sent: np.ndarray
    """(E, n) float32 channel symbols"""
    received: np.ndarray
    """(E, n) float32 channel output"""
    gain: np.ndarray
    """(E, n) float32 fading gain told to the receiver"""
    scores: np.ndarray
    """(E, C) float64 the listener's scores (argmax = its choice)"""
    symbols: np.ndarray | None
    """(E, m) int64 discrete symbols (learned discrete; the hash's bits); None for analog messages"""


def _channel(x: torch.Tensor, snr: float, s: dict[str, Any], generator: torch.Generator,
             pair: EmergentConfig | None = None):
    """x through the study's channel at ``snr``: a learned pair's own link (``transmit``: coded or not), or the
    bare channel for the fixed protocols."""
    E = x.shape[0]
    kind = torch.full((E,), CHANNEL_KINDS.index(s["channel"]), dtype=torch.long)
    snr_t = torch.full((E,), float(snr))
    if pair is not None:
        return transmit(pair, x, snr_t, kind, erasure_p=s["erasure_p"], generator=generator)
    return simulate_channel(x, snr_t, kind, erasure_p=s["erasure_p"], generator=generator)


def _play_learned(speaker, listener, bank: torch.Tensor, draw: GameDraw, snr: float, s: dict[str, Any],
                  noise: torch.Generator) -> Played:
    E, step = draw.items.shape[0], s["eval_batch"]
    snr_t = torch.full((E,), float(snr))
    with torch.no_grad():
        msgs = [speaker(bank[draw.target_item[i:i + step]], bank[draw.distractor_items[i:i + step]],
                        snr_t[i:i + step], mode="greedy") for i in range(0, E, step)]
        x = torch.cat([m.x for m in msgs])
        y, gain = _channel(x, snr, s, noise, speaker.config)
        scores = torch.cat([listener(y[i:i + step], bank[draw.items[i:i + step]], gain=gain[i:i + step],
                                     snr_db=snr_t[i:i + step]) for i in range(0, E, step)])
    symbols = None if msgs[0].symbols is None else torch.cat([m.symbols for m in msgs]).numpy()
    return Played(x.numpy(), y.numpy(), gain.numpy(), scores.double().numpy(), symbols)


def _fixed_scores(channel, codes: np.ndarray, items: np.ndarray):
    """``listen(received (B, n), gain (B, n)) -> (B, C)`` log-likelihoods of each candidate's code under the
    channel applied: the soft maximum-likelihood receiver (``Protocol.score``), on precomputed codes."""
    def listen(received: np.ndarray, gain: np.ndarray) -> np.ndarray:
        x = codes[items].astype(np.float64)  # (B, C, n)
        return log_likelihood(received.astype(np.float64)[:, None, :], x, channel, gain[:, None, :]).sum(-1)

    return listen


def _play_fixed(codes: np.ndarray, draw: GameDraw, snr: float, s: dict[str, Any], noise: torch.Generator,
                channel) -> Played:
    x = torch.as_tensor(codes[draw.target_item.numpy()])
    y, gain = _channel(x, snr, s, noise)
    y, gain = y.numpy(), gain.numpy()
    scores = _fixed_scores(channel, codes, draw.items.numpy())(y, gain)
    return Played(x.numpy(), y, gain, scores, None)


def _analysis(listen, context, played: Played, A: int, targets: np.ndarray, meanings: np.ndarray,
              *, discrete: np.ndarray | None, vocab: int, scores: bool, s: dict[str, Any], seed: int,
              other: np.ndarray) -> dict:
    """Topsim, posdis, bosdis, causal influence and the controls' success on the first A games; ``other`` (M, n):
    what the listener hears of the same protocol's messages about unseen-corpus passages (the other-task control)."""
    rng = np.random.default_rng(seed)
    received = played.received[:A]
    rates = control_success(listen, received, context, targets[:A], rng=rng, other_messages=other)
    cic = causal_influence(listen, received, context, rng=rng, interventions=s["interventions"], scores=scores)
    if discrete is None:
        topsim = topographic_similarity(meanings, played.sent[:A], "cosine", "cosine", max_pairs=TOPSIM_PAIRS, rng=seed)
        pos = bos = float("nan")
    else:
        topsim = topographic_similarity(meanings, discrete[:A], "cosine", "hamming", max_pairs=TOPSIM_PAIRS, rng=seed)
        attributes = meaning_attributes(meanings)
        pos, bos = posdis(attributes, discrete[:A]), bosdis(attributes, discrete[:A], vocab)
    return {"topsim": topsim, "posdis": pos, "bosdis": bos, "causal_influence": cic,
            **{f"control_{c}": rates.get(c, float("nan")) for c in CONTROLS}, "analysis_games": A}


def _other_task(speak, codes: np.ndarray | None, bank: np.ndarray, A: int, snr: float, s: dict[str, Any], seed: int,
                pair: EmergentConfig | None) -> np.ndarray:
    """What the listener hears of A messages about random unseen-corpus passages: the learned speaker's (``speak``
    on their features ``bank``) or the fixed protocol's ``codes``, through the same channel at ``snr``."""
    rows = np.random.default_rng(_seed(OTHER_TASK_ITEMS, seed, snr)).choice(len(bank if codes is None else codes), size=A)
    with torch.no_grad():
        x = speak(torch.tensor(bank[rows])) if codes is None else torch.as_tensor(codes[rows])
    return _channel(x, snr, s, torch.Generator().manual_seed(_seed(OTHER_TASK_NOISE, seed, snr)), pair)[0].numpy()


def play_trial(spec: dict[str, Any], *, settings: dict[str, Any], data: dict[str, Any]) -> dict:
    """Play ``episodes`` games at one grid point and return its row (``experiments.emergent.COLUMNS``).

    ``data``: ``meanings[split]`` (N, D) CALM features of the split's passages (test: held out; unseen: the
    unseen corpus); ``features[f][split]`` feature banks (train, test, unseen); ``codes[split][protocol@n]`` (N, n)
    the fixed protocols' symbols of every passage of the split.
    """
    s = settings
    protocol, features, n, C, snr, seed, split = (spec[k] for k in ("protocol", "features", "channel_uses",
                                                                     "candidates", "snr_db", "seed", "split"))
    torch.set_num_threads(1)
    meanings_bank = torch.tensor(data["meanings"][split])  # a copy: Ray hands read-only arrays
    draw = draw_games(meanings_bank, s["episodes"], C, torch.Generator().manual_seed(_seed(seed, C)),
                      hard=s["hard_distractors"], pool_size=s["pool_size"])
    noise = torch.Generator().manual_seed(_seed(seed, C, snr))
    sigma = 10.0 ** (-snr / 20.0)
    channel = make_channel(s["channel"], sigma, erasure_p=s["erasure_p"])
    targets = draw.targets.numpy().astype(np.int64)
    A = min(s["analysis_games"], s["episodes"])
    meanings = data["meanings"][split][draw.target_item.numpy()[:A]]
    key = f"{protocol}@{n}"
    if protocol in PAIR_PROTOCOLS:
        directory = ensure_pair(s, protocol, n, features, seed, data["features"][features]["train"],
                                tuple(spec["train_snr_db"]))
        pair_cfg, speaker, listener, history = load_pair(directory)
        bank = torch.tensor(data["features"][features][split])
        played = _play_learned(speaker, listener, bank, draw, snr, s, noise)
        pair, train_success = directory.name, history[-1]["success"]
        bits = pair_cfg.message_len * pair_cfg.vocab_bits if pair_cfg.kind == "discrete" else float("nan")
    else:
        played = _play_fixed(data["codes"][split][key], draw, snr, s, noise, channel)
        pair, train_success = key, float("nan")
        bits = data["bits"][key]
    wins = int((played.scores.argmax(1) == targets).sum())
    E = len(targets)
    low, high = wilson_interval(wins, E)
    capacity = n * channel.capacity_per_use()
    row = {"protocol": protocol, "features": features, "split": split, "train_snr": spec["train_snr"],
           "channel": s["channel"], "channel_uses": n, "candidates": C, "snr_db": float(snr), "sigma": sigma,
           "success": wins / E, "success_ci_low": low, "success_ci_high": high, "episodes": E,
           "capacity_bits": capacity, "delivered_bits": fano_delivered_bits(wins / E, C),
           "bits_sent": float("nan") if bits is None else float(bits), "reference": bool(spec["reference"]),
           **{c: float("nan") for c in ANALYSIS_COLUMNS}, "train_success": train_success, "seed": seed, "pair": pair,
           "checkpoint": s["checkpoint_id"]}
    if spec["reference"]:
        sl = slice(0, A)
        if protocol in PAIR_PROTOCOLS:
            items = draw.items[sl]
            games = Games(sent=played.sent[sl], received=played.received[sl], gain=played.gain[sl],
                          snr_db=np.full(A, snr, dtype=np.float32),
                          symbols=None if played.symbols is None else played.symbols[sl],
                          probs=torch.softmax(torch.as_tensor(played.scores[sl]), -1).numpy(), targets=targets[sl],
                          candidates=bank[items].numpy(), target_features=meanings, items=items.numpy())
            # a speaker that sees distractors gets another unseen passage as the one distractor
            other = _other_task(lambda f: speaker(f, f.roll(1, 0)[:, None], torch.full((len(f),), float(snr))).x, None,
                                data["features"][features]["unseen"], A, snr, s, seed, pair_cfg)
            row.update(_analysis(listen_fn(listener), games, played, A, targets, meanings, discrete=played.symbols,
                                 vocab=pair_cfg.vocab_size, scores=False, s=s, seed=seed, other=other))
        else:
            listen = _fixed_scores(channel, data["codes"][split][key], draw.items.numpy()[sl])
            hash_bits = (played.sent < 0).astype(np.int64) if protocol == "hash" else None
            other = _other_task(None, data["codes"]["unseen"][key], None, A, snr, s, seed, None)
            row.update(_analysis(lambda msgs, gain: listen(msgs, gain), played.gain[sl], played, A, targets,
                                 meanings, discrete=hash_bits, vocab=2, scores=True, s=s, seed=seed, other=other))
    return row
