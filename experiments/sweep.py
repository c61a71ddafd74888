"""The sweep engine every experiment runs on: Ray, the Tune grid, resumable rows, result files, the CLI.

An experiment is a short file that defines its ``Config`` dataclass, its grid (a list of dicts, each
with a unique file-name-safe ``key``), one trial (``trial_fn(spec, **shared) -> row dict``), its row
columns and its tables and plots. This module does the rest:

    run_dir = open_run_dir(results_dir, run_name, settings_hash(cfg, NOT_IN_HASH), checkpoint_id)
    missing = missing_trials(grid, run_dir, cfg.max_trials)
    ran, failed = run_with_agents(cfg, checkpoint, protocols, run_name, trial_fn, missing, run_dir, shared={...})
    frame = collect_rows(grid, run_dir, COLUMNS); write_frame(frame, run_dir)  # then the experiment's report
    print_outcome(len(frame), len(grid), run_dir, seconds, failed)

Every finished trial's row is written at once to ``<run_dir>/rows/<key>.json`` (atomically), so a sweep
that dies, or is stopped with Ctrl-C, resumes without redoing finished trials. ``cli`` turns the
errors found after argument parsing (unknown corpus, missing checkpoint, L not a multiple of K) into
one-line errors with exit status 2, as argparse does for bad flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "NAMESPACE", "NOT_IN_HASH", "SweepConfig", "SweepResult", "agent_pairs", "agent_pool", "cli", "collect_rows",
    "connect_ray", "git_commit", "make_channel", "missing_trials", "open_run_dir", "print_outcome", "run_trials",
    "run_with_agents", "run_with_pool", "settings_hash", "write_frame",
]

NAMESPACE = "latentcomm"
T = TypeVar("T")


@dataclass
class SweepConfig:
    """What every experiment's config holds: where runs go, the autoencoder, Ray and the sweep's pace.

    Experiments subclass it with their own grid axes and settings (``experiments.referential_game.Config``).
    """

    run_name: str | None = None
    """run directory name under results_dir; default <experiment>-<hash of the settings that change rows>"""
    results_dir: str = "results"
    """where run directories go"""
    runs_dir: str = "runs"
    """where the autoencoder trained when no checkpoint is given is cached"""
    checkpoint: str | None = None
    """autoencoder checkpoint directory; none: train the tiny one once and cache it under runs_dir"""
    corpus: str = "kjv+shakespeare"
    """corpus of passages and autoencoder training data (see calm.data)"""
    tokenizer: str = "bpe:8192"
    """tokenizer spec when training an autoencoder (a checkpoint brings its own)"""
    ae_preset: str = "tiny"
    """autoencoder size preset (calm.autoencoder.PRESETS) when training one"""
    ae_latent_dim: int | None = None
    """override the preset's latent size l"""
    ae_hidden_size: int | None = None
    """override the preset's width d"""
    ae_intermediate_size: int | None = None
    """override the preset's SwiGLU width"""
    ae_steps: int = 3000
    """optimiser steps when training the autoencoder"""
    ae_batch_size: int = 256
    """sequences (chunks of K tokens) per autoencoder training step"""
    ae_time_limit: float = 0.0
    """stop autoencoder training after this many seconds (0: no limit). A limit makes the learning-rate
    schedule follow the clock, so the weights (and every result) then depend on the machine's speed"""
    ae_seed: int = 0
    """seed of autoencoder training and of the passage draws"""
    agent_pairs: int = 1
    """speaker/listener actor pairs serving the trials"""
    num_gpus: str = "auto"
    """GPUs per agent actor: auto (1 or a share where Ray sees GPUs, else 0) or a number"""
    address: str = "auto"
    """Ray: auto joins a running cluster (RAY_ADDRESS or `ray start`) else starts a local one; local; or an address"""
    num_cpus: int | None = None
    """CPUs of a local Ray (default: all cores)"""
    max_concurrent: int = 2
    """trials running at once"""
    trial_cpus: float = 0.5
    """logical CPUs per trial (the env and driver loop; the models run in the agents)"""
    max_trials: int | None = None
    """run at most this many of the missing trials, then stop (a rerun continues)"""
    plots: bool = True
    """write the PNG plots"""

    def __post_init__(self) -> None:
        for name in ("ae_steps", "ae_batch_size", "agent_pairs", "max_concurrent"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_gpus != "auto":
            try:
                if float(self.num_gpus) < 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"num_gpus must be 'auto' or a number >= 0, got {self.num_gpus!r}") from None
        if not self.ae_time_limit >= 0:
            raise ValueError(f"ae_time_limit must be >= 0 seconds, got {self.ae_time_limit}")
        if not self.trial_cpus > 0:
            raise ValueError(f"trial_cpus must be > 0, got {self.trial_cpus}")
        if self.max_trials is not None and self.max_trials < 0:
            raise ValueError(f"max_trials must be >= 0 or none, got {self.max_trials}")
        if self.run_name is not None and (not self.run_name or "/" in self.run_name):
            raise ValueError(f"run_name must be a non-empty name without '/', got {self.run_name!r}")


