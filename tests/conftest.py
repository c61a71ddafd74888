"""Shared fixtures. Tests never reach a hub: the offline switches are set before anything imports datasets."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# sweeps in tests track nothing unless a test asks (tests/test_tracking.py does): one MLflow store per run directory
# would cost every sweep test seconds
os.environ.setdefault("LATENTCOMM_TRACKING", "none")
# tiny models on a 2-core machine: one thread per process avoids oversubscription when Ray workers and the
# driver run at once (two threads made one tiny training step 100x slower under load); Ray workers inherit it
os.environ.setdefault("OMP_NUM_THREADS", "1")
# `make test` runs two pytest-xdist processes: each prefers its own Ray dashboard port, so two local Rays
# starting at the same moment never both pick the free default (calm.ray_runtime falls back to any free port)
if os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
    os.environ.setdefault("LATENTCOMM_DASHBOARD_PORT", str(8300 + 10 * int(os.environ["PYTEST_XDIST_WORKER"][2:])))

import functools

import numpy as np
import pytest

# Ray in the tests (the `ray` marker, registered in pyproject.toml):
# - a test module that starts Ray, directly, through a study's `main` or in a subprocess, declares
#   `pytestmark = pytest.mark.ray` (a list with its other module marks). `ray.init` in a test without the
#   marker raises, so a file that starts Ray unmarked fails loudly, and `pytest -m "not ray"` (the process
#   `make test` runs beside the Ray ones) never starts a Ray;
# - `ray` tests share one local Ray per test process (SHARED_RAY), started before the first of them and
#   joined by everything else: `calm.ray_runtime.init_ray` keeps a Ray that is already initialised and
#   returns False, so a study's `main` neither starts nor shuts down its own;
# - `serial` tests connect this process to a Ray of their own (the two-node loopback cluster of test_node_loss): the
#   shared Ray is shut down before each of them, and started again for the next `ray` test of the process. A Ray
#   that runs in other processes (a subprocess's, the `ray up` cluster of an `e2e` test) needs no such stop: it runs
#   beside the shared one as the other pytest-xdist process's Ray does, and each stop costs the next test a Ray
#   start (5-15 s). Ray Train runs in this process join the shared Ray.
SHARED_RAY = dict(address="local", num_cpus=2, num_gpus=2, namespace="latentcomm", log_to_driver=False,
                  announce=False)  # fake GPUs let the placement tests run; CPU-only agents fall back to the CPU
_RUNNING: dict = {"item": None, "shared": None}  # the test being run; the GCS address of the shared Ray


def _ray_marked(item) -> bool:
    return item.get_closest_marker("ray") is not None


def pytest_configure(config) -> None:
    """``ray.init`` refuses to run inside a test without the ``ray`` marker (``ray.get`` and friends start
    Ray through ``ray.init`` too)."""
    import ray

    real_init = ray.init
    if getattr(real_init, "_latentcomm_guard", False):
        return

    @functools.wraps(real_init)
    def init(*args, **kwargs):
        item = _RUNNING["item"]
        if item is not None and not _ray_marked(item):
            raise RuntimeError(
                f"{item.nodeid} starts Ray, but its module has no ray marker: add `pytestmark = pytest.mark.ray` "
                "to it (a test process without that marker, such as `make test`'s `-m \"not ray\"` one, must not "
                "start Ray)")
        return real_init(*args, **kwargs)

    init._latentcomm_guard = True
    ray.init = init


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _RUNNING["item"] = item
    try:
        yield
    finally:
        _RUNNING["item"] = None


def _shared_ray_is_up() -> bool:
    import ray

    return (_RUNNING["shared"] is not None and ray.is_initialized()
            and ray.get_runtime_context().gcs_address == _RUNNING["shared"])


def _start_shared_ray():
    """The process's shared local Ray (SHARED_RAY), started unless a Ray is already initialised here."""
    import ray

    if not ray.is_initialized():
        from calm.ray_runtime import init_ray

        try:
            init_ray(**SHARED_RAY)
        except Exception:  # "The current node timed out during startup" (30 s) on an overloaded machine: again
            ray.shutdown()
            init_ray(**SHARED_RAY)
        _RUNNING["shared"] = ray.get_runtime_context().gcs_address
    return ray


