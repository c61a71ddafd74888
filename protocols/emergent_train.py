"""Training an emergent speaker-listener pair end to end through the simulated channel (evaluation:
``protocols.emergent_eval``).

One training step plays B referential games (DESIGN.md section 2) on a bank of item features (N, D):
- draw B targets and C-1 distinct distractors each (``draw_games``): uniform over the other items, or with
  ``hard_distractors`` the C-1 nearest neighbours of the target by cosine among ``pool_size`` random others;
- the candidates in a random order; the target's position is the label;
- speaker -> x (B, n) -> ``transmit`` (``simulate_channel``, or a 5G code around it) at each message's SNR (a
  float, or uniform in dB over a (low, high) range per message) -> listener scores (B, C);
- loss: the listener's cross-entropy against the target's position, for the listener always, and for the
  speaker too when gradients reach it (continuous, gumbel). ``reinforce``: the speaker's loss is
  ``-(r - baseline) log p(message) - entropy_coef * H``, with r the listener's log-probability of the target
  (or its success, ``EmergentConfig.reward``) and the baseline an exponential running mean of r.

Every draw (init, games, SNRs, Gumbel noise, samples, channel noise) comes from ``seed``: the same seed gives
the same history. ``save_pair``/``load_pair``
(re-exported from ``protocols.emergent_model``) store a pair as safetensors + JSON.

Dim letters: N items in the bank, D feature size, B games, C candidates, n channel uses, m symbols, P pool.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from calm.loop import NonFiniteLossError
from environments.torch_channels import CHANNEL_KINDS, ChannelKind
from protocols.emergent_link import transmit
from protocols.emergent_model import EmergentConfig, Listener, Speaker, load_pair, save_pair

__all__ = [
    "Batch",
    "GameDraw",
    "check_optim",
    "draw_games",
    "load_pair",
    "play_batch",
    "save_pair",
    "train_pair",
]

TrainMode = Literal["continuous", "gumbel", "reinforce"]
SNRSpec = float | tuple[float, float]
# the REINFORCE baseline moves this far towards each batch's mean reward
BASELINE_MOMENTUM = 0.05
# the learning rate decays to this fraction of lr by the last step
DECAY_FLOOR = 0.1


class GameDraw(NamedTuple):
    """Bank indices of B games."""

    target_item: torch.Tensor
    """(B,) the target's item"""
    distractor_items: torch.Tensor
    """(B, C-1) the distractors' items, distinct and never the target"""
    items: torch.Tensor
    """(B, C) the candidates' items in the order the listener sees them"""
    targets: torch.Tensor
    """(B,) the target's position among the candidates"""


def draw_games(features: torch.Tensor, B: int, C: int, generator: torch.Generator, *, hard: bool = False,
               pool_size: int = 64) -> GameDraw:
    """Draw B games of C candidates from a bank ``features (N, D)`` (module docstring)."""
    N = features.shape[0]
    device = features.device
    target = torch.randint(N, (B,), generator=generator, device=device)
    # uniform weights on every other item: multinomial without replacement gives distinct non-targets (O(B N))
    weights = torch.ones(B, N, device=device).scatter_(1, target[:, None], 0.0)
    if not hard:
        distractors = torch.multinomial(weights, C - 1, generator=generator)  # (B, C-1)
    else:
        pool = torch.multinomial(weights, max(C - 1, min(pool_size, N - 1)), generator=generator)  # (B, P)
        cos = F.cosine_similarity(features[pool], features[target][:, None], dim=-1)  # (B, P)
        distractors = pool.gather(1, cos.topk(C - 1, dim=1).indices)
    order = torch.rand(B, C, generator=generator, device=device).argsort(dim=1)  # (B, C): a random order
    items = torch.cat([target[:, None], distractors], dim=1).gather(1, order)
    return GameDraw(target, distractors, items, (order == 0).int().argmax(dim=1))


def _bank(features: Any, C: int, device: str | torch.device) -> torch.Tensor:
    bank = torch.as_tensor(features if isinstance(features, torch.Tensor) else np.asarray(features),
                           dtype=torch.float32, device=device)
    if bank.dim() != 2 or bank.shape[0] < C:
        raise ValueError(f"features must have shape (N >= num_candidates={C}, D), got {tuple(bank.shape)}")
    if not torch.isfinite(bank).all():
        raise ValueError("features hold NaN or inf")
    return bank


