"""calm.autoencoder: shapes, KL-clip arithmetic, training objective, learning a toy task."""

import math

import numpy as np
import pytest
import torch

from calm.autoencoder import Autoencoder, AutoencoderConfig, clipped_kl, kl_per_dimension, preset
from calm.evaluate import COLLAPSE_THRESHOLD, evaluate_autoencoder
from calm.train import train_autoencoder


def small_config(**overrides) -> AutoencoderConfig:
    base = dict(K=4, latent_dim=16, hidden_size=32, intermediate_size=64, num_layers=2, vocab_size=97)
    return AutoencoderConfig(**{**base, **overrides})


@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_shapes_for_several_K(K):
    torch.manual_seed(0)
    model = Autoencoder(small_config(K=K))
    B, L = 3, 8 * K
    ids = torch.randint(0, 97, (B, L))
    mu, log_sigma = model.encode(ids)
    assert mu.shape == log_sigma.shape == (B, L // K, 16)
    logits = model.decode(mu)
    assert logits.shape == (B, L, 97)
    rec = model.reconstruct(ids)
    assert rec.shape == (B, L) and rec.dtype == torch.long
    out = model(ids)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.kl_per_dim.shape == (16,)
    # chunks are independent: encoding one chunk alone gives the same mu as inside the passage
    mu_alone, _ = model.encode(ids[:, :K])
    torch.testing.assert_close(mu_alone[:, 0], mu[:, 0])


def test_bad_inputs_raise_clear_errors():
    model = Autoencoder(small_config(K=4))
    with pytest.raises(ValueError, match="multiple of K=4"):
        model.encode(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, N, l=16\)"):
        model.decode(torch.zeros(2, 3, 15))
    with pytest.raises(ValueError, match="token_dropout"):
        small_config(token_dropout=1.0)
    with pytest.raises(ValueError, match="num_layers"):
        small_config(num_layers=3)
    with pytest.raises(ValueError, match="kl_clip"):
        small_config(kl_clip=-0.1)
    with pytest.raises(ValueError, match="unknown autoencoder preset"):
        preset("huge")


def test_kl_clip_matches_hand_computation():
    # one chunk, three dims: (mu, sigma) = (0, 1), (1, 1), (2, 0.5)
    mu = torch.tensor([[[0.0, 1.0, 2.0]]])
    log_sigma = torch.tensor([[[0.0, 0.0, math.log(0.5)]]])
    # KL_i = 0.5 * (mu^2 + sigma^2 - 1 - 2 log sigma)
    hand = [0.0, 0.5, 0.5 * (4.0 + 0.25 - 1.0 + 2.0 * math.log(2.0))]
    kl = kl_per_dimension(mu, log_sigma)
    torch.testing.assert_close(kl, torch.tensor(hand), atol=1e-6, rtol=0)
    # floor of 0.5 nats lifts only the first dim; floor 0 is the plain KL; floor 3 lifts all
    assert clipped_kl(kl, 0.5).item() == pytest.approx(0.5 + 0.5 + hand[2], abs=1e-6)
    assert clipped_kl(kl, 0.0).item() == pytest.approx(sum(hand), abs=1e-6)
    assert clipped_kl(kl, 3.0).item() == pytest.approx(9.0, abs=1e-6)
    # the mean is over chunks: a second chunk at the prior halves each dim's KL
    mu2 = torch.cat([mu, torch.zeros_like(mu)], 0)
    ls2 = torch.cat([log_sigma, torch.zeros_like(log_sigma)], 0)
    torch.testing.assert_close(kl_per_dimension(mu2, ls2), torch.tensor(hand) / 2, atol=1e-6, rtol=0)


def test_clipped_dimension_gets_no_kl_gradient():
    # below the floor a dimension is free: the KL term must not pull it to the prior (no collapse)
    mu = torch.tensor([[0.3, 2.0]], requires_grad=True)
    log_sigma = torch.zeros(1, 2, requires_grad=True)
    clipped_kl(kl_per_dimension(mu, log_sigma), 0.5).backward()
    assert mu.grad[0, 0].item() == 0.0  # KL = 0.045 < 0.5: clipped
    assert mu.grad[0, 1].item() == pytest.approx(2.0)  # KL = 2 > 0.5: d/dmu 0.5 mu^2 = mu


def test_loss_is_ce_times_K_plus_weighted_clipped_kl():
    torch.manual_seed(1)
    model = Autoencoder(small_config(kl_weight=0.25, kl_clip=0.3)).eval()
    ids = torch.randint(0, 97, (5, 8))
    out = model(ids)
    ce = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 97), ids.reshape(-1))
    kl = torch.clamp(kl_per_dimension(out.mu, out.log_sigma), min=0.3).sum()
    torch.testing.assert_close(out.loss, ce * 4 + 0.25 * kl)
    # eval mode is deterministic and decodes mu
    torch.testing.assert_close(model(ids).loss, out.loss, rtol=0, atol=0)
    torch.testing.assert_close(out.logits, model.decode(model.encode(ids)[0]))


def test_training_noise_comes_from_the_generator():
    model = Autoencoder(small_config()).train()
    ids = torch.randint(0, 97, (4, 8))
    a = model(ids, generator=torch.Generator().manual_seed(3)).loss
    b = model(ids, generator=torch.Generator().manual_seed(3)).loss
    c = model(ids, generator=torch.Generator().manual_seed(4)).loss
    assert a.item() == b.item() and a.item() != c.item()


def test_paper_preset_has_75M_parameters_at_128k_vocab():
    with torch.device("meta"):
        model = Autoencoder(preset("paper", vocab_size=128256))
    n = model.num_parameters()
    assert 74e6 < n < 77e6, n
    # the tied embedding is most of it: 128256 * 512
    assert model.embed.weight.numel() == 128256 * 512


def test_tiny_model_overfits_64_chunks():
    rng = np.random.default_rng(0)
    stream = rng.integers(2, 64, size=64 * 4).astype(np.int32)  # 64 chunks of K=4
    config = small_config(vocab_size=64, latent_dim=16, hidden_size=64, intermediate_size=128)
    model = train_autoencoder(config, stream, steps=300, batch_size=128, lr=1e-2, warmup=20)
    chunks = torch.from_numpy(stream.reshape(64, 4).astype(np.int64))
    assert (model.reconstruct(chunks) == chunks).all()
    # the evaluation report agrees, and noise far beyond the scale of mu costs accuracy
    report = evaluate_autoencoder(model, chunks, sigmas=(0.0, 10.0), batch_size=16)
    assert report.chunks == 64 and report.token_accuracy == 1.0 and report.chunk_accuracy == 1.0
    assert report.noise_token_accuracy["0.0"] == 1.0 and report.noise_token_accuracy["10.0"] < 0.9
    assert report.collapsed_dims == sum(k < COLLAPSE_THRESHOLD for k in report.kl_per_dim)
    assert report.kl_total == pytest.approx(sum(report.kl_per_dim), rel=1e-4)


def test_sampled_softmax_runs_over_the_batch_ids_plus_negatives():
    model = Autoencoder(small_config(train_negatives=10)).train()
    ids = torch.randint(0, 97, (6, 8))
    out = model(ids, generator=torch.Generator().manual_seed(0))
    C = len(out.candidates)
    assert out.logits.shape == (6, 8, C) and C <= 48 + 10
    assert torch.isin(ids, out.candidates).all()
    assert (out.candidates[1:] > out.candidates[:-1]).all()  # sorted, unique
    # eval mode always uses the full vocabulary
    assert model.eval()(ids).logits.shape == (6, 8, 97) and model(ids).candidates is None
