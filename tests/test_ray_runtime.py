"""calm.ray_runtime: the local Ray the project starts, and Ray Train runs through it.

- every socket the local Ray of a training run listens on is a loopback one (GCS and dashboard named explicitly);
- a training run's console: no repeated line, no Ray warning, a handful of lines besides progress bars;
- a Ray Train worker killed after the first checkpoint: the same run restarts its workers, resumes from
  that checkpoint (the log says so) and ends with the config and step count of an undisturbed run.

Training runs as ``python -m calm.train`` subprocesses: the console is what a user sees. The undisturbed run
starts its own local Ray (its console and sockets are checked); the killed one joins this process's shared Ray,
as a run joins a cluster, which saves a Ray start.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# subprocesses start Ray and run Ray Train: each its own local Ray, beside this process's shared one (not serial)
pytestmark = pytest.mark.ray

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


def _train_cmd(tmp_path: Path, out: Path) -> list[str]:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("\n\n".join(f"{i} {TEXT[i % 50:]}{TEXT[: i % 50]}" for i in range(60)))
    return [sys.executable, "-m", "calm.train", "autoencoder", "--preset", "tiny", "--corpus", f"text:{corpus}",
            "--tokenizer", "bpe:300", "--out", str(out), "--workers", "2", "--gpu", "off",
            "--hidden-size", "32", "--latent-dim", "8", "--intermediate-size", "64", "--batch-size", "32",
            "--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--val-every", str(EVERY * 4),
            "--val-size", "64", "--warmup", "10", "--threads", "1"]


def _ray_train_workers(pid: int) -> list:
    """The Ray Train worker processes among the descendants of process ``pid`` (others come and go meanwhile)."""
    import psutil

    workers = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                workers.append(proc)
        except psutil.Error:
            continue
    return workers


def _listening(pid: int) -> list[list]:
    """``[process name, ip, port]`` of every listening inet socket of process ``pid`` and all its descendants."""
    import psutil

    me = psutil.Process(pid)
    listening: list[list] = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            name, conns = proc.name(), proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        listening += [[name, c.laddr.ip, c.laddr.port] for c in conns if c.status == psutil.CONN_LISTEN]
    return listening


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """One training run left alone: its output directory, its console, and every socket that the command and its
    descendants (GCS, raylet, dashboard and its agents, the Ray Train workers) listened on while both workers ran."""
    tmp = tmp_path_factory.mktemp("undisturbed")
    out = tmp / "run"
    proc = subprocess.Popen(_train_cmd(tmp, out), cwd=ROOT, env=_env(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    streams: dict[str, list[str]] = {"out": [], "err": []}
    readers = [threading.Thread(target=lambda pipe, lines: lines.extend(pipe), args=(pipe, streams[name]),
                                daemon=True) for name, pipe in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    listening: list[list] = []
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if len(_ray_train_workers(proc.pid)) == 2:  # both workers up: every process of the Ray listens by now
                listening = _listening(proc.pid)
                break
            time.sleep(0.2)
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    for reader in readers:
        reader.join(timeout=10)
    stdout, stderr = "".join(streams["out"]), "".join(streams["err"])
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    return out, stdout + stderr, listening


def test_local_ray_listens_on_loopback_only(undisturbed):
    """The training run's local Ray (started by init_ray) listens on loopback only: every listening socket of the
    command and its descendants, taken while both Ray Train workers ran (a second Ray started only to list its
    sockets cost a Ray start)."""
    _, console, listening = undisturbed
    announced = re.search(r"\[ray\] local Ray on (\S+) \(.*\), dashboard http://([^,\s]+)", console)
    assert announced, console[-3000:]
    assert listening, "the run ended before both Ray Train workers were seen"
    gcs_host, gcs_port = announced.group(1).rsplit(":", 1)
    dash_host, dash_port = announced.group(2).rsplit(":", 1)
    assert gcs_host == "127.0.0.1" and dash_host == "127.0.0.1"
    ports = {port: ip for _, ip, port in listening}
    assert ports.get(int(gcs_port)) in LOOPBACK, listening  # the GCS listens, on loopback
    assert ports.get(int(dash_port)) in LOOPBACK, listening  # the dashboard listens, on loopback
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, names
    exposed = [entry for entry in listening if entry[1] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"


@pytest.mark.slow
def test_training_console_is_short_and_repeats_nothing(undisturbed):
    _, console, _ = undisturbed
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
def test_killed_worker_restarts_and_resumes_from_the_checkpoint(tmp_path, undisturbed, ray_session):
    """The run joins this process's shared Ray (``RAY_ADDRESS``, as under ``ray submit``; the undisturbed run started
    its own): its Ray Train workers are then processes of this test's own Ray, found among its descendants."""
    from calm.checkpoint import read_safetensors

    out = tmp_path / "run"
    env = {**_env(tmp_path), "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    started = time.time()
    proc = subprocess.Popen(_train_cmd(tmp_path, out), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while f"step_{EVERY:07d}" not in _registered_checkpoints(out):
            assert proc.poll() is None, "the run ended before its first checkpoint: " + proc.stdout.read()[-3000:]
            assert time.time() < deadline, "no checkpoint registered within 300 s"
            time.sleep(0.05)
        # the shared Ray's raylet is this process's child; workers of an earlier run in it have ended
        workers = [w for w in _ray_train_workers(os.getpid()) if w.create_time() >= started]
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
    base, _, _ = undisturbed
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
