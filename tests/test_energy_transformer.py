"""Energy transformer: shapes, the energy loss against a direct computation, learning a toy language."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from calm.autoencoder import Autoencoder, AutoencoderConfig
from calm.autoencoder import preset as ae_preset
from calm.brier import evaluate_brier
from calm.energy_transformer import (
    EnergyTransformer,
    EnergyTransformerConfig,
    energy_loss,
)
from calm.energy_transformer import preset as calm_preset

V = 32


def tiny_model(K: int = 4, **overrides) -> EnergyTransformer:
    torch.manual_seed(0)
    ae = ae_preset("tiny", K=K, vocab_size=V, hidden_size=32, intermediate_size=64, latent_dim=8)
    return EnergyTransformer(calm_preset("tiny", ae, hidden_size=32, num_heads=4, intermediate_size=64,
                                         head_intermediate_size=32, num_layers=2, **overrides))  # fmt: skip


def direct_energy_loss(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """The definition, written out with loops in float64: x (P, N, l), y (P, M, l) -> (P,)."""
    out = []
    for xp, yp in zip(x.double(), y.double()):
        N, M = len(xp), len(yp)
        fit = sum(torch.linalg.norm(xp[n] - yp[m]) ** alpha for n in range(N) for m in range(M)) / (N * M)
        pairs = [(i, j) for i, j in itertools.product(range(N), repeat=2) if i != j]
        spread = sum(torch.linalg.norm(xp[i] - xp[j]) ** alpha for i, j in pairs) / len(pairs)
        out.append(2 * fit - spread)
    return torch.stack(out)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 1.5])
def test_energy_loss_equals_direct_computation(alpha):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g)  # (B, P, N, l)
    y = torch.randn(2, 3, 7, 5, generator=g)  # (B, P, M, l)
    got = energy_loss(x, y, alpha=alpha)
    assert got.shape == (2, 3)
    want = direct_energy_loss(x.view(6, 4, 5), y.view(6, 7, 5), alpha).view(2, 3)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_energy_loss_prefers_the_true_distribution():
    """Energy score is strictly proper: matching the target's distribution scores best on average."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(400, 50, 4, generator=g)  # target N(0, I)
    scores = {}
    for name, scale, shift in [("true", 1.0, 0.0), ("narrow", 0.3, 0.0), ("wide", 2.0, 0.0), ("shifted", 1.0, 0.5)]:
        x = shift + scale * torch.randn(400, 8, 4, generator=g)
        scores[name] = energy_loss(x, y).mean().item()
    assert min(scores, key=scores.get) == "true", scores


def test_energy_loss_validates_inputs():
    with pytest.raises(ValueError, match="alpha"):
        energy_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), alpha=2.0)
    with pytest.raises(ValueError, match="at least 2"):
        energy_loss(torch.zeros(1, 1, 3), torch.zeros(1, 2, 3))


