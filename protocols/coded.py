"""Coded digital baseline: source bits -> Sionna 5G LDPC / Polar code -> Gray PAM on the real channel.

    ids (B, L) -> k source bits -> LDPC5GEncoder | Polar5GEncoder (k -> N coded bits)
               -> TB5GScrambler -> Mapper("pam", m) -> n real symbols (B, n), N = n m

This is the scheme a communications engineer would field, built from Sionna's blocks (nothing is
hand-written that Sionna has): the 5G NR LDPC code with rate matching and belief-propagation
decoding (``LDPC5GDecoder``, ``bp_iterations`` flooding iterations, exact boxplus), or the 5G NR
uplink polar code with its CRC and CRC-aided successive-cancellation list decoding
(``Polar5GDecoder``, ``list_size``); the 5G PUSCH data scrambler (``TB5GScrambler``, 38.211
6.3.1.1) whitens the coded bits, so the mean symbol power is 1 whatever the source statistics.

Source bits (``source``):
- ``"hash"``: ``k`` bits of a keyed BLAKE2b hash of the whole passage (``keyed_hash_bits``), the
  referential game's channel-coding view (the hash protocol's bits, now under a real code). No
  tokens are sent (``decodes_tokens`` is False).
- ``"tokens"``: the first ``T`` token ids at ``b = ceil(log2 V)`` bits each, most significant bit
  first (as ``UncodedTokenProtocol``); ``decode`` returns them (an id >= V maps to V - 1) and 0 at
  positions ``T..L-1``.

The channel is real: one channel use carries one real symbol of mean power 1. Modulations therefore
carry ``m`` bits per real use, on Sionna's Gray-labelled ``"pam"`` constellation of ``m`` bits
normalised to unit energy, which is exactly the per-dimension view of Sionna's square QAM (a
``qam(2m)`` point is ``pam_gray`` of its even label bits on I plus ``j`` times ``pam_gray`` of its
odd ones on Q, scaled by 1/sqrt(2) so that the complex symbol has unit energy):
- ``bpsk``: m = 1 (2-PAM, ``+1`` for bit 0);
- ``qpsk``: m = 1 (QPSK is BPSK on I and on Q: two real uses per complex symbol, so on this real
  channel it is the same as ``bpsk``; the name says which complex scheme the run stands for);
- ``16qam``: m = 2 (4-PAM per real dimension);
- ``64qam``: m = 3 (8-PAM per real dimension).
For m > 1 the LDPC encoder applies the 5G bit interleaver for ``m`` bits per symbol (38.212 5.4.2.2).

Sizes for a budget of ``n`` channel uses and a target rate ``r``: ``N = n m`` coded bits; hash
source ``k = round(r N)``; tokens source ``T = floor(r N / b)`` tokens and ``k = T b`` (so the
actual rate ``k / N <= r``). Sionna's 5G codes have limits (LDPC: ``12 <= k <= 8448``,
``1/5 <= k/N <= 0.95``, ``N <= 121344``; uplink polar: ``18 <= N <= 1088``, ``12 <= k <= 1013``,
``k + CRC <= N`` with a 6-bit CRC for k <= 19 and an 11-bit one above): a configuration outside them
raises ValueError at construction, naming the budget and the limit.

Receivers (the channel and gains are explicit arguments, see ``protocols.base``):
- LLRs: exact APP demapping for any memoryless channel the receiver is told. For each real use and
  each PAM point ``p_j``, ``log p(y | p_j)`` from ``protocols.base.log_likelihood`` (AWGN, fading with
  known gain, erasure: LLR 0, erasure then AWGN, quantisation); the LLR of a label bit is
  ``logsumexp`` over the points whose bit is 1 minus ``logsumexp`` over those whose bit is 0. This
  is Sionna's sign convention (logits, ``log p(b=1|y) / p(b=0|y)``), which its demapper produces and
  its decoders expect; on AWGN it equals Sionna's ``Demapper("app", "pam", m)`` with ``no = 2
  sigma^2`` (tests check it). Sionna's demapper assumes Gaussian noise, hence this generic one.
- hard (``hard_score``): LLRs -> descramble -> Sionna decoder -> the ``k`` decoded source bits; each
  candidate scores minus the Hamming distance between its source bits and them.
- soft (``score``): the base class's exact maximum likelihood over the candidates' coded symbols.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from protocols.base import ChannelModel, Protocol, check_budget, log_likelihood
from protocols.hashing import keyed_hash_bits

__all__ = ["CODES", "MODULATIONS", "MODULATION_BITS", "SOURCES", "CodedLink", "CodedProtocol",
           "CodedProtocolConfig", "check_link_fields", "code_limit_problem"]

SOURCES = ("hash", "tokens")
CODES = ("ldpc", "polar")
#: bits per real channel use of each modulation (the per-dimension PAM of the complex scheme)
MODULATION_BITS = {"bpsk": 1, "qpsk": 1, "16qam": 2, "64qam": 3}
MODULATIONS = tuple(MODULATION_BITS)

# 5G limits as Sionna implements them (checked first, for clear messages; Sionna checks the rest)
_LDPC_K_MIN, _LDPC_K_MAX, _LDPC_N_MAX = 12, 8448, 316 * 384
_LDPC_RATE_MIN, _LDPC_RATE_MAX = 1 / 5, 0.95
_POLAR_N_MIN, _POLAR_N_MAX, _POLAR_K_MIN, _POLAR_K_MAX = 18, 1088, 12, 1013


def code_limit_problem(code: str, k: int, N: int) -> str | None:
    """The 5G limit that ``k`` information bits in ``N`` coded bits break for ``code`` (ldpc or polar), or None
    when Sionna can build the code. Arithmetic only: nothing of Sionna is imported."""
    if code == "ldpc":
        problems = [
            (k < _LDPC_K_MIN, f"5G LDPC needs k >= {_LDPC_K_MIN} information bits"),
            (k > _LDPC_K_MAX, f"5G LDPC takes at most k = {_LDPC_K_MAX} information bits (no segmentation)"),
            (N > _LDPC_N_MAX, f"5G LDPC codewords hold at most N = {_LDPC_N_MAX} bits"),
            (k / N > _LDPC_RATE_MAX, f"5G LDPC needs a code rate k/N <= {_LDPC_RATE_MAX}"),
            (k / N < _LDPC_RATE_MIN, "5G LDPC needs a code rate k/N >= 1/5 (no repetition coding)"),
        ]
    else:
        problems = [
            (N < _POLAR_N_MIN, f"5G polar codes need N >= {_POLAR_N_MIN} coded bits"),
            (N > _POLAR_N_MAX, f"5G polar codes hold at most N = {_POLAR_N_MAX} coded bits (no segmentation)"),
            (k < _POLAR_K_MIN, f"5G uplink polar codes need k >= {_POLAR_K_MIN} information bits"),
            (k > _POLAR_K_MAX, f"5G polar codes take at most k = {_POLAR_K_MAX} information bits"),
            (k + (6 if k <= 19 else 11) > N, f"5G polar codes need k + CRC ({6 if k <= 19 else 11} bits) <= N"),
        ]
    return next((limit for failed, limit in problems if failed), None)


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


@dataclass
class CodedProtocolConfig:
    """Settings of the coded (5G LDPC / Polar + Gray PAM) protocol."""

    vocab_size: int
    """number of token ids V the protocol accepts (>= 2); token ids take b = ceil(log2 V) bits"""
    budget: int
    """channel uses n per message (required, >= 1): N = n * m coded bits"""
    source: Literal["hash", "tokens"] = "hash"
    """source bits: a keyed hash of the whole passage, or the first T token ids at b bits each"""
    code: Literal["ldpc", "polar"] = "ldpc"
    """channel code: 5G NR LDPC (BP decoding) or 5G NR uplink polar (CRC-aided SCL decoding)"""
    rate: float = 0.5
    """target code rate r in (0, 1): k = round(r N) (hash) or T b with T = floor(r N / b) (tokens)"""
    modulation: Literal["bpsk", "qpsk", "16qam", "64qam"] = "bpsk"
    """bpsk / qpsk: 1 bit per real use; 16qam: 2 (4-PAM); 64qam: 3 (8-PAM), Gray-labelled"""
    key: str = "latentcomm"
    """hash key of the hash source (shared by speaker and listener; at most 64 bytes in UTF-8)"""
    bp_iterations: int = 20
    """belief-propagation iterations of the LDPC decoder (>= 1)"""
    list_size: int = 8
    """list size of the polar SCL decoder (a power of two >= 1; 5G reference curves use 8)"""

    def __post_init__(self) -> None:
        if not _is_int(self.vocab_size) or self.vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {self.vocab_size!r}")
        self.vocab_size = int(self.vocab_size)
        if self.budget is None:
            raise ValueError("budget (channel uses n) must be set for the coded protocol: an integer >= 1")
        self.budget = check_budget(self.budget)
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        check_link_fields(self)
        if not isinstance(self.key, str) or len(self.key.encode()) > 64:
            raise ValueError(f"key must be a string of at most 64 UTF-8 bytes, got {self.key!r}")


def check_link_fields(config: Any) -> None:
    """Check and normalise, in place, the link fields every coded config has: ``code``, ``rate``,
    ``modulation``, ``bp_iterations`` and ``list_size`` (``CodedProtocolConfig``, the separation config)."""
    if config.code not in CODES:
        raise ValueError(f"code must be one of {', '.join(CODES)}, got {config.code!r}")
    if (isinstance(config.rate, bool) or not isinstance(config.rate, (int, float, np.integer, np.floating))
            or not math.isfinite(config.rate) or not 0.0 < config.rate < 1.0):
        raise ValueError(f"rate must be a real number in (0, 1) (the target code rate), got {config.rate!r}")
    config.rate = float(config.rate)
    if config.modulation not in MODULATION_BITS:
        raise ValueError(f"modulation must be one of {', '.join(MODULATIONS)}, got {config.modulation!r}")
    if not _is_int(config.bp_iterations) or config.bp_iterations < 1:
        raise ValueError(f"bp_iterations must be an integer >= 1, got {config.bp_iterations!r}")
    config.bp_iterations = int(config.bp_iterations)
    if not _is_int(config.list_size) or config.list_size < 1 or config.list_size & (config.list_size - 1):
        raise ValueError(f"list_size must be a power of two >= 1 (1, 2, 4, 8, ...), got {config.list_size!r}")
    config.list_size = int(config.list_size)


class CodedLink:
    """The bit path of the coded protocol, built from Sionna blocks once (CPU, float32).

    ``k`` info bits -> 5G encoder (``N = n m`` coded bits) -> 5G scrambler -> Gray PAM of ``m`` bits
    -> ``n`` real symbols, and back: ``demap`` (exact APP LLRs for the channel the receiver is told)
    then ``decode`` (descramble, Sionna decoder). Every message is coded on its own: its symbols
    never depend on the rest of its batch.

    Raises ValueError (naming the budget ``n`` and the limit) when Sionna's 5G code cannot be built
    for ``k`` and ``N``.
    """

    def __init__(self, k: int, n: int, *, code: str = "ldpc", modulation: str = "bpsk",
                 bp_iterations: int = 20, list_size: int = 8) -> None:
        if code not in CODES:
            raise ValueError(f"code must be one of {', '.join(CODES)}, got {code!r}")
        if modulation not in MODULATION_BITS:
            raise ValueError(f"modulation must be one of {', '.join(MODULATIONS)}, got {modulation!r}")
        if not _is_int(n) or n < 1:
            raise ValueError(f"budget (channel uses n) must be an integer >= 1, got {n!r}")
        self.code, self.modulation = code, modulation
        #: channel uses per message
        self.n = int(n)
        #: coded bits per real channel use
        self.m = MODULATION_BITS[modulation]
        #: coded bits per message
        self.N = self.n * self.m
        #: information bits per message
        self.k = int(k)
        self._check_limits()
        self._build(bp_iterations, list_size)

    # ---- construction ---------------------------------------------------------------------------

    def _where(self) -> str:
        return (f"budget={self.n} channel uses ({self.modulation}, {self.m} coded bit(s) per use: "
                f"N={self.N} coded bits, k={self.k} info bits, rate {self.k / self.N:.3f})")

    def _check_limits(self) -> None:
        problem = code_limit_problem(self.code, self.k, self.N)
        if problem:
            raise ValueError(f"coded protocol: {self._where()} cannot be built: {problem}")

    def _build(self, bp_iterations: int, list_size: int) -> None:
        import torch
        from sionna.phy.fec.scrambling import TB5GScrambler
        from sionna.phy.mapping import Constellation, Mapper

        opts = {"precision": "single", "device": "cpu"}
        try:
            # Sionna prints notes while building some polar codes; keep stdout clean
            with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
                if self.code == "ldpc":
                    from sionna.phy.fec.ldpc import LDPC5GDecoder, LDPC5GEncoder

                    self.encoder = LDPC5GEncoder(self.k, self.N, num_bits_per_symbol=self.m if self.m > 1 else None,
                                                 **opts)
                    self.decoder = LDPC5GDecoder(self.encoder, num_iter=bp_iterations, hard_out=True,
                                                 return_infobits=True, **opts)
                else:
                    from sionna.phy.fec.polar import Polar5GDecoder, Polar5GEncoder

                    self.encoder = Polar5GEncoder(self.k, self.N, channel_type="uplink", **opts)
                    self.decoder = Polar5GDecoder(self.encoder, dec_type="SCL", list_size=list_size, **opts)
        except ValueError as err:
            raise ValueError(f"coded protocol: {self._where()} cannot be built by Sionna's 5G "
                             f"{self.code}: {err}") from err
        self.scrambler = TB5GScrambler(n_rnti=1, n_id=1, binary=True, channel_type="PUSCH", **opts)
        self.constellation = Constellation("pam", self.m, **opts)
        self.mapper = Mapper(constellation=self.constellation, **opts)
        #: the 2^m PAM points (float64), point j labelled by the m-bit binary form of j, MSB first
        self.points = self.constellation().real.double().numpy()
        shifts = np.arange(self.m - 1, -1, -1)
        #: label bits of each point (2^m, m)
        self.labels = (np.arange(2**self.m)[:, None] >> shifts) & 1

    # ---- the bit path ---------------------------------------------------------------------------

    def modulate(self, bits: np.ndarray) -> np.ndarray:
        """Info bits ``(B, k)`` 0/1 -> real symbols ``(B, n)`` float32 of unit mean power."""
        import torch

        bits = np.asarray(bits)
        if bits.ndim != 2 or bits.shape[1] != self.k:
            raise ValueError(f"bits must have shape (B, k={self.k}), got {bits.shape}")
        if bits.shape[0] == 0:
            return np.zeros((0, self.n), dtype=np.float32)
        with torch.no_grad():
            u = torch.from_numpy(bits.astype(np.float32))
            c = self.scrambler(self.encoder(u))  # (B, N)
            x = self.mapper(c)  # (B, n) complex, imaginary part 0
        return x.real.numpy().astype(np.float32)

    def demap(self, y: np.ndarray, channel: ChannelModel | None = None,
              gain: np.ndarray | None = None) -> np.ndarray:
        """Exact APP LLRs of the ``N`` sent (scrambled) coded bits from ``y (B, n)`` -> ``(B, N)`` float64.

        Sionna's convention: ``log p(b=1 | y) - log p(b=0 | y)`` (logits); 0 carries no information
        (an erased symbol). Bits ``i m .. i m + m - 1`` are the label of symbol ``i``, MSB first.
        """
        y = np.asarray(y, dtype=np.float64)
        g = np.ones_like(y) if gain is None else np.asarray(gain, dtype=np.float64)
        ll = log_likelihood(y[..., None], self.points, channel, g[..., None])  # (B, n, 2^m)
        ll = np.broadcast_to(ll, y.shape + (len(self.points),))
        llr = np.empty(y.shape + (self.m,), dtype=np.float64)
        for i in range(self.m):
            one = self.labels[:, i] == 1
            llr[..., i] = _logsumexp(ll[..., one]) - _logsumexp(ll[..., ~one])
        return llr.reshape(*y.shape[:-1], self.N)

    def decode(self, llr: np.ndarray) -> np.ndarray:
        """LLRs of the sent coded bits ``(B, N)`` (``demap``'s) -> decoded info bits ``(B, k)`` uint8."""
        import torch

        llr = np.asarray(llr)
        if llr.ndim != 2 or llr.shape[1] != self.N:
            raise ValueError(f"llr must have shape (B, N={self.N}), got {llr.shape}")
        if llr.shape[0] == 0:
            return np.zeros((0, self.k), dtype=np.uint8)
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(llr, dtype=np.float32))
            t = self.scrambler(t, binary=False)  # descramble: flip the signs of scrambled bits
            u_hat = self.decoder(t)
        return (u_hat.numpy() > 0.5).astype(np.uint8)

    def receive(self, y: np.ndarray, channel: ChannelModel | None = None,
                gain: np.ndarray | None = None) -> np.ndarray:
        """``decode(demap(y, channel, gain))``: received symbols ``(B, n)`` -> info bits ``(B, k)``."""
        return self.decode(self.demap(y, channel, gain))


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """``log sum exp`` over the last axis, stable (all ``-inf`` gives ``-inf``)."""
    mx = a.max(axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(a - mx).sum(axis=-1)) + mx[..., 0]


