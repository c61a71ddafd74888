"""protocols.jscc_model + protocols.jscc: the learned channel adapter around a frozen CALM autoencoder.

A real (tiny) autoencoder is trained in a fixture on real text: about 1.2 MB of the default corpus's train
split under a 512-id byte-level BPE trained on it (so checkpoints carry a real tokenizer), then one adapter
(n = 64 channel uses for L = 16 tokens, all three channel kinds) is trained through ``calm.train.train_local``.
Held-out passages come from the validation split's documents. No test here starts Ray: the jscc task on Ray Train
is tests/test_jscc_ray.py's (``make test`` runs this file in its process without Ray, beside the Ray ones).
"""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from calm.autoencoder import Autoencoder, AutoencoderConfig
from calm.checkpoint import load_pretrained, save_pretrained
from calm.train import TrainConfig, train_autoencoder, train_local
from environments.channels import AWGN, Chain, Erasure, Quantize, RayleighBlockFading
from environments.torch_channels import CHANNEL_KINDS, simulate_channel
from protocols.jscc import JSCCProtocol, JSCCProtocolConfig, channel_snr_db
from protocols.jscc_model import JSCCConfig, JSCCModel, preset
from protocols.jscc_task import JSCCTask

V = 512  # tokenizer (and autoencoder) vocabulary
L = 16  # tokens per passage
N_USES = 64  # channel uses per message (D = L/K * l = 128 latent coordinates)
TEXT_CHARS = 1_200_000
JSCC_STEPS = 300
SNRS_DB = (-6.0, 0.0, 6.0, 12.0, 20.0)


def awgn_at(snr_db: float) -> AWGN:
    return AWGN(10.0 ** (-snr_db / 20.0))


