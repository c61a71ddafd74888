"""Running a sweep's trials on Ray: joining or starting Ray, the agent actors that serve the trials, and the Tune
grid that writes each finished trial's row at once.

Each trial is ``trial_fn(spec, **shared)``; its row is written to ``<run_dir>/rows/<key>.json`` atomically as it
reports, so a sweep that dies, or is stopped with Ctrl-C, resumes without redoing finished trials
(``experiments.common.sweep.missing_trials``). A trial that fails is retried twice.

Losing a node: Ray restarts the agents that ran there on the nodes left (``max_restarts``; their interrupted calls
wait and are replayed, ``max_task_retries``) and Tune reruns the trials that ran there. When the nodes left cannot
hold the agents beside a trial, or an agent finds no room on them for ``AGENT_PLACEMENT_GRACE_S`` (the trials hold
their CPUs while they wait for it, or its GPUs went with the node), the sweep stops its trials, places every agent
anew for the cluster as it is now and runs the trials that have no row yet; it ends with the rows of an undisturbed
run (``tests/test_node_loss.py``). The console names our own way to resume, "rerun the same command", and not
Tune's ``Tuner.restore``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agents import AgentConfig, kill_agent, make_agent
from agents.watch import AgentWatch, actors_in
from calm.files import atomic_write_text
from calm.ray_runtime import init_ray

__all__ = ["NAMESPACE", "agent_pairs", "agent_pool", "connect_ray", "row_listener", "run_trials", "run_with_agents",
           "run_with_pool"]

NAMESPACE = "latentcomm"
#: seconds an agent may wait for a place in the cluster (its node lost, no room on the others) before the sweep stops
#: its trials and places every agent anew (``LATENTCOMM_AGENT_GRACE_S``); an agent that is being started (loading its
#: model) is not waiting
AGENT_PLACEMENT_GRACE_S = float(os.environ.get("LATENTCOMM_AGENT_GRACE_S", "60"))
#: times one sweep places its agents anew after losing some (then the trials without a row are left for a rerun)
MAX_AGENT_REPLACEMENTS = 3
_INTERRUPTED = threading.Event()  # set when Tune ends a run on Ctrl-C (SIGINT): no further round then
_ROW_LISTENERS: list[Callable[[str, dict], None]] = []  # told of each row as it is written (row_listener)


@contextmanager
def row_listener(listener: Callable[[str, dict], None]) -> Iterator[None]:
    """Within the block, ``listener(key, row)`` is called in the driver for each trial row as it is written (the
    experiment tracker logs the trial live). A listener that raises is reported once and dropped: tracking never
    costs a row."""
    _ROW_LISTENERS.append(listener)
    try:
        yield
    finally:
        _ROW_LISTENERS.remove(listener)


def _tell_listeners(key: str, row: dict) -> None:
    for listener in list(_ROW_LISTENERS):
        try:
            listener(key, row)
        except Exception as exc:  # noqa: BLE001 - a tracker's failure must not stop the sweep
            print(f"[track] logging trial {key} failed ({type(exc).__name__}: {exc}); the trials left are logged "
                  "when the sweep ends", file=sys.stderr, flush=True)
            _ROW_LISTENERS.remove(listener)


def connect_ray(address: str, num_cpus: int | None) -> bool:
    """Join or start Ray (``calm.ray_runtime.init_ray``); True when this call started a local Ray."""
    # a checkout used through PYTHONPATH rather than installed: Ray's workers need the same path
    runtime_env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}} if "PYTHONPATH" in os.environ else None
    return init_ray(address=address, num_cpus=num_cpus, namespace=NAMESPACE, runtime_env=runtime_env)


@contextmanager
def agent_pairs(cfg: Any, checkpoint: Path, protocols: dict[str, str], run_name: str,
                lm_checkpoint: str | None = None, token_lm_checkpoint: str | None = None) -> Iterator[list]:
    """Start ``cfg.agent_pairs`` speaker/listener pairs of agent actors (Ray must be up); kill them on exit.

    Each agent loads ``checkpoint``, the saved ``protocols`` (name -> directory) and, when given, the CALM
    language model ``lm_checkpoint`` and the token baseline ``token_lm_checkpoint``; their placement (device,
    GPU ids, pid) is printed once. Each reserves at most 0.5 logical CPU, less where the trials would leave too
    few (``agent_pool``).
    """
    import ray

    pairs: list = []
    try:
        n_agents = 2 * cfg.agent_pairs
        agent_cfg = AgentConfig(checkpoint=str(checkpoint), protocols=protocols,
                                lm_checkpoint=None if lm_checkpoint is None else str(lm_checkpoint),
                                token_lm_checkpoint=None if token_lm_checkpoint is None else str(token_lm_checkpoint),
                                num_cpus=_agent_cpus(cfg, n_agents),
                                num_gpus="auto" if cfg.num_gpus == "auto" else float(cfg.num_gpus))
        pairs = [(make_agent(agent_cfg, name=f"{run_name}-speaker{i}", num_agents=n_agents),
                  make_agent(agent_cfg, name=f"{run_name}-listener{i}", num_agents=n_agents))
                 for i in range(cfg.agent_pairs)]
        for placement in ray.get([a.placement.remote() for pair in pairs for a in pair]):
            print(f"[agents] {placement['name']}: device {placement['device']}, GPU ids {placement['gpu_ids']}, "
                  f"pid {placement['pid']}", flush=True)
        yield pairs
    finally:
        for pair in pairs:
            for actor in pair:
                kill_agent(actor)  # also releases its shipped model files


@contextmanager
def agent_pool(cfg: Any, members: dict[str, tuple[Path | str, dict[str, str]]], run_name: str) -> Iterator[dict]:
    """Start one agent actor per member, ``name -> (autoencoder checkpoint, {protocol: saved dir})`` (Ray must
    be up); kill them on exit. The heterogeneous counterpart of ``agent_pairs``: a run places as many agents as
    its pairings or relay chains need (each a fractional GPU where the cluster has fewer GPUs than agents),
    reuses them across trials, and Ray restarts a dead one (its calls are replayed: the trial loses no row).

    Each agent reserves at most 0.5 logical CPU, less when the trials (``max_concurrent x trial_cpus``) would
    otherwise leave too few for all of them.

    Yields:
        ``{name: actor handle}``; the actors are named ``<run_name>-<name>`` in Ray.
    """
    import ray

    pool: dict = {}
    agent_cpus = _agent_cpus(cfg, len(members))
    try:
        for name, (checkpoint, protocols) in members.items():
            agent_cfg = AgentConfig(checkpoint=str(checkpoint), protocols=dict(protocols), num_cpus=agent_cpus,
                                    num_gpus="auto" if cfg.num_gpus == "auto" else float(cfg.num_gpus))
            pool[name] = make_agent(agent_cfg, name=f"{run_name}-{name}", num_agents=len(members))
        for placement in ray.get([a.placement.remote() for a in pool.values()]):
            print(f"[agents] {placement['name']}: device {placement['device']}, GPU ids {placement['gpu_ids']}, "
                  f"pid {placement['pid']}", flush=True)
        yield pool
    finally:
        for actor in pool.values():
            kill_agent(actor)  # also releases its shipped model files


def _agent_cpus(cfg: Any, n_agents: int) -> float:
    """Logical CPUs per agent: what the trials (``max_concurrent x trial_cpus``) leave of the cluster's CPUs, shared by
    the agents, at most AgentConfig's 0.5 each, so that many agents on a small machine (or on the nodes a sweep has
    left) never hold every CPU while the trials wait for one."""
    import ray

    spare = float(ray.cluster_resources().get("CPU", 1.0)) - cfg.max_concurrent * cfg.trial_cpus
    return round(min(0.5, max(spare, 0.05 * n_agents) / max(n_agents, 1)), 3)


def run_with_pool(cfg: Any, members: dict[str, tuple[Path | str, dict[str, str]]], run_name: str,
                  trial_fn: Callable[..., dict], missing: list[dict], run_dir: Path,
                  shared: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``run_with_agents`` for a pool of different agents (``agent_pool``): ``trial_fn(spec, pool=..., **shared)``.

    Returns ``(ran, failed)`` as ``run_with_agents``.
    """
    return _run_on_ray(cfg, lambda: agent_pool(cfg, members, run_name), "pool", trial_fn, missing, run_dir, shared)


