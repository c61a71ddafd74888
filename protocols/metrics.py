"""Information measures for one message over a noisy channel (DESIGN.md section 3).

All logs are base 2, so every figure is in bits per message.

- ``snr(sigma) = 1 / sigma^2`` for unit-power symbols and AWGN ``y = x + sigma * N(0, 1)``.
- ``snr_db(sigma) = 10 log10 SNR = -20 log10 sigma``.
- ``capacity_bits(n, sigma) = n * 0.5 * log2(1 + SNR)``: Shannon's AWGN capacity with average
  power 1 over ``n`` channel uses, the most any protocol can deliver in one message.
- ``fano_delivered_bits(a, C) = log2 C - H_b(1 - a) - (1 - a) log2(C - 1)``: a lower bound on the
  mutual information between the target index (uniform over ``C`` candidates) and what the
  listener received, from the listener's accuracy ``a`` (Fano's inequality).
- ``best_success(capacity, C)``: Fano inverted, the highest success any scheme can reach over a channel
  of that capacity (the bound line on success-vs-SNR plots).
- ``efficiency = delivered / capacity``.
- ``wilson_interval``: the Wilson score interval for a success rate.
"""

from __future__ import annotations

import math

from environments.convention import es_n0_db
from protocols.base import check_sigma

__all__ = [
    "best_success",
    "binary_entropy",
    "capacity_bits",
    "efficiency",
    "fano_delivered_bits",
    "snr",
    "snr_db",
    "wilson_interval",
]


def snr(sigma: float) -> float:
    """Signal-to-noise ratio ``1 / sigma^2`` of unit-power symbols under AWGN (inf at sigma 0)."""
    sigma = check_sigma(sigma)
    return math.inf if sigma == 0 else 1.0 / sigma**2


def snr_db(sigma: float) -> float:
    """SNR in decibels, ``-20 log10 sigma`` (inf at sigma 0): Es/N0 per complex use (``environments.convention``)."""
    return es_n0_db(check_sigma(sigma))


def capacity_bits(n: int, sigma: float) -> float:
    """AWGN capacity of ``n`` channel uses at unit power: ``n * 0.5 * log2(1 + 1 / sigma^2)``.

    Args:
        n: channel uses per message, an integer >= 0.
        sigma: noise standard deviation >= 0.

    Returns:
        Bits per message; inf when sigma is 0 and n > 0 (a noiseless real channel), 0 when n is 0.
    """
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n (channel uses) must be an integer >= 0, got {n}")
    sigma = check_sigma(sigma)
    if n == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    # log1p keeps precision when SNR is tiny (large sigma)
    return int(n) * 0.5 * math.log1p(1.0 / sigma**2) / math.log(2.0)


def binary_entropy(p: float) -> float:
    """``H_b(p) = -p log2 p - (1 - p) log2 (1 - p)`` in bits, with ``H_b(0) = H_b(1) = 0``."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    if p in (0.0, 1.0):
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def fano_delivered_bits(accuracy: float, candidates: int) -> float:
    """Fano lower bound on the bits a listener received, from its accuracy over C candidates.

    ``I >= log2 C - H_b(1 - a) - (1 - a) log2(C - 1)`` for a target uniform over ``C`` candidates
    and a listener that picks the right one with probability ``a`` (Cover & Thomas, Thm 2.10.1).
    The right-hand side is 0 at chance (``a = 1/C``), increasing above it and ``log2 C`` at
    ``a = 1``. Below chance it rises again, but an accuracy below chance proves nothing, so the
    bound is floored: any ``a <= 1/C`` gives 0.

    Args:
        accuracy: success rate in [0, 1].
        candidates: C >= 2.

    Returns:
        Bits, in [0, log2 C].
    """
    a = float(accuracy)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {a}")
    if isinstance(candidates, bool) or int(candidates) != candidates or candidates < 2:
        raise ValueError(f"candidates (C) must be an integer >= 2, got {candidates}")
    c = int(candidates)
    if a <= 1.0 / c:
        return 0.0
    e = 1.0 - a
    bits = math.log2(c) - binary_entropy(e) - e * math.log2(c - 1)
    # rounding can leave -1e-16 just above chance
    return max(bits, 0.0)


def best_success(capacity: float, candidates: int) -> float:
    """The highest success rate any protocol can reach over a channel of ``capacity`` bits per message.

    Fano inverted: the largest ``a`` with ``fano_delivered_bits(a, C) <= capacity`` (the bound is
    increasing in ``a`` above chance, so bisection finds it). 1 once ``capacity >= log2 C``.

    Args:
        capacity: bits per message >= 0 (inf allowed).
        candidates: C >= 2.
    """
    capacity = float(capacity)
    if not capacity >= 0:
        raise ValueError(f"capacity must be >= 0 bits, got {capacity}")
    if isinstance(candidates, bool) or int(candidates) != candidates or candidates < 2:
        raise ValueError(f"candidates (C) must be an integer >= 2, got {candidates}")
    c = int(candidates)
    if capacity >= math.log2(c):
        return 1.0
    lo, hi = 1.0 / c, 1.0  # fano(lo) = 0 <= capacity < fano(hi) = log2 C
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if fano_delivered_bits(mid, c) <= capacity:
            lo = mid
        else:
            hi = mid
    return lo


def efficiency(delivered_bits: float, capacity: float) -> float:
    """``delivered / capacity``: the fraction of the channel's capacity a protocol used.

    0 when capacity is infinite (sigma 0: no finite message uses a noiseless real channel).
    """
    delivered_bits, capacity = float(delivered_bits), float(capacity)
    if not delivered_bits >= 0:
        raise ValueError(f"delivered_bits must be >= 0, got {delivered_bits}")
    if not capacity > 0:
        raise ValueError(f"capacity must be > 0 (n > 0 and finite sigma), got {capacity}")
    if math.isinf(capacity):
        return 0.0
    return delivered_bits / capacity


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial success rate.

    ``(p + z^2/2N -+ z sqrt(p(1-p)/N + z^2/4N^2)) / (1 + z^2/N)`` with ``p = successes / N``
    (Wilson 1927). Unlike the normal interval it stays inside [0, 1] and is not empty at 0 or N.

    Args:
        successes: integer in [0, trials].
        trials: integer N >= 1.
        z: standard-normal quantile, > 0 (1.96 for 95%).

    Returns:
        ``(low, high)`` with ``0 <= low <= p <= high <= 1``.
    """
    if isinstance(trials, bool) or int(trials) != trials or trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got {trials}")
    if isinstance(successes, bool) or int(successes) != successes or not 0 <= successes <= trials:
        raise ValueError(f"successes must be an integer in [0, trials={trials}], got {successes}")
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"z must be a finite quantile > 0, got {z}")
    n = int(trials)
    p = int(successes) / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    # the exact interval contains p; guard against rounding at p = 0 or 1
    return min(low, p), max(high, p)
