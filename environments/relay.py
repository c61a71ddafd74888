"""Relay variant: the message crosses H hops, each its own channel, with H-1 relays between.

``speaker -> hop 0 -> relay_0 -> hop 1 -> ... -> relay_{H-2} -> hop H-1 -> listener``

Relay modes:

- ``forward`` (amplify-and-forward): relays are not agents. The env re-transmits what a relay
  received, scaled by a fixed gain ``g = 1 / sqrt(P)`` where ``P = channel.output_power(1.0)`` is
  the expected power after the previous hop for a unit-power input (``1 + sigma**2`` for AWGN),
  so every hop carries unit expected power. The gain is the same for every message: scaling each
  message by its own power would leak information (DESIGN.md section 3). Steps: speaker, listener.
  The listener's ``gain`` observation is the product of the H hops' fading gains (this fixed
  forward gain is not in it).
- ``reencode`` (decode-and-forward): relays ``relay_0 .. relay_{H-2}`` are agents. Relay h
  observes ``{"received": (B, n) float32, "gain": (B, n) float32}`` (the fading gain of hop h) and
  its action is the symbols ``(B, n) float32`` it sends on hop h+1 (the env applies no gain:
  re-encoding is the relay's job); the listener's ``gain`` is that of the last hop only. Steps: speaker,
  relay_0, ..., relay_{H-2}, listener: H+1 steps in all.

Observations and actions of the speaker and listener as in ``environments.referential`` (or
``reconstruction`` with ``task="reconstruct"``). Every agent's reward is the listener's mean over
the B games. Final infos add ``hop_sent`` and ``hop_received``: lists of H arrays (B, n), what
went into and came out of each hop; ``measured_noise_power`` compares the listener's
``received`` with what the speaker sent; ``noise_power`` is None for H > 1.

Version history: v0, first version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pettingzoo.utils import parallel_to_aec

from environments.channels import AWGN, Channel
from environments.referential import LISTENER, Distractors, RelayMode, SignallingGame, Task, check_int

__all__ = ["RelayEnv", "env", "parallel_env"]


class RelayEnv(SignallingGame):
    """A relay chain of ``hops`` channels between the speaker and the listener."""

    metadata = {"name": "relay_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        passages: np.ndarray,
        *,
        hops: int,
        channel_uses: int,
        channel: Channel | Sequence[Channel] = AWGN(0.0),
        mode: RelayMode = "forward",
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
          hops: H >= 1 channels in the chain (H - 1 relays; H = 1 is the plain game).
          channel_uses: n, symbols per message and per hop.
          channel: one channel used on every hop (each hop draws its own noise), or a sequence of
            H channels, one per hop.
          mode: ``forward`` (the env amplifies and forwards) or ``reencode`` (relays are agents).
          batch_size: B, games per step.
          num_candidates: C >= 2 (``choose`` task only).
          task: ``choose`` or ``reconstruct``.
          distractors: ``uniform`` or ``hard`` (``choose`` only).
          pool_size: the pool ``hard`` distractors come from; default min(64, N-1).
          vocab_size: V; default ``passages.max() + 1``.
          render_mode: must be None.
        """
        hops = check_int("hops", hops, 1)
        if isinstance(channel, Sequence):
            route = tuple(channel)
            if len(route) != hops:
                raise ValueError(
                    f"channel must be one channel or a sequence of hops={hops} channels, got {len(route)}"
                )
        else:
            route = (channel,) * hops
        super().__init__(
            passages,
            routes={LISTENER: route},
            task=task,
            batch_size=batch_size,
            num_candidates=num_candidates,
            channel_uses=channel_uses,
            distractors=distractors,
            pool_size=pool_size,
            relay_mode=mode,
            vocab_size=vocab_size,
            render_mode=render_mode,
        )
        self.hops = hops
        self.mode: RelayMode = mode


def parallel_env(passages: np.ndarray, **kwargs: Any) -> RelayEnv:
    """The relay game as a ParallelEnv (args as ``RelayEnv``)."""
    return RelayEnv(passages, **kwargs)


def env(passages: np.ndarray, **kwargs: Any):
    """The relay game as an AEC env (PettingZoo's ``parallel_to_aec`` conversion)."""
    return parallel_to_aec(RelayEnv(passages, **kwargs))
