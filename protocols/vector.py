"""Vector protocol: send the CALM autoencoder's latent means as analog channel symbols.

    ids (B, L) -> encoder mean mu (B, L/K, l) -> standardise each latent dim (train mean/std)
      -> flatten (B, D = L/K * l) -> [PCA to d = n dims when n < D] -> times one scalar s
      -> [cyclic repetition to n when n > D] -> symbols (B, n)

All statistics (mean, std, PCA basis, s) are fitted once on training passages; ``s`` makes the
mean power per symbol exactly 1 on them (with PCA: on the half of them the basis was not fitted
on, see ``LatentBasis.fit``). Budget ``n`` (channel uses):
- ``None``: ``n = D``, every standardised latent coordinate once.
- ``n < D``: the top ``n`` principal components of the standardised codes (fitted on train).
- ``n > D``: all ``D`` coordinates, repeated cyclically (symbol ``j`` carries coordinate
  ``j mod D``); nothing is zero-padded.

Receivers (the channel and gains are explicit arguments, see ``protocols.base``):
- hard (``hard_score``): the least-squares estimate of the ``d``-dim code from the received copies
  (each copy weighted by its known fading gain; a symbol received as exactly 0, an erasure, is left
  out), then the candidate whose code is nearest in Euclidean distance. On AWGN without fading this
  is the soft receiver's choice too (the copy mean is a sufficient statistic).
- ``decode`` (token accuracy): that code, divided by ``s``, PCA inverted (least squares) and
  un-standardised, decoded by the autoencoder, argmax per token.
- soft (``score``): the channel log-likelihood of each candidate's symbols, each candidate encoded
  exactly like a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.base import ChannelModel, check_budget, cyclic_fill, cyclic_sum
from protocols.latent import LatentProtocol, decode_latents, encode_means

__all__ = ["VectorProtocol", "VectorProtocolConfig"]


@dataclass
class VectorProtocolConfig:
    """Settings of the vector (analog latent) protocol."""

    budget: int | None = None
    """channel uses n per message; None sends every latent coordinate once (n = L/K * l)"""
    batch_size: int = 1024
    """at most this many passages per autoencoder forward (each forward holds about protocols.latent.FORWARD_TOKENS
    tokens, which keeps its activations in a CPU cache)"""

    def __post_init__(self) -> None:
        self.budget = check_budget(self.budget)
        if (
            isinstance(self.batch_size, bool)
            or int(self.batch_size) != self.batch_size
            or self.batch_size < 1
        ):
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size}")


class VectorProtocol(LatentProtocol):
    """Analog latent protocol over a CALM ``Autoencoder`` (``encode``/``decode``/``config``)."""

    name = "vector"
    config_class = VectorProtocolConfig
    hard_domain = "latents"

    def __init__(self, autoencoder: Any, config: VectorProtocolConfig | None = None) -> None:
        super().__init__(autoencoder, config)
        self.scale = 1.0  # s: the one power-normalising scalar

    def channel_uses(self, L: int) -> int:
        D = self.latent_size(L)
        return D if self.config.budget is None else self.config.budget

    def code_size(self, L: int) -> int:
        """Distinct coordinates ``d = min(n, D)`` sent before repetition."""
        return min(self.channel_uses(L), self.latent_size(L))

    def fit(self, train_ids: np.ndarray) -> VectorProtocol:
        """Fit standardisation, PCA (when the budget is below ``D``) and the power scale on ``(N, L)``."""
        ids = self._check_train(train_ids)
        L = ids.shape[1]
        d = self.code_size(L)
        if d < self.latent_size(L) and ids.shape[0] < 2 * d:
            raise ValueError(f"PCA to budget={d} needs >= {2 * d} training passages, got {ids.shape[0]}")
        mu = encode_means(self.autoencoder, ids, batch_size=self.config.batch_size)  # (N, L/K, l)
        calibration = self.basis.fit(mu, d)  # PCA on half the passages, the scale on the other half
        x = cyclic_fill(self.basis.forward(calibration), self.channel_uses(L))  # (N', n)
        power = float(np.mean(x**2))
        if not power > 0:
            raise ValueError("training passages give all-zero latent codes; cannot normalise power")
        self.scale = 1.0 / np.sqrt(power)
        self.seq_len = int(L)
        return self

    def _code(self, ids: np.ndarray) -> np.ndarray:
        """The scaled code ``(B, d)`` a passage sends before repetition."""
        mu = encode_means(self.autoencoder, ids, batch_size=self.config.batch_size, cache=True,
                          dtype=np.float32)
        return self.basis.forward(mu) * self.scale

    def _encode(self, ids: np.ndarray) -> np.ndarray:
        return cyclic_fill(self._code(ids), self.channel_uses(ids.shape[1])).astype(np.float32)

    def _least_squares(self, symbols: np.ndarray, gain: np.ndarray) -> np.ndarray:
        """Code estimate ``(B, d)`` from ``y_j = gain_j * code_(j mod d) + noise``; erased (0) copies left out."""
        d = self.code_size(self._require_fit())
        weight = gain * (symbols != 0)  # (B, n)
        num, den = cyclic_sum(weight * symbols, d), cyclic_sum(weight * gain, d)
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)  # nothing received: the mean, 0

    def _hard_score(self, symbols, candidates, channel, gain) -> np.ndarray:
        B, C, L = candidates.shape
        code = self._least_squares(symbols, gain)  # (B, d)
        cand = self._code(candidates.reshape(B * C, L)).reshape(B, C, -1)
        return -((cand - code[:, None, :]) ** 2).sum(axis=-1)

    def _decode(self, symbols: np.ndarray, channel: ChannelModel | None, gain: np.ndarray) -> np.ndarray:
        L = self._require_fit()
        code = self._least_squares(symbols, gain) / self.scale  # (B, d)
        mu = self.basis.inverse(code, L // self.K)  # (B, L/K, l)
        return decode_latents(self.autoencoder, mu)

    def _stats(self) -> dict[str, np.ndarray]:
        return {**self.basis.stats(), "scale": np.array([self.scale])}

    def _stat_shapes(self, L: int) -> dict[str, tuple[int, ...]]:
        return {**self.basis.shapes(self.latent_dim, self.latent_size(L), self.code_size(L)), "scale": (1,)}

    def _set_stats(self, stats: dict[str, np.ndarray]) -> None:
        self.basis.set_stats(stats)
        if not stats["scale"][0] > 0:
            raise ValueError(f"the power scale must be > 0, got {stats['scale'][0]}")
        self.scale = float(stats["scale"][0])

