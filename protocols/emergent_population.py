"""Populations of emergent agents: P speakers and P listeners trained with several partners (issue 31, point 1).

``train_population`` trains P speakers and P listeners on the referential game of ``protocols.emergent_train``
(same games, channel, losses and learning-rate schedule as ``train_pair``). The pairing rule, one choice among
those in the literature (e.g. Tieleman et al. 2019, Rita et al. 2022): at every step a uniformly random
permutation pi of the P listeners is drawn, and speaker i plays its own batch of B games with listener pi(i). So
every agent gets exactly one update per step, on B games, as a single pair does: ``steps`` is the number of
updates per agent and a population of P costs P times a pair's compute. Over the run every speaker meets every
listener (about steps / P times each). A REINFORCE speaker keeps its own running-mean baseline.

Size 1 is ``train_pair``: the same seed gives the same weights and history, draw for draw (member i's init comes
from the same torch seed, after members 0..i-1; the permutations come from a generator of their own, so the game
and noise stream of size 1 is the pair's).

``train_listener`` trains a newcomer: a fresh listener against a frozen speaker (its greedy messages), for a
short budget, to ask how fast a new partner learns an existing protocol. ``cross_play`` plays every (speaker,
listener) pairing (``evaluate_pair``) and returns the P_s x P_l success matrix. ``save_population`` /
``load_population`` store a population as one ``model.safetensors`` (tensors ``speaker.<i>.*``,
``listener.<i>.*``) + ``config.json`` (the config, the size and the history); never pickle.

Dim letters: P members, N items in the bank, D feature size, B games per pairing per step, C candidates.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from calm.files import DamagedFileError, atomic_write_bytes, atomic_write_text, read_json
from calm.integrity import check_tensors, read_safetensors
from calm.loop import NonFiniteLossError
from environments.torch_channels import CHANNEL_KINDS, ChannelKind
from protocols.emergent_eval import evaluate_pair
from protocols.emergent_model import EmergentConfig, Listener, Speaker
from protocols.emergent_train import (
    DECAY_FLOOR,
    SNRSpec,
    TrainMode,
    _bank,
    _check_game,
    check_optim,
    play_batch,
)

__all__ = ["cross_play", "load_population", "save_population", "train_listener", "train_population"]

# a population's checkpoint: config.json names this type
MODEL_TYPE = "emergent_population"
FORMAT_VERSION = 1
# the pairing permutations' generator: seeded by SeedSequence([seed, PAIRING_SALT]), apart from the game stream
PAIRING_SALT = 31


def _schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``train_pair``'s cosine decay to ``DECAY_FLOOR * lr``."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: DECAY_FLOOR + (1 - DECAY_FLOOR) * 0.5 * (1 + math.cos(math.pi * s / steps)))


def _log(window: dict[str, list[float]], history: list[dict[str, float]], step: int, steps: int,
         log_every: int, values: dict[str, float]) -> dict[str, list[float]]:
    for k, v in values.items():
        window.setdefault(k, []).append(v)
    if step % log_every == 0 or step == steps:
        history.append({"step": step, **{k: float(np.mean(v)) for k, v in window.items()}})
        return {}
    return window


def _bar(steps: int, desc: str, progress: bool | None):
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    return tqdm(range(1, steps + 1), desc=desc, disable=not show, mininterval=1.0)


def train_population(
    cfg: EmergentConfig,
    features_train: np.ndarray | torch.Tensor,
    *,
    size: int,
    num_candidates: int,
    steps: int,
    snr_db: SNRSpec,
    batch_size: int = 128,
    channel: ChannelKind = "awgn",
    erasure_p: float = 0.0,
    seed: int = 0,
    mode: TrainMode | None = None,
    lr: float = 3e-3,
    log_every: int = 50,
    hard_distractors: bool = False,
    pool_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> tuple[list[Speaker], list[Listener], list[dict[str, float]]]:
    """Train ``size`` speakers and ``size`` listeners, each step in random pairs (module docstring).

    Args:
        cfg: every member's config.
        features_train: (N, D) item features; their per-dimension mean and std become every agent's fixed
            standardisation.
        size: P >= 1 speakers and P listeners.
        num_candidates, steps, snr_db, batch_size, channel, erasure_p, seed, mode, lr, log_every,
        hard_distractors, pool_size, device, progress: as ``train_pair``; ``steps`` and ``batch_size`` are per
            agent (each step plays P batches of ``batch_size`` games, one per pairing).

    Returns:
        (speakers, listeners, history): models in eval mode; history entries as ``train_pair``'s (``loss``,
        ``success``, ``entropy``, ``baseline``), each also averaged over the P pairings of a step.
    """
    C = num_candidates
    bank = _bank(features_train, C, device)
    _check_game(cfg, bank, C, snr_db, channel, erasure_p)
    mode = mode or ("continuous" if cfg.kind == "continuous" else "gumbel")
    if (mode == "continuous") != (cfg.kind == "continuous") or mode not in ("continuous", "gumbel", "reinforce"):
        raise ValueError(f"mode {mode!r} does not train kind={cfg.kind!r} messages: continuous for continuous, "
                         "gumbel or reinforce for discrete")
    check_optim(size=size, steps=steps, batch_size=batch_size, log_every=log_every, pool_size=pool_size, lr=lr)

    # ---- seeding: the game stream and the inits as train_pair's; the pairings from a generator of their own
    generator = torch.Generator(device=device).manual_seed(seed)
    pairing = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, PAIRING_SALT]).generate_state(1)[0]))
    speakers: list[Speaker] = []
    listeners: list[Listener] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(size):
            speakers.append(Speaker(cfg).to(device))
            listeners.append(Listener(cfg).to(device))
    mean, std = bank.mean(0), bank.std(0)
    params = []
    for s, li in zip(speakers, listeners):
        for agent in (s, li):
            agent.set_feature_stats(mean, std)
            agent.train()
            params += list(agent.parameters())
    # one Adam over every agent: its moments are per parameter, so this is P x 2 separate optimisers
    opt = torch.optim.Adam(params, lr=lr)
    sched = _schedule(opt, steps)
    kind = torch.full((batch_size,), CHANNEL_KINDS.index(channel), dtype=torch.long, device=device)
    baselines: list[float | None] = [None] * size
    history: list[dict[str, float]] = []
    window: dict[str, list[float]] = {}

    for step in _bar(steps, f"population {size} {mode}", progress):
        partner = torch.randperm(size, generator=pairing).tolist() if size > 1 else [0]
        out = []
        for i, j in enumerate(partner):
            out.append(play_batch(speakers[i], listeners[j], bank, B=batch_size, C=C, snr_db=snr_db, kind=kind,
                                   erasure_p=erasure_p, mode=mode, generator=generator, hard=hard_distractors,
                                   pool_size=pool_size, baseline=baselines[i]))
            baselines[i] = out[-1].baseline
        # the pairings share no agent: the sum gives each agent exactly its own pairing's gradient
        loss = torch.stack([o.loss for o in out]).sum()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"emergent population {mode} training: loss {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

        values = {"loss": float(np.mean([float(o.ce.detach()) for o in out])),
                  "success": float(np.mean([float(o.success.mean()) for o in out]))}
        if out[0].entropy is not None:
            values["entropy"] = float(np.mean([float(o.entropy.detach().mean()) for o in out]))
        if baselines[0] is not None:
            values["baseline"] = float(np.mean(baselines))
        window = _log(window, history, step, steps, log_every, values)
    for agent in (*speakers, *listeners):
        agent.eval()
    return speakers, listeners, history


def train_listener(
    speaker: Speaker,
    features_train: np.ndarray | torch.Tensor,
    *,
    num_candidates: int,
    steps: int,
    snr_db: SNRSpec,
    batch_size: int = 128,
    channel: ChannelKind = "awgn",
    erasure_p: float = 0.0,
    seed: int = 0,
    lr: float = 3e-3,
    log_every: int = 50,
    hard_distractors: bool = False,
    pool_size: int = 64,
    progress: bool | None = None,
) -> tuple[Listener, list[dict[str, float]]]:
    """A newcomer: a fresh listener (init from ``seed``) trained by cross-entropy against ``speaker``'s greedy
    messages, the speaker frozen (never updated). Arguments as ``train_pair``; the same learning-rate schedule.

    Returns:
        (listener, history): the listener in eval mode on the speaker's device; history entries ``step``,
        ``loss`` and ``success``.
    """
    cfg = speaker.config
    device = next(speaker.parameters()).device
    C = num_candidates
    bank = _bank(features_train, C, device)
    _check_game(cfg, bank, C, snr_db, channel, erasure_p)
    check_optim(steps=steps, batch_size=batch_size, log_every=log_every, pool_size=pool_size, lr=lr)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        listener = Listener(cfg).to(device)
    listener.set_feature_stats(bank.mean(0), bank.std(0))
    opt = torch.optim.Adam(listener.parameters(), lr=lr)
    sched = _schedule(opt, steps)
    kind = torch.full((batch_size,), CHANNEL_KINDS.index(channel), dtype=torch.long, device=device)
    speaker_was_training = speaker.training
    speaker.eval()
    listener.train()
    history: list[dict[str, float]] = []
    window: dict[str, list[float]] = {}
    try:
        for step in _bar(steps, "newcomer listener", progress):
            out = play_batch(speaker, listener, bank, B=batch_size, C=C, snr_db=snr_db, kind=kind,
                              erasure_p=erasure_p, mode="greedy", generator=generator, hard=hard_distractors,
                              pool_size=pool_size, baseline=None, frozen_speaker=True)
            if not torch.isfinite(out.ce):
                raise NonFiniteLossError(f"newcomer listener training: loss {float(out.ce)} at step {step}")
            opt.zero_grad(set_to_none=True)
            out.ce.backward()
            opt.step()
            sched.step()
            window = _log(window, history, step, steps, log_every,
                          {"loss": float(out.ce.detach()), "success": float(out.success.mean())})
    finally:
        speaker.train(speaker_was_training)
    listener.eval()
    return listener, history


def cross_play(speakers: list[Speaker], listeners: list[Listener], features: np.ndarray | torch.Tensor, *,
               num_candidates: int, snr_db: SNRSpec, channel: ChannelKind = "awgn", erasure_p: float = 0.0,
               episodes: int = 1024, seed: int = 0, independent_games: bool = False, batch_size: int = 512,
               hard_distractors: bool = False, pool_size: int = 64) -> np.ndarray:
    """(P_s, P_l) float64 matrix: entry (i, j) is the success of speaker i with listener j over ``episodes``
    games (``evaluate_pair``, greedy speaker).

    ``independent_games=False``: every pairing plays the same games and noise (drawn by ``seed``), so entries
    compare on equal footing; True: pairing (i, j) plays its own games (seed ``SeedSequence([seed, i, j])``), so
    counts pooled over pairings are independent draws.
    """
    if not speakers or not listeners:
        raise ValueError(f"cross_play needs at least one speaker and one listener, got {len(speakers)} and "
                         f"{len(listeners)}")
    out = np.empty((len(speakers), len(listeners)))
    for i, s in enumerate(speakers):
        for j, li in enumerate(listeners):
            pair_seed = int(np.random.SeedSequence([seed, i, j]).generate_state(1)[0]) if independent_games else seed
            out[i, j] = evaluate_pair(s, li, features, num_candidates=num_candidates, snr_db=snr_db, channel=channel,
                                      erasure_p=erasure_p, episodes=episodes, seed=pair_seed, batch_size=batch_size,
                                      hard_distractors=hard_distractors, pool_size=pool_size)["success"]
    return out


# ----------------------------------------------------------------------------------------------------------
# checkpoints


def _state(speakers: list[Speaker], listeners: list[Listener]) -> dict[str, torch.Tensor]:
    """Every member's state dict in one, keys ``speaker.<i>.*`` and ``listener.<i>.*``."""
    return {f"{name}.{i}.{k}": v for name, agents in (("speaker", speakers), ("listener", listeners))
            for i, agent in enumerate(agents) for k, v in agent.state_dict().items()}


