"""The GPU check's pieces that run anywhere: the training-speed bench on the CPU, the script's own guards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def test_gpu_train_bench_times_real_training_steps_on_cpu():
    import gpu_train

    out = gpu_train.main(["--device", "cpu", "--sizes", "m", "--families", "baseline", "calm-k2", "--steps", "2",
                          "--warmup", "0", "--batch", "1"])
    assert out["device"] == "cpu" and out["autocast_bf16"] is False and out["peak_flops"] is None
    by_family = {r["family"]: r for r in out["results"]}
    assert set(by_family) == {"baseline", "calm-k2"}
    for r in by_family.values():
        assert r["tokens_per_s"] > 0 and r["mfu"] is None and torch.isfinite(torch.tensor(r["last_loss"]))
        assert r["achieved_flops_per_s"] == pytest.approx(r["tokens_per_s"] * r["train_flops_per_token"])
    # the analytic per-token cost is the study's: K = 2 CALM trains cheaper per token than the baseline
    assert by_family["calm-k2"]["train_flops_per_token"] < by_family["baseline"]["train_flops_per_token"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU guard")
def test_gpu_check_script_stops_cleanly_without_a_gpu(tmp_path):
    script = ROOT / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "sees no CUDA device" in done.stdout


def test_gpu_check_runs_the_official_cost_bench_on_cuda_in_bf16_with_flags_it_takes():
    import shlex

    import official_cost

    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    calls = [line for line in script.splitlines()
             if '"$PY" bench/official_cost.py' in line and not line.lstrip().startswith("#")]
    assert len(calls) == 1, calls
    flags = shlex.split(calls[0].split("bench/official_cost.py", 1)[1].split(">")[0].rstrip(" \\"))
    args = official_cost.build_parser().parse_args(flags)
    assert args.device == "cuda" and args.dtype == "bf16" and args.out
