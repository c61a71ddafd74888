"""Evaluating an emergent speaker-listener pair (trained by ``protocols.emergent_train``) through the channel.

``play_games`` returns one batch of evaluation games (messages, choice distributions, targets, candidates) as a
``Games`` record for ``protocols.influence`` (with ``listen_fn``) and ``protocols.meaning``; ``evaluate_pair`` counts
success with a Wilson interval. Games are drawn as in training (``draw_games``), the speaker greedy.

Dim letters: N items in the bank, D feature size, B games, C candidates, n channel uses, m symbols.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from environments.torch_channels import CHANNEL_KINDS, ChannelKind
from protocols.emergent_link import transmit
from protocols.emergent_model import Listener, Speaker, bpsk_table
from protocols.emergent_train import SNRSpec, _bank, _check_game, _device, _draw_snr, _eval_mode, draw_games
from protocols.metrics import wilson_interval

__all__ = ["Games", "evaluate_pair", "listen_fn", "play_games"]


@dataclass
class Games:
    """One batch of B evaluation games, as numpy arrays (``play_games``)."""

    sent: np.ndarray
    """(B, n) float32 channel symbols the speaker sent"""
    received: np.ndarray
    """(B, n) float32 what the listener heard (the messages for ``protocols.influence``)"""
    gain: np.ndarray
    """(B, n) float32 fading gain told to the listener"""
    snr_db: np.ndarray
    """(B,) float32 SNR of each message"""
    symbols: np.ndarray | None
    """(B, m) int64 discrete symbols (the messages for ``protocols.meaning``); None for continuous"""
    probs: np.ndarray
    """(B, C) float64 the listener's choice distribution"""
    targets: np.ndarray
    """(B,) int64 the target's position among the candidates"""
    candidates: np.ndarray
    """(B, C, D) float32 candidate features in the listener's order"""
    target_features: np.ndarray
    """(B, D) float32 the target's features (the meanings)"""
    items: np.ndarray
    """(B, C) int64 the candidates' indices into the bank"""

    @property
    def success(self) -> float:
        """Fraction of games whose argmax choice is the target."""
        return float(np.mean(self.probs.argmax(1) == self.targets))


def _play(speaker: Speaker, listener: Listener, bank: torch.Tensor, B: int, C: int, snr_db: SNRSpec, channel: str,
          erasure_p: float, generator: torch.Generator, hard: bool, pool_size: int) -> Games:
    with _eval_mode(speaker, listener):
        game = draw_games(bank, B, C, generator, hard=hard, pool_size=pool_size)
        snr = _draw_snr(snr_db, B, generator, bank.device)
        kind = torch.full((B,), CHANNEL_KINDS.index(channel), dtype=torch.long, device=bank.device)
        msg = speaker(bank[game.target_item], bank[game.distractor_items], snr, mode="greedy")
        y, gain = transmit(speaker.config, msg.x, snr, kind, erasure_p=erasure_p, generator=generator)
        probs = F.softmax(listener(y, bank[game.items], gain=gain, snr_db=snr).double(), dim=-1)

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.cpu().numpy()

    return Games(sent=arr(msg.x), received=arr(y), gain=arr(gain), snr_db=arr(snr),
                 symbols=None if msg.symbols is None else arr(msg.symbols), probs=arr(probs),
                 targets=arr(game.targets).astype(np.int64), candidates=arr(bank[game.items]),
                 target_features=arr(bank[game.target_item]), items=arr(game.items))


def play_games(speaker: Speaker, listener: Listener, features: np.ndarray | torch.Tensor, *, num_candidates: int,
               snr_db: SNRSpec, channel: ChannelKind = "awgn", erasure_p: float = 0.0, games: int = 512,
               seed: int = 0, hard_distractors: bool = False, pool_size: int = 64) -> Games:
    """One batch of ``games`` evaluation games (greedy speaker), drawn from ``features (N, D)`` by ``seed``.

    ``causal_influence(listen_fn(listener), g.received, g, rng=...)`` and ``control_success`` apply to the
    result ``g``; so do ``topographic_similarity(g.target_features, g.symbols, ...)`` and ``posdis``.
    """
    bank = _bank(features, num_candidates, _device(speaker))
    _check_game(speaker.config, bank, num_candidates, snr_db, channel, erasure_p)
    generator = torch.Generator(device=bank.device).manual_seed(seed)
    return _play(speaker, listener, bank, games, num_candidates, snr_db, channel, erasure_p, generator,
                 hard_distractors, pool_size)


def listen_fn(listener: Listener) -> Callable[[np.ndarray, Games], np.ndarray]:
    """``listen(messages, games) -> probs (B, C)`` for ``protocols.influence``: float messages (B, n) are taken as
    received values; integer messages (B, m) are discrete symbols, heard as their BPSK bits without noise."""
    table = bpsk_table(listener.config.vocab_bits).numpy()

    def listen(messages: np.ndarray, games: Games) -> np.ndarray:
        messages = np.asarray(messages)
        if np.issubdtype(messages.dtype, np.integer):
            messages = table[messages].reshape(messages.shape[0], -1)
        device = _device(listener)
        with _eval_mode(listener):
            scores = listener(torch.as_tensor(messages, dtype=torch.float32, device=device),
                              torch.as_tensor(games.candidates, device=device),
                              gain=torch.as_tensor(games.gain, device=device),
                              snr_db=torch.as_tensor(games.snr_db, device=device))
        return F.softmax(scores.double(), dim=-1).cpu().numpy()

    return listen


def evaluate_pair(speaker: Speaker, listener: Listener, features: np.ndarray | torch.Tensor, *, num_candidates: int,
                  snr_db: SNRSpec, channel: ChannelKind = "awgn", erasure_p: float = 0.0, episodes: int = 1024,
                  seed: int = 0, batch_size: int = 512, hard_distractors: bool = False,
                  pool_size: int = 64) -> dict[str, Any]:
    """Success rate of a pair over ``episodes`` games drawn from ``features (N, D)`` (greedy speaker).

    Returns:
        ``success``, its 95% Wilson interval ``ci_low``/``ci_high``, ``successes``, ``episodes``,
        ``candidates``, ``channel_uses``, ``channel`` and ``snr_db`` (as given).
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}")
    bank = _bank(features, num_candidates, _device(speaker))
    _check_game(speaker.config, bank, num_candidates, snr_db, channel, erasure_p)
    generator = torch.Generator(device=bank.device).manual_seed(seed)
    successes = 0
    for start in range(0, episodes, batch_size):
        g = _play(speaker, listener, bank, min(batch_size, episodes - start), num_candidates, snr_db, channel,
                  erasure_p, generator, hard_distractors, pool_size)
        successes += int((g.probs.argmax(1) == g.targets).sum())
    low, high = wilson_interval(successes, episodes)
    return {"success": successes / episodes, "ci_low": low, "ci_high": high, "successes": successes,
            "episodes": episodes, "candidates": num_candidates, "channel_uses": speaker.config.channel_uses,
            "channel": channel, "snr_db": list(snr_db) if isinstance(snr_db, (tuple, list)) else float(snr_db)}
