"""PettingZoo environments: API and seed contracts, game drawing, routing, rewards and bad input."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pettingzoo.test import api_test, parallel_api_test, parallel_seed_test

import environments
from environments import AWGN, Chain, Erasure, Quantize, RayleighBlockFading
from environments.ofdm import OFDM
from environments.referential import draw_round, token_overlap, unique_rows

N, L, V = 64, 8, 100  # passages, tokens per passage, vocabulary


@pytest.fixture(scope="module")
def passages() -> np.ndarray:
    """Distinct random passages (N, L)."""
    ids = np.random.default_rng(0).integers(0, V, size=(N, L))
    assert np.unique(ids, axis=0).shape[0] == N
    return ids


# every variant with a noisy channel and B > 1; the same list feeds the contract checkers
VARIANTS = {
    "referential": ("referential_v0", dict(channel_uses=L, batch_size=3, channel=AWGN(0.5))),
    "referential_hard": (
        "referential_v0",
        dict(channel_uses=L, batch_size=3, num_candidates=5, distractors="hard", channel=Erasure(0.3)),
    ),
    "reconstruction": ("reconstruction_v0", dict(channel_uses=L, batch_size=3, channel=AWGN(0.2))),
    "broadcast": (
        "broadcast_v0",
        dict(channel_uses=L, batch_size=3, channels=[AWGN(0.1), AWGN(1.0), Erasure(0.5)]),
    ),
    "broadcast_reconstruct": (
        "broadcast_v0",
        dict(channel_uses=L, batch_size=2, channels=[AWGN(0.1), AWGN(0.3)], task="reconstruct"),
    ),
    "relay_forward": ("relay_v0", dict(channel_uses=L, batch_size=3, hops=3, channel=AWGN(0.3))),
    "relay_reencode": (
        "relay_v0",
        dict(
            channel_uses=L,
            batch_size=3,
            hops=3,
            mode="reencode",
            channel=[AWGN(0.1), Quantize(3, 2.0), AWGN(0.2)],
        ),
    ),
    # the same variants over Rayleigh block fading (the listener observes the gain)
    "referential_fading": (
        "referential_v0",
        dict(channel_uses=L, batch_size=3, channel=RayleighBlockFading(0.5, block_length=3)),
    ),
    "reconstruction_fading": (
        "reconstruction_v0",
        dict(channel_uses=L, batch_size=3, channel=RayleighBlockFading(0.2)),
    ),
    "broadcast_fading": (
        "broadcast_v0",
        dict(channel_uses=L, batch_size=3, channels=[RayleighBlockFading(0.1, block_length=2), AWGN(0.3)]),
    ),
    "relay_forward_fading": (
        "relay_v0",
        dict(channel_uses=L, batch_size=3, hops=2, channel=RayleighBlockFading(0.3, block_length=4)),
    ),
    "relay_reencode_fading": (
        "relay_v0",
        dict(
            channel_uses=L,
            batch_size=3,
            hops=3,
            mode="reencode",
            task="reconstruct",
            channel=[
                RayleighBlockFading(0.1),
                Chain([RayleighBlockFading(0.2, block_length=2), AWGN(0.1)]),
                AWGN(0.2),
            ],
        ),
    ),
    # OFDM over 3GPP TDL (Sionna) in every environment: LS and perfect CSI, moving and static
    "referential_ofdm": ("referential_v0", dict(channel_uses=L, batch_size=3, num_candidates=4,
                                                channel=OFDM(0.3, model="C", csi="ls", speed=10.0))),
    "reconstruction_ofdm": ("reconstruction_v0", dict(channel_uses=L, batch_size=3, channel=OFDM(0.2, csi="perfect"))),
    "broadcast_ofdm": ("broadcast_v0", dict(channel_uses=L, batch_size=3,
                                            channels=[OFDM(0.1, csi="ls"), OFDM(0.3, model="C", csi="perfect")])),
    "relay_forward_ofdm": ("relay_v0", dict(channel_uses=L, batch_size=3, hops=2, channel=OFDM(0.3, csi="ls"))),
    "relay_reencode_ofdm": ("relay_v0", dict(channel_uses=L, batch_size=3, hops=2, mode="reencode", task="reconstruct",
                                             channel=[OFDM(0.1, csi="ls", speed=30.0), OFDM(0.2, model="C")])),
}


def build(name: str, kwargs: dict, passages: np.ndarray):
    return environments.make(name, passages=passages, **kwargs)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pettingzoo_parallel_api_and_seed(variant: str, passages: np.ndarray) -> None:
    name, kwargs = VARIANTS[variant]
    with warnings.catch_warnings():
        # the checkers' soft breaches are warnings: make them failures
        warnings.simplefilter("error")
        parallel_api_test(build(name, kwargs, passages), num_cycles=20)
        parallel_seed_test(functools.partial(build, name, kwargs, passages))


# the AEC checker's style hints (unbounded Box, dict observations) are warnings, not breaches
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "variant", ["referential", "reconstruction", "relay_reencode", "broadcast", "referential_fading"]
)
def test_aec_conversion_passes_api_test(variant: str, passages: np.ndarray) -> None:
    name, kwargs = VARIANTS[variant]
    module = environments.ENVIRONMENTS[name]
    api_test(module.env(passages, **kwargs), num_cycles=20)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_observations_lie_in_their_spaces_every_step(variant: str, passages: np.ndarray) -> None:
    name, kwargs = VARIANTS[variant]
    env = build(name, kwargs, passages)
    obs, _ = env.reset(seed=3)
    for agent in env.possible_agents:
        env.action_space(agent).seed(1)
    steps = 0
    while env.agents:
        for agent, o in obs.items():
            assert env.observation_space(agent).contains(o), (agent, steps)
        actions = {agent: env.action_space(agent).sample() for agent in env.agents}
        obs, rewards, terms, truncs, infos = env.step(actions)
        steps += 1
        assert set(rewards) == set(terms) == set(infos) == set(env.possible_agents)
        assert all(0.0 <= r <= 1.0 for r in rewards.values())
    expected = 2 + (kwargs.get("hops", 1) - 1 if kwargs.get("mode") == "reencode" else 0)
    assert steps == expected
    assert all(terms.values()) and not any(truncs.values())


def test_each_agent_owns_its_spaces(passages: np.ndarray) -> None:
    name, kwargs = VARIANTS["relay_reencode"]
    env = build(name, kwargs, passages)
    boxes = [env.action_space(a) for a in ["speaker", "relay_0", "relay_1"]]
    assert len({id(b) for b in boxes}) == 3
    # seeding one agent's space leaves the others' streams alone
    boxes[0].seed(1)
    boxes[1].seed(1)
    first = boxes[0].sample()
    boxes[2].seed(2)
    np.testing.assert_array_equal(boxes[1].sample(), first)


# ---------------------------------------------------------------- determinism


def play_referential(env, seed: int) -> tuple[dict, dict]:
    """One round with the identity speaker and the nearest-candidate listener."""
    obs, _ = env.reset(seed=seed)
    sent = obs["speaker"].astype(np.float32)
    obs, *_ = env.step({"speaker": sent})
    y = obs["listener"]["received"]
    candidates = obs["listener"]["candidates"].astype(np.float32)  # (B, C, L)
    choice = np.argmin(((candidates - y[:, None, :]) ** 2).sum(-1), axis=1)
    obs, rewards, _, _, infos = env.step({"listener": choice})
    return rewards, infos["speaker"]


def test_same_seed_same_trajectory_including_noise(passages: np.ndarray) -> None:
    make = functools.partial(
        environments.make, "referential_v0", passages=passages, channel_uses=L, batch_size=16
    )
    a, b = make(channel=AWGN(2.0)), make(channel=AWGN(2.0))
    ra, ia = play_referential(a, seed=11)
    rb, ib = play_referential(b, seed=11)
    assert ra == rb
    for key in ["received", "candidate_passages", "target_index", "choice"]:
        np.testing.assert_array_equal(ia[key], ib[key])
    # the noise is really there, and a new seed draws new games and new noise
    assert ia["measured_noise_power"] == pytest.approx(4.0, rel=0.3)
    _, ic = play_referential(a, seed=12)
    assert not np.array_equal(ia["candidate_passages"], ic["candidate_passages"])
    # reset(seed) again on a used env replays the round
    _, ia2 = play_referential(a, seed=11)
    np.testing.assert_array_equal(ia["received"], ia2["received"])


def test_same_seed_same_games_and_noise_across_channels(passages: np.ndarray) -> None:
    # common random numbers: the games do not depend on the channel, and AWGN noise only scales
    make = functools.partial(
        environments.make, "referential_v0", passages=passages, channel_uses=L, batch_size=16
    )
    _, i1 = play_referential(make(channel=AWGN(0.5)), seed=5)
    _, i2 = play_referential(make(channel=AWGN(1.5)), seed=5)
    np.testing.assert_array_equal(i1["candidate_passages"], i2["candidate_passages"])
    np.testing.assert_allclose(
        (i1["received"] - i1["sent"]) / 0.5, (i2["received"] - i2["sent"]) / 1.5, atol=1e-4
    )


def test_seedless_reset_continues_the_stream(passages: np.ndarray) -> None:
    env = environments.make("referential_v0", passages=passages, channel_uses=L, batch_size=8)
    env.reset(seed=1)
    first = env.round.candidates.copy()
    env.reset()
    assert not np.array_equal(first, env.round.candidates)
    env.reset(seed=1)
    np.testing.assert_array_equal(first, env.round.candidates)


# ---------------------------------------------------------------- rewards


@pytest.mark.parametrize("distractors", ["uniform", "hard"])
def test_identity_protocol_noiseless_wins_every_game(passages: np.ndarray, distractors: str) -> None:
    env = environments.make(
        "referential_v0",
        passages=passages,
        channel_uses=L,
        batch_size=64,
        num_candidates=8,
        distractors=distractors,
    )
    rewards, info = play_referential(env, seed=0)
    assert rewards == {"speaker": 1.0, "listener": 1.0}
    np.testing.assert_array_equal(info["reward_per_game"], np.ones(64, dtype=np.float32))
    np.testing.assert_array_equal(info["choice"], info["target_index"])
    assert info["noise_power"] == 0.0 and info["measured_noise_power"] == 0.0


def test_random_listener_wins_one_in_c(passages: np.ndarray) -> None:
    B, C = 4000, 4
    env = environments.make(
        "referential_v0", passages=passages, channel_uses=L, batch_size=B, num_candidates=C
    )
    env.reset(seed=0)
    env.step({"speaker": np.zeros((B, L), dtype=np.float32)})
    _, rewards, _, _, _ = env.step({"listener": np.random.default_rng(0).integers(0, C, B)})
    assert abs(rewards["listener"] - 1 / C) < 5 * np.sqrt(0.25 * 0.75 / B)


def test_reconstruction_reward_is_token_accuracy(passages: np.ndarray) -> None:
    B = 32
    env = environments.make("reconstruction_v0", passages=passages, channel_uses=L, batch_size=B)
    obs, _ = env.reset(seed=4)
    assert set(obs["listener"]) == {"received", "gain"}
    target = obs["speaker"]
    obs, *_ = env.step({"speaker": target.astype(np.float32)})
    answer = np.rint(obs["listener"]["received"]).astype(np.int64)
    answer[:, :2] = (answer[:, :2] + 1) % V  # two of the L tokens wrong in every game
    _, rewards, _, _, infos = env.step({"listener": answer})
    assert rewards["listener"] == pytest.approx(1 - 2 / L)
    np.testing.assert_allclose(infos["listener"]["token_accuracy"], 1 - 2 / L)
    assert not infos["listener"]["exact"].any()


def test_broadcast_listeners_have_their_own_channels(passages: np.ndarray) -> None:
    B, n = 256, 64
    env = environments.make(
        "broadcast_v0",
        passages=passages,
        channel_uses=n,
        batch_size=B,
        channels=[AWGN(0.0), AWGN(1.0), AWGN(1.0)],
    )
    obs, _ = env.reset(seed=2)
    sent = np.random.default_rng(0).standard_normal((B, n), dtype=np.float32)
    obs, *_ = env.step({"speaker": sent})
    np.testing.assert_array_equal(obs["listener_0"]["received"], sent)
    noise1 = obs["listener_1"]["received"] - sent
    noise2 = obs["listener_2"]["received"] - sent
    assert noise1.var() == pytest.approx(1.0, rel=5 * np.sqrt(2 / noise1.size))
    # independent noise per listener: |corr| within 5 standard errors of 0
    assert abs(np.corrcoef(noise1.ravel(), noise2.ravel())[0, 1]) < 5 / np.sqrt(noise1.size)
    np.testing.assert_array_equal(obs["listener_0"]["candidates"], obs["listener_1"]["candidates"])
    right = env.round.answer
    wrong = (right + 1) % env.num_candidates
    _, rewards, _, _, infos = env.step({"listener_0": right, "listener_1": wrong, "listener_2": right})
    assert rewards["listener_0"] == 1.0 and rewards["listener_1"] == 0.0
    assert rewards["speaker"] == pytest.approx(2 / 3)
    assert set(infos["speaker"]["listeners"]) == {"listener_0", "listener_1", "listener_2"}
    assert infos["listener_1"]["noise_power"] == 1.0


def test_relay_forward_keeps_unit_power_per_hop(passages: np.ndarray) -> None:
    B, n, H, sigma = 512, 64, 4, 0.5
    env = environments.make(
        "relay_v0", passages=passages, channel_uses=n, batch_size=B, hops=H, channel=AWGN(sigma)
    )
    assert env.possible_agents == ["speaker", "listener"]
    env.reset(seed=0)
    x = np.random.default_rng(0).standard_normal((B, n), dtype=np.float32)
    env.step({"speaker": x})
    _, _, _, _, infos = env.step({"listener": np.zeros(B, dtype=np.int64)})
    info = infos["listener"]
    assert len(info["hop_sent"]) == len(info["hop_received"]) == H
    np.testing.assert_array_equal(info["hop_sent"][0], x)
    for h in range(1, H):
        # fixed gain 1 / sqrt(1 + sigma^2): unit expected power into every hop
        np.testing.assert_allclose(
            info["hop_sent"][h], info["hop_received"][h - 1] / np.sqrt(1 + sigma**2), rtol=1e-5
        )
        assert np.mean(info["hop_sent"][h] ** 2) == pytest.approx(1.0, rel=0.03)
    np.testing.assert_array_equal(info["received"], info["hop_received"][-1])


def test_relay_reencode_routes_relay_symbols(passages: np.ndarray) -> None:
    B = 16
    env = environments.make(
        "relay_v0",
        passages=passages,
        channel_uses=L,
        batch_size=B,
        hops=3,
        mode="reencode",
        channel=AWGN(0.0),
    )
    assert env.possible_agents == ["speaker", "relay_0", "relay_1", "listener"]
    obs, _ = env.reset(seed=1)
    target = obs["speaker"].astype(np.float32)
    obs, *_ = env.step({"speaker": target})
    np.testing.assert_array_equal(obs["relay_0"]["received"], target)
    assert not obs["relay_1"]["received"].any() and not obs["listener"]["received"].any()
    # relay 0 sends its own symbols: they are what relay 1 receives
    relay0 = np.full((B, L), 3.0, dtype=np.float32)
    obs, *_ = env.step({"relay_0": relay0})
    np.testing.assert_array_equal(obs["relay_1"]["received"], relay0)
    # relay 1 re-encodes the speaker's message; the listener decodes it
    obs, *_ = env.step({"relay_1": target})
    y = obs["listener"]["received"]
    candidates = obs["listener"]["candidates"].astype(np.float32)
    choice = np.argmin(((candidates - y[:, None, :]) ** 2).sum(-1), axis=1)
    _, rewards, terms, _, infos = env.step({"listener": choice})
    assert rewards == dict.fromkeys(env.possible_agents, 1.0)
    assert all(terms.values()) and env.agents == []
    np.testing.assert_array_equal(infos["relay_0"]["hop_sent"][1], relay0)


# ---------------------------------------------------------------- channel state (gain)


def test_listener_observes_the_fading_gain(passages: np.ndarray) -> None:
    B, block = 32, 3
    env = environments.make(
        "referential_v0",
        passages=passages,
        channel_uses=L,
        batch_size=B,
        channel=RayleighBlockFading(0.0, block_length=block),
    )
    obs, _ = env.reset(seed=3)
    assert env.observation_space("listener")["gain"].contains(obs["listener"]["gain"])
    assert not obs["listener"]["gain"].any()  # zeros until the speaker has acted, like received
    sent = np.random.default_rng(0).standard_normal((B, L), dtype=np.float32)
    obs, *_ = env.step({"speaker": sent})
    gain = obs["listener"]["gain"]
    assert gain.shape == (B, L) and gain.dtype == np.float32 and (gain > 0).all()
    # sigma = 0: received = h * sent exactly, so the observed gain is the channel's h
    np.testing.assert_array_equal(obs["listener"]["received"], gain * sent)
    for start in range(0, L, block):  # one gain per block of 3 symbols (the last block has 2)
        blk = gain[:, start : start + block]
        np.testing.assert_array_equal(blk, np.repeat(blk[:, :1], blk.shape[1], axis=1))
    assert abs(np.mean(gain.astype(np.float64) ** 2) - 1) < 0.5  # E[h^2] = 1, 96 gains
    _, _, _, _, infos = env.step({"listener": np.zeros(B, dtype=np.int64)})
    np.testing.assert_array_equal(infos["listener"]["gain"], gain)
    np.testing.assert_array_equal(infos["speaker"]["gain"], gain)


def test_listener_gain_matches_the_channel_draw(passages: np.ndarray) -> None:
    # with noise: the same seed gives the same gains, and received - gain * sent is the noise
    B, sigma = 64, 0.3
    make = functools.partial(
        environments.make,
        "referential_v0",
        passages=passages,
        channel_uses=L,
        batch_size=B,
        channel=RayleighBlockFading(sigma, block_length=4),
    )
    sent = np.random.default_rng(1).standard_normal((B, L), dtype=np.float32)
    gains = []
    for env in [make(), make()]:
        env.reset(seed=8)
        obs, *_ = env.step({"speaker": sent})
        gains.append(obs["listener"]["gain"])
        noise = obs["listener"]["received"] - gains[-1] * sent
        assert noise.var() == pytest.approx(sigma**2, rel=0.2)
    np.testing.assert_array_equal(gains[0], gains[1])


@pytest.mark.parametrize("name", ["referential_v0", "reconstruction_v0"])
def test_gain_is_ones_without_fading(passages: np.ndarray, name: str) -> None:
    env = environments.make(name, passages=passages, channel_uses=L, batch_size=4, channel=AWGN(0.5))
    obs, _ = env.reset(seed=0)
    assert set(obs["listener"]) >= {"received", "gain"}
    obs, *_ = env.step({"speaker": np.ones((4, L), dtype=np.float32)})
    np.testing.assert_array_equal(obs["listener"]["gain"], np.ones((4, L), dtype=np.float32))


def test_forward_relay_gain_is_the_product_of_hop_gains(passages: np.ndarray) -> None:
    B = 16
    env = environments.make(
        "relay_v0", passages=passages, channel_uses=L, batch_size=B, hops=2, channel=RayleighBlockFading(0.0)
    )
    env.reset(seed=5)
    x = np.random.default_rng(2).uniform(0.5, 1.5, (B, L)).astype(np.float32)
    obs, *_ = env.step({"speaker": x})
    gain = obs["listener"]["gain"]
    _, _, _, _, infos = env.step({"listener": np.zeros(B, dtype=np.int64)})
    info = infos["listener"]
    h0 = info["hop_received"][0] / info["hop_sent"][0]
    h1 = info["hop_received"][1] / info["hop_sent"][1]
    np.testing.assert_allclose(gain, h0 * h1, rtol=1e-6)
    # the fixed forward gain is not in the observed gain
    forward = env.forward_gains["listener"][0]
    np.testing.assert_allclose(obs["listener"]["received"], forward * gain * x, rtol=1e-5)


def test_reencode_relays_observe_their_own_hop_gain(passages: np.ndarray) -> None:
    B = 8
    env = environments.make(
        "relay_v0",
        passages=passages,
        channel_uses=L,
        batch_size=B,
        hops=2,
        mode="reencode",
        channel=[RayleighBlockFading(0.0), RayleighBlockFading(0.0)],
    )
    env.reset(seed=6)
    x = np.ones((B, L), dtype=np.float32)
    obs, *_ = env.step({"speaker": x})
    np.testing.assert_array_equal(obs["relay_0"]["gain"], obs["relay_0"]["received"])
    assert not obs["listener"]["gain"].any()
    relay = np.full((B, L), 2.0, dtype=np.float32)
    obs, *_ = env.step({"relay_0": relay})
    # the listener's gain is the last hop's only: it relates the relay's symbols to what it receives
    np.testing.assert_array_equal(obs["listener"]["received"], obs["listener"]["gain"] * relay)


def test_broadcast_listeners_observe_their_own_gains(passages: np.ndarray) -> None:
    B = 8
    env = environments.make(
        "broadcast_v0",
        passages=passages,
        channel_uses=L,
        batch_size=B,
        channels=[RayleighBlockFading(0.0), AWGN(0.1), RayleighBlockFading(0.0)],
    )
    env.reset(seed=7)
    x = np.ones((B, L), dtype=np.float32)
    obs, *_ = env.step({"speaker": x})
    np.testing.assert_array_equal(obs["listener_0"]["gain"], obs["listener_0"]["received"])
    np.testing.assert_array_equal(obs["listener_1"]["gain"], np.ones((B, L), dtype=np.float32))
    assert not np.array_equal(obs["listener_0"]["gain"], obs["listener_2"]["gain"])


def test_coherent_ml_listener_wins_over_fading(passages: np.ndarray) -> None:
    # a listener scoring candidates with the channel's likelihood and the observed gain
    B, n = 400, 32
    channel = RayleighBlockFading(0.5, block_length=4)
    env = environments.make(
        "referential_v0", passages=passages, channel_uses=n, batch_size=B, num_candidates=8, channel=channel
    )
    codebook = np.random.default_rng(0).choice([-1.0, 1.0], size=(N, n)).astype(np.float32)  # +-1 per passage
    obs, _ = env.reset(seed=1)
    obs, *_ = env.step({"speaker": codebook[env.round.target]})
    symbols = codebook[env.round.candidates]  # (B, C, n)
    y, gain = obs["listener"]["received"], obs["listener"]["gain"]
    scores = channel.log_likelihood(y[:, None, :], symbols, gain[:, None, :]).sum(-1)  # (B, C)
    _, rewards, _, _, _ = env.step({"listener": scores.argmax(1)})
    assert rewards["listener"] > 0.95


# ---------------------------------------------------------------- drawing games


def test_round_candidates_are_distinct_and_hold_the_target(passages: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    B, C = 500, 6
    for distractors in ["uniform", "hard"]:
        r = draw_round(rng, passages, B, C, distractors=distractors, pool_size=20)
        assert r.candidates.shape == (B, C)
        assert np.all(np.sort(r.candidates, axis=1)[:, 1:] != np.sort(r.candidates, axis=1)[:, :-1])
        np.testing.assert_array_equal(r.candidates[np.arange(B), r.answer], r.target)
    # the target's position is uniform over the C slots
    counts = np.bincount(r.answer, minlength=C)
    assert counts.min() > B / C - 5 * np.sqrt(B / C)


def test_uniform_distractors_cover_all_passages(passages: np.ndarray) -> None:
    r = draw_round(np.random.default_rng(1), passages, 2000, 4)
    distractor = r.candidates[r.candidates != r.target[:, None]]
    counts = np.bincount(distractor, minlength=N)
    expected = distractor.size / N
    assert counts.min() > expected - 6 * np.sqrt(expected) and counts.max() < expected + 6 * np.sqrt(expected)


def test_token_overlap_counts_distinct_shared_ids() -> None:
    target = np.array([[1, 2, 3, 3]])
    pool = np.array([[[3, 3, 3, 3], [1, 2, 3, 9], [7, 8, 9, 9], [2, 1, 5, 5]]])
    np.testing.assert_array_equal(token_overlap(target, pool), [[1, 3, 0, 2]])


def test_token_overlap_matches_sets_with_a_large_vocabulary() -> None:
    # ids up to 2**23 make the membership table run in chunks of 2 games
    rng = np.random.default_rng(4)
    target = rng.integers(0, 2**23, size=(5, 6))
    pool = np.concatenate([rng.integers(0, 2**23, size=(5, 3, 6)), target[:, None, ::-1]], axis=1)
    pool[:, 0, :3] = target[:, :3]
    expected = [[len(set(t) & set(p)) for p in ps] for t, ps in zip(target, pool)]
    np.testing.assert_array_equal(token_overlap(target, pool), expected)
    assert token_overlap(target, pool)[:, -1].tolist() == [len(set(t)) for t in target]


def test_unique_rows_matches_numpy() -> None:
    ids = np.random.default_rng(5).integers(0, 3, size=(3000, 4))  # 81 distinct rows, many repeats
    _, first = np.unique(ids, axis=0, return_index=True)
    np.testing.assert_array_equal(unique_rows(ids), np.sort(first))


def test_hard_distractors_are_the_best_of_the_pool(passages: np.ndarray) -> None:
    B, C, P = 200, 4, 32
    hard = draw_round(np.random.default_rng(2), passages, B, C, distractors="hard", pool_size=P)
    uniform = draw_round(np.random.default_rng(2), passages, B, C)

    def shared(t: int, c: int) -> int:
        return len(set(passages[t]) & set(passages[c]))

    def mean_overlap(r) -> float:
        return float(np.mean([shared(t, c) for t, row in zip(r.target, r.candidates) for c in row if c != t]))

    assert mean_overlap(hard) > mean_overlap(uniform) + 0.5
    # with the pool = every other passage, hard distractors are the C-1 best overall
    everything = draw_round(np.random.default_rng(3), passages, 50, C, distractors="hard", pool_size=N - 1)
    for t, row in zip(everything.target, everything.candidates):
        best = sorted((shared(t, c) for c in range(N) if c != t), reverse=True)[: C - 1]
        assert sorted((shared(t, c) for c in row if c != t), reverse=True) == best


def test_duplicate_passages_are_removed(passages: np.ndarray) -> None:
    doubled = np.concatenate([passages[:5], passages[:5], passages[5:10]])
    env = environments.make(
        "referential_v0", passages=doubled, channel_uses=L, batch_size=200, num_candidates=10
    )
    np.testing.assert_array_equal(env.passages, passages[:10])
    obs, _ = env.reset(seed=0)
    candidates = obs["listener"]["candidates"]  # (B, C, L): no game holds two equal passages
    for row in candidates:
        assert np.unique(row, axis=0).shape[0] == 10


def test_options_fix_the_targets(passages: np.ndarray) -> None:
    env = environments.make("referential_v0", passages=passages, channel_uses=L, batch_size=4)
    obs, _ = env.reset(seed=0, options={"targets": [5, 6, 7, 5]})
    np.testing.assert_array_equal(obs["speaker"], passages[[5, 6, 7, 5]])
    with pytest.raises(ValueError, match=r'options\["targets"\]'):
        env.reset(seed=0, options={"targets": [5, 6, 7, N]})


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(num_candidates=1), "num_candidates"),
        (dict(num_candidates=N + 1), "num_candidates"),
        (dict(channel_uses=0), "channel_uses"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.0), "batch_size"),
        (dict(distractors="easy"), "distractors"),
        (dict(distractors="hard", num_candidates=4, pool_size=2), "pool_size"),
        (dict(pool_size=N), "pool_size"),
        (dict(channel="awgn"), "channel"),
        (dict(vocab_size=V // 2), "vocab_size"),
        (dict(render_mode="human"), "render_mode"),
    ],
)
def test_bad_constructor_args_name_the_field(passages: np.ndarray, kwargs: dict, field: str) -> None:
    args = dict(passages=passages, channel_uses=L) | kwargs
    with pytest.raises(ValueError, match=field):
        environments.make("referential_v0", **args)


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.arange(10), "2-D"),
        (np.zeros((10, 0), dtype=np.int64), "L >= 1"),
        (np.ones((10, 4), dtype=np.float32), "integer dtype"),
        (-np.ones((10, 4), dtype=np.int64), ">= 0"),
        ([[1, 2], [3, 4]], "numpy int array"),
    ],
)
def test_bad_passages(bad, message: str) -> None:
    with pytest.raises(ValueError, match=rf"passages.*{message}"):
        environments.make("referential_v0", passages=bad, channel_uses=4, num_candidates=2)


def test_too_few_distinct_passages(passages: np.ndarray) -> None:
    same = np.repeat(passages[:1], 10, axis=0)
    with pytest.raises(
        ValueError, match="num_candidates=2 needs at least that many distinct passages, got 1"
    ):
        environments.make("referential_v0", passages=same, channel_uses=L, num_candidates=2)


def test_bad_variant_args(passages: np.ndarray) -> None:
    with pytest.raises(ValueError, match="channels"):
        environments.make("broadcast_v0", passages=passages, channel_uses=L, channels=[])
    with pytest.raises(ValueError, match="hops"):
        environments.make("relay_v0", passages=passages, channel_uses=L, hops=0)
    with pytest.raises(ValueError, match="hops=3"):
        environments.make("relay_v0", passages=passages, channel_uses=L, hops=3, channel=[AWGN(0.1)])
    with pytest.raises(ValueError, match="relay_mode"):
        environments.make("relay_v0", passages=passages, channel_uses=L, hops=2, mode="decode")
    with pytest.raises(ValueError, match="sigma"):
        environments.make("relay_v0", passages=passages, channel_uses=L, hops=2, channel=AWGN(-1.0))
    with pytest.raises(ValueError, match="single listener"):
        environments.SignallingGame(
            passages,
            routes={"a": [AWGN(0.1)] * 2, "b": [AWGN(0.1)] * 2},
            task="choose",
            batch_size=1,
            num_candidates=2,
            channel_uses=L,
            distractors="uniform",
            pool_size=None,
            relay_mode="reencode",
            vocab_size=None,
            render_mode=None,
        )
    with pytest.raises(ValueError, match="unknown environment"):
        environments.make("referential_v9", passages=passages, channel_uses=L)


@pytest.mark.parametrize(
    "action,message",
    [
        (np.zeros((3, L + 1), dtype=np.float32), r"actions\['speaker'\] must have shape \(3, 8\)"),
        (np.zeros((3 * L,), dtype=np.float32), r"actions\['speaker'\] must have shape"),
        (np.zeros((3, L), dtype=np.float64), r"actions\['speaker'\] must have dtype float32"),
        (np.zeros((3, L), dtype=np.int64), r"actions\['speaker'\] must have dtype float32"),
        (np.full((3, L), np.nan, dtype=np.float32), r"actions\['speaker'\] must be finite"),
        (np.zeros((3, L), dtype=np.float32).tolist(), r"actions\['speaker'\] must be a numpy float32 array"),
    ],
)
def test_bad_speaker_action(passages: np.ndarray, action, message: str) -> None:
    env = environments.make("referential_v0", passages=passages, channel_uses=L, batch_size=3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step({"speaker": action})


@pytest.mark.parametrize(
    "action,message",
    [
        (np.zeros((3, 1), dtype=np.int64), r"actions\['listener'\] must have shape \(3,\)"),
        (np.zeros(3, dtype=np.float32), r"actions\['listener'\] must have an integer dtype"),
        (np.zeros(3, dtype=bool), r"actions\['listener'\] must have an integer dtype"),
        (np.array([0, 1, 4]), r"actions\['listener'\] values must be in \[0, 4\)"),
        (np.array([0, -1, 2]), r"actions\['listener'\] values must be in \[0, 4\)"),
    ],
)
def test_bad_listener_action(passages: np.ndarray, action, message: str) -> None:
    env = environments.make(
        "referential_v0", passages=passages, channel_uses=L, batch_size=3, num_candidates=4
    )
    env.reset(seed=0)
    env.step({"speaker": np.zeros((3, L), dtype=np.float32)})
    with pytest.raises(ValueError, match=message):
        env.step({"listener": action})


def test_bad_step_protocol(passages: np.ndarray) -> None:
    env = environments.make("referential_v0", passages=passages, channel_uses=L, batch_size=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions\['speaker'\] is missing"):
        env.step({"listener": np.zeros(2, dtype=np.int64)})
    with pytest.raises(ValueError, match="not live agents"):
        env.step({"speaker": np.zeros((2, L), dtype=np.float32), "relay_0": None})
    env.step({"speaker": np.zeros((2, L), dtype=np.float32)})
    env.step({"listener": np.zeros(2, dtype=np.int64)})
    with pytest.raises(RuntimeError, match="reset"):
        env.step({"listener": np.zeros(2, dtype=np.int64)})


def test_reconstruction_answer_checks(passages: np.ndarray) -> None:
    env = environments.make("reconstruction_v0", passages=passages, channel_uses=4, batch_size=2)
    env.reset(seed=0)
    env.step({"speaker": np.zeros((2, 4), dtype=np.float32)})
    with pytest.raises(ValueError, match=r"actions\['listener'\] must have shape \(2, 8\)"):
        env.step({"listener": np.zeros(2, dtype=np.int64)})
    with pytest.raises(ValueError, match=rf"values must be in \[0, {V}\)"):
        env.step({"listener": np.full((2, L), V, dtype=np.int64)})


def test_chain_channel_in_env_is_seeded(passages: np.ndarray) -> None:
    channel = Chain([AWGN(0.3), Quantize(2, 1.5), Erasure(0.25)])
    make = functools.partial(
        environments.make, "referential_v0", passages=passages, channel_uses=L, batch_size=8, channel=channel
    )
    _, a = play_referential(make(), seed=9)
    _, b = play_referential(make(), seed=9)
    np.testing.assert_array_equal(a["received"], b["received"])
    assert a["noise_power"] is None


def test_docs_usage_example_runs() -> None:
    # the example in docs/environments.md is code, not prose: run it
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "docs" / "environments.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/environments.md", "exec"), {})


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 8),
    C=st.integers(2, 10),
    n=st.integers(1, 12),
    hard=st.booleans(),
    sigma=st.floats(0.0, 5.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_invariants_property(B: int, C: int, n: int, hard: bool, sigma: float, seed: int) -> None:
    ids = np.random.default_rng(seed).integers(0, 12, size=(40, 3))  # small vocab: duplicates likely
    env = environments.make(
        "referential_v0",
        passages=ids,
        channel_uses=n,
        batch_size=B,
        num_candidates=min(C, len(np.unique(ids, axis=0))),
        distractors="hard" if hard else "uniform",
        channel=AWGN(sigma),
    )
    C = env.num_candidates
    obs, _ = env.reset(seed=seed)
    for agent in env.possible_agents:
        assert env.observation_space(agent).contains(obs[agent])
    candidates = obs["listener"]["candidates"]  # (B, C, L)
    assert candidates.shape == (B, C, 3)
    for b in range(B):
        assert np.unique(candidates[b], axis=0).shape[0] == C  # distinct passages
        np.testing.assert_array_equal(candidates[b, env.round.answer[b]], obs["speaker"][b])
    x = np.random.default_rng(seed).standard_normal((B, n), dtype=np.float32)
    obs, *_ = env.step({"speaker": x})
    assert obs["listener"]["received"].shape == (B, n)
    if sigma == 0:
        np.testing.assert_array_equal(obs["listener"]["received"], x)
    _, rewards, terms, _, infos = env.step({"listener": env.round.answer})
    assert rewards["listener"] == 1.0 and all(terms.values())