def _check_game(cfg: EmergentConfig, bank: torch.Tensor, C: int, snr_db: SNRSpec, channel: str,
                erasure_p: float) -> None:
    if isinstance(C, bool) or not isinstance(C, int) or C < 2:
        raise ValueError(f"num_candidates must be an integer >= 2, got {C!r}")
    if bank.shape[1] != cfg.feature_dim:
        raise ValueError(f"features have D={bank.shape[1]} but the config's feature_dim={cfg.feature_dim}")
    if channel not in CHANNEL_KINDS:
        raise ValueError(f"unknown channel kind {channel!r}; choose from {CHANNEL_KINDS}")
    if not 0.0 <= erasure_p < 1.0:
        raise ValueError(f"erasure_p must be in [0, 1), got {erasure_p}")
    if isinstance(snr_db, (tuple, list)):
        if len(snr_db) != 2 or not all(math.isfinite(s) for s in snr_db) or snr_db[0] > snr_db[1]:
            raise ValueError(f"snr_db range must be (low, high), finite, low <= high, got {snr_db!r}")
    elif math.isnan(snr_db) or snr_db == -math.inf:
        raise ValueError(f"snr_db must be a number (inf = noiseless) or a (low, high) range, got {snr_db!r}")


def _draw_snr(snr_db: SNRSpec, B: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(B,) SNR in dB: the given value, or uniform in dB over the range, one draw per message."""
    if isinstance(snr_db, (tuple, list)):
        lo, hi = float(snr_db[0]), float(snr_db[1])
        return lo + (hi - lo) * torch.rand(B, generator=generator, device=device)
    return torch.full((B,), float(snr_db), device=device)


def check_optim(*, lr: float, **counts: int) -> None:
    """ValueError naming the argument unless every count is an integer >= 1 and lr a finite number > 0."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")


@contextmanager
def _eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; each module's training flag restored after."""
    flags = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, flag in zip(modules, flags):
            m.train(flag)


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


# ----------------------------------------------------------------------------------------------------------
# training


class Batch(NamedTuple):
    """One batch of training games of one pairing (``play_batch``)."""

    loss: torch.Tensor
    """the scalar to minimise: the listener's cross-entropy (+ the speaker's REINFORCE terms)"""
    ce: torch.Tensor
    """the listener's cross-entropy against the target's position"""
    success: torch.Tensor
    """(B,) 1 where the listener's argmax is the target"""
    entropy: torch.Tensor | None
    """(B,) the speaker's entropy per message (discrete), None for continuous"""
    baseline: float | None
    """the REINFORCE baseline after this batch (None outside reinforce until set)"""


def play_batch(speaker: Speaker, listener: Listener, bank: torch.Tensor, *, B: int, C: int, snr_db: SNRSpec,
               kind: torch.Tensor, erasure_p: float, mode: TrainMode, generator: torch.Generator, hard: bool = False,
               pool_size: int = 64, baseline: float | None = None, frozen_speaker: bool = False) -> Batch:
    """One batch of B training games of one speaker-listener pairing and its loss (module docstring), in a fixed
    order of draws: games, SNRs, the speaker's sampling, the link and channel (``transmit``).

    ``kind`` (B,) channel kinds; ``baseline`` the REINFORCE running mean before this batch; ``frozen_speaker``
    keeps gradients away from the speaker (a newcomer listener learning a fixed protocol).
    """
    cfg = speaker.config
    game = draw_games(bank, B, C, generator, hard=hard, pool_size=pool_size)
    snr = _draw_snr(snr_db, B, generator, bank.device)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_speaker):
        msg = speaker(bank[game.target_item], bank[game.distractor_items], snr,
                      mode="greedy" if mode == "continuous" else mode, generator=generator)
    y, gain = transmit(cfg, msg.x, snr, kind, erasure_p=erasure_p, generator=generator)
    scores = listener(y, bank[game.items], gain=gain, snr_db=snr)  # (B, C)
    target_lp = F.log_softmax(scores, dim=-1).gather(1, game.targets[:, None]).squeeze(1)  # (B,)
    loss = ce = -target_lp.mean()
    success = (scores.argmax(-1) == game.targets).float()
    if mode == "reinforce" and not frozen_speaker:
        reward = (target_lp if cfg.reward == "log_prob" else success).detach()
        baseline = float(reward.mean()) if baseline is None else baseline
        loss = ce - ((reward - baseline) * msg.log_prob).mean() - cfg.entropy_coef * msg.entropy.mean()
        baseline += BASELINE_MOMENTUM * (float(reward.mean()) - baseline)
    return Batch(loss, ce, success, msg.entropy, baseline)


