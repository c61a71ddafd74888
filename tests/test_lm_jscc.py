"""The LM-JSCC adapter (protocols.lm_jscc_model / lm_jscc_task) and its protocol (protocols.lm_jscc)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calm.autoencoder import AutoencoderConfig
from calm.baseline import BaselineConfig, TokenTransformer
from calm.checkpoint import save_pretrained
from environments.channels import AWGN, RayleighBlockFading
from protocols import load_protocol
from protocols.jscc import JSCCProtocolConfig
from protocols.jscc_model import JSCCModel
from protocols.jscc_model import preset as jscc_preset
from protocols.lm_jscc import LMJSCCProtocol
from protocols.lm_jscc_model import LMJSCCConfig, LMJSCCModel, preset
from protocols.lm_jscc_task import decode_accuracy, train_lm_jscc

V, L, N_USES = 16, 8, 8


def _lm(seed: int = 0, width: int = 32) -> TokenTransformer:
    torch.manual_seed(seed)
    return TokenTransformer(BaselineConfig(vocab_size=V, hidden_size=width, num_layers=2, num_heads=2,
                                           intermediate_size=64, max_positions=64))


def _adapter(seed: int = 0) -> JSCCModel:
    torch.manual_seed(seed)
    ae = AutoencoderConfig(K=2, latent_dim=8, hidden_size=32, intermediate_size=64, num_layers=2, vocab_size=V)
    return JSCCModel(jscc_preset("tiny", ae, channel_uses=N_USES, passage_length=L, hidden_size=64, num_layers=1,
                                 channels=("awgn", "rayleigh"), snr_db_min=-10.0, snr_db_max=30.0,
                                 train_negatives=0))


def _config(lm: TokenTransformer, adapter: JSCCModel, **kw) -> LMJSCCConfig:
    settings = dict(hidden_size=64, prefix_length=2, history_top=4, train_negatives=0, snr_db_min=-10.0,
                    snr_db_max=30.0)
    return preset("tiny", lm.config, adapter.config, **{**settings, **kw})


def _stream(n: int = 40_000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, n).astype(np.int64)


def _ids(B: int, seed: int) -> torch.Tensor:
    return torch.as_tensor(_stream(B * L, seed=seed).reshape(B, L))


def _tokenizer():
    """A word-level tokenizer of exactly V ids (checkpoints carry one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from calm.tokenizer import EOT_TOKEN, PAD_TOKEN

    vocab = {PAD_TOKEN: 0, EOT_TOKEN: 1, **{f"w{i}": i for i in range(2, V)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w2"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


@pytest.fixture(scope="module")
def trained():
    lm, adapter = _lm(), _adapter()
    return train_lm_jscc(_config(lm, adapter), _stream(), steps=STEPS, lm=lm, adapter=adapter, batch_size=64,
                         lr=3e-3, val_every=STEPS)


STEPS = 200


def _received(model, ids, snr_db=10.0, sigma=0.1):
    B = ids.shape[0]
    snr, kind = torch.full((B,), snr_db), torch.zeros(B, dtype=torch.long)
    with torch.no_grad():
        x = model.encode(ids, snr, kind)
    y = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    return y, torch.ones_like(x), snr, kind


def test_config_errors_name_the_field():
    lm, adapter = _lm(), _adapter()
    with pytest.raises(ValueError, match="snr_db_min"):
        _config(lm, adapter, snr_db_min=40.0, snr_db_max=30.0)
    with pytest.raises(ValueError, match="unknown channel kind 'fading'"):
        _config(lm, adapter, channels=("fading",))
    with pytest.raises(ValueError, match="trained on \\['awgn', 'rayleigh'\\], not 'erasure'"):
        _config(lm, adapter, channels=("erasure",))
    with pytest.raises(ValueError, match="max_positions"):
        _config(lm, adapter, prefix_length=60)
    with pytest.raises(ValueError, match="vocab_size"):
        LMJSCCConfig(lm={**lm.config.to_dict(), "vocab_size": V + 1}, jscc=adapter.config.to_dict())
    with pytest.raises(ValueError, match="history_top=17 exceeds"):
        _config(lm, adapter, history_top=V + 1)
    with pytest.raises(ValueError, match="unknown lm-jscc preset"):
        preset("huge", lm.config, adapter.config)
    with pytest.raises(ValueError, match="differs"):
        LMJSCCModel(_config(lm, adapter), _lm(width=16), adapter)


def test_parts_start_from_the_trained_ones():
    lm, adapter = _lm(), _adapter()
    model = LMJSCCModel(_config(lm, adapter), lm, adapter)
    for name, p in lm.state_dict().items():
        assert torch.equal(model.receiver_lm.state_dict()[name], p)
    for name, p in adapter.state_dict().items():
        assert torch.equal(model.adapter.state_dict()[name], p)
    assert not any(p.requires_grad for p in model.adapter.autoencoder.parameters())  # the CALM autoencoder is frozen


def test_the_receiver_lm_reads_only_earlier_evidence():
    """The state that predicts t_i has read the evidence of positions 0..i-1 only (causal), and decode is the
    argmax of the fused logits the loss trains."""
    lm, adapter = _lm(), _adapter()
    model = LMJSCCModel(_config(lm, adapter), lm, adapter).eval()
    y, gain, snr, kind = _received(model, _ids(16, seed=1))
    with torch.no_grad():
        prefix = model.prefix_vectors(y, gain, snr, kind)
        history = model.evidence_history(model._evidence_hidden(y, gain, snr, kind))
        base = model.hidden(prefix, history)
        changed = history.clone()
        changed[:, 5:] = torch.randn(changed[:, 5:].shape)
        moved = model.hidden(prefix, changed)
        assert torch.allclose(base[:, :6], moved[:, :6], atol=1e-6)  # t_0..t_5 read evidence 0..4 only
        assert not torch.allclose(base[:, 6:], moved[:, 6:])
        assert torch.equal(model.decode(y, gain, snr, kind), model.fused_logits(y, gain, snr, kind).argmax(-1))


def test_the_fusion_weighs_the_lm_prior_against_the_channel_evidence():
    """beta large: the JSCC adapter's own decode (CALM decoder argmax); beta 0: the LM's argmax alone."""
    lm, adapter = _lm(), _adapter()
    model = LMJSCCModel(_config(lm, adapter), lm, adapter).eval()
    y, gain, snr, kind = _received(model, _ids(64, seed=2))
    with torch.no_grad():
        evidence_alone = adapter.eval().autoencoder.decode(adapter.decode(y, gain, snr, kind)).argmax(-1)
        model.evidence_weight.fill_(1e6)
        assert torch.equal(model.decode(y, gain, snr, kind), evidence_alone)
        model.evidence_weight.fill_(0.0)
        h = model.hidden(model.prefix_vectors(y, gain, snr, kind),
                         model.evidence_history(model._evidence_hidden(y, gain, snr, kind)))
        assert torch.equal(model.decode(y, gain, snr, kind), model.receiver_lm.lm_head(h).argmax(-1))


def test_trained_adapter_carries_the_message_and_degrades_with_noise(trained):
    """Uniform random tokens: nothing to predict, so whatever is right came through the channel."""
    windows = _ids(512, seed=2)
    clean, noisy = decode_accuracy(trained, windows, 30.0, "awgn"), decode_accuracy(trained, windows, -10.0, "awgn")
    # chance is 1/16 = 0.0625; the first 200 steps of a tiny model from random parts (measured: 0.15 at 300 steps)
    assert clean > 1.75 / V
    assert noisy < clean - 0.03
    with torch.no_grad():
        x = trained.encode(windows[:256], torch.full((256,), 10.0), torch.zeros(256, dtype=torch.long))
    assert abs(float(x.pow(2).mean()) - 1.0) < 0.1  # unit power at eval, from the running statistics


def test_protocol_round_trip_and_refusals(trained, tmp_path):
    adapter_dir = tmp_path / "adapter"
    save_pretrained(trained, adapter_dir, _tokenizer())
    train = _stream(256 * L, seed=3).reshape(256, L)
    proto = LMJSCCProtocol.from_pretrained(adapter_dir, JSCCProtocolConfig(budget=N_USES), channel=AWGN(0.03))
    proto.fit(train)
    with pytest.raises(ValueError, match="budget=4"):
        LMJSCCProtocol(trained, JSCCProtocolConfig(budget=4))
    with pytest.raises(ValueError, match="trained on channels"):
        proto.with_channel(RayleighBlockFading(0.1))
    with pytest.raises(ValueError, match="with_channel"):
        LMJSCCProtocol(trained).fit(train).encode(train[:2])
    test = _stream(128 * L, seed=4).reshape(128, L)
    x = proto.encode(test)
    assert x.shape == (128, N_USES) and abs(float((x**2).mean()) - 1.0) < 0.1
    decoded = proto.decode(x, channel=AWGN(0.03))
    assert decoded.shape == test.shape and (decoded == test).mean() > 1.75 / V
    proto.save(tmp_path / "proto")
    again = load_protocol(tmp_path / "proto")
    assert isinstance(again, LMJSCCProtocol) and again.scale == proto.scale
    assert np.array_equal(again.with_channel(AWGN(0.03)).encode(test), x)
    # a changed adapter is refused by name
    weights = adapter_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="changed"):
        load_protocol(tmp_path / "proto")
