"""The SNR convention (``environments.convention``): Es/N0 per complex use. Our AWGN and Sionna's AWGN at the same
Es/N0 give QPSK the same bit error rate, and both the exact one; the conversions agree with Sionna's own."""

from __future__ import annotations

import math

import numpy as np
import pytest

from environments.channels import AWGN
from environments.convention import (
    SNR_LABEL,
    complex_uses,
    eb_n0_db,
    es_n0_db,
    pair_real,
    qpsk_ber,
    sigma_from_es_n0_db,
    sionna_no,
    unpair_complex,
)
from protocols.metrics import snr_db

ES_N0_DB = (0.0, 3.0, 6.0)
BITS = 400_000  # per point: the BER's standard error is under 1.5% of it at 6 dB (BER 2.4e-3)


def _within(measured: float, expected: float, n: int, z: float = 5.0) -> bool:
    return abs(measured - expected) <= z * math.sqrt(expected * (1 - expected) / n)


def test_conversions():
    assert es_n0_db(0.5) == pytest.approx(6.0206, abs=1e-4)
    assert es_n0_db(0.0) == math.inf and sigma_from_es_n0_db(math.inf) == 0.0
    for db in (-6.0, 0.0, 2.5, 10.0, 20.0):
        assert es_n0_db(sigma_from_es_n0_db(db)) == pytest.approx(db)
        assert snr_db(sigma_from_es_n0_db(db)) == pytest.approx(db)  # the project's old SNR is the same number
    assert eb_n0_db(6.0, bits=2, real_uses=2) == pytest.approx(6.0 - 10 * math.log10(2))  # QPSK: Es = 2 Eb
    assert eb_n0_db(0.0, bits=16, real_uses=32) == pytest.approx(0.0)  # rate 1/2 per real use: 1 bit per complex
    assert [complex_uses(n) for n in (0, 1, 2, 7, 32)] == [0, 1, 1, 4, 16]
    assert SNR_LABEL == "Es/N0 (dB)"
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError):
            complex_uses(bad)
    with pytest.raises(ValueError):
        sigma_from_es_n0_db(float("nan"))


def test_pairing_round_trips_and_gives_es_2():
    x = np.random.default_rng(0).choice([-1.0, 1.0], size=(4, 7)).astype(np.float32)
    s = pair_real(x)
    assert s.shape == (4, 4)
    np.testing.assert_allclose(np.abs(s[:, :3]) ** 2, 2.0)  # unit power per real dimension: Es = 2
    np.testing.assert_array_equal(unpair_complex(s, 7), x)


def test_sionna_no_is_sionnas_ebnodb2no():
    from sionna.phy.utils import ebnodb2no

    for db in (-3.0, 0.0, 6.0, 12.0):  # QPSK uncoded: Eb/N0 = Es/N0 - 3.01 dB
        want = float(ebnodb2no(eb_n0_db(db, bits=2, real_uses=2), num_bits_per_symbol=2, coderate=1.0))
        assert sionna_no(db) == pytest.approx(want, rel=1e-5)


def _our_qpsk_ber(value_db: float, rng: np.random.Generator) -> float:
    bits = rng.integers(0, 2, BITS)
    x = (1.0 - 2.0 * bits).astype(np.float32).reshape(-1, 2)  # bit 0 -> +1; a pair of reals is one QPSK symbol
    y = AWGN(sigma_from_es_n0_db(value_db))(x, rng)
    return float(((y.reshape(-1) < 0) != bits).mean())


def _sionna_qpsk_ber(value_db: float) -> float:
    import torch
    from sionna.phy import config
    from sionna.phy.channel import AWGN as SionnaAWGN
    from sionna.phy.mapping import Demapper, Mapper

    config.seed = 0
    bits = torch.randint(0, 2, (1, BITS), generator=torch.Generator().manual_seed(1)).float()
    x = Mapper("qam", 2)(bits)  # unit-energy Gray QPSK
    y = SionnaAWGN()(x, sionna_no(value_db))
    llr = Demapper("app", "qam", 2)(y, sionna_no(value_db))  # Sionna's sign: llr > 0 favours bit 1
    return float(((llr > 0).float() != bits).float().mean())


@pytest.mark.parametrize("value_db", ES_N0_DB)
def test_our_awgn_and_sionnas_give_qpsk_its_exact_ber(value_db):
    exact = float(qpsk_ber(value_db))
    ours = _our_qpsk_ber(value_db, np.random.default_rng(int(value_db) + 7))
    theirs = _sionna_qpsk_ber(value_db)
    assert _within(ours, exact, BITS), (ours, exact)
    assert _within(theirs, exact, BITS), (theirs, exact)
    # a 3 dB convention slip would move the BER by far more than the sampling error
    assert not _within(ours, float(qpsk_ber(value_db - 3.0103)), BITS)
    assert not _within(theirs, float(qpsk_ber(value_db + 3.0103)), BITS)
