"""calm.ray_runtime: the local Ray the project starts, and Ray Train runs through it.

- every socket the local Ray listens on is a loopback one (GCS and dashboard named explicitly);
- a training run's console: no repeated line, no Ray warning, a handful of lines besides progress bars;
- a Ray Train worker killed after the first checkpoint: the same run restarts its workers, resumes from
  that checkpoint (the log says so) and ends with the config and step count of an undisturbed run.

Training runs as ``python -m calm.train`` subprocesses: the console is what a user sees, and a worker can
be killed without touching this process's Ray.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.serial]  # subprocesses start Ray and run Ray Train

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. To be, or not to be, that is the question. ")
STEPS, EVERY = 300, 50
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
# a tqdm frame (the driver redraws bars in place) is not a line a person reads
PROGRESS = re.compile(r"(it|doc)/s\]\s*$|\?(it|doc)/s\]")


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "LATENTCOMM_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            "RAY_ADDRESS": ""}


def _console_lines(output: str) -> list[str]:
    """What a person reads: lines (split on \\r too, as a terminal redraws them) that are not bar frames."""
    lines = re.split(r"[\r\n]", output)
    return [line for line in lines if line.strip() and not PROGRESS.search(line)]


def test_local_ray_listens_on_loopback_only(tmp_path):
    """Start a local Ray through init_ray (in a fresh process) and list every listening socket of it."""
    probe = r"""
import json, psutil, ray
from calm.ray_runtime import init_ray
init_ray(address="local", num_cpus=1, announce=False)
ray.get(ray.remote(lambda: 1).remote())  # a worker process exists and listens too
ctx = ray.get_runtime_context()
me = psutil.Process()
listening = []
for proc in [me, *me.children(recursive=True)]:
    try:
        conns = proc.net_connections(kind="inet")
    except psutil.Error:
        continue
    listening += [[proc.name(), c.laddr.ip, c.laddr.port] for c in conns if c.status == psutil.CONN_LISTEN]
import ray._private.worker as w
print(json.dumps({"gcs": ctx.gcs_address, "dashboard": w._global_node.address_info["webui_url"],
                  "listening": listening}))
ray.shutdown()
"""
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    gcs_host, gcs_port = facts["gcs"].rsplit(":", 1)
    dash_host, dash_port = facts["dashboard"].rsplit(":", 1)
    assert gcs_host == "127.0.0.1" and dash_host == "127.0.0.1"
    ports = {port: ip for _, ip, port in facts["listening"]}
    assert ports.get(int(gcs_port)) in LOOPBACK, facts  # the GCS listens, on loopback
    assert ports.get(int(dash_port)) in LOOPBACK, facts  # the dashboard listens, on loopback
    names = {name for name, _, _ in facts["listening"]}
    assert {"gcs_server", "raylet"} <= names, names
    exposed = [entry for entry in facts["listening"] if entry[1] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"


def _train_cmd(tmp_path: Path, out: Path) -> list[str]:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("\n\n".join(f"{i} {TEXT[i % 50:]}{TEXT[: i % 50]}" for i in range(60)))
    return [sys.executable, "-m", "calm.train", "autoencoder", "--preset", "tiny", "--corpus", f"text:{corpus}",
            "--tokenizer", "bpe:300", "--out", str(out), "--workers", "2", "--gpu", "off",
            "--hidden-size", "32", "--latent-dim", "8", "--intermediate-size", "64", "--batch-size", "32",
            "--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--val-every", str(EVERY * 4),
            "--val-size", "64", "--warmup", "10", "--threads", "1"]


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """One training run left alone: its output directory and console."""
    tmp = tmp_path_factory.mktemp("undisturbed")
    out = tmp / "run"
    proc = subprocess.run(_train_cmd(tmp, out), cwd=ROOT, env=_env(tmp), capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


@pytest.mark.slow
def test_training_console_is_short_and_repeats_nothing(undisturbed):
    _, console = undisturbed
    lines = _console_lines(console)
    assert len(lines) <= 20, "\n".join(lines)
    # pids differ between otherwise equal lines: compare without them
    counts = collections.Counter(re.sub(r"pid=\d+", "pid", line) for line in lines)
    repeated = {line: n for line, n in counts.items() if n > 1}
    assert not repeated, repeated
    assert not [line for line in lines if "WARNING" in line or "Failed to query" in line], lines
    assert any(line.startswith("[ray] local Ray on 127.0.0.1:") for line in lines), lines


def _registered_checkpoints(out: Path) -> list[str]:
    """Checkpoints Ray Train has registered for the run (what a restarted worker group resumes from)."""
    names: list[str] = []
    for snap in (out / "ray").glob("run-*/checkpoint_manager_snapshot.json"):
        try:
            names += [r["checkpoint_dir_name"] for r in json.loads(snap.read_text())["checkpoint_results"]]
        except (OSError, ValueError, KeyError):
            continue  # being written
    return names


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_worker_restarts_and_resumes_from_the_checkpoint(tmp_path, undisturbed):
    import psutil

    from calm.checkpoint import read_safetensors

    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(tmp_path, out), cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while f"step_{EVERY:07d}" not in _registered_checkpoints(out):
            assert proc.poll() is None, "the run ended before its first checkpoint: " + proc.stdout.read()[-3000:]
            assert time.time() < deadline, "no checkpoint registered within 300 s"
            time.sleep(0.05)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "RayTrainWorker" in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in workers]
        workers[-1].kill()  # SIGKILL: a preempted node gives no warning either
        console, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, console[-4000:]
    resumed = re.search(r"resuming at step (\d+) of (\d+) from this run's newest checkpoint", console)
    assert resumed, "no resume line in the console:\n" + console[-4000:]
    step = int(resumed.group(1))
    assert step >= EVERY and step % EVERY == 0 and step < STEPS, step
    base, _ = undisturbed
    state = json.loads((out / "train_state.json").read_text())
    base_state = json.loads((base / "train_state.json").read_text())
    assert state["step"] == base_state["step"] == STEPS
    assert json.loads((out / "config.json").read_text()) == json.loads((base / "config.json").read_text())
    assert state["model_config"] == base_state["model_config"]
    assert [h["step"] for h in state["history"]] == [h["step"] for h in base_state["history"]]
    # data order and noise are functions of (seed, step, rank): the resumed run retraces the undisturbed one
    weights, base_weights = read_safetensors(out / "model.safetensors"), read_safetensors(base / "model.safetensors")
    assert weights.keys() == base_weights.keys()
    for name, value in weights.items():
        assert (value - base_weights[name]).abs().max() < 1e-4, name
