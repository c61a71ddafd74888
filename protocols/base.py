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
"""

from __future__ import annotations

import abc
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = ["Protocol", "check_sigma", "cyclic_combine", "cyclic_fill"]

CONFIG_FILE = "protocol.json"
STATS_FILE = "protocol.safetensors"


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
    B, n = y.shape
    if n < m:
        raise ValueError(f"cannot combine n={n} channel uses into m={m} > n symbols")
    reps = -(-n // m)
    padded = np.zeros((B, reps * m), dtype=np.float64)
    padded[:, :n] = y
    counts = np.full(m, n // m, dtype=np.float64)
    counts[: n % m] += 1
    return padded.reshape(B, reps, m).sum(axis=1) / counts  # (B, m)


class Protocol(abc.ABC):
    """Maps messages of ``L`` token ids to ``n`` real channel symbols and back.

    Subclasses implement ``fit``, ``_encode``, ``_decode``, ``channel_uses`` and the
    ``_stats``/``_set_stats`` pair; the public methods here validate inputs and implement the
    receivers once for all protocols.
    """

    #: registry key written to ``protocol.json`` by ``save``
    name: ClassVar[str]

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
    def _decode(self, symbols: np.ndarray) -> np.ndarray:
        """Validated ``symbols (B, n)`` float64 -> ids ``(B, L)`` int64."""

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

    def decode(self, symbols: np.ndarray) -> np.ndarray:
        """Hard receiver: map (noisy) symbols ``(B, n)`` back to token ids ``(B, L)`` int64."""
        return self._decode(self._check_symbols(symbols))

    def score(self, symbols: np.ndarray, candidates: np.ndarray, *, sigma: float | None = None) -> np.ndarray:
        """Soft receiver: Gaussian log-likelihood of each candidate, up to a constant.

        ``log p(y | cand) = -||y - encode(cand)||^2 / (2 sigma^2) + const`` under AWGN; the
        maximum-likelihood choice is its argmax. The ranking does not depend on sigma, so sigma
        may be left out (it then defaults to 1: ``-||y - x||^2 / 2``); sigma 0 also uses 1.

        Args:
            symbols: received symbols ``(B, n)``.
            candidates: token ids ``(B, C, L)``, ``C >= 2``.
            sigma: noise standard deviation >= 0, only a scale.

        Returns:
            float64 ``(B, C)``.
        """
        y = self._check_symbols(symbols)
        cands = self._check_candidates(candidates, y.shape[0])
        scale = 1.0
        if sigma is not None:
            sigma = check_sigma(sigma)
            scale = 1.0 if sigma == 0 else sigma
        B, C, L = cands.shape
        x = self._encode(cands.reshape(B * C, L)).astype(np.float64).reshape(B, C, -1)  # (B, C, n)
        d2 = ((x - y[:, None, :]) ** 2).sum(axis=-1)  # (B, C)
        return -d2 / (2.0 * scale**2)

    def hard_score(self, symbols: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Hard receiver over candidates: tokens of ``decode(symbols)`` each candidate agrees with.

        Only the positions the symbols carry count (``informative_positions``).

        Args:
            symbols: received symbols ``(B, n)``.
            candidates: token ids ``(B, C, L)``, ``C >= 2``.

        Returns:
            int64 ``(B, C)`` agreement counts; the hard choice is their argmax.
        """
        y = self._check_symbols(symbols)
        cands = self._check_candidates(candidates, y.shape[0])
        decoded = self._decode(y)  # (B, L)
        pos = self.informative_positions(cands.shape[2])
        return (cands[:, :, pos] == decoded[:, None, pos]).sum(axis=-1).astype(np.int64)

    def save(self, directory: str | Path) -> None:
        """Write ``protocol.json`` (type, config, seq_len) and ``protocol.safetensors`` (fitted stats)."""
        from safetensors.numpy import save_file

        self._require_fit()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"protocol": self.name, "config": self._config(), "seq_len": self.seq_len}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        stats = {k: np.ascontiguousarray(v) for k, v in self._stats().items()}
        save_file(stats, str(directory / STATS_FILE))

    @staticmethod
    def read_config(directory: str | Path) -> dict[str, Any]:
        """The ``protocol.json`` of a saved protocol (``protocol``, ``config``, ``seq_len``)."""
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no saved protocol at {directory}: missing {CONFIG_FILE}")
        return json.loads(path.read_text())

    def _load_stats(self, directory: str | Path, seq_len: int) -> None:
        from safetensors.numpy import load_file

        path = Path(directory) / STATS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no saved protocol at {directory}: missing {STATS_FILE}")
        self._set_stats(load_file(str(path)))
        self.seq_len = int(seq_len)

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
