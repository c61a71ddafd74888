"""Watching a sweep's agents for what Ray does not recover from by itself (``experiments.common.trials``).

Ray restarts an agent whose process or node died (``max_restarts``) and replays its interrupted calls
(``max_task_retries``), as long as some node has room for it. ``AgentWatch`` says when that is not so: an agent
waits for a place that the trials, holding their CPUs while they wait for it, never free; an agent is gone for good;
or the nodes left after losing one hold too few CPUs for the agents and a trial. It reads the GCS's actor table
(``ray._private.state``: no dashboard needed) from a thread, once a second.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["AgentWatch", "actors_in"]

log = logging.getLogger(__name__)


def actors_in(handles: Any) -> list:
    """The actor handles in what an agents context yields (a list of pairs, a dict of members)."""
    import ray

    if isinstance(handles, ray.actor.ActorHandle):
        return [handles]
    if isinstance(handles, dict):
        handles = list(handles.values())
    if isinstance(handles, (list, tuple)):
        return [a for h in handles for a in actors_in(h)]
    return []


class AgentWatch:
    """Watches the agents of a round of trials from a thread (``with AgentWatch(...) as watch:``); ``stuck`` says
    what Ray will not recover from by itself (None while all is well), and the sweep then stops the round's trials
    (``experiments.common.trials.run_trials(stop=...)``) and places its agents anew:

    - an agent has waited ``grace`` seconds for a place in the cluster: Ray restarts it (its node was lost) but no
      node has room for it, as the trials hold the CPUs while they wait for it (or its GPUs went with the node).
      Waiting: the GCS gives it no worker yet (port 0), or an address on a node that is gone; an agent loading its
      model has a worker and is not waiting;
    - an agent is gone for good (its restarts spent);
    - the cluster lost CPUs (a node) and those left hold fewer than the agents and one trial reserve
      (``need_cpus``): whichever Ray places first, agents or trials, the others would wait for ever.

    ``lost``: whether an agent died during the round (Ray restarted it) or the round is stuck.
    """

    def __init__(self, actors: list, grace: float, need_cpus: float, period: float = 1.0) -> None:
        self.actors, self.grace, self.need_cpus, self.period = actors, grace, need_cpus, period
        self.stuck: str | None = None
        self.restarts: dict[str, int] = {}
        self._first: dict[str, int] = {}
        self._waiting: dict[str, float] = {}
        self._cpus = float("inf")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latentcomm-agent-watch", daemon=True)

    def __enter__(self) -> AgentWatch:
        try:
            self._check()  # the restart counts and CPUs this round starts with
        except Exception:
            log.debug("agent watch", exc_info=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    @property
    def lost(self) -> bool:
        return self.stuck is not None or any(n > self._first.get(k, n) for k, n in self.restarts.items())

    def _run(self) -> None:
        while not self._done.wait(self.period) and self.stuck is None:
            try:
                self._check()
            except Exception:  # the GCS briefly unreachable, or Ray's private API changed: watch on, or stay idle
                log.debug("agent watch", exc_info=True)

    def _check(self) -> None:
        import ray
        from ray._private.state import actors as actor_table  # the GCS's actor table (no dashboard needed)

        cpus = float(ray.cluster_resources().get("CPU", 0.0))  # of the nodes alive
        if cpus < self._cpus - 1e-9 and cpus < self.need_cpus - 1e-9 and self._cpus < float("inf"):
            self.stuck = (f"the cluster lost CPUs: {cpus:g} left, fewer than the agents and one trial reserve "
                          f"({self.need_cpus:g})")
            return
        self._cpus = min(self._cpus, cpus)
        alive_nodes = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        now = time.monotonic()
        for actor in self.actors:
            info = actor_table(actor._actor_id.hex())
            key, state = info.get("Name") or info["ActorID"], info.get("State")
            self.restarts[key] = int(info.get("NumRestarts", 0))
            self._first.setdefault(key, self.restarts[key])
            if state == "DEAD":
                self.stuck = f"agent {key} is gone for good ({self.restarts[key]} restarts)"
                return
            address = info.get("Address") or {}
            waiting = state != "ALIVE" and (not address.get("Port") or address.get("NodeID") not in alive_nodes)
            if not waiting:
                self._waiting.pop(key, None)
                continue
            since = self._waiting.setdefault(key, now)
            if now - since >= self.grace:
                self.stuck = (f"agent {key} has waited {now - since:.0f} s for a place in the cluster "
                              f"({state.lower()}; the nodes left have no room for it)")
                return
