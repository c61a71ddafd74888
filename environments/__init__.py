"""Noisy-channel environments for the text referential game: PettingZoo ParallelEnvs (numpy, plus scipy.special for the normal CDF).

Construct by name, PettingZoo style::

    import environments
    env = environments.make("referential_v0", passages=ids, channel_uses=32,
                            channel=environments.AWGN(0.5), batch_size=256)
    # or: environments.referential_v0.parallel_env(ids, channel_uses=32)

Names: ``referential_v0``, ``reconstruction_v0``, ``broadcast_v0``, ``relay_v0``. The channel models are
``environments.channels`` (numpy, for the envs) and ``environments.torch_channels`` (torch, for a learned
link that trains through the channel); importing either does not import PettingZoo (the names here load
lazily). This package imports nothing else of ours (DESIGN.md section 1). See docs/environments.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pettingzoo import ParallelEnv

# The names below are loaded on first use (module __getattr__), so that importing a submodule such as
# ``environments.channels`` or ``environments.torch_channels`` does not import PettingZoo.
# public name -> the submodule that owns it
_EXPORTS = {
    "AWGN": "environments.channels",
    "Chain": "environments.channels",
    "Channel": "environments.channels",
    "Erasure": "environments.channels",
    "Quantize": "environments.channels",
    "RayleighBlockFading": "environments.channels",
    "BroadcastEnv": "environments.broadcast",
    "ReconstructionEnv": "environments.reconstruction",
    "ReferentialEnv": "environments.referential",
    "Round": "environments.referential",
    "SignallingGame": "environments.referential",
    "draw_round": "environments.referential",
    "token_overlap": "environments.referential",
    "RelayEnv": "environments.relay",
}
# PettingZoo-style versioned module names: ``environments.referential_v0.parallel_env(...)``
_ENV_MODULES = {
    "referential_v0": "environments.referential",
    "reconstruction_v0": "environments.reconstruction",
    "broadcast_v0": "environments.broadcast",
    "relay_v0": "environments.relay",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _ENV_MODULES:
        return importlib.import_module(_ENV_MODULES[name])
    if name == "ENVIRONMENTS":  # registered name -> its module; built once, then make() uses it
        envs = {key: importlib.import_module(module) for key, module in _ENV_MODULES.items()}
        globals()["ENVIRONMENTS"] = envs
        return envs
    if name in ("broadcast", "channels", "reconstruction", "referential", "relay", "torch_channels"):
        return importlib.import_module(f"environments.{name}")
    raise AttributeError(f"module 'environments' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def make(name: str, **kwargs: Any) -> ParallelEnv:
    """Build a registered environment as a ParallelEnv: ``make("referential_v0", passages=ids, ...)``."""
    envs = globals()["ENVIRONMENTS"] if "ENVIRONMENTS" in globals() else __getattr__("ENVIRONMENTS")
    if name not in envs:
        raise ValueError(f"unknown environment {name!r}; registered: {sorted(envs)}")
    return envs[name].parallel_env(**kwargs)


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
