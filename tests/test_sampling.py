"""Temperature samplers against exact tempered distributions of toy categoricals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calm.sampling import (
    batch_temperature_sample,
    exact_temperature_sample,
    expected_exact_draws,
    split_temperature,
    tempered_distribution,
)

P = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])


def make_draw(probs: np.ndarray, seed: int):
    """A draw function for a known categorical: draw(n) -> n ints."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(probs)

    def draw(n: int) -> list[int]:
        return np.searchsorted(cdf, rng.random(n), side="right").clip(max=len(probs) - 1).tolist()

    return draw


def empirical(values: list[int], k: int) -> np.ndarray:
    return np.bincount(np.asarray(values), minlength=k) / len(values)


def tv(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.4, 0.7, 1 / 3])
def test_exact_sampler_matches_tempered_distribution(temperature):
    draw = make_draw(P, seed=1)
    g = torch.Generator().manual_seed(2)
    results = [exact_temperature_sample(draw, temperature, generator=g) for _ in range(12_000)]
    got = empirical([r.value for r in results], len(P))
    want = tempered_distribution(P, temperature)
    assert tv(got, want) < 0.02, (got, want)
    # the mean number of draws matches the closed form (module docstring) within 10%
    mean_draws = np.mean([r.draws for r in results])
    expected = expected_exact_draws(P, temperature)
    assert abs(mean_draws - expected) / expected < 0.10, (mean_draws, expected)


def test_exact_sampler_batched_draws_are_still_exact():
    """Stage-2 draws in blocks and stage-1 attempts in batches (as generation does) change nothing."""
    draw = make_draw(P, seed=3)
    g = torch.Generator().manual_seed(4)
    results = [exact_temperature_sample(draw, 0.4, generator=g, block=4, attempts=8) for _ in range(12_000)]
    assert tv(empirical([r.value for r in results], len(P)), tempered_distribution(P, 0.4)) < 0.02
    mean_draws = np.mean([r.draws for r in results])
    assert abs(mean_draws / expected_exact_draws(P, 0.4) - 1) < 0.10


def test_expected_draws_formula_known_values():
    # T = 1: one draw always; T = 1/2 on a fair coin: stage 1 succeeds with prob 1/2 -> 4 draws
    assert expected_exact_draws(P, 1.0) == pytest.approx(1.0)
    assert expected_exact_draws(np.array([0.5, 0.5]), 0.5) == pytest.approx(4.0)
    # a point mass needs exactly n (+1 for the stage-2 draw) draws
    assert expected_exact_draws(np.array([1.0]), 0.4) == pytest.approx(3.0)


def test_batch_sampler_converges_with_batch_size():
    temperature = 0.5
    want = tempered_distribution(P, temperature)
    errors = {}
    for batch_n in (2, 8, 256):
        draw = make_draw(P, seed=batch_n)
        g = torch.Generator().manual_seed(batch_n)
        values = [batch_temperature_sample(draw, temperature, batch_n, generator=g).value for _ in range(6000)]
        errors[batch_n] = tv(empirical(values, len(P)), want)
    # batch 2 with T=1/2 is close to plain sampling (biased); large batches approach P^2/Z
    assert errors[256] < errors[8] < errors[2], errors
    assert errors[256] < 0.03, errors
    assert errors[2] > 0.05, errors


def test_batch_sampler_temperature_one_is_plain_sampling():
    draw = make_draw(P, seed=5)
    g = torch.Generator().manual_seed(6)
    values = [batch_temperature_sample(draw, 1.0, 4, generator=g).value for _ in range(10_000)]
    assert tv(empirical(values, len(P)), P) < 0.02


def test_bad_temperatures_raise():
    with pytest.raises(ValueError, match="temperature"):
        split_temperature(0.0)
    with pytest.raises(ValueError, match="temperature"):
        split_temperature(1.5)
    with pytest.raises(ValueError, match="1/n"):
        batch_temperature_sample(make_draw(P, 0), 0.4, 8, generator=torch.Generator())
    assert split_temperature(1 / 3) == (3, 0.0)
    n, a = split_temperature(0.4)
    assert n == 2 and a == pytest.approx(0.5)
