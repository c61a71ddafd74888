"""Noisy-channel environments for the text referential game: PettingZoo ParallelEnvs (numpy, plus scipy.special for the normal CDF).

Construct by name, PettingZoo style::

    import environments
    env = environments.make("referential_v0", passages=ids, channel_uses=32,
                            channel=environments.AWGN(0.5), batch_size=256)
    # or: environments.referential_v0.parallel_env(ids, channel_uses=32)

Names: ``referential_v0``, ``reconstruction_v0``, ``broadcast_v0``, ``relay_v0``. This package
imports nothing else of ours (DESIGN.md section 1). See docs/environments.md.
"""

from __future__ import annotations

from typing import Any

from pettingzoo import ParallelEnv

from environments import broadcast, reconstruction, referential, relay
from environments.broadcast import BroadcastEnv
from environments.channels import AWGN, Chain, Channel, Erasure, Quantize, RayleighBlockFading
from environments.reconstruction import ReconstructionEnv
from environments.referential import ReferentialEnv, Round, SignallingGame, draw_round, token_overlap
from environments.relay import RelayEnv

# PettingZoo-style versioned module names: ``environments.referential_v0.parallel_env(...)``
referential_v0 = referential
reconstruction_v0 = reconstruction
broadcast_v0 = broadcast
relay_v0 = relay

ENVIRONMENTS = {
    "referential_v0": referential,
    "reconstruction_v0": reconstruction,
    "broadcast_v0": broadcast,
    "relay_v0": relay,
}


def make(name: str, **kwargs: Any) -> ParallelEnv:
    """Build a registered environment as a ParallelEnv: ``make("referential_v0", passages=ids, ...)``."""
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; registered: {sorted(ENVIRONMENTS)}")
    return ENVIRONMENTS[name].parallel_env(**kwargs)


__all__ = [
    "AWGN",
    "ENVIRONMENTS",
    "BroadcastEnv",
    "Chain",
    "Channel",
    "Erasure",
    "Quantize",
    "RayleighBlockFading",
    "ReconstructionEnv",
    "ReferentialEnv",
    "RelayEnv",
    "Round",
    "SignallingGame",
    "broadcast_v0",
    "draw_round",
    "make",
    "reconstruction_v0",
    "referential_v0",
    "relay_v0",
    "token_overlap",
]
