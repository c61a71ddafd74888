"""The emergent-protocol study (experiments.emergent): config checks, the grid, and a tiny run that resumes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from experiments.emergent import COLUMNS, Config, main, trial_grid
from experiments.emergent_trials import bag_features, meaning_attributes

pytestmark = pytest.mark.ray  # the tiny run starts Ray (tests/conftest.py)

MICRO = dict(ae_hidden_size=32, ae_intermediate_size=64, ae_latent_dim=16, ae_steps=20, ae_batch_size=32,
             ae_time_limit=0.0)


@pytest.mark.parametrize("bad, field", [
    (dict(protocols=("learned-continuous", "smoke")), "protocols"),
    (dict(features=("pixels",)), "features"),
    (dict(candidates=(8, 1)), "candidates"),
    (dict(channel_uses=(0,)), "channel_uses"),
    (dict(snrs_db=(0.0, float("nan"))), "snrs_db"),
    (dict(reference_snr_db=3.0), "reference_snr_db"),
    (dict(train_snr_db=(10.0, 0.0)), "train_snr_db"),
    (dict(train_snr_db=(0.0, 5.0, 10.0)), "train_snr_db"),
    (dict(erasure_p=1.0), "erasure"),
    (dict(channel="smoke"), "channel"),
    (dict(channel_uses=(9,), vocab_bits=2), "vocab_bits"),
    (dict(train_candidates=1), "train.candidates"),
    (dict(steps=0), "steps"),
    (dict(lr=0.0), "lr"),
    (dict(analysis_games=2048), "analysis_games"),
    (dict(num_passages=32, candidates=(64,)), "num_passages"),
])
def test_config_rejects_bad_values_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field.replace("_", "[-_]")):
        Config(**bad)


def test_odd_n_is_fine_without_discrete_protocols():
    assert Config(channel_uses=(9,), protocols=("learned-continuous", "vector", "hash")).channel_uses == (9,)


def test_grid_covers_every_point_once_with_pairs_first():
    cfg = Config(full=True)
    grid = trial_grid(cfg)
    # learned: 3 protocols x 2 features; fixed: 2 protocols; each x 2 n x 2 C x 9 SNRs x 3 seeds
    assert len(grid) == (3 * 2 + 2) * 2 * 2 * 9 * 3
    assert len({s["key"] for s in grid}) == len(grid)
    assert sum(s["reference"] for s in grid) == len(grid) // 9
    # the first trials each need a different pair: two cores train two pairs at once
    learned = [(s["protocol"], s["features"], s["channel_uses"], s["seed"]) for s in grid[:48]
               if s["protocol"].startswith("learned")]
    assert len(learned) == len(set(learned)) == 3 * 2 * 2 * 3
    small = trial_grid(Config())
    assert len(small) == 5 * 2 * 1 * 4 * 1  # the laptop default: 40 trials, 6 pairs


def test_features_and_attributes():
    ids = np.array([[1, 2, 2, 5], [3, 3, 3, 3]])
    bag = bag_features(ids, 4)
    assert bag.tolist() == [[0, 2, 2, 0], [0, 0, 0, 4]] and bag.dtype == np.float32
    attrs = meaning_attributes(np.random.default_rng(0).normal(size=(64, 10)))
    assert attrs.shape == (64, 4) and set(np.unique(attrs)) <= {0, 1, 2, 3}
    assert all(np.bincount(a, minlength=4).min() == 16 for a in attrs.T)  # quartiles: equal levels


@pytest.mark.slow
def test_tiny_study_runs_writes_its_outputs_and_resumes(ray_session, tmp_path_factory):
    cfg = Config(results_dir=str(tmp_path_factory.mktemp("results")),
                 runs_dir=str(tmp_path_factory.getbasetemp() / "latentcomm-runs"), run_name="tiny",
                 passage_length=8, channel_uses=(8,), candidates=(4,), snrs_db=(0.0, 10.0), reference_snr_db=10.0,
                 train_candidates=4, steps=40, batch_size=32, hidden_size=32, episodes=64, eval_batch=32,
                 analysis_games=32, interventions=4, num_passages=128, fit_passages=256, pool_size=16,
                 hard_distractors=True, **MICRO)
    first = main(cfg)
    assert first.rows == first.total == 10 and not first.failed
    run_dir = first.run_dir
    frame = pd.read_csv(run_dir / "results.csv")
    assert list(frame.columns) == COLUMNS and len(frame) == 10
    assert frame["success"].between(0, 1).all()
    assert (frame["success_ci_low"] <= frame["success"]).all() and (frame["success"] <= frame["success_ci_high"]).all()
    ref = frame[frame["reference"]]
    assert len(ref) == 5 and ref["topsim"].notna().all() and ref["causal_influence"].ge(0).all()
    assert ref["control_zeroed"].notna().all() and frame[~frame["reference"]]["topsim"].isna().all()
    discrete = ref["protocol"].isin(["learned-gumbel", "learned-reinforce", "hash"])
    assert ref[discrete]["posdis"].notna().all() and ref[~discrete]["posdis"].isna().all()
    # the success on the analysed games matches the listener on the real messages
    assert ref["control_real"].between(0, 1).all()
    summary = (run_dir / "summary.md").read_text()
    assert "Success vs SNR" in summary and "learned-gumbel (calm)" in summary and "topsim" in summary
    assert (run_dir / "success_vs_snr.png").stat().st_size > 0
    # the pairs were cached once under runs_dir: a rerun trains and plays nothing, rows unchanged
    pairs = sorted(p.name for p in (tmp_path_factory.getbasetemp() / "latentcomm-runs").glob("emergent-*")
                   if p.is_dir())
    assert len(pairs) == 3
    before = (run_dir / "results.csv").read_bytes()
    second = main(dataclasses.replace(cfg))
    assert second.ran == [] and second.rows == 10
    assert (run_dir / "results.csv").read_bytes() == before