class CodedProtocol(Protocol):
    """The digital baseline: ``ids (B, L)`` -> source bits -> 5G LDPC / Polar -> Gray PAM ``(B, n)``."""

    name = "coded"
    config_class = CodedProtocolConfig

    def __init__(self, config: CodedProtocolConfig) -> None:
        super().__init__()
        self.config = config
        #: whether ``decode`` returns token ids (only the tokens source sends them)
        self.decodes_tokens = config.source == "tokens"
        #: bits per token id, b = ceil(log2 V)
        self.bits = max(1, math.ceil(math.log2(config.vocab_size)))
        #: coded bits per real channel use
        self.coded_bits_per_use = MODULATION_BITS[config.modulation]
        #: coded bits per message
        self.N = config.budget * self.coded_bits_per_use
        if config.source == "hash":
            #: tokens sent (tokens source; None for the hash)
            self.tokens = None
            #: information bits per message
            self.k = int(round(config.rate * self.N))
        else:
            self.tokens = int(math.floor(config.rate * self.N / self.bits))
            if self.tokens < 1:
                raise ValueError(
                    f"coded protocol: budget={config.budget} channel uses ({config.modulation}, N={self.N} "
                    f"coded bits at rate {config.rate}) cannot carry one token of {self.bits} bits "
                    f"(vocab_size={config.vocab_size}); raise the budget or the rate"
                )
            self.k = self.tokens * self.bits
        #: the code rate actually used, k / N
        self.actual_rate = self.k / self.N
        #: the Sionna bit path (encoder, scrambler, mapper, demapper, decoder), built once
        self.link = CodedLink(self.k, config.budget, code=config.code, modulation=config.modulation,
                              bp_iterations=config.bp_iterations, list_size=config.list_size)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def channel_uses(self, L: int) -> int:
        return self.config.budget

    def bits_sent(self, L: int) -> int:
        """The ``k`` information bits (the code's payload)."""
        return self.k

    def informative_positions(self, L: int) -> slice:
        """Tokens source: the first T positions; hash source: all (the hash covers the whole passage)."""
        return slice(0, L) if self.tokens is None else slice(0, min(self.tokens, L))

    def source_bits(self, ids: np.ndarray) -> np.ndarray:
        """The ``k`` source bits of passages ``ids (..., L)`` -> ``(..., k)`` uint8 in {0, 1}."""
        ids = np.asarray(ids)
        if self.tokens is None:
            return keyed_hash_bits(ids, self.k, self.config.key.encode())
        if ids.shape[-1] < self.tokens:
            raise ValueError(f"passages of L={ids.shape[-1]} tokens are shorter than the T={self.tokens} "
                             f"tokens the budget carries")
        shifts = np.arange(self.bits - 1, -1, -1, dtype=np.int64)
        bits = (ids[..., : self.tokens, None].astype(np.int64) >> shifts) & 1  # (..., T, b)
        return bits.reshape(*ids.shape[:-1], self.k).astype(np.uint8)

    def fit(self, train_ids: np.ndarray) -> CodedProtocol:
        """Record the passage length (the code and constellation need no statistics)."""
        ids = self._check_train(train_ids)
        L = int(ids.shape[1])
        if self.tokens is not None and self.tokens > L:
            raise ValueError(
                f"coded protocol: budget={self.config.budget} channel uses carry T={self.tokens} tokens at "
                f"rate {self.config.rate}, more than the passages' L={L}; lower the budget or the rate"
            )
        self.seq_len = L
        return self

    def _encode(self, ids: np.ndarray) -> np.ndarray:
        return self.link.modulate(self.source_bits(ids))

    def _decoded_bits(self, symbols: np.ndarray, channel: ChannelModel | None, gain: np.ndarray) -> np.ndarray:
        return self.link.receive(symbols, channel, gain)  # (B, k)

    def _hard_score(self, symbols, candidates, channel, gain) -> np.ndarray:
        decoded = self._decoded_bits(symbols, channel, gain)[:, None, :]  # (B, 1, k)
        return -(decoded != self.source_bits(candidates)).sum(axis=-1).astype(np.float64)

    def _decode(self, symbols: np.ndarray, channel: ChannelModel | None, gain: np.ndarray) -> np.ndarray:
        if self.tokens is None:
            raise ValueError("the coded protocol with the hash source sends no tokens")
        L = self._require_fit()
        B = symbols.shape[0]
        bits = self._decoded_bits(symbols, channel, gain).astype(np.int64).reshape(B, self.tokens, self.bits)
        weights = 1 << np.arange(self.bits - 1, -1, -1, dtype=np.int64)
        ids = np.zeros((B, L), dtype=np.int64)
        ids[:, : self.tokens] = np.minimum(bits @ weights, self.vocab_size - 1)
        return ids

    def _config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def _stats(self) -> dict[str, np.ndarray]:
        # the code's size and the key's fingerprint: a saved protocol is refused if its config was edited
        return {
            "code_size": np.array([self.k, self.N, self.coded_bits_per_use], dtype=np.int64),
            "key_digest": np.frombuffer(hashlib.sha256(self.config.key.encode()).digest(), dtype=np.uint8),
        }

    def _set_stats(self, stats: dict[str, np.ndarray]) -> None:
        mine = self._stats()
        if not np.array_equal(stats["code_size"], mine["code_size"]):
            raise ValueError(f"the saved coded protocol's (k, N, m) {stats['code_size'].tolist()} do not "
                             f"match its config's {mine['code_size'].tolist()}")
        if not np.array_equal(stats["key_digest"], mine["key_digest"]):
            raise ValueError("the saved coded protocol's key does not match its config")
