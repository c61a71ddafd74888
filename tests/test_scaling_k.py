"""experiments.scaling_k: config, grids, the frontier verdicts, and a tiny run that writes its outputs and resumes."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from experiments.scaling_k import Config, ae_grid, lm_grid, main
from experiments.scaling_k_report import frontier, verdicts

pytestmark = pytest.mark.ray  # the tiny runs start Ray (tests/conftest.py)


def test_config_and_grids():
    assert {s["budget"] for s in lm_grid(Config()) if s["kind"] == "lm"} == {1e12}  # the laptop default
    cfg = Config(full=True)
    assert [s["K"] for s in ae_grid(cfg)] == [1, 2, 4, 8]
    grid = lm_grid(cfg)
    assert grid[0]["kind"] == "separation"
    lm = [s for s in grid if s["kind"] == "lm"]
    assert len(lm) == 5 * 2 and len({s["key"] for s in grid}) == len(grid)
    assert sum(s["family"] == "baseline" for s in lm) == 2  # the baseline once per budget
    assert [s["budget"] for s in lm] == sorted(s["budget"] for s in lm)
    for bad in (dict(ks=(3,)), dict(ks=(32,)), dict(budgets=(0.0,)), dict(sizes=("xl",)),
                dict(channel_uses_per_token=(0,)), dict(eval_windows=1), dict(latent_per_token=0)):
        with pytest.raises(ValueError):
            Config(**bad)


def _row(family, budget, lm, low, high, size="xs"):
    return {"family": family, "budget": budget, "size": size, "brier_lm": lm, "brier_lm_ci_low": low,
            "brier_lm_ci_high": high, "brier_1": lm / 10, "brier_1_ci_low": low / 10, "brier_1_ci_high": high / 10}


def test_frontier_picks_the_best_size_and_verdicts_read_the_intervals():
    lm = pd.DataFrame([_row("baseline", 1e12, 1.0, 0.8, 1.2), _row("baseline", 1e12, 0.5, 0.4, 0.6, "s"),
                       _row("calm-k4", 1e12, 2.0, 1.5, 2.5), _row("calm-k8", 1e12, 0.1, 0.0, 0.2),
                       _row("calm-k2", 1e12, 1.1, 0.7, 1.4)])
    front = frontier(lm)
    assert front["baseline"][0]["size"] == "xs"
    assert verdicts(front) == {"calm-k4": ["beyond"], "calm-k8": ["below"], "calm-k2": ["overlap"]}


def test_help_lists_the_axes(capsys):
    out = subprocess.run([sys.executable, "-m", "experiments.scaling_k", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ("--ks", "--latent-per-token", "--budgets", "--channel-uses-per-token", "--snrs-db", "--noise-sigmas"):
        assert flag in out
    assert "10% warm-up" in out  # a % in a field's doc is text, not an argparse format (it crashed --help once)
    # calm_scaling's parser in this process (its command runs in tests/test_hostile_studies.py)
    from calm.cli import parse_config
    from experiments.calm_scaling import Config as StudyConfig

    with pytest.raises(SystemExit) as exit_info:
        parse_config(StudyConfig, ["--help"], prog="python -m experiments.calm_scaling")
    assert exit_info.value.code == 0 and "--families" in capsys.readouterr().out


@pytest.mark.slow
def test_tiny_k_study_writes_its_outputs_and_resumes(tmp_path):
    cfg = Config(results_dir=str(tmp_path / "results"), runs_dir=str(tmp_path / "runs"), run_name="tiny", ks=(2,),
                 latent_per_token=8, budgets=(2e10,), ae_steps=20, ae_hidden_size=32, ae_intermediate_size=64,
                 eval_windows=4, brier_samples=2, generate_tokens=4, eval_tokens=2048, episodes=32,
                 num_passages=200, fit_passages=200, pilot_passages=16, channel_uses_per_token=(8, 1),
                 snrs_db=(20.0, -10.0), address="local", num_cpus=2)
    result = main(cfg)
    assert result.rows == result.total == 4 and not result.failed
    run = result.run_dir
    for name in ("summary.md", "results.csv", "autoencoders.csv", "link.csv", "frontier.png", "link.png",
                 "robustness.png", "generation.json"):
        assert (run / name).is_file(), name
    speeds = json.loads((run / "generation.json").read_text())  # timed side by side in the driver
    assert set(speeds) == {"baseline-xs", "calm-k2-xs"} and min(speeds.values()) > 0
    lm = pd.read_csv(run / "results.csv")
    assert set(lm["family"]) == {"baseline", "calm-k2"} and (lm["flops"] >= lm["budget"]).all()
    assert (lm["generate_tokens_per_s"] > 0).all() and (lm["inference_flops_per_token"] > 0).all()
    ae = pd.read_csv(run / "autoencoders.csv")
    k2 = ae[ae["K"] == 2].iloc[0]
    assert k2["latent_dim"] == 16 and len(json.loads(k2["kl_per_dim"])) == 16
    assert set(json.loads(k2["noise_token_accuracy"])) == {"0.1", "0.2", "0.3", "0.5", "1.0"}
    link = pd.read_csv(run / "link.csv")
    assert set(link["protocol"]) == {"vector", "separation"} and len(link) == 2 * 2 * 2
    vec = link[link["protocol"] == "vector"].set_index(["channel_uses_per_token", "snr_db"])
    # more channel uses and more SNR never hurt the analog link much; at 20 dB with 8 uses/token it finds the target
    assert vec.loc[(8, 20.0), "success"] > 0.9 and vec.loc[(8, 20.0), "success"] >= vec.loc[(1, -10.0), "success"]
    assert vec.loc[(8, 20.0), "token_accuracy"] > vec.loc[(1, -10.0), "token_accuracy"]
    text = (run / "summary.md").read_text()
    assert "| token baseline |" in text and "| calm-k2 |" in text and "calm-k2: 2e+10:" in text
    assert "## Autoencoders" in text and "Communication view" in text
    again = main(cfg)
    assert set(result.ran) == {"ae-k2", "separation", "baseline-xs-C2e+10", "calm-k2-xs-C2e+10"}
    assert again.ran == [] and again.rows == 4
    pd.testing.assert_frame_equal(pd.read_csv(run / "results.csv"), lm)
