"""End to end: `ray up` / `ray submit cluster.local.yaml experiments/referential_game.py` / `ray down`.

Runs scripts/e2e_ray_submit.sh (a private sshd on 127.0.0.1, a throwaway user, a one-node cluster
from cluster.local.yaml) and checks it brought back a results.csv with the DESIGN.md columns.
Needs root (sshd, useradd) and either sshd/rsync/nc installed or apt-get.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from experiments.referential_game import COLUMNS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "e2e_ray_submit.sh"


def _can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root (sshd and a throwaway user)"
    if not (ROOT / ".venv" / "bin" / "ray").exists():
        return "needs the project's .venv"
    if not (Path("/usr/sbin/sshd").exists() or shutil.which("apt-get")):
        return "needs openssh-server or apt-get"
    return None


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.skipif(_can_run() is not None, reason=str(_can_run()))
@pytest.mark.timeout(420)
def test_ray_submit_end_to_end(tmp_path):
    keep = tmp_path / "results"
    env = {**os.environ, "E2E_KEEP_RESULTS": str(keep)}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "PASS" in proc.stdout
    frame = pd.read_csv(keep / "results.csv")
    assert list(frame.columns) == COLUMNS
    assert len(frame) == 12  # 2 sigmas x 3 protocols x 2 receivers x 1 seed
    assert set(frame.protocol) == {"vector", "token", "quantized"}
    assert (keep / "config.json").is_file()
    # nothing of the throwaway set-up is left behind
    assert "lce2e" not in subprocess.run(["getent", "passwd"], capture_output=True, text=True).stdout
