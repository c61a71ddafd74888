"""Experiment tracking: every sweep and training run logged to MLflow (default) or W&B (``--tracking wandb``).

By default a run logs to a local MLflow store, ``sqlite:///<root>/mlflow.db`` with its artifacts under
``<root>/mlartifacts``, where ``root`` is the results directory of a sweep (the parent of ``--out`` for a training
run): offline, nothing to start, one store for every run under it. ``--tracking-uri`` names another store or a
server (``http://host:5000``); ``--tracking none`` logs nothing. MLflow's own telemetry is switched off before it is
imported, so nothing reaches the network unless a server URI is given.

``mlflow ui --backend-store-uri sqlite:///results/mlflow.db`` opens the local store in a browser.

A ``Tracker`` is one tracked run: ``log_params``, ``log_metrics`` (by step), ``log_history`` (a training curve: one
record per validation, each loss term its own metric), ``log_artifacts``, ``child`` (a nested run: one per sweep
trial, one per model a sweep trained or loaded), ``finish``. ``NullTracker`` is the same API doing nothing.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = ["TRACKERS", "NullTracker", "Tracker", "check_tracking", "default_store", "flatten_params", "git_commit",
           "open_recorded", "open_tracker", "provenance_tags", "reopen_run", "resolve_uri"]

# MLflow 3 sends usage telemetry unless told not to; a run on a closed network must not try
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
# a server that stops answering costs a run seconds, not MLflow's default minutes of retries
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

TRACKERS = ("mlflow", "wandb", "none")
"""the values of ``--tracking``"""

_URI_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file")
_PARAM_MAX = 6000  # MLflow's longest parameter value


def git_commit() -> str:
    """The repository's commit (with -dirty), or unknown outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_store(root: str | os.PathLike) -> str:
    """The local store of the runs under ``root``: ``sqlite:///<root>/mlflow.db`` (absolute)."""
    return "sqlite:///" + str(Path(root).expanduser().resolve() / "mlflow.db")


def resolve_uri(uri: str, root: str | os.PathLike) -> str:
    """``uri``, or the local store under ``root`` when it is empty."""
    return uri or default_store(root)


def check_tracking(tracking: str, uri: str) -> None:
    """Refuse a tracking setting before anything starts.

    Raises:
        ValueError: an unknown tracker, a URI of no store MLflow knows, a ``file:`` store (MLflow 3 refuses
            it), or the tracker's package not installed (with the command that installs it).
    """
    if tracking not in TRACKERS:
        raise ValueError(f"tracking must be one of {', '.join(TRACKERS)}, got {tracking!r}")
    if tracking == "none":
        if uri:
            raise ValueError(f"--tracking-uri {uri!r} given with --tracking none: add --tracking mlflow, or drop the URI")
        return
    from importlib.util import find_spec

    if tracking == "wandb":
        if find_spec("wandb") is None:
            raise ValueError("--tracking wandb needs Weights & Biases: pip install 'latentcomm[wandb]' "
                             "(or --tracking mlflow, the default)") from None
        return
    if find_spec("mlflow") is None:
        raise ValueError("--tracking mlflow needs MLflow: pip install mlflow (or --tracking none)")
    if uri:
        scheme = urlparse(uri).scheme.split("+")[0]
        if scheme not in _URI_SCHEMES:
            raise ValueError(f"--tracking-uri {uri!r}: not a store MLflow knows (sqlite:///path/mlflow.db, "
                             "http://host:5000, postgresql://...); leave it empty for the local store")
        if scheme == "file":
            raise ValueError(f"--tracking-uri {uri!r}: MLflow 3 no longer writes file stores; use "
                             "sqlite:///<dir>/mlflow.db (the default under the results directory)")
        if scheme in ("http", "https"):
            _check_server(uri)


def _check_server(uri: str, timeout: float = 5.0) -> None:
    """An MLflow server answers ``/health`` at ``uri``, or the run stops before it starts."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status != 200:
                raise OSError(f"HTTP {response.status}")
    except (OSError, urllib.error.URLError) as exc:
        raise ValueError(f"--tracking-uri {uri!r}: no MLflow server answers there ({exc}); start one "
                         "(mlflow server --backend-store-uri ...), or leave --tracking-uri empty for the local "
                         "store") from None


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as flat ``a.b`` string parameters (lists joined by commas, values cut to MLflow's limit)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            out[name] = text[:_PARAM_MAX]
    return out


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite real numbers of ``values`` (bools as 0/1); NaN, inf, text and None are left out."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[str(key)] = float(value)
    return out


def provenance_tags(**extra: Any) -> dict[str, str]:
    """Tags every run carries: git commit, Python, platform and the versions of torch, Ray, Sionna and MLflow that
    are installed, plus ``extra`` (checkpoint ids, corpus, tokenizer; None values left out)."""
    from importlib import metadata

    tags = {"git_commit": git_commit(), "python": sys.version.split()[0], "platform": platform.platform()}
    for dist, name in (("torch", "torch"), ("ray", "ray"), ("sionna-no-rt", "sionna"), ("mlflow", "mlflow"),
                       ("transformers", "transformers")):
        try:
            tags[f"version.{name}"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    tags.update({k: str(v) for k, v in extra.items() if v is not None})
    return tags


class NullTracker:
    """The tracker of ``--tracking none``: every call does nothing."""

    run_id: str | None = None
    uri: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nothing."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Nothing."""

    def log_history(self, history: Iterable[Mapping[str, Any]], *, prefix: str = "") -> None:
        """Nothing."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Nothing."""

    def log_artifacts(self, directory: str | os.PathLike, *, skip: tuple[str, ...] = ()) -> None:
        """Nothing."""

    def child(self, name: str, *, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
              key: str | None = None, metrics: Mapping[str, Any] | None = None, finished: bool = False) -> NullTracker:
        """Itself."""
        return self

    def children(self) -> set[str]:
        """No children."""
        return set()

    def finish(self, status: str = "FINISHED") -> None:
        """Nothing."""


