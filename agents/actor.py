"""``CALMAgent``: ``agents.core.CALMAgentCore`` as a Ray actor; ``make_agent`` starts one, ``kill_agent`` ends it.

``make_agent`` places the agent (``agents.placement``: a GPU or a share of one where the cluster has GPUs) with
a restart policy (``max_restarts``, ``max_task_retries``: a killed agent comes back and its in-flight calls are
replayed) and, by default, ships its checkpoint and protocol files through Ray's object store
(``agents.shipping``) so that an agent on another node needs no shared filesystem. The driver holds those
files for as long as Ray may restart the agent; end an agent with ``kill_agent(handle)`` (not a bare
``ray.kill``) so that they are freed with it.

The names below other than ``CALMAgent``, ``make_agent`` and ``kill_agent`` are re-exported from the modules
that now hold them (``agents.core``, ``agents.placement``, ``agents.shipping``), for code that imports them
from here.
"""

from __future__ import annotations

from typing import Any

from agents.core import RECEIVERS, AgentConfig, CALMAgentCore, Receiver
from agents.placement import _ray_gpu_ids, pick_device, resolve_num_gpus
from agents.shipping import (
    FileBundle,
    held_agents,
    hold,
    pack_directory,
    release_agent,
    ship,
    unpack_directory,
)

__all__ = ["AgentConfig", "CALMAgent", "CALMAgentCore", "FileBundle", "RECEIVERS", "Receiver", "held_agents",
           "kill_agent", "make_agent", "pack_directory", "pick_device", "release_agent", "resolve_num_gpus",
           "unpack_directory", "_ray_gpu_ids"]


def _remote_class():
    import ray

    return ray.remote(CALMAgentCore)


class _LazyActorClass:
    """``CALMAgent.options(...).remote(...)`` without importing Ray at module import time."""

    _cls = None

    def _get(self):
        if self._cls is None:
            self._cls = _remote_class()
        return self._cls

    def options(self, **kwargs):
        return self._get().options(**kwargs)

    def remote(self, *args, **kwargs):
        return self._get().remote(*args, **kwargs)


#: ``CALMAgentCore`` as a Ray actor class (``CALMAgent.options(num_gpus=...).remote(checkpoint, protocols)``)
CALMAgent = _LazyActorClass()


def make_agent(cfg: AgentConfig, *, name: str, num_agents: int = 1, cluster_gpus: float | None = None) -> Any:
    """Start one named agent actor with ``cfg``'s placement and restart policy.

    Args:
        cfg: the agent config.
        name: the actor's name in Ray (``ray.get_actor(name)``), also shown in logs and ``placement()``.
        num_agents: agents that will share the GPUs (for ``num_gpus="auto"``).
        cluster_gpus: GPUs in the cluster; default ``ray.cluster_resources()["GPU"]``.

    Returns:
        The actor handle. End the agent with ``kill_agent(handle)``, which also frees its shipped files.
    """
    import ray

    if cluster_gpus is None:
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
    num_gpus = resolve_num_gpus(cfg.num_gpus, num_agents, cluster_gpus)
    checkpoint, protocols, lm_checkpoint = cfg.checkpoint, dict(cfg.protocols), cfg.lm_checkpoint
    token_lm_checkpoint = cfg.token_lm_checkpoint
    if cfg.ship_files:
        # object refs as top-level arguments: Ray hands the actor the bundles (refs nested in the protocols dict
        # arrive as refs; the agent fetches them). A restart re-runs the constructor with the same refs, which Ray
        # does not keep alive by itself: ``hold`` keeps them until ``kill_agent`` / ``release_agent``.
        checkpoint = ship(checkpoint)
        protocols = {key: ship(path) for key, path in protocols.items()}
        lm_checkpoint = None if lm_checkpoint is None else ship(lm_checkpoint)
        token_lm_checkpoint = None if token_lm_checkpoint is None else ship(token_lm_checkpoint)
    agent = CALMAgent.options(
        name=name,
        num_gpus=num_gpus,
        num_cpus=cfg.num_cpus,
        max_restarts=cfg.max_restarts,
        max_task_retries=cfg.max_task_retries,
    ).remote(checkpoint, protocols, lm_checkpoint=lm_checkpoint, token_lm_checkpoint=token_lm_checkpoint,
             threads=cfg.threads, name=name,
             checkpoint_name=str(cfg.checkpoint))
    if cfg.ship_files:
        refs = (checkpoint, *protocols.values(), lm_checkpoint, token_lm_checkpoint)
        hold(agent, name, tuple(r for r in refs if r is not None))
    return agent


def kill_agent(agent: Any, *, no_restart: bool = True) -> None:
    """End an agent actor: ``ray.kill(agent, no_restart=no_restart)``, then, when it cannot come back
    (``no_restart``), drop the driver's hold on the files shipped to it so that Ray frees them.

    ``no_restart=False`` kills the process only (Ray restarts the agent, which finds its files again).
    """
    import ray

    try:
        ray.kill(agent, no_restart=no_restart)
    finally:
        if no_restart:
            release_agent(agent)
