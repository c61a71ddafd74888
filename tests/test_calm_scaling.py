"""experiments.calm_scaling: the power-law fit, the crossover, the bootstrap summary, a tiny run that resumes."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from experiments.calm_scaling import Config, main, trial_grid
from experiments.calm_scaling_report import crossover, fit_power_law, summarise
from experiments.common.lm_budget import SIZES

pytestmark = pytest.mark.ray  # the tiny runs start Ray (tests/conftest.py)


def test_fit_power_law_recovers_a_planted_law():
    flops = np.array([1e12, 3e12, 1e13])
    log_a, b = fit_power_law(flops, 2.0 * flops**-0.05)
    assert b == pytest.approx(0.05) and math.exp(log_a) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="two budgets"):
        fit_power_law(np.array([1e12, 1e12]), np.array([0.9, 0.8]))


def test_crossover_where_the_lines_meet_and_none_when_calm_is_not_steeper():
    base, calm = (math.log(1.0), 0.01), (math.log(4.0), 0.06)
    log_c = crossover(calm, base)
    assert math.exp(log_c) == pytest.approx(4.0 ** (1 / 0.05))  # 4 C^-0.06 == C^-0.01
    assert crossover((math.log(4.0), 0.01), base) is None
    assert crossover((math.log(4.0), 0.005), base) is None


def _frame(calm_slope: float, rng: np.random.Generator) -> pd.DataFrame:
    """Rows whose per-window Brier-1 follow 1 - B = a C^-b (plus window noise); Brier-2..4 = B/2, B/4, B/8."""
    rows, budgets = [], [1e12, 4e12, 1.6e13]
    for family, log_a, b in (("baseline", 0.0, 0.01), ("calm-k2", math.log(1.3), calm_slope)):
        for size, penalty in (("xs", 0.01), ("m", 0.0)):  # xs is worse: the frontier must pick m
            for c in budgets:
                b1 = 1 - math.exp(log_a) * c**-b - penalty + rng.normal(0, 0.002, 24)
                pw = np.stack([b1, b1 / 2, b1 / 4, b1 / 8], axis=1)
                rows.append({"family": family, "size": size, "budget": c, "flops": c,
                             "brier_1": b1.mean(), "brier_lm": 0.0, "per_window": json.dumps(pw.tolist())})
    return pd.DataFrame(rows)


def test_summary_finds_a_planted_crossover_and_reports_none_otherwise():
    rng = np.random.default_rng(0)
    steep = summarise(_frame(0.04, rng), resamples=200)["scores"]["brier_1"]
    fits = steep["fits"]
    assert fits["baseline"]["b"] == pytest.approx(0.01, abs=0.002)
    assert fits["calm-k2"]["b"] == pytest.approx(0.04, abs=0.003)
    assert fits["calm-k2"]["b_ci"][0] < fits["calm-k2"]["b"] < fits["calm-k2"]["b_ci"][1]
    cross = steep["crossover"]["calm-k2"]
    planted = math.log10(1.3) / 0.03  # 1.3 C^-0.04 == C^-0.01
    assert cross["log10_flops"] == pytest.approx(planted, abs=0.5)
    low, high = cross["log10_flops_ci"]
    assert low < planted < high and cross["fraction_of_resamples_with_crossover"] > 0.9
    flat = summarise(_frame(0.002, rng), resamples=200)["scores"]["brier_1"]["crossover"]["calm-k2"]
    assert flat["log10_flops"] is None and flat["fraction_of_resamples_with_crossover"] < 0.1
    assert flat["verdict"].startswith("no crossover")
    # a CALM whose Brier-4 is negative everywhere has BrierLM 0 at every budget: no law is fitted to a constant
    frame = _frame(0.04, rng)
    calm = frame["family"] == "calm-k2"
    frame.loc[calm, "per_window"] = [json.dumps((np.array(json.loads(pw)) * [1, 1, 1, -1]).tolist())
                                     for pw in frame.loc[calm, "per_window"]]
    lm = summarise(frame, resamples=20)["scores"]["brier_lm"]
    assert set(lm["fits"]) == {"baseline"} and lm["zero_everywhere"] == ["calm-k2"]
    assert lm["crossover"]["calm-k2"]["verdict"].startswith("no fit")


def test_config_and_grid():
    assert {(s["size"], s["budget"]) for s in trial_grid(Config())} == {("xs", 1e12), ("xs", 2.5e12)}  # laptop
    grid = trial_grid(Config(full=True))
    assert len(grid) == 3 * 3 * 3 and len({s["key"] for s in grid}) == len(grid)
    assert [s["budget"] for s in grid] == sorted(s["budget"] for s in grid)  # cheapest first
    assert set(SIZES) == {"xs", "s", "m"}
    for bad in (dict(budgets=(0.0,)), dict(families=("baseline", "rnn")), dict(eval_windows=1),
                dict(brier_samples=1)):
        with pytest.raises(ValueError):
            Config(**bad)


@pytest.mark.slow
def test_tiny_study_runs_writes_its_outputs_and_resumes(tmp_path):
    cfg = Config(results_dir=str(tmp_path / "results"), runs_dir=str(tmp_path / "runs"), run_name="tiny",
                 families=("baseline", "calm-k2"), sizes=("xs",), budgets=(2e10, 5e10), ae_steps=5,
                 ae_hidden_size=32, ae_intermediate_size=64, eval_windows=4, brier_samples=2, address="local",
                 num_cpus=2)
    result = main(cfg)
    assert result.rows == result.total == 4 and not result.failed
    frame = pd.read_csv(result.run_dir / "results.csv")
    assert set(frame["family"]) == {"baseline", "calm-k2"}
    assert (frame["flops"] >= frame["budget"]).all()  # trained to at least the budget
    assert frame.loc[frame["family"] == "calm-k2", "on_manifold"].between(0, 1).all()
    for name in ("fits.json", "summary.md", "scaling.png"):
        assert (result.run_dir / name).is_file()
    again = main(cfg)  # resumes: nothing left to train, same rows
    assert again.ran == [] and again.rows == 4
    pd.testing.assert_frame_equal(pd.read_csv(again.run_dir / "results.csv"), frame)
