"""A run directory and what is in it: who owns it (``run.json``), its row files, and its result files.

``open_run_dir`` claims ``<results_dir>/<run name>`` for one experiment and one settings hash (and checkpoint):
another experiment's or other settings' directory, a non-empty directory of no run, and a name that leaves the
results directory are refused, naming both owners. ``claim_single_run`` does the same for a study that is one
job (steering, compare_sae, analyze_vectors), refusing a finished run unless ``--overwrite``. Rows are read back
with ``read_json``: a row file that cannot be read stops the run with its path (``DamagedFileError``), never
counts as done. Every file is written atomically (``calm.files``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from calm.files import DamagedFileError, atomic_write_bytes, atomic_write_text, read_json
from calm.tracking import git_commit
from experiments.common.config import check_run_name, settings_hash

__all__ = ["RUN_FILE", "claim_single_run", "collect_rows", "done_rows", "git_commit", "mark_finished", "run_facts",
           "missing_trials", "open_run_dir", "rerun_command", "run_finished", "study_facts", "write_frame"]


def rerun_command(cfg: Any, run_name: str) -> str:
    """The command line that reruns (or resumes) this run: the study's module, ``--run-name`` and every setting away
    from its default."""
    import dataclasses
    import shlex

    parts = ["python", "-m", type(cfg).__module__, "--run-name", run_name]
    for f in dataclasses.fields(cfg):
        if f.name == "run_name" or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        value = getattr(cfg, f.name)
        if value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif value is None:
            parts += [flag, "none"]
        elif isinstance(value, (tuple, list)):
            parts += [flag, *(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
        else:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(parts)


def study_facts(cfg: Any, run_name: str) -> dict[str, str]:
    """What a run's report says of its study: the module, the question it asks (the first paragraph of the study's
    docstring) and the command that reruns it; kept in ``config.json``."""
    import sys

    module = sys.modules.get(type(cfg).__module__)
    doc = (getattr(module, "__doc__", None) or "").strip()
    return {"module": type(cfg).__module__, "question": " ".join(doc.split("\n\n")[0].split()),
            "rerun": rerun_command(cfg, run_name)}


RUN_FILE = "run.json"
"""the record of who owns a run directory: experiment, settings hash, checkpoint, finished"""


def open_run_dir(results_dir: str, run_name: str, settings: str, checkpoint_id: str | None, *,
                 experiment: str, rows: bool = True) -> Path:
    """``<results_dir>/<run_name>`` with its ``rows/`` (unless ``rows=False``: a study that writes no row files),
    claimed for ``experiment`` with ``settings``.

    The directory's ``run.json`` records which experiment, settings hash and checkpoint own it; a run directory
    made before that record existed is adopted when its ``config.json`` holds the same settings hash.

    Raises:
        ValueError: the name leaves ``results_dir``; the directory belongs to another experiment, other
            settings or another checkpoint (both named); or it holds files of no run.
        DamagedFileError: its ``run.json`` or ``config.json`` cannot be read.
    """
    check_run_name(run_name)
    root = Path(results_dir).expanduser().resolve()
    run_dir = root / run_name
    if run_dir.is_symlink() and run_dir.resolve().parent != root:
        raise ValueError(f"{run_dir} links to {run_dir.resolve()}, outside the results directory {root}; "
                         "pick another --run-name")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir} is a file, not a run directory; pick another --run-name")
    theirs = None
    if (run_dir / RUN_FILE).exists():
        theirs = read_json(run_dir / RUN_FILE, what="run record")
    elif (run_dir / "config.json").exists():  # made before run.json existed: the settings hash decides
        before = read_json(run_dir / "config.json", what="run config")
        theirs = {"experiment": experiment if before.get("settings_hash") == settings else "an unknown experiment",
                  "settings_hash": before.get("settings_hash"), "checkpoint_id": before.get("checkpoint_id")}
    elif run_dir.is_dir() and any(p.name != "rows" or any(p.iterdir()) for p in run_dir.iterdir()):
        names = sorted(p.name for p in run_dir.iterdir())
        raise ValueError(f"{run_dir} holds files of no {experiment} run ({', '.join(names[:5])}); pick another "
                         "--run-name or remove it")
    if theirs is not None:
        if theirs.get("experiment") != experiment:
            raise ValueError(f"{run_dir} belongs to {theirs.get('experiment')!s} run, not this {experiment} run; "
                             "pick another --run-name")
        if theirs.get("settings_hash") != settings:
            raise ValueError(f"{run_dir} holds a {experiment} run with different settings (hash "
                             f"{theirs.get('settings_hash')} != {settings}); pick another --run-name or the same "
                             "settings")
        if theirs.get("checkpoint_id") not in (None, checkpoint_id):
            raise ValueError(f"{run_dir} holds rows and protocols of checkpoint {theirs['checkpoint_id']}, not "
                             f"{checkpoint_id} (retrained or replaced); pick another --run-name or remove {run_dir}")
    (run_dir / "rows" if rows else run_dir).mkdir(parents=True, exist_ok=True)
    record = {"experiment": experiment, "settings_hash": settings, "checkpoint_id": checkpoint_id,
              "finished": bool(theirs and theirs.get("finished"))}
    atomic_write_text(run_dir / RUN_FILE, json.dumps(record, indent=2) + "\n")
    return run_dir


def claim_single_run(cfg: Any, run_name: str, checkpoint_id: str | None, *, experiment: str) -> Path:
    """The run directory of a study that is one job, not a grid (steering, analyze_vectors, compare_sae):
    ``open_run_dir`` without ``rows/``, refused when it holds a finished run of these settings and
    ``cfg.overwrite`` is not set, marked unfinished until the study's ``mark_finished``, with its
    ``config.json`` (the config, settings hash, checkpoint ids, git commit).

    Raises:
        ValueError: another owner (see ``open_run_dir``), or a finished run without --overwrite.
    """
    settings = settings_hash(cfg)
    run_dir = open_run_dir(cfg.results_dir, run_name, settings, checkpoint_id, experiment=experiment, rows=False)
    if run_finished(run_dir) and not cfg.overwrite:
        raise ValueError(f"{run_dir} holds a finished {experiment} run of these settings; --overwrite replaces it "
                         "(or pick another --run-name)")
    mark_finished(run_dir, False, publish=False)  # until every file of this run is written
    atomic_write_text(run_dir / "config.json", json.dumps(
        {"experiment": experiment, "config": asdict(cfg), "settings_hash": settings, "checkpoint_id": checkpoint_id,
         "git_commit": git_commit(), **study_facts(cfg, run_name)}, indent=2) + "\n")
    from experiments.common.run_tracking import start_run_tracking

    start_run_tracking(cfg, run_dir, run_name, experiment, checkpoint_id=checkpoint_id, settings_hash=settings)
    return run_dir


def run_finished(run_dir: Path) -> bool:
    """Whether ``run_dir``'s run ended with every row and wrote its reports."""
    path = Path(run_dir) / RUN_FILE
    return path.is_file() and bool(read_json(path, what="run record").get("finished"))


