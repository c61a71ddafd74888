"""Channel models: statistics, determinism under a seed, quantiser levels, fading, likelihoods,
capacities, and parameter checks."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from environments.channels import (
    AWGN,
    LOG_FLOOR,
    Chain,
    Channel,
    Erasure,
    Quantize,
    RayleighBlockFading,
    log_ndtr,
    log_normal_interval,
)

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


# ---------------------------------------------------------------- pinned draws


def test_existing_channels_draw_as_before() -> None:
    # the outputs for a seed are pinned: AWGN draws float32 normals of x's shape, Erasure uniforms
    x = unit_symbols(shape=(8, 16))
    expected = x + np.float32(0.5) * np.random.default_rng(3).standard_normal(x.shape, dtype=np.float32)
    np.testing.assert_array_equal(AWGN(0.5)(x, np.random.default_rng(3)), expected)
    erased = np.random.default_rng(3).random(x.shape) < 0.3
    np.testing.assert_array_equal(Erasure(0.3)(x, np.random.default_rng(3)), np.where(erased, 0, x))


# ---------------------------------------------------------------- fading


def test_fading_gain_has_unit_mean_power() -> None:
    x = np.ones((NUM // 100, 100), dtype=np.float32)
    y, gain = RayleighBlockFading(0.0, block_length=1).transmit(x, np.random.default_rng(7))
    assert gain.dtype == np.float32 and gain.shape == x.shape and (gain >= 0).all()
    g = gain.astype(np.float64) ** 2  # Exponential(1): mean 1, variance 1
    assert abs(g.mean() - 1) < 5 / math.sqrt(NUM)
    assert abs((g > 1).mean() - math.exp(-1)) < 5 * math.sqrt(0.25 / NUM)
    np.testing.assert_array_equal(y, gain)  # sigma = 0: y = h x exactly


def test_fading_blocks_are_constant_inside_and_independent_across() -> None:
    B, n, block = 4000, 10, 4  # blocks [0, 4), [4, 8) and the partial [8, 10)
    x = np.ones((B, n), dtype=np.float32)
    _, gain = RayleighBlockFading(0.3, block_length=block).transmit(x, np.random.default_rng(8))
    for start in range(0, n, block):
        blk = gain[:, start : start + block]
        np.testing.assert_array_equal(blk, np.repeat(blk[:, :1], blk.shape[1], axis=1))
    first, second, last = gain[:, 0] ** 2, gain[:, 4] ** 2, gain[:, 8] ** 2
    assert np.all(first != second) and np.all(second != last)
    # independent across blocks and across rows: correlations within 5 standard errors of 0
    for a, b in [(first, second), (second, last), (first[1:], first[:-1])]:
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(B)


@pytest.mark.parametrize("block_length", [None, 16, 100])
def test_fading_one_gain_per_row(block_length) -> None:
    x = unit_symbols(shape=(64, 16))
    _, gain = RayleighBlockFading(0.2, block_length=block_length).transmit(x, np.random.default_rng(9))
    np.testing.assert_array_equal(gain, np.repeat(gain[:, :1], 16, axis=1))
    assert np.unique(gain[:, 0]).size == 64


def test_fading_shapes() -> None:
    channel = RayleighBlockFading(0.1, block_length=2)
    for shape in [(), (5,), (3, 5), (2, 3, 5), (4, 0)]:
        x = np.ones(shape, dtype=np.float32)
        y, gain = channel.transmit(x, np.random.default_rng(0))
        assert y.shape == gain.shape == shape and y.dtype == gain.dtype == np.float32
    # the last axis is the message: a (2, 3, 5) batch fades like its (6, 5) reshape
    x = unit_symbols(shape=(2, 3, 5))
    a = channel.transmit(x, np.random.default_rng(4))
    b = channel.transmit(x.reshape(6, 5), np.random.default_rng(4))
    np.testing.assert_array_equal(a[0].reshape(6, 5), b[0])
    np.testing.assert_array_equal(a[1].reshape(6, 5), b[1])


@pytest.mark.parametrize("sigma", [0.1, 0.7])
def test_fading_gain_is_the_true_gain(sigma: float) -> None:
    # what is left after removing gain * x is the noise: variance sigma^2, independent of x
    x = unit_symbols()
    channel = RayleighBlockFading(sigma, block_length=5)
    y, gain = channel.transmit(x, np.random.default_rng(10))
    noise = (y - gain * x).astype(np.float64)
    assert abs(noise.var() / sigma**2 - 1) < 5 * math.sqrt(2 / NUM)
    assert abs(np.corrcoef(noise.ravel(), x.ravel())[0, 1]) < 5 / math.sqrt(NUM)
    assert np.mean(np.square(y, dtype=np.float64)) == pytest.approx(channel.output_power(1.0), rel=0.02)
    assert channel.noise_power == pytest.approx(sigma**2)


# ---------------------------------------------------------------- transmit


ALL_CHANNELS = [
    AWGN(0.7),
    AWGN(0.0),
    Erasure(0.3),
    Quantize(3, 2.0),
    RayleighBlockFading(0.5),
    RayleighBlockFading(0.5, block_length=3),
    Chain([AWGN(0.2), Erasure(0.5)]),
    Chain([RayleighBlockFading(0.3, block_length=4), AWGN(0.1), Quantize(4, 2.0)]),
    Chain([Chain([Erasure(0.1), RayleighBlockFading(0.2)]), RayleighBlockFading(0.0, block_length=2)]),
]


@pytest.mark.parametrize("channel", ALL_CHANNELS, ids=repr)
def test_transmit_matches_call_bit_for_bit(channel) -> None:
    x = unit_symbols(shape=(8, 16))
    rng_a, rng_b = np.random.default_rng(123), np.random.default_rng(123)
    y = channel(x, rng_a)
    y2, gain = channel.transmit(x, rng_b)
    assert isinstance(channel, Channel)
    np.testing.assert_array_equal(y, y2)
    # the same draws: both generators are left in the same state
    assert rng_a.integers(2**62) == rng_b.integers(2**62)
    assert gain.dtype == np.float32 and gain.shape == x.shape and (gain >= 0).all()
    if not isinstance(channel, RayleighBlockFading) and "Fading" not in repr(channel):
        np.testing.assert_array_equal(gain, np.ones_like(x))
    np.testing.assert_array_equal(channel.transmit(x, np.random.default_rng(123))[1], gain)


def test_chain_gain_is_the_product_of_its_stages() -> None:
    x = np.ones((200, 12), dtype=np.float32)
    stages = [RayleighBlockFading(0.0, block_length=3), AWGN(0.0), RayleighBlockFading(0.0, block_length=4)]
    y, gain = Chain(stages).transmit(x, np.random.default_rng(11))
    rng = np.random.default_rng(11)
    expected = np.ones_like(x)
    for stage in stages:
        _, g = stage.transmit(x, rng)
        expected = expected * g
    np.testing.assert_array_equal(gain, expected)
    np.testing.assert_allclose(y, gain * x, rtol=1e-6)


# ---------------------------------------------------------------- likelihoods


def normal_logpdf(y: float, mean: float, sigma: float) -> float:
    """The exact normal log-density, written out."""
    return -0.5 * ((y - mean) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))


def assert_differences_match(channel, y, x1, x2, brute, gain=None) -> None:
    """ll(y | x1) - ll(y | x2) matches the brute-force density's to 1e-9 relative."""
    ours = channel.log_likelihood(y, x1, gain) - channel.log_likelihood(y, x2, gain)
    reference = np.array(
        [brute(*args) for args in zip(y, x1, *(() if gain is None else (gain,)))]
    ) - np.array([brute(*args) for args in zip(y, x2, *(() if gain is None else (gain,)))])
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-12)