def _stop_shared_ray() -> None:
    if _shared_ray_is_up():
        import ray

        ray.shutdown()
    _RUNNING["shared"] = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """Before any fixture of the test: the shared Ray is up for a ``ray`` test and down for a ``serial`` one (a
    Ray its own fixture started stays)."""
    if not _ray_marked(item):
        return
    if item.get_closest_marker("serial"):
        _stop_shared_ray()
    else:
        _start_shared_ray()


def pytest_sessionfinish(session, exitstatus) -> None:
    _stop_shared_ray()


@pytest.fixture(scope="session")
def ray_session():
    """The shared local Ray of this test process (SHARED_RAY): ``ray`` tests run with it up (their module
    fixtures too); a fixture or test that names it gets the ``ray`` module."""
    return _start_shared_ray()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: on a shared 2-core machine two intra-op threads spin against each other (10-100x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    """The default CPU tokenizer (bpe:8192 on the default corpus), cached after the first build."""
    from calm.tokenizer import get_tokenizer

    return get_tokenizer("bpe:8192")


@pytest.fixture(scope="session")
def train_ids(tokenizer) -> np.ndarray:
    """The default corpus's train split as one int32 token stream."""
    from calm.data import load_token_ids

    return load_token_ids("kjv+shakespeare", tokenizer, "train", progress=False)


@pytest.fixture(scope="session")
def heldout_ids(tokenizer) -> np.ndarray:
    """The default corpus's validation split as one int32 token stream."""
    from calm.data import load_token_ids

    return load_token_ids("kjv+shakespeare", tokenizer, "validation", progress=False)


@pytest.fixture(scope="session")
def ray_local(ray_session):
    """The shared local Ray (``ray_session`` under the name older tests use)."""
    return ray_session


@pytest.fixture
def wait_for_restart():
    """``wait_for_restart(actor, old_pid) -> new pid``: wait until ``actor`` (killed with ``ray.kill(actor,
    no_restart=False)``) has been restarted by Ray and calls reach the new process.

    ``ray.kill`` is asynchronous. A call sent while the old process dies is failed by Ray with
    ``ActorUnavailableError`` ("The actor was restarted") once the actor's task retries are spent, which
    happens within milliseconds when the driver learns of the death only from the broken connection. So no
    call goes out until the GCS reports the actor ALIVE in a new process; one that still meets the old
    process (the driver's view lags the GCS by a notification) is the restart under way and is sent again.
    """
    import time

    import ray
    from ray._private.state import actors as actor_table  # GCS's actor table, without the dashboard

    def wait(actor, old_pid: int, timeout: float = 240.0) -> int:
        deadline = time.monotonic() + timeout
        actor_id = actor._actor_id.hex()
        while True:
            info = actor_table(actor_id)
            if info["State"] == "ALIVE" and info["Pid"] not in (0, old_pid):
                break
            assert time.monotonic() < deadline, f"the actor was not restarted within {timeout:.0f} s: {info}"
            time.sleep(0.1)
        while True:
            try:
                pid = ray.get(actor.pid.remote(), timeout=max(1.0, deadline - time.monotonic()))
            except ray.exceptions.ActorUnavailableError:
                pid = old_pid
            if pid != old_pid:
                return pid
            assert time.monotonic() < deadline, f"calls still reach the killed process {old_pid}"
            time.sleep(0.1)

    return wait


# `make test` runs the Ray files in two pytest-xdist processes, one file at a time each (--dist loadfile,
# --no-loadscope-reorder): the longest first, so that the two finish together instead of one waiting out the
# other's last long file. Seconds per file (setup + calls) in a `-m ray -n 2` run on 2 cores, 2026-12-07; the files
# changed since (node loss, Ray runtime, reconstruction, train, the jscc Ray run, scaling K) less what each saved
# beside its previous version under the same load; a file not listed counts as RAY_FILE_DEFAULT_SECONDS. Only the
# order depends on these numbers, never the outcome.
RAY_FILE_SECONDS = {
    "test_node_loss.py": 119, "test_official_grid.py": 76, "test_ray_runtime.py": 65, "test_train.py": 64,
    "test_e2e.py": 58, "test_reconstruction.py": 57, "test_referential_game.py": 55, "test_emergent_rllib.py": 50,
    "test_emergent_population.py": 45, "test_alignment.py": 44, "test_emergent_study.py": 60,
    "test_broadcast_experiment.py": 38, "test_agents.py": 38, "test_calm_scaling.py": 33, "test_scaling_k.py": 31,
    "test_relay_experiment.py": 30, "test_official_lm.py": 29, "test_jscc_ray.py": 27, "test_dialogue.py": 25,
}
RAY_FILE_DEFAULT_SECONDS = 30


def pytest_collection_modifyitems(config, items) -> None:
    """Longest Ray files first (stable: the order within a file and among the other files is kept)."""
    def weight(item) -> int:
        if not _ray_marked(item):
            return 0
        return RAY_FILE_SECONDS.get(item.path.name, RAY_FILE_DEFAULT_SECONDS)

    items.sort(key=lambda item: -weight(item))


@pytest.fixture(scope="module")
def reconstruction_tiny(tmp_path_factory):
    """The tiny reconstruction sweep of tests/test_reconstruction.py and tests/test_reconstruction_trials.py: 3
    protocols x 1 channel x 1 rho x 2 sigmas x 1 seed, 32 passages of L = 8, on the session's micro autoencoder."""
    from experiments.reconstruction import Config

    micro = dict(ae_hidden_size=32, ae_intermediate_size=64, ae_latent_dim=16, ae_steps=20, ae_batch_size=32,
                 ae_time_limit=0.0)
    return Config(results_dir=str(tmp_path_factory.mktemp("results")),
                  runs_dir=str(tmp_path_factory.getbasetemp() / "latentcomm-runs"), passage_length=8,
                  rhos=(2.0,), channels=("awgn",), sigmas=(0.0, 1.0), seeds=(0,),
                  protocols=("vector", "jscc", "separation"), separation_codes=("ldpc",), jscc_steps=5,
                  jscc_hidden_size=32, episodes=32, batch_size=32, num_passages=256, fit_passages=512, plots=False,
                  pilot_passages=64, **micro)


#: tiny models saved in the released CALM layout by the official code (scripts/make_official_fixture.py)
OFFICIAL_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "official_calm")


@pytest.fixture(scope="session")
def official_checkpoints(tmp_path_factory) -> dict:
    """The fixture's released-layout autoencoder and CALM converted into our format once per session:
    ``{"autoencoder": Path, "calm": Path, "corpus": "text:<path>"}`` (vocabulary 303, K = 4, l = 16, width 32).
    The corpus is 200 chapters of the bundled KJV text, which the fixture's byte-level tokenizer encodes."""
    from calm.convert import convert
    from calm.corpus import load_split

    root = tmp_path_factory.mktemp("official")
    tokenizer_dir = os.path.join(OFFICIAL_FIXTURE, "tokenizer")
    out = {kind: convert(os.path.join(OFFICIAL_FIXTURE, kind), root / kind, tokenizer=tokenizer_dir)
           for kind in ("autoencoder", "calm")}
    docs = [d.text for d in load_split("kjv", "train")[:200]]
    text = root / "corpus" / "kjv.txt"
    text.parent.mkdir()
    text.write_text("\n\n".join(docs) + "\n")
    out["corpus"] = f"text:{text}"
    return out
