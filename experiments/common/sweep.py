"""The sweep engine every study runs on: ``run_sweep``, the skeleton of a study's ``main``, and the CLI; run
directories, their rows and result files live in ``experiments.common.rundir`` (re-exported here).

A study is a short file that defines its ``Config`` dataclass (a ``SweepConfig``), a ``Study`` (its run-name
prefix, row columns, and a ``prepare`` step that fits what the trials need and returns a ``Plan``: the grid,
one trial ``trial_fn(spec, **shared) -> row dict``, the agents that serve it) and its report. ``run_sweep``
does the rest:

    checkpoint -> settings hash -> run directory -> prepare -> missing trials -> config.json
      -> trials on Ray (``experiments.common.trials``) -> results.csv -> the study's report -> outcome

Every finished trial's row is written at once to ``<run_dir>/rows/<key>.json`` (atomically), so a sweep
that dies, or is stopped with Ctrl-C, resumes without redoing finished trials. Which settings name the run
is said once, on the Config's fields: ``unhashed(...)`` marks a field that changes no row (where things go,
how fast they run) or a grid axis (a rerun with more sigmas or seeds adds rows to the same run).
``cli`` turns the errors found after argument parsing (unknown corpus, a hub corpus offline, missing checkpoint,
L not a multiple of K) into one-line errors with exit status 2, as argparse does for bad flags.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import environments
from calm.checkpoint import CheckpointError
from calm.cli import parse_config
from calm.files import DamagedFileError, atomic_write_text
from experiments.common.config import SweepConfig, settings_hash, unhashed
from experiments.common.models import checkpoint_id, ensure_checkpoint
from experiments.common.run_tracking import close_tracking, log_models, start_run_tracking, trial_logger
from experiments.common.rundir import (
    claim_single_run,
    collect_rows,
    git_commit,
    mark_finished,
    missing_trials,
    open_run_dir,
    run_finished,
    study_facts,
    write_frame,
)
from experiments.common.trials import connect_ray, row_listener, run_trials, run_with_agents, run_with_pool

# the run-directory helpers (experiments.common.rundir) are re-exported: studies import the engine from here
__all__ = [
    "Plan", "Run", "Study", "SweepConfig", "SweepResult", "claim_single_run", "cli", "collect_rows", "git_commit",
    "make_channel", "mark_finished", "missing_trials", "open_run_dir", "print_outcome", "row_listener", "run_finished",
    "run_sweep", "settings_hash", "start_run_tracking", "trial_logger", "unhashed", "write_frame",
]

T = TypeVar("T")

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


def make_channel(name: str, sigma: float, *, erasure_p: float = 0.5, fading_block: int | None = None,
                 ofdm_speed: float = 0.0, ofdm_interpolation: str = "nn"):
    """The channel model of a grid point by name (the env applies it; the receiver is told the same model).

    ``awgn``: ``y = x + sigma N``; ``erasure``: each symbol erased (0) with prob ``erasure_p``, then AWGN;
    ``rayleigh``: ``y = h x + sigma N``, one Rayleigh gain per message (or per ``fading_block`` symbols);
    ``<tdl|cdl>-<model>-<csi>``: OFDM over a 3GPP TDL or CDL channel at ``ofdm_speed`` m/s, equalised with perfect, LS or no
    CSI (``environments.ofdm``; ``ofdm_interpolation``: how LS estimates reach the data, nn or lin).
    """
    if name.startswith(("tdl-", "cdl-")):
        from environments.ofdm import ofdm_channel

        return ofdm_channel(name, sigma, speed=ofdm_speed, interpolation=ofdm_interpolation)
    if name == "awgn":
        return environments.AWGN(sigma)
    if name == "erasure":
        return environments.Chain([environments.Erasure(erasure_p), environments.AWGN(sigma)])
    if name == "rayleigh":
        return environments.RayleighBlockFading(sigma, block_length=fading_block)
    raise ValueError(f"unknown channel {name!r}; choose awgn, erasure, rayleigh or <tdl|cdl>-<a..e>-<perfect|ls|lmmse|none>")


def channel_family(name: str) -> str:
    """The family a learned link trains on for the channel ``name``: awgn, erasure, rayleigh as they are; an OFDM link
    with CSI is a told-gain channel after equalisation (``environments.ofdm``): rayleigh; without CSI: awgn."""
    if name.startswith(("tdl-", "cdl-")):
        return "awgn" if name.endswith("-none") else "rayleigh"  # perfect, ls, lmmse: equalised, gains told
    return name


def print_outcome(rows: int, total: int, run_dir: Path, seconds: float, failed: list[str]) -> None:
    """The closing lines of a run: rows written, failed trials, and whether to rerun."""
    print(f"[run] {rows}/{total} rows in {run_dir / 'results.csv'}, tables in summary.md ({seconds:.0f} s)",
          flush=True)
    if failed:
        print(f"[run] {len(failed)} trials failed ({', '.join(failed[:5])}...): rerun the same command to retry them",
              flush=True)
    if rows < total:
        print(f"[run] incomplete: {total - rows} grid points have no row yet; rerun the same command", flush=True)


@dataclass
class Plan:
    """What a study's ``prepare`` step hands ``run_sweep``: the grid, the trial and who serves it."""

    grid: list[dict[str, Any]]
    """every grid point, in a fixed order, each with a unique file-name-safe ``key``"""
    trial: Callable[..., dict]
    """``trial(spec, **shared)`` -> the row of one grid point (with ``pairs=`` or ``pool=`` when agents serve it)"""
    shared: dict[str, Any]
    """what every trial receives besides its spec"""
    describe: str = ""
    """the grid in words, for the start line (``4 protocols x 3 sigmas``)"""
    record: dict[str, Any] = field(default_factory=dict)
    """more entries for config.json (fitted facts, skipped protocols, model checkpoints)"""
    protocols: dict[str, str] | None = None
    """speaker/listener agent pairs serve the trials, each loading these saved protocols (name -> directory)"""
    pool: dict[str, tuple[Path | str, dict[str, str]]] | None = None
    """or a pool of different agents, ``name -> (autoencoder checkpoint, {protocol: saved dir})``"""
    lm_checkpoint: str | Path | None = None
    """the CALM language model every agent of the pairs loads too"""
    token_lm_checkpoint: str | Path | None = None
    """the token baseline every agent of the pairs loads too"""
    models: Callable[[Any], dict[str, Path]] | None = None
    """``models(frame)``: the models the trials trained (role -> checkpoint directory), from the finished rows; the
    tracker logs each with its training curve when the sweep ends (``run_tracking.log_models``)"""


