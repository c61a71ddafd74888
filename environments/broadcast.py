"""Broadcast variant: one speaker, M listeners, each behind its own channel.

The speaker's symbols cross M independent channels (each with its own noise generator, seeded
from reset's seed), one per listener ``listener_0 .. listener_{M-1}``. All listeners see the same
candidates in the same order and answer in the same step.

=================  ==========================================  ===================================
agent              observation                                 action
=================  ==========================================  ===================================
``speaker``        ``target (B, L) int64``                     ``symbols (B, n) float32`` (step 1)
``listener_<m>``   ``{"candidates": (B, C, L) int64,``         ``indices (B,) int`` (step 2)
                   ``"received": (B, n) float32,``
                   ``"gain": (B, n) float32}``
=================  ==========================================  ===================================

``gain`` is listener m's own fading gain per symbol (ones when its channel does not fade). With
``task="reconstruct"`` listeners see only ``received`` and ``gain`` and answer ids ``(B, L)``. Reward of
listener m: its mean over the B games; the speaker's: the mean over listeners. Final infos: each
listener gets the common record plus its own ``received``, ``gain``, ``noise_power``, ``choice``,
``reward_per_game``...; the speaker gets the common record plus ``listeners`` (name -> record).

Version history: v0, first version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pettingzoo.utils import parallel_to_aec

from environments.channels import Channel
from environments.referential import Distractors, SignallingGame, Task

__all__ = ["BroadcastEnv", "env", "parallel_env"]


class BroadcastEnv(SignallingGame):
    """One speaker, one channel and one listener per entry of ``channels``."""

    metadata = {"name": "broadcast_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        passages: np.ndarray,
        *,
        channels: Sequence[Channel],
        channel_uses: int,
        batch_size: int = 1,
        num_candidates: int = 4,
        task: Task = "choose",
        distractors: Distractors = "uniform",
        pool_size: int | None = None,
        vocab_size: int | None = None,
        render_mode: str | None = None,
    ):
        """Build the game.

        Args:
          passages: int array (N, L) of token ids, one passage per row (deduplicated here).
          channels: one channel per listener (M >= 1 of them), e.g. ``[AWGN(0.1), AWGN(0.5)]``.
          channel_uses: n, symbols per message.
          batch_size: B, games per step.
          num_candidates: C >= 2 (``choose`` task only).
          task: ``choose`` (pick the target among C) or ``reconstruct`` (write its ids).
          distractors: ``uniform`` or ``hard`` (``choose`` only).
          pool_size: the pool ``hard`` distractors come from; default min(64, N-1).
          vocab_size: V; default ``passages.max() + 1``.
          render_mode: must be None.
        """
        if isinstance(channels, Channel) or not isinstance(channels, Sequence) or len(channels) < 1:
            raise ValueError(
                f"channels must be a non-empty sequence of channels, one per listener, got {channels!r}"
            )
        super().__init__(
            passages,
            routes={f"listener_{m}": (channel,) for m, channel in enumerate(channels)},
            task=task,
            batch_size=batch_size,
            num_candidates=num_candidates,
            channel_uses=channel_uses,
            distractors=distractors,
            pool_size=pool_size,
            relay_mode="forward",
            vocab_size=vocab_size,
            render_mode=render_mode,
        )
        self.channels = tuple(channels)


def parallel_env(passages: np.ndarray, **kwargs: Any) -> BroadcastEnv:
    """The broadcast game as a ParallelEnv (args as ``BroadcastEnv``)."""
    return BroadcastEnv(passages, **kwargs)


def env(passages: np.ndarray, **kwargs: Any):
    """The broadcast game as an AEC env (PettingZoo's ``parallel_to_aec`` conversion)."""
    return parallel_to_aec(BroadcastEnv(passages, **kwargs))
