"""The ``Protocol`` interface shared by every message <-> channel-symbol mapping.

Dimension letters used in this package:
    B  messages (games) in a batch
    L  tokens per message (passage length)
    C  candidates per game
    n  channel uses per message (the bandwidth budget)
    m  distinct symbols a protocol carries before repetition (m <= n)

Fairness (DESIGN.md section 3): every protocol emits float32 symbols with mean power 1 per symbol,
normalised with statistics fixed by ``fit`` on training passages (never per message, which would
leak information through the scale), and exactly ``channel_uses(L)`` symbols per message.

Receivers learn the channel through explicit arguments, never from an environment's internals:
``channel`` is a model of the channel the symbols crossed (anything with ``log_likelihood(y, x, gain)``,
as every ``environments.channels`` class has) and ``gain (B, n)`` the fading gains the receiver is told
(coherent detection; ones when nothing fades). Without a channel the receivers assume AWGN at unit
noise variance, which ranks candidates exactly as AWGN at any sigma does.
"""

from __future__ import annotations

import abc
import math
from pathlib import Path
from typing import Any, ClassVar, runtime_checkable
from typing import Protocol as TypingProtocol

import numpy as np

from protocols.saved import build_config, read_meta, restore_stats, write_saved

__all__ = [
    "ChannelModel",
    "Protocol",
    "bpsk_llr",
    "check_sigma",
    "cyclic_combine",
    "cyclic_fill",
    "cyclic_sum",
    "hamming_score",
    "log_likelihood",
]


def check_sigma(sigma: float) -> float:
    """Return ``sigma`` as a float, or raise ValueError unless it is finite and >= 0."""
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite standard deviation >= 0, got {sigma}")
    return sigma


