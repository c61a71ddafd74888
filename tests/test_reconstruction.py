"""experiments.reconstruction: the grid, a tiny sweep on Ray that resumes, the command, the report.

One trial played in this process (deterministic, separation-lm's) is tests/test_reconstruction_trials.py's, which
needs no Ray (``make test`` runs it beside the Ray files)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from experiments.reconstruction import COLUMNS, Config, main, trial_grid
from experiments.reconstruction_report import passage_metrics, pooled, snr_at_accuracy

pytestmark = pytest.mark.ray

@pytest.fixture(scope="module")
def base(reconstruction_tiny):
    """The tiny sweep (tests/conftest.py's ``reconstruction_tiny``)."""
    return reconstruction_tiny


def test_config_and_grid():
    assert {spec["channel_uses"] for spec in trial_grid(Config())} == {32}  # the laptop default: n = 32 only
    cfg = Config(full=True)
    grid = trial_grid(cfg)
    assert len(grid) == 4 * 2 * 3 * 8 * 2  # protocols x channels x rhos x sigmas x seeds
    assert {spec["channel_uses"] for spec in grid} == {8, 16, 32}  # rho L for L = 32
    assert len({spec["key"] for spec in grid}) == len(grid)
    assert len(trial_grid(cfg, {("uncoded-tokens", 8)})) == len(grid) - 2 * 8 * 2
    with pytest.raises(ValueError, match="rhos"):
        Config(rhos=(0.01,))
    with pytest.raises(ValueError, match="protocols"):
        Config(protocols=("vector", "telepathy"))
    assert "separation-lm" not in cfg.protocols and Config(protocols=("separation", "separation-lm")).protocols
    with pytest.raises(ValueError, match="separation_menu"):
        Config(separation_menu="coarse")
    with pytest.raises(ValueError, match="separation_lm_oracle"):
        Config(separation_lm_oracle="guess")
    with pytest.raises(ValueError, match="separation_header"):
        Config(separation_header="gamma")
    with pytest.raises(ValueError, match="separation_lm_mix"):
        Config(separation_lm_mix=1.0)


def test_passage_metrics_known_values():
    target = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [1, 1, 1, 1, 1, 1, 1, 1]])
    decoded = np.array([[1, 2, 3, 4, 5, 6, 7, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    m = passage_metrics(decoded, target, 4, (["a b c", "same"], ["a b d", "same"]))
    np.testing.assert_allclose(m["token_accuracy"], [7 / 8, 1.0])
    np.testing.assert_allclose(m["chunk_exact"], [0.5, 1.0])
    np.testing.assert_allclose(m["passage_exact"], [0.0, 1.0])
    assert m["chrf"][1] == pytest.approx(100.0) and 0 < m["chrf"][0] < 100


@pytest.mark.slow
def test_tiny_sweep_runs_resumes_and_reports(ray_session, base):
    first = main(dataclasses.replace(base, run_name="tiny", max_trials=2))
    assert len(first.ran) == 2 and first.rows == 2
    second = main(dataclasses.replace(base, run_name="tiny"))
    assert len(second.ran) == second.total - 2 and not set(second.ran) & set(first.ran)
    frame = pd.read_csv(second.run_dir / "results.csv")
    assert list(frame.columns) == COLUMNS and len(frame) == second.total == 6
    assert (frame.channel_uses == 16).all()  # rho 2 x L 8
    for m in ("token_accuracy", "chunk_exact", "passage_exact"):
        assert ((frame[m] >= 0) & (frame[m] <= 1)).all()
        assert ((frame[f"{m}_ci_low"] <= frame[m] + 1e-12) & (frame[m] <= frame[f"{m}_ci_high"] + 1e-12)).all()
    sep = frame[frame.protocol == "separation"]
    assert sep.mcs.notna().all() and (sep.bits_sent > 0).all()  # the oracle's pick and its payload
    assert frame[frame.protocol == "vector"].bits_sent.isna().all()  # analog
    # the separation bound: 1 on the noiseless channel (infinite capacity), below 1 at 0 dB with n = 16
    bound = frame.set_index(["protocol", "sigma"]).bound_accuracy
    assert bound[("vector", 0.0)] == 1.0 and bound[("vector", 1.0)] < 1.0
    summary = (second.run_dir / "summary.md").read_text()
    assert "lossless prefix at capacity" in summary and "One passage as each protocol delivers it" in summary
    assert "(sent)" in summary
    # a third run has nothing left to do
    assert main(dataclasses.replace(base, run_name="tiny")).ran == []


def test_pooling_and_snr_interpolation():
    rows = []
    for sigma, acc in ((0.5, 0.95), (1.0, 0.7), (2.0, 0.3)):
        row = dict.fromkeys(COLUMNS, 0.0)
        row.update(protocol="vector", channel="awgn", sigma=sigma, snr_db=-20 * math.log10(sigma), rho=1.0,
                   channel_uses=32, bits_sent=float("nan"), mcs=None, episodes=100, seed=0)
        for m in ("token_accuracy", "chunk_exact", "passage_exact", "chrf"):
            row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = acc, acc - 0.05, acc + 0.05
        rows.append(row)
    table = pooled(pd.DataFrame(rows, columns=COLUMNS))
    assert list(table.token_accuracy) == [0.95, 0.7, 0.3]
    np.testing.assert_allclose(table.token_accuracy_high - table.token_accuracy, 0.05, atol=1e-9)
    at = snr_at_accuracy(table, 0.9).snr_db_at_target.iloc[0]
    # between 0 dB (0.7) and 6.02 dB (0.95): 80% of the way
    assert at == pytest.approx(0.8 * 20 * math.log10(2.0), abs=1e-6)


@pytest.mark.slow
def test_cli_as_main_module_runs_its_trials(ray_session, base, tmp_path):
    """``python -m experiments.reconstruction``: the trial function is pickled from ``__main__`` and must still
    find everything it calls in the Ray workers (a module-level cache there once failed every trial). The command
    joins this process's shared Ray (``--address``), as under ``ray submit``: its workers are new processes of its
    own job all the same, and no second Ray starts."""
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "experiments.reconstruction", "--run-name", "cli", "--results-dir", str(tmp_path),
            "--runs-dir", base.runs_dir, "--passage-length", "8", "--rhos", "2", "--channels", "awgn",
            "--sigmas", "1.0", "--seeds", "0", "--protocols", "vector", "--separation-codes", "ldpc",
            "--episodes", "32", "--batch-size", "32", "--num-passages", "256", "--fit-passages", "512",
            "--address", ray_session.get_runtime_context().gcs_address, "--no-plots"]
    for name in ("ae_hidden_size", "ae_intermediate_size", "ae_latent_dim", "ae_steps", "ae_batch_size",
                 "ae_time_limit"):  # the micro autoencoder of the fixture's config
        args += [f"--{name.replace('_', '-')}", str(getattr(base, name))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    frame = pd.read_csv(tmp_path / "cli" / "results.csv")
    assert list(frame.protocol) == ["vector"] and "trials failed" not in proc.stdout


def test_snr_gap_and_crossing_on_known_curves():
    """jscc: 0.2 at 0 dB, 0.3 at 10 dB; separation: 0.1 at 0 dB, 0.5 at 10 dB (a steeper curve that overtakes)."""
    from experiments.reconstruction_report import gap_table, snr_gap

    rows = []
    for protocol, accs in (("jscc", (0.2, 0.3)), ("separation", (0.1, 0.5))):
        for sigma, acc in zip((1.0, 10 ** -0.5), accs):
            row = dict.fromkeys(COLUMNS, 0.0)
            row.update(protocol=protocol, channel="awgn", sigma=sigma, snr_db=-20 * math.log10(sigma), rho=1.0,
                       channel_uses=32, bits_sent=float("nan"), mcs=None, episodes=100, seed=0)
            for m in ("token_accuracy", "chunk_exact", "passage_exact", "chrf"):
                row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = acc, acc, acc
            rows.append(row)
    gaps = snr_gap(pooled(pd.DataFrame(rows, columns=COLUMNS)), levels=1)
    (g,) = gaps.itertuples(index=False)
    assert g.token_accuracy == pytest.approx(0.25)  # the middle of the shared range [0.2, 0.3]
    assert g.snr_db_jscc == pytest.approx(5.0) and g.snr_db_separation == pytest.approx(3.75)
    assert g.gap_db == pytest.approx(-1.25)
    assert g.separation_overtakes_db == pytest.approx(10 / 3)  # 0.1 + 0.04 x = 0.2 + 0.01 x
    assert g.steepest_jscc == pytest.approx(0.01) and g.steepest_separation == pytest.approx(0.04)
    assert "| awgn | 1 | 0.280 | 8.0 | 4.5 | -3.5 | 3.3 |" in gap_table(pooled(pd.DataFrame(rows, columns=COLUMNS)))
    # protocol names that are no Python identifiers (lm-jscc, separation-lm) tabulate the same
    renamed = pd.DataFrame(rows, columns=COLUMNS).replace({"protocol": {"jscc": "lm-jscc", "separation": "separation-lm"}})
    assert "| awgn | 1 | 0.280 | 8.0 | 4.5 | -3.5 | 3.3 |" in gap_table(pooled(renamed), "lm-jscc", "separation-lm")
