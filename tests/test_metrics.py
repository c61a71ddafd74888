"""protocols.metrics: hand-computed values, invariants and bad input."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.metrics import (
    binary_entropy,
    capacity_bits,
    efficiency,
    fano_delivered_bits,
    snr,
    snr_db,
    wilson_interval,
)


def test_snr_known_values():
    assert snr(0.5) == pytest.approx(4.0)
    assert snr(1.0) == pytest.approx(1.0)
    assert snr_db(0.1) == pytest.approx(20.0)
    assert snr_db(1.0) == pytest.approx(0.0)
    assert snr_db(10.0) == pytest.approx(-20.0)
    # 10 log10 SNR and -20 log10 sigma are the same number
    assert snr_db(0.37) == pytest.approx(10 * math.log10(snr(0.37)))
    assert snr(0.0) == math.inf and snr_db(0.0) == math.inf


def test_capacity_known_values():
    # SNR 1 -> 0.5 bit per use
    assert capacity_bits(10, 1.0) == pytest.approx(5.0)
    # SNR 3 -> 0.5 log2 4 = 1 bit per use
    assert capacity_bits(4, 1 / math.sqrt(3)) == pytest.approx(4.0)
    # SNR 1/100 -> 0.5 log2 1.01
    assert capacity_bits(1, 10.0) == pytest.approx(0.5 * math.log2(1.01))
    assert capacity_bits(0, 0.3) == 0.0
    assert capacity_bits(7, 0.0) == math.inf


def test_binary_entropy_known_values():
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.25) == pytest.approx(0.8112781244591328)
    assert binary_entropy(0.0) == 0.0 and binary_entropy(1.0) == 0.0


def test_fano_known_values():
    assert fano_delivered_bits(1.0, 8) == pytest.approx(3.0)
    # C = 2, a = 0.75: 1 - H_b(0.25)
    assert fano_delivered_bits(0.75, 2) == pytest.approx(1 - 0.8112781244591328)
    # C = 4, a = 0.5: 2 - H_b(0.5) - 0.5 log2 3
    assert fano_delivered_bits(0.5, 4) == pytest.approx(2 - 1 - 0.5 * math.log2(3))
    # chance and below: floored at 0
    assert fano_delivered_bits(0.25, 4) == 0.0
    assert fano_delivered_bits(0.1, 4) == 0.0
    assert fano_delivered_bits(0.0, 2) == 0.0


@settings(max_examples=200, deadline=None, derandomize=True)
@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0), c=st.integers(2, 10_000))
def test_fano_monotone_and_bounded(a, b, c):
    lo, hi = sorted((a, b))
    f_lo, f_hi = fano_delivered_bits(lo, c), fano_delivered_bits(hi, c)
    assert 0.0 <= f_lo <= f_hi + 1e-12
    assert f_hi <= math.log2(c) + 1e-12


def test_efficiency():
    assert efficiency(2.0, 4.0) == pytest.approx(0.5)
    assert efficiency(0.0, 4.0) == 0.0
    assert efficiency(3.0, math.inf) == 0.0
    with pytest.raises(ValueError, match="capacity"):
        efficiency(1.0, 0.0)
    with pytest.raises(ValueError, match="delivered_bits"):
        efficiency(-1.0, 2.0)


def test_wilson_known_values():
    # 5 / 10 at z = 1.96, by hand: centre 0.5, half-width 1.96 sqrt(0.025 + 0.009604) / 1.38416
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2365895, abs=1e-6)
    assert high == pytest.approx(0.7634105, abs=1e-6)
    # 0 / 10: [0, z^2 / (n + z^2)]
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(1.96**2 / (10 + 1.96**2))
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(10 / (10 + 1.96**2))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(trials=st.integers(1, 100_000), frac=st.floats(0.0, 1.0))
def test_wilson_contains_estimate_and_narrows(trials, frac):
    successes = round(frac * trials)
    low, high = wilson_interval(successes, trials)
    p = successes / trials
    assert 0.0 <= low <= p <= high <= 1.0
    # four times the trials at the same rate: a narrower interval
    low4, high4 = wilson_interval(4 * successes, 4 * trials)
    assert high4 - low4 < high - low


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: snr(-0.1), "sigma"),
        (lambda: snr_db(-1.0), "sigma"),
        (lambda: snr(float("nan")), "sigma"),
        (lambda: capacity_bits(4, -0.5), "sigma"),
        (lambda: capacity_bits(-1, 0.5), "n"),
        (lambda: capacity_bits(2.5, 0.5), "n"),
        (lambda: fano_delivered_bits(0.5, 1), "candidates"),
        (lambda: fano_delivered_bits(1.5, 4), "accuracy"),
        (lambda: binary_entropy(-0.1), "p"),
        (lambda: wilson_interval(3, 0), "trials"),
        (lambda: wilson_interval(11, 10), "successes"),
        (lambda: wilson_interval(-1, 10), "successes"),
        (lambda: wilson_interval(1, 10, z=0.0), "z"),
    ],
)
def test_bad_input_names_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()
