"""The emergent-protocol study (experiments.emergent): config checks, the grid, and a tiny run that resumes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from experiments.common.links import bag_features
from experiments.emergent import COLUMNS, Config, main, trial_grid
from experiments.emergent_trials import meaning_attributes

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
    # per (C, seed, SNR), on each split: 3 uncoded learned x 2 features x 2 n, learned-coded x 2 features at n = 32
    # only (n = 8 holds 4 information bits, below 5G LDPC's 12), 2 fixed x 2 n; the test split adds the mismatch
    # pairs of the 4 learned protocols at 2 training SNRs
    per_split, mismatch = 3 * 2 * 2 + 2 + 2 * 2, (3 * 2 * 2 + 2) * 2
    assert cfg.coded_channel_uses() == (32,)
    assert len(grid) == (2 * per_split + mismatch) * 2 * 3 * 9
    assert len({s["key"] for s in grid}) == len(grid)
    assert sum(s["reference"] for s in grid) == per_split * 2 * 3
    assert all(s["split"] == "test" and not s["mismatch"] for s in grid if s["reference"])
    # every pair is needed at the first SNR (trained early), and the first two trials need different pairs
    def pair(s):
        return s["protocol"], s["features"], s["channel_uses"], s["seed"], s["train_snr"]

    learned = [s for s in grid if s["protocol"].startswith("learned")]
    first_snr = {pair(s) for s in learned if s["snr_db"] == cfg.snrs_db[0]}
    assert first_snr == {pair(s) for s in learned} and len(first_snr) == (3 * 2 * 2 + 2) * 3 * 3
    assert pair(grid[0]) != pair(grid[1])
    small = trial_grid(Config())
    # the laptop default: 4 SNRs x (11 points on each split + 2 mismatch points), 9 pairs
    assert len(small) == 4 * (11 * 2 + 2)
    assert len({pair(s) for s in small if s["protocol"].startswith("learned")}) == 9
    assert {s["train_snr"] for s in small} == {"-9..20", "0", "-"}


def test_coded_and_unseen_settings_are_checked():
    with pytest.raises(ValueError, match="code_rate"):
        Config(channel_uses=(8,))  # learned-coded fits no n
    assert Config(channel_uses=(8,), protocols=("learned-continuous", "hash")).channel_uses == (8,)
    with pytest.raises(ValueError, match="unseen_corpus"):
        Config(unseen_corpus="kjv+shakespeare")
    with pytest.raises(ValueError, match="unseen_corpus"):
        Config(unseen_corpus="bible")
    with pytest.raises(ValueError, match="mismatch_protocols"):
        Config(mismatch_protocols=("hash",))
    with pytest.raises(ValueError, match="unseen_corpus"):
        Config(unseen_corpus="kjv")  # half of the default corpus
    # the default mismatch protocol is cut to the protocols run; one the user names is not
    assert Config(protocols=("learned-gumbel", "hash")).mismatch_protocols == ()
    with pytest.raises(ValueError, match="mismatch_protocols"):
        Config(protocols=("learned-gumbel", "hash"), mismatch_protocols=("learned-reinforce",))
    with pytest.raises(ValueError, match="mismatch_snrs_db"):
        Config(train_snr_db=(0.0,), mismatch_snrs_db=(0.0,))  # both would name their rows "0"
    with pytest.raises(ValueError, match="mismatch.snrs.db"):
        Config(mismatch_snrs_db=(500.0,))  # out of range
    with pytest.raises(ValueError, match="splits"):
        Config(splits=("train",))


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
                 passage_length=8, channel_uses=(24,), candidates=(4,), snrs_db=(0.0, 10.0), reference_snr_db=10.0,
                 train_candidates=4, steps=40, batch_size=32, hidden_size=32, episodes=64, eval_batch=32,
                 analysis_games=32, interventions=4, num_passages=128, fit_passages=256, pool_size=16,
                 hard_distractors=True, tracking="mlflow", **MICRO)
    first = main(cfg)
    # 6 protocols x 2 SNRs x 2 splits, and the mismatch pair (trained at 0 dB) at both SNRs
    assert first.rows == first.total == 26 and not first.failed
    run_dir = first.run_dir
    frame = pd.read_csv(run_dir / "results.csv")
    assert list(frame.columns) == COLUMNS and len(frame) == 26
    assert frame["success"].between(0, 1).all()
    assert (frame["success_ci_low"] <= frame["success"]).all() and (frame["success"] <= frame["success_ci_high"]).all()
    assert (frame["split"] == "unseen").sum() == 12 and (frame["train_snr"] == "0").sum() == 2
    ref = frame[frame["reference"]]
    assert len(ref) == 6 and ref["topsim"].notna().all() and ref["causal_influence"].ge(0).all()
    assert ref["control_zeroed"].notna().all() and ref["control_other_task"].notna().all()
    assert frame[~frame["reference"]]["topsim"].isna().all()
    discrete = ref["protocol"].isin(["learned-gumbel", "learned-reinforce", "learned-coded", "hash"])
    assert ref[discrete]["posdis"].notna().all() and ref[~discrete]["posdis"].isna().all()
    coded = frame[frame["protocol"] == "learned-coded"]
    assert (coded["bits_sent"] == 12).all()  # k = 0.5 * 24 information bits in 24 coded uses
    # the success on the analysed games matches the listener on the real messages
    assert ref["control_real"].between(0, 1).all()
    summary = (run_dir / "summary.md").read_text()
    for part in ("Success vs SNR", "learned-gumbel (calm)", "topsim", "unseen", "mismatch", "Example messages"):
        assert part in summary, part
    for plot in ("success_vs_snr.png", "snr_mismatch.png"):
        assert (run_dir / plot).stat().st_size > 0
    # the pairs were cached once under runs_dir: a rerun trains and plays nothing, rows unchanged
    pairs = sorted(p.name for p in (tmp_path_factory.getbasetemp() / "latentcomm-runs").glob("emergent-*")
                   if p.is_dir())
    assert len(pairs) == 5
    # each learned pair reached MLflow as a model of the run, with its training curve (trained inside the trials)
    from mlflow.tracking import MlflowClient

    record = json.loads((run_dir / "tracking.json").read_text())
    client = MlflowClient(record["uri"])
    parent = client.get_run(record["run_id"])
    models = [r for r in client.search_runs([parent.info.experiment_id],
                                            f"tags.mlflow.parentRunId = '{record['run_id']}'")
              if r.data.tags["child_key"].startswith("model:") and r.data.tags["role"].startswith("pair ")]
    assert sorted(r.data.tags["role"][5:] for r in models) == pairs
    history = json.loads((tmp_path_factory.getbasetemp() / "latentcomm-runs" / pairs[0] / "config.json").read_text())
    logged = next(r for r in models if r.data.tags["role"] == f"pair {pairs[0]}")
    curve = client.get_metric_history(logged.info.run_id, "success")
    assert [(m.step, m.value) for m in curve] == [(h["step"], pytest.approx(h["success"])) for h in history["history"]]
    assert curve[-1].step == 40 and "loss" in logged.data.metrics
    before = (run_dir / "results.csv").read_bytes()
    second = main(dataclasses.replace(cfg))
    assert second.ran == [] and second.rows == 26
    assert (run_dir / "results.csv").read_bytes() == before