def train_pair(
    cfg: EmergentConfig,
    features_train: np.ndarray | torch.Tensor,
    *,
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
) -> tuple[Speaker, Listener, list[dict[str, float]]]:
    """Train a speaker and a listener together on the referential game through the channel.

    Args:
        cfg: the pair's config.
        features_train: (N, D) item features (the bank games are drawn from); their per-dimension mean and
            std become both agents' fixed standardisation.
        num_candidates: C >= 2 candidates per game.
        steps: optimiser steps, each on a fresh batch of games.
        snr_db: SNR in dB (inf: noiseless) or a (low, high) range drawn uniformly per message.
        batch_size: B games per step.
        channel: the channel kind (awgn, rayleigh, erasure).
        erasure_p: erasure probability of the erasure kind.
        seed: seeds the init and every draw.
        mode: continuous (for kind continuous), gumbel or reinforce (kind discrete); None: continuous or gumbel.
        lr: Adam's learning rate (one optimiser over both agents), decayed by a cosine to ``DECAY_FLOOR * lr``.
        log_every: a history entry every this many steps (and at the last).
        hard_distractors: nearest neighbours by cosine among ``pool_size`` random items as distractors.
        device: where the models and the generator live.
        progress: a tqdm bar; None: only when stderr is a terminal.

    Returns:
        (speaker, listener, history): models in eval mode; history entries ``step``, ``loss`` (listener
        cross-entropy), ``success`` (training batches), ``entropy`` (discrete: speaker entropy in nats per
        message) and ``baseline`` (reinforce), each a mean over the steps since the previous entry.
    """
    from tqdm.auto import tqdm

    C = num_candidates
    bank = _bank(features_train, C, device)
    _check_game(cfg, bank, C, snr_db, channel, erasure_p)
    mode = mode or ("continuous" if cfg.kind == "continuous" else "gumbel")
    if (mode == "continuous") != (cfg.kind == "continuous") or mode not in ("continuous", "gumbel", "reinforce"):
        raise ValueError(f"mode {mode!r} does not train kind={cfg.kind!r} messages: continuous for continuous, "
                         "gumbel or reinforce for discrete")
    check_optim(steps=steps, batch_size=batch_size, log_every=log_every, pool_size=pool_size, lr=lr)

    # ---- seeding: one generator for every draw; the init under the same seed
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        speaker, listener = Speaker(cfg).to(device), Listener(cfg).to(device)
    mean, std = bank.mean(0), bank.std(0)
    for agent in (speaker, listener):
        agent.set_feature_stats(mean, std)
    opt = torch.optim.Adam([*speaker.parameters(), *listener.parameters()], lr=lr)
    # cosine decay to DECAY_FLOOR * lr: the last steps refine instead of jumping between languages
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: DECAY_FLOOR + (1 - DECAY_FLOOR) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    kind = torch.full((batch_size,), CHANNEL_KINDS.index(channel), dtype=torch.long, device=device)
    baseline: float | None = None
    history: list[dict[str, float]] = []
    window: dict[str, list[float]] = {}
    speaker.train()
    listener.train()

    show = sys.stderr.isatty() if progress is None else progress
    for step in tqdm(range(1, steps + 1), desc=f"emergent {mode}", disable=not show, mininterval=1.0):
        batch = play_batch(speaker, listener, bank, B=batch_size, C=C, snr_db=snr_db, kind=kind, erasure_p=erasure_p,
                           mode=mode, generator=generator, hard=hard_distractors, pool_size=pool_size,
                           baseline=baseline)
        loss, ce, success, baseline = batch.loss, batch.ce, batch.success, batch.baseline
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"emergent {mode} training: loss {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

        window.setdefault("loss", []).append(float(ce.detach()))
        window.setdefault("success", []).append(float(success.mean()))
        if batch.entropy is not None:
            window.setdefault("entropy", []).append(float(batch.entropy.detach().mean()))
        if baseline is not None:
            window.setdefault("baseline", []).append(baseline)
        if step % log_every == 0 or step == steps:
            history.append({"step": step, **{k: float(np.mean(v)) for k, v in window.items()}})
            window = {}
    speaker.eval()
    listener.eval()
    return speaker, listener, history
