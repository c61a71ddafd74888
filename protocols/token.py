"""Uncoded tokens: the first token ids -> ceil(log2 V) bits each -> BPSK. A floor, not a baseline.

Each token id becomes ``b = ceil(log2 V)`` bits, most significant first, and each bit one symbol
``+1`` (bit 0) or ``-1`` (bit 1), so every symbol has power exactly 1 without any statistics. No
channel code protects them: the coded protocol (``protocols.coded``) is the digital baseline a
communications engineer would use; this one stays as the floor it must beat.

Fitting a budget of ``n`` channel uses for a message of ``L`` tokens:
- ``T = min(L, floor(n / b))`` tokens are sent: the first ``T`` (over budget the message is
  truncated; ``n < b`` cannot carry one token and raises). ``bits_sent = T b``.
- Their ``m = T b`` symbols are repeated cyclically to exactly ``n`` symbols (symbol ``j`` is bit
  ``j mod m``): a repetition code under budget, and the ``n - T b < b`` leftover uses over budget
  repeat the first bits. Nothing is zero-padded, so the power stays exactly 1.

Receivers (the channel and gains are explicit arguments, see ``protocols.base``):
- hard (``hard_score``): per-symbol LLRs from the channel's likelihood, summed over each bit's
  copies, sign -> the ``T b`` hard bits; the candidate at minimum Hamming distance to them wins
  (an erased bit, LLR 0, does not count). One flipped bit costs one bit of distance, not a token.
- ``decode`` (token accuracy): the same hard bits -> ids; an id >= V (possible when V is not a
  power of two) maps to V - 1; unsent positions ``T..L-1`` get ``fill_id``, or, with ``fill_model``, the
  source model's best guesses after the last sent token (``TokenSourceModel.fill``: the same fill separation
  gives the positions its frame did not carry).
- soft (``score``): the channel log-likelihood of each candidate's symbols, which only sees the sent
  tokens; candidates that differ only in unsent tokens tie.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.base import (
    ChannelModel,
    Protocol,
    bpsk_llr,
    check_budget,
    cyclic_fill,
    cyclic_sum,
    hamming_score,
)
from protocols.source_coding import SOURCE_MODELS, TokenSourceModel

__all__ = ["UncodedTokenProtocol", "UncodedTokenProtocolConfig"]


@dataclass
class UncodedTokenProtocolConfig:
    """Settings of the uncoded-tokens (BPSK) protocol."""

    vocab_size: int
    """number of token ids V; each id takes ceil(log2 V) bits"""
    budget: int | None = None
    """channel uses n per message; None sends every token once (n = L * ceil(log2 V))"""
    fill_id: int = 0
    """token id the hard decoder writes at positions a truncating budget did not send (without fill_model)"""
    fill_model: str | None = None
    """``bigram`` / ``unigram``: unsent positions get this source model's best guesses after the last sent token
    (fitted on the training passages, or the one passed in: separation's), as separation fills; None: fill_id"""

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
        if self.fill_model is not None and self.fill_model not in SOURCE_MODELS:
            raise ValueError(f"fill_model must be one of {', '.join(SOURCE_MODELS)} or None, got {self.fill_model!r}")


class UncodedTokenProtocol(Protocol):
    """The floor: ``ids (B, L)`` -> uncoded bits -> BPSK symbols ``(B, n)``."""

    name = "uncoded-tokens"
    config_class = UncodedTokenProtocolConfig

    def __init__(self, config: UncodedTokenProtocolConfig, *, source: TokenSourceModel | None = None) -> None:
        super().__init__()
        self.config = config
        # bits per token, b = ceil(log2 V)
        self.bits = max(1, math.ceil(math.log2(config.vocab_size)))
        if source is not None and (config.fill_model != source.kind or source.vocab_size != config.vocab_size):
            raise ValueError(f"the fill source ({source.kind}, V={source.vocab_size}) is not the config's "
                             f"fill_model {config.fill_model!r} over V={config.vocab_size}")
        self.source = source if source is not None else (
            TokenSourceModel(config.vocab_size, config.fill_model) if config.fill_model else None)
        self._source_given = source is not None

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

    def bits_sent(self, L: int) -> int:
        """The ``T b`` bits of the tokens sent."""
        return self.tokens_sent(L) * self.bits

    def token_bits(self, ids: np.ndarray) -> np.ndarray:
        """Bits of the sent tokens: ``ids (..., L)`` -> ``(..., T b)`` int64, MSB first per token."""
        T = self.tokens_sent(ids.shape[-1])
        shifts = np.arange(self.bits - 1, -1, -1, dtype=np.int64)
        bits = (ids[..., :T, None] >> shifts) & 1  # (..., T, b)
        return bits.reshape(*ids.shape[:-1], T * self.bits)

    def fit(self, train_ids: np.ndarray) -> UncodedTokenProtocol:
        """Record the passage length (BPSK needs no statistics: every symbol is +-1), and fit the fill's source
        model on ``train_ids`` unless one was passed in."""
        ids = self._check_train(train_ids)
        self.tokens_sent(ids.shape[1])
        self.seq_len = int(ids.shape[1])
        if self.source is not None and not self._source_given:
            self.source.fit(ids)
        return self

    def _encode(self, ids: np.ndarray) -> np.ndarray:
        symbols = (1 - 2 * self.token_bits(ids)).astype(np.float32)  # (B, T b), bit 0 -> +1
        return cyclic_fill(symbols, self.channel_uses(ids.shape[1]))

    def _llr(self, symbols: np.ndarray, channel: ChannelModel | None, gain: np.ndarray) -> np.ndarray:
        """Combined LLRs of the ``T b`` sent bits ``(B, T b)``."""
        return cyclic_sum(bpsk_llr(symbols, channel, gain), self.bits_sent(self._require_fit()))

    def _hard_score(self, symbols, candidates, channel, gain) -> np.ndarray:
        return hamming_score(self._llr(symbols, channel, gain), self.token_bits(candidates))

    def _decode(self, symbols: np.ndarray, channel: ChannelModel | None, gain: np.ndarray) -> np.ndarray:
        L = self._require_fit()
        B = symbols.shape[0]
        T = self.tokens_sent(L)
        bits = (self._llr(symbols, channel, gain) < 0).astype(np.int64).reshape(B, T, self.bits)
        weights = 1 << np.arange(self.bits - 1, -1, -1, dtype=np.int64)
        sent = np.minimum(bits @ weights, self.vocab_size - 1)  # (B, T)
        if self.source is not None:  # the source model's guesses after the last sent token, as separation fills
            return np.stack([self.source.fill(row, L) for row in sent]).astype(np.int64)
        ids = np.full((B, L), self.config.fill_id, dtype=np.int64)
        ids[:, :T] = sent
        return ids

    def _config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def _stats(self) -> dict[str, np.ndarray]:
        stats = {"bits": np.array([self.bits], dtype=np.int64)}
        if self.source is not None:
            stats.update({f"fill.{k}": v for k, v in self.source.stats().items()})
        return stats

    def _set_stats(self, stats: dict[str, np.ndarray]) -> None:
        if int(stats["bits"][0]) != self.bits:
            raise ValueError(
                f"saved bits per token {int(stats['bits'][0])} != {self.bits} for this vocab_size"
            )
        if self.source is not None:
            fill = {k[len("fill."):]: v for k, v in stats.items() if k.startswith("fill.")}
            if not fill:
                raise ValueError(f"the saved protocol has no fill statistics for fill_model {self.config.fill_model!r}")
            self.source.set_stats(fill)