@dataclass
class Run:
    """The run a study's ``prepare`` and ``report`` work in."""

    dir: Path
    """results/<run name>"""
    name: str
    """the run's name (agent actors are named after it)"""
    checkpoint: Path | None
    """the autoencoder checkpoint directory (None: the study trains its own models)"""
    checkpoint_id: str | None
    """``<dir name>@<sha256[:12]>`` of the weights that name the run (the autoencoder's, or ``model``'s)"""
    model: Path | None = None
    """the model that names the run when the study's ``names_run`` gives one (the dialogue's CALM)"""


@dataclass
class Study:
    """One study on the engine: ``run_sweep(cfg, Study(...))`` is its ``main``."""

    prefix: str
    """run directories are named ``<prefix>-<settings hash>[-<checkpoint hash>]`` unless --run-name is given"""
    columns: list[str]
    """the row columns, in results.csv order"""
    prepare: Callable[[Any, Run], Plan]
    """``prepare(cfg, run)``: fit or reload what the trials need, return the plan"""
    report: Callable[[Any, Any, Run, Plan], None]
    """``report(cfg, frame, run, plan)``: tables and plots of the finished rows, and the console summary"""
    checkpoint: bool = True
    """resolve the autoencoder first (``ensure_checkpoint``): its weights name the run too"""
    tabulate: Callable[[Any], Any] | None = None
    """``tabulate(rows)``: the trials' rows (a DataFrame of ``columns``) -> results.csv's frame, when a trial's row
    holds several lines (broadcast: one per listener); the report gets that frame, ``rows`` still counts trials"""
    names_run: Callable[[Any, Path], Path] | None = None
    """``names_run(cfg, autoencoder)`` -> the model checkpoint whose weights name the run instead of the autoencoder's
    (resolved, or trained once, before the run directory opens; ``Run.model``)"""