def save_population(directory: str | Path, cfg: EmergentConfig, speakers: list[Speaker], listeners: list[Listener],
                    history: list[dict[str, float]]) -> Path:
    """Write ``model.safetensors`` (``speaker.<i>.*``, ``listener.<i>.*``) and ``config.json`` (the config, the
    number of speakers and listeners, the history) into ``directory``, each atomically. Returns the directory."""
    if not speakers or len(speakers) != len(listeners):
        raise ValueError(f"a population holds as many speakers as listeners (>= 1), got {len(speakers)} and "
                         f"{len(listeners)}")
    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in _state(speakers, listeners).items()}
    atomic_write_bytes(directory / "model.safetensors", safetensors_bytes(tensors, metadata={"format": "pt"}))
    meta = {"format_version": FORMAT_VERSION, "model_type": MODEL_TYPE, "size": len(speakers),
            "config": cfg.to_dict(), "history": history}
    atomic_write_text(directory / "config.json", json.dumps(meta, indent=2) + "\n")
    return directory


def load_population(directory: str | Path) -> tuple[EmergentConfig, list[Speaker], list[Listener],
                                                     list[dict[str, float]]]:
    """Read a population ``save_population`` wrote: ``(cfg, speakers, listeners, history)``, on CPU, eval mode.

    Raises:
        FileNotFoundError: no config.json in ``directory``.
        DamagedFileError: a file that does not parse, another model type, or tensors that do not fit the config.
    """
    directory = Path(directory)
    path = directory / "config.json"
    meta = read_json(path, what="emergent population config")
    size = meta.get("size")
    if meta.get("model_type") != MODEL_TYPE or not isinstance(meta.get("config"), dict):
        raise DamagedFileError(path, f"not an emergent population (model_type {meta.get('model_type')!r})")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DamagedFileError(path, f"its size must be an integer >= 1, got {size!r}")
    try:
        cfg = EmergentConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise DamagedFileError(path, f"its config does not build: {exc}") from None
    speakers, listeners = [Speaker(cfg) for _ in range(size)], [Listener(cfg) for _ in range(size)]
    weights = directory / "model.safetensors"
    tensors = read_safetensors(weights)
    check_tensors(weights, tensors, {k: tuple(v.shape) for k, v in _state(speakers, listeners).items()})
    for name, agents in (("speaker", speakers), ("listener", listeners)):
        for i, agent in enumerate(agents):
            prefix = f"{name}.{i}."
            agent.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            agent.eval()
    history = meta.get("history", [])
    return cfg, speakers, listeners, list(history) if isinstance(history, list) else []
