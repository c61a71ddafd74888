"""Token baseline and the shared backbone: shapes, KV cache and branch equivalence, learning."""

from __future__ import annotations

import math

import pytest
import torch

from calm.backbone import Backbone, BackboneConfig, Branches
from calm.baseline import BaselineConfig, TokenTransformer
from calm.baseline import preset as baseline_preset

V = 40


def small_backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone(BackboneConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_positions=64)).eval()


def test_shapes_and_initial_loss():
    torch.manual_seed(0)
    model = TokenTransformer(baseline_preset("tiny", V))
    ids = torch.randint(0, V, (3, 16))
    out = model(ids)
    assert out.logits.shape == (3, 16, V)
    # a fresh model predicts close to uniform
    assert out.loss.item() == pytest.approx(math.log(V), rel=0.05)
    gen = model.generate(ids[:, :5], 7, generator=torch.Generator().manual_seed(0))
    assert gen.shape == (3, 7) and gen.dtype == torch.long and int(gen.max()) < V


def test_kv_cache_matches_full_forward():
    backbone = small_backbone()
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        full = backbone(x)
        cache = backbone.new_cache(2, 10)
        prefill = backbone(x[:, :6], cache)  # several positions at once
        steps = [backbone(x[:, i : i + 1], cache) for i in range(6, 10)]  # then one at a time
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), full, atol=1e-5, rtol=1e-5)


def test_branches_match_explicit_sequences():
    """Branch q forked at start s equals running the prefix[:s] + the branch's own tokens."""
    backbone = small_backbone()
    L, steps = 8, 3
    prefix = torch.randn(1, L, 32)
    starts = torch.tensor([1, 4, 4, 8])
    extra = torch.randn(1, len(starts), steps, 32)  # each branch's own inputs
    with torch.no_grad():
        cache = backbone.new_cache(1, L)
        backbone(prefix, cache)
        branches = Branches(cache, starts)
        got = torch.stack([backbone.forward_branches(extra[:, :, j], branches) for j in range(steps)], dim=2)
        for q, s in enumerate(starts.tolist()):
            seq = torch.cat([prefix[:, :s], extra[:, q]], dim=1)
            want = backbone(seq)[:, s:]  # (1, steps, d)
            torch.testing.assert_close(got[:, q], want, atol=1e-5, rtol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match="hidden_size"):
        BaselineConfig(vocab_size=10, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown baseline preset"):
        baseline_preset("huge", 10)
    with pytest.raises(ValueError, match="temperature"):
        TokenTransformer(baseline_preset("tiny", V)).generate(torch.zeros(1, 2, dtype=torch.long), 3, temperature=0.0)
    config = baseline_preset("tiny", V)
    assert BaselineConfig.from_dict(config.to_dict()) == config


def test_overfits_a_toy_language():
    """Arithmetic progressions mod V: the loss falls well below log V within a few dozen steps."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = TokenTransformer(baseline_preset("tiny", V, num_layers=2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start = torch.randint(0, V, (16, 1), generator=g)
    step = torch.randint(1, 3, (16, 1), generator=g)
    ids = (start + step * torch.arange(24)) % V
    losses = []
    for _ in range(60):
        loss = model(ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]


@pytest.mark.slow
def test_train_task_generate_and_evaluate(tmp_path, tokenizer, capsys):
    """calm.train's baseline task in-process, then the generate and evaluate CLIs on its checkpoint."""
    import numpy as np

    from calm import evaluate, generate
    from calm.checkpoint import save_pretrained
    from calm.train import TASKS, TrainConfig, train_local

    task_cls = TASKS["baseline"]
    task = task_cls(task_cls.make_config("tiny", vocab_size=len(tokenizer),
                                         overrides=dict(num_layers=1, max_positions=32)))  # fmt: skip
    stream = np.random.default_rng(0).integers(0, len(tokenizer), 4000).astype(np.int32)
    cfg = TrainConfig(steps=2, batch_size=2, warmup=1, val_every=2, checkpoint_every=2, val_size=16, brier_samples=3)
    result = train_local(task, stream, cfg, val_ids=stream[:512])
    assert {"val_ce", "val_brier_lm"} <= set(result.history[-1])
    assert task.brier_samples == 3  # validation used the configured number of samples
    with pytest.raises(ValueError, match="brier_samples"):
        TrainConfig(brier_samples=1)
    save_pretrained(result.model, tmp_path / "baseline", tokenizer)
    texts = generate.main([str(tmp_path / "baseline"), "--prompt", "In the beginning", "--temperature", "0.5",
                           "--max-tokens", "8"])  # fmt: skip
    assert capsys.readouterr().out.startswith("In the beginning") and texts[0]
    scores = evaluate.main(["baseline", str(tmp_path / "baseline"), "--max-passages", "2"])
    assert len(scores.brier) == 4 and scores.counts[3] > 0


def test_sampler_draws_from_the_tempered_softmax():
    """Inverse-CDF sampling matches softmax(logits / T), never picks a zero-probability id, keeps shapes."""
    logits = torch.tensor([2.0, 0.0, -float("inf"), 1.0, -1.0])
    g = torch.Generator().manual_seed(0)
    for T in (1.0, 0.5):
        probs = torch.softmax(logits / T, dim=-1)
        draws = TokenTransformer._sample(logits.expand(200_000, -1), T, g)
        freq = torch.bincount(draws, minlength=5).double() / draws.numel()
        assert freq[2] == 0
        assert 0.5 * (freq - probs.double()).abs().sum() < 0.01
    assert TokenTransformer._sample(torch.randn(3, 4, 7), 1.0, g).shape == (3, 4)


def test_rmsnorm_matches_its_formula():
    """The fused float32 path and the low-precision path both compute x / rms(x) * weight."""
    from calm.backbone import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(16)
    norm.weight.data.normal_()
    x = torch.randn(2, 3, 16)
    want = (x.double() / x.double().pow(2).mean(-1, keepdim=True).add(norm.eps).sqrt() * norm.weight.double())
    assert torch.allclose(norm(x).double(), want, atol=1e-5)
    assert torch.allclose(norm(x.bfloat16()).double(), want, atol=0.05)