def cyclic_fill(x: np.ndarray, n: int) -> np.ndarray:
    """Repeat the ``m`` columns of ``x (B, m)`` cyclically to exactly ``n`` columns.

    Column ``j`` of the output is column ``j mod m`` of ``x``. With ``n < m`` this truncates;
    protocols only call it with ``n >= m``. Nothing is zero-padded, so when every column of ``x``
    has the same mean power the output keeps it.
    """
    B, m = x.shape
    reps = -(-n // m)  # ceil
    return np.tile(x, (1, reps))[:, :n]


def cyclic_combine(y: np.ndarray, m: int) -> np.ndarray:
    """Invert ``cyclic_fill``: average the copies of each of the ``m`` symbols in ``y (B, n)``.

    Under AWGN the copies are the same symbol plus independent noise, so their mean is the
    maximum-likelihood estimate of the symbol (maximal-ratio combining of equal-power copies).
    """
    n = y.shape[1]
    counts = np.full(m, n // m, dtype=np.float64)
    counts[: n % m] += 1
    return cyclic_sum(y, m) / counts  # (B, m)


def cyclic_sum(v: np.ndarray, m: int) -> np.ndarray:
    """Sum the copies of each of the ``m`` symbols in ``v (B, n)`` laid out by ``cyclic_fill``: ``(B, m)``.

    Log-likelihood ratios of independent copies of one bit add up (the exact combination on any
    memoryless channel), so receivers combine LLRs with this and symbols with ``cyclic_combine``.
    """
    B, n = v.shape
    if n < m:
        raise ValueError(f"cannot combine n={n} channel uses into m={m} > n symbols")
    reps = -(-n // m)
    padded = np.zeros((B, reps * m), dtype=np.float64)
    padded[:, :n] = v
    return padded.reshape(B, reps, m).sum(axis=1)


@runtime_checkable
class ChannelModel(TypingProtocol):
    """What a receiver needs to know of a channel: its per-symbol log-likelihood."""

    def log_likelihood(self, y: np.ndarray, x: np.ndarray, gain: np.ndarray | None = None) -> np.ndarray:
        """``log p(y | x)`` per symbol, up to terms that do not depend on ``x``; y, x, gain broadcast."""
        ...


def log_likelihood(y: np.ndarray, x: np.ndarray, channel: ChannelModel | None, gain: np.ndarray | None) -> np.ndarray:
    """Per-symbol ``log p(y | x)`` under ``channel`` (None: AWGN at unit noise variance, with the gain)."""
    if channel is None:
        g = 1.0 if gain is None else gain
        return -((y - g * x) ** 2) / 2.0
    return channel.log_likelihood(y, x, gain)


def bpsk_llr(y: np.ndarray, channel: ChannelModel | None, gain: np.ndarray | None) -> np.ndarray:
    """Per-symbol LLR ``log p(y | +1) - log p(y | -1)`` of BPSK symbols ``y (B, n)`` (bit 0 <-> +1).

    Exact for any memoryless channel the receiver is told about: an erased symbol gives 0 (no
    information), a faded one is weighted by its known gain.
    """
    return log_likelihood(y, np.float64(1.0), channel, gain) - log_likelihood(y, np.float64(-1.0), channel, gain)


def hamming_score(llr: np.ndarray, candidate_bits: np.ndarray) -> np.ndarray:
    """Hard receiver in the bit domain: minus the Hamming distance from the hard bits to each candidate's.

    Args:
        llr: combined LLRs of the ``m`` sent bits ``(B, m)``; bit = 1 where llr < 0. A bit with llr
            exactly 0 (every copy erased) is unknown and not counted.
        candidate_bits: the bits each candidate would send ``(B, C, m)``, 0/1.

    Returns:
        float64 ``(B, C)``: ``-distance``, so the argmax is the candidate at minimum Hamming distance.
    """
    hard = (llr < 0)[:, None, :]  # (B, 1, m)
    known = (llr != 0)[:, None, :]
    return -((hard != candidate_bits.astype(bool)) & known).sum(axis=-1).astype(np.float64)


class Protocol(abc.ABC):
    """Maps messages of ``L`` token ids to ``n`` real channel symbols and back.

    Subclasses implement ``fit``, ``_encode``, ``_decode``, ``channel_uses`` and the
    ``_stats``/``_set_stats`` pair; the public methods here validate inputs and implement the
    receivers once for all protocols.
    """

    #: registry key written to ``protocol.json`` by ``save``
    name: ClassVar[str]
    #: whether ``decode`` maps symbols back to token ids (a hash of the passage cannot be inverted)
    decodes_tokens: ClassVar[bool] = True
    #: the domain the hard receiver decides in (docs/protocols.md): "bits" or "latents"
    hard_domain: ClassVar[str] = "bits"
    #: the config dataclass the constructor takes (``load`` rebuilds the protocol from it)
    config_class: ClassVar[type]

    def __init__(self) -> None:
        # passage length the protocol was fitted for; set by ``fit``
        self.seq_len: int | None = None

    # ---- to implement ------------------------------------------------------------------------

    @abc.abstractmethod
    def fit(self, train_ids: np.ndarray) -> Protocol:
        """Fit the fixed normalisation statistics on training passages ``(N, L)``; returns self."""

    @abc.abstractmethod
    def channel_uses(self, L: int) -> int:
        """Symbols ``n`` a message of ``L`` tokens takes: the budget when set, else the natural count."""

    @abc.abstractmethod
    def _encode(self, ids: np.ndarray) -> np.ndarray:
        """Validated ``ids (B, L)`` int64 -> symbols ``(B, n)`` float32."""

    @abc.abstractmethod
    def _decode(self, symbols: np.ndarray, channel: ChannelModel | None, gain: np.ndarray) -> np.ndarray:
        """Validated ``symbols (B, n)`` float64 (and gains) -> ids ``(B, L)`` int64."""

    @abc.abstractmethod
    def _hard_score(self, symbols: np.ndarray, candidates: np.ndarray, channel: ChannelModel | None,
                    gain: np.ndarray) -> np.ndarray:
        """Validated inputs -> ``(B, C)`` minus the distance in the protocol's own domain."""

    def bits_sent(self, L: int) -> int | None:
        """Payload bits one message of ``L`` tokens carries (None for an analog protocol)."""
        return None

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids V the protocol accepts."""

    @abc.abstractmethod
    def _config(self) -> dict[str, Any]:
        """JSON-serialisable constructor settings."""

    @abc.abstractmethod
    def _stats(self) -> dict[str, np.ndarray]:
        """Fitted arrays to save."""

    @abc.abstractmethod
    def _set_stats(self, stats: dict[str, np.ndarray]) -> None:
        """Restore fitted arrays saved by ``_stats``."""

    def informative_positions(self, L: int) -> slice:
        """Token positions the symbols carry (all of them unless a budget truncates the message)."""
        return slice(0, L)

    # ---- public API --------------------------------------------------------------------------

    def encode(self, ids: np.ndarray) -> np.ndarray:
        """Map messages to channel symbols.

        Args:
            ids: integer token ids ``(B, L)``, ``L`` the fitted passage length, values in [0, V).

        Returns:
            float32 symbols ``(B, n)`` with ``n = channel_uses(L)`` and mean power 1 per symbol
            (measured on training passages).
        """
        ids = self._check_ids(ids, "ids")
        return self._encode(ids)

    def decode(self, symbols: np.ndarray, *, channel: ChannelModel | None = None,
               gain: np.ndarray | None = None) -> np.ndarray:
        """Hard decoding to tokens: (noisy) symbols ``(B, n)`` -> token ids ``(B, L)`` int64.

        Args:
            symbols: received symbols ``(B, n)``.
            channel: the channel model the receiver is told (see the module docstring); None: AWGN.
            gain: fading gains ``(B, n)`` the receiver is told; None: ones.
        """
        if not self.decodes_tokens:
            raise ValueError(f"the {self.name} protocol sends no tokens: its symbols cannot be decoded to ids")
        y = self._check_symbols(symbols)
        return self._decode(y, channel, self._check_gain(gain, y.shape))

    def score(self, symbols: np.ndarray, candidates: np.ndarray, *, channel: ChannelModel | None = None,
              gain: np.ndarray | None = None) -> np.ndarray:
        """Soft receiver: the log-likelihood of each candidate under the channel, up to a constant.

        ``log p(y | cand) = sum_j log p(y_j | x_j(cand), gain_j)`` with ``x(cand) = encode(cand)``:
        the maximum-likelihood choice over the candidates is its argmax, exact for the channel the
        receiver is told (AWGN, erasure, erasure then AWGN, quantisation, fading: see
        ``environments.channels``). Without a channel: AWGN, ``-||y - gain * x||^2 / 2``.

        Args:
            symbols: received symbols ``(B, n)``.
            candidates: token ids ``(B, C, L)``, ``C >= 2``.
            channel: the channel model (``log_likelihood(y, x, gain)``).
            gain: fading gains ``(B, n)``; None: ones.

        Returns:
            float64 ``(B, C)``.
        """
        y = self._check_symbols(symbols)
        cands = self._check_candidates(candidates, y.shape[0])
        gain = self._check_gain(gain, y.shape)
        B, C, L = cands.shape
        x = self._encode(cands.reshape(B * C, L)).astype(np.float64).reshape(B, C, -1)  # (B, C, n)
        ll = log_likelihood(y[:, None, :], x, channel, gain[:, None, :])  # (B, C, n)
        return ll.sum(axis=-1)

    def hard_score(self, symbols: np.ndarray, candidates: np.ndarray, *, channel: ChannelModel | None = None,
                   gain: np.ndarray | None = None) -> np.ndarray:
        """Hard receiver over candidates: decide in the protocol's own domain, then pick the nearest.

        Digital protocols (``hard_domain == "bits"``) make hard bit decisions (the sign of the
        combined LLRs; a channel decoder first where there is a code) and score each candidate by
        minus its Hamming distance to them; the vector protocol estimates its code by least squares
        and scores minus the Euclidean distance (docs/protocols.md says what each decodes).

        Args:
            symbols: received symbols ``(B, n)``.
            candidates: token ids ``(B, C, L)``, ``C >= 2``.
            channel: the channel model (for the LLRs); None: AWGN.
            gain: fading gains ``(B, n)``; None: ones.

        Returns:
            float64 ``(B, C)``; the hard choice is the argmax (the nearest candidate).
        """
        y = self._check_symbols(symbols)
        cands = self._check_candidates(candidates, y.shape[0])
        return self._hard_score(y, cands, channel, self._check_gain(gain, y.shape))

    def save(self, directory: str | Path) -> None:
        """Write ``protocol.json`` (type, config, seq_len) and ``protocol.safetensors`` (fitted stats)."""
        self._require_fit()
        write_saved(directory, {"protocol": self.name, "config": self._config(), "seq_len": self.seq_len},
                    self._stats())

    @classmethod
    def load(cls, directory: str | Path) -> Protocol:
        """Load a protocol written by ``save`` (one built from its ``config_class`` alone).

        Raises:
            FileNotFoundError: no ``protocol.json`` in ``directory``.
            ValueError: it holds another kind of protocol.
            DamagedFileError: a damaged ``protocol.json`` or ``protocol.safetensors`` (``protocols.saved``).
        """
        meta = cls.read_config(directory)
        if meta["protocol"] != cls.name:
            raise ValueError(f"{directory} holds a {meta['protocol']!r} protocol, not {cls.name!r}")
        proto = cls(build_config(directory, cls.config_class, meta["config"]))
        proto._load_stats(directory, meta["seq_len"])
        return proto

    @staticmethod
    def read_config(directory: str | Path) -> dict[str, Any]:
        """The checked ``protocol.json`` of a saved protocol (``protocol``, ``config``, ``seq_len``):
        FileNotFoundError when there is none, DamagedFileError when it cannot be read back."""
        return read_meta(directory)

    def _stat_shapes(self, L: int) -> dict[str, tuple[int, ...]] | None:
        """The names and shapes of the fitted arrays for passages of ``L`` tokens (None: ``_set_stats``
        checks them itself)."""
        return None

    def _load_stats(self, directory: str | Path, seq_len: int) -> None:
        """Restore the fitted arrays of ``directory``, checked against the config (names, shapes, finite)."""
        restore_stats(self, directory, seq_len)

    # ---- validation --------------------------------------------------------------------------

    def _require_fit(self) -> int:
        if self.seq_len is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(train_ids) or load(dir) first")
        return self.seq_len

    def _check_int_array(self, ids: Any, field: str, ndim: int) -> np.ndarray:
        if not isinstance(ids, np.ndarray):
            raise ValueError(f"{field} must be a numpy integer array, got {type(ids).__name__}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{field} must have an integer dtype, got {ids.dtype}")
        if ids.ndim != ndim:
            raise ValueError(f"{field} must have {ndim} dims, got shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"{field} must hold token ids in [0, {self.vocab_size}), got range [{ids.min()}, {ids.max()}]"
            )
        return ids.astype(np.int64, copy=False)

    def _check_ids(self, ids: Any, field: str) -> np.ndarray:
        L = self._require_fit()
        ids = self._check_int_array(ids, field, 2)
        if ids.shape[1] != L:
            raise ValueError(
                f"{field} must have shape (B, L={L}) (the fitted passage length), got {ids.shape}"
            )
        return ids

    def _check_candidates(self, candidates: Any, B: int) -> np.ndarray:
        L = self._require_fit()
        cands = self._check_int_array(candidates, "candidates", 3)
        if cands.shape[0] != B or cands.shape[2] != L:
            raise ValueError(f"candidates must have shape (B={B}, C, L={L}), got {cands.shape}")
        if cands.shape[1] < 2:
            raise ValueError(f"candidates must hold C >= 2 passages per game, got C={cands.shape[1]}")
        return cands

    def _check_symbols(self, symbols: Any) -> np.ndarray:
        L = self._require_fit()
        if not isinstance(symbols, np.ndarray):
            raise ValueError(f"symbols must be a numpy float array, got {type(symbols).__name__}")
        if not np.issubdtype(symbols.dtype, np.floating):
            raise ValueError(f"symbols must have a float dtype, got {symbols.dtype}")
        n = self.channel_uses(L)
        if symbols.ndim != 2 or symbols.shape[1] != n:
            raise ValueError(f"symbols must have shape (B, n={n}), got {symbols.shape}")
        if not np.isfinite(symbols).all():
            raise ValueError("symbols must be finite (no NaN or inf)")
        return symbols.astype(np.float64, copy=False)

    def _check_gain(self, gain: Any, shape: tuple[int, ...]) -> np.ndarray:
        if gain is None:
            return np.ones(shape, dtype=np.float64)
        if not isinstance(gain, np.ndarray) or not np.issubdtype(gain.dtype, np.floating):
            raise ValueError(f"gain must be a numpy float array {shape}, got {type(gain).__name__}")
        if gain.shape != shape:
            raise ValueError(f"gain must have the symbols' shape {shape}, got {gain.shape}")
        if not (np.isfinite(gain).all() and (gain >= 0).all()):
            raise ValueError("gain must hold finite fading gains >= 0")
        return gain.astype(np.float64, copy=False)

    def _check_train(self, train_ids: Any) -> np.ndarray:
        ids = self._check_int_array(train_ids, "train_ids", 2)
        if ids.shape[0] < 1 or ids.shape[1] < 1:
            raise ValueError(f"train_ids must hold at least one passage of length >= 1, got {ids.shape}")
        return ids


def check_budget(budget: int | None) -> int | None:
    """Validate a channel-use budget: None (the natural count) or an integer >= 1."""
    if budget is None:
        return None
    if isinstance(budget, bool) or int(budget) != budget or budget < 1:
        raise ValueError(f"budget (channel uses n) must be None or an integer >= 1, got {budget}")
    return int(budget)