def run_sweep(cfg: Any, study: Study) -> SweepResult:
    """Run (or resume) ``study``'s sweep on ``cfg`` and write its run directory: the skeleton of every study's
    ``main``. Returns the ``SweepResult`` (rows < total: interrupted or failed trials; rerun to finish)."""
    import ray
    import torch

    t0 = time.time()
    checkpoint = ckpt_id = model = None
    if study.checkpoint:  # its weights name the run too, so a retrained autoencoder never mixes with old rows
        checkpoint = ensure_checkpoint(cfg)
        model = study.names_run(cfg, checkpoint) if study.names_run else None
        ckpt_id = checkpoint_id(model or checkpoint)
    settings = settings_hash(cfg)
    run_name = cfg.run_name or "-".join([study.prefix, settings] + ([ckpt_id.rsplit("@", 1)[1][:6]] if ckpt_id else []))
    run_dir = open_run_dir(cfg.results_dir, run_name, settings, ckpt_id, experiment=study.prefix)
    run = Run(dir=run_dir, name=run_name, checkpoint=checkpoint, checkpoint_id=ckpt_id, model=model)
    plan = study.prepare(cfg, run)
    _check_grid(plan)
    unfinished = missing_trials(plan.grid, run_dir)  # every row file read once: a damaged one stops the run here
    missing = unfinished if cfg.max_trials is None else unfinished[:cfg.max_trials]
    done = len(plan.grid) - len(unfinished)
    if not missing and run_finished(run_dir) and not cfg.overwrite:
        print(f"[run] {run_dir} is complete ({done}/{len(plan.grid)} rows); its results and reports are kept "
              "(--overwrite rewrites them from the rows)", flush=True)
        return SweepResult(run_dir=run_dir, ran=[], failed=[], rows=done, total=len(plan.grid))
    print(f"[run] {run_dir}: {len(plan.grid)} trials ({plan.describe}), {done} done, {len(missing)} to run",
          flush=True)
    record = {"config": asdict(cfg), "settings_hash": settings, "git_commit": git_commit(),
              "checkpoint": None if checkpoint is None else str(checkpoint), "checkpoint_id": ckpt_id, **plan.record,
              "ray_version": ray.__version__, "torch_version": torch.__version__, "python": sys.version.split()[0],
              "columns": study.columns, **study_facts(cfg, run_name)}
    atomic_write_text(run_dir / "config.json", json.dumps(record, indent=2) + "\n")
    tracker = start_run_tracking(cfg, run_dir, run_name, study.prefix, checkpoint_id=ckpt_id, settings_hash=settings)
    log_models(tracker, {"autoencoder": checkpoint, "model": model, "lm": plan.lm_checkpoint,
                         "token_lm": plan.token_lm_checkpoint})

    try:
        with row_listener(trial_logger(tracker, plan.grid)):  # each trial logged as its row is written
            if plan.pool is not None:
                ran, failed = run_with_pool(cfg, plan.pool, run_name, plan.trial, missing, run_dir, plan.shared)
            elif plan.protocols is not None:
                ran, failed = run_with_agents(cfg, checkpoint, plan.protocols, run_name, plan.trial, missing, run_dir,
                                              plan.shared, lm_checkpoint=plan.lm_checkpoint,
                                              token_lm_checkpoint=plan.token_lm_checkpoint)
            else:
                ran, failed = _run_without_agents(cfg, plan, missing, run_dir)

        rows = collect_rows(plan.grid, run_dir, study.columns)
        frame = rows if study.tabulate is None else study.tabulate(rows)
        write_frame(frame, run_dir)
        study.report(cfg, frame, run, plan)
        if plan.models is not None and len(frame):
            log_models(tracker, plan.models(frame))
    except BaseException as exc:  # the tracked run ends as the sweep did; the rows written so far are kept
        close_tracking(run_dir, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", grid=plan.grid)
        raise
    mark_finished(run_dir, len(rows) == len(plan.grid), grid=plan.grid)
    print_outcome(len(rows), len(plan.grid), run_dir, time.time() - t0, failed)
    return SweepResult(run_dir=run_dir, ran=ran, failed=failed, rows=len(rows), total=len(plan.grid))


def _check_grid(plan: Plan) -> None:
    """The grid has points, and each its own key: two points of one key would share one row file (a row lost);
    an empty grid (every protocol skipped) would end "0/0 rows" as if it had succeeded."""
    grid = plan.grid
    if not grid:
        skipped = plan.record.get("skipped") or {}
        why = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3])
        raise ValueError(f"nothing to run: no grid point can be played ({plan.describe or 'empty grid'})"
                         + (f"; skipped {why}" if why else ""))
    keys = [spec["key"] for spec in grid]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"the grid holds key {dup!r} {keys.count(dup)} times (duplicate grid values?)")


