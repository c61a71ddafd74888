"""A run directory's tracked run (``calm.tracking``): opened when the run starts, its trials logged as they finish,
closed with the run's files as artifacts.

The tracked run is recorded in ``<run_dir>/tracking.json`` (tracker, store, run id), so a resumed sweep logs into
the same MLflow run, and anything holding only the run directory (``mark_finished``, ``python -m experiments.report``)
can reopen it. Children of the run: one per trial (``trial:<key>``: the grid point as parameters, its row's numbers
as metrics) and one per model the run trained or loaded (``model:<checkpoint id>``: its training settings and
curve from ``train_info.json``, each loss term its own metric). The parent holds the settings (every config field),
the tags (git commit, checkpoint ids, corpus, tokenizer, library versions), the headline metrics
(``headline.csv``) and the files (``config.json``, ``results.csv``, ``summary.md``, ``report.html``, plots).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from calm.files import read_json
from calm.tracking import NullTracker, open_recorded, provenance_tags, reopen_run

__all__ = ["TRACKING_FILE", "close_tracking", "log_models", "reopen_tracker", "start_run_tracking", "trial_logger"]

TRACKING_FILE = "tracking.json"
"""the record of a run directory's tracked run: tracker, store URI, run id"""


def start_run_tracking(cfg: Any, run_dir: Path, run_name: str, experiment: str, *, checkpoint_id: str | None = None,
                       settings_hash: str | None = None) -> NullTracker:
    """Open (or, for a resumed run, reopen) the tracked run of ``run_dir`` as ``cfg.tracking`` and
    ``cfg.tracking_uri`` say, with every field of ``cfg`` as a parameter and the provenance tags; record it in
    ``tracking.json`` and print how to open it."""
    tracking, uri = getattr(cfg, "tracking", "none"), getattr(cfg, "tracking_uri", "")
    if tracking == "none":
        return NullTracker()
    tags = provenance_tags(experiment=experiment, run_dir=str(Path(run_dir).resolve()), settings_hash=settings_hash,
                           checkpoint_id=checkpoint_id, corpus=getattr(cfg, "corpus", None),
                           tokenizer=getattr(cfg, "tokenizer", None))
    return open_recorded(Path(run_dir) / TRACKING_FILE, tracking, uri, Path(cfg.results_dir).expanduser().resolve(),
                         experiment=experiment, run_name=run_name,
                         params=asdict(cfg) if is_dataclass(cfg) else dict(cfg), tags=tags)


def reopen_tracker(run_dir: Path) -> NullTracker:
    """The tracked run ``tracking.json`` names (a ``NullTracker`` when there is none, or its tracker is gone)."""
    path = Path(run_dir) / TRACKING_FILE
    if not path.exists():
        return NullTracker()
    record = read_json(path, what="tracking record")
    if record.get("tracking") != "mlflow" or not record.get("run_id"):
        return NullTracker()  # W&B runs are reopened only by the process that holds them
    return reopen_run(record["uri"], record["run_id"])


def log_models(tracker: NullTracker, models: dict[str, Path | str | None]) -> None:
    """One child run per model checkpoint the run uses (``role -> directory``; None skipped), not yet logged: its
    training settings (``train_info.json``) as parameters and its training curve (``train_info.json``'s history, or
    ``config.json``'s for the learned pairs) as metrics by step; the parent is tagged ``checkpoint.<role>`` with the
    checkpoint id."""
    if type(tracker) is NullTracker:
        return
    from experiments.common.models import checkpoint_id

    logged = tracker.children()
    for role, path in models.items():
        if path is None or not (Path(path) / "model.safetensors").is_file():
            continue
        cid = checkpoint_id(Path(path))
        tracker.set_tags({f"checkpoint.{role}": cid})
        if f"model:{cid}" in logged:
            continue
        info_path, config_path = Path(path) / "train_info.json", Path(path) / "config.json"
        info = read_json(info_path, what="training record") if info_path.exists() else {}
        history = info.pop("history", None) if isinstance(info, dict) else None
        if history is None and config_path.exists():  # learned pairs and populations keep theirs in config.json
            history = read_json(config_path, what="model config").get("history")
        child = tracker.child(f"{role} {cid}", params=info, tags={"role": role, "checkpoint_id": cid,
                                                                   "checkpoint": str(Path(path).resolve())},
                              key=f"model:{cid}")
        child.log_history(history or [])
        child.finish()


def trial_logger(tracker: NullTracker, grid: list[dict]) -> Callable[[str, dict], None]:
    """``log(key, row)``: one child run for the trial ``key`` of ``grid`` (its grid point as parameters, its row's
    numbers as metrics); for ``experiments.common.trials.row_listener``."""
    specs = {spec["key"]: spec for spec in grid}

    def log(key: str, row: dict) -> None:
        tracker.child(key, params={k: v for k, v in specs.get(key, {}).items() if k != "key"}, key=f"trial:{key}",
                      metrics=row, finished=True)

    return log


def _headline_metrics(run_dir: Path) -> dict[str, float]:
    """``headline.csv``'s real numbers as metrics named ``<its text and integer columns, joined by />/<column>``."""
    import math
    import re

    from experiments.common.html_report import headline_columns, headline_frame

    frame = headline_frame(run_dir)
    if frame is None:
        return {}
    text, numeric = headline_columns(frame)
    out = {}
    for _, record in frame.iterrows():
        label = "/".join(str(record[c]) for c in text)
        for column in numeric:
            value = float(record[column])
            if math.isfinite(value):  # MLflow allows letters, digits, _ - . space : / in a metric's name
                out[re.sub(r"[^A-Za-z0-9_\-. :/]", "_", f"{label}/{column}")[:250]] = value
    return out


def close_tracking(run_dir: Path, status: str = "FINISHED", *, grid: list[dict] | None = None) -> None:
    """Log what the run directory holds to its tracked run and end it as ``status``: the trials not logged live (a
    resumed run's earlier rows; ``grid`` gives their grid points), the headline metrics, the top-level files as
    artifacts. A tracker that fails is reported, never the run's failure."""
    run_dir = Path(run_dir)
    try:
        tracker = reopen_tracker(run_dir)
    except Exception as exc:  # noqa: BLE001 - tracking is a copy of the run directory, never its failure
        _warn(run_dir, exc)
        return
    if type(tracker) is NullTracker:
        return
    try:
        logged = tracker.children()
        keys = [p.stem for p in sorted((run_dir / "rows").glob("*.json"))] if (run_dir / "rows").is_dir() else []
        log = trial_logger(tracker, grid or [{"key": k} for k in keys])
        for key in keys:
            if f"trial:{key}" not in logged:
                log(key, read_json(run_dir / "rows" / f"{key}.json", what="row file"))
        tracker.log_metrics(_headline_metrics(run_dir))
        tracker.log_artifacts(run_dir, skip=("run.json", TRACKING_FILE))
    except Exception as exc:  # noqa: BLE001
        _warn(run_dir, exc)
        status = "FAILED"
    finally:
        try:
            tracker.finish(status)
        except Exception as exc:  # noqa: BLE001
            _warn(run_dir, exc)


def _warn(run_dir: Path, exc: BaseException) -> None:
    print(f"[track] could not log {run_dir} to its tracked run ({type(exc).__name__}: {exc}); the run directory "
          "holds every result", file=sys.stderr, flush=True)
