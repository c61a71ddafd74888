"""Channel models: statistics, determinism under a seed, quantiser levels, and parameter checks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from environments.channels import AWGN, Chain, Channel, Erasure, Quantize

NUM = 200_000  # symbols per statistics test: sampling error of a variance ~ sqrt(2 / NUM) = 0.3%


def unit_symbols(seed: int = 0, shape: tuple[int, ...] = (NUM // 100, 100)) -> np.ndarray:
    """Unit-power float32 test symbols (B, n)."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


# ---------------------------------------------------------------- AWGN


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 3.0])
def test_awgn_noise_variance_is_sigma_squared(sigma: float) -> None:
    x = unit_symbols()
    y = AWGN(sigma)(x, np.random.default_rng(1))
    assert y.dtype == np.float32 and y.shape == x.shape
    noise = (y - x).astype(np.float64)
    # 5 standard errors of the variance estimate, sigma^2 sqrt(2 / NUM)
    assert abs(noise.var() / sigma**2 - 1) < 5 * math.sqrt(2 / NUM)
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(NUM)
    # independent of the signal
    assert abs(np.corrcoef(noise.ravel(), x.ravel())[0, 1]) < 5 / math.sqrt(NUM)


def test_awgn_zero_sigma_is_identity_and_helpers() -> None:
    x = unit_symbols(shape=(4, 8))
    np.testing.assert_array_equal(AWGN(0.0)(x, np.random.default_rng(0)), x)
    assert AWGN(0.1).noise_power == pytest.approx(0.01)
    assert AWGN(0.1).snr() == pytest.approx(100.0)
    # SNR_dB = -20 log10 sigma at unit power (DESIGN.md section 3)
    assert AWGN(0.1).snr_db() == pytest.approx(20.0)
    assert AWGN(2.0).snr_db() == pytest.approx(-20 * math.log10(2.0))
    assert AWGN(0.5).snr_db(signal_power=4.0) == pytest.approx(10 * math.log10(16.0))
    assert AWGN(0.0).snr_db() == math.inf
    assert AWGN(0.5).output_power(1.0) == pytest.approx(1.25)


def test_same_generator_seed_same_noise() -> None:
    x = unit_symbols(shape=(8, 16))
    for channel in [AWGN(0.7), Erasure(0.3), Chain([AWGN(0.2), Erasure(0.5)])]:
        a = channel(x, np.random.default_rng(123))
        b = channel(x, np.random.default_rng(123))
        c = channel(x, np.random.default_rng(124))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c), channel


# ---------------------------------------------------------------- erasure


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_erasure_rate_is_p(p: float) -> None:
    # no zeros in the input, so every zero in the output is an erasure
    x = np.abs(unit_symbols()) + np.float32(0.5)
    y = Erasure(p)(x, np.random.default_rng(2))
    assert y.dtype == np.float32 and y.shape == x.shape
    erased = y == 0
    assert abs(erased.mean() - p) <= 5 * math.sqrt(p * (1 - p) / NUM)
    # what is not erased is untouched
    np.testing.assert_array_equal(y[~erased], x[~erased])
    assert Erasure(p).output_power(2.0) == pytest.approx(2.0 * (1 - p))


# ---------------------------------------------------------------- quantiser


@pytest.mark.parametrize("bits,clip", [(1, 1.0), (2, 1.5), (3, 2.0), (8, 3.0)])
def test_quantize_levels(bits: int, clip: float) -> None:
    q = Quantize(bits, clip)
    ramp = np.linspace(-2 * clip, 2 * clip, 50_001, dtype=np.float32)
    y = q(ramp, np.random.default_rng(0))
    assert y.dtype == np.float32 and y.shape == ramp.shape
    levels = np.unique(y)
    # exactly 2**bits evenly spaced levels from -clip to clip, all used by a dense ramp
    assert levels.size == 2**bits
    np.testing.assert_allclose(levels, q.levels, atol=1e-6)
    np.testing.assert_allclose(np.diff(levels), q.step, rtol=1e-5)
    assert levels[0] == pytest.approx(-clip) and levels[-1] == pytest.approx(clip)
    # monotone, error at most half a step inside the range, saturation outside
    assert np.all(np.diff(y) >= 0)
    inside = np.abs(ramp) <= clip
    assert np.max(np.abs(y[inside] - ramp[inside])) <= q.step / 2 + 1e-5
    np.testing.assert_allclose(y[ramp > clip], clip)
    np.testing.assert_allclose(y[ramp < -clip], -clip)