def draws(seed: int, size: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 1.2, size), rng.normal(0, 1, size), rng.normal(0, 1, size))


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5])
def test_awgn_and_fading_likelihoods_match_the_normal_density(sigma: float) -> None:
    y, x1, x2 = draws(0)
    assert_differences_match(AWGN(sigma), y, x1, x2, lambda y, x: normal_logpdf(y, x, sigma))
    gain = np.sqrt(np.random.default_rng(1).exponential(size=y.size))
    fading = RayleighBlockFading(sigma, block_length=2)
    assert_differences_match(fading, y, x1, x2, lambda y, x, g: normal_logpdf(y, g * x, sigma), gain)
    # None means unit gain
    np.testing.assert_array_equal(fading.log_likelihood(y, x1), AWGN(sigma).log_likelihood(y, x1))
    np.testing.assert_array_equal(
        Chain([fading]).log_likelihood(y, x1, gain), fading.log_likelihood(y, x1, gain)
    )


@pytest.mark.parametrize("p,sigma", [(0.0, 0.5), (0.2, 0.5), (0.5, 1.0), (0.9, 0.3), (1.0, 0.5)])
def test_erasure_then_noise_likelihood_is_the_mixture(p: float, sigma: float) -> None:
    y, x1, x2 = draws(2)

    def brute(y: float, x: float) -> float:
        density = p * math.exp(normal_logpdf(y, 0.0, sigma)) + (1 - p) * math.exp(normal_logpdf(y, x, sigma))
        return math.log(density)

    assert_differences_match(Chain([Erasure(p), AWGN(sigma)]), y, x1, x2, brute)
    # nested chains are flattened
    nested = Chain([Chain([Erasure(p)]), AWGN(sigma)])
    np.testing.assert_array_equal(
        nested.log_likelihood(y, x1), Chain([Erasure(p), AWGN(sigma)]).log_likelihood(y, x1)
    )