# ---- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A 512-id BPE trained on ~1.2 MB of train documents; train and held-out token streams (int32)."""
    from tokenizers import ByteLevelBPETokenizer

    from calm.data import load_split
    from calm.tokenizer import EOT_TOKEN, PAD_TOKEN, load_tokenizer

    def texts(split: str, chars: int) -> list[str]:
        out, total = [], 0
        for doc in load_split("kjv+shakespeare", split)[::3]:  # every third document: both sources
            out.append(doc.text[:200_000])
            total += len(out[-1])
            if total >= chars:
                break
        return out

    train_texts, held_texts = texts("train", TEXT_CHARS), texts("validation", TEXT_CHARS // 8)
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(train_texts, vocab_size=V, min_frequency=2, special_tokens=[PAD_TOKEN, EOT_TOKEN],
                            show_progress=False)
    directory = tmp_path_factory.mktemp("tok")
    bpe.save(str(directory / "tokenizer.json"))
    tok = load_tokenizer(directory)
    assert len(tok) == V

    def stream(docs: list[str]) -> np.ndarray:
        eot = int(tok.eos_token_id)
        return np.concatenate([np.append(enc.ids, eot) for enc in tok.backend_tokenizer.encode_batch(docs)]).astype(
            np.int32)

    train, held = stream(train_texts), stream(held_texts)
    rows = np.random.default_rng(1).permutation(len(held) // L)[:1500]
    return SimpleNamespace(tok=tok, texts=train_texts, train=train, held=held, fit=train[: 4000 * L].reshape(-1, L).astype(np.int64),
                           heldout=held[: len(held) // L * L].reshape(-1, L)[rows].astype(np.int64))


@pytest.fixture(scope="module")
def autoencoder(corpus):
    """A tiny CALM autoencoder (l = 32) trained for seconds; reconstructs about 90% of held-out tokens."""
    config = AutoencoderConfig(K=4, latent_dim=32, hidden_size=64, intermediate_size=128, num_layers=2,
                               vocab_size=V, token_dropout=0.0, embed_init_std=1.0)
    ae = train_autoencoder(config, corpus.train, steps=400, batch_size=256, lr=1e-2, warmup=40)
    ids = torch.as_tensor(corpus.heldout)
    assert (ae.reconstruct(ids) == ids).float().mean() > 0.85
    return ae


class RecordingTask(JSCCTask):
    """The jscc task, keeping every step's token cross-entropy (the loss without its power penalty)."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.losses: list[float] = []

    def loss(self, model, batch, generator):
        loss, metrics = super().loss(model, batch, generator)
        self.losses.append(metrics["ce"].item())
        return loss, metrics


@pytest.fixture(scope="module")
def trained(corpus, autoencoder):
    """An adapter for all three channel kinds trained JSCC_STEPS steps in process (calm.train.train_local)."""
    config = preset("tiny", autoencoder.config, passage_length=L, channel_uses=N_USES, hidden_size=192,
                    num_layers=1, channels=CHANNEL_KINDS, train_negatives=0)
    task = RecordingTask(config, autoencoder=autoencoder)
    cfg = TrainConfig(steps=JSCC_STEPS, batch_size=64, lr=3e-3, warmup=20, val_every=JSCC_STEPS,
                      checkpoint_every=JSCC_STEPS, val_size=256)
    result = train_local(task, corpus.train, cfg, val_ids=corpus.held)
    assert result.stopped is None
    return SimpleNamespace(model=result.model, losses=task.losses, history=result.history)


@pytest.fixture(scope="module")
def protocol(trained, corpus):
    return JSCCProtocol(trained.model).fit(corpus.fit)


def token_accuracy(proto: JSCCProtocol, ids: np.ndarray, channel, seed: int = 0) -> float:
    view = proto.with_channel(channel)
    y, gain = channel.transmit(view.encode(ids), np.random.default_rng(seed))
    return float((view.decode(y, channel=channel, gain=gain) == ids).mean())


# ---- the differentiable channel ---------------------------------------------------------------------------


def test_channel_statistics_and_gradient():
    gen = torch.Generator().manual_seed(0)
    B, n = 20_000, 16
    snr = torch.full((B,), 6.0)
    sigma = 10 ** (-6.0 / 20)
    x = torch.ones(B, n, requires_grad=True)

    # awgn: noise variance sigma^2, gain 1; differentiable with dy/dx = 1
    y, gain = simulate_channel(x, snr, torch.full((B,), 0), erasure_p=0.3, generator=gen)
    assert (y - 1).var().item() == pytest.approx(sigma**2, rel=0.02)
    assert torch.equal(gain, torch.ones(B, n))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(B, n))

    # rayleigh: one gain per message, E[h^2] = 1; the noise around h * x still has variance sigma^2
    y, gain = simulate_channel(x.detach(), snr, torch.full((B,), 1), erasure_p=0.3, generator=gen)
    assert torch.equal(gain, gain[:, :1].expand(B, n)) and (gain >= 0).all()
    assert gain[:, 0].pow(2).mean().item() == pytest.approx(1.0, abs=0.03)
    assert (y - gain).var().item() == pytest.approx(sigma**2, rel=0.02)

    # erasure: each symbol zeroed with probability p, then noise (40 dB, so zeros are plain to see)
    y, gain = simulate_channel(x.detach(), torch.full((B,), 40.0), torch.full((B,), 2), erasure_p=0.3, generator=gen)
    rate = (y.abs() < 0.5).float().mean().item()
    assert rate == pytest.approx(0.3, abs=4 * math.sqrt(0.3 * 0.7 / (B * n)))
    assert torch.equal(gain, torch.ones(B, n))  # the receiver is not told the erasures

    # same seed, same noise
    a = simulate_channel(x.detach(), snr, torch.zeros(B, dtype=torch.long), erasure_p=0.1,
                         generator=torch.Generator().manual_seed(3))[0]
    b = simulate_channel(x.detach(), snr, torch.zeros(B, dtype=torch.long), erasure_p=0.1,
                         generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)


def test_channel_snr_db_reads_the_channel_models():
    assert channel_snr_db(AWGN(0.1)) == ("awgn", pytest.approx(20.0), 0.0)
    assert channel_snr_db(RayleighBlockFading(1.0)) == ("rayleigh", 0.0, 0.0)
    assert channel_snr_db(Chain([Erasure(0.2), AWGN(0.5)])) == ("erasure", pytest.approx(6.0206, abs=1e-4), 0.2)
    assert channel_snr_db(Chain([AWGN(0.5), Erasure(0.2)])).kind == "erasure"
    assert channel_snr_db(Chain([Chain([AWGN(0.5)])])).kind == "awgn"
    assert channel_snr_db(AWGN(0.0)).snr_db == math.inf
    for bad in (Quantize(2, 1.0), Erasure(0.1), Chain([AWGN(0.5), Quantize(2, 1.0)])):
        with pytest.raises(ValueError, match="jscc protocol cannot use channel"):
            channel_snr_db(bad)


def test_config_validation_names_the_field(autoencoder):
    with pytest.raises(ValueError, match="latent_dim"):
        preset("tiny", autoencoder.config, latent_dim=8)
    with pytest.raises(ValueError, match="passage_length"):
        preset("tiny", autoencoder.config, passage_length=6)
    with pytest.raises(ValueError, match="unknown channel kind 'fading'"):
        preset("tiny", autoencoder.config, channels=("awgn", "fading"))
    with pytest.raises(ValueError, match="snr_db_min"):
        preset("tiny", autoencoder.config, snr_db_min=30.0)
    config = preset("tiny", autoencoder.config, channels=["awgn", "erasure"])
    assert config.channels == ("awgn", "erasure") and config.K == 4 and config.vocab_size == V
    assert JSCCConfig.from_dict(config.to_dict()) == config


# ---- the trained adapter ----------------------------------------------------------------------------------


def test_training_loss_falls(trained):
    first, last = np.mean(trained.losses[:20]), np.mean(trained.losses[-20:])
    assert len(trained.losses) == JSCC_STEPS
    assert last < 0.8 * first, f"loss {first:.3f} -> {last:.3f}"
    record = trained.history[-1]
    assert record["val_acc_awgn_20dB"] > record["val_acc_awgn_-6dB"] + 0.05, record


def test_unit_power_on_heldout_and_per_message_encoding(protocol, corpus):
    assert protocol.channel_uses(L) == N_USES and protocol.bits_sent(L) is None
    channels = [awgn_at(-6.0), awgn_at(6.0), awgn_at(20.0), RayleighBlockFading(0.5), Chain([Erasure(0.1), AWGN(0.3)])]
    for channel in channels:
        x = protocol.with_channel(channel).encode(corpus.heldout)
        assert x.dtype == np.float32 and x.shape == (len(corpus.heldout), N_USES)
        power = float(np.mean(x.astype(np.float64) ** 2))
        assert abs(power - 1.0) < 0.02, (channel, power)
    # a message's symbols do not depend on the batch it is sent in
    view = protocol.with_channel(awgn_at(6.0))
    whole = view.encode(corpus.heldout[:300])
    np.testing.assert_allclose(view.encode(corpus.heldout[:7]), whole[:7], atol=1e-5)
    np.testing.assert_allclose(view.encode(corpus.heldout[150:151]), whole[150:151], atol=1e-5)
    # the speaker must be told the channel
    with pytest.raises(ValueError, match="with_channel"):
        protocol.encode(corpus.heldout[:2])
    with pytest.raises(ValueError, match="erasure p=0.1"):
        protocol.with_channel(Chain([Erasure(0.3), AWGN(0.3)]))


def test_accuracy_rises_with_snr(protocol, corpus):
    ids = corpus.heldout
    acc = {snr: token_accuracy(protocol, ids, awgn_at(snr)) for snr in SNRS_DB}
    assert acc[20.0] > acc[-6.0] + 0.1, acc
    # monotone within noise: a higher SNR is never clearly worse than one at least 6 dB lower
    for low in SNRS_DB:
        for high in SNRS_DB:
            if high >= low + 6:
                assert acc[high] >= acc[low] - 0.02, (low, high, acc)
    # the other trained kinds work too: a strong channel beats a very weak one
    for make in (lambda s: RayleighBlockFading(s), lambda s: Chain([Erasure(0.1), AWGN(s)])):
        assert token_accuracy(protocol, ids, make(0.1)) > token_accuracy(protocol, ids, make(2.0)) + 0.05
    # the hard receiver picks the sent passage among candidates at high SNR far more often than chance
    view = protocol.with_channel(awgn_at(20.0))
    cands = np.stack([ids[:200], ids[200:400], ids[400:600], ids[600:800]], axis=1)  # (200, 4, L); 0 is sent
    y, gain = awgn_at(20.0).transmit(view.encode(ids[:200]), np.random.default_rng(1))
    assert (view.hard_score(y, cands, channel=awgn_at(20.0)).argmax(1) == 0).mean() > 0.5
    assert (view.score(y, cands, channel=awgn_at(20.0)).argmax(1) == 0).mean() > 0.9  # soft: channel likelihood


# ---- checkpoints and the saved protocol ---------------------------------------------------------------------


def test_save_load_round_trip_and_mismatches(trained, autoencoder, protocol, corpus, tmp_path):
    adapter_dir = tmp_path / "adapter"
    save_pretrained(trained.model, adapter_dir, corpus.tok)
    model, _ = load_pretrained(adapter_dir)
    assert isinstance(model, JSCCModel) and model.config == trained.model.config
    # calm names no protocol: without protocols.jscc_model imported, the jscc type is unknown (a clear error)
    code = ("import sys; from calm.checkpoint import CheckpointError, load_pretrained\n"
            "try:\n    load_pretrained(sys.argv[1])\nexcept CheckpointError as exc:\n    print(exc)\n"
            "assert 'protocols.jscc_model' not in sys.modules")
    run = subprocess.run([sys.executable, "-c", code, str(adapter_dir)], capture_output=True, text=True, check=True)
    assert "unknown model_type 'jscc'" in run.stdout and "register_model_type" in run.stdout, run.stdout
    proto = JSCCProtocol.from_pretrained(adapter_dir, autoencoder=autoencoder).fit(corpus.fit)
    assert proto.scale == protocol.scale
    proto.save(tmp_path / "proto")
    loaded = JSCCProtocol.load(tmp_path / "proto", autoencoder)
    channel = RayleighBlockFading(0.3)
    ids = corpus.heldout[:64]
    a, b = proto.with_channel(channel), loaded.with_channel(channel)
    x = a.encode(ids)
    assert np.array_equal(x, b.encode(ids))
    y, gain = channel.transmit(x, np.random.default_rng(0))
    assert np.array_equal(a.decode(y, channel=channel, gain=gain), b.decode(y, channel=channel, gain=gain))

    # another autoencoder: ValueError naming the field (or the weights)
    other = Autoencoder(AutoencoderConfig(**{**autoencoder.config.to_dict(), "latent_dim": 8}))
    with pytest.raises(ValueError, match="latent_dim"):
        JSCCProtocol.load(tmp_path / "proto", other)
    with pytest.raises(ValueError, match="latent_dim"):
        JSCCModel(trained.model.config, autoencoder=other)
    with pytest.raises(ValueError, match="latent_dim"):
        JSCCProtocol(trained.model, autoencoder=other)
    retrained = Autoencoder(autoencoder.config)
    with pytest.raises(ValueError, match="weights differ"):
        JSCCProtocol(trained.model, autoencoder=retrained)
    with pytest.raises(ValueError, match="budget=8"):
        JSCCProtocol(trained.model, JSCCProtocolConfig(budget=8))

    # a changed adapter is refused
    changed = JSCCModel(trained.model.config, autoencoder=autoencoder)
    save_pretrained(changed, adapter_dir, corpus.tok)
    with pytest.raises(ValueError, match="changed"):
        JSCCProtocol.load(tmp_path / "proto", autoencoder)


# ---- training entry points -------------------------------------------------------------------------------


def test_registries_refuse_another_class_under_a_taken_name(capsys):
    from calm.checkpoint import MODEL_TYPES, register_model_type
    from calm.tasks import TASKS, register_task
    from protocols.jscc_train import main

    assert MODEL_TYPES["jscc"] == ("protocols.jscc_model", "JSCCConfig", "JSCCModel") and TASKS["jscc"] is JSCCTask
    register_model_type("jscc", JSCCConfig, JSCCModel)  # again: a no-op
    assert register_task(JSCCTask) is JSCCTask
    with pytest.raises(ValueError, match="already registered"):
        register_model_type("jscc", AutoencoderConfig, Autoencoder)
    with pytest.raises(ValueError, match="already registered"):
        register_task(type("OtherTask", (JSCCTask,), {}))
    # the protocols entry point is calm.train's CLI for the jscc task
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--channel-uses" in capsys.readouterr().out


def test_cli_config_checkpoint_and_resume(autoencoder, corpus, tmp_path):
    from calm.train import TASKS, build_parser, configs_from_args

    ae_dir = tmp_path / "ae"
    save_pretrained(autoencoder, ae_dir, corpus.tok)
    args = build_parser().parse_args(["jscc", "--ae", str(ae_dir), "--channel-uses", "8", "--passage-length",
                                      "16", "--hidden-size", "32", "--out", str(tmp_path / "run")])
    config, train_cfg = configs_from_args(args, TASKS["jscc"], vocab_size=V, pad_id=0)
    assert isinstance(config, JSCCConfig) and config.channel_uses == 8 and config.passage_length == 16
    assert config.autoencoder_path == str(ae_dir.resolve()) and config.latent_dim == 32
    assert train_cfg.steps == JSCCTask.train_presets["tiny"]["steps"]
    with pytest.raises(ValueError, match="vocab_size"):
        configs_from_args(args, TASKS["jscc"], vocab_size=V + 1, pad_id=0)

    # the frozen weights come from --ae; a checkpoint resumes exactly (its config survives JSON)
    config = JSCCConfig.from_dict({**config.to_dict(), "num_layers": 1, "train_negatives": 64})
    model = JSCCTask(config).build_model()
    for k, v in autoencoder.state_dict().items():
        assert torch.equal(model.autoencoder.state_dict()[k], v), k
    cfg = TrainConfig(steps=4, batch_size=8, warmup=1, checkpoint_every=2, val_every=2, val_size=64)
    full = train_local(JSCCTask(config), corpus.train, cfg, tokenizer=corpus.tok, checkpoint_dir=tmp_path / "ck")
    step4 = tmp_path / "ck" / "step_0000004"
    for f in step4.iterdir():
        f.unlink()
    step4.rmdir()
    resumed = train_local(JSCCTask(config), corpus.train, cfg, tokenizer=corpus.tok, checkpoint_dir=tmp_path / "ck",
                          resume=True)
    assert resumed.step == 4
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, full.model.state_dict()[k]), k
