"""What messages mean: compositionality measures of a language, for any study (issue 31).

A *language* here is N meanings paired with the N messages an agent sends for them. Dim letters:
N items, A attributes per meaning, m symbols (positions) per message, D vector size, P pairs.

- ``topographic_similarity``: the Spearman correlation, over pairs of items ``i < j``, between their
  distance in meaning space and their distance in message space (Brighton & Kirby 2006; Lazaridou et
  al. 2018). 1 when similar meanings get similar messages, about 0 for an arbitrary (holistic or
  random) mapping. Distances are pluggable; the named ones (``DISTANCE_NAMES``):

  - ``cosine``: ``1 - <a, b> / (|a| |b|)`` between rows of an (N, D) float array (CALM latent
    vectors, analog messages); rotation invariant;
  - ``euclidean``: ``|a - b|`` between rows of an (N, D) float array;
  - ``edit``: Levenshtein distance (unit-cost insertions, deletions, substitutions) between integer
    sequences of any lengths (token passages, discrete messages);
  - ``hamming``: the fraction of positions that differ between equal-length integer sequences, rows
    of an (N, m) array (attribute tuples, fixed-length messages).

- ``posdis``: positional disentanglement (Chaabouni et al. 2020, "Compositionality and generalization
  in emergent languages", ACL). For each message position j, with ``I_1 >= I_2`` the two largest
  mutual informations ``I(s_j; a_k)`` over attributes k: ``gap_j = (I_1 - I_2) / H(s_j)``; the mean
  over positions with ``H(s_j) > 0``. 1 when each position names exactly one attribute.
- ``bosdis``: bag-of-symbols disentanglement (same paper): the same gap with position j replaced by
  ``n_v``, the count of symbol v in the message, and the mean over symbols with ``H(n_v) > 0``. 1
  when each symbol's count names one attribute, wherever it sits.

Entropies and mutual informations are plug-in estimates in bits, from the empirical joint
distribution. They are biased upwards by about ``(|X| - 1)(|Y| - 1) / (2 N ln 2)`` bits, so a
random language scores slightly above 0 at small N.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from scipy.stats import spearmanr

__all__ = [
    "DISTANCE_NAMES",
    "bosdis",
    "edit_distance",
    "pairwise_distances",
    "posdis",
    "topographic_similarity",
]

DistanceName = Literal["cosine", "euclidean", "edit", "hamming"]
Distance = DistanceName | Callable[[Any, Any], float]
DISTANCE_NAMES: tuple[str, ...] = ("cosine", "euclidean", "edit", "hamming")

# elements gathered per chunk of pairs (P * D or P * (L + 1)): bounds memory at ~32 MB of float64
_CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------- distances


def edit_distance(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """Levenshtein distance between two integer sequences (unit-cost insert, delete, substitute).

    >>> edit_distance([1, 2, 3], [1, 3])
    1
    """
    seqs = [_as_sequence(a, "a"), _as_sequence(b, "b")]
    return int(_edit_pairs(seqs, np.array([0]), np.array([1]))[0])


def pairwise_distances(
    items: Any,
    distance: Distance,
    *,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Distances between items, over all unordered pairs or the given ones.

    Args:
        items: N items: an (N, D) float array for ``cosine``/``euclidean``, an (N, m) integer array
            (or N equal-length sequences) for ``hamming``, N integer sequences of any lengths for
            ``edit``, anything indexable with ``len`` for a callable.
        distance: one of ``DISTANCE_NAMES`` or a callable ``(a, b) -> float`` (called once per pair).
        pairs: index arrays ``(i, j)`` of P pairs; default: all ``i < j`` in ``np.triu_indices(N, 1)``
            order, the condensed upper triangle (scipy's ``pdist`` layout).

    Returns:
        (P,) float64 distances; P = N (N - 1) / 2 by default.
    """
    n = _count(items, "items")
    if pairs is None:
        i, j = np.triu_indices(n, 1)
    else:
        i, j = (np.asarray(p, dtype=np.int64).reshape(-1) for p in pairs)
        if i.shape != j.shape:
            raise ValueError(f"pairs must be two index arrays of one length, got {i.shape} and {j.shape}")
        if i.size and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
            raise ValueError(f"pair indices must lie in [0, {n}), got [{min(i.min(), j.min())}, "
                             f"{max(i.max(), j.max())}]")
    if callable(distance):
        return np.fromiter((distance(items[a], items[b]) for a, b in zip(i, j, strict=True)),
                           dtype=np.float64, count=i.size)
    if distance in ("cosine", "euclidean"):
        x = _as_float_matrix(items, "items")
        if distance == "cosine":
            norms = np.linalg.norm(x, axis=1)
            if np.any(norms == 0):
                zero = int(np.argmin(norms))
                raise ValueError(f"cosine distance is undefined for zero vectors (row {zero})")
            x = x / norms[:, None]
        return _gather_pairs(x, i, j, distance)
    if distance == "hamming":
        x = _as_equal_length(items, "items")
        if x.shape[1] == 0:
            raise ValueError("hamming distance needs sequences of length >= 1, got length 0")
        return _gather_pairs(x, i, j, "hamming")
    if distance == "edit":
        seqs = [_as_sequence(s, f"items[{k}]") for k, s in enumerate(items)]
        return _edit_pairs(seqs, i, j)
    raise ValueError(f"unknown distance {distance!r}; expected one of {DISTANCE_NAMES} or a callable")