@pytest.mark.parametrize("p,sigma", [(0.0, 0.5), (0.3, 0.5), (0.7, 2.0), (1.0, 1.0)])
def test_noise_then_erasure_likelihood(p: float, sigma: float) -> None:
    y, x1, x2 = draws(3)
    y[::3] = 0.0  # erased symbols
    channel = Chain([AWGN(sigma), Erasure(p)])

    def brute(y: float, x: float) -> float:
        if p == 1.0 or y == 0.0:
            return 0.0  # log P(erased), the same for every x
        return math.log(1 - p) + normal_logpdf(y, x, sigma)

    assert_differences_match(channel, y, x1, x2, brute)


@pytest.mark.parametrize("bits,clip,sigma", [(1, 1.0, 0.5), (2, 1.5, 0.3), (3, 1.5, 0.5), (4, 2.0, 1.0)])
def test_noise_then_quantiser_likelihood_is_the_cell_probability(
    bits: int, clip: float, sigma: float
) -> None:
    q = Quantize(bits, clip)
    channel = Chain([AWGN(sigma), q])
    rng = np.random.default_rng(4)
    x1, x2 = rng.normal(0, 1, 400), rng.normal(0, 1, 400)
    y = q(rng.normal(0, 1.2, 400).astype(np.float32), rng).astype(np.float64)  # levels
    # the channel's cells: midpoints between the float64 levels it rounds to
    levels = (-clip + q.step * np.arange(q.num_levels)).tolist()

    def brute(y: float, x: float) -> float:
        k = int(np.argmin([abs(y - level) for level in levels]))
        lo = -math.inf if k == 0 else (levels[k - 1] + levels[k]) / 2
        hi = math.inf if k == len(levels) - 1 else (levels[k] + levels[k + 1]) / 2

        def cdf(t: float) -> float:
            return (
                0.5 * (1 + math.erf((t - x) / (sigma * math.sqrt(2)))) if math.isfinite(t) else float(t > 0)
            )

        prob = cdf(hi) - cdf(lo)
        return math.log(prob) if prob > 0 else -math.inf

    # keep cells of probability >= 1e-4 for both candidates: erf differences are exact to 1e-12 there
    keep = np.array([min(brute(*a), brute(y_, b)) > math.log(1e-4) for a, y_, b in zip(zip(y, x1), y, x2)])
    assert keep.sum() > 150
    assert_differences_match(channel, y[keep], x1[keep], x2[keep], brute)


