"""How checkpoints and protocols reach agents on any node: through Ray's object store, not a shared filesystem.

The driver packs a directory's top-level files (``pack_directory``), puts the bundle into the object store
(``ship``) and hands the object ref to the agent's constructor; the agent writes the files on its own node
(``localize``) into a temporary folder that lives as long as the agent.

Lifetime. Ray frees an object once no reference holds it, and an agent that Ray restarts after a crash
re-runs its constructor with the same refs: Ray itself does not keep constructor arguments alive for that
(the restart fails with ``ReferenceCountingAssertionError``). So the driver holds the refs of each agent
(``hold``, keyed by the actor's id) for as long as Ray may restart it, and drops them when the agent has
ended for good: ``agents.kill_agent(handle)`` kills without restart and releases; ``release_agent(handle or
name)`` releases after an agent ended some other way. Starting an agent under a name also drops what was
held for an earlier agent of that name in the same Ray namespace (Ray frees a name only once its actor is
dead for good). ``held_agents()`` lists what is held.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FileBundle", "held_agents", "hold", "localize", "pack_directory", "release_agent", "ship",
           "unpack_directory"]

#: a directory's top-level files as ``{file name: bytes}``: how checkpoints and protocols travel to agents
FileBundle = Mapping[str, bytes]


def pack_directory(path: str | os.PathLike) -> dict[str, bytes]:
    """The top-level regular files of a checkpoint or protocol directory, as bytes (sub-folders are skipped:
    a training checkpoint's ``ray/`` history is not needed to load the model)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no directory at {root}")
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def unpack_directory(files: FileBundle, directory: str | os.PathLike) -> str:
    """Write a ``pack_directory`` bundle into ``directory``; returns its path."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bundle file names must be plain names, got {name!r}")
        (root / name).write_bytes(data)
    return str(root)


def ship(path: str | os.PathLike) -> Any:
    """Pack the directory at ``path`` and put it into Ray's object store; returns the object ref.

    The caller must keep the ref alive while an agent may need it (``hold``).
    """
    import ray

    return ray.put(pack_directory(path))


def is_path(item: Any) -> bool:
    """Whether a checkpoint or protocol argument is a path (else files: a bundle or an object ref to one)."""
    return isinstance(item, (str, os.PathLike))


def localize(item: str | os.PathLike | FileBundle | Any, directory: str | os.PathLike) -> str:
    """A local path for a checkpoint or protocol that reached an agent as a path (returned as is), as a bundle
    or as an object ref to one (written into ``directory``). Ray resolves refs passed as top-level
    constructor arguments itself; refs nested in a dict (the protocols) arrive as refs and are fetched here."""
    if is_path(item):
        return str(item)
    if not isinstance(item, Mapping):
        import ray

        item = ray.get(item)
    return unpack_directory(item, directory)


@dataclass(frozen=True)
class _Held:
    name: str
    namespace: str | None
    refs: tuple


#: actor id (hex) -> the object refs of the files shipped to that agent
_HELD: dict[str, _Held] = {}
_LOCK = threading.Lock()


def _namespace() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().namespace if ray.is_initialized() else None
    except Exception:
        return None


def _actor_key(agent: Any) -> str:
    return agent._actor_id.hex()


def hold(agent: Any, name: str, refs: tuple | list) -> None:
    """Keep ``refs`` (the files shipped to the actor ``agent``, named ``name`` in Ray) alive until the agent is
    released; drops whatever was held for an earlier agent of the same name in this Ray namespace."""
    namespace = _namespace()
    with _LOCK:
        for key in [k for k, v in _HELD.items() if v.name == name and v.namespace == namespace]:
            del _HELD[key]
        _HELD[_actor_key(agent)] = _Held(name, namespace, tuple(refs))


def release_agent(agent: Any) -> bool:
    """Drop the driver's references to the files shipped to an agent that has ended for good, so that Ray can
    free them. Never call it for an agent Ray may still restart: the restart would not find its files.

    Args:
        agent: the actor handle, or its name in Ray (in the current namespace).

    Returns:
        Whether anything was held for it.
    """
    with _LOCK:
        if isinstance(agent, str):
            namespace = _namespace()
            keys = [k for k, v in _HELD.items() if v.name == agent and v.namespace == namespace]
        else:
            keys = [k for k in (_actor_key(agent),) if k in _HELD]
        for key in keys:
            del _HELD[key]
    return bool(keys)


def held_agents() -> list[str]:
    """Names of the agents whose shipped files the driver holds (sorted)."""
    with _LOCK:
        return sorted(v.name for v in _HELD.values())
