"""Where an agent runs: the GPUs Ray gives each agent actor, and the torch device inside it.

``num_gpus="auto"`` asks Ray for 1 GPU per agent where the cluster has GPUs (a fraction when there are more
agents than GPUs, so several share one), else 0. Inside the actor the model goes to CUDA when Ray gave the
actor a GPU and torch sees one (outside Ray: whenever torch sees one); when Ray gave it a GPU id but torch sees
no CUDA (a CPU build of torch, or fake GPU resources as in ``ray.init(num_gpus=2)``) it falls back to the CPU
and says so in one log line.
"""

from __future__ import annotations

import logging
import math

__all__ = ["pick_device", "resolve_num_gpus"]

log = logging.getLogger("latentcomm.agents")


def resolve_num_gpus(spec: float | str, num_agents: int, cluster_gpus: float) -> float:
    """GPUs to request per agent.

    Args:
        spec: a number >= 0 (returned as is) or ``"auto"``.
        num_agents: agents that will share the cluster's GPUs (>= 1).
        cluster_gpus: GPUs Ray sees in the cluster (``ray.cluster_resources().get("GPU", 0)``).

    Returns:
        For ``auto``: 0 without GPUs; 1 when every agent can have a whole GPU; else the share
        ``1 / ceil(num_agents / gpus)`` so the agents pack evenly (4 agents on 2 GPUs -> 0.5).

    >>> resolve_num_gpus("auto", 4, 2.0), resolve_num_gpus("auto", 2, 4.0), resolve_num_gpus("auto", 3, 0)
    (0.5, 1.0, 0.0)
    """
    if spec != "auto":
        value = float(spec)
        if not value >= 0:
            raise ValueError(f"num_gpus must be 'auto' or a number >= 0, got {spec!r}")
        return value
    if num_agents < 1:
        raise ValueError(f"num_agents must be >= 1, got {num_agents}")
    gpus = math.floor(cluster_gpus)
    if gpus < 1:
        return 0.0
    if num_agents <= gpus:
        return 1.0
    return 1.0 / math.ceil(num_agents / gpus)


def pick_device(gpu_ids: list | None, *, name: str) -> str:
    """The torch device of an agent.

    Args:
        gpu_ids: the GPU ids Ray gave the actor, or None outside Ray.
        name: shown in the log line.

    Returns:
        ``cuda`` when torch sees a GPU and (inside Ray) Ray granted one; else ``cpu``. When Ray granted
        GPU ids but torch sees no CUDA (a CPU build of torch, or fake GPU resources) it logs the fallback.
    """
    import torch

    cuda = torch.cuda.is_available()
    if gpu_ids is None:
        return "cuda" if cuda else "cpu"
    if gpu_ids and cuda:
        return "cuda"
    if gpu_ids:
        message = (f"agent {name}: Ray assigned GPU id(s) {list(gpu_ids)} but torch {torch.__version__} sees no CUDA "
                   "device; falling back to CPU")
        log.warning(message)
        print(f"[latentcomm] {message}", flush=True)
    return "cpu"


def _ray_gpu_ids() -> list | None:
    """GPU ids Ray assigned to this worker, or None when not running inside Ray."""
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else None
    except Exception:
        return None
