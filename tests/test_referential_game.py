"""The main experiment: config and CLI, resume of an interrupted sweep, determinism, a killed agent."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calm.ray_runtime import init_ray
from experiments.referential_game import COLUMNS, Config, main, trial_grid

MICRO = dict(ae_hidden_size=32, ae_intermediate_size=64, ae_latent_dim=16, ae_steps=20, ae_batch_size=32,
             ae_time_limit=0.0)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(address="local", num_cpus=2, namespace="latentcomm", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny sweep: 2 sigmas x 3 protocols x 2 receivers x 1 seed = 12 trials of 64 games."""
    return Config(results_dir=str(tmp_path_factory.mktemp("results")),
                  runs_dir=str(tmp_path_factory.getbasetemp() / "latentcomm-runs"),
                  passage_length=8, channel_uses=32, candidates=8, sigmas=(0.0, 3.0), seeds=(0,),
                  episodes=64, batch_size=64, num_passages=256, fit_passages=512, plots=False, **MICRO)


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="sigmas"):
        Config(sigmas=(0.5, -1.0))
    with pytest.raises(ValueError, match="candidates"):
        Config(candidates=1)
    with pytest.raises(ValueError, match="protocols"):
        Config(protocols=("vector", "smoke-signals"))
    with pytest.raises(ValueError, match="episodes"):
        Config(episodes=100, batch_size=64)


def test_help_lists_every_field(capsys):
    from experiments.cli import parse_config

    with pytest.raises(SystemExit) as exc:
        parse_config(Config, ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in out
    cfg = parse_config(Config, ["--sigmas", "0", "0.5", "--protocols", "token", "--checkpoint", "none", "--no-plots"])
    assert cfg.sigmas == (0.0, 0.5) and cfg.protocols == ("token",) and cfg.checkpoint is None and not cfg.plots


def test_grid_is_the_cross_product():
    cfg = Config()
    grid = trial_grid(cfg)
    assert len(grid) == 10 * 3 * 2 * 3
    assert len({spec["key"] for spec in grid}) == len(grid)


def test_interrupted_sweep_reruns_only_missing_trials(ray_session, base):
    grid_size = len(trial_grid(base))
    # an interrupted sweep: it stops after 5 trials
    first = main(dataclasses.replace(base, run_name="resume", max_trials=5))
    assert len(first.ran) == 5 and first.rows == 5 and first.total == grid_size
    # the same command again runs exactly the 7 missing trials
    second = main(dataclasses.replace(base, run_name="resume"))
    assert len(second.ran) == grid_size - 5
    assert not set(second.ran) & set(first.ran)
    assert second.rows == grid_size
    # a third run has nothing left to do
    assert main(dataclasses.replace(base, run_name="resume")).ran == []

    frame = pd.read_csv(second.run_dir / "results.csv")
    assert list(frame.columns) == COLUMNS
    assert len(frame) == grid_size
    assert not frame.duplicated(["protocol", "receiver", "sigma", "seed"]).any()
    assert ((frame.success_ci_low <= frame.success) & (frame.success <= frame.success_ci_high)).all()
    assert (frame.delivered_bits <= math.log2(8) + 1e-9).all()
    finite = np.isfinite(frame.capacity_bits)
    assert (frame.delivered_bits[finite] <= frame.capacity_bits[finite]).all()
    assert (frame.channel_uses == 32).all()  # equal bandwidth for every protocol
    # behaviour: noise at sigma 3 (SNR -9.5 dB) hurts the hard token receiver, which is perfect-ish without it
    token_hard = frame[(frame.protocol == "token") & (frame.receiver == "hard")].set_index("sigma").success
    assert token_hard[0.0] > token_hard[3.0] + 0.3
    assert (second.run_dir / "summary.md").is_file()
    record = (second.run_dir / "config.json").read_text()
    for key in ("git_commit", "checkpoint_id", "ray_version", "torch_version", "settings_hash"):
        assert key in record


def test_killing_an_agent_mid_sweep_still_yields_every_row_once_and_the_same_csv(ray_session, base):
    ray = ray_session
    cfg = dataclasses.replace(base, run_name="killed", max_concurrent=1)
    rows_dir = Path(cfg.results_dir) / "killed" / "rows"
    seen: dict = {}

    def kill_listener_after_first_row():
        try:
            deadline = time.time() + 300
            while time.time() < deadline:
                if rows_dir.is_dir() and any(rows_dir.glob("*.json")):
                    actor = ray.get_actor("killed-listener0", namespace="latentcomm")
                    seen["rows_at_kill"] = len(list(rows_dir.glob("*.json")))
                    seen["pid"] = ray.get(actor.pid.remote())
                    ray.kill(actor, no_restart=False)  # dies now; Ray restarts it, calls are replayed
                    # ray.kill is asynchronous: a call may still reach the old process; wait for the new one
                    while time.time() < deadline:
                        seen["new_pid"] = ray.get(actor.pid.remote(), timeout=120)
                        if seen["new_pid"] != seen["pid"]:
                            return
                        time.sleep(0.2)
                    return
                time.sleep(0.2)
        except Exception as exc:  # reported by the assertions below
            seen["error"] = repr(exc)

    killer = threading.Thread(target=kill_listener_after_first_row, daemon=True)
    killer.start()
    result = main(cfg)
    killer.join(timeout=60)
    grid_size = len(trial_grid(cfg))
    assert "rows_at_kill" in seen, f"the agent was never killed: {seen}"
    assert seen["rows_at_kill"] < grid_size, f"the kill came after the sweep had finished: {seen}"
    assert "error" not in seen and seen["new_pid"] != seen["pid"], seen
    assert result.failed == [], (result, seen)
    frame = pd.read_csv(result.run_dir / "results.csv")
    assert len(frame) == grid_size, (len(frame), seen)
    assert not frame.duplicated(["protocol", "receiver", "sigma", "seed"]).any()
    # same settings and seed as the (interrupted, resumed) run of the test above: a byte-identical
    # results.csv, though an agent died and was restarted in the middle of this one
    other = Path(cfg.results_dir) / "resume" / "results.csv"
    if not other.is_file():  # this test alone: make the undisturbed reference run here
        main(dataclasses.replace(base, run_name="resume"))
    pd.testing.assert_frame_equal(frame, pd.read_csv(other))
    assert (result.run_dir / "results.csv").read_bytes() == other.read_bytes()


def test_a_run_directory_refuses_another_checkpoint(base):
    """Rows and fitted protocols of one autoencoder never mix with another's (e.g. after retraining)."""
    import json

    from experiments.referential_game import settings_hash

    cfg = dataclasses.replace(base, run_name="mismatch")
    run_dir = Path(cfg.results_dir) / "mismatch"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(
        json.dumps({"settings_hash": settings_hash(cfg), "checkpoint_id": "ae-old@000000000000"})
    )
    with pytest.raises(ValueError, match="checkpoint ae-old@000000000000"):
        main(cfg)