class Tracker(NullTracker):
    """One MLflow run in ``uri`` (through ``MlflowClient``: no global active run, so threads and nested runs are safe).

    ``open_tracker`` makes one; ``child`` a nested run under it (``mlflow.parentRunId``), tagged with ``key`` so
    that a resumed sweep finds which trials it already logged (``children``).
    """

    def __init__(self, client: Any, run_id: str, experiment_id: str, uri: str) -> None:
        self.client, self.run_id, self.experiment_id, self.uri = client, run_id, experiment_id, uri

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log ``params`` (flattened); on a resumed run, a parameter it already holds keeps its first value (MLflow's
        parameters are immutable) and the new one is kept as the tag ``changed.<name>``."""
        from mlflow.entities import Param

        flat = flatten_params(params)
        held = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in flat.items() if k not in held]
        changed = {f"changed.{k}": v for k, v in flat.items() if k in held and held[k] != v}
        for i in range(0, len(new), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=new[i : i + 100])
        if changed:
            self.set_tags(changed)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log the finite numbers of ``metrics`` at ``step`` (0 when None)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step or 0) for k, v in _numbers(metrics).items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_history(self, history: Iterable[Mapping[str, Any]], *, prefix: str = "") -> None:
        """A training curve: each record's numbers (``train_loss``, each loss term, validation metrics, lr) at its
        ``step``."""
        for record in history:
            step = int(record.get("step", 0))
            self.log_metrics({f"{prefix}{k}": v for k, v in record.items() if k != "step"}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set ``tags`` (values as text)."""
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items() if v is not None])

    def log_artifacts(self, directory: str | os.PathLike, *, skip: tuple[str, ...] = ()) -> None:
        """Copy the files directly in ``directory`` (not its sub-folders) into the run's artifacts, except ``skip``."""
        for path in sorted(Path(directory).iterdir()):
            if path.is_file() and path.name not in skip and not path.name.startswith("."):
                self.client.log_artifact(self.run_id, str(path))

    def child(self, name: str, *, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
              key: str | None = None, metrics: Mapping[str, Any] | None = None, finished: bool = False) -> Tracker:
        """A nested run under this one (an MLflow child run), with ``key`` as its ``child_key`` tag; ``metrics``
        and ``finished``: a child logged whole at once (a sweep trial: one insert, one batch, one status)."""
        import time

        from mlflow.entities import Metric, Param

        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={"mlflow.parentRunId": self.run_id, **({"child_key": key} if key else {}),
                                           **{k: str(v) for k, v in (tags or {}).items() if v is not None}})
        child = Tracker(self.client, run.info.run_id, self.experiment_id, self.uri)
        now = int(time.time() * 1000)
        # a new run holds no parameters yet: no read before the write (log_params would make one)
        batch_params = [Param(k, v) for k, v in flatten_params(params or {}).items()]
        batch_metrics = [Metric(k, v, now, 0) for k, v in _numbers(metrics or {}).items()]
        for i in range(0, max(len(batch_params), len(batch_metrics)), 100):
            self.client.log_batch(child.run_id, params=batch_params[i : i + 100], metrics=batch_metrics[i : i + 100])
        if finished:
            child.finish()
        return child

    def children(self) -> set[str]:
        """The ``child_key`` tags of this run's children (the trials and models it has already logged)."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'",
                                       max_results=50000)
        return {r.data.tags["child_key"] for r in runs if "child_key" in r.data.tags}

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status=status)


class WandbTracker(NullTracker):
    """The same API on one Weights & Biases run (``--tracking wandb``; ``WANDB_MODE=offline`` keeps it local).

    W&B has no nested runs: a child logs into its parent, its metrics under ``<child name>/``.
    """

    def __init__(self, run: Any, prefix: str = "") -> None:
        self.run, self.prefix = run, prefix
        self.run_id = run.id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Into the run's config."""
        self.run.config.update({f"{self.prefix}{k}": v for k, v in flatten_params(params).items()},
                               allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """``wandb.log`` of the finite numbers (W&B's own step when ``step`` is None)."""
        values = {f"{self.prefix}{k}": v for k, v in _numbers(metrics).items()}
        if values:
            self.run.log(values)

    def log_history(self, history: Iterable[Mapping[str, Any]], *, prefix: str = "") -> None:
        """Each record with its step as a metric (W&B's steps only grow)."""
        for record in history:
            self.log_metrics({f"{prefix}{k}": v for k, v in record.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """As config entries ``tag.<name>`` (W&B tags are labels without values)."""
        self.run.config.update({f"tag.{k}": str(v) for k, v in tags.items() if v is not None}, allow_val_change=True)

    def log_artifacts(self, directory: str | os.PathLike, *, skip: tuple[str, ...] = ()) -> None:
        """The directory's files as one W&B artifact of type ``run``."""
        import wandb

        artifact = wandb.Artifact(name=f"{self.run.name or self.run.id}-files".replace("/", "-"), type="run")
        for path in sorted(Path(directory).iterdir()):
            if path.is_file() and path.name not in skip and not path.name.startswith("."):
                artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def child(self, name: str, *, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
              key: str | None = None, metrics: Mapping[str, Any] | None = None, finished: bool = False) -> WandbTracker:
        """The same run, its entries under ``<name>/``."""
        child = WandbTracker(self.run, prefix=f"{self.prefix}{name}/")
        if params:
            child.log_params(params)
        if metrics:
            child.log_metrics(metrics)
        return child

    def finish(self, status: str = "FINISHED") -> None:
        """``run.finish`` with exit code 0 unless FAILED or KILLED."""
        if not self.prefix:
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def open_tracker(tracking: str, uri: str, root: str | os.PathLike, *, experiment: str, run_name: str,
                 params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
                 resume_id: str | None = None) -> NullTracker:
    """Start (or, with ``resume_id``, reopen) the tracked run ``run_name`` of ``experiment``.

    Args:
        tracking: mlflow, wandb or none (``check_tracking`` has refused anything else).
        uri: the MLflow store or server; empty: ``default_store(root)``, with artifacts under ``root/mlartifacts``.
        root: the results directory of a sweep, or the folder above a training run's ``--out``.
        resume_id: the run a resumed sweep logged to before; a new run when that run is not in the store.
        tags: besides ``provenance_tags()`` (git commit, library versions), which every run carries.
    """
    check_tracking(tracking, uri)
    if tracking == "none":
        return NullTracker()
    if tracking == "wandb":
        import wandb

        run = wandb.init(project=experiment, name=run_name, dir=str(root), id=resume_id, resume="allow" if resume_id else None,
                         config=flatten_params(params or {}), reinit="create_new")
        tracker = WandbTracker(run)
        tracker.set_tags({**provenance_tags(), **(tags or {})})
        return tracker
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    Path(root).mkdir(parents=True, exist_ok=True)
    store = resolve_uri(uri, root)
    client = MlflowClient(tracking_uri=store)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        artifacts = None if uri else (Path(root).expanduser().resolve() / "mlartifacts" / experiment).as_uri()
        experiment_id = client.create_experiment(experiment, artifact_location=artifacts)
    else:
        experiment_id = found.experiment_id
    run_id = None
    if resume_id:
        try:
            run = client.get_run(resume_id)
            if run.info.experiment_id == experiment_id:
                run_id = resume_id
                client.update_run(run_id, status="RUNNING")
        except MlflowException:
            run_id = None  # a store that lost it (another --tracking-uri): a new run
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
    tracker = Tracker(client, run_id, experiment_id, store)
    tracker.set_tags({**provenance_tags(), **(tags or {})})
    if params:
        tracker.log_params(params)
    return tracker


def reopen_run(uri: str, run_id: str) -> Tracker:
    """The MLflow run ``run_id`` in the store ``uri``, to log into from another process (a Ray Train worker)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    return Tracker(client, run.info.run_id, run.info.experiment_id, uri)


def open_recorded(record: str | os.PathLike, tracking: str, uri: str, root: str | os.PathLike, *, experiment: str,
                  run_name: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
                  resume: bool = True, label: str = "track") -> NullTracker:
    """``open_tracker``, resuming the run the JSON file ``record`` names (a run directory's or a training run's
    ``tracking.json``) when ``resume`` and it was logged with the same tracker to the same store; ``record`` then names
    this run. Prints how to open an MLflow run, as ``[label] ...``.

    Raises:
        DamagedFileError: ``record`` exists but cannot be read.
    """
    from calm.files import atomic_write_text, read_json

    record = Path(record)
    store = resolve_uri(uri, root) if tracking == "mlflow" else uri
    before = read_json(record, what="tracking record") if record.exists() else {}
    resume_id = before.get("run_id") if resume and before.get("tracking") == tracking and before.get("uri") == store \
        else None
    tracker = open_tracker(tracking, uri, root, experiment=experiment, run_name=run_name, params=params, tags=tags,
                           resume_id=resume_id)
    import json

    atomic_write_text(record, json.dumps({"tracking": tracking, "uri": store, "run_id": tracker.run_id,
                                          "experiment": experiment}, indent=2) + "\n")
    if tracking == "mlflow":
        print(f"[{label}] MLflow run {tracker.run_id} in {store} (open it: mlflow ui --backend-store-uri {store})",
              flush=True)
    return tracker
