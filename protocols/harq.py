"""HARQ with incremental redundancy over the coded link (Sionna's 5G LDPC and CRC), issue 32 point 5.

    info bits (B, k0) -> CRC (Sionna CRCEncoder, k = k0 + crc bits) -> 5G LDPC mother code of n_max = rounds * n1
    coded bits (``protocols.coded.CodedLink``, BPSK) -> round r sends coded bits [r n1, (r + 1) n1) through the channel
    -> the receiver adds their LLRs to the buffer (0 for bits not sent yet: punctured) and decodes the mother code
    -> the CRC passes: delivered, stop; fails: the next round (until ``rounds``)

Incremental redundancy is exact for Sionna's 5G code here: its rate matching reads a circular buffer, so the first
n1 bits of the n_max-bit codeword are the rate-k/n1 codeword (base graph 2, which Sionna picks for k <= 292;
``tests/test_harq.py`` checks it). Each round meets the channel afresh (a later slot: new fading, new noise).

Accounting: a round costs n1 real channel uses (n1 / 2 complex uses, ``environments.convention``); a message that
fails every round cost all of them. ``HarqOutcome.delivered`` is the CRC's verdict; ``correct`` compares with the
sent bits, so an error the CRC misses is counted as delivered and wrong. Throughput is correct information bits per
complex channel use: ``2 k0 correct / real uses``.

Dim letters: B messages, k0 information bits, k = k0 + CRC bits, n1 real uses per round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.base import log_likelihood
from protocols.coded import CodedLink

__all__ = ["HarqIR", "HarqOutcome"]


@dataclass
class HarqOutcome:
    """What a batch of messages got through HARQ-IR."""

    bits: np.ndarray
    """(B, k0) uint8 decoded information bits after the last round each message used"""
    delivered: np.ndarray
    """(B,) bool: the CRC passed within the rounds"""
    correct: np.ndarray
    """(B,) bool: delivered and equal to the sent bits"""
    rounds: np.ndarray
    """(B,) int: rounds used (the last one's CRC passed, or all of them)"""
    real_uses: np.ndarray
    """(B,) int: real channel uses spent, rounds * n1"""

    def throughput(self, k0: int) -> float:
        """Correct information bits per complex channel use over the batch."""
        return 2.0 * k0 * float(self.correct.sum()) / float(self.real_uses.sum())


class HarqIR:
    """HARQ-IR on a 5G LDPC mother code with a CRC, BPSK, over any channel of ``environments.channels``."""

    def __init__(self, k0: int, n1: int, rounds: int, *, crc: str = "CRC16", bp_iterations: int = 20) -> None:
        """``k0`` information bits per message, ``n1`` coded bits (real channel uses) per round, at most ``rounds``
        rounds. Raises ValueError when Sionna cannot build the mother code (rate below 1/5, ...)."""
        import torch
        from sionna.phy.fec.crc import CRCDecoder, CRCEncoder

        for name, value in (("k0", k0), ("n1", n1), ("rounds", rounds)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HarqIR {name} must be an integer >= 1, got {value!r}")
        self.k0, self.n1, self.rounds = k0, n1, rounds
        with torch.no_grad():
            self.crc_encoder = CRCEncoder(crc, precision="single", device="cpu")
            self.crc_decoder = CRCDecoder(self.crc_encoder, precision="single", device="cpu")
            k = int(self.crc_encoder(torch.zeros(1, k0)).shape[1])
        #: the mother code: k = k0 + CRC bits into rounds * n1 coded bits
        self.link = CodedLink(k, n1 * rounds, code="ldpc", modulation="bpsk", bp_iterations=bp_iterations)

    @property
    def k(self) -> int:
        """Bits the code carries: information + CRC."""
        return self.link.k

    def transmit(self, info: np.ndarray, channel: Any, rng: np.random.Generator) -> HarqOutcome:
        """Send ``info (B, k0)`` 0/1 bits with HARQ-IR through ``channel`` (``transmit(x, rng) -> (y, gain)``,
        ``log_likelihood``; the receiver is told the channel model and the gains)."""
        import torch

        info = np.asarray(info)
        if info.ndim != 2 or info.shape[1] != self.k0:
            raise ValueError(f"info must have shape (B, k0={self.k0}), got {info.shape}")
        B = info.shape[0]
        with torch.no_grad():
            bits = self.crc_encoder(torch.from_numpy(info.astype(np.float32))).numpy().astype(np.uint8)  # (B, k)
        x = self.link.modulate(bits)  # (B, n_max) real BPSK of the scrambled mother codeword
        llr = np.zeros((B, self.link.N), dtype=np.float64)
        out = np.zeros((B, self.k0), dtype=np.uint8)
        delivered = np.zeros(B, dtype=bool)
        rounds = np.zeros(B, dtype=np.int64)
        for r in range(self.rounds):
            rows = np.flatnonzero(~delivered)
            if not len(rows):
                break
            cols = slice(r * self.n1, (r + 1) * self.n1)
            y, gain = channel.transmit(np.ascontiguousarray(x[rows, cols]), rng)
            llr[rows, cols] = self._llr(y, channel, gain)
            decoded = self.link.decode(llr[rows])  # (b, k) info + CRC bits
            with torch.no_grad():
                u, ok = self.crc_decoder(torch.from_numpy(decoded.astype(np.float32)))
            ok = ok.numpy().reshape(-1).astype(bool)
            out[rows] = u.numpy().astype(np.uint8)
            rounds[rows] = r + 1
            delivered[rows[ok]] = True
        correct = delivered & (out == info).all(axis=1)
        return HarqOutcome(out, delivered, correct, rounds, rounds * self.n1)

    def _llr(self, y: np.ndarray, channel: Any, gain: np.ndarray) -> np.ndarray:
        """Sionna-sign LLRs ``log p(y | bit 1) - log p(y | bit 0)`` of BPSK symbols (the link's own points)."""
        ll = log_likelihood(np.asarray(y, np.float64)[..., None], self.link.points, channel,
                            np.asarray(gain, np.float64)[..., None])  # (b, n1, 2): label 0, label 1
        return ll[..., 1] - ll[..., 0]
