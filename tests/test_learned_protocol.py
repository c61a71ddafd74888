"""The learned protocol (``protocols.learned``): an emergent pair as a Protocol that agents host and the referential
game plays. Power and channel uses, noiseless games won, save/load round trips and refusals, a pair from
``experiments.emergent`` wrapped with its own scores, and an agent that speaks and listens with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calm.autoencoder import Autoencoder, preset
from calm.files import DamagedFileError
from protocols import load_protocol, make_protocol
from protocols.emergent_model import save_pair
from protocols.emergent_train import train_pair
from protocols.learned import LearnedProtocol, LearnedProtocolConfig

V, L = 256, 8
# the micro autoencoder tests/test_agents.py trains in the session's cache (a cache hit when that module ran first)
MICRO = dict(ae_hidden_size=32, ae_intermediate_size=64, ae_latent_dim=16, ae_steps=20, ae_batch_size=32,
             ae_time_limit=0.0)


@pytest.fixture(scope="module")
def autoencoder():
    torch.manual_seed(0)
    return Autoencoder(preset("tiny", vocab_size=V, latent_dim=8, hidden_size=32, intermediate_size=64)).eval()


@pytest.fixture(scope="module")
def passages():
    rng = np.random.default_rng(0)
    return rng.integers(0, V, (300, L)), rng.integers(0, V, (64, L))


@pytest.fixture(scope="module")
def fitted(autoencoder, passages):
    train, _ = passages
    return {mode: make_protocol(f"learned-{mode}", autoencoder, budget=8, learned={"steps": 250}).fit(train)
            for mode in ("continuous", "gumbel")}


def _games(test: np.ndarray, C: int = 4) -> np.ndarray:
    """(B, C, L) candidates, the target first: the next C-1 passages as distractors."""
    return np.stack([np.roll(test, -i, axis=0) for i in range(C)], axis=1)


@pytest.mark.parametrize("mode", ["continuous", "gumbel"])
def test_power_uses_and_noiseless_games(fitted, passages, mode):
    p = fitted[mode]
    _, test = passages
    x = p.encode(test)
    assert x.shape == (64, 8) and x.dtype == np.float32 and p.channel_uses(L) == 8
    np.testing.assert_allclose((x.astype(np.float64) ** 2).mean(axis=1), 1.0, atol=1e-5)  # every message
    if mode == "gumbel":
        assert set(np.unique(x)) <= {-1.0, 1.0} and p.bits_sent(L) == 8
    else:
        assert p.bits_sent(L) is None
    cands = _games(test)
    success = (p.score(x, cands).argmax(1) == 0).mean()
    assert success > 0.7, success  # chance is 0.25
    assert (p.hard_score(x, cands).argmax(1) == 0).mean() > 0.5
    assert not p.decodes_tokens
    with pytest.raises(ValueError, match="sends no tokens"):
        p.decode(x)


def test_noise_lowers_success(fitted, passages):
    p = fitted["continuous"]
    _, test = passages
    x, cands = p.encode(test), _games(test)
    noisy = x + 3.0 * np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)  # -9.5 dB
    assert (p.score(noisy, cands).argmax(1) == 0).mean() < (p.score(x, cands).argmax(1) == 0).mean()


def test_save_load_round_trip_and_refusals(fitted, autoencoder, passages, tmp_path):
    p = fitted["gumbel"]
    _, test = passages
    p.save(tmp_path / "p")
    q = load_protocol(tmp_path / "p", autoencoder)
    assert isinstance(q, LearnedProtocol) and q.config.mode == "gumbel"
    np.testing.assert_array_equal(q.encode(test), p.encode(test))
    x, cands = p.encode(test), _games(test)
    np.testing.assert_array_equal(q.score(x, cands), p.score(x, cands))
    other = Autoencoder(preset("tiny", vocab_size=V, latent_dim=4, hidden_size=32, intermediate_size=64))
    with pytest.raises(ValueError, match="latent_dim"):
        load_protocol(tmp_path / "p", other)
    stats = tmp_path / "p" / "protocol.safetensors"
    stats.write_bytes(stats.read_bytes()[:100])
    with pytest.raises(DamagedFileError, match="protocol.safetensors"):
        load_protocol(tmp_path / "p", autoencoder)


def test_config_refusals():
    with pytest.raises(ValueError, match="needs a budget"):
        LearnedProtocolConfig()
    with pytest.raises(ValueError, match="mode"):
        LearnedProtocolConfig(budget=8, mode="telepathy")
    with pytest.raises(ValueError, match="multiple of 3"):
        LearnedProtocolConfig(budget=8, mode="gumbel", vocab_bits=3)
    with pytest.raises(ValueError, match="train_snr_db"):
        LearnedProtocolConfig(budget=8, train_snr_db=(0.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="steps"):
        LearnedProtocolConfig(budget=8, steps=0)


def test_from_pair_scores_are_the_pairs_own(autoencoder, passages, tmp_path):
    """A pair trained on the calm features (as experiments.emergent trains it), wrapped: same messages, same scores."""
    train, test = passages
    proto = LearnedProtocol(autoencoder, LearnedProtocolConfig(budget=8))
    bank = proto.features(train).numpy()
    cfg = LearnedProtocolConfig(budget=8, mode="gumbel").emergent_config(bank.shape[1])
    speaker, listener, history = train_pair(cfg, bank, num_candidates=4, steps=60, snr_db=10.0, progress=False)
    save_pair(tmp_path / "pair", cfg, speaker, listener, history)
    p = LearnedProtocol.from_pair(autoencoder, tmp_path / "pair", seq_len=L)
    feats = proto.features(test)
    with torch.inference_mode():
        x = speaker(feats, mode="greedy").x
        cands = _games(test)
        want = listener(x, feats[torch.as_tensor(np.stack([np.roll(np.arange(64), -i) for i in range(4)], 1))])
    np.testing.assert_array_equal(p.encode(test), x.numpy())
    np.testing.assert_allclose(p.score(x.numpy(), cands), want.double().numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="features"):
        LearnedProtocol.from_pair(autoencoder, tmp_path / "pair", seq_len=2 * L)


def test_an_agent_speaks_and_listens_with_it(tmp_path, tmp_path_factory):
    """CALMAgentCore loads a learned protocol fitted on its autoencoder and plays the referential env with it."""
    import environments
    from agents import CALMAgentCore, ListenerPolicy, SpeakerPolicy
    from calm.checkpoint import load_pretrained
    from calm.data import load_token_ids, make_passages
    from experiments.common.models import ensure_checkpoint
    from experiments.referential_game import Config

    checkpoint = ensure_checkpoint(Config(runs_dir=str(tmp_path_factory.getbasetemp() / "latentcomm-runs"), **MICRO))
    model, tok = load_pretrained(checkpoint)
    train = make_passages(load_token_ids("kjv+shakespeare", tok, "train", progress=False), 8, max_passages=512)
    test = make_passages(load_token_ids("kjv+shakespeare", tok, "test", progress=False), 8, max_passages=128)
    make_protocol("learned-continuous", model, budget=16, learned={"steps": 300}).fit(train).save(tmp_path / "p")
    agent = CALMAgentCore(str(checkpoint), {"learned": str(tmp_path / "p")})
    env = environments.make("referential_v0", passages=test, channel_uses=16, batch_size=64, num_candidates=4,
                            vocab_size=model.config.vocab_size)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step({"speaker": SpeakerPolicy(agent, "learned").act(obs["speaker"])})
    choice, decoded = ListenerPolicy(agent, "learned", "soft").act(obs["listener"])
    assert decoded is None  # no tokens to decode
    _, rewards, *_ = env.step({"listener": choice})
    assert rewards["listener"] > 0.5  # chance 0.25


def test_the_referential_game_trains_its_learned_pairs_in_parallel_processes(tmp_path, tmp_path_factory, capsys):
    from calm.checkpoint import load_pretrained
    from experiments.common.models import ensure_checkpoint
    from experiments.referential_game import Config, protocol_key, train_learned_in_parallel

    cfg = Config(runs_dir=str(tmp_path_factory.getbasetemp() / "latentcomm-runs"), passage_length=8,
                 protocols=("hash", "learned-continuous", "learned-gumbel"), channel_uses=(8,), learned_steps=20,
                 num_cpus=2, **MICRO)
    checkpoint = ensure_checkpoint(cfg)
    model, _ = load_pretrained(checkpoint)
    train = np.random.default_rng(0).integers(0, model.config.vocab_size, (64, 8))
    train_learned_in_parallel(cfg, checkpoint, tmp_path, train)
    assert "training 2 learned pairs (20 steps each), 2 at a time" in capsys.readouterr().out
    for name in ("learned-continuous", "learned-gumbel"):
        p = load_protocol(tmp_path / "protocols" / protocol_key(name, 8), model)
        assert p.config.mode == name.split("-")[1] and p.config.steps == 20
    assert not (tmp_path / "protocols" / protocol_key("hash", 8)).exists()  # only the learned ones train there
    train_learned_in_parallel(cfg, checkpoint, tmp_path, train)  # all saved: nothing to do
    assert "training" not in capsys.readouterr().out
