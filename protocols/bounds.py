"""Reference lines for the experiments, each named for exactly what it bounds.

Reconstruction (a passage of L tokens, entropy rate H bits/token under the best source model we have, over n
channel uses of capacity C bits in all):

- ``separation_bound_accuracy`` (also ``protocols.separation``'s), the **lossless prefix at capacity**: a separated scheme
  that codes a prefix losslessly at rate H and delivers it at capacity with infinitely long blocks, the rest
  filled with the best guess. Not a bound on every scheme: a finite frame delivers less, a lossy or joint
  scheme may deliver more.
- ``finite_length_bits`` / ``finite_length_accuracy``, the **finite-blocklength line**: the same prefix coding
  over one frame of n real AWGN uses at frame-error rate eps, with the normal approximation of the most bits a
  code can carry (Polyanskiy, Poor and Verdu 2010): ``nC - sqrt(nV) Q^-1(eps) + log2(n) / 2``, V the AWGN
  dispersion. What a separated link with the best possible code of this length can promise (AWGN only).
- ``rate_distortion_accuracy``, the **rate-distortion ceiling**: no scheme at all, joint or separated, finite or
  not, beats it. Token accuracy 1 - D needs ``R(D) <= C`` and ``L R(D) >= L (H - h(D) - D log2(V - 1))`` (the
  Shannon lower bound for Hamming distortion over V symbols), so ``1 - D`` with ``L (H - h(D) - D log2(V - 1))
  = C`` is a ceiling, for a source whose entropy rate is H (H measured by a model is an upper estimate of the
  true rate, which makes the ceiling approximate in that direction).

Referential game (C candidates, n real AWGN uses at unit power):

- ``simplex_success``, the **simplex line**: maximum-likelihood decoding of a regular simplex of C points, the
  best known code for C messages (C <= n + 1), computed exactly by one integral: a simplex of energy n errs as
  an orthogonal set of energy n C / (C - 1), ``P = int phi(t) Phi(t + sqrt(E) / sigma)^(C-1) dt``. A speaker
  that knows only its target, not the listener's candidates, can do no better; a protocol above it leaks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import integrate, optimize, special, stats

from protocols.metrics import binary_entropy

__all__ = ["awgn_dispersion", "finite_length_accuracy", "finite_length_bits", "rate_distortion_accuracy",
           "separation_bound_accuracy", "separation_bound_tokens", "simplex_success"]

LOG2E = 1.0 / math.log(2.0)


def awgn_dispersion(sigma: float) -> float:
    """Dispersion V (bits^2 per real use) of the real AWGN channel at unit power: ``P (P + 2) / (2 (P + 1)^2)
    log2(e)^2`` with P = 1 / sigma^2."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 for a finite dispersion, got {sigma!r}")
    P = 1.0 / sigma**2
    return P * (P + 2.0) / (2.0 * (P + 1.0) ** 2) * LOG2E**2


def finite_length_bits(n: int, sigma: float, frame_error: float = 0.01) -> float:
    """Normal approximation of the most bits one frame of ``n`` real AWGN uses carries at frame-error rate
    ``frame_error``: ``n C - sqrt(n V) Q^-1(eps) + log2(n) / 2`` (0 when that is negative; inf at sigma 0)."""
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not 0 < frame_error < 1:
        raise ValueError(f"frame_error must be in (0, 1), got {frame_error!r}")
    if sigma == 0:
        return math.inf
    C = 0.5 * math.log2(1.0 + 1.0 / sigma**2)
    bits = n * C - math.sqrt(n * awgn_dispersion(sigma)) * stats.norm.isf(frame_error) + 0.5 * math.log2(n)
    return max(0.0, bits)


def finite_length_accuracy(n: int, sigma: float, entropy_bits_per_token: float, L: int, fill_accuracy: float = 0.0,
                           frame_error: float = 0.01) -> float:
    """Token accuracy of lossless prefix coding through one frame of ``n`` AWGN uses at ``frame_error``: the
    frame carries ``finite_length_bits`` (T = min(L, bits / H) tokens) with probability 1 - eps, nothing
    otherwise; undelivered tokens are guessed with ``fill_accuracy``."""
    if not entropy_bits_per_token > 0:
        raise ValueError(f"entropy_bits_per_token must be > 0, got {entropy_bits_per_token!r}")
    T = min(float(L), finite_length_bits(n, sigma, frame_error) / entropy_bits_per_token)
    delivered = (T + (L - T) * fill_accuracy) / L
    return (1.0 - frame_error) * delivered + frame_error * fill_accuracy