def _run_without_agents(cfg: Any, plan: Plan, missing: list[dict], run_dir: Path) -> tuple[list[str], list[str]]:
    """The trials of a study that needs no agents (model training): Ray Tune alone."""
    import ray

    if not missing:
        return [], []
    started = connect_ray(cfg.address, cfg.num_cpus)
    try:
        failed = run_trials(plan.trial, missing, run_dir, trial_cpus=cfg.trial_cpus,
                            max_concurrent=cfg.max_concurrent, shared=plan.shared)
    finally:
        if started:
            ray.shutdown()
    return [s["key"] for s in missing if (run_dir / "rows" / f"{s['key']}.json").is_file()], failed


def _importable(obj: Any) -> Any:
    """``obj`` as its module's importable twin when it was defined in ``__main__`` (``python -m experiments.x``).

    Ray pickles what ``__main__`` defines by value: a trial that rebuilds the study's Config in a worker then
    meets a class whose type hints name ``__main__``'s globals there (NameError on ``Literal``). Taken from
    ``experiments.x`` instead, trials and configs travel by reference, as they do when a test calls ``main``.
    """
    if getattr(obj, "__module__", None) != "__main__":
        return obj
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    name = spec.name if spec is not None else None
    if name is None:  # run as a file (ray submit cluster.yaml experiments/x.py): its dotted name under the repo
        path = Path(sys.modules["__main__"].__file__).resolve()
        root = Path(__file__).resolve().parents[2]
        if not path.is_relative_to(root):
            return obj
        name = ".".join(path.relative_to(root).with_suffix("").parts)
    try:
        return getattr(importlib.import_module(name), obj.__qualname__)
    except (ImportError, AttributeError):
        return obj


def cli(main: Callable[[T], Any], config_cls: type[T], *, prog: str, description: str) -> int:
    """Parse the command line into ``config_cls``, run ``main``, and return the exit status.

    Bad flags and bad values exit 2 through argparse. Errors that only show once the run starts (an
    unknown corpus, a hub corpus such as wikitext103 while offline, a missing or mismatched checkpoint, L not
    a multiple of K) become the same kind of one-line error with status 2, not a traceback. ``main``
    returning an object with ``rows`` and ``total`` exits 1 while grid points are missing (rerun to finish),
    else 0.
    """
    main, config_cls = _importable(main), _importable(config_cls)
    cfg = parse_config(config_cls, prog=prog, description=description)
    try:
        result = main(cfg)
    except (ValueError, FileNotFoundError, ConnectionError, CheckpointError, DamagedFileError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    rows, total = getattr(result, "rows", None), getattr(result, "total", None)
    return 0 if rows == total else 1
