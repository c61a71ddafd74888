"""HARQ-IR (``protocols.harq``): the first round is the high-rate codeword (the 5G circular buffer), a clean channel
needs one round, a hopeless one spends every round, and in between retransmissions deliver what one-shot misses."""

from __future__ import annotations

import numpy as np
import pytest

from environments.channels import AWGN
from environments.convention import sigma_from_es_n0_db
from protocols.coded import CodedLink
from protocols.harq import HarqIR


@pytest.fixture(scope="module")
def harq():
    return HarqIR(80, 128, 3)


def _info(B: int = 200, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, (B, 80))


def test_first_round_is_the_high_rate_codeword(harq):
    bits = np.random.default_rng(1).integers(0, 2, (32, harq.k))
    np.testing.assert_array_equal(harq.link.modulate(bits)[:, :128], CodedLink(harq.k, 128).modulate(bits))


def test_clean_channel_needs_one_round(harq):
    o = harq.transmit(_info(), AWGN(0.0), np.random.default_rng(0))
    assert o.correct.all() and (o.rounds == 1).all() and (o.real_uses == 128).all()
    assert o.throughput(80) == pytest.approx(2 * 80 / 128)  # correct bits per complex use
    np.testing.assert_array_equal(o.bits, _info())


def test_hopeless_channel_spends_every_round(harq):
    o = harq.transmit(_info(), AWGN(sigma_from_es_n0_db(-15.0)), np.random.default_rng(0))
    assert not o.correct.any() and (o.rounds == 3).all() and (o.real_uses == 384).all()
    assert o.throughput(80) == 0.0


def test_retransmissions_deliver_what_one_shot_misses(harq):
    channel = AWGN(sigma_from_es_n0_db(2.0))  # BPSK capacity 0.68 bits per real use: rate 0.75 mostly fails
    info = _info()
    o = harq.transmit(info, channel, np.random.default_rng(1))
    one_shot = HarqIR(80, 128, 1).transmit(info, channel, np.random.default_rng(1))
    assert one_shot.correct.mean() < 0.5 < 0.95 < o.correct.mean()
    assert 1.0 < o.rounds.mean() < 3.0
    assert o.throughput(80) > one_shot.throughput(80)


def test_refusals():
    with pytest.raises(ValueError, match="rounds"):
        HarqIR(80, 128, 0)
    with pytest.raises(ValueError):
        HarqIR(80, 128, 4)  # mother code rate 96 / 512 < 1/5: Sionna's 5G LDPC has none
    with pytest.raises(ValueError, match="k0=80"):
        HarqIR(80, 128, 2).transmit(np.zeros((2, 79)), AWGN(0.5), np.random.default_rng(0))