def _run_on_ray(cfg: Any, agents: Callable[[], Any], name: str, trial_fn: Callable[..., dict],
                missing: list[dict], run_dir: Path, shared: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Connect Ray, enter the ``agents()`` context and run the missing trials with its value as ``shared[name]``;
    ``(ran, failed)``. Shuts down a Ray it started.

    A round that was stopped as ``agents.watch.AgentWatch`` says (an agent found no room on the nodes left for
    ``AGENT_PLACEMENT_GRACE_S``, or those nodes cannot hold the agents and a trial), or whose trials failed while
    Ray restarted an agent, is followed by another (not after a Ctrl-C), with every agent placed anew for the
    cluster as it is then, for the trials that still have no row (at most ``MAX_AGENT_REPLACEMENTS`` more rounds).
    """
    import ray

    if not missing:
        return [], []

    def has_row(spec: dict) -> bool:
        return (run_dir / "rows" / f"{spec['key']}.json").is_file()

    started = connect_ray(cfg.address, cfg.num_cpus)
    try:
        todo, failed = list(missing), []
        for round_ in range(1 + MAX_AGENT_REPLACEMENTS):
            with agents() as handles:
                actors = actors_in(handles)
                need = len(actors) * _agent_cpus(cfg, len(actors)) + cfg.trial_cpus  # agents + one trial
                with AgentWatch(actors, AGENT_PLACEMENT_GRACE_S, need) as watch:
                    failed = run_trials(trial_fn, todo, run_dir, trial_cpus=cfg.trial_cpus,
                                        max_concurrent=cfg.max_concurrent, shared={name: handles, **shared},
                                        stop=lambda w=watch: w.stuck is not None)
            todo = [spec for spec in todo if not has_row(spec)]
            # another round for what the lost agents cost: the trials of a stopped round, or failed ones
            if not todo or _INTERRUPTED.is_set() or not (watch.stuck or (watch.lost and failed)):
                break
            why = watch.stuck or f"{len(failed)} trials failed while Ray restarted an agent"
            if round_ == MAX_AGENT_REPLACEMENTS:
                print(f"[agents] {why}, after {MAX_AGENT_REPLACEMENTS} placements anew: the {len(todo)} trials "
                      "without a row are left for a rerun", flush=True)
                break
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            print(f"[agents] {why}: placing every agent anew on the cluster's {nodes} live node(s) "
                  f"({int(ray.cluster_resources().get('CPU', 0))} CPUs) and running the {len(todo)} trials "
                  "without a row", flush=True)
        failed = [key for key in failed if key in {spec["key"] for spec in todo}]
        ran = [spec["key"] for spec in missing if has_row(spec)]
    finally:
        if started:
            ray.shutdown()
    return ran, failed


def _trainable(config: dict, *, trial_fn: Callable[..., dict], shared: dict) -> None:
    """Ray Tune function trainable: one grid point -> one reported row."""
    from ray import tune

    spec = config["trial"]
    row = trial_fn(spec, **shared)
    tune.report({"key": spec["key"], "row_json": json.dumps(row)})


def _row_writer(rows_dir: Path, total: int):
    """A Tune callback (in the driver) that writes each trial's row to ``rows_dir/<key>.json`` at once,
    with a progress bar over the ``total`` trials (stderr; Tune's own output is silenced)."""
    from ray import tune
    from tqdm import tqdm

    class RowWriter(tune.Callback):
        def __init__(self) -> None:
            self.bar, self.failed = None, 0

        def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment state: not the bar
            return {**self.__dict__, "bar": None}

        def setup(self, **info) -> None:
            self.bar = tqdm(total=total, desc="[run] trials", unit="trial", dynamic_ncols=True, mininterval=2.0,
                            file=sys.stderr)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "row_json" not in result:
                return
            path = rows_dir / f"{result['key']}.json"
            atomic_write_text(path, result["row_json"] + "\n")  # a row is either complete or absent
            _tell_listeners(result["key"], json.loads(result["row_json"]))
            if self.bar is not None:
                self.bar.update(1)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.failed += 1
            if self.bar is not None:
                self.bar.set_postfix(failed=self.failed)

        def on_experiment_end(self, trials, **info):
            if self.bar is not None:
                self.bar.close()

    return RowWriter()


class _OwnHints(logging.Filter):
    """On Tune's logger (``ray.tune.tune``): its lines about resuming through its own API (``Tuner.restore``) and
    its list of trials that did not complete are dropped, for our own ``rerun the same command`` (the rows are the
    sweep's state, not Tune's experiment folder); its notice of a Ctrl-C becomes ours."""

    DROP = ("Tuner.restore", "Resume experiment with", "Resume training with", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Stop signal received" in message:
            _INTERRUPTED.set()
            print("[run] stopping: the trials running now are ended; every row written so far is kept, and the same "
                  "command runs the rest", file=sys.stderr, flush=True)
            return False
        return not any(text in message for text in self.DROP)


def _stopper(stop: Callable[[], bool]):
    """A Tune stopper that ends every trial once ``stop()`` is true (asked each step of Tune's loop)."""
    from ray import tune

    class StopWhen(tune.Stopper):
        def __init__(self, stop: Callable[[], bool]) -> None:  # an argument: the class closes over nothing
            self.stop = stop

        def __getstate__(self) -> dict:  # Tune pickles its run config with the experiment: not the closure
            return {"stop": None}

        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            return bool(self.stop is not None and self.stop())

    return StopWhen(stop)


#: errors of a trial whose Ray actor or node was lost (not of the trial's own code)
NODE_LOSS_ERRORS = ("ActorUnavailableError", "ActorDiedError", "NodeDiedError", "RayActorError")
#: the pause before the trials a lost node took are run again (Ray marks a node dead within seconds)
NODE_LOSS_PAUSE_S = 5.0


def run_trials(trial_fn: Callable[..., dict], missing: list[dict], run_dir: Path, *, trial_cpus: float,
               max_concurrent: int, shared: dict[str, Any], stop: Callable[[], bool] | None = None) -> list[str]:
    """Run ``trial_fn(spec, **shared)`` for every spec in ``missing`` as a Ray Tune grid.

    Each trial's row is written to ``run_dir/rows/<key>.json`` as it reports; a trial that fails is
    retried twice (``FailureConfig``); trials that a lost node took (``NODE_LOSS_ERRORS``) run once more after
    ``NODE_LOSS_PAUSE_S``, unless every trial failed so (then nothing is left to run them). ``stop``: asked as the trials run; once true, every trial is ended (the
    rest have no row). Returns the keys of trials that still failed.
    """
    from ray import tune

    if not missing:
        return []
    trainable = tune.with_resources(tune.with_parameters(_trainable, trial_fn=trial_fn, shared=shared),
                                    {"cpu": trial_cpus})
    name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    # Tune's new console engine prints its experiment box and result paths even at verbose=0 (Ray 2.60);
    # the legacy one (Ray's documented switch) stays silent, and our own lines say where rows go
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(missing)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str((run_dir / "tune").resolve()),
            failure_config=tune.FailureConfig(max_failures=2),
            callbacks=[_row_writer(run_dir / "rows", len(missing))],
            stop=None if stop is None else _stopper(stop),
            verbose=0,
        ),
    )
    tune_logger, hints = logging.getLogger("ray.tune.tune"), _OwnHints()
    _INTERRUPTED.clear()
    tune_logger.addFilter(hints)
    try:
        grid = tuner.fit()
    finally:
        tune_logger.removeFilter(hints)
    failed = [result for result in grid if result.error is not None]
    lost = [r.config["trial"] for r in failed if any(name in repr(r.error) for name in NODE_LOSS_ERRORS)]
    if lost and lost != missing and not _INTERRUPTED.is_set() and (stop is None or not stop()):
        # a trial whose actor sat on a lost node fails its Tune retries within milliseconds, before Ray has marked
        # the node dead; once it has, the same trials run again (a row is a function of its spec)
        print(f"[run] {len(lost)} trials lost their node; running them again in {NODE_LOSS_PAUSE_S:.0f} s",
              flush=True)
        time.sleep(NODE_LOSS_PAUSE_S)
        again = set(run_trials(trial_fn, lost, run_dir, trial_cpus=trial_cpus, max_concurrent=max_concurrent,
                               shared=shared, stop=stop))
        return [str(r.config["trial"]["key"]) for r in failed
                if r.config["trial"] not in lost or str(r.config["trial"]["key"]) in again]
    return [str(result.config["trial"]["key"]) for result in failed]


def run_with_agents(cfg: Any, checkpoint: Path, protocols: dict[str, str], run_name: str,
                    trial_fn: Callable[..., dict], missing: list[dict], run_dir: Path,
                    shared: dict[str, Any], lm_checkpoint: str | None = None,
                    token_lm_checkpoint: str | None = None) -> tuple[list[str], list[str]]:
    """Connect Ray, start the agent pairs and run the missing trials (``trial_fn(spec, pairs=..., **shared)``).
    ``lm_checkpoint``, ``token_lm_checkpoint``: language models every agent loads too (``agent_pairs``).

    Returns ``(ran, failed)``: the keys that have a row now (an interrupted sweep, ^C, leaves the rest for
    the next run) and those that still failed. Shuts down a Ray it started.
    """
    return _run_on_ray(cfg, lambda: agent_pairs(cfg, checkpoint, protocols, run_name, lm_checkpoint,
                                                token_lm_checkpoint), "pairs", trial_fn, missing, run_dir, shared)


