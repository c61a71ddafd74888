"""Our referential ParallelEnv under Ray RLlib (issue 31, point 4): the wrapped env keeps PettingZoo's contracts, and
PPO on it learns to beat chance within a few iterations."""

from __future__ import annotations

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test, parallel_seed_test

from experiments.emergent_rllib import Config, make_env

pytestmark = pytest.mark.ray  # train_ppo builds an RLlib algorithm on the shared Ray (tests/conftest.py)


def test_the_wrapped_env_passes_pettingzoo_checks():
    cfg = Config(candidates=4, passages=8, bits=3, sigma=0.5)
    parallel_api_test(make_env(cfg), num_cycles=20)
    parallel_seed_test(lambda: make_env(cfg))


def test_the_speakers_bits_go_out_as_bpsk_and_the_listener_is_scored():
    env = make_env(Config(candidates=2, bits=3))
    obs, _ = env.reset(seed=0)
    L, V = env.passage_length, env.vocab_size
    assert obs["speaker"].shape == (L * V,) and obs["speaker"].dtype == np.float32
    assert obs["speaker"].sum() == L  # one-hot ids
    bits = np.array([1, 0, 1])
    obs, rewards, *_ = env.step({"speaker": bits, "listener": np.array([0])})
    assert np.array_equal(obs["listener"][-3:], [1.0, -1.0, 1.0])  # received (noiseless), last in sorted keys
    answer_obs, rewards, terminations, _, infos = env.step({"speaker": bits, "listener": np.array([1])})
    assert np.array_equal(infos["listener"]["sent"], [[1.0, -1.0, 1.0]])
    assert rewards["listener"] == float(infos["listener"]["target_index"][0] == 1)
    assert all(terminations.values()) and env.agents == []


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="passages must be >= candidates"):
        Config(candidates=4, passages=3)
    with pytest.raises(ValueError, match="vocab_size"):
        Config(passages=20, passage_length=1, vocab_size=4)
    with pytest.raises(ValueError, match="sigma"):
        Config(sigma=-1.0)


@pytest.mark.slow
def test_ppo_learns_to_communicate_above_chance(tmp_path):
    """Through the CLI's main: the curve also reaches MLflow (the local store beside out_dir), a point per
    iteration."""
    from mlflow.tracking import MlflowClient

    from experiments.emergent_rllib import main

    cfg = Config(iterations=20, seed=0, out_dir=str(tmp_path / "rllib"), tracking="mlflow")
    curve = main(cfg)
    assert [row["iteration"] for row in curve] == list(range(1, 21))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("emergent-rllib").experiment_id])[0]
    logged = client.get_metric_history(run.info.run_id, "success")
    assert run.info.status == "FINISHED" and [m.step for m in logged] == list(range(1, 21))
    assert [m.value for m in logged] == pytest.approx([row["success"] for row in curve])
    assert {"curve.csv", "curve.png", "config.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert all(b["env_steps"] > a["env_steps"] for a, b in zip(curve, curve[1:]))
    first, last = curve[0]["success"], np.mean([row["success"] for row in curve[-3:]])
    # the listener sees shuffled candidates: without a message it is at chance (1/2; 256 games a point, sd 0.03)
    assert last > 0.65, [row["success"] for row in curve]
    assert last > first + 0.1, [row["success"] for row in curve]
