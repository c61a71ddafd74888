"""The sweep engine runs again the trials a lost node took (experiments.common.trials.run_trials)."""

from __future__ import annotations

import json

import pytest

from experiments.common import trials

pytestmark = pytest.mark.ray  # Ray Tune runs the trials (tests/conftest.py)


class ActorUnavailableError(RuntimeError):
    """Named as Ray's: how a trial whose node was lost fails before Ray has marked the node dead."""


def _flaky(spec, *, marks):
    """Fails as a lost node would the first three times it runs for spec 'lost' (Tune's two retries included)."""
    from pathlib import Path

    path = Path(marks) / spec["key"]
    runs = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(runs))
    if spec["key"] == "lost" and runs <= 3:
        raise ActorUnavailableError("The actor is temporarily unavailable: RpcError: Socket closed")
    if spec["key"] == "broken":
        raise ValueError("a bug of the trial's own")
    return {"key": spec["key"], "runs": runs}


def test_trials_a_lost_node_took_run_again_and_a_bug_still_fails(ray_session, tmp_path, monkeypatch):
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test file
    monkeypatch.setattr(trials, "NODE_LOSS_PAUSE_S", 0.1)
    marks = tmp_path / "marks"
    marks.mkdir()
    specs = [{"key": k} for k in ("fine", "lost", "broken")]
    failed = trials.run_trials(_flaky, specs, tmp_path, trial_cpus=1, max_concurrent=2, shared={"marks": str(marks)})
    assert failed == ["broken"]
    assert json.loads((tmp_path / "rows" / "lost.json").read_text())["runs"] == 4  # the fourth run, after the pause
    assert (marks / "fine").read_text() == "1" and not (tmp_path / "rows" / "broken.json").exists()
