"""OFDM over 3GPP TDL (``environments.ofdm``, Sionna): the chain round-trips noiselessly with perfect CSI, estimated
CSI costs bit errors, the told gains make the soft likelihood the equalised symbols' own, the accounting of pilots,
refusals (the PettingZoo API and seed tests of every environment on OFDM: tests/test_environments.py)."""

from __future__ import annotations

import numpy as np
import pytest

from environments.ofdm import OFDM


def _bits(B: int = 48, n: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice([-1.0, 1.0], size=(B, n)).astype(np.float32)


def _ber(ch: OFDM, x: np.ndarray, seed: int = 1) -> float:
    y, g = ch.transmit(x, np.random.default_rng(seed))
    return float((np.sign(y / g) != x).mean())


@pytest.mark.parametrize("model", ["A", "C"])
def test_noiseless_round_trip_with_perfect_csi(model):
    x = np.random.default_rng(0).standard_normal((16, 24)).astype(np.float32)
    y, g = OFDM(0.0, model=model, csi="perfect", speed=30.0).transmit(x, np.random.default_rng(1))
    assert y.shape == x.shape and y.dtype == np.float32 and g.dtype == np.float32
    np.testing.assert_allclose(y / g, x, atol=1e-3)


def test_estimation_and_noise_cost_bit_errors():
    x = _bits()
    perfect = _ber(OFDM(0.316, csi="perfect"), x)
    assert perfect < 0.01  # 10 dB on BPSK pairs, equalised
    assert _ber(OFDM(0.316, csi="ls", speed=30.0), x) > perfect
    assert _ber(OFDM(1.0, csi="perfect"), x) > 0.05  # 0 dB
    assert _ber(OFDM(0.316, csi="none"), x) > 0.15  # unequalised fading: the phase alone scrambles the signs


def test_reproducible_from_the_generator_and_odd_lengths():
    ch = OFDM(0.5, model="C", csi="ls", speed=10.0)
    x = _bits(10, 7)
    a, b = ch.transmit(x, np.random.default_rng(3)), ch.transmit(x, np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == (10, 7)
    assert not np.array_equal(a[0], ch.transmit(x, np.random.default_rng(4))[0])


def test_soft_likelihood_is_the_equalised_symbols_gaussian():
    ch = OFDM(0.5, csi="perfect")
    x = _bits(8, 16)
    y, g = ch.transmit(x, np.random.default_rng(0))
    x_hat, var = y / g, (0.5 / g) ** 2  # per real dimension
    np.testing.assert_allclose(ch.log_likelihood(y, x, g), -((x_hat - x) ** 2) / (2 * var), rtol=1e-4, atol=1e-6)


def test_pilots_are_counted_in_the_channel_uses():
    ch = OFDM(0.5)  # 12 x 14 grid, pilots on 2 OFDM symbols
    assert ch.data_elements == 144 and ch.pilot_overhead == pytest.approx(168 / 144)
    assert ch.uses_per_message(32) == pytest.approx(16 * 168 / 144)
    assert OFDM(0.5, cyclic_prefix_length=6).cp_overhead == pytest.approx(1.5)


@pytest.mark.parametrize("kwargs, match", [
    ({"model": "F"}, "model"), ({"csi": "blind"}, "csi"), ({"pilot_symbols": (2, 2)}, "distinct"),
    ({"pilot_symbols": (), "csi": "ls"}, "pilots"), ({"fft_size": 0}, "fft_size"), ({"speed": -1.0}, "speed"),
    ({"num_ofdm_symbols": 2, "pilot_symbols": (0, 1)}, "without pilots"), ({"delay_spread": float("nan")}, "delay"),
])
def test_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OFDM(0.5, **kwargs)


def test_pickles_without_its_sionna_layers_and_sweeps_name_it():
    import pickle

    from experiments.common.sweep import make_channel

    ch = make_channel("tdl-c-ls", 0.5, ofdm_speed=30.0)
    assert (ch.model, ch.csi, ch.speed) == ("C", "ls", 30.0)
    x = _bits(4, 16)
    y, _ = ch.transmit(x, np.random.default_rng(0))
    back = pickle.loads(pickle.dumps(ch))
    assert "_parts" not in back.__dict__
    np.testing.assert_array_equal(back.transmit(x, np.random.default_rng(0))[0], y)
    with pytest.raises(ValueError, match="unknown OFDM channel"):
        make_channel("tdl-f-ls", 0.5)


def test_learned_links_see_an_equalised_ofdm_channel_as_told_gain_fading():
    from experiments.common.sweep import channel_family
    from protocols.told_channel import channel_snr_db

    assert [channel_family(c) for c in ("awgn", "rayleigh", "tdl-a-ls", "tdl-c-perfect", "tdl-a-none")] == [
        "awgn", "rayleigh", "rayleigh", "rayleigh", "awgn"]
    state = channel_snr_db(OFDM(0.5, csi="ls"))
    assert state.kind == "rayleigh" and state.snr_db == pytest.approx(6.0206, abs=1e-3)
    assert channel_snr_db(OFDM(0.5, csi="none")).kind == "awgn"


def test_cdl_round_trips_and_is_named_by_sweeps():
    from experiments.common.sweep import channel_family, make_channel

    ch = make_channel("cdl-c-perfect", 0.0, ofdm_speed=3.0)
    assert (ch.profile, ch.model, ch.csi) == ("cdl", "C", "perfect") and channel_family("cdl-c-ls") == "rayleigh"
    x = np.random.default_rng(0).standard_normal((8, 24)).astype(np.float32)
    y, g = ch.transmit(x, np.random.default_rng(1))
    np.testing.assert_allclose(y / g, x, atol=1e-3)
    assert _ber(OFDM(0.316, profile="cdl", model="A", csi="ls"), _bits()) > _ber(OFDM(0.316, profile="cdl",
                                                                                     model="A", csi="perfect"), _bits())
    with pytest.raises(ValueError, match="profile"):
        OFDM(0.5, profile="umi")


@pytest.mark.parametrize("sigma", [0.0, 0.1])
def test_told_gains_are_the_channel_magnitudes_with_perfect_csi(sigma):
    """g = sigma / sqrt(v) with v = N0 / |h|^2: Rayleigh-like gains (mean square near 1), noiseless or not, so a
    learned decoder trained on told-gain fading sees them in its range (never the 1e3 of a variance floor)."""
    _, g = OFDM(sigma, model="A", csi="perfect").transmit(_bits(256, 32), np.random.default_rng(0))
    assert 0.5 < float((g.astype(np.float64) ** 2).mean()) < 2.0
    assert float(g.max()) < 10.0


def test_linear_interpolation_tracks_a_moving_channel_better_than_the_nearest_pilot():
    x = _bits(128, 32)
    nn = _ber(OFDM(0.1, csi="ls", speed=60.0, interpolation="nn"), x)
    lin = _ber(OFDM(0.1, csi="ls", speed=60.0, interpolation="lin"), x)
    assert lin < nn, (lin, nn)
    with pytest.raises(ValueError, match="interpolation"):
        OFDM(0.1, interpolation="cubic")


def test_lmmse_estimates_come_close_to_perfect_csi():
    x = _bits(256, 32)
    perfect, ls, lmmse = (_ber(OFDM(0.316, csi=c, speed=30.0), x) for c in ("perfect", "ls", "lmmse"))
    assert perfect <= lmmse < ls, (perfect, lmmse, ls)
    with pytest.raises(ValueError, match="profile='tdl'"):
        OFDM(0.3, csi="lmmse", profile="cdl")
    from environments.ofdm import OFDM_CHANNELS

    assert "tdl-a-lmmse" in OFDM_CHANNELS and "cdl-a-lmmse" not in OFDM_CHANNELS
