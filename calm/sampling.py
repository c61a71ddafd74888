"""Temperature sampling for models that can only draw samples (CALM's energy head).

CALM has no explicit distribution over the next chunk of K tokens, only a sampler. Following Shao et
al. 2025 (section on temperature sampling), two algorithms turn i.i.d. draws from P into draws from
P_T(x) = P(x)^(1/T) / Z:

- exact rejection sampler, any T in (0, 1]: with n = floor(1/T), a = 1/T - n,
  stage 1 draws n samples and restarts unless they are all equal (call it x*); this accepts x with
  probability P(x)^n. If a = 0 it returns x*. Otherwise stage 2 is a Bernoulli factory for P(x*)^a:
  for i = 1, 2, ...: draw x; if x = x* return x*; else with probability a/i restart stage 1, else go on.
- approximate batch sampler, T = 1/n: draw N samples, count each distinct value c_x; for
  m = n, n-1, ..., 1 take the values with c_x >= m weighted by C(c_x, m) and sample one. Biased for
  finite N, exact as N -> infinity (C(c_x, n) ~ (N P(x))^n / n!).

Both work on any `draw(n) -> sequence of n hashable samples` function, so they are tested here on toy
categoricals with known P and used by `calm.generate` on chunks of token ids (tuples).

Expected number of draws of the exact sampler (our derivation; the paper's Theorem 2). Stage 1 costs
n draws and succeeds with probability sum_x P(x)^n, giving x with probability P(x)^n. In stage 2,
given x* with p = P(x*), the chance of still running before the k-th draw is
(1-p)^(k-1) prod_{i<k}(1 - a/i), whose sum over k >= 1 is the binomial series of p^(a-1): stage 2
costs p^(a-1) draws on average and returns with probability p * p^(a-1) = p^a. One round (stage 1 and,
if reached, stage 2) therefore costs n + sum_x P(x)^n P(x)^(a-1) = n + sum_x P(x)^(1/T - 1) draws and
succeeds with probability Z = sum_x P(x)^(1/T); rounds are i.i.d., so

    E[draws] = (n + sum_x P(x)^(1/T - 1)) / sum_x P(x)^(1/T)      (a > 0)
    E[draws] = n / sum_x P(x)^n                                    (a = 0, T = 1/n)

`expected_exact_draws` computes it; tests/test_sampling.py checks it against the sampler.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

DrawFn = Callable[[int], Sequence[Hashable]]
"""`draw(n)` returns n i.i.d. samples from the model's distribution P (hashable: ints, tuples)."""

__all__ = [
    "DrawFn",
    "SampleResult",
    "exact_temperature_sample",
    "batch_temperature_sample",
    "expected_exact_draws",
    "tempered_distribution",
    "split_temperature",
]


@dataclass
class SampleResult:
    """One sample and what it cost."""

    value: Hashable
    """the sample, a value returned by the draw function"""
    draws: int
    """how many draws from P were consumed to produce it"""


def split_temperature(temperature: float) -> tuple[int, float]:
    """Return (n, a) with 1/T = n + a, n = floor(1/T), 0 <= a < 1 (a snapped to 0 within 1e-9)."""
    if not (0.0 < temperature <= 1.0):
        raise ValueError(f"temperature must be in (0, 1], got {temperature}")
    inv = 1.0 / temperature
    n = int(math.floor(inv + 1e-9))
    a = inv - n
    if abs(a) < 1e-9 or abs(a - 1.0) < 1e-9:
        a = 0.0
    return n, max(a, 0.0)


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator).item())


def exact_temperature_sample(
    draw: DrawFn,
    temperature: float,
    *,
    generator: torch.Generator,
    block: int = 1,
    attempts: int = 1,
    max_draws: int = 10_000_000,
) -> SampleResult:
    """Draw one sample from P^(1/T)/Z exactly, using only draws from P.

    Args:
        draw: `draw(n)` returns n i.i.d. samples from P.
        temperature: T in (0, 1].
        generator: the RNG for the sampler's own coins (the draw function owns its RNG).
        block: stage-2 draws are requested `block` at a time and consumed in order; unused ones are
            thrown away (still exact: they are independent of everything that decided to stop).
        attempts: stage-1 attempts requested at once (n * attempts draws in one call) and tried in order;
            unused ones wait for the next restart. The same process as one attempt at a time, since no
            draw is looked at before it is consumed (a model draws many samples per pass).
        max_draws: give up with RuntimeError after this many consumed draws (P^(1/T) may be tiny).

    Returns:
        SampleResult(value, draws) where draws counts consumed draws (stage 1 draws n at once).
    """
    n, a = split_temperature(temperature)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    used = 0
    pending: list = []  # stage-1 draws fetched but not yet consumed
    while used < max_draws:
        # stage 1: n samples, all equal, accepts x with probability P(x)^n
        if not pending:
            pending = list(draw(n * attempts))
        first, pending = pending[:n], pending[n:]
        used += n
        x_star = first[0]
        if any(x != x_star for x in first[1:]):
            continue
        if a == 0.0:
            return SampleResult(x_star, used)
        # stage 2: Bernoulli factory returning with probability P(x*)^a
        i = 1
        restart = False
        while not restart:
            for x in draw(block):
                used += 1
                if x == x_star:
                    return SampleResult(x_star, used)
                if _uniform(generator) < a / i:
                    restart = True
                    break
                i += 1
    raise RuntimeError(f"exact_temperature_sample: no sample after max_draws={max_draws} draws")


def batch_temperature_sample(
    draw: DrawFn,
    temperature: float,
    batch_n: int,
    *,
    generator: torch.Generator,
) -> SampleResult:
    """Approximate sample from P^(1/T)/Z for T = 1/n from one batch of `batch_n` draws.

    For m = n, ..., 1, the distinct values drawn at least m times are candidates, weighted by C(c_x, m);
    the first m with a candidate wins. Biased for finite batch_n, consistent as batch_n grows.
    """
    n, a = split_temperature(temperature)
    if a != 0.0:
        raise ValueError(f"batch sampler needs temperature = 1/n for an integer n, got {temperature}")
    if batch_n < 1:
        raise ValueError(f"batch_n must be >= 1, got {batch_n}")
    counts = Counter(draw(batch_n))
    values = list(counts)
    for m in range(min(n, batch_n), 0, -1):
        weights = [math.comb(counts[v], m) for v in values]
        total = sum(weights)
        if total == 0:
            continue
        u = _uniform(generator) * total
        acc = 0.0
        for v, w in zip(values, weights):
            acc += w
            if u < acc:
                return SampleResult(v, batch_n)
        return SampleResult(values[-1], batch_n)
    raise AssertionError("unreachable: m = 1 always has a candidate")


def tempered_distribution(probs: np.ndarray, temperature: float) -> np.ndarray:
    """P^(1/T) / Z for a probability vector (K,) -> (K,)."""
    p = np.asarray(probs, dtype=np.float64) ** (1.0 / temperature)
    return p / p.sum()


def expected_exact_draws(probs: np.ndarray, temperature: float) -> float:
    """Mean number of draws the exact sampler consumes for a categorical P (see module docstring)."""
    n, a = split_temperature(temperature)
    p = np.asarray(probs, dtype=np.float64)
    p = p[p > 0]
    inv = 1.0 / temperature
    if a == 0.0:
        return float(n / np.sum(p**n))
    return float((n + np.sum(p ** (inv - 1.0))) / np.sum(p**inv))
