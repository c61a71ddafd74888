"""Quantised-vector protocol: the digital twin of the vector protocol.

    ids (B, L) -> encoder mean mu (B, L/K, l) -> standardise each latent dim -> flatten (B, D)
      -> [PCA to d dims] -> divide each code dim by its train std
      -> b-bit uniform quantiser on [-clip, clip] -> Gray code -> BPSK (+1 for bit 0, -1 for bit 1)
      -> cyclic repetition to n -> symbols (B, n)

BPSK makes every symbol +-1, so the power is exactly 1 whatever the statistics. The quantiser's
range is fixed from training data: ``clip`` train standard deviations of each code dimension;
values beyond it saturate to the outer level (quantisation, not input validation). Gray code
makes the commonest hard-decision error (one flipped bit) move one level.

Budget ``n`` with ``b = bits_per_dim``, natural count ``D b``:
- ``None``: ``n = D b``, every standardised latent coordinate at ``b`` bits.
- ``n < D b``: ``d = floor(n / b)`` code dims (top ``d`` principal components fitted on train;
  ``n < b`` raises); their ``d b`` bits are repeated cyclically to fill ``n``.
- ``n >= D b``: all ``D`` coordinates; the ``D b`` bits are repeated cyclically to fill ``n``.

The default ``b = 1`` sends the sign of each principal component: one bit per channel use, the
digital twin of the vector protocol at the same bandwidth.

Receivers (the channel and gains are explicit arguments, see ``protocols.base``):
- hard (``hard_score``): per-symbol LLRs from the channel's likelihood, summed over each bit's
  copies, sign -> the ``d b`` hard bits; the candidate whose quantiser bits are nearest in Hamming
  distance wins (erased bits do not count).
- ``decode`` (token accuracy): the same bits -> Gray decode -> level centre
  ``-clip + (q + 1/2) 2 clip / 2^b`` -> undo scaling, PCA and standardisation -> autoencoder
  decode -> argmax per token.
- soft (``score``): the channel log-likelihood of each candidate's symbols.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.base import ChannelModel, bpsk_llr, check_budget, cyclic_fill, cyclic_sum, hamming_score
from protocols.latent import STD_FLOOR, LatentProtocol, decode_latents, encode_means

__all__ = ["QuantizedVectorProtocol", "QuantizedVectorProtocolConfig"]

MAX_BITS_PER_DIM = 16


@dataclass
class QuantizedVectorProtocolConfig:
    """Settings of the quantised-vector protocol."""

    bits_per_dim: int = 1
    """b: bits per code dimension (2^b uniform levels), 1..16; 1 sends the sign of each principal component"""
    clip: float = 3.0
    """quantiser range [-clip, clip] in train standard deviations of each code dimension"""
    budget: int | None = None
    """channel uses n per message; None sends every latent coordinate at b bits (n = L/K * l * b)"""
    batch_size: int = 1024
    """at most this many passages per autoencoder forward (each forward holds about protocols.latent.FORWARD_TOKENS
    tokens, which keeps its activations in a CPU cache)"""

    def __post_init__(self) -> None:
        b = self.bits_per_dim
        if isinstance(b, bool) or int(b) != b or not 1 <= b <= MAX_BITS_PER_DIM:
            raise ValueError(f"bits_per_dim must be an integer in [1, {MAX_BITS_PER_DIM}], got {b}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite number of standard deviations > 0, got {self.clip}")
        self.budget = check_budget(self.budget)
        if (
            isinstance(self.batch_size, bool)
            or int(self.batch_size) != self.batch_size
            or self.batch_size < 1
        ):
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size}")


class QuantizedVectorProtocol(LatentProtocol):
    """b-bit quantised latent means sent as BPSK over a CALM ``Autoencoder``."""

    name = "quantized"
    config_class = QuantizedVectorProtocolConfig

    def __init__(self, autoencoder: Any, config: QuantizedVectorProtocolConfig | None = None) -> None:
        super().__init__(autoencoder, config)
        self.bits = self.config.bits_per_dim
        self.code_std: np.ndarray | None = None  # (d,) train std of each code dim

    def code_size(self, L: int) -> int:
        """Code dims ``d`` quantised per message (``D``, or fewer under a tight budget)."""
        D = self.latent_size(L)
        if self.config.budget is None:
            return D
        d = min(D, self.config.budget // self.bits)
        if d < 1:
            raise ValueError(
                f"budget={self.config.budget} channel uses cannot carry one dimension of "
                f"bits_per_dim={self.bits} bits; use budget >= {self.bits}"
            )
        return d

    def channel_uses(self, L: int) -> int:
        d = self.code_size(L)
        return d * self.bits if self.config.budget is None else self.config.budget

    def fit(self, train_ids: np.ndarray) -> QuantizedVectorProtocol:
        """Fit standardisation, PCA (under a tight budget) and each code dim's std on ``(N, L)``."""
        ids = self._check_train(train_ids)
        L = ids.shape[1]
        d = self.code_size(L)
        if d < self.latent_size(L) and ids.shape[0] < 2 * d:
            raise ValueError(f"PCA to {d} dims needs >= {2 * d} training passages, got {ids.shape[0]}")
        mu = encode_means(self.autoencoder, ids, batch_size=self.config.batch_size)
        calibration = self.basis.fit(mu, d)  # PCA on half the passages, the ranges on the other half
        self.code_std = np.maximum(self.basis.forward(calibration).std(axis=0), STD_FLOOR)  # (d,)
        self.seq_len = int(L)
        return self

    def quantize(self, code: np.ndarray) -> np.ndarray:
        """Standardised code ``(B, d)`` -> level indices ``q`` in [0, 2^b) ``(B, d)`` int64."""
        c, levels = self.config.clip, 1 << self.bits
        u = np.clip(code, -c, c)
        return np.minimum(np.floor((u + c) / (2 * c) * levels), levels - 1).astype(np.int64)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Level indices ``(B, d)`` -> level centres ``(B, d)`` float64."""
        c, levels = self.config.clip, 1 << self.bits
        return -c + (q + 0.5) * (2 * c / levels)

    def bits_sent(self, L: int) -> int:
        """The ``d b`` quantiser bits of one message."""
        return self.code_size(L) * self.bits

    def code_bits(self, ids: np.ndarray) -> np.ndarray:
        """Gray-coded quantiser bits of passages: ``ids (B, L)`` -> ``(B, d b)`` int64, MSB first per dim."""
        B = ids.shape[0]
        mu = encode_means(self.autoencoder, ids, batch_size=self.config.batch_size, cache=True,
                          dtype=np.float32)
        q = self.quantize(self.basis.forward(mu) / self.code_std)  # (B, d)
        gray = q ^ (q >> 1)
        shifts = np.arange(self.bits - 1, -1, -1, dtype=np.int64)  # MSB first
        return ((gray[:, :, None] >> shifts) & 1).reshape(B, -1)  # (B, d b)

    def _encode(self, ids: np.ndarray) -> np.ndarray:
        symbols = (1 - 2 * self.code_bits(ids)).astype(np.float32)  # (B, d b), bit 0 -> +1
        return cyclic_fill(symbols, self.channel_uses(ids.shape[1]))

    def _llr(self, symbols: np.ndarray, channel: ChannelModel | None, gain: np.ndarray) -> np.ndarray:
        """Combined LLRs of the ``d b`` sent bits ``(B, d b)``."""
        return cyclic_sum(bpsk_llr(symbols, channel, gain), self.bits_sent(self._require_fit()))

    def _hard_score(self, symbols, candidates, channel, gain) -> np.ndarray:
        B, C, L = candidates.shape
        cand_bits = self.code_bits(candidates.reshape(B * C, L)).reshape(B, C, -1)
        return hamming_score(self._llr(symbols, channel, gain), cand_bits)

    def _decode(self, symbols: np.ndarray, channel: ChannelModel | None, gain: np.ndarray) -> np.ndarray:
        L = self._require_fit()
        B = symbols.shape[0]
        d = self.code_size(L)
        bits = (self._llr(symbols, channel, gain) < 0).astype(np.int64).reshape(B, d, self.bits)
        gray = bits @ (1 << np.arange(self.bits - 1, -1, -1, dtype=np.int64))  # (B, d)
        # Gray -> binary: q = g ^ (g >> 1) ^ (g >> 2) ^ ...
        q = gray.copy()
        shift = gray >> 1
        while shift.any():
            q ^= shift
            shift >>= 1
        code = self.dequantize(q) * self.code_std
        mu = self.basis.inverse(code, L // self.K)
        return decode_latents(self.autoencoder, mu)

    def _stats(self) -> dict[str, np.ndarray]:
        return {**self.basis.stats(), "code_std": self.code_std}

    def _stat_shapes(self, L: int) -> dict[str, tuple[int, ...]]:
        d = self.code_size(L)
        return {**self.basis.shapes(self.latent_dim, self.latent_size(L), d), "code_std": (d,)}

    def _set_stats(self, stats: dict[str, np.ndarray]) -> None:
        self.basis.set_stats(stats)
        if not (stats["code_std"] > 0).all():  # the quantiser divides by it
            raise ValueError("code_std must be > 0 in every dimension")
        self.code_std = stats["code_std"]

