"""BrierLM: a likelihood-free language-model metric (Shao et al. 2025, section 4).

The Brier score of a predictive distribution P for an outcome y is

    Brier(P, y) = 2 P(y) - sum_x P(x)^2        (higher is better, at most 1)

a strictly proper scoring rule. It has an unbiased estimate from two independent samples x1, x2 ~ P,

    1{x1 = y} + 1{x2 = y} - 1{x1 = x2},

since E 1{x_i = y} = P(y) and E 1{x1 = x2} = sum_x P(x)^2. So a model that can only sample (CALM) can
still be scored. Brier-n treats the next n tokens as one outcome; BrierLM is 100 times the geometric
mean of Brier-1..4.

- CALM: at every patch boundary, two sampled continuations of n tokens (head sample -> autoencoder
  decode, rolling out further patches when n > K) against the true next n tokens.
- token baseline: the exact teacher-forced probability P(y) = prod_j p(y_j | prefix, y_<j) for the
  accuracy term and two sampled n-token rollouts for the collision term: 2 P(y) - 1{x1 = x2}.

Only the models' sampling interface is used (``brier_estimator``, ``rollouts``): this module imports no
model class, and the models import it. ``python -m calm.evaluate calm|baseline DIR`` scores a checkpoint.

Both are scored at the same positions: token offsets K, 2K, ... of each passage (the first patch has no
context for CALM and none for the baseline), counting an n-gram only when it lies inside the passage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "brier_from_samples",
    "brier_from_probability",
    "brier_from_sample_set",
    "brier_from_probability_set",
    "collision_rate",
    "exact_brier",
    "brier_lm",
    "BrierScores",
    "brier_sums_calm",
    "brier_sums_baseline",
    "evaluate_brier",
]


def brier_from_samples(x1: torch.Tensor, x2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased Brier estimate from two samples: 1{x1=y} + 1{x2=y} - 1{x1=x2}.

    Args:
        x1, x2, y: (..., n) token ids; an n-gram is one outcome (all n must match).

    Returns:
        (...,) float estimates in {-1, 0, 1, 2}.
    """
    return brier_from_sample_set(torch.stack([x1, x2], dim=-2), y)


