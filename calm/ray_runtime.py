"""The one place that starts or joins Ray: ``calm.train``, the sweep engine, the benches and the tests.

    >>> from calm.ray_runtime import init_ray  # doctest: +SKIP
    >>> started = init_ray(address="auto", num_cpus=2)  # join a cluster if there is one, else start locally

A **local** Ray (no cluster to join) is started so that

- every server listens on loopback only: GCS, raylet, object manager, workers, the dashboard and its
  agents. Ray has no bind-address option; it binds to 127.0.0.1 only when the node's own IP is the
  loopback one, which it chooses only in its single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
  Ray's default on macOS and Windows). We switch that mode on for the processes this call starts;
  ``tests/test_ray_runtime.py`` checks every listening socket;
- the dashboard process runs (on 127.0.0.1): Ray Train's placement-group cleaner and Tune poll the State
  API, which lives there; without it the cleaner warns every two seconds for the whole run;
- the console carries what a person reads (progress bars, metrics, our own lines) and not the lines
  nobody can act on: those are dropped from the driver's console only (Ray's documented
  ``RAY_DEDUP_LOGS_SKIP_REGEX`` filter) and stay in the session's log files, whose folder the start line
  names. Ray Train's own INFO chatter goes through ``TRAIN_LOGGING`` (warnings and errors still print).

Joining a cluster (``ray submit``, ``RAY_ADDRESS``, a node where ``ray start`` ran) changes nothing of
the cluster's own set-up: its ports are whatever ``cluster.yaml`` started (dashboard on 127.0.0.1 there too).
A cluster whose nodes all run on 127.0.0.1 (``ray.cluster_utils.Cluster``, ``ray start --node-ip-address
127.0.0.1``) is joined in the same single-machine mode: Ray would otherwise rewrite the loopback address to this
machine's own IP, where no GCS listens, and wait for it without end.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["CONSOLE_NOISE", "TRAIN_LOG_LEVEL", "init_ray", "resolve_address", "session_log_dir", "train_logging_config",
           "train_worker_env"]

# worker lines that reach the driver's console but that no user can act on; each stays in the log files
CONSOLE_NOISE: tuple[str, ...] = (
    # Ray Train's placement-group cleaner while the State API is not (yet) reachable
    r"State API may be temporarily unavailable",
    # core_worker.cc, for Ray Train's own restartable helper actors
    r"has constructor arguments in the object store and max_restarts > 0",
    # Ray Train logs each report at INFO through a logger named by its file path, which its own log-level
    # setting does not reach
    r"Reporting training result \d+: TrainingReport",
    # Ray Train's first request to the autoscaling coordinator times out (5 s) on a busy machine; Ray
    # says itself "safe to ignore"; _worker_setup keeps it to one line (it came with a 20-line traceback)
    r"Failed to send resource request for train-",
)
# the logger of that message, in Ray Train's controller process
_COORDINATOR_LOGGER = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"
# Ray Train's controller and workers log every resource request and report at INFO
TRAIN_LOG_LEVEL = "WARNING"
# the driver's own Ray loggers: token set-up notes (the token is saved in ~/.ray/auth_token either way)
_QUIET_DRIVER_LOGGERS = ("ray._private.authentication", "ray._private.authentication.authentication_token_setup")
_DASHBOARD_PORT = 8265
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def resolve_address(address: str | None) -> str | None:
    """The address to join, or None to start a local Ray.

    Args:
        address: ``"auto"`` (``RAY_ADDRESS``, else a cluster ``ray start`` left on this node, else local),
            ``"local"`` or None (always a new local Ray), or an explicit ``host:port`` / ``ray://`` address.
    """
    if address in (None, "local"):
        return None
    if address == "auto":
        if os.environ.get("RAY_ADDRESS"):
            return "auto"
        try:
            from ray._private.services import find_bootstrap_address

            return "auto" if find_bootstrap_address(None) else None
        except Exception:  # private API: treat any change as "no cluster found"
            return None
    return address


def _free_loopback_port(preferred: int) -> int:
    """``preferred`` when nothing on 127.0.0.1 holds it, else a free port the OS picks."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def _drop_console_noise() -> None:
    """Skip ``CONSOLE_NOISE`` lines in the driver's copy of worker output (the log files keep them)."""
    pattern = "|".join(f"(?:{p})" for p in CONSOLE_NOISE)
    extra = os.environ.get("RAY_DEDUP_LOGS_SKIP_REGEX")
    pattern = f"{pattern}|(?:{extra})" if extra else pattern
    os.environ["RAY_DEDUP_LOGS_SKIP_REGEX"] = pattern  # read by a Ray imported after this
    try:  # and the driver's deduplicators, which read the variable when ray was imported
        from ray._private import ray_logging

        for dedup in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
            dedup.skip_re = re.compile(pattern)
    except (ImportError, AttributeError):  # private API moved: the noise prints, nothing breaks
        logging.getLogger(__name__).debug("could not install the console filter on this Ray version")


def _without_traceback(record: logging.LogRecord) -> bool:
    """A logging filter: keep the record, drop the traceback Ray attaches to a transient warning."""
    record.exc_info, record.exc_text = None, None
    return True


def _worker_setup() -> None:
    """Runs in every worker process of a job started here (``worker_process_setup_hook``)."""
    logging.getLogger(_COORDINATOR_LOGGER).addFilter(_without_traceback)
    # Ray's state API (Ray Train's placement-group cleaner polls it) finds its cluster by RAY_ADDRESS, else by the
    # GCS processes on this machine, and fails while another Ray runs here too (a second run, a test process):
    # name this worker's own cluster
    if not os.environ.get("RAY_ADDRESS"):
        try:
            import ray

            os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        except Exception:  # no runtime context: the state API keeps its own search
            logging.getLogger(__name__).debug("could not name the cluster in RAY_ADDRESS", exc_info=True)


