"""End to end: `ray up` / `ray submit cluster.local.yaml experiments/referential_game.py` / `ray down`.

Runs scripts/e2e_ray_submit.sh (a private sshd on 127.0.0.1, a throwaway user, a one-node cluster
from cluster.local.yaml) and checks it brought back a results.csv with the DESIGN.md columns.
The script runs from a copy of the working tree under a directory only root can enter (as a clone
under `mktemp -d` or /root is): the throwaway user must need nothing from inside the clone.
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

pytestmark = pytest.mark.ray  # `ray up` starts a (one-node) Ray cluster here

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "e2e_ray_submit.sh"


def _can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root (sshd and a throwaway user)"
    if not (ROOT / ".venv" / "bin" / "ray").exists():
        return "needs the project's .venv"
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        return "needs a git checkout (the test copies the working tree that git lists)"
    if not (Path("/usr/sbin/sshd").exists() or shutil.which("apt-get")):
        return "needs openssh-server or apt-get"
    return None


def _private_copy_of_tree(parent: Path) -> Path:
    """The working tree (tracked and untracked, not ignored) copied under a 0700 `parent`, with .venv
    linked in: the layout of a clone under `mktemp -d` or /root, where other users cannot enter."""
    parent.mkdir(mode=0o700)
    os.chmod(parent, 0o700)  # whatever the umask
    clone = parent / "clone"
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    for rel in filter(None, listing.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / rel)
    (clone / ".venv").symlink_to(ROOT / ".venv")
    return clone


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
    clone = _private_copy_of_tree(tmp_path / "private")
    keep, logs = tmp_path / "results", tmp_path / "logs"
    env = {**os.environ, "E2E_KEEP_RESULTS": str(keep), "E2E_LOG_DIR": str(logs)}
    script = clone / SCRIPT.relative_to(ROOT)
    proc = subprocess.run(["bash", str(script)], cwd=clone, env=env, capture_output=True, text=True, timeout=400)
    if proc.returncode != 0:
        # the script's own one-line reason and the error lines it picked out; full logs stay in tmp_path
        out = proc.stdout.splitlines()
        start = next((i for i, line in enumerate(out) if "FAIL:" in line), len(out))
        reason = [line for line in out[start:] if "FAIL:" in line or not line.startswith("[e2e")][:15]
        detail = "\n".join(reason) or proc.stderr[-500:]
        pytest.fail(f"e2e script exit {proc.returncode}; full logs in {logs}\n{detail}", pytrace=False)
    assert "PASS" in proc.stdout
    frame = pd.read_csv(keep / "results.csv")
    assert list(frame.columns) == COLUMNS
    assert len(frame) == 12  # 2 sigmas x 3 protocols x 2 receivers x 1 seed x 1 n
    assert set(frame.protocol) == {"vector", "hash", "uncoded-tokens"}
    assert (keep / "config.json").is_file()
    # nothing of the throwaway set-up is left behind
    assert "lce2e" not in subprocess.run(["getent", "passwd"], capture_output=True, text=True).stdout
