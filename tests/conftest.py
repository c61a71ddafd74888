"""Shared fixtures. Tests never reach a hub: the offline switches are set before anything imports datasets."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny models on a 2-core machine: one thread per process avoids oversubscription when Ray workers and the
# driver run at once (two threads made one tiny training step 100x slower under load); Ray workers inherit it
os.environ.setdefault("OMP_NUM_THREADS", "1")
# `make test` runs two pytest-xdist processes: each prefers its own Ray dashboard port, so two local Rays
# starting at the same moment never both pick the free default (calm.ray_runtime falls back to any free port)
if os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
    os.environ.setdefault("LATENTCOMM_DASHBOARD_PORT", str(8300 + 10 * int(os.environ["PYTEST_XDIST_WORKER"][2:])))

import numpy as np
import pytest


def pytest_configure(config) -> None:
    """``LATENTCOMM_TEST_NO_RAY=1`` (``make test``'s process beside the serial Ray phase): starting Ray is an
    error. A second Ray on the machine breaks Ray Train's state queries in the serial tests, so a test file
    that starts Ray must not be in the Makefile's NORAY_TESTS; this makes such a file fail loudly."""
    if os.environ.get("LATENTCOMM_TEST_NO_RAY"):
        import ray

        def refuse(*_args, **_kwargs):
            raise RuntimeError("this test process runs beside the serial Ray tests and must not start Ray "
                               "(LATENTCOMM_TEST_NO_RAY): take the test file out of NORAY_TESTS in the Makefile")

        ray.init = refuse


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
def ray_local():
    """One local Ray for the whole session (starting Ray costs seconds). Fake GPUs let placement tests run."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        from calm.ray_runtime import init_ray

        init_ray(address="local", num_cpus=4, num_gpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()
