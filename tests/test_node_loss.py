"""Losing a node mid-sweep, and the sweep's own restart hint.

- a referential sweep on a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, both nodes on
  127.0.0.1) whose worker node, which holds both agents and the running trials, is killed after the first rows:
  the sweep ends with every row, byte for byte the rows of an undisturbed run on the same cluster. With room on the
  head node Ray restarts the agents there and Tune reruns the trials that died; without it (the trials would hold
  the head's one CPU while they wait for the agents) the sweep stops the round and places every agent anew. The
  seconds the sweep lost to the node are printed (``pytest -s``) and recorded as test properties;
- a sweep with a failing trial, or stopped with Ctrl-C, says "rerun the same command" and never Tune's
  ``Tuner.restore(...)``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

MICRO = dict(ae_hidden_size=32, ae_intermediate_size=64, ae_latent_dim=16, ae_steps=20, ae_batch_size=32,
             ae_time_limit=0.0)
# a killed raylet refuses connections: 5 failed checks a second apart and the GCS declares its node dead (Ray's
# defaults take 15-30 s); the 5 s timeout keeps a slow but live raylet on a busy machine from being declared dead
HEALTH_CHECKS = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                 "health_check_timeout_ms": 5000, "health_check_failure_threshold": 5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def loopback_cluster(request, monkeypatch):
    """``(cluster, worker node, head node id)``: a head with ``request.param`` CPUs and a worker with 2, both on
    127.0.0.1, joined through ``calm.ray_runtime.init_ray`` as a sweep joins a cluster."""
    import ray
    import ray._private.utils
    from ray.cluster_utils import Cluster

    from calm.ray_runtime import init_ray
    from experiments.common.trials import NAMESPACE

    # the cluster would name itself in /tmp/ray/ray_current_cluster, where a bare ray.init() in any other process on
    # this machine (another test run) would find and join it
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": request.param, "node_ip_address": "127.0.0.1", "dashboard_host": "127.0.0.1",
        "dashboard_port": _free_port(), "_system_config": HEALTH_CHECKS})
    try:
        worker = cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        init_ray(address=cluster.address, namespace=NAMESPACE, announce=False)
        yield cluster, worker, ray.get_runtime_context().get_node_id()
    finally:
        ray.shutdown()
        cluster.shutdown()


# the undisturbed run of the first variant (its SweepResult and seconds): the blocker holds the head's CPUs in both
# variants, so the reference runs on the same worker node either way
_UNDISTURBED: dict = {}


def _rows(run_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((run_dir / "rows").glob("*.json"))}


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.serial
@pytest.mark.parametrize("loopback_cluster", [2, 1], ids=["room-on-the-head", "no-room-on-the-head"],
                         indirect=True)
def test_a_sweep_that_loses_a_node_ends_with_the_rows_of_an_undisturbed_run(loopback_cluster, tmp_path,
                                                                             tmp_path_factory, monkeypatch, capfd,
                                                                             record_property):
    import ray
    from ray._private.state import actors as actor_table  # the GCS's actor table: it keeps ended actors
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import experiments.common.sweep as sweep
    import experiments.common.trials as trials
    from experiments.referential_game import Config, main, trial_grid

    cluster, worker, head_id = loopback_cluster
    head_cpus = int(ray.cluster_resources()["CPU"]) - 2
    monkeypatch.setattr(trials, "AGENT_PLACEMENT_GRACE_S", 15.0)
    seconds: list[float] = []  # agents and trials of each run (run_with_agents), without the protocol fits
    real_run = sweep.run_with_agents

    def timed(*args, **kwargs):
        start = time.monotonic()
        try:
            return real_run(*args, **kwargs)
        finally:
            seconds.append(time.monotonic() - start)

    monkeypatch.setattr(sweep, "run_with_agents", timed)
    # 3 protocols x 2 sigmas = 6 trials of 64 games; both runs on this cluster, agents and trials on the worker:
    # a blocker holds the head's CPUs until the worker is lost
    # the runs dir the other tests of this process use: the same micro autoencoder is trained once per process
    cfg = Config(results_dir=str(tmp_path / "results"), runs_dir=str(tmp_path_factory.getbasetemp() / "latentcomm-runs"),
                 address=cluster.address, passage_length=8, channel_uses=(32,), candidates=8,
                 sigmas=(0.0, 3.0), seeds=(0,), protocols=("vector", "hash", "uncoded-tokens"),
                 receivers=("hard",), episodes=64, batch_size=64, num_passages=256, fit_passages=512, plots=False,
                 max_concurrent=2, agent_pairs=1, **MICRO)  # one pair: the worker holds it beside two trials
    total = len(trial_grid(cfg))

    @ray.remote(num_cpus=head_cpus)
    class Blocker:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    blocker = Blocker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head_id, soft=False)).remote()
    assert ray.get(blocker.node.remote()) == head_id
    if "run" not in _UNDISTURBED:  # one reference for both variants: it runs on the worker alone in each
        _UNDISTURBED["run"] = main(dataclasses.replace(cfg, run_name="undisturbed"))
    else:
        seconds.append(_UNDISTURBED["seconds"])
    undisturbed = _UNDISTURBED["run"]
    _UNDISTURBED["seconds"] = seconds[0]
    assert undisturbed.rows == total and undisturbed.failed == []

    rows_dir = Path(cfg.results_dir) / "disturbed" / "rows"
    seen: dict = {}

    def kill_the_worker_after_two_rows():
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if rows_dir.is_dir() and len(list(rows_dir.glob("*.json"))) >= 2:
                    agents = {info["Name"]: info for info in actor_table().values()
                              if info["Name"].startswith("disturbed-") and info["State"] == "ALIVE"}
                    seen["agents"] = {name: info["ActorID"] for name, info in agents.items()}
                    seen["agents_on_worker"] = sorted(name for name, info in agents.items()
                                                      if info["Address"]["NodeID"] == worker.node_id)
                    ray.kill(blocker)  # the head's CPUs are free for what the worker held
                    seen["rows_at_kill"] = len(list(rows_dir.glob("*.json")))
                    cluster.remove_node(worker, allow_graceful=False)  # SIGKILL: the node is gone, unannounced
                    return
                time.sleep(0.05)
        except Exception as exc:  # reported by the assertions below
            seen["error"] = repr(exc)

    killer = threading.Thread(target=kill_the_worker_after_two_rows, daemon=True)
    capfd.readouterr()
    killer.start()
    disturbed = main(dataclasses.replace(cfg, run_name="disturbed"))
    killer.join(timeout=60)
    out = capfd.readouterr()
    output = out.out + out.err

    assert "error" not in seen and "rows_at_kill" in seen, seen
    assert seen["agents_on_worker"] == ["disturbed-listener0", "disturbed-speaker0"], seen
    assert 2 <= seen["rows_at_kill"] < total, seen
    assert disturbed.failed == [] and disturbed.rows == total, (disturbed, seen)
    # every row, byte for byte those of the undisturbed run, and the same results.csv
    assert _rows(disturbed.run_dir) == _rows(undisturbed.run_dir)
    assert (disturbed.run_dir / "results.csv").read_bytes() == (undisturbed.run_dir / "results.csv").read_bytes()
    assert "Tuner.restore" not in output  # trials died with the node: Tune's own resume hint stays out
    placed_anew = "placing every agent anew" in output
    if head_cpus >= 2:  # room for the agents and two trials on the head: Ray restarted both agents there
        assert not placed_anew, output[-3000:]
        for name, actor_id in seen["agents"].items():
            record = actor_table(actor_id)
            assert record["NumRestarts"] == 1 and record["Address"]["NodeID"] == head_id, (name, record)
    else:  # one CPU left for agents that reserve 0.5 each and trials of 0.5: the sweep placed them anew
        assert placed_anew and "the cluster lost CPUs" in output, output[-3000:]
    lost = seconds[1] - seconds[0]
    record_property("undisturbed_s", round(seconds[0], 1))
    record_property("disturbed_s", round(seconds[1], 1))
    record_property("seconds_lost", round(lost, 1))
    with capfd.disabled():
        print(f"\n[node loss, head {head_cpus} CPU] agents and trials: undisturbed {seconds[0]:.1f} s, worker killed "
              f"after {seen['rows_at_kill']}/{total} rows: {seconds[1]:.1f} s, {lost:.1f} s lost "
              f"({'agents placed anew' if placed_anew else 'agents restarted by Ray'}); rows identical")


# ---- our own restart hint, not Tune's ------------------------------------------------------------------------------

def _specs(n: int) -> list[dict]:
    return [{"key": f"t{i}", "i": i} for i in range(n)]


def test_a_failing_trial_leaves_only_our_rerun_hint(ray_session, tmp_path, capfd):
    from experiments.common.sweep import print_outcome
    from experiments.common.trials import run_trials

    def trial(spec):  # nested: pickled by value for Tune's workers
        if spec["i"] == 1:
            raise RuntimeError("this trial always fails")
        return {"i": spec["i"]}

    (tmp_path / "rows").mkdir()
    failed = run_trials(trial, _specs(3), tmp_path, trial_cpus=0.5, max_concurrent=1, shared={})
    assert failed == ["t1"]
    assert sorted(p.name for p in (tmp_path / "rows").glob("*.json")) == ["t0.json", "t2.json"]
    print_outcome(2, 3, tmp_path, 1.0, failed)
    out = capfd.readouterr()
    output = out.out + out.err
    assert "rerun the same command" in output
    for tune_hint in ("Tuner.restore", "Resume experiment", "Trials did not complete"):
        assert tune_hint not in output, output[-3000:]


def test_a_sweep_stopped_with_ctrl_c_leaves_only_our_rerun_hint(ray_session, tmp_path, capfd):
    """A trial sends SIGINT to this process (the driver, in Tune's loop) once: Tune ends the run, the rows written
    stay, and the console names the rerun, not ``Tuner.restore``."""
    from experiments.common.trials import run_trials

    marker = tmp_path / "interrupted"

    def trial(spec, driver_pid, marker):
        if spec["i"] == 1:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL)  # once, though Tune may run the trial again
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os.kill(driver_pid, signal.SIGINT)
                # Tune stops on the driver's SIGINT within a fraction of a second but waits for the running trial to
                # return, and drops its result: each second here is a second of the test (10 s before)
                time.sleep(4)
        return {"i": spec["i"]}

    (tmp_path / "rows").mkdir()
    run_trials(trial, _specs(4), tmp_path, trial_cpus=0.5, max_concurrent=1,
               shared={"driver_pid": os.getpid(), "marker": str(marker)})
    assert marker.exists()
    rows = sorted(p.name for p in (tmp_path / "rows").glob("*.json"))
    assert "t0.json" in rows and "t1.json" not in rows, rows
    out = capfd.readouterr()
    output = out.out + out.err
    assert "[run] stopping" in output and "the same command runs the rest" in output, output[-3000:]
    for tune_hint in ("Tuner.restore", "Resume experiment", "Trials did not complete"):
        assert tune_hint not in output, output[-3000:]