def test_cell_likelihood_is_finite_and_ordered_in_the_tails() -> None:
    # far from the cell the probability underflows double precision: floored, never -inf or nan
    channel = Chain([AWGN(0.01), Quantize(3, 1.0)])
    y = np.full(7, channel.channels[1].levels[4], dtype=np.float32)
    x = np.array([-1e6, -3.0, -1.0, 0.0, 1.0, 3.0, 1e6])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero or invalid-value warnings either
        ll = channel.log_likelihood(y, x)
    assert np.isfinite(ll).all() and (ll >= LOG_FLOOR).all()
    near = channel.log_likelihood(y[:4], np.array([0.1, 0.2, 0.4, 0.6]))
    assert np.all(np.diff(near) <= 0) and near[0] > LOG_FLOOR


def test_log_ndtr_matches_erfc_and_its_asymptotic_series() -> None:
    x = np.concatenate([np.linspace(-37, 8, 20_001), -np.geomspace(1e-8, 1, 100), np.geomspace(1e-8, 1, 100)])
    expected = np.array([math.log(0.5 * math.erfc(-v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(log_ndtr(x), expected, rtol=1e-13, atol=1e-15)
    # below -37 Phi underflows: ln Phi(x) = -x^2/2 - ln(-x sqrt(2 pi)) + ln(1 - 1/x^2 + 3/x^4 - 15/x^6 ...)
    far = -np.geomspace(40, 1e6, 200)
    series = 1 - 1 / far**2 + 3 / far**4 - 15 / far**6 + 105 / far**8
    np.testing.assert_allclose(
        log_ndtr(far), -0.5 * far**2 - np.log(-far * math.sqrt(2 * math.pi)) + np.log(series), rtol=1e-14
    )
    assert log_ndtr(np.array([-np.inf]))[0] == -np.inf and log_ndtr(np.array([np.inf]))[0] == 0.0


def test_log_normal_interval_narrow_and_wide_cells() -> None:
    # a cell of width w at m: ln(Phi(b) - Phi(a)) against erf differences where those are exact
    rng = np.random.default_rng(5)
    a = rng.uniform(-4, 4, 500)
    b = a + np.exp(rng.uniform(math.log(1e-6), math.log(5), 500))
    expected = [
        math.log(0.5 * (math.erf(hi / math.sqrt(2)) - math.erf(lo / math.sqrt(2)))) for lo, hi in zip(a, b)
    ]
    prob = np.exp(expected)
    keep = prob > 1e-5  # erf differences lose 1e-16 / prob relative
    np.testing.assert_allclose(
        log_normal_interval(a, b)[keep], np.array(expected)[keep], rtol=1e-9, atol=1e-9
    )
    # reflection symmetry and the whole line
    np.testing.assert_allclose(log_normal_interval(a, b), log_normal_interval(-b, -a), rtol=1e-12)
    assert log_normal_interval(np.array([-np.inf]), np.array([np.inf]))[0] == 0.0


NOISELESS = [
    AWGN(0.0),
    Erasure(0.3),
    Erasure(0.0),
    Quantize(4, 2.0),
    RayleighBlockFading(0.0, block_length=4),
    Chain([Erasure(0.4), AWGN(0.0)]),
    Chain([AWGN(0.0), Erasure(0.4)]),
    Chain([AWGN(0.0), Quantize(4, 2.0)]),
]


@pytest.mark.parametrize("channel", NOISELESS, ids=repr)
def test_noiseless_conventions_rank_the_exact_match_first(channel) -> None:
    B, C, n = 200, 8, 16
    rng = np.random.default_rng(6)
    candidates = rng.standard_normal((B, C, n), dtype=np.float32)
    answer = rng.integers(0, C, B)
    y, gain = channel.transmit(candidates[np.arange(B), answer], rng)  # (B, n)
    ll = channel.log_likelihood(y[:, None, :], candidates, gain[:, None, :])  # (B, C, n)
    assert ll.shape == (B, C, n) and ll.dtype == np.float64
    np.testing.assert_array_equal(ll.sum(-1).argmax(1), answer)
    # float32 rounding of y = h x, seen through the narrow noiseless Gaussian
    np.testing.assert_allclose(ll.sum(-1)[np.arange(B), answer], 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "channel",
    [
        Chain([Quantize(3, 1.0), AWGN(0.1)]),
        Chain([AWGN(0.1), AWGN(0.1)]),
        Chain([RayleighBlockFading(0.1), AWGN(0.1)]),
        Chain([AWGN(0.1), Quantize(3, 1.0), Erasure(0.1)]),
        Chain([Erasure(0.1), Erasure(0.1)]),
    ],
    ids=repr,
)
def test_unsupported_chain_likelihoods_raise(channel) -> None:
    with pytest.raises(NotImplementedError, match=r"Chain\(.*supported chains: a single stage"):
        channel.log_likelihood(np.zeros(3), np.zeros(3))


def test_likelihoods_broadcast_candidates() -> None:
    B, C, n = 3, 5, 7
    rng = np.random.default_rng(7)
    y, x = rng.standard_normal((B, 1, n)), rng.standard_normal((B, C, n))
    gain = np.abs(rng.standard_normal((B, 1, n)))
    for channel in [
        *ALL_CHANNELS[:6],
        Chain([Erasure(0.2), AWGN(0.5)]),
        Chain([AWGN(0.3), Quantize(2, 1.0)]),
    ]:
        ll = channel.log_likelihood(y, x, gain)
        assert ll.shape == (B, C, n) and np.isfinite(ll).all(), channel
        # row b, candidate c is the likelihood of that pair alone
        np.testing.assert_allclose(ll[1, 2], channel.log_likelihood(y[1, 0], x[1, 2], gain[1, 0]))


def accuracy(channel, scorer, trials: int = 3000, C: int = 16, n: int = 8, seed: int = 0) -> float:
    """Fraction of games a scorer of (y, gain, candidates) -> (B, C) wins over ``channel``."""
    rng = np.random.default_rng(seed)
    candidates = rng.standard_normal((trials, C, n), dtype=np.float32)
    answer = rng.integers(0, C, trials)
    y, gain = channel.transmit(candidates[np.arange(trials), answer], rng)
    return float(np.mean(scorer(y[:, None, :], gain[:, None, :], candidates).argmax(1) == answer))


def test_ml_receivers_beat_the_euclidean_one() -> None:
    def euclid(y, gain, candidates):
        return -np.square(y - candidates).sum(-1)

    for channel in [
        Chain([Erasure(0.5), AWGN(0.3)]),
        RayleighBlockFading(0.5, block_length=2),
        Chain([AWGN(0.5), Quantize(2, 1.0)]),
    ]:

        def ml(y, gain, candidates, channel=channel):
            return channel.log_likelihood(y, candidates, gain).sum(-1)

        ml_acc, eu_acc = accuracy(channel, ml), accuracy(channel, euclid)
        # a paired comparison on the same games: ML wins clearly more
        assert ml_acc > eu_acc + 0.03, (channel, ml_acc, eu_acc)


# ---------------------------------------------------------------- capacity


def test_capacity_closed_forms() -> None:
    for sigma in [0.05, 0.3, 1.0, 4.0]:
        assert AWGN(sigma).capacity_per_use() == pytest.approx(0.5 * math.log2(1 + 1 / sigma**2), rel=1e-15)
    assert AWGN(0.0).capacity_per_use() == math.inf
    assert AWGN(1.0).capacity_per_use() == pytest.approx(0.5)
    assert Erasure(0.0).capacity_per_use() == Erasure(0.99).capacity_per_use() == math.inf
    assert Erasure(1.0).capacity_per_use() == 0.0
    assert Quantize(3, 1.0).capacity_per_use() == 3.0
    assert RayleighBlockFading(0.0).capacity_per_use() == math.inf
    for p, sigma in [(0.0, 0.5), (0.3, 0.5), (0.9, 2.0), (1.0, 0.1)]:
        expected = (1 - p) * AWGN(sigma).capacity_per_use()
        assert Chain([Erasure(p), AWGN(sigma)]).capacity_per_use() == pytest.approx(expected, rel=1e-15)
        assert Chain([AWGN(sigma), Erasure(p)]).capacity_per_use() == pytest.approx(expected, rel=1e-15)
    assert Chain([Erasure(1.0), AWGN(0.0)]).capacity_per_use() == 0.0
    # other chains: the smallest stage (data processing)
    assert Chain([AWGN(0.1), Quantize(2, 1.0)]).capacity_per_use() == 2.0
    assert Chain([AWGN(1.0), Quantize(4, 1.0)]).capacity_per_use() == pytest.approx(0.5)
    assert Chain([AWGN(0.5)]).capacity_per_use() == AWGN(0.5).capacity_per_use()


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0, 3.0, 20.0])
def test_fading_capacity_matches_monte_carlo_and_jensen(sigma: float) -> None:
    capacity = RayleighBlockFading(sigma).capacity_per_use()
    g = np.random.default_rng(12).exponential(size=1_000_000)
    samples = 0.5 * np.log2(1 + g / sigma**2)
    stderr = samples.std() / math.sqrt(samples.size)
    assert abs(capacity - samples.mean()) < 3 * stderr
    # fading costs capacity at the same mean SNR (Jensen)
    assert capacity < AWGN(sigma).capacity_per_use()


def test_fading_capacity_matches_the_exponential_integral() -> None:
    # E[ln(1 + g / s2)] = exp(s2) E1(s2) for g ~ Exp(1)
    from scipy.special import exp1

    for sigma in np.geomspace(0.05, 20, 15):
        s2 = float(sigma) ** 2
        expected = math.exp(s2) * exp1(s2) / (2 * math.log(2))
        assert RayleighBlockFading(float(sigma)).capacity_per_use() == pytest.approx(expected, rel=1e-6)


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
        (lambda: RayleighBlockFading(-0.1), "sigma"),
        (lambda: RayleighBlockFading(float("nan")), "sigma"),
        (lambda: RayleighBlockFading("0.1"), "sigma"),
        (lambda: RayleighBlockFading(0.1, block_length=0), "block_length"),
        (lambda: RayleighBlockFading(0.1, block_length=2.5), "block_length"),
        (lambda: RayleighBlockFading(0.1, block_length=True), "block_length"),
        (lambda: RayleighBlockFading(0.1, block_length="4"), "block_length"),
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


@pytest.mark.parametrize(
    "channel", [AWGN(0.1), Erasure(0.1), Quantize(2, 1.0), RayleighBlockFading(0.1), Chain([AWGN(0.1)])]
)
def test_bad_call_arguments(channel) -> None:
    x = np.zeros((2, 3), dtype=np.float32)
    for call in [channel, channel.transmit]:
        with pytest.raises(ValueError, match="float32"):
            call(x.astype(np.float64), np.random.default_rng(0))
        with pytest.raises(ValueError, match="float32"):
            call(x.tolist(), np.random.default_rng(0))
        with pytest.raises(ValueError, match="rng"):
            call(x, 0)
    with pytest.raises(ValueError, match="broadcast"):
        channel.log_likelihood(np.zeros((2, 3)), np.zeros((2, 4)))


def test_channels_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        AWGN(0.1).sigma = 0.2
    with pytest.raises(dataclasses.FrozenInstanceError):
        RayleighBlockFading(0.1).block_length = 2


# ---------------------------------------------------------------- the one home of channel simulation


def test_importing_the_channels_does_not_import_pettingzoo() -> None:
    """Protocols use the numpy and torch channel models without pulling in the environments (DESIGN.md 1)."""
    import subprocess
    import sys

    code = ("import sys, environments.channels, environments.torch_channels, protocols.jscc\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pettingzoo'))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]", run.stdout