# fields that neither change a row nor name the run: where things go and how fast they run; experiments add
# their grid axes (a rerun with more sigmas or seeds adds rows to the same run)
NOT_IN_HASH = {"run_name", "results_dir", "runs_dir", "agent_pairs", "num_gpus", "address", "num_cpus",
               "max_concurrent", "trial_cpus", "max_trials", "plots"}


@dataclass
class SweepResult:
    """What an experiment's ``main`` returns."""

    run_dir: Path
    """results/<run>"""
    ran: list[str]
    """keys of the trials this call ran"""
    failed: list[str]
    """keys of trials that failed after retries (rerun to retry them)"""
    rows: int
    """rows in results.csv"""
    total: int
    """grid points (rows < total: the sweep was interrupted or trials failed; rerun to finish)"""


def make_channel(name: str, sigma: float, *, erasure_p: float = 0.5, fading_block: int | None = None):
    """The channel model of a grid point by name (the env applies it; the receiver is told the same model).

    ``awgn``: ``y = x + sigma N``; ``erasure``: each symbol erased (0) with prob ``erasure_p``, then AWGN;
    ``rayleigh``: ``y = h x + sigma N``, one Rayleigh gain per message (or per ``fading_block`` symbols).
    """
    import environments

    if name == "awgn":
        return environments.AWGN(sigma)
    if name == "erasure":
        return environments.Chain([environments.Erasure(erasure_p), environments.AWGN(sigma)])
    if name == "rayleigh":
        return environments.RayleighBlockFading(sigma, block_length=fading_block)
    raise ValueError(f"unknown channel {name!r}; choose awgn, erasure or rayleigh")


def settings_hash(cfg: Any, exclude: set[str]) -> str:
    """Hash of every setting of the dataclass ``cfg`` that changes a row (all fields but ``exclude``)."""
    key = {k: v for k, v in asdict(cfg).items() if k not in exclude}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def git_commit() -> str:
    """The repository's commit (with -dirty), or unknown outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def connect_ray(address: str, num_cpus: int | None) -> bool:
    """Join or start Ray (``calm.ray_runtime.init_ray``); True when this call started a local Ray."""
    from calm.ray_runtime import init_ray

    # ray submit fallback: the package is on sys.path only through the script's insert; pass it to workers
    runtime_env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}} if "PYTHONPATH" in os.environ else None
    return init_ray(address=address, num_cpus=num_cpus, namespace=NAMESPACE, runtime_env=runtime_env)


@contextmanager
def agent_pairs(cfg: SweepConfig, checkpoint: Path, protocols: dict[str, str], run_name: str,
                lm_checkpoint: str | None = None, token_lm_checkpoint: str | None = None) -> Iterator[list]:
    """Start ``cfg.agent_pairs`` speaker/listener pairs of agent actors (Ray must be up); kill them on exit.

    Each agent loads ``checkpoint``, the saved ``protocols`` (name -> directory) and, when given, the CALM
    language model ``lm_checkpoint`` and the token baseline ``token_lm_checkpoint``; their placement (device,
    GPU ids, pid) is printed once.
    """
    import ray

    from agents import AgentConfig, make_agent

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
                ray.kill(actor, no_restart=True)


@contextmanager
def agent_pool(cfg: SweepConfig, members: dict[str, tuple[Path | str, dict[str, str]]], run_name: str) -> Iterator[dict]:
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

    from agents import AgentConfig, make_agent

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
            ray.kill(actor, no_restart=True)


def run_with_pool(cfg: SweepConfig, members: dict[str, tuple[Path | str, dict[str, str]]], run_name: str,
                  trial_fn: Callable[..., dict], missing: list[dict], run_dir: Path,
                  shared: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``run_with_agents`` for a pool of different agents (``agent_pool``): ``trial_fn(spec, pool=..., **shared)``.

    Returns ``(ran, failed)`` as ``run_with_agents``.
    """
    return _run_on_ray(cfg, lambda: agent_pool(cfg, members, run_name), "pool", trial_fn, missing, run_dir, shared)