def test_shapes_and_zero_initialised_head():
    model = tiny_model()
    B, L = 2, 16
    ids = torch.randint(0, V, (B, L))
    h = model.hidden(ids)
    assert h.shape == (B, L // 4, 32)
    z = model.head.sample(h, 5)
    assert z.shape == (B, L // 4, 5, 8)
    # zero-initialised output layer: every sample starts at the origin, the loss is 2 E||y||
    assert torch.count_nonzero(z) == 0
    out = model(ids, generator=torch.Generator().manual_seed(0))
    assert out.term_xx.item() == 0.0
    assert out.loss.item() == pytest.approx(2 * out.term_xy.item())
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.autoencoder.parameters())  # frozen
    assert model.sample_chunks(h, 3).shape == (B, L // 4, 3, 4)
    assert model.generate(ids[:, :5], 9).shape == (B, 9)
    assert model.generate(ids[:, :5], 6, temperature=0.5, batch_n=8).shape == (B, 6)
    assert model.generate(ids[:, :4], 4, temperature=0.7, coins=torch.Generator().manual_seed(0)).shape == (B, 4)
    assert model.rollouts(ids, 4, 2).shape == (B, L // 4, 2, 4)


def test_rollouts_beyond_one_patch_follow_the_model():
    """With K=2 a 4-token rollout needs two patches; the second must equal a step of plain generation."""
    model = tiny_model(K=2).eval()
    ids = torch.randint(0, V, (1, 8))
    g = torch.Generator().manual_seed(3)
    roll = model.rollouts(ids, 4, 1, generator=g)  # (1, 4, 1, 4)
    assert roll.shape == (1, 4, 1, 4)
    # replay patch t=2: feed the true prefix plus the sampled first patch, the hidden state must match
    first = roll[:, 2, 0, :2]
    seq = torch.cat([ids[:, :4], first], dim=1)  # true patches 0-1, sampled patch 2
    h_direct = model.hidden(torch.cat([seq, torch.zeros_like(first)], dim=1))[:, 3]  # predicts patch 3
    from calm.backbone import Branches

    with torch.no_grad():
        cache = model.backbone.new_cache(1, 4)
        x = model.patch_inputs(ids)
        model.backbone(torch.cat([model.start.expand(1, 1, -1), x[:, :-1]], dim=1), cache)
        br = Branches(cache, torch.tensor([3]))
        h_branch = model.backbone.forward_branches(model.patch_inputs(first), br)[:, 0]
    torch.testing.assert_close(h_branch, h_direct, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shifted", [False, True])
def test_generate_chunks_equals_a_loop_without_cache(shifted):
    """The one sampling loop (generate, the agents' dialogue and steering use it) against a direct loop that
    re-runs the backbone over the whole sequence each step: same noise, same latents (shift included), same
    tokens; the latents decode to the tokens; generate is its ids cut to length."""
    model = tiny_model(K=2).eval()
    with torch.no_grad():  # the zero-initialised output layer would send only the origin: give it weights
        model.head.out.weight.normal_(std=0.5)
        model.head.cond_in.weight.normal_(std=2.0)  # make the samples depend on the context
    prompt = torch.randint(1, V, (3, 5))  # odd length: left-padded with pad_id to a multiple of K
    shift = torch.linspace(-1.0, 1.0, model.latent_dim) if shifted else None
    out = model.generate_chunks(prompt, 4, pad_id=0, latent_shift=shift, generator=torch.Generator().manual_seed(7))
    assert out.ids.shape == (3, 8) and out.latents.shape == (3, 4, model.latent_dim)
    g = torch.Generator().manual_seed(7)
    seq, zs = torch.nn.functional.pad(prompt, (1, 0), value=0), []
    with torch.no_grad():
        for _ in range(4):
            x = torch.cat([model.start.expand(3, 1, -1), model.patch_inputs(seq)], dim=1)
            z = model.head.sample(model.backbone(x)[:, -1], 1, generator=g)[:, 0]
            z = z if shift is None else z + shift
            zs.append(z)
            seq = torch.cat([seq, model.decode_chunks(z)], dim=1)
    torch.testing.assert_close(out.latents, torch.stack(zs, dim=1), atol=1e-5, rtol=1e-5)
    assert torch.equal(out.ids, seq[:, 6:])
    assert torch.equal(model.decode_chunks(out.latents).reshape(3, -1), out.ids)
    if not shifted:
        assert torch.equal(model.generate(prompt, 7, generator=torch.Generator().manual_seed(7)), out.ids[:, :7])
    tempered = model.generate_chunks(prompt, 2, temperature=0.5, batch_n=8)
    assert tempered.ids.shape == (3, 4) and tempered.latents is None
    with pytest.raises(ValueError, match="latent_shift needs temperature 1"):
        model.generate_chunks(prompt, 2, temperature=0.5, latent_shift=torch.zeros(model.latent_dim))
    with pytest.raises(ValueError, match="exceeds max_patches"):
        model.generate_chunks(prompt, model.config.max_patches)
    with pytest.raises(ValueError, match="num_chunks"):
        model.generate_chunks(prompt, 0)


def test_config_round_trip_and_validation():
    model = tiny_model()
    config = model.config
    assert EnergyTransformerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="num_samples"):
        EnergyTransformerConfig(autoencoder=config.autoencoder, num_samples=1)
    with pytest.raises(ValueError, match="unknown energy transformer preset"):
        calm_preset("XXL", config.autoencoder)
    with pytest.raises(ValueError, match="multiple of K"):
        model(torch.zeros(1, 6, dtype=torch.long))


def toy_language(batches: int, B: int, L: int, seed: int) -> list[torch.Tensor]:
    """Arithmetic progressions mod V with step 1 or 3: each patch determines the next."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        start = torch.randint(0, V, (B, 1), generator=g)
        step = 1 + 2 * torch.randint(0, 2, (B, 1), generator=g)
        out.append((start + step * torch.arange(L)) % V)
    return out


@pytest.mark.slow
def test_tiny_calm_overfits_a_few_batches():
    """Train a tiny autoencoder, then a tiny CALM on it: the energy loss falls and BrierLM rises."""
    torch.manual_seed(0)
    batches = toy_language(4, 16, 32, seed=0)
    # an explicit config (not a preset, which may be retuned): no dropouts, small init
    ae = Autoencoder(AutoencoderConfig(K=4, vocab_size=V, hidden_size=64, intermediate_size=128, latent_dim=16,
                                       num_layers=2, token_dropout=0.0, latent_dropout=0.0))  # fmt: skip
    opt = torch.optim.AdamW(ae.parameters(), lr=3e-3)
    for step in range(150):
        out = ae(batches[step % 4])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    ae.eval()
    assert (ae.reconstruct(torch.cat(batches)) == torch.cat(batches)).float().mean() > 0.99

    config = calm_preset("tiny", ae.config, hidden_size=64, num_heads=4, num_layers=2, intermediate_size=128,
                         head_intermediate_size=64, num_posterior=16)  # fmt: skip
    model = EnergyTransformer(config, autoencoder=ae)
    g = torch.Generator().manual_seed(1)
    before = evaluate_brier(model, torch.cat(batches), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for step in range(250):
        out = model(batches[step % 4], generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    after = evaluate_brier(model, torch.cat(batches), generator=torch.Generator().manual_seed(2))
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.5 * first, (first, last)
    assert after.brier[0] > before.brier[0] + 0.3, (before, after)
    # measured: loss 9.4 -> 3.0, BrierLM 0 -> 81 (Brier-1 -0.93 -> 0.90)
    assert after.brier_lm > before.brier_lm + 50, (before, after)


@pytest.mark.slow
def test_train_task_checkpoints_generate_and_evaluate(tmp_path, tokenizer, capsys):
    """calm.train's calm task in-process (AE checkpoint -> steps -> resume), then the generate and evaluate CLIs."""
    import numpy as np

    from calm import evaluate, generate
    from calm.checkpoint import load_pretrained, save_pretrained
    from calm.train import TASKS, TrainConfig, train_local

    torch.manual_seed(0)
    Vt = len(tokenizer)
    ae = Autoencoder(ae_preset("tiny", vocab_size=Vt, hidden_size=32, intermediate_size=64, latent_dim=8))
    save_pretrained(ae, tmp_path / "ae", tokenizer)
    task_cls = TASKS["calm"]
    small = dict(hidden_size=32, num_heads=4, num_layers=2, intermediate_size=64, head_intermediate_size=32,
                 max_patches=8, num_posterior=4)  # fmt: skip
    with pytest.raises(ValueError, match="--ae"):
        task_cls.make_config("tiny", vocab_size=Vt, overrides=small, ae=None)
    task = task_cls(task_cls.make_config("tiny", vocab_size=Vt, overrides=small, ae=str(tmp_path / "ae")))
    stream = np.random.default_rng(0).integers(0, Vt, 4000).astype(np.int32)
    common = dict(batch_size=2, warmup=1, val_every=2, checkpoint_every=2, val_size=16, lr=1e-3)
    first = train_local(task, stream, TrainConfig(steps=2, **common), val_ids=stream[:512], tokenizer=tokenizer,
                        checkpoint_dir=tmp_path / "ck")  # fmt: skip
    assert {"val_energy", "val_brier_1", "val_brier_lm", "val_on_manifold", "val_sample_distance",
            "val_data_distance"} <= set(first.history[-1])
    assert 0.0 <= first.history[-1]["val_on_manifold"] <= 1.0
    # the frozen autoencoder inside is the checkpoint's, untouched by training
    for k, v in ae.state_dict().items():
        torch.testing.assert_close(first.model.autoencoder.state_dict()[k], v)
    resumed = train_local(task, stream, TrainConfig(steps=4, **common), val_ids=stream[:512], tokenizer=tokenizer,
                          checkpoint_dir=tmp_path / "ck", resume=True)  # fmt: skip
    assert resumed.step == 4 and [r["step"] for r in resumed.history] == [2, 4]
    save_pretrained(resumed.model, tmp_path / "calm", tokenizer)
    loaded, _ = load_pretrained(tmp_path / "calm")
    assert isinstance(loaded, EnergyTransformer)

    texts = generate.main([str(tmp_path / "calm"), "--prompt", "In the beginning", "--temperature", "0.5",
                           "--max-tokens", "8"])  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.startswith("In the beginning") and len(texts) == 1 and texts[0]
    scores = evaluate.main(["calm", str(tmp_path / "calm"), "--max-passages", "2"])
    assert len(scores.brier) == 4 and scores.counts[0] > 0
    out = capsys.readouterr().out
    assert "BrierLM" in out and "on-manifold" in out
    assert {"on_manifold", "sample_distance", "data_distance"} <= set(
        json.loads((tmp_path / "calm" / "eval_brier_test.json").read_text()))
    more = evaluate.main(["calm", str(tmp_path / "calm"), "--max-passages", "2", "--samples", "6"])
    assert more.counts == scores.counts and "6 samples per position" in capsys.readouterr().out
    with pytest.raises(ValueError, match="num_samples must be >= 2"):
        evaluate.main(["calm", str(tmp_path / "calm"), "--max-passages", "2", "--samples", "1"])


class _Codebook:
    """A synthetic autoencoder (K = 1) whose manifold is a codebook: token v <-> the point c_v, and a vector
    decodes to its nearest point. ``manifold_distance`` of z is then exactly its distance to that point."""

    def __init__(self, points: torch.Tensor) -> None:
        self.points = points  # (V, l)

    def encode(self, ids: torch.Tensor):
        return self.points[ids], torch.zeros_like(self.points[ids])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(z, self.points.expand(z.shape[0], -1, -1))  # (B, n, V): argmax = nearest point


def test_manifold_distance_on_a_synthetic_manifold():
    from calm.autoencoder import manifold_distance

    points = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    ae = _Codebook(points)
    z = torch.tensor([[0.0, 0.0], [4.0, 0.0], [1.0, 0.0], [3.0, 0.5], [2.0, 2.0], [0.0, 3.9]])
    expected = torch.tensor([0.0, 0.0, 1.0, math.hypot(1.0, 0.5), math.hypot(2.0, 2.0), 0.1])
    torch.testing.assert_close(manifold_distance(ae, z), expected)
    # any leading shape, and pieces smaller than the input give the same answer
    torch.testing.assert_close(manifold_distance(ae, z.view(2, 3, 2), batch=2), expected.view(2, 3))
    # a blob around the codebook's mean: mostly off the manifold; samples at the points: all on it
    # (the mean (4, 4) of the points (0, 0), (12, 0), (0, 12) is 5.7 from each: the blob stays > 4 away)
    wide = _Codebook(3 * points)
    blob = 3 * points.mean(0) + 0.3 * torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    assert (manifold_distance(wide, blob) > 4.0).all()
    assert (manifold_distance(wide, 3 * points[torch.randint(0, 3, (100,))]) == 0).all()


def test_k2_presets_fit_together():
    from calm.autoencoder import preset as ae_preset_
    from calm.energy_transformer import preset as calm_preset
    from calm.lm_task import WindowTask

    ae = ae_preset_("tiny-k2", vocab_size=300)
    calm = calm_preset("tiny-k2", ae)
    assert (ae.K, ae.latent_dim, calm.K, calm.max_patches) == (2, 16, 2, 128)
    train = WindowTask.train_presets["tiny-k2"]
    assert train["batch_size"] * train["grad_accum"] * calm.max_patches >= 4096  # patches per step, one worker