def test_one_bit_quantizer_is_the_sign() -> None:
    x = unit_symbols(shape=(16, 16))
    y = Quantize(1, 1.0)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(y, np.where(x >= 0, 1.0, -1.0).astype(np.float32))


def test_quantize_noise_power_matches_uniform_error_model() -> None:
    # uniform input inside the range: the error is uniform on [-step/2, step/2], power step^2/12
    q = Quantize(4, 2.0)
    x = np.random.default_rng(3).uniform(-2.0, 2.0, NUM).astype(np.float32)
    err = (q(x, np.random.default_rng(0)) - x).astype(np.float64)
    assert err.var() == pytest.approx(q.noise_power, rel=0.03)


@settings(max_examples=50, deadline=None)
@given(
    bits=st.integers(1, 12),
    clip=st.floats(0.01, 100.0),
    values=st.lists(st.floats(-1.0, 1.0, width=32), min_size=1, max_size=64),
)
def test_quantize_property(bits: int, clip: float, values: list[float]) -> None:
    q = Quantize(bits, clip)
    x = (np.asarray(values, dtype=np.float32) * np.float32(clip)).astype(np.float32)
    y = q(x, np.random.default_rng(0))
    # every output is a level and within half a step of its (in-range) input
    assert np.min(np.abs(y[:, None] - q.levels[None, :]), axis=1).max() <= 1e-6 * max(clip, 1.0)
    assert np.abs(y - x).max() <= q.step / 2 * (1 + 1e-5) + 1e-6 * clip


# ---------------------------------------------------------------- chain


def test_chain_applies_stages_in_order_with_one_generator() -> None:
    x = unit_symbols(shape=(32, 32))
    stages = [AWGN(0.3), Quantize(3, 2.0), Erasure(0.2)]
    y = Chain(stages)(x, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    expected = x
    for stage in stages:
        expected = stage(expected, rng)
    np.testing.assert_array_equal(y, expected)
    assert set(np.unique(y)) <= set(np.concatenate([Quantize(3, 2.0).levels, [0.0]]).tolist())


def test_chain_of_awgn_adds_variances_and_composes_power() -> None:
    x = unit_symbols()
    y = Chain([AWGN(0.3), AWGN(0.4)])(x, np.random.default_rng(6))
    assert (y - x).astype(np.float64).var() == pytest.approx(0.25, rel=5 * math.sqrt(2 / NUM))
    chain = Chain([AWGN(0.5), Erasure(0.2)])
    assert chain.output_power(1.0) == pytest.approx(0.8 * 1.25)
    assert isinstance(chain, Channel) and isinstance(AWGN(0.1), Channel)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "build,field",
    [
        (lambda: AWGN(-0.1), "sigma"),
        (lambda: AWGN(float("nan")), "sigma"),
        (lambda: AWGN(float("inf")), "sigma"),
        (lambda: AWGN("0.1"), "sigma"),
        (lambda: AWGN(True), "sigma"),
        (lambda: Erasure(-0.01), "p"),
        (lambda: Erasure(1.01), "p"),
        (lambda: Erasure(float("nan")), "p"),
        (lambda: Quantize(0, 1.0), "bits"),
        (lambda: Quantize(25, 1.0), "bits"),
        (lambda: Quantize(2.5, 1.0), "bits"),
        (lambda: Quantize(4, 0.0), "clip"),
        (lambda: Quantize(4, -1.0), "clip"),
        (lambda: Chain([]), "channels"),
        (lambda: Chain([AWGN(0.1), "noise"]), "channels"),
        (lambda: Chain(AWGN(0.1)), "channels"),
    ],
)
def test_bad_parameters_name_the_field(build, field: str) -> None:
    with pytest.raises(ValueError, match=rf"\.{field}\b"):
        build()


def test_negative_sigma_message_states_the_range() -> None:
    with pytest.raises(ValueError, match=r"AWGN\.sigma must be >= 0.*-0\.5"):
        AWGN(-0.5)
    with pytest.raises(ValueError, match=r"Erasure\.p must be in \[0, 1\].*1\.5"):
        Erasure(1.5)


@pytest.mark.parametrize("channel", [AWGN(0.1), Erasure(0.1), Quantize(2, 1.0), Chain([AWGN(0.1)])])
def test_bad_call_arguments(channel) -> None:
    x = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="float32"):
        channel(x.astype(np.float64), np.random.default_rng(0))
    with pytest.raises(ValueError, match="float32"):
        channel(x.tolist(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        channel(x, 0)


def test_channels_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        AWGN(0.1).sigma = 0.2
