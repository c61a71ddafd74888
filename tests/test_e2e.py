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


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.local.yaml"])
def test_cluster_configs_follow_rays_schema(name):
    """Both launcher configs pass Ray's own schema check and pin the driver's Ray version."""
    import ray
    import yaml
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((ROOT / name).read_text())
    validate_config(config)  # raises jsonschema.ValidationError naming the bad key
    setup = " ".join(config["setup_commands"])
    assert f"ray[default,train,tune]=={ray.__version__.rsplit('.', 1)[0]}.*" in setup
    assert "pip install -q -e ~/latentcomm" in setup
    assert config["file_mounts"]["~/latentcomm"] == "."
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


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
