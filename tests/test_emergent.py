"""protocols.emergent_model / emergent_train: speaker-listener pairs that learn to talk through the channel.

Meanings are random Gaussian feature vectors (D = 16); pairs train on one bank of items and are evaluated on
held-out items. Small sizes, CPU, fixed seeds: each training run takes a few seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from calm.files import DamagedFileError
from protocols.emergent_eval import evaluate_pair, listen_fn, play_games
from protocols.emergent_model import EmergentConfig, Listener, Speaker, bpsk_table
from protocols.emergent_train import draw_games, load_pair, save_pair, train_pair
from protocols.influence import causal_influence, control_success, zeroed
from protocols.meaning import topographic_similarity

# D feature size, N items per bank, EPISODES evaluation games
D, N, EPISODES = 16, 256, 2000
NOISELESS = math.inf


def _bank(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N, D)).astype(np.float32)


TRAIN, HELD_OUT = _bank(0), _bank(1)


def _discrete(**overrides) -> EmergentConfig:
    # n = m * b = 4 * 2: four symbols over V = 4
    return EmergentConfig(**{**dict(feature_dim=D, kind="discrete", channel_uses=8, vocab_bits=2, message_len=4,
                                    hidden_size=128, embed_size=64), **overrides})


@pytest.fixture(scope="module")
def continuous_pair():
    """A continuous pair (n = 8) trained on 4-candidate games at 30 dB."""
    cfg = EmergentConfig(feature_dim=D, channel_uses=8, hidden_size=128, embed_size=64)
    speaker, listener, history = train_pair(cfg, TRAIN, num_candidates=4, steps=300, batch_size=128, snr_db=30.0,
                                            seed=0, lr=3e-3)
    return cfg, speaker, listener, history


# ---------------------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("mode", ["gumbel", "reinforce"])
def test_discrete_pair_solves_two_candidate_game(mode):
    cfg = _discrete()
    speaker, listener, history = train_pair(cfg, TRAIN, num_candidates=2, steps=400, batch_size=256,
                                            snr_db=NOISELESS, seed=0, mode=mode, lr=5e-3, log_every=100)
    result = evaluate_pair(speaker, listener, HELD_OUT, num_candidates=2, snr_db=NOISELESS, episodes=EPISODES,
                           seed=1)
    print(f"{mode}: held-out success {result['success']:.4f} [{result['ci_low']:.4f}, {result['ci_high']:.4f}]")
    assert history[0]["success"] < history[-1]["success"]
    assert result["success"] >= 0.95
    # the language is more than a few messages, and protocols.meaning applies to it
    games = play_games(speaker, listener, HELD_OUT, num_candidates=2, snr_db=NOISELESS, games=256, seed=2)
    assert games.symbols.shape == (256, 4) and len({tuple(s) for s in games.symbols}) >= 16
    rho = topographic_similarity(games.target_features, games.symbols, "cosine", "hamming")
    assert -1.0 <= rho <= 1.0


def test_continuous_pair_solves_four_candidates_and_degrades_at_low_snr(continuous_pair):
    _, speaker, listener, _ = continuous_pair
    high, low = (evaluate_pair(speaker, listener, HELD_OUT, num_candidates=4, snr_db=snr, episodes=EPISODES,
                               seed=1) for snr in (30.0, -20.0))
    print(f"continuous C=4: success {high['success']:.4f} at 30 dB, {low['success']:.4f} at -20 dB")
    assert high["success"] >= 0.9
    assert low["ci_high"] < high["ci_low"] and low["success"] < 0.45  # -20 dB: near chance (0.25)


def test_gumbel_gradient_reaches_speaker_through_channel():
    cfg = _discrete()
    speaker, listener = Speaker(cfg), Listener(cfg)
    gen = torch.Generator().manual_seed(0)
    feats = torch.as_tensor(TRAIN[:32])
    game = draw_games(feats, 8, 4, gen)
    snr = torch.full((8,), 10.0)
    msg = speaker(feats[game.target_item], mode="gumbel", generator=gen)
    y = msg.x + 10 ** (-10 / 20) * torch.randn(msg.x.shape, generator=gen)
    loss = torch.nn.functional.cross_entropy(listener(y, feats[game.items], snr_db=snr), game.targets)
    loss.backward()
    assert speaker.net[0].weight.grad is not None and speaker.net[0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- fairness


def test_message_power(continuous_pair):
    _, speaker, _, _ = continuous_pair
    x = speaker(torch.as_tensor(HELD_OUT[:64])).x
    np.testing.assert_allclose(x.pow(2).mean(-1).detach().numpy(), 1.0, atol=1e-5)  # sum x^2 = n per message
    discrete = Speaker(_discrete())
    gen = torch.Generator().manual_seed(0)
    for mode in ("gumbel", "reinforce", "greedy"):
        msg = discrete(torch.as_tensor(HELD_OUT[:64]), mode=mode, generator=gen)
        assert msg.x.shape == (64, 8) and msg.symbols.shape == (64, 4)
        np.testing.assert_allclose(msg.x.abs().detach().numpy(), 1.0, atol=1e-6)  # BPSK: +-1
        np.testing.assert_array_equal(msg.x.detach(), bpsk_table(2)[msg.symbols].reshape(64, 8))


def test_equal_channel_uses_enforced():
    with pytest.raises(ValueError, match="message_len \\* vocab_bits"):
        _discrete(message_len=3)
    assert EmergentConfig(kind="continuous", channel_uses=8, message_len=3).channel_uses == 8  # m, b unused


@pytest.mark.parametrize("overrides", [dict(channel_uses=0), dict(tau=0.0), dict(tau=math.nan), dict(kind="analog"),
                                       dict(entropy_coef=-0.1), dict(told_snr=1)])
def test_bad_config_is_refused(overrides):
    with pytest.raises(ValueError):
        EmergentConfig(**overrides)


def test_bad_training_arguments_are_refused():
    cfg = EmergentConfig(feature_dim=D)
    for kwargs in (dict(mode="gumbel"), dict(num_candidates=1), dict(snr_db=(10.0, 0.0)), dict(channel="fiber")):
        with pytest.raises(ValueError):
            train_pair(cfg, TRAIN, **{**dict(num_candidates=2, steps=1, snr_db=0.0), **kwargs})


# ---------------------------------------------------------------------------------------------- games


def test_draw_games_random_and_hard():
    feats = torch.as_tensor(TRAIN)
    for hard in (False, True):
        g = draw_games(feats, 200, 5, torch.Generator().manual_seed(0), hard=hard, pool_size=64)
        assert torch.equal(g.items.gather(1, g.targets[:, None]).squeeze(1), g.target_item)
        assert (g.distractor_items != g.target_item[:, None]).all()
        assert all(len(set(row.tolist())) == 5 for row in g.items)
        cos = torch.nn.functional.cosine_similarity(feats[g.distractor_items], feats[g.target_item][:, None], -1)
        if hard:  # the nearest of 64 random items are far closer than random ones
            assert cos.mean() > 0.4
        else:
            assert abs(float(cos.mean())) < 0.1


def test_same_seed_same_history_and_options_run():
    # reinforce draws samples, an SNR range draws per message, the channel draws noise, fading and erasures
    cfg = _discrete(told_snr=True, sees_distractors=True)
    kwargs = dict(num_candidates=3, steps=12, batch_size=16, snr_db=(0.0, 10.0), channel="erasure", erasure_p=0.2,
                  mode="reinforce", log_every=4, hard_distractors=True)
    first = train_pair(cfg, TRAIN, seed=3, **kwargs)[2]
    assert first == train_pair(cfg, TRAIN, seed=3, **kwargs)[2]
    assert first != train_pair(cfg, TRAIN, seed=4, **kwargs)[2]
    assert [h["step"] for h in first] == [4, 8, 12] and all(math.isfinite(v) for h in first for v in h.values())
    history = train_pair(EmergentConfig(feature_dim=D, told_snr=True), TRAIN, num_candidates=2, steps=3,
                         snr_db=5.0, channel="rayleigh")[2]
    assert len(history) == 1


def test_save_load_round_trip(continuous_pair, tmp_path):
    cfg, speaker, listener, history = continuous_pair
    save_pair(tmp_path, cfg, speaker, listener, history)
    cfg2, speaker2, listener2, history2 = load_pair(tmp_path)
    assert cfg2 == cfg and history2 == history
    want, got = (play_games(s, lis, HELD_OUT, num_candidates=4, snr_db=10.0, games=64, seed=5)
                 for s, lis in ((speaker, listener), (speaker2, listener2)))
    np.testing.assert_array_equal(got.probs, want.probs)
    np.testing.assert_array_equal(got.sent, want.sent)
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:100])
    with pytest.raises(DamagedFileError):
        load_pair(tmp_path)


# ---------------------------------------------------------------------------------------------- message use


def test_zeroed_messages_fall_to_chance_and_causal_influence(continuous_pair):
    _, speaker, listener, _ = continuous_pair
    games = play_games(speaker, listener, HELD_OUT, num_candidates=4, snr_db=NOISELESS, games=1000, seed=2)
    listen = listen_fn(listener)
    rates = control_success(listen, games.received, games, games.targets, rng=np.random.default_rng(0))
    print(f"controls: {rates}")
    assert rates["real"] >= 0.9 and abs(rates["zeroed"] - 0.25) < 0.06 and abs(rates["shuffled"] - 0.25) < 0.06
    cic = causal_influence(listen, games.received, games, rng=np.random.default_rng(0))
    deaf = causal_influence(lambda m, ctx: listen(zeroed(m), ctx), games.received, games,
                            rng=np.random.default_rng(0))
    print(f"causal influence: {cic:.3f} bits; listener with zeroed messages {deaf:.2e}")
    assert cic > 0.5 and deaf == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------------------------- the coded link


@pytest.mark.parametrize("channel", ["awgn", "rayleigh", "erasure"])
def test_bpsk_llr_equals_the_coded_protocols_demapper(channel):
    from environments.torch_channels import CHANNEL_KINDS
    from experiments.common.sweep import make_channel
    from protocols.coded import CodedLink
    from protocols.emergent_link import bpsk_llr

    B, n, snr = 64, 32, 3.0
    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.standard_normal((B, n)))
    gain = torch.as_tensor(rng.rayleigh(size=(B, 1)).repeat(n, 1) if channel == "rayleigh" else np.ones((B, n)))
    kind = torch.full((B,), CHANNEL_KINDS.index(channel))
    ours = bpsk_llr(y, gain, torch.full((B,), snr), kind, 0.25).numpy()
    link = CodedLink(16, n)
    theirs = link.demap(y.numpy(), make_channel(channel, 10 ** (-snr / 20), erasure_p=0.25), gain.numpy())
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


def test_coded_link_decodes_cleanly_above_its_cliff_and_flips_bits_below():
    from environments.torch_channels import CHANNEL_KINDS
    from protocols.emergent_link import transmit

    cfg = EmergentConfig(feature_dim=D, kind="discrete", channel_uses=32, vocab_bits=2, message_len=8, link="ldpc")
    assert cfg.heard_size == 16
    x = 1 - 2 * torch.randint(0, 2, (512, 16), generator=torch.Generator().manual_seed(0)).float()
    kind = torch.full((512,), CHANNEL_KINDS.index("awgn"))
    errors = {}
    for snr in (12.0, -6.0):
        heard, gain = transmit(cfg, x, torch.full((512,), snr), kind, erasure_p=0.0,
                               generator=torch.Generator().manual_seed(1))
        assert heard.shape == gain.shape == (512, 16) and set(heard.unique().tolist()) <= {-1.0, 1.0}
        errors[snr] = float((heard != x).float().mean())
    assert errors[12.0] == 0.0 and errors[-6.0] > 0.05, errors
    # gradients pass straight through the decoder
    xg = x.clone().requires_grad_(True)
    heard, _ = transmit(cfg, xg, torch.full((512,), -6.0), kind, erasure_p=0.0)
    heard.sum().backward()
    assert set(xg.grad.unique().tolist()) <= {-1.0, 1.0}


def test_coded_pair_learns_and_bad_coded_configs_are_refused():
    cfg = _discrete(channel_uses=32, message_len=8, link="polar")
    speaker, listener, history = train_pair(cfg, TRAIN, num_candidates=2, steps=150, batch_size=128,
                                            snr_db=(-3.0, 10.0), seed=0, lr=5e-3, log_every=50)
    result = evaluate_pair(speaker, listener, HELD_OUT, num_candidates=2, snr_db=10.0, episodes=1000, seed=1)
    assert result["success"] >= 0.9, result
    with pytest.raises(ValueError, match="kind='discrete'"):
        EmergentConfig(feature_dim=D, channel_uses=32, link="ldpc")
    with pytest.raises(ValueError, match="k >= 12"):
        _discrete(channel_uses=8, message_len=4, link="ldpc")  # 8 info bits: below 5G LDPC's minimum
    with pytest.raises(ValueError, match="link"):
        _discrete(link="turbo")
