"""Hash protocol: n pseudo-random +-1 symbols from a keyed hash of the whole passage.

    ids (B, L) -> BLAKE2b(key, passage ids) -> the first n bits -> BPSK (+1 for bit 0) -> symbols (B, n)

In the referential game the listener holds the candidates, so the best a speaker can do is to give
every passage a codeword far from every other's: the task is channel coding, and a random code (a
keyed hash) is Shannon's random-coding ideal for it. Any protocol that claims to carry *meaning*
must be compared with this one: where the hash wins, the task did not need meaning. The hash has no
inverse, so it sends no tokens (``decodes_tokens`` is False; token accuracy is empty for it).

Every symbol is +-1, so the power is exactly 1; the message's ``n`` bits are all distinct (no
repetition), ``bits_sent = n``.

Receivers (the channel and gains are explicit arguments, see ``protocols.base``):
- soft (``score``): the channel log-likelihood of each candidate's hash symbols (maximum likelihood).
- hard (``hard_score``): per-symbol LLRs -> sign -> the candidate whose hash bits are nearest in
  Hamming distance (erased symbols do not count).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.base import Protocol, bpsk_llr, check_budget, hamming_score

__all__ = ["HashProtocol", "HashProtocolConfig", "keyed_hash_bits"]

# BLAKE2b's largest digest: 512 bits per call; longer hashes chain calls with a counter
_DIGEST_BYTES = 64


def keyed_hash_bits(ids: np.ndarray, nbits: int, key: bytes) -> np.ndarray:
    """Keyed hash bits of each passage: ``ids (..., L)`` integer -> ``(..., nbits)`` uint8 in {0, 1}.

    BLAKE2b keyed with ``key`` over the passage's ids as little-endian int64, with a 4-byte block
    counter appended for every 512 bits. Passages that differ in any token get independent-looking
    bit strings; equal passages get equal ones.
    """
    if nbits < 1:
        raise ValueError(f"nbits must be >= 1, got {nbits}")
    if len(key) > 64:
        raise ValueError(f"key must hold at most 64 bytes (BLAKE2b), got {len(key)}")
    rows = np.ascontiguousarray(ids, dtype="<i8").reshape(-1, ids.shape[-1])
    blocks = -(-nbits // (8 * _DIGEST_BYTES))
    out = np.empty((rows.shape[0], blocks * _DIGEST_BYTES), dtype=np.uint8)
    for i, row in enumerate(rows):
        data = row.tobytes()
        out[i] = np.frombuffer(b"".join(hashlib.blake2b(data + c.to_bytes(4, "little"), key=key,
                                                        digest_size=_DIGEST_BYTES).digest()
                                        for c in range(blocks)), dtype=np.uint8)
    bits = np.unpackbits(out, axis=1)[:, :nbits]
    return bits.reshape(*ids.shape[:-1], nbits)


@dataclass
class HashProtocolConfig:
    """Settings of the hash protocol."""

    vocab_size: int
    """number of token ids V the protocol accepts"""
    budget: int = 32
    """channel uses n per message: n hash bits, one per use"""
    key: str = "latentcomm"
    """hash key (shared by speaker and listener; at most 64 bytes in UTF-8)"""

    def __post_init__(self) -> None:
        if isinstance(self.vocab_size, bool) or int(self.vocab_size) != self.vocab_size or self.vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {self.vocab_size}")
        self.budget = check_budget(self.budget)
        if self.budget is None:
            raise ValueError("budget (channel uses n) must be set for the hash protocol: it has no natural length")
        if not isinstance(self.key, str) or len(self.key.encode()) > 64:
            raise ValueError(f"key must be a string of at most 64 UTF-8 bytes, got {self.key!r}")


class HashProtocol(Protocol):
    """The random-coding ideal: ``ids (B, L)`` -> keyed hash bits -> BPSK symbols ``(B, n)``."""

    name = "hash"
    config_class = HashProtocolConfig
    decodes_tokens = False

    def __init__(self, config: HashProtocolConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def channel_uses(self, L: int) -> int:
        return self.config.budget

    def bits_sent(self, L: int) -> int:
        return self.config.budget

    def hash_bits(self, ids: np.ndarray) -> np.ndarray:
        """The ``n`` hash bits of passages ``(..., L)`` -> ``(..., n)`` uint8."""
        return keyed_hash_bits(ids, self.config.budget, self.config.key.encode())

    def fit(self, train_ids: np.ndarray) -> HashProtocol:
        """Record the passage length; a hash needs no statistics."""
        self.seq_len = int(self._check_train(train_ids).shape[1])
        return self

    def _encode(self, ids: np.ndarray) -> np.ndarray:
        return (1.0 - 2.0 * self.hash_bits(ids)).astype(np.float32)

    def _hard_score(self, symbols, candidates, channel, gain) -> np.ndarray:
        return hamming_score(bpsk_llr(symbols, channel, gain), self.hash_bits(candidates))

    def _decode(self, symbols, channel, gain) -> np.ndarray:
        raise ValueError("the hash protocol sends no tokens")

    def _config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def _stats(self) -> dict[str, np.ndarray]:
        # the key's fingerprint: a saved protocol is refused if its config was edited by hand
        return {"key_digest": np.frombuffer(hashlib.sha256(self.config.key.encode()).digest(), dtype=np.uint8)}

    def _set_stats(self, stats: dict[str, np.ndarray]) -> None:
        if not np.array_equal(stats["key_digest"], self._stats()["key_digest"]):
            raise ValueError("the saved hash protocol's key does not match its config")
