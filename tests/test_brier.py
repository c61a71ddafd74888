"""BrierLM estimators: unbiased against exact Brier scores of known distributions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from calm.baseline import TokenTransformer
from calm.baseline import preset as baseline_preset
from calm.brier import (
    brier_from_probability,
    brier_from_probability_set,
    brier_from_sample_set,
    brier_from_samples,
    brier_lm,
    brier_sums_baseline,
    evaluate_brier,
    exact_brier,
)


def test_exact_brier_known_values():
    onehot = torch.tensor([[0.0, 1.0, 0.0]])
    assert exact_brier(onehot, torch.tensor([1])).item() == pytest.approx(1.0)
    assert exact_brier(onehot, torch.tensor([0])).item() == pytest.approx(-1.0)
    uniform = torch.full((1, 8), 1 / 8)
    assert exact_brier(uniform, torch.tensor([3])).item() == pytest.approx(1 / 8)


def test_brier_lm_is_scaled_geometric_mean():
    assert brier_lm([0.5, 0.5, 0.5, 0.5]) == pytest.approx(50.0)
    assert brier_lm([0.8, 0.4, 0.2, 0.1]) == pytest.approx(100 * (0.8 * 0.4 * 0.2 * 0.1) ** 0.25)
    assert brier_lm([0.5, -0.1, 0.2, 0.1]) == 0.0


@pytest.mark.parametrize("n", [1, 2])
def test_two_sample_estimators_are_unbiased(n):
    """Known categorical over n-grams (V^n outcomes): mean estimate = exact Brier within 4 s.e."""
    g = torch.Generator().manual_seed(n)
    V = 4
    probs = torch.softmax(2.0 * torch.randn(V**n, generator=g), dim=0)
    outcomes = torch.tensor(list(itertools.product(range(V), repeat=n)))  # (V^n, n)
    S = 200_000
    draws = torch.multinomial(probs, 2 * S, replacement=True, generator=g).view(S, 2)
    x1, x2 = outcomes[draws[:, 0]], outcomes[draws[:, 1]]
    for y_index in (int(probs.argmax()), int(probs.argmin())):
        y = outcomes[y_index].expand(S, n)
        exact = exact_brier(probs, torch.tensor(y_index)).item()
        for est in (brier_from_samples(x1, x2, y), brier_from_probability(probs[y_index].expand(S), x1, x2)):
            se = est.std().item() / math.sqrt(S)
            assert abs(est.mean().item() - exact) < 4 * se + 1e-9, (est.mean().item(), exact, se)


@pytest.mark.parametrize("S", [3, 8])
def test_many_sample_estimators_are_unbiased_and_tighter(S):
    """S samples per position: still unbiased for the exact Brier score, with a smaller variance than two."""
    g = torch.Generator().manual_seed(S)
    V, n, R = 4, 2, 100_000
    probs = torch.softmax(2.0 * torch.randn(V**n, generator=g), dim=0)
    outcomes = torch.tensor(list(itertools.product(range(V), repeat=n)))
    x = outcomes[torch.multinomial(probs, R * S, replacement=True, generator=g).view(R, S)]  # (R, S, n)
    y_index = int(probs.argmax())
    y = outcomes[y_index].expand(R, n)
    exact = exact_brier(probs, torch.tensor(y_index)).item()
    two = brier_from_samples(x[:, 0], x[:, 1], y)
    assert torch.equal(brier_from_sample_set(x[:, :2], y), two)
    for est in (brier_from_sample_set(x, y), brier_from_probability_set(probs[y_index].expand(R), x)):
        se = est.std().item() / math.sqrt(R)
        assert abs(est.mean().item() - exact) < 4 * se + 1e-9, (est.mean().item(), exact, se)
    assert brier_from_sample_set(x, y).var() < 0.8 * two.var()
    with pytest.raises(ValueError, match="at least 2"):
        brier_from_sample_set(x[:, :1], y)


@pytest.mark.parametrize("S", [2, 5])
def test_baseline_estimator_is_unbiased_for_a_real_model(S):
    """Brier-1 and Brier-2 of a (peaked) random TokenTransformer: the rollout estimator with S samples per
    position averages to the exact value computed by enumerating every continuation with full forward passes."""
    torch.manual_seed(0)
    V, L, s = 12, 10, 6
    model = TokenTransformer(baseline_preset("tiny", V, num_layers=2, max_positions=32)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)  # peaked distributions: collisions are frequent
    ids = torch.randint(0, V, (1, L))
    with torch.no_grad():
        p1 = torch.softmax(model.logits(ids[:, :s])[0, -1], -1)  # (V,) next-token at position s
        prefixes = torch.cat([ids[:, :s].expand(V, s), torch.arange(V)[:, None]], dim=1)  # (V, s+1)
        p2_given = torch.softmax(model.logits(prefixes)[:, -1], -1)  # (V, V)
    # true tokens the model finds likely, so that both terms of the score matter
    ids[0, s] = p1.argmax()
    ids[0, s + 1] = p2_given[ids[0, s]].argmax()
    joint = (p1[:, None] * p2_given).reshape(-1)  # (V*V,) over (x1, x2)
    exact1 = exact_brier(p1, ids[0, s]).item()
    exact2 = exact_brier(joint, ids[0, s] * V + ids[0, s + 1]).item()
    R = 4000
    g = torch.Generator().manual_seed(1)
    sums, counts = brier_sums_baseline(model, ids.expand(R, L), stride=s, max_n=2, num_samples=S, generator=g)
    # starts are s only (2s > L - 2), one per row
    assert counts.tolist() == [R, R]
    assert 0.1 < exact2 < exact1 < 0.9  # a non-degenerate case
    for got, exact in ((sums[0].item() / R, exact1), (sums[1].item() / R, exact2)):
        assert abs(got - exact) < 0.03, (got, exact)


def test_evaluate_brier_rejects_unknown_models():
    with pytest.raises(ValueError, match="unsupported model"):
        evaluate_brier(torch.nn.Linear(2, 2), torch.zeros(1, 8, dtype=torch.long))


def test_bootstrap_interval_over_passages():
    from calm.brier import BrierScores, brier_lm

    rng = np.random.default_rng(0)
    per = np.clip(rng.normal([0.2, 0.05, 0.01, 0.004], [0.05, 0.02, 0.01, 0.01], size=(200, 4)), -1, 1)
    means = per.mean(0)
    scores = BrierScores(brier=means.tolist(), brier_lm=brier_lm(means), counts=[1] * 4, per_passage=per)
    ci = scores.interval(resamples=500)
    for n in range(4):
        low, high = ci[f"brier_{n + 1}"]
        assert low < means[n] < high
        se = per[:, n].std(ddof=1) / np.sqrt(len(per))
        assert high - low == pytest.approx(2 * 1.96 * se, rel=0.2)  # the normal interval, roughly
    # every Brier-n is clearly positive (Brier-4: mean 0.004, SE 0.0007), so BrierLM's interval excludes 0
    assert ci["brier_lm"][0] > 0 and ci["brier_lm"][0] < scores.brier_lm < ci["brier_lm"][1]
    # a Brier-n whose interval includes 0 puts 0 inside BrierLM's
    per[:, 3] = rng.normal(0.0, 0.01, 200)
    weak = BrierScores(brier=per.mean(0).tolist(), brier_lm=brier_lm(per.mean(0)), counts=[1] * 4, per_passage=per)
    assert weak.interval(resamples=500)["brier_lm"][0] == 0.0
    with pytest.raises(ValueError, match="two or more"):
        BrierScores(brier=[0.1], brier_lm=10.0).interval()
