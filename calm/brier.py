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
    "evaluate_checkpoint",
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

    def as_dict(self) -> dict[str, float]:
        """{"brier_1": .., ..., "brier_lm": ..} for logs and JSON."""
        out = {f"brier_{n + 1}": b for n, b in enumerate(self.brier)}
        out["brier_lm"] = self.brier_lm
        return out


@torch.no_grad()
def brier_sums_calm(
    model, ids: torch.Tensor, *, max_n: int = 4, num_samples: int = 2, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts of the Brier-n estimates of an EnergyTransformer on passages ids (B, L), from
    num_samples (>= 2; the paper: 2) sampled continuations per position.

    Returns:
        (sums (max_n,), counts (max_n,)) over patch boundaries t >= 1 whose next n tokens lie in the passage.
    """
    B, L = ids.shape
    K = model.K
    samples = model.rollouts(ids, max_n, num_samples, generator=generator)  # (B, P, S, max_n)
    P = L // K
    sums = torch.zeros(max_n, dtype=torch.float64)
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
        est = brier_from_sample_set(x, y)
        sums[n - 1] += est.double().sum().cpu()
        counts[n - 1] += est.numel()
    return sums, counts


@torch.no_grad()
def brier_sums_baseline(
    model,
    ids: torch.Tensor,
    *,
    stride: int = 4,
    max_n: int = 4,
    num_samples: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts of Brier-n estimates (exact accuracy term) of a TokenTransformer on ids (B, L).

    Scored at token offsets stride, 2*stride, ... whose next n tokens lie in the passage; the collision
    term from num_samples (>= 2) sampled rollouts per position.
    """
    B, L = ids.shape
    starts = torch.arange(stride, L, stride, device=ids.device)
    logp_true, samples = model.rollouts(ids, starts, max_n, num_samples, generator=generator)  # (B, L), (B, Q, S, n)
    sums = torch.zeros(max_n, dtype=torch.float64)
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
        est = brier_from_probability_set(p_true, samples[:, keep, :, :n])
        sums[n - 1] += est.double().sum().cpu()
        counts[n - 1] += est.numel()
    return sums, counts


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

    For the baseline, `stride` defaults to 4 (the K of the CALM models it is compared with).
    num_samples: sampled continuations per position (>= 2); the paper's estimator uses 2, more only
    lower the variance (the estimate stays unbiased).
    """
    if num_samples < 2:
        raise ValueError(f"evaluate_brier: num_samples must be >= 2, got {num_samples}")
    from calm.baseline import TokenTransformer
    from calm.energy_transformer import EnergyTransformer

    device = next(model.parameters()).device
    data = torch.as_tensor(np.asarray(passages), dtype=torch.long)
    was_training = model.training
    model.eval()
    sums = torch.zeros(max_n, dtype=torch.float64)
    counts = torch.zeros(max_n, dtype=torch.long)
    for i in range(0, len(data), batch_size):
        ids = data[i : i + batch_size].to(device)
        if isinstance(model, EnergyTransformer):
            s, c = brier_sums_calm(model, ids, max_n=max_n, num_samples=num_samples, generator=generator)
        elif isinstance(model, TokenTransformer):
            s, c = brier_sums_baseline(model, ids, stride=stride or 4, max_n=max_n, num_samples=num_samples,
                                       generator=generator)  # fmt: skip
        else:
            raise ValueError(f"evaluate_brier: unsupported model type {type(model).__name__}")
        sums += s
        counts += c
    model.train(was_training)
    briers = (sums / counts.clamp(min=1)).tolist()
    return BrierScores(brier=briers, brier_lm=brier_lm(briers), counts=counts.tolist())


def evaluate_checkpoint(
    directory: str,
    *,
    model_type: str,
    corpus: str = "kjv+shakespeare",
    split: str = "test",
    max_passages: int = 64,
    seed: int = 0,
    num_samples: int = 2,
    json_path: str | None = None,
) -> BrierScores:
    """Brier-1..4 and BrierLM of a calm or baseline checkpoint on a held-out split (`python -m calm.evaluate`).

    Passages are windows of the model's training length (calm: max_patches * K, baseline: max_positions),
    up to max_passages of them drawn with `seed`. Prints a table and writes JSON (default
    <checkpoint>/eval_brier_<split>.json).
    """
    import json
    from pathlib import Path

    from calm.backbone import default_device
    from calm.checkpoint import load_config, load_pretrained
    from calm.data import load_token_ids, make_passages

    meta = load_config(directory)
    if meta["model_type"] != model_type:
        raise ValueError(f"{directory} holds a {meta['model_type']!r} checkpoint, not {model_type!r}")
    device = default_device()
    model, tokenizer = load_pretrained(directory, device=device)
    c = model.config
    length = c.max_patches * c.K if model_type == "calm" else c.max_positions
    ids = load_token_ids(corpus, tokenizer, split, progress=False)
    passages = make_passages(ids, length, max_passages=max_passages, seed=seed)
    scores = evaluate_brier(model, passages, num_samples=num_samples,
                            generator=torch.Generator(device=device).manual_seed(seed))
    print(f"{model_type} {directory}  {split} split, {len(passages)} passages of {length} tokens, "
          f"{num_samples} samples per position")
    for n, b in enumerate(scores.brier, start=1):
        print(f"  Brier-{n}  {b:.4f}   ({scores.counts[n - 1]} positions)")
    print(f"  BrierLM  {scores.brier_lm:.2f}")
    out = Path(json_path) if json_path else Path(directory) / f"eval_brier_{split}.json"
    out.write_text(json.dumps({"checkpoint": str(directory), "model_type": model_type, "corpus": corpus,
                               "split": split, "passages": len(passages), "length": length, "samples": num_samples,
                               **scores.as_dict(), "counts": scores.counts}, indent=1) + "\n")  # fmt: skip
    return scores