def brier_from_probability(p_true: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Unbiased Brier estimate with an exact accuracy term: 2 P(y) - 1{x1=x2}.

    Args:
        p_true: (...,) the model's probability of the true outcome.
        x1, x2: (..., n) two samples from the model.
    """
    return brier_from_probability_set(p_true, torch.stack([x1, x2], dim=-2))


def collision_rate(x: torch.Tensor) -> torch.Tensor:
    """Fraction of the S(S-1) ordered pairs s != s' of samples x (..., S, n) that agree: (...,).

    An unbiased estimate of sum_x P(x)^2 for S >= 2 independent samples.
    """
    S = x.shape[-2]
    if S < 2:
        raise ValueError(f"collision_rate needs at least 2 samples, got {S}")
    same = (x.unsqueeze(-2) == x.unsqueeze(-3)).all(dim=-1).float()  # (..., S, S), diagonal all ones
    return (same.sum(dim=(-2, -1)) - S) / (S * (S - 1))


def brier_from_sample_set(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased Brier estimate from S >= 2 samples: 2 mean_s 1{x_s=y} - mean_{s!=s'} 1{x_s=x_s'}.

    With S = 2 this is `brier_from_samples`; more samples per position lower the variance (the
    collision term uses all S(S-1) ordered pairs).

    Args:
        x: (..., S, n) samples; y: (..., n) the true n-grams.
    """
    hits = (x == y.unsqueeze(-2)).all(dim=-1).float().mean(dim=-1)
    return 2.0 * hits - collision_rate(x)


def brier_from_probability_set(p_true: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Unbiased Brier estimate with an exact accuracy term and S >= 2 samples x (..., S, n): 2 P(y) - collisions."""
    return 2.0 * p_true - collision_rate(x)


def exact_brier(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact Brier score of categoricals: probs (..., V), y (...,) -> 2 P(y) - sum_x P(x)^2, (...,)."""
    return 2.0 * probs.gather(-1, y.unsqueeze(-1)).squeeze(-1) - probs.pow(2).sum(-1)


def brier_lm(briers: Sequence[float]) -> float:
    """100 * geometric mean of Brier-1..n. A non-positive Brier-n (worse than predicting nothing) gives 0."""
    if any(b <= 0 for b in briers):
        return 0.0
    return 100.0 * math.exp(sum(math.log(b) for b in briers) / len(briers))


@dataclass
class BrierScores:
    """Mean Brier-n estimates over scored positions, and BrierLM."""

    brier: list[float]
    """Brier-1 .. Brier-max_n"""
    brier_lm: float
    """100 * geometric mean of `brier`"""
    counts: list[int] = field(default_factory=list)
    """scored positions for each n"""
    per_passage: np.ndarray | None = field(default=None, repr=False)
    """(N, max_n): each passage's mean Brier-n estimate (every passage has the same positions)"""

    def as_dict(self) -> dict[str, float]:
        """{"brier_1": .., ..., "brier_lm": ..} for logs and JSON."""
        out = {f"brier_{n + 1}": b for n, b in enumerate(self.brier)}
        out["brier_lm"] = self.brier_lm
        return out

    def interval(self, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap intervals over passages: {"brier_1": (low, high), ..., "brier_lm": (low, high)}.

        Passages are the independent units (positions inside one share its context); BrierLM is recomputed
        from each resample's Brier-1..n, so its interval includes 0 wherever some resample's Brier-n is <= 0.
        """
        if self.per_passage is None or len(self.per_passage) < 2:
            raise ValueError("interval needs the per-passage estimates of two or more passages")
        rows = np.random.default_rng(seed).integers(0, len(self.per_passage), (resamples, len(self.per_passage)))
        means = self.per_passage[rows].mean(axis=1)  # (resamples, max_n)
        lms = np.array([brier_lm(m) for m in means])
        q = ((1 - level) / 2 * 100, (1 + level) / 2 * 100)
        out = {f"brier_{n + 1}": tuple(float(v) for v in np.percentile(means[:, n], q)) for n in range(means.shape[1])}
        out["brier_lm"] = tuple(float(v) for v in np.percentile(lms, q))
        return out


@torch.no_grad()
def brier_sums_calm(
    model, ids: torch.Tensor, *, max_n: int = 4, num_samples: int = 2, generator: torch.Generator | None = None,
    per_row: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts of the Brier-n estimates of an EnergyTransformer on passages ids (B, L), from
    num_samples (>= 2; the paper: 2) sampled continuations per position.

    Returns:
        (sums (max_n,), counts (max_n,)) over patch boundaries t >= 1 whose next n tokens lie in the passage;
        with ``per_row`` the sums per passage (B, max_n) and the counts of one passage.
    """
    B, L = ids.shape
    K = model.K
    samples = model.rollouts(ids, max_n, num_samples, generator=generator)  # (B, P, S, max_n)
    P = L // K
    sums = torch.zeros(B, max_n, dtype=torch.float64)
    counts = torch.zeros(max_n, dtype=torch.long)
    padded = F.pad(ids, (0, max_n))  # tokens past the end never count (masked below)
    for n in range(1, max_n + 1):
        t = torch.arange(1, P, device=ids.device)
        t = t[t * K + n <= L]
        if t.numel() == 0:
            continue
        idx = (t * K)[:, None] + torch.arange(n, device=ids.device)[None]  # (T, n)
        y = padded[:, idx]  # (B, T, n)
        x = samples[:, t, :, :n]  # (B, T, S, n)
        est = brier_from_sample_set(x, y)  # (B, T)
        sums[:, n - 1] += est.double().sum(dim=1).cpu()
        counts[n - 1] += est.shape[1]
    return (sums, counts) if per_row else (sums.sum(0), counts * B)


@torch.no_grad()
def brier_sums_baseline(
    model,
    ids: torch.Tensor,
    *,
    stride: int = 4,
    max_n: int = 4,
    num_samples: int = 2,
    generator: torch.Generator | None = None,
    per_row: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts of Brier-n estimates (exact accuracy term) of a TokenTransformer on ids (B, L)
    (``per_row``: the sums per passage (B, max_n) and the counts of one passage).

    Scored at token offsets stride, 2*stride, ... whose next n tokens lie in the passage; the collision
    term from num_samples (>= 2) sampled rollouts per position.
    """
    B, L = ids.shape
    starts = torch.arange(stride, L, stride, device=ids.device)
    logp_true, samples = model.rollouts(ids, starts, max_n, num_samples, generator=generator)  # (B, L), (B, Q, S, n)
    sums = torch.zeros(B, max_n, dtype=torch.float64)
    counts = torch.zeros(max_n, dtype=torch.long)
    # cumulative log-probability of the true n-gram starting at each position
    padded = F.pad(logp_true, (0, max_n))
    for n in range(1, max_n + 1):
        keep = starts + n <= L
        s = starts[keep]
        if s.numel() == 0:
            continue
        idx = s[:, None] + torch.arange(n, device=ids.device)[None]  # (Q', n)
        p_true = padded[:, idx].sum(-1).exp()  # (B, Q')
        est = brier_from_probability_set(p_true, samples[:, keep, :, :n])  # (B, Q')
        sums[:, n - 1] += est.double().sum(dim=1).cpu()
        counts[n - 1] += est.shape[1]
    return (sums, counts) if per_row else (sums.sum(0), counts * B)


@torch.no_grad()
def evaluate_brier(
    model,
    passages: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 16,
    max_n: int = 4,
    stride: int | None = None,
    num_samples: int = 2,
    generator: torch.Generator | None = None,
) -> BrierScores:
    """Brier-1..max_n and BrierLM of a CALM EnergyTransformer or a TokenTransformer on passages (N, L).

    Only the sampling interface is used: a model with ``brier_estimator = "samples"`` (CALM: ``K`` and
    ``rollouts(ids, max_n, S)`` -> sampled continuations at patch boundaries) or ``"probability"`` (the token
    baseline: ``rollouts(ids, starts, max_n, S)`` -> the true tokens' log-probabilities and sampled rollouts).

    For the baseline, `stride` defaults to 4 (the K of the CALM models it is compared with).
    num_samples: sampled continuations per position (>= 2); the paper's estimator uses 2, more only
    lower the variance (the estimate stays unbiased).
    """
    if num_samples < 2:
        raise ValueError(f"evaluate_brier: num_samples must be >= 2, got {num_samples}")
    estimator = getattr(model, "brier_estimator", None)
    if estimator not in ("samples", "probability"):
        raise ValueError(f"evaluate_brier: unsupported model type {type(model).__name__} (it declares no "
                         "brier_estimator: 'samples' with rollouts(ids, n, S) or 'probability' with "
                         "rollouts(ids, starts, n, S))")
    device = next(model.parameters()).device
    data = torch.as_tensor(np.asarray(passages), dtype=torch.long)
    was_training = model.training
    model.eval()
    rows, counts = [], torch.zeros(max_n, dtype=torch.long)
    for i in range(0, len(data), batch_size):
        ids = data[i : i + batch_size].to(device)
        if estimator == "samples":
            s, c = brier_sums_calm(model, ids, max_n=max_n, num_samples=num_samples, generator=generator, per_row=True)
        else:
            s, c = brier_sums_baseline(model, ids, stride=stride or 4, max_n=max_n, num_samples=num_samples,
                                       generator=generator, per_row=True)  # fmt: skip
        rows.append(s)
        counts = c  # the same positions in every passage (one length L)
    model.train(was_training)
    sums = torch.cat(rows)  # (N, max_n)
    briers = (sums.sum(0) / (counts * len(sums)).clamp(min=1)).tolist()
    per_passage = (sums / counts.clamp(min=1)).numpy()
    return BrierScores(brier=briers, brier_lm=brier_lm(briers), counts=(counts * len(sums)).tolist(),
                       per_passage=per_passage)
