"""Whether a listener uses the messages: message controls and causal influence (issue 31, point 3).

A listener is any callable ``listen(messages (B, ...), context) -> probs (B, C)``: the choice
distribution over the C candidates of each of B games (or unnormalised scores where only the argmax
matters). ``context`` is everything else the listener needs for those games (candidates, codes, a
dict of arrays indexed by game); it is passed through untouched, and no function here reads or
changes it, so only the messages differ between a real pass and a control. Success is
``argmax == target`` (ties go to the lowest index, as ``np.argmax``).

Messages are continuous (a float array, e.g. channel symbols ``(B, n)``) or discrete (an integer
array of symbols). Controls, after Interlat's message ablations: each returns an array of the
messages' shape and dtype, deterministic given the ``np.random.Generator``:

- ``shuffled``: the messages permuted across games, a derangement when B > 1 (no game keeps its own);
- ``random_rotation``: each message times one Haar-random orthogonal matrix (continuous only);
- ``gaussian_matched``: draws from a Gaussian with the messages' mean and covariance (continuous only);
- ``zeroed``: all zeros (for discrete messages: the constant symbol 0);
- ``from_other_task``: B messages drawn from another task's or corpus's messages;
- ``uniform_symbols``: symbols uniform over the vocabulary (discrete only).

Messages with more than one trailing axis are flattened to ``(B, D)`` for the rotation and the
covariance and reshaped back. ``control_success`` runs the listener on the real messages and on each
control; ``control_intervals`` adds Wilson intervals (``protocols.metrics.wilson_interval``).

Causal influence of communication (Lowe et al. 2019, "On the pitfalls of measuring emergent
communication"): the mutual information between message and action given the context,
estimated by intervening on the message. For game i with real message m_i and K intervention
messages m'_1..m'_K drawn from the message marginal (by default the messages of other games),

    p_i(a)    = p(a | m_i, ctx_i)
    pbar_i(a) = (p_i(a) + sum_k p(a | m'_k, ctx_i)) / (K + 1)
    CIC       = mean_i sum_a p_i(a) log2(p_i(a) / pbar_i(a))      [bits]

The real message is one of the K + 1 draws of the marginal (the batch's marginal holds it too); this
keeps every term finite and the estimate in [0, log2(K + 1)]: it is biased low when K is small, so
take K well above C (a deterministic listener that decodes perfectly reaches log2 C only as K grows).
CIC is exactly 0 for a listener that ignores its message, whatever its success.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from protocols.metrics import wilson_interval

__all__ = [
    "Listener",
    "causal_influence",
    "control_intervals",
    "control_success",
    "from_other_task",
    "gaussian_matched",
    "haar_orthogonal",
    "random_rotation",
    "shuffled",
    "uniform_symbols",
    "zeroed",
]

# listen(messages (B, ...), context) -> probs or scores (B, C)
Listener = Callable[[np.ndarray, Any], np.ndarray]

# probabilities are clipped to this before a log (p = 0 terms still contribute 0: they weight the log)
_EPS = 1e-12
# how far a listener's rows may sum from 1 before it is told to pass scores=True
_SUM_TOL = 1e-4


def _kind(messages: np.ndarray) -> str:
    """``"continuous"`` for a float array, ``"discrete"`` for an integer one; ValueError otherwise."""
    if messages.ndim < 1:
        raise ValueError(f"messages must have a batch axis (B, ...), got shape {messages.shape}")
    if np.issubdtype(messages.dtype, np.floating):
        return "continuous"
    if np.issubdtype(messages.dtype, np.integer):
        return "discrete"
    raise ValueError(f"messages must be a float or integer array, got dtype {messages.dtype}")


def _continuous(messages: np.ndarray, control: str) -> np.ndarray:
    messages = np.asarray(messages)
    if _kind(messages) != "continuous":
        raise ValueError(f"{control} needs continuous (float) messages, got dtype {messages.dtype}")
    return messages


def _derangement(b: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform random permutation of range(b) with no fixed point (identity when b < 2)."""
    if b < 2:
        return np.arange(b)
    # rejection: about 1/e of permutations are derangements, so ~2.7 draws on average
    while True:
        perm = rng.permutation(b)
        if not np.any(perm == np.arange(b)):
            return perm


