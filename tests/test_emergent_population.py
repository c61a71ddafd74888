"""Populations of emergent agents (protocols.emergent_population) and their study (experiments.emergent_population).

Meanings are random Gaussian feature vectors (D = 16), as in tests/test_emergent.py; small sizes, CPU, fixed seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from calm.files import DamagedFileError
from experiments.emergent_population import COLUMNS, Config, main, trial_grid
from protocols.emergent_model import EmergentConfig
from protocols.emergent_population import (
    cross_play,
    load_population,
    save_population,
    train_listener,
    train_population,
)
from protocols.emergent_train import train_pair

pytestmark = pytest.mark.ray  # the tiny run starts Ray (tests/conftest.py)

D, N = 16, 256
TRAIN = np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)
HELD_OUT = np.random.default_rng(1).standard_normal((N, D)).astype(np.float32)
MICRO = dict(ae_hidden_size=32, ae_intermediate_size=64, ae_latent_dim=16, ae_steps=20, ae_batch_size=32,
             ae_time_limit=0.0)


def _cfg(kind: str = "continuous") -> EmergentConfig:
    return EmergentConfig(feature_dim=D, kind=kind, channel_uses=8, vocab_bits=2, message_len=4, hidden_size=32,
                          embed_size=16)


def _weights(*agents) -> list[torch.Tensor]:
    return [v for a in agents for v in a.state_dict().values()]


@pytest.fixture(scope="module")
def population():
    """Three speakers and three listeners trained on a noiseless 2-candidate game."""
    cfg = _cfg()
    speakers, listeners, history = train_population(cfg, TRAIN, size=3, num_candidates=2, steps=150, batch_size=64,
                                                     snr_db=math.inf, seed=0, log_every=50)
    return cfg, speakers, listeners, history


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind, mode", [("continuous", None), ("discrete", "gumbel"), ("discrete", "reinforce")])
def test_size_one_is_train_pair_draw_for_draw(kind, mode):
    kw = dict(num_candidates=4, steps=25, snr_db=(0.0, 10.0), batch_size=32, seed=3, mode=mode, log_every=10)
    speaker, listener, history = train_pair(_cfg(kind), TRAIN, **kw)
    speakers, listeners, pop_history = train_population(_cfg(kind), TRAIN, size=1, **kw)
    assert all(torch.equal(a, b) for a, b in zip(_weights(speaker, listener), _weights(speakers[0], listeners[0])))
    assert pop_history == history


def test_population_is_deterministic_and_its_members_differ():
    kw = dict(size=2, num_candidates=4, steps=10, snr_db=5.0, batch_size=16, seed=7)
    (s1, l1, h1), (s2, l2, h2) = (train_population(_cfg(), TRAIN, **kw) for _ in range(2))
    assert h1 == h2 and all(torch.equal(a, b) for a, b in zip(_weights(*s1, *l1), _weights(*s2, *l2)))
    first = [next(s.parameters()) for s in s1]  # members start from different draws
    assert not torch.equal(*first)


def test_every_pairing_of_a_population_solves_the_two_candidate_game(population):
    cfg, speakers, listeners, history = population
    matrix = cross_play(speakers, listeners, HELD_OUT, num_candidates=2, snr_db=math.inf, episodes=400, seed=1)
    print("cross-play success:\n", matrix.round(3))
    assert matrix.shape == (3, 3) and ((0 <= matrix) & (matrix <= 1)).all()
    assert history[-1]["success"] > history[0]["success"]
    assert matrix.min() >= 0.8  # chance is 0.5: every speaker talks to every listener
    # independent games per pairing: each entry its own draw, still all above chance
    other = cross_play(speakers, listeners[:2], HELD_OUT, num_candidates=2, snr_db=math.inf, episodes=400, seed=1,
                       independent_games=True)
    assert other.shape == (3, 2) and other.min() >= 0.8


def test_a_newcomer_learns_a_frozen_speakers_protocol(population):
    _, speakers, _, _ = population
    before = [w.clone() for w in _weights(speakers[0])]
    listener, history = train_listener(speakers[0], TRAIN, num_candidates=2, steps=100, batch_size=64,
                                       snr_db=math.inf, seed=5, log_every=50)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(speakers[0])))  # the speaker never moves
    assert speakers[0].training is False and listener.training is False and len(history) == 2
    success = cross_play(speakers[:1], [listener], HELD_OUT, num_candidates=2, snr_db=math.inf, episodes=400)
    assert success[0, 0] >= 0.8


@pytest.mark.parametrize("bad, field", [(dict(size=0), "size"), (dict(steps=0), "steps"),
                                        (dict(mode="gumbel"), "mode"), (dict(num_candidates=1), "num_candidates")])
def test_train_population_rejects_bad_arguments(bad, field):
    kw = {**dict(size=2, num_candidates=2, steps=1, snr_db=0.0), **bad}
    with pytest.raises(ValueError, match=field):
        train_population(_cfg(), TRAIN, **kw)


def test_cross_play_needs_agents(population):
    with pytest.raises(ValueError, match="at least one speaker"):
        cross_play([], population[2], HELD_OUT, num_candidates=2, snr_db=0.0)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip_and_damage_is_named(population, tmp_path):
    cfg, speakers, listeners, history = population
    directory = save_population(tmp_path / "pop", cfg, speakers, listeners, history)
    cfg2, speakers2, listeners2, history2 = load_population(directory)
    assert cfg2 == cfg and history2 == history and len(speakers2) == len(listeners2) == 3
    assert all(torch.equal(a, b) for a, b in zip(_weights(*speakers, *listeners), _weights(*speakers2, *listeners2)))
    play = dict(num_candidates=2, snr_db=0.0, episodes=128, seed=2)
    assert np.array_equal(cross_play(speakers, listeners, HELD_OUT, **play),
                          cross_play(speakers2, listeners2, HELD_OUT, **play))
    assert not any(p.suffix == ".pkl" for p in directory.iterdir())

    meta = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**meta, "size": 4}))  # more members than tensors
    with pytest.raises(DamagedFileError, match="model.safetensors"):
        load_population(directory)
    (directory / "config.json").write_text(json.dumps({**meta, "model_type": "emergent_pair"}))
    with pytest.raises(DamagedFileError, match="config.json"):
        load_population(directory)
    (directory / "config.json").write_text(json.dumps(meta))
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(DamagedFileError, match="model.safetensors"):
        load_population(directory)
    with pytest.raises(ValueError, match="as many speakers as listeners"):
        save_population(tmp_path / "bad", cfg, speakers, listeners[:2], history)


# ---------------------------------------------------------------------------------------------- the study


@pytest.mark.parametrize("bad, field", [
    (dict(protocols=("learned-continuous", "vector")), "protocols"),
    (dict(pairings=("strangers",)), "pairings"),
    (dict(sizes=(1, 0)), "sizes"),
    (dict(seeds=(-1,)), "seeds"),
    (dict(snrs_db=(0.0, float("nan"))), "snrs_db"),
    (dict(train_snr_db=(10.0, 0.0)), "train_snr_db"),
    (dict(channel="smoke"), "channel"),
    (dict(erasure_p=1.0), "erasure"),
    (dict(candidates=1), "candidates"),
    (dict(train_candidates=1), "train.candidates"),
    (dict(steps=0), "steps"),
    (dict(newcomer_steps=0), "newcomer.steps"),
    (dict(lr=0.0), "lr"),
    (dict(protocols=("learned-gumbel",), channel_uses=9), "vocab_bits"),
    (dict(num_passages=4), "num_passages"),
    (dict(seeds=(0, 1000)), "seeds"),  # B of seed 0 would be A of seed 1000
])
def test_config_rejects_bad_values_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field.replace("_", "[-_]")):
        Config(**bad)


def test_grid_covers_every_point_once_largest_population_first():
    grid = trial_grid(Config())
    assert len(grid) == 2 * 2 * 3 and len({s["key"] for s in grid}) == len(grid)  # P x SNR x pairing
    assert [s["size"] for s in grid[:6]] == [3] * 6 and grid[0]["pairing"] == "new-partner"
    full = trial_grid(Config(full=True))
    assert len(full) == 4 * 4 * 3 * 3 and full[0]["size"] == 8


@pytest.mark.slow
def test_tiny_study_runs_writes_its_outputs_and_resumes(ray_session, tmp_path_factory):
    runs = tmp_path_factory.getbasetemp() / "latentcomm-runs"
    cfg = Config(results_dir=str(tmp_path_factory.mktemp("results")), runs_dir=str(runs), run_name="tiny",
                 passage_length=8, sizes=(1, 2), snrs_db=(0.0, 10.0), candidates=4, train_candidates=4, steps=30,
                 newcomer_steps=10, batch_size=32, hidden_size=32, episodes=64, eval_batch=32, num_passages=128,
                 fit_passages=256, **MICRO)
    first = main(cfg)
    assert first.rows == first.total == 12 and not first.failed
    frame = pd.read_csv(first.run_dir / "results.csv")
    assert list(frame.columns) == COLUMNS and len(frame) == 12
    assert frame["success"].between(0, 1).all() and (frame["chance"] == 0.25).all()
    assert ((frame["success_ci_low"] <= frame["success"]) & (frame["success"] <= frame["success_ci_high"])).all()
    # pairings per row: trained and new-partner 2 P^2, new-listener 2 P
    expect = {("trained", 1): 2, ("new-partner", 1): 2, ("new-listener", 1): 2, ("trained", 2): 8,
              ("new-partner", 2): 8, ("new-listener", 2): 4}
    assert all(r.pairs_played == expect[(r.pairing, r.size)] for r in frame.itertuples())
    summary = (first.run_dir / "summary.md").read_text()
    assert "new partners understand" in summary and "new-listener" in summary
    assert (first.run_dir / "success_vs_snr.png").stat().st_size > 0
    # cached once under runs_dir: populations A and B of P = 1 and 2, and a newcomer per speaker (2 + 4)
    dirs = [p.name for p in runs.glob("emergent-population-*") if p.is_dir()]
    assert sum("newcomer" not in d for d in dirs) == 4 and sum("newcomer" in d for d in dirs) == 6
    before = (first.run_dir / "results.csv").read_bytes()
    second = main(dataclasses.replace(cfg))
    assert second.ran == [] and second.rows == 12
    assert (first.run_dir / "results.csv").read_bytes() == before
