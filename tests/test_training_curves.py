"""scripts/plot_training_curves.py: validation curves from train_info.json, a missing history refused by name."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot_training_curves.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("plot_training_curves", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_curves_are_read_and_plotted(script, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    history = [{"step": s, "val_acc": 0.1 * s, "val_acc_awgn_0dB": 0.01 * s, "val_acc_awgn_20dB": 0.02 * s}
               for s in (250, 500)]
    (run / "train_info.json").write_text(json.dumps({"history": history}))
    got = script.curves(run, "val_acc_")
    assert got == {"awgn_0dB": [(250, 2.5), (500, 5.0)], "awgn_20dB": [(250, 5.0), (500, 10.0)]}
    assert script.main([str(run), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_a_missing_history_is_named(script, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert script.main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")]) == 2
    assert "train_info.json: no readable training history" in capsys.readouterr().err
