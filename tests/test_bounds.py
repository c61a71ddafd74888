"""The reference lines of protocols.bounds: known values, limits, a Monte-Carlo check, and a source of known
entropy through the estimator the experiments use."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocols.bounds import (
    finite_length_accuracy,
    finite_length_bits,
    rate_distortion_accuracy,
    simplex_success,
)
from protocols.separation import separation_bound_accuracy
from protocols.source_coding import TokenSourceModel


def test_finite_length_bits_match_the_normal_approximation_and_approach_capacity():
    sigma = 10 ** (-20 / 20)
    assert finite_length_bits(32, sigma, 0.01) == pytest.approx(95.6, abs=0.05)  # the audit's figure
    capacity = 0.5 * math.log2(1 + 1 / sigma**2)
    per_use = [finite_length_bits(n, sigma, 0.01) / n for n in (32, 512, 8192, 131072)]
    assert all(a < b for a, b in zip(per_use, per_use[1:])) and capacity - per_use[-1] < 0.01
    assert finite_length_bits(32, sigma, 0.1) > finite_length_bits(32, sigma, 0.001)  # more errors, more bits
    assert finite_length_bits(32, 10.0, 0.01) < 1.0  # -20 dB: hardly anything can be promised
    assert finite_length_bits(1, 10.0, 0.01) == 0.0


def test_finite_length_line_lies_below_the_lossless_prefix_at_capacity():
    for snr_db in (0, 10, 20):
        sigma = 10 ** (-snr_db / 20)
        capacity = 32 * 0.5 * math.log2(1 + 1 / sigma**2)
        assert finite_length_accuracy(32, sigma, 6.968, 32, 0.079) < separation_bound_accuracy(capacity, 6.968, 32, 0.079)


def test_rate_distortion_ceiling_known_values_and_limits():
    capacity = 32 * 0.5 * math.log2(1 + 100)  # n = 32 at 20 dB
    assert rate_distortion_accuracy(capacity, 6.968, 32, 8192) == pytest.approx(0.779, abs=0.001)  # the audit's
    assert rate_distortion_accuracy(32 * 7.0, 6.968, 32, 8192) == 1.0
    # zero capacity: the accuracy a whose distortion alone covers the entropy (h(D) + D log2(V - 1) = H)
    a = rate_distortion_accuracy(0.0, 6.968, 32, 8192)
    D = 1 - a
    assert -D * math.log2(D) - a * math.log2(a) + D * math.log2(8191) == pytest.approx(6.968, abs=1e-6)
    # a uniform source over V symbols: at zero capacity the best is a guess, at capacity L log2 V everything
    assert rate_distortion_accuracy(0.0, math.log2(16), 4, 16) == pytest.approx(1 / 16)
    grid = [rate_distortion_accuracy(c, 6.968, 32, 8192) for c in np.linspace(0, 230, 24)]
    assert all(a <= b + 1e-12 for a, b in zip(grid, grid[1:]))
    # the ceiling is above what lossless prefix coding at capacity promises (it bounds every scheme)
    for c in np.linspace(10, 200, 12):
        assert rate_distortion_accuracy(c, 6.968, 32, 8192) >= separation_bound_accuracy(c, 6.968, 32, 1 / 8192)


def test_simplex_success_matches_monte_carlo_and_its_limits():
    rng = np.random.default_rng(0)
    C, n = 8, 8
    points = np.eye(C) - 1.0 / C
    points *= math.sqrt(n) / np.linalg.norm(points, axis=1, keepdims=True)  # energy n: unit power per use
    for snr_db in (-5.0, 0.0):
        sigma = 10 ** (-snr_db / 20)
        received = points[0] + sigma * rng.standard_normal((100_000, C))
        hits = float((np.argmax(received @ points.T, axis=1) == 0).mean())
        assert simplex_success(n, sigma, C) == pytest.approx(hits, abs=4 * math.sqrt(hits * (1 - hits) / 1e5))
    assert simplex_success(32, 0.0, 8) == 1.0
    assert simplex_success(32, 1e5, 8) == pytest.approx(1 / 8, abs=1e-4)
    assert simplex_success(32, 1.0, 8) > simplex_success(8, 1.0, 8)  # more energy, more success
    with pytest.raises(ValueError, match="needs n >= 15"):
        simplex_success(8, 1.0, 16)


def test_lines_from_a_source_of_known_entropy():
    """The estimator the experiments feed the lines (TokenSourceModel.entropy_rate on held-out passages) finds a
    synthetic i.i.d. source's known entropy, so the lines come out where the exact entropy puts them."""
    rng = np.random.default_rng(1)
    V, L = 64, 32
    p = rng.dirichlet(np.full(V, 0.3))
    exact = float(-(p * np.log2(p)).sum())
    draw = lambda N: rng.choice(V, size=(N, L), p=p)  # noqa: E731
    estimate = TokenSourceModel(V, "unigram").fit(draw(4000)).entropy_rate(draw(2000))
    assert estimate == pytest.approx(exact, rel=0.01)
    capacity = 32 * 0.5 * math.log2(1 + 10)
    assert separation_bound_accuracy(capacity, estimate, L) == pytest.approx(separation_bound_accuracy(capacity, exact, L), rel=0.02)
    assert rate_distortion_accuracy(capacity, estimate, L, V) == pytest.approx(rate_distortion_accuracy(capacity, exact, L, V), abs=0.01)