def shuffled(messages: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The messages permuted across games so that no game keeps its own (a copy when B < 2).

    Args:
        messages: (B, ...) float or integer.
        rng: the generator that draws the permutation.

    Returns:
        (B, ...) of the same dtype: row i is the message of some game j != i.
    """
    messages = np.asarray(messages)
    _kind(messages)
    return messages[_derangement(messages.shape[0], rng)]


def haar_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal n x n matrix: QR of a Gaussian matrix with R's diagonal made positive.

    Without the sign fix QR's Q is not Haar-distributed (Mezzadri 2007, "How to generate random
    matrices from the classical compact groups", section 5).
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n}")
    q, r = np.linalg.qr(rng.standard_normal((int(n), int(n))))
    # sign(0) would zero a column; R's diagonal is 0 with probability 0, call it +1
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def random_rotation(messages: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every message times one Haar-random orthogonal matrix: norms and inner products kept, axes lost.

    Args:
        messages: (B, n) float (or (B, ...), flattened to (B, D) for the rotation).
        rng: the generator that draws the matrix.

    Returns:
        (B, n) of the same dtype, ``messages @ Q.T``.
    """
    messages = _continuous(messages, "random_rotation")
    flat = messages.reshape(messages.shape[0], -1)  # (B, D)
    if flat.shape[1] == 0:
        raise ValueError(f"random_rotation needs messages with a nonempty symbol axis, got {messages.shape}")
    q = haar_orthogonal(flat.shape[1], rng)
    return (flat.astype(np.float64) @ q.T).astype(messages.dtype).reshape(messages.shape)


def gaussian_matched(messages: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """B draws from the Gaussian with the messages' mean and covariance: their second-order statistics,
    none of their game-to-game content.

    Args:
        messages: (B, n) float with B >= 2 (or (B, ...), flattened to (B, D)).
        rng: the generator of the draws.

    Returns:
        (B, n) of the same dtype.
    """
    messages = _continuous(messages, "gaussian_matched")
    b = messages.shape[0]
    if b < 2:
        raise ValueError(f"gaussian_matched needs B >= 2 messages for a covariance, got B = {b}")
    flat = messages.reshape(b, -1).astype(np.float64)  # (B, D)
    mean = flat.mean(axis=0)
    cov = np.atleast_2d(np.cov(flat, rowvar=False))  # (D, D), unbiased
    # eigh rather than Cholesky: message covariances are often singular (one-hot codes, PCA budgets)
    w, v = np.linalg.eigh(cov)
    factor = v * np.sqrt(np.clip(w, 0.0, None))  # cov = factor @ factor.T
    draws = mean + rng.standard_normal(flat.shape) @ factor.T
    return draws.astype(messages.dtype).reshape(messages.shape)


def zeroed(messages: np.ndarray) -> np.ndarray:
    """All zeros of the messages' shape and dtype (for discrete messages: the constant symbol 0)."""
    messages = np.asarray(messages)
    _kind(messages)
    return np.zeros_like(messages)


def from_other_task(messages: np.ndarray, other_messages: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """B messages of another task or corpus, in place of the real ones.

    Args:
        messages: (B, ...) the real messages (only their shape and dtype are used).
        other_messages: (M, ...) with the same trailing shape and the same kind (float or integer).
        rng: draws B of the M rows, without replacement when M >= B, with replacement otherwise.

    Returns:
        (B, ...) in the messages' dtype.
    """
    messages, other = np.asarray(messages), np.asarray(other_messages)
    if _kind(messages) != _kind(other):
        raise ValueError(f"other_messages must be {_kind(messages)} like messages, got dtype {other.dtype}")
    if other.shape[1:] != messages.shape[1:] or other.shape[0] < 1:
        raise ValueError(
            f"other_messages must have shape (M >= 1, {', '.join(map(str, messages.shape[1:]))}) "
            f"like messages {messages.shape}, got {other.shape}"
        )
    b, m = messages.shape[0], other.shape[0]
    rows = rng.choice(m, size=b, replace=m < b)
    return other[rows].astype(messages.dtype)


def uniform_symbols(messages: np.ndarray, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    """Discrete symbols drawn independently and uniformly from ``range(vocab_size)``.

    Args:
        messages: (B, ...) integer symbols, all in [0, vocab_size).
        vocab_size: V >= 1.
        rng: the generator of the draws.

    Returns:
        (B, ...) of the same integer dtype.
    """
    messages = np.asarray(messages)
    if _kind(messages) != "discrete":
        raise ValueError(f"uniform_symbols needs discrete (integer) messages, got dtype {messages.dtype}")
    if isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size}")
    if messages.size and (messages.min() < 0 or messages.max() >= vocab_size):
        raise ValueError(
            f"messages hold symbols in [{messages.min()}, {messages.max()}], outside range(vocab_size={vocab_size})"
        )
    return rng.integers(0, int(vocab_size), size=messages.shape, dtype=messages.dtype)


def _listen(listen: Listener, messages: np.ndarray, context: Any, b: int, c: int | None = None) -> np.ndarray:
    """Run the listener and check it returned finite (B, C) outputs (C as before when given)."""
    out = np.asarray(listen(messages, context), dtype=np.float64)
    if out.ndim != 2 or out.shape[0] != b or (c is not None and out.shape[1] != c) or out.shape[1] < 1:
        want = f"({b}, {c if c is not None else 'C'})"
        raise ValueError(f"listen must return probs or scores of shape {want}, got {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError("listen returned non-finite probs or scores")
    return out


def _success(out: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(np.argmax(out, axis=1) == targets))


def control_success(
    listen: Listener,
    messages: np.ndarray,
    context: Any,
    targets: np.ndarray,
    *,
    rng: np.random.Generator,
    other_messages: np.ndarray | None = None,
    vocab_size: int | None = None,
) -> dict[str, float]:
    """Success of the listener on the real messages and on every control that applies to them.

    Args:
        listen: ``listen(messages (B, ...), context) -> probs or scores (B, C)``.
        messages: (B, ...) float (continuous) or integer (discrete) messages.
        context: whatever else the listener needs for these B games, passed through untouched.
        targets: (B,) integer index of each game's target in [0, C).
        rng: draws every control, in a fixed order (so the result is deterministic given its state).
        other_messages: (M, ...) messages of another task, for the ``other_task`` control.
        vocab_size: V, for the ``uniform_symbols`` control (discrete messages only).

    Returns:
        Success rates (fraction of games with argmax == target) keyed ``real``, ``shuffled``,
        ``rotation`` and ``gaussian`` (continuous only), ``zeroed``, ``other_task`` (when
        other_messages is given), ``uniform_symbols`` (when vocab_size is given), and ``chance`` = 1/C.
        ``control_intervals(rates, B)`` gives their Wilson intervals.
    """
    messages = np.asarray(messages)
    kind = _kind(messages)
    b = messages.shape[0]
    targets = np.asarray(targets)
    if targets.shape != (b,) or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be integer indices of shape ({b},), got {targets.dtype} {targets.shape}")
    if b < 1:
        raise ValueError("control_success needs B >= 1 games")
    if vocab_size is not None and kind != "discrete":
        raise ValueError(f"vocab_size applies to discrete messages only, got dtype {messages.dtype}")

    real = _listen(listen, messages, context, b)
    c = real.shape[1]
    if targets.min() < 0 or targets.max() >= c:
        raise ValueError(f"targets must lie in [0, C={c}), got [{targets.min()}, {targets.max()}]")

    controls: dict[str, np.ndarray] = {"shuffled": shuffled(messages, rng)}
    if kind == "continuous":
        controls["rotation"] = random_rotation(messages, rng)
        controls["gaussian"] = gaussian_matched(messages, rng)
    controls["zeroed"] = zeroed(messages)
    if other_messages is not None:
        controls["other_task"] = from_other_task(messages, other_messages, rng)
    if vocab_size is not None:
        controls["uniform_symbols"] = uniform_symbols(messages, vocab_size, rng)

    rates = {"real": _success(real, targets)}
    for name, control in controls.items():
        rates[name] = _success(_listen(listen, control, context, b, c), targets)
    rates["chance"] = 1.0 / c
    return rates


def control_intervals(
    rates: dict[str, float], trials: int, *, z: float = 1.96
) -> dict[str, tuple[float, float, float]]:
    """Wilson intervals for the success rates ``control_success`` returned.

    Args:
        rates: name -> success rate over ``trials`` games (``chance``, not a measurement, is skipped).
        trials: B, the number of games each rate counts.
        z: standard-normal quantile (1.96 for 95%).

    Returns:
        name -> ``(rate, low, high)``.
    """
    out = {}
    for name, rate in rates.items():
        if name == "chance":
            continue
        successes = round(rate * trials)
        # a rate that is not k / trials was measured over another number of games
        if not math.isclose(successes, rate * trials, abs_tol=1e-6):
            raise ValueError(f"rate {name}={rate} is not a count over trials={trials}")
        low, high = wilson_interval(successes, trials, z)
        out[name] = (float(rate), low, high)
    return out


def _probs(out: np.ndarray, scores: bool) -> np.ndarray:
    """Choice distributions (B, C) from the listener's output: softmax of scores, or checked probs."""
    if scores:
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if np.any(out < -_SUM_TOL) or np.any(np.abs(out.sum(axis=1) - 1.0) > _SUM_TOL):
        raise ValueError("listen must return probabilities (rows >= 0 summing to 1) here; pass scores=True for scores")
    p = np.clip(out, 0.0, None)
    return p / p.sum(axis=1, keepdims=True)


def causal_influence(
    listen: Listener,
    messages: np.ndarray,
    context: Any,
    *,
    rng: np.random.Generator,
    interventions: int | Sequence[np.ndarray] = 16,
    scores: bool = False,
) -> float:
    """Causal influence of communication (Lowe et al. 2019) of the messages on the listener, in bits.

    ``mean_i sum_a p(a|m_i, ctx_i) log2(p(a|m_i, ctx_i) / pbar_i(a))`` with ``pbar_i`` the mean of the
    choice distributions under the real message and the K intervention messages (module docstring).

    Args:
        listen: ``listen(messages (B, ...), context) -> probs (B, C)`` (or scores with ``scores=True``).
        messages: (B, ...) real messages, float or integer.
        context: whatever else the listener needs for these B games, passed through untouched.
        rng: draws the default interventions.
        interventions: K >= 1, the number of interventions per game: K independent derangements of the
            messages, so each game hears K messages of other games (the marginal over messages; needs
            B >= 2). Or a sequence of K message arrays of the messages' shape (e.g. ``from_other_task``
            or ``uniform_symbols`` draws), row i heard in game i.
        scores: listen returns unnormalised log-scores; softmax them (otherwise rows must sum to 1).

    Returns:
        Bits in [0, log2(K + 1)]; 0 (up to rounding) for a listener that ignores its message.
    """
    messages = np.asarray(messages)
    _kind(messages)
    b = messages.shape[0]
    if b < 1:
        raise ValueError("causal_influence needs B >= 1 games")
    if isinstance(interventions, (int, np.integer)) and not isinstance(interventions, bool):
        k = int(interventions)
        if k < 1:
            raise ValueError(f"interventions must be >= 1, got {k}")
        if b < 2:
            raise ValueError("default interventions draw other games' messages: need B >= 2")
        swaps: Sequence[np.ndarray] = [shuffled(messages, rng) for _ in range(k)]
    else:
        swaps = [np.asarray(m) for m in interventions]
        if not swaps or any(m.shape != messages.shape for m in swaps):
            raise ValueError(
                f"interventions must be an int >= 1 or a nonempty sequence of arrays of shape {messages.shape}, "
                f"got shapes {[m.shape for m in swaps]}"
            )

    p = _probs(_listen(listen, messages, context, b), scores)  # (B, C)
    c = p.shape[1]
    total = p.copy()
    for m in swaps:
        total += _probs(_listen(listen, m, context, b, c), scores)
    pbar = total / (len(swaps) + 1)  # (B, C), >= p / (K + 1) wherever p > 0
    # p = 0 terms vanish: p weights the log, and the clip only guards log(0)
    terms = p * (np.log2(np.maximum(p, _EPS)) - np.log2(np.maximum(pbar, _EPS)))
    # KL >= 0; rounding can leave -1e-17
    return max(float(terms.sum(axis=1).mean()), 0.0)
