"""Agents: GPU share arithmetic, the agent without Ray, fake-GPU placement, restart after a kill, shipped files
freed with their agent."""

from __future__ import annotations

import collections
import time

import numpy as np
import pytest

from agents import (
    AgentConfig,
    CALMAgentCore,
    ListenerPolicy,
    SpeakerPolicy,
    held_agents,
    kill_agent,
    make_agent,
    release_agent,
    resolve_num_gpus,
)
from experiments.common.models import ensure_checkpoint
from experiments.referential_game import Config

pytestmark = pytest.mark.ray

# a micro autoencoder: trained for a few steps, enough to exercise every code path in seconds
MICRO = dict(ae_hidden_size=32, ae_intermediate_size=64, ae_latent_dim=16, ae_steps=20, ae_batch_size=32,
             ae_time_limit=0.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # one cache for every test module of the session: the second ensure_checkpoint is a cache hit
    runs = tmp_path_factory.getbasetemp() / "latentcomm-runs"
    return ensure_checkpoint(Config(runs_dir=str(runs), **MICRO))


@pytest.fixture(scope="module")
def protocol_dirs(checkpoint, tmp_path_factory):
    from calm.checkpoint import load_pretrained
    from calm.data import load_token_ids, make_passages
    from protocols import (
        UncodedTokenProtocol,
        UncodedTokenProtocolConfig,
        VectorProtocol,
        VectorProtocolConfig,
    )

    model, tok = load_pretrained(checkpoint)
    train = make_passages(load_token_ids("kjv+shakespeare", tok, "train", progress=False), 8, max_passages=256)
    root = tmp_path_factory.mktemp("protocols")
    UncodedTokenProtocol(UncodedTokenProtocolConfig(vocab_size=len(tok))).fit(train).save(root / "token")
    VectorProtocol(model, VectorProtocolConfig(budget=16)).fit(train).save(root / "vector")
    test = make_passages(load_token_ids("kjv+shakespeare", tok, "test", progress=False), 8, max_passages=128)
    return {"token": str(root / "token"), "vector": str(root / "vector")}, test


def test_resolve_num_gpus_known_values():
    assert resolve_num_gpus("auto", 4, 2.0) == 0.5  # four agents pack two per GPU
    assert resolve_num_gpus("auto", 3, 2.0) == 0.5
    assert resolve_num_gpus("auto", 2, 2.0) == 1.0
    assert resolve_num_gpus("auto", 8, 1.0) == 0.125
    assert resolve_num_gpus("auto", 2, 0.0) == 0.0  # no GPUs: CPU agents
    assert resolve_num_gpus(0.25, 9, 0.0) == 0.25  # an explicit number is kept
    with pytest.raises(ValueError, match="num_gpus"):
        resolve_num_gpus(-1, 1, 0.0)
    with pytest.raises(ValueError, match="num_gpus"):
        AgentConfig(checkpoint="x", num_gpus=-0.5)
    with pytest.raises(ValueError, match="max_restarts"):
        AgentConfig(checkpoint="x", max_restarts=1.5)


def test_policies_play_noiseless_token_game_perfectly(checkpoint, protocol_dirs):
    """Without Ray: the token protocol (every token sent) over a noiseless channel always wins."""
    import environments

    dirs, passages = protocol_dirs
    agent = CALMAgentCore(str(checkpoint), dirs)
    env = environments.make("referential_v0", passages=passages, channel_uses=agent.channel_uses("token", 8),
                            batch_size=32, num_candidates=4, vocab_size=agent.model.config.vocab_size)
    obs, _ = env.reset(seed=3)
    target = obs["speaker"]  # (B, L)
    symbols = SpeakerPolicy(agent, "token").act(target)
    assert symbols.dtype == np.float32
    assert abs(float(np.mean(symbols**2)) - 1.0) < 1e-6  # BPSK: unit power exactly
    obs, *_ = env.step({"speaker": symbols})
    for receiver in ("soft", "hard"):
        choice, decoded = ListenerPolicy(agent, "token", receiver).act(obs["listener"])
        assert choice.shape == (32,)
        np.testing.assert_array_equal(decoded, target)  # noiseless BPSK decodes every token
    _, rewards, *_ = env.step({"listener": choice})
    assert rewards["listener"] == 1.0
    with pytest.raises(ValueError, match="protocol must be one of"):
        agent.encode("quantized", passages[:2])
    with pytest.raises(ValueError, match="receiver must be one of"):
        ListenerPolicy(agent, "token", "psychic")


@pytest.fixture(scope="module")
def fake_gpu_ray(ray_session):
    """The test process's shared Ray: it has two fake GPUs (conftest.SHARED_RAY)."""
    assert ray_session.cluster_resources().get("GPU") == 2
    return ray_session


def test_fake_gpus_four_agents_pack_two_per_gpu_and_fall_back_to_cpu(fake_gpu_ray, checkpoint, protocol_dirs):
    ray = fake_gpu_ray
    dirs, passages = protocol_dirs
    cfg = AgentConfig(checkpoint=str(checkpoint), protocols={"token": dirs["token"]}, num_gpus="auto", num_cpus=0.25)
    agents = [make_agent(cfg, name=f"placement-{i}", num_agents=4) for i in range(4)]
    try:
        placements = ray.get([a.placement.remote() for a in agents])
        per_gpu = collections.Counter(g for p in placements for g in p["gpu_ids"])
        assert sorted(per_gpu.values()) == [2, 2], placements  # two agents on each of the two GPU ids
        assert all(len(p["gpu_ids"]) == 1 for p in placements)
        import torch

        if torch.cuda.is_available():  # a machine with a real GPU: the models go to CUDA
            assert all(p["device"] == "cuda" for p in placements)
        else:
            assert all(p["device"] == "cpu" and "falling back to CPU" in p["note"] for p in placements)
        # they work: every agent encodes the same ids to the same symbols
        outs = ray.get([a.encode.remote("token", passages[:4]) for a in agents])
        assert all(np.array_equal(outs[0], o) for o in outs[1:])
    finally:
        for a in agents:
            kill_agent(a)


def test_killed_agent_restarts_and_answers_the_same(fake_gpu_ray, checkpoint, protocol_dirs, tmp_path,
                                                    wait_for_restart):
    """Also: the agent needs no path of the driver's (as on a cluster's worker node): its files travel through
    Ray, so it restarts and answers after the driver's copies are gone."""
    import shutil

    ray = fake_gpu_ray
    dirs, passages = protocol_dirs
    local_ckpt = shutil.copytree(checkpoint, tmp_path / "ckpt")
    local_dirs = {k: str(shutil.copytree(v, tmp_path / "protocols" / k)) for k, v in dirs.items()}
    cfg = AgentConfig(checkpoint=str(local_ckpt), protocols=local_dirs, num_gpus=0, num_cpus=0.25, max_restarts=2)
    agent = make_agent(cfg, name="restart-me")
    try:
        ray.get(agent.pid.remote())
        shutil.rmtree(tmp_path / "ckpt")
        shutil.rmtree(tmp_path / "protocols")
        before_pid = ray.get(agent.pid.remote())
        before = ray.get(agent.encode.remote("vector", passages[:8]))
        kill_agent(agent, no_restart=False)  # the process dies; Ray restarts it (its files stay held)
        assert "restart-me" in held_agents()
        wait_for_restart(agent, before_pid)  # ray.kill is asynchronous: wait for the restarted process
        after = ray.get(agent.encode.remote("vector", passages[:8]), timeout=120)
        np.testing.assert_array_equal(before, after)
    finally:
        kill_agent(agent)
    assert "restart-me" not in held_agents()


def test_an_ended_agent_frees_its_shipped_files(fake_gpu_ray, checkpoint, protocol_dirs):
    """The driver holds the object refs of an agent's shipped files while Ray may restart it and drops them
    when ``kill_agent`` ends it: Ray's reference table then no longer lists those objects."""
    import gc

    from agents import shipping

    ray = fake_gpu_ray
    dirs, _ = protocol_dirs
    counts = ray._private.worker.global_worker.core_worker.get_all_reference_counts  # id hex (bytes) -> counts
    cfg = AgentConfig(checkpoint=str(checkpoint), protocols=dirs, num_gpus=0, num_cpus=0.25)
    agent = make_agent(cfg, name="ship-and-free")
    try:
        ray.get(agent.pid.remote())
        assert "ship-and-free" in held_agents()
        ids = [ref.hex().encode() for ref in shipping._HELD[agent._actor_id.hex()].refs]
        assert len(ids) == 1 + len(dirs) and all(i in counts() for i in ids)  # checkpoint + each protocol
    finally:
        kill_agent(agent)
    assert "ship-and-free" not in held_agents() and not release_agent(agent)  # nothing left to release
    gc.collect()
    deadline = time.time() + 60
    while any(i in counts() for i in ids):
        assert time.time() < deadline, {i: counts().get(i) for i in ids}
        time.sleep(0.2)


def test_shipping_registry_without_ray():
    """``hold`` / ``release_agent`` by handle or by name; a new agent of a name drops the old one's files."""
    from types import SimpleNamespace

    from agents import shipping

    def handle(actor_id: str):
        return SimpleNamespace(_actor_id=SimpleNamespace(hex=lambda: actor_id))

    first, second, other = handle("a1"), handle("a2"), handle("b1")
    shipping.hold(first, "reg-a", ("ref1", "ref2"))
    shipping.hold(other, "reg-b", ("ref3",))
    assert {"reg-a", "reg-b"} <= set(held_agents())
    shipping.hold(second, "reg-a", ("ref4",))  # Ray frees a name only once its actor is dead for good
    assert held_agents().count("reg-a") == 1 and "a1" not in shipping._HELD
    assert release_agent(second) and not release_agent(first)
    assert release_agent("reg-b") and not release_agent("reg-b")
    assert not {"reg-a", "reg-b"} & set(held_agents())


def test_pack_and_unpack_a_directory(checkpoint, tmp_path):
    from agents import pack_directory, unpack_directory

    files = pack_directory(checkpoint)
    assert "model.safetensors" in files and "config.json" in files
    copy = unpack_directory(files, tmp_path / "copy")
    assert pack_directory(copy) == files
    with pytest.raises(ValueError, match="plain names"):
        unpack_directory({"../evil": b""}, tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        pack_directory(tmp_path / "missing")


def test_generate_with_a_calm_language_model(checkpoint, tmp_path):
    """An (untrained) tiny EnergyTransformer around the agent's autoencoder: seeded, repeatable text."""
    from calm.checkpoint import load_pretrained, save_pretrained
    from calm.energy_transformer import EnergyTransformer, preset

    ae, tok = load_pretrained(checkpoint)
    cfg = preset("tiny", ae.config, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                 head_intermediate_size=32, max_patches=16)
    save_pretrained(EnergyTransformer(cfg, autoencoder=ae), tmp_path / "lm", tok)
    agent = CALMAgentCore(str(checkpoint), {}, lm_checkpoint=str(tmp_path / "lm"))
    first = agent.generate(["In the beginning", "To be"], 8, seed=5)
    assert len(first) == 2 and all(isinstance(t, str) and t for t in first)
    assert agent.generate(["In the beginning", "To be"], 8, seed=5) == first
    with pytest.raises(ValueError, match="lm_checkpoint"):
        CALMAgentCore(str(checkpoint), {}).generate(["x"], 4)


def test_agent_pool_places_different_agents_and_restarts_a_dead_one(fake_gpu_ray, checkpoint, protocol_dirs,
                                                                    wait_for_restart):
    """experiments.common.trials.agent_pool: one actor per member, each with its own protocols and a GPU share (three
    agents on two fake GPUs); a member killed mid-run comes back and answers the same; all die on exit."""
    from agents import held_agents
    from experiments.common.config import SweepConfig
    from experiments.common.trials import agent_pool

    ray = fake_gpu_ray
    dirs, passages = protocol_dirs
    members = {"speaker": (checkpoint, {"vector": dirs["vector"]}), "relay": (checkpoint, {"token": dirs["token"]}),
               "listener": (checkpoint, dirs)}
    with agent_pool(SweepConfig(), members, "pool-test") as pool:
        assert set(pool) == set(members)
        placements = {p["name"]: p for p in ray.get([a.placement.remote() for a in pool.values()])}
        assert set(placements) == {"pool-test-speaker", "pool-test-relay", "pool-test-listener"}
        assert all(len(p["gpu_ids"]) == 1 for p in placements.values())  # a share of one GPU each
        with pytest.raises(ray.exceptions.RayTaskError, match="protocol must be one of"):
            ray.get(pool["relay"].encode.remote("vector", passages[:2]))
        before = ray.get(pool["listener"].encode.remote("vector", passages[:4]))
        np.testing.assert_array_equal(before, ray.get(pool["speaker"].encode.remote("vector", passages[:4])))
        pid = ray.get(pool["listener"].pid.remote())
        ray.kill(pool["listener"], no_restart=False)
        wait_for_restart(pool["listener"], pid)
        np.testing.assert_array_equal(before, ray.get(pool["listener"].encode.remote("vector", passages[:4])))
        handles = list(pool.values())
    deadline = time.monotonic() + 60
    with pytest.raises(ray.exceptions.RayActorError):
        while time.monotonic() < deadline:  # ray.kill is asynchronous: a call may still land before the kill does
            ray.get(handles[0].pid.remote(), timeout=60)
            time.sleep(0.2)
    # the pool's exit released the model files it shipped (they are not held until the driver exits)
    assert not [n for n in held_agents() if "pool-test" in str(n)]


def test_call_repeats_a_call_to_an_actor_that_is_temporarily_unavailable(monkeypatch):
    """Ray's "the task may or may not have been executed" (a node lost mid-call) is repeated, not a failed trial."""
    import ray

    from agents import policies

    failures = {"left": 2}

    def flaky_get(ref):
        if failures["left"]:
            failures["left"] -= 1
            raise ray.exceptions.ActorUnavailableError("the actor is temporarily unavailable", b"\0" * 16)
        return ref * 2

    class Handle:
        class encode:  # noqa: N801 - a stand-in for an actor method with .remote
            @staticmethod
            def remote(x):
                return x

    monkeypatch.setattr(ray, "get", flaky_get)
    monkeypatch.setattr(policies, "UNAVAILABLE_RETRIES", 3)
    assert policies.call(Handle(), "encode", 21) == 42 and failures["left"] == 0
    failures["left"] = 5
    with pytest.raises(ray.exceptions.ActorUnavailableError):
        policies.call(Handle(), "encode", 21)
