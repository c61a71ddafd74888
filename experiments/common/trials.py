"""Running a sweep's trials on Ray: joining or starting Ray, the agent actors that serve the trials, and the Tune
grid that writes each finished trial's row at once.

Each trial is ``trial_fn(spec, **shared)``; its row is written to ``<run_dir>/rows/<key>.json`` atomically as it
reports, so a sweep that dies, or is stopped with Ctrl-C, resumes without redoing finished trials
(``experiments.common.sweep.missing_trials``). A trial that fails is retried twice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agents import AgentConfig, kill_agent, make_agent
from calm.ray_runtime import init_ray

__all__ = ["NAMESPACE", "agent_pairs", "agent_pool", "connect_ray", "run_trials", "run_with_agents", "run_with_pool"]

NAMESPACE = "latentcomm"


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
    GPU ids, pid) is printed once.
    """
    import ray

    pairs: list = []
    try:
        agent_cfg = AgentConfig(checkpoint=str(checkpoint), protocols=protocols,
                                lm_checkpoint=None if lm_checkpoint is None else str(lm_checkpoint),
                                token_lm_checkpoint=None if token_lm_checkpoint is None else str(token_lm_checkpoint),
                                num_gpus="auto" if cfg.num_gpus == "auto" else float(cfg.num_gpus))
        n_agents = 2 * cfg.agent_pairs
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
    # logical CPUs: what the trials leave, shared by the agents (at most AgentConfig's 0.5 each), so that a pool of
    # many agents on a small machine never holds every CPU while the trials wait for one
    spare = float(ray.cluster_resources().get("CPU", 1.0)) - cfg.max_concurrent * cfg.trial_cpus
    agent_cpus = round(min(0.5, max(spare, 0.05 * len(members)) / max(len(members), 1)), 3)
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
    ``(ran, failed)``. Shuts down a Ray it started."""
    import ray

    if not missing:
        return [], []
    started = connect_ray(cfg.address, cfg.num_cpus)
    try:
        with agents() as handles:
            failed = run_trials(trial_fn, missing, run_dir, trial_cpus=cfg.trial_cpus,
                                max_concurrent=cfg.max_concurrent, shared={name: handles, **shared})
        ran = [spec["key"] for spec in missing if (run_dir / "rows" / f"{spec['key']}.json").is_file()]
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
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(result["row_json"] + "\n")
            tmp.replace(path)  # atomic: a row is either complete or absent
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


def run_trials(trial_fn: Callable[..., dict], missing: list[dict], run_dir: Path, *, trial_cpus: float,
               max_concurrent: int, shared: dict[str, Any]) -> list[str]:
    """Run ``trial_fn(spec, **shared)`` for every spec in ``missing`` as a Ray Tune grid.

    Each trial's row is written to ``run_dir/rows/<key>.json`` as it reports; a trial that fails is
    retried twice (``FailureConfig``). Returns the keys of trials that still failed.
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
            verbose=0,
        ),
    )
    grid = tuner.fit()
    return [str(result.config["trial"]["key"]) for result in grid if result.error is not None]


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