def _gather_pairs(x: np.ndarray, i: np.ndarray, j: np.ndarray, kind: str) -> np.ndarray:
    """Row-wise distances ``d(x[i], x[j])`` for one of the vector kinds, in bounded-memory chunks."""
    out = np.empty(i.size, dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(1, x.shape[1]))
    for s in range(0, i.size, step):
        a, b = x[i[s:s + step]], x[j[s:s + step]]  # (P, D)
        if kind == "cosine":
            # rows are unit length; clip rounding outside [0, 2]
            out[s:s + step] = np.clip(1.0 - np.einsum("pd,pd->p", a, b), 0.0, 2.0)
        elif kind == "euclidean":
            out[s:s + step] = np.linalg.norm(a - b, axis=1)
        else:
            out[s:s + step] = np.mean(a != b, axis=1)
    return out


def _edit_pairs(seqs: list[np.ndarray], i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Levenshtein distances of the pairs ``(seqs[i], seqs[j])``, one DP row at a time across all pairs.

    The sequences are padded to one length L: DP cell (r, c) depends only on ``a[:r]`` and ``b[:c]``,
    so padding never reaches the cell ``(len a, len b)`` read for each pair.
    """
    n = len(seqs)
    lengths = np.array([s.size for s in seqs], dtype=np.int64)
    width = int(lengths.max()) if n else 0
    # symbols -> small integer codes, so sequences of any integer dtype share one padded array
    flat = np.concatenate(seqs) if n else np.zeros(0, dtype=np.int64)
    _, codes = np.unique(flat, return_inverse=True)
    padded = np.full((n, width), -1, dtype=np.int64)
    padded[np.arange(width) < lengths[:, None]] = codes.reshape(-1)
    cols = np.arange(width + 1)
    out = np.empty(i.size, dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // (width + 1))
    for s in range(0, i.size, step):
        a, b = padded[i[s:s + step]], padded[j[s:s + step]]  # (P, L)
        la, lb = lengths[i[s:s + step]], lengths[j[s:s + step]]
        res = np.empty(la.size, dtype=np.float64)
        row = np.broadcast_to(cols, (la.size, width + 1)).copy()  # D[0, c] = c
        done = la == 0
        res[done] = lb[done]
        for r in range(1, int(la.max(initial=0)) + 1):
            tmp = np.empty_like(row)
            tmp[:, 0] = r
            # substitution (diagonal) or deletion (from above)
            tmp[:, 1:] = np.minimum(row[:, :-1] + (a[:, r - 1:r] != b), row[:, 1:] + 1)
            # insertion chains along the row: D[r, c] = min_k<=c (tmp[k] + c - k)
            row = np.minimum.accumulate(tmp - cols, axis=1) + cols
            sel = la == r
            res[sel] = row[sel, lb[sel]]
        out[s:s + step] = res
    return out


# ---------------------------------------------------------------- topographic similarity


def topographic_similarity(
    meanings: Any,
    messages: Any,
    meaning_distance: Distance,
    message_distance: Distance,
    *,
    max_pairs: int | None = None,
    rng: np.random.Generator | int | None = None,
) -> float:
    """Spearman correlation between meaning distances and message distances over pairs of items.

    Args:
        meanings: N meanings, in the layout ``meaning_distance`` reads (see ``pairwise_distances``).
        messages: the N messages sent for them, in the layout ``message_distance`` reads.
        meaning_distance: a name in ``DISTANCE_NAMES`` or a callable ``(a, b) -> float``.
        message_distance: the same, for messages.
        max_pairs: use a random subset of this many distinct pairs (drawn without replacement) when
            there are more than that; default: all N (N - 1) / 2 pairs.
        rng: generator or seed for that subset; None means seed 0, so repeated calls agree.

    Returns:
        rho in [-1, 1]; nan when either distance vector is constant (a correlation is undefined there:
        e.g. single-symbol messages under ``hamming`` are all at distance 1 from each other).
    """
    n, n_messages = _count(meanings, "meanings"), _count(messages, "messages")
    if n_messages != n:
        raise ValueError(f"meanings and messages must have one length, got {n} and {n_messages}")
    if n < 2:
        raise ValueError(f"topographic similarity needs at least 2 items, got {n}")
    for name, d in (("meaning_distance", meaning_distance), ("message_distance", message_distance)):
        if not callable(d) and d not in DISTANCE_NAMES:
            raise ValueError(f"unknown {name} {d!r}; expected one of {DISTANCE_NAMES} or a callable")
    total = n * (n - 1) // 2
    pairs = None
    if max_pairs is not None:
        if isinstance(max_pairs, bool) or int(max_pairs) != max_pairs or max_pairs < 2:
            raise ValueError(f"max_pairs must be an integer >= 2, got {max_pairs}")
        if max_pairs < total:
            gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(
                0 if rng is None else rng)
            pairs = _condensed_to_pairs(np.sort(gen.choice(total, size=int(max_pairs), replace=False)), n)
    d_meaning = pairwise_distances(meanings, meaning_distance, pairs=pairs)
    d_message = pairwise_distances(messages, message_distance, pairs=pairs)
    # spearmanr warns and returns nan on constant input; say nan without the warning
    if np.ptp(d_meaning) == 0 or np.ptp(d_message) == 0:
        return float("nan")
    return float(spearmanr(d_meaning, d_message).statistic)


def _condensed_to_pairs(k: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Condensed (upper-triangle, row-major) indices -> ``(i, j)`` with ``i < j``, exactly in integers."""
    rows = np.arange(n - 1, dtype=np.int64)
    starts = rows * n - rows * (rows + 1) // 2  # condensed index of (i, i + 1)
    i = np.searchsorted(starts, k, side="right") - 1
    return i, k - starts[i] + i + 1


# ---------------------------------------------------------------- disentanglement


def posdis(attributes: Any, messages: Any) -> float:
    """Positional disentanglement of a language (Chaabouni et al. 2020).

    Args:
        attributes: (N, A) integers, A >= 2: each meaning as A discrete attributes.
        messages: (N, m) integers: the symbols sent at each of m positions.

    Returns:
        The mean over positions j with ``H(s_j) > 0`` of ``(I_1 - I_2) / H(s_j)``, where ``I_1 >= I_2``
        are the two largest ``I(s_j; a_k)`` over attributes; in [0, 1] (plug-in estimates); 0 when
        every position is constant.
    """
    attrs = _as_int_matrix(attributes, "attributes")
    msgs = _as_int_matrix(messages, "messages")
    _check_language(attrs, msgs)
    return _mean_gap(attrs, msgs)


def bosdis(attributes: Any, messages: Any, vocab_size: int | None = None) -> float:
    """Bag-of-symbols disentanglement of a language (Chaabouni et al. 2020).

    Each message becomes its symbol counts ``n_v`` (how often symbol v occurs in it, wherever), and the
    gap of ``posdis`` is taken per symbol: ``(I_1 - I_2) / H(n_v)`` over attributes, averaged over
    symbols with ``H(n_v) > 0``. EGG's reference code drops symbol 0 (its end-of-sequence); here every
    symbol counts, so strip padding first if it should not.

    Args:
        attributes: (N, A) integers, A >= 2.
        messages: (N, m) integers in [0, vocab_size).
        vocab_size: V; default ``messages.max() + 1``. Symbols never sent have constant count 0 and
            are skipped, so V only bounds the symbols.

    Returns:
        The mean gap in [0, 1]; 0 when every symbol count is constant.
    """
    attrs = _as_int_matrix(attributes, "attributes")
    msgs = _as_int_matrix(messages, "messages")
    _check_language(attrs, msgs)
    n, m = msgs.shape
    top = int(msgs.max()) + 1 if msgs.size else 0
    if vocab_size is None:
        vocab_size = top
    if isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < 0:
        raise ValueError(f"vocab_size must be an integer >= 0, got {vocab_size}")
    if msgs.size and (msgs.min() < 0 or top > vocab_size):
        raise ValueError(f"message symbols must lie in [0, vocab_size={vocab_size}), got "
                         f"[{int(msgs.min())}, {top - 1}]")
    v = int(vocab_size)
    # counts[r, s] = occurrences of symbol s in message r, by one bincount over (row, symbol) codes
    rows = np.repeat(np.arange(n), m)
    counts = np.bincount(rows * v + msgs.reshape(-1), minlength=n * v).reshape(n, v)  # (N, V)
    return _mean_gap(attrs, counts)


def _mean_gap(attrs: np.ndarray, reps: np.ndarray) -> float:
    """Mean over non-constant columns c of ``reps`` of ``(I_1 - I_2) / H(reps[:, c])``, I over attributes."""
    attr_codes = [_codes(a) for a in attrs.T]
    gaps = []
    for col in reps.T:
        codes = _codes(col)
        h = _entropy(codes)
        if h <= 0:
            continue
        mi = sorted((_mutual_information(codes, a) for a in attr_codes), reverse=True)
        gaps.append((mi[0] - mi[1]) / h)
    return float(np.mean(gaps)) if gaps else 0.0


def _codes(x: np.ndarray) -> np.ndarray:
    """Values -> codes 0..K-1."""
    return np.unique(x, return_inverse=True)[1].reshape(-1)


def _entropy(codes: np.ndarray) -> float:
    """Plug-in entropy in bits of a code array."""
    p = np.bincount(codes) / codes.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """Plug-in ``I(X; Y) = H(X) + H(Y) - H(X, Y)`` in bits of two code arrays, floored at 0 (rounding)."""
    joint = x * (int(y.max()) + 1) + y
    return max(_entropy(x) + _entropy(y) - _entropy(joint), 0.0)


# ---------------------------------------------------------------- input checks


def _count(items: Any, name: str) -> int:
    try:
        return len(items)
    except TypeError:
        raise ValueError(f"{name} must be a sequence or array of items, got {type(items).__name__}") from None


def _as_float_matrix(items: Any, name: str) -> np.ndarray:
    x = np.asarray(items, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be an (N, D) array of vectors, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite")
    return x


def _as_equal_length(items: Any, name: str) -> np.ndarray:
    try:
        x = np.asarray(items)
    except ValueError:
        raise ValueError(f"{name} must be equal-length sequences for hamming distance") from None
    if x.ndim != 2 or x.dtype == object:
        raise ValueError(f"{name} must be equal-length sequences, an (N, m) array, got shape {x.shape}")
    return x


def _as_sequence(seq: Any, name: str) -> np.ndarray:
    x = np.asarray(seq)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of symbols, got shape {x.shape}")
    return x


def _as_int_matrix(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be an (N, k) integer array, got shape {arr.shape}")
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    # float arrays holding whole numbers (e.g. from torch) are accepted
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")


def _check_language(attrs: np.ndarray, msgs: np.ndarray) -> None:
    if attrs.shape[0] != msgs.shape[0]:
        raise ValueError(f"attributes and messages must have one length, got {attrs.shape[0]} and "
                         f"{msgs.shape[0]}")
    if attrs.shape[0] < 2:
        raise ValueError(f"a language needs at least 2 items, got {attrs.shape[0]}")
    if attrs.shape[1] < 2:
        raise ValueError(f"disentanglement needs at least 2 attributes (a first and a second), got "
                         f"{attrs.shape[1]}")