def mark_finished(run_dir: Path, finished: bool = True, *, publish: bool = True, grid: list[dict] | None = None) -> None:
    """Record in ``run.json`` that the run has (or no longer has) every row and its reports.

    ``publish``: also write the run's ``report.html`` (``experiments.common.html_report``) and close its tracked run
    (``experiments.common.run_tracking``: FINISHED, or KILLED for a run with rows missing), logging its files; the
    ``grid`` names the parameters of trials not logged yet. Neither can fail the run: a failure is printed.
    """
    path = Path(run_dir) / RUN_FILE
    record = read_json(path, what="run record")
    record["finished"] = finished
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    if publish:
        from experiments.common.html_report import write_html_report
        from experiments.common.run_tracking import close_tracking

        try:
            write_html_report(run_dir)
        except Exception as exc:  # noqa: BLE001 - the rows, results and summary.md are written; say what is missing
            import sys

            print(f"[report] report.html could not be written ({type(exc).__name__}: {exc}); rebuild it with "
                  f"python -m experiments.report {run_dir}", file=sys.stderr, flush=True)
        close_tracking(run_dir, "FINISHED" if finished else "KILLED", grid=grid)


def done_rows(run_dir: Path) -> set[str]:
    """Keys of the row files in ``run_dir/rows``, each checked to be readable: a row file that is a directory, is
    truncated or holds no row stops the run (``DamagedFileError``) instead of counting as done."""
    done = set()
    for path in sorted((Path(run_dir) / "rows").glob("*.json")):
        read_json(path, what="row file", fix=f"remove it (rm -r {path}) and rerun: that trial runs again")
        done.add(path.stem)
    return done


def missing_trials(grid: list[dict], run_dir: Path, max_trials: int | None = None) -> list[dict]:
    """The grid points without a row file, in grid order (at most ``max_trials`` of them).

    Raises:
        DamagedFileError: a row file cannot be read (see ``done_rows``).
    """
    done = done_rows(run_dir)
    missing = [spec for spec in grid if spec["key"] not in done]
    return missing if max_trials is None else missing[:max_trials]


def collect_rows(grid: list[dict], run_dir: Path, columns: list[str]):
    """The rows of ``grid`` that exist, one per grid point, in grid order, as a DataFrame of ``columns``.

    Raises:
        DamagedFileError: a row file cannot be read, or holds none of ``columns`` (another experiment's row).
    """
    import pandas as pd

    rows = []
    for spec in grid:
        path = run_dir / "rows" / f"{spec['key']}.json"
        if path.exists():
            row = read_json(path, what="row file", fix=f"remove it (rm {path}) and rerun: that trial runs again")
            unknown = sorted(set(row) - set(columns))
            if unknown:
                raise DamagedFileError(path, f"the row holds columns this experiment does not write ({', '.join(unknown[:5])}): "
                                             "another experiment's row?",
                                       f"remove it (rm {path}) and rerun: that trial runs again")
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def write_frame(frame, run_dir: Path) -> None:
    """``results.csv`` (and ``results.parquet`` when pyarrow is installed), each written atomically."""
    atomic_write_text(run_dir / "results.csv", frame.to_csv(index=False))
    try:
        import io

        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        atomic_write_bytes(run_dir / "results.parquet", buffer.getvalue())
    except ImportError:
        pass


def run_facts(run_dir: Path) -> dict | None:
    """The source statistics a run recorded (config.json ``facts``: entropy rate, fill accuracy, vocabulary) and
    its passage length, or None for a run directory without them."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return None
    record = read_json(path, what="run config")
    facts = record.get("facts")
    if not isinstance(facts, dict) or "entropy_bits_per_token" not in facts:
        return None
    return {**facts, "passage_length": record.get("config", {}).get("passage_length")}
