"""Token protocol: the digital baseline. Token ids -> ceil(log2 V) bits -> BPSK.

Each token id becomes ``b = ceil(log2 V)`` bits, most significant first, and each bit one symbol
``+1`` (bit 0) or ``-1`` (bit 1), so every symbol has power exactly 1 without any statistics.

Fitting a budget of ``n`` channel uses for a message of ``L`` tokens:
- ``T = min(L, floor(n / b))`` tokens are sent: the first ``T`` (over budget the message is
  truncated; ``n < b`` cannot carry one token and raises).
- Their ``m = T b`` symbols are repeated cyclically to exactly ``n`` symbols (symbol ``j`` is bit
  ``j mod m``): a repetition code under budget, and the ``n - T b < b`` leftover uses over budget
  repeat the first bits. Nothing is zero-padded, so the power stays exactly 1.

Receivers:
- hard (``decode``): average the copies of each bit (the maximum-likelihood combination under
  AWGN), bit = 1 where the average is < 0 (an average of exactly 0, e.g. all copies erased, gives
  bit 0), bits -> id. An id >= V (possible when V is not a power of two) maps to V - 1. Unsent
  positions ``T..L-1`` get ``fill_id``; ``hard_score`` ignores them.
- soft (``score``): ``-||y - encode(candidate)||^2 / (2 sigma^2)``, which only sees the sent
  tokens; candidates that differ only in unsent tokens tie.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocols.base import Protocol, check_budget, cyclic_combine, cyclic_fill

__all__ = ["TokenProtocol", "TokenProtocolConfig"]


@dataclass
class TokenProtocolConfig:
    """Settings of the token (BPSK) protocol."""

    vocab_size: int
    """number of token ids V; each id takes ceil(log2 V) bits"""
    budget: int | None = None
    """channel uses n per message; None sends every token once (n = L * ceil(log2 V))"""
    fill_id: int = 0
    """token id the hard decoder writes at positions a truncating budget did not send"""

    def __post_init__(self) -> None:
        if (
            isinstance(self.vocab_size, bool)
            or int(self.vocab_size) != self.vocab_size
            or self.vocab_size < 2
        ):
            raise ValueError(f"vocab_size must be an integer >= 2, got {self.vocab_size}")
        self.budget = check_budget(self.budget)
        if not 0 <= self.fill_id < self.vocab_size:
            raise ValueError(f"fill_id must be in [0, vocab_size={self.vocab_size}), got {self.fill_id}")


class TokenProtocol(Protocol):
    """Digital baseline: ``ids (B, L)`` -> bits -> BPSK symbols ``(B, n)``."""

    name = "token"

    def __init__(self, config: TokenProtocolConfig) -> None:
        super().__init__()
        self.config = config
        # bits per token, b = ceil(log2 V)
        self.bits = max(1, math.ceil(math.log2(config.vocab_size)))

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def tokens_sent(self, L: int) -> int:
        """Tokens ``T`` of an ``L``-token message that fit the budget (the first ``T`` are sent)."""
        if self.config.budget is None:
            return L
        T = min(L, self.config.budget // self.bits)
        if T < 1:
            raise ValueError(
                f"budget={self.config.budget} channel uses cannot carry one token of {self.bits} bits "
                f"(vocab_size={self.vocab_size}); use budget >= {self.bits}"
            )
        return T

    def channel_uses(self, L: int) -> int:
        if isinstance(L, bool) or int(L) != L or L < 1:
            raise ValueError(f"L (tokens per message) must be an integer >= 1, got {L}")
        if self.config.budget is None:
            return int(L) * self.bits
        self.tokens_sent(int(L))  # raises when the budget is below one token
        return self.config.budget

    def informative_positions(self, L: int) -> slice:
        return slice(0, self.tokens_sent(L))

    def fit(self, train_ids: np.ndarray) -> TokenProtocol:
        """Record the passage length; BPSK needs no statistics (every symbol is +-1)."""
        ids = self._check_train(train_ids)
        self.tokens_sent(ids.shape[1])
        self.seq_len = int(ids.shape[1])
        return self

    def _encode(self, ids: np.ndarray) -> np.ndarray:
        B, L = ids.shape
        T = self.tokens_sent(L)
        shifts = np.arange(self.bits - 1, -1, -1, dtype=np.int64)  # MSB first
        bits = (ids[:, :T, None] >> shifts) & 1  # (B, T, b)
        symbols = (1 - 2 * bits).reshape(B, T * self.bits).astype(np.float32)  # bit 0 -> +1
        return cyclic_fill(symbols, self.channel_uses(L))

    def _decode(self, symbols: np.ndarray) -> np.ndarray:
        L = self._require_fit()
        B = symbols.shape[0]
        T = self.tokens_sent(L)
        soft = cyclic_combine(symbols, T * self.bits)  # (B, T b)
        bits = (soft < 0).astype(np.int64).reshape(B, T, self.bits)
        weights = 1 << np.arange(self.bits - 1, -1, -1, dtype=np.int64)
        sent = np.minimum(bits @ weights, self.vocab_size - 1)  # (B, T)
        ids = np.full((B, L), self.config.fill_id, dtype=np.int64)
        ids[:, :T] = sent
        return ids

    def _config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def _stats(self) -> dict[str, np.ndarray]:
        return {"bits": np.array([self.bits], dtype=np.int64)}

    def _set_stats(self, stats: dict[str, np.ndarray]) -> None:
        if int(stats["bits"][0]) != self.bits:
            raise ValueError(
                f"saved bits per token {int(stats['bits'][0])} != {self.bits} for this vocab_size"
            )

    @classmethod
    def load(cls, directory: str | Path) -> TokenProtocol:
        """Load a protocol written by ``save``."""
        meta = cls.read_config(directory)
        if meta["protocol"] != cls.name:
            raise ValueError(f"{directory} holds a {meta['protocol']!r} protocol, not {cls.name!r}")
        proto = cls(TokenProtocolConfig(**meta["config"]))
        proto._load_stats(directory, meta["seq_len"])
        return proto