def rate_distortion_accuracy(capacity_bits: float, entropy_bits_per_token: float, L: int, vocab_size: int) -> float:
    """The highest token accuracy any scheme can reach over ``capacity_bits`` (module docstring): 1 - D where
    ``L (H - h(D) - D log2(V - 1)) = capacity``; 1 when the capacity covers L H. At zero capacity it is the
    accuracy whose distortion alone accounts for H (1 / V for a uniform source, H = log2 V; more for a
    predictable one: this ceiling knows only H, not how the source's probability is spread)."""
    H, V = float(entropy_bits_per_token), int(vocab_size)
    if not H > 0 or V < 2 or L < 1:
        raise ValueError(f"need H > 0, V >= 2, L >= 1; got H={H!r}, V={V!r}, L={L!r}")
    per_token = float(capacity_bits) / L
    if per_token >= H:
        return 1.0
    d_max = 1.0 - 1.0 / V  # where h(D) + D log2(V - 1) = log2 V, its maximum

    def shortfall(D: float) -> float:  # bits per token the distortion D saves, minus what the channel lacks
        return binary_entropy(D) + D * math.log2(V - 1) - (H - per_token)

    if shortfall(d_max) <= 0:  # even a uniform guess's distortion needs more than the channel carries
        return 1.0 / V
    return 1.0 - optimize.brentq(shortfall, 0.0, d_max, xtol=1e-12)


def simplex_success(n: int, sigma: float, candidates: int) -> float:
    """Success of maximum-likelihood decoding of a regular simplex of ``candidates`` points with energy ``n``
    (unit power per use) under real AWGN of std ``sigma``; 1 at sigma 0. Needs ``candidates <= n + 1``."""
    C = int(candidates)
    if C < 2:
        raise ValueError(f"candidates must be >= 2, got {candidates!r}")
    if C > n + 1:
        raise ValueError(f"a simplex of {C} points needs n >= {C - 1} dimensions, got n={n}")
    if sigma == 0:
        return 1.0
    shift = math.sqrt(n * C / (C - 1)) / sigma  # the equivalent orthogonal set's sqrt(E) / sigma

    def integrand(t: float) -> float:
        return math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi) * math.exp((C - 1) * special.log_ndtr(t + shift))

    value, _ = integrate.quad(integrand, -np.inf, np.inf, epsabs=1e-12, epsrel=1e-10, limit=200)
    return float(min(1.0, max(1.0 / C, value)))


def separation_bound_tokens(capacity_bits: Any, entropy_bits_per_token: Any, L: int) -> Any:
    """Tokens a separated scheme can deliver at capacity: ``min(L, capacity / H)`` (a float).

    ``capacity_bits``: the channel's capacity over the message's n uses (e.g. ``n * channel.capacity_per_use()``);
    ``entropy_bits_per_token``: the best source model's entropy rate H (bits per token, held out). Lossless
    delivery of a prefix at rate H over a channel of capacity C: the most tokens source-channel separation
    can promise (infinitely long blocks; a finite frame, a worse model or an imperfect code deliver fewer).
    Arrays broadcast; a scalar in gives a float out.
    """
    C = np.asarray(capacity_bits, dtype=np.float64)
    H = np.asarray(entropy_bits_per_token, dtype=np.float64)
    if not (isinstance(L, (int, np.integer)) and not isinstance(L, bool) and L >= 1):
        raise ValueError(f"L must be an integer >= 1, got {L!r}")
    if (C < 0).any() or np.isnan(C).any():
        raise ValueError("capacity_bits must be >= 0")
    if (H <= 0).any() or not np.isfinite(H).all():
        raise ValueError("entropy_bits_per_token must be finite and > 0")
    out = np.minimum(float(L), C / H)
    return float(out) if out.ndim == 0 else out


def separation_bound_accuracy(capacity_bits: Any, entropy_bits_per_token: Any, L: int,
                              fill_accuracy: float = 0.0) -> Any:
    """Token accuracy of the separation bound: ``(T + (L - T) fill_accuracy) / L``, ``T = separation_bound_tokens``.

    ``fill_accuracy``: the accuracy of guessing an undelivered token (e.g. the unigram's most likely token's
    frequency on held-out text); 0 counts undelivered tokens wrong. This bounds separated lossless coding
    of a prefix, not every scheme: a joint (or lossy) scheme may deliver a higher accuracy.
    """
    if not 0 <= fill_accuracy <= 1:
        raise ValueError(f"fill_accuracy must be in [0, 1], got {fill_accuracy!r}")
    T = separation_bound_tokens(capacity_bits, entropy_bits_per_token, L)
    return (T + (L - T) * fill_accuracy) / L