def _run_on_ray(cfg: SweepConfig, agents: Callable[[], Any], name: str, trial_fn: Callable[..., dict],
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


def open_run_dir(results_dir: str, run_name: str, settings: str, checkpoint_id: str | None) -> Path:
    """``<results_dir>/<run_name>`` with its ``rows/``; refuses a directory of other settings or weights.

    Raises:
        ValueError: the directory holds rows of another settings hash or another checkpoint.
    """
    run_dir = (Path(results_dir).expanduser() / run_name).resolve()
    (run_dir / "rows").mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    if config_path.is_file():
        before = json.loads(config_path.read_text())
        if before.get("settings_hash") != settings:
            raise ValueError(f"{run_dir} holds a run with different settings (hash {before.get('settings_hash')} != "
                             f"{settings}); pick another --run-name or the same settings")
        if before.get("checkpoint_id") not in (None, checkpoint_id):
            raise ValueError(f"{run_dir} holds rows and protocols of checkpoint {before['checkpoint_id']}, not "
                             f"{checkpoint_id} (retrained or replaced); pick another --run-name or remove {run_dir}")
    return run_dir


def missing_trials(grid: list[dict], run_dir: Path, max_trials: int | None = None) -> list[dict]:
    """The grid points without a row file, in grid order (at most ``max_trials`` of them)."""
    done = {p.stem for p in (run_dir / "rows").glob("*.json")}
    missing = [spec for spec in grid if spec["key"] not in done]
    return missing if max_trials is None else missing[:max_trials]


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


def run_with_agents(cfg: SweepConfig, checkpoint: Path, protocols: dict[str, str], run_name: str,
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


def print_outcome(rows: int, total: int, run_dir: Path, seconds: float, failed: list[str]) -> None:
    """The closing lines of a run: rows written, failed trials, and whether to rerun."""
    print(f"[run] {rows}/{total} rows in {run_dir / 'results.csv'}, tables in summary.md ({seconds:.0f} s)",
          flush=True)
    if failed:
        print(f"[run] {len(failed)} trials failed ({', '.join(failed[:5])}...): rerun the same command to retry them",
              flush=True)
    if rows < total:
        print(f"[run] incomplete: {total - rows} grid points have no row yet; rerun the same command", flush=True)


def collect_rows(grid: list[dict], run_dir: Path, columns: list[str]):
    """The rows of ``grid`` that exist, one per grid point, in grid order, as a DataFrame of ``columns``."""
    import pandas as pd

    rows = []
    for spec in grid:
        path = run_dir / "rows" / f"{spec['key']}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
    return pd.DataFrame(rows, columns=columns)


def write_frame(frame, run_dir: Path) -> None:
    """``results.csv`` (and ``results.parquet`` when pyarrow is installed)."""
    frame.to_csv(run_dir / "results.csv", index=False)
    try:
        frame.to_parquet(run_dir / "results.parquet", index=False)
    except ImportError:
        pass


def cli(main: Callable[[T], Any], config_cls: type[T], *, prog: str, description: str) -> int:
    """Parse the command line into ``config_cls``, run ``main``, and return the exit status.

    Bad flags and bad values exit 2 through argparse. Errors that only show once the run starts (an
    unknown corpus, a missing or mismatched checkpoint, L not a multiple of K) become the same kind of
    one-line error with status 2, not a traceback. ``main`` returning an object with ``rows`` and
    ``total`` exits 1 while grid points are missing (rerun to finish), else 0.
    """
    from calm.checkpoint import CheckpointError
    from experiments.cli import parse_config

    cfg = parse_config(config_cls, prog=prog, description=description)
    try:
        result = main(cfg)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    rows, total = getattr(result, "rows", None), getattr(result, "total", None)
    return 0 if rows == total else 1
