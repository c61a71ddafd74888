"""FLOPs and parameter accounting against the paper's table 1 and against torch's FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from calm.autoencoder import preset as ae_preset
from calm.baseline import TokenTransformer
from calm.baseline import preset as baseline_preset
from calm.energy_transformer import EnergyTransformer
from calm.energy_transformer import preset as calm_preset
from calm.flops import autoencoder_flops, baseline_flops, baseline_parameters, calm_flops, calm_parameters

LLAMA3_VOCAB = 128256


def test_transformer_s_matches_paper_table():
    config = baseline_preset("S", LLAMA3_VOCAB)
    # paper table 1: Transformer-S, 281M parameters, 4.4e8 inference FLOPs per token (2048 context)
    assert baseline_parameters(config) == pytest.approx(281e6, rel=0.03)
    flops = baseline_flops(config, context=2048)
    assert flops.inference == pytest.approx(4.4e8, rel=0.03)
    assert flops.training == pytest.approx(3 * flops.inference)


@pytest.mark.parametrize(("name", "params"), [("M", 371e6), ("L", 735e6), ("XL", 1.82e9)])
def test_calm_sizes_match_paper(name, params):
    config = calm_preset(name, ae_preset("paper"))
    assert calm_parameters(config) == pytest.approx(params, rel=0.03)


def test_calm_m_is_cheaper_than_transformer_s():
    s = baseline_flops(baseline_preset("S", LLAMA3_VOCAB), context=2048)
    m = calm_flops(calm_preset("M", ae_preset("paper")), context=2048)
    # the paper reports 34% fewer inference and 44% fewer training FLOPs per token; our accounting
    # lands in the same region (see docs), the test pins the direction and rough size
    assert 0.5 < m.inference / s.inference < 0.75
    assert 0.35 < m.training / s.training < 0.6


def test_parameter_formulas_match_modules():
    b = baseline_preset("tiny", 300)
    assert baseline_parameters(b) == sum(p.numel() for p in TokenTransformer(b).parameters())
    c = calm_preset("tiny", ae_preset("tiny", vocab_size=300))
    model = EnergyTransformer(c)
    trainable = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("autoencoder."))
    assert calm_parameters(c) == trainable


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_baseline_forward_flops_match_torch_counter():
    torch.manual_seed(0)
    config = baseline_preset("tiny", 300)
    model = TokenTransformer(config).eval()
    B, L = 2, 64
    ids = torch.randint(0, 300, (B, L))
    counted = _counted(lambda: model.logits(ids))
    flops = baseline_flops(config, context=L)
    # torch's counter does not see the CPU attention kernel; its matmuls must match ours exactly
    attention = config.num_layers * 4 * L * config.hidden_size
    assert counted == pytest.approx((flops.inference - attention) * B * L, rel=1e-6)


def test_calm_decoder_and_encoder_flops_match_torch_counter():
    config = ae_preset("tiny", vocab_size=300)
    from calm.autoencoder import Autoencoder

    ae = Autoencoder(config).eval()
    ids = torch.randint(0, 300, (2, 32))
    N = 2 * 32 // config.K
    predicted = autoencoder_flops(config)
    assert _counted(lambda: ae.encode(ids)) == pytest.approx(predicted["encoder"] * N, rel=0.02)
    z = torch.randn(2, 32 // config.K, config.latent_dim)
    assert _counted(lambda: ae.decode(z)) == pytest.approx(predicted["decoder"] * N, rel=0.02)


def test_calm_training_flops_match_torch_counter():
    torch.manual_seed(0)
    c = calm_preset("tiny", ae_preset("tiny", vocab_size=300), num_posterior=4)
    model = EnergyTransformer(c)
    B, L = 2, 64
    ids = torch.randint(0, 300, (B, L))

    def step():
        model(ids).loss.backward()

    counted = _counted(step)
    P = L // c.ae_config.K
    attention = 3 * c.num_layers * 4 * P * c.hidden_size / c.ae_config.K  # not seen by the counter on CPU
    predicted = (calm_flops(c, context=L).training - attention) * B * L
    # backward skips the input gradient of the first layers, so the analytic 3x slightly overestimates
    assert counted == pytest.approx(predicted, rel=0.03)