def _with_setup_hook(runtime_env: dict | None) -> dict:
    """``runtime_env`` plus our worker set-up hook (a caller's own hook wins)."""
    env = dict(runtime_env or {})
    env.setdefault("worker_process_setup_hook", f"{__name__}._worker_setup")
    return env


@contextmanager
def _single_machine_mode():
    """Ray's single-machine mode for the calls inside: this process takes 127.0.0.1 as its node IP.

    The variable reaches the processes Ray spawns meanwhile (they inherit this environment); the flag is this
    process's copy, read by ``ray._private.services.get_node_ip_address``.
    """
    from ray._private import ray_constants

    mode_var = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    before_env, before_flag = os.environ.get(mode_var), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[mode_var] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_flag
        if before_env is None:
            os.environ.pop(mode_var, None)
        else:
            os.environ[mode_var] = before_env


def _start_local(kwargs: dict[str, Any]):
    """``ray.init`` a new local Ray whose servers all listen on 127.0.0.1; returns Ray's context."""
    import ray

    # single-machine mode: the node IP is the loopback one, so every server binds to it
    with _single_machine_mode():
        # LATENTCOMM_DASHBOARD_PORT: the port to prefer (parallel test processes each name their own)
        port = _free_loopback_port(int(os.environ.get("LATENTCOMM_DASHBOARD_PORT", _DASHBOARD_PORT)))
        # address "local": always a new Ray, even where another cluster on this machine wrote ray_current_cluster
        return ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                        **kwargs)


def _joins_loopback(target: str) -> bool:
    """Whether the cluster to join (an address, or ``"auto"``: ``RAY_ADDRESS`` or the one ``ray start`` left)
    has its GCS on a loopback address, as every node of a cluster started on 127.0.0.1 does."""
    address = os.environ.get("RAY_ADDRESS") if target == "auto" else target
    if target == "auto" and not address:
        try:
            from ray._private.services import find_bootstrap_address

            address = find_bootstrap_address(None)
        except Exception:
            return False
    if not address or address.startswith("ray://"):
        return False
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    return host in _LOOPBACK_HOSTS


def session_log_dir() -> Path | None:
    """The running Ray session's log folder on this node (None when Ray is not running here)."""
    try:
        import ray

        node = ray._private.worker._global_node
        return Path(node.get_session_dir_path()) / "logs" if node is not None else None
    except Exception:
        return None


def init_ray(
    *,
    address: str | None = "auto",
    num_cpus: int | None = None,
    num_gpus: float | None = None,
    namespace: str | None = None,
    runtime_env: dict | None = None,
    log_to_driver: bool = True,
    announce: bool = True,
) -> bool:
    """Join or start Ray, once per process; returns True when this call started a local Ray.

    Args:
        address: see ``resolve_address``; ``"auto"`` joins a cluster when there is one.
        num_cpus, num_gpus: resources of a local Ray (ignored when joining: the cluster has its own).
        namespace: Ray namespace (named actors live in it).
        runtime_env: passed to ``ray.init`` (the sweep ships ``PYTHONPATH`` to workers under ``ray submit``).
        log_to_driver: forward worker stdout/stderr (progress bars, metrics) to this console.
        announce: print one line saying what was started or joined, and where the logs are.

    A Ray that is already initialised in this process is kept as it is (returns False).
    """
    import ray

    if ray.is_initialized():
        return False
    for name in _QUIET_DRIVER_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    _drop_console_noise()
    # Ray's own "Started a local Ray instance" line is replaced by ours, which also names the log folder
    common = {"namespace": namespace, "runtime_env": _with_setup_hook(runtime_env), "log_to_driver": log_to_driver,
              "logging_level": logging.WARNING}
    target = resolve_address(address)
    if target is not None:
        if _joins_loopback(target):
            # a cluster whose nodes all run on 127.0.0.1 (``ray.cluster_utils.Cluster``, ``ray start
            # --node-ip-address 127.0.0.1``): Ray would rewrite the address to this machine's own IP, where no
            # GCS listens (the driver then waits for it without end), and look for a raylet on that IP; in
            # single-machine mode the driver keeps 127.0.0.1 and attaches to the head node's raylet there
            with _single_machine_mode():
                ray.init(address=target, **common)
        else:
            ray.init(address=target, **common)
        if announce:
            print(f"[ray] joined the Ray cluster at {ray.get_runtime_context().gcs_address} "
                  f"({int(ray.cluster_resources().get('CPU', 0))} CPUs)", flush=True)
        return False
    context = _start_local({"num_cpus": num_cpus, "num_gpus": num_gpus, **common})
    if announce:
        print(f"[ray] local Ray on {ray.get_runtime_context().gcs_address} "
              f"({int(ray.cluster_resources().get('CPU', 0))} CPUs), dashboard http://{context.dashboard_url}, "
              f"logs in {session_log_dir()}", flush=True)
    return True


def train_logging_config():
    """``ray.train.LoggingConfig`` at ``TRAIN_LOG_LEVEL`` for ``RunConfig(logging_config=...)``."""
    import ray.train

    return ray.train.LoggingConfig(log_level=TRAIN_LOG_LEVEL)


def train_worker_env() -> dict:
    """``RunConfig(worker_runtime_env=...)``: workers' ``print`` stays Python's own.

    Ray Train patches ``print`` in its workers to log through the root logger, and tees to the real
    stream whenever Ray has wrapped ``sys.stdout``, which it always has: every metrics line printed twice,
    and every ``tqdm_ray`` refresh left an empty line. Worker stdout still reaches the log files.
    """
    return {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}
