"""Reconstruction variant of the referential game: the listener answers the target's token ids.

=============  ==================================  ==============================================
agent          observation                         action
=============  ==================================  ==============================================
``speaker``    ``target (B, L) int64``             ``symbols (B, n) float32`` (step 1 only)
``listener``   ``{"received": (B, n) float32,``    ``ids (B, L) int`` in [0, V) (step 2 only)
               ``"gain": (B, n) float32}``
=============  ==================================  ==============================================

``gain`` is the fading gain per symbol (channel-state information; ones when nothing fades), as
in ``environments.referential``.

No candidates are drawn. Reward per game = token accuracy (the fraction of the L positions
answered right); every agent's reward is its mean over the B games. The final infos carry what
``referential`` gives (without candidates; ``target_index`` is -1) plus ``token_accuracy`` (B,)
and ``exact`` (B,) bool (all L tokens right). Everything else as in ``environments.referential``.

Version history: v0, first version.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pettingzoo.utils import parallel_to_aec

from environments.channels import AWGN, Channel
from environments.referential import LISTENER, SignallingGame

__all__ = ["ReconstructionEnv", "env", "parallel_env"]


class ReconstructionEnv(SignallingGame):
    """Speaker -> channel -> listener, who must write out the target's token ids."""

    metadata = {"name": "reconstruction_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        passages: np.ndarray,
        *,
        channel_uses: int,
        batch_size: int = 1,
        channel: Channel = AWGN(0.0),
        vocab_size: int | None = None,
        render_mode: str | None = None,
    ):
        """Build the game.

        Args:
          passages: int array (N, L) of token ids, one passage per row (deduplicated here).
          channel_uses: n, symbols per message.
          batch_size: B, games per step.
          channel: the channel model (``environments.channels``); default noiseless AWGN(0).
          vocab_size: V, the listener's ids are in [0, V); default ``passages.max() + 1``.
          render_mode: must be None.
        """
        super().__init__(
            passages,
            routes={LISTENER: (channel,)},
            task="reconstruct",
            batch_size=batch_size,
            num_candidates=0,
            channel_uses=channel_uses,
            distractors="uniform",
            pool_size=None,
            relay_mode="forward",
            vocab_size=vocab_size,
            render_mode=render_mode,
        )
        self.channel = channel


def parallel_env(passages: np.ndarray, **kwargs: Any) -> ReconstructionEnv:
    """The reconstruction game as a ParallelEnv (args as ``ReconstructionEnv``)."""
    return ReconstructionEnv(passages, **kwargs)


def env(passages: np.ndarray, **kwargs: Any):
    """The reconstruction game as an AEC env (PettingZoo's ``parallel_to_aec`` conversion)."""
    return parallel_to_aec(ReconstructionEnv(passages, **kwargs))
