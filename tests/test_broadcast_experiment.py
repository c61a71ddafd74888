"""experiments.broadcast: seeded trials are deterministic, listeners get their own quality, a sweep resumes."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from experiments.broadcast import COLUMNS, ROW_COLUMNS, Config, main, play_trial, trial_grid
from experiments.broadcast_report import long_frame, per_listener_table, pooled

pytestmark = pytest.mark.ray

# a micro autoencoder trained for 200 steps (about 6 s): enough for the vector to carry some tokens, so that
# the listeners' SNRs can show in its accuracy (a random one decodes nothing at any SNR)
MICRO = dict(ae_hidden_size=32, ae_intermediate_size=64, ae_latent_dim=8, ae_steps=200, ae_batch_size=64,
             ae_time_limit=0.0)
SNRS = (-20.0, 40.0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Two listeners (-20 and 40 dB), L = 8 in n = 16 uses, 32 passages, LDPC only; the micro autoencoder."""
    from experiments.common.models import ensure_checkpoint

    cfg = Config(results_dir=str(tmp_path_factory.mktemp("results")),
                 runs_dir=str(tmp_path_factory.getbasetemp() / "latentcomm-runs"), listener_snrs_db=SNRS,
                 passage_length=8, channel_uses=16, episodes=32, batch_size=32, pilot_passages=16, num_passages=128,
                 fit_passages=256, separation_codes=("ldpc",), plots=False, **MICRO)
    return dataclasses.replace(cfg, checkpoint=str(ensure_checkpoint(cfg)))


def test_config_grid_and_help(capsys):
    from calm.cli import parse_config

    grid = trial_grid(Config())
    assert [(s["protocol"], s["rate_for"]) for s in grid] == [
        ("vector", "-"), ("separation", "-3 dB"), ("separation", "3 dB"), ("separation", "10 dB")]
    assert len({s["key"] for s in grid}) == len(grid)
    assert len(trial_grid(Config(seeds=(0, 1), protocols=("separation", "uncoded-tokens")))) == 2 * (3 + 1)
    assert [s["protocol"] for s in trial_grid(Config(), {"separation"})] == ["vector"]
    with pytest.raises(ValueError, match="listener_snrs_db"):
        Config(listener_snrs_db=())
    with pytest.raises(ValueError, match="protocols"):
        Config(protocols=("telepathy",))
    with pytest.raises(SystemExit) as exc:
        parse_config(Config, ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in out
    cfg = parse_config(Config, ["--listener-snrs-db", "-6", "0", "6", "12", "--protocols", "vector"])
    assert cfg.listener_snrs_db == (-6.0, 0.0, 6.0, 12.0) and trial_grid(cfg)[0]["key"] == "vector-seed0"


def test_trials_are_deterministic_and_listeners_differ(base, tmp_path):
    """Fresh in-process agents and the same seed give identical rows; the analog vector (and the rateless
    uncoded tokens) serve the 40 dB listener better than the -20 dB one; one digital rate picked for 40 dB loses
    the -20 dB listener."""
    from pathlib import Path

    from agents import CALMAgentCore
    from experiments.common.links import fit_protocols
    from experiments.common.models import checkpoint_id

    checkpoint = Path(base.checkpoint)
    cfg = dataclasses.replace(base, seeds=(3,), protocols=("vector", "separation", "uncoded-tokens"))
    dirs, variants, facts, skipped, passages = fit_protocols(cfg, checkpoint, tmp_path, protocols=cfg.protocols,
                                                             budgets=[cfg.channel_uses])
    assert not skipped and len(variants["separation@16"]) > 1
    settings = {"snrs_db": list(SNRS), "n": 16, "episodes": 32, "batch_size": 32, "passage_length": 8,
                "vocab_size": facts["vocab_size"], "K": facts["K"], "variants": variants,
                "bits_sent": facts["bits_sent"], "guess": facts["guess"],
                "entropy_bits_per_token": facts["entropy_bits_per_token"], "fill_accuracy": facts["fill_accuracy"],
                "pilot": 16, "checkpoint": checkpoint_id(checkpoint), "tokenizer_path": str(checkpoint / "tokenizer.json")}
    grid = trial_grid(cfg)
    runs = []
    for _ in range(2):
        speaker = CALMAgentCore(str(checkpoint), dirs)
        listeners = [CALMAgentCore(str(checkpoint), dirs) for _ in SNRS]
        runs.append([play_trial(spec, speaker, listeners, passages, settings) for spec in grid])
    assert [json.dumps(r, sort_keys=True) for r in runs[0]] == [json.dumps(r, sort_keys=True) for r in runs[1]]
    rows = runs[0]
    assert all(list(r) == ROW_COLUMNS and len(r["listeners"]) == 2 for r in rows)
    acc = {(r["protocol"], r["rate_for"], lst["snr_db"]): lst["token_accuracy"] for r in rows for lst in r["listeners"]}
    assert acc[("vector", "-", 40.0)] > acc[("vector", "-", -20.0)]
    assert acc[("uncoded-tokens", "-", 40.0)] > acc[("uncoded-tokens", "-", -20.0)]
    assert acc[("separation", "40 dB", 40.0)] > acc[("separation", "40 dB", -20.0)] + 0.2
    # the oracle's rate for 40 dB serves that listener at least as well as the rate picked for -20 dB
    assert acc[("separation", "40 dB", 40.0)] >= acc[("separation", "-20 dB", 40.0)]
    sep = {r["rate_for"]: r for r in rows if r["protocol"] == "separation"}
    assert sep["40 dB"]["mcs"] and sep["40 dB"]["bits_sent"] > 0
    # the long frame and the tables: one line per listener, the diagonal as each listener's own rate
    frame = long_frame(pd.DataFrame(rows, columns=ROW_COLUMNS))
    assert list(frame.columns) == COLUMNS and len(frame) == 2 * len(rows)
    table = per_listener_table(pooled(frame))
    assert "separation, rate for 40 dB" in table and "each its own rate" in table and "separation bound" in table
    assert "listener 0: -20 dB" in table


@pytest.mark.slow
def test_tiny_sweep_resumes_without_doubling_rows(base):
    cfg = dataclasses.replace(base, run_name="tiny", max_concurrent=1, address="local")
    first = main(dataclasses.replace(cfg, max_trials=1))
    assert len(first.ran) == 1 and first.rows == 1 and first.total == 3
    second = main(cfg)
    assert second.rows == second.total == 3 and not set(second.ran) & set(first.ran)
    frame = pd.read_csv(second.run_dir / "results.csv")
    assert list(frame.columns) == COLUMNS and len(frame) == 3 * 2  # trials x listeners
    assert not frame.duplicated(["protocol", "rate_for", "listener", "seed"]).any()
    assert sorted(set(frame.rate_for)) == ["-", "-20 dB", "40 dB"]
    assert ((frame.token_accuracy >= 0) & (frame.token_accuracy <= 1)).all()
    assert "each its own rate" in (second.run_dir / "summary.md").read_text()
    assert main(cfg).ran == []
