"""Seeded channel models on numpy arrays, with their likelihoods and capacities.

A channel maps the transmitted symbols ``x`` to the received symbols ``y`` with an explicit
``numpy.random.Generator``; nothing here touches global random state::

    y = channel(x, rng)                  # x, y: float32 arrays of the same shape, e.g. (B, n)
    y, gain = channel.transmit(x, rng)   # the same y (same draws), and the fading gain per symbol

Conventions (DESIGN.md section 3): symbols are real, one real number per real dimension, of mean
power 1; sigma is a noise standard deviation per real dimension everywhere; ``SNR = 1 / sigma**2``, which is
Es/N0 per complex channel use when two real symbols form one complex baseband symbol (``environments.convention``:
the convention every table and plot states).

Channels:

- ``AWGN(sigma)``: ``y = x + sigma * N(0, 1)``, noise independent per symbol.
  ``noise_power = sigma**2``; for unit signal power ``SNR = 1 / sigma**2`` and
  ``SNR_dB = -20 log10 sigma``.
- ``Erasure(p)``: each symbol is replaced by 0 with probability ``p``, independently.
- ``Quantize(bits, clip)``: deterministic uniform quantiser with ``2**bits`` levels evenly
  spaced on ``[-clip, clip]`` (both ends included); inputs outside the range saturate to the end
  levels. It takes ``rng`` only so that every channel has the same call signature.
- ``RayleighBlockFading(sigma, block_length=None)``: ``y = h * x + sigma * N(0, 1)`` with one real
  gain ``h = sqrt(g)``, ``g ~ Exponential(1)`` (so ``E[h**2] = 1``) per block of ``block_length``
  consecutive symbols along the last axis (None: one gain per row, i.e. per message).
- ``Chain([c1, c2, ...])``: applies ``c1`` then ``c2`` ... with the same generator.

Every channel has:

- ``transmit(x, rng) -> (y, gain)``: ``y`` is bit-identical to ``channel(x, rng)`` under the same
  generator state; ``gain`` float32 of x's shape is the fading gain per symbol (ones without
  fading; a chain's is the product of its stages'). A coherent receiver is told ``gain``.
- ``log_likelihood(y, x, gain=None) -> float64``: per-symbol ``log p(y | x)`` up to terms that do
  not depend on ``x``; ``y`` broadcasts against ``x`` (``y (B, 1, n)`` against the candidates'
  symbols ``(B, C, n)`` gives ``(B, C, n)``), ``gain`` broadcasts like ``y``. Summing over the last
  axis and taking the argmax over candidates is the maximum-likelihood receiver. Noiseless
  channels (sigma = 0, erasure alone, quantiser alone) have no density; they return
  ``-(y - x')**2 / (2 s**2)`` with ``s = NOISELESS_SIGMA = 1e-3`` (``x'`` the noiseless output for ``x``),
  which ranks an exact match first and gives bit LLRs the nearest point's signs, as the delta's limit does.
- ``capacity_per_use() -> float``: bits per real channel use under unit input power (exact, or an
  upper bound where stated).
- ``output_power(input_power)``: the expected mean power per symbol of ``y`` for an input of mean
  power ``input_power``. Relays use it for a fixed (not per-message) amplify-and-forward gain.

``Chain.log_likelihood`` is exact for a single stage, ``[Erasure(p), AWGN(sigma)]`` (the mixture:
the receiver does not know which symbols were erased), ``[AWGN(sigma), Erasure(p)]`` and
``[AWGN(sigma), Quantize(bits, clip)]`` (the probability of the quantisation cell); other chains
raise ``NotImplementedError``. Nested chains are flattened first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from scipy.special import log_ndtr as _scipy_log_ndtr

__all__ = ["AWGN", "Chain", "Channel", "Erasure", "Quantize", "RayleighBlockFading"]

# log-likelihoods never go below this (a probability of 1e-300): sums stay finite, never -inf/nan
LOG_FLOOR = math.log(1e-300)


@runtime_checkable
class Channel(Protocol):
    """What the environments and receivers need from a channel model."""

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return the received float32 symbols for the sent float32 symbols ``x`` (same shape)."""
        ...

    def transmit(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(y, gain)``: ``y`` exactly as ``self(x, rng)`` draws it, ``gain`` float32 of x's
        shape the fading gain per symbol (ones for channels without fading)."""
        ...

    def output_power(self, input_power: float = 1.0) -> float:
        """Expected mean power per symbol of the output for an input of mean power ``input_power``."""
        ...

    def log_likelihood(self, y: np.ndarray, x: np.ndarray, gain: np.ndarray | None = None) -> np.ndarray:
        """Per-symbol ``log p(y | x)`` up to terms free of ``x``, float64, ``y`` broadcast against ``x``."""
        ...

    def capacity_per_use(self) -> float:
        """Bits per real channel use (exact or an upper bound, as the channel's docstring says)."""
        ...


def _check_real(name: str, value: object, owner: str) -> float:
    """Return ``value`` as a float if it is a finite real number, else raise ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{owner}.{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be finite, got {value}")
    return value


def _check_sigma(value: object, owner: str) -> float:
    """Return a noise standard deviation: finite, >= 0."""
    sigma = _check_real("sigma", value, owner)
    if sigma < 0:
        raise ValueError(f"{owner}.sigma must be >= 0 (a standard deviation), got {sigma}")
    return sigma


def _check_io(x: np.ndarray, rng: np.random.Generator, owner: str) -> None:
    """Validate a channel call: ``x`` a float32 ndarray, ``rng`` a numpy Generator."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{owner}: x must be a numpy float32 array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ValueError(
            f"{owner}: x must have dtype float32, got {x.dtype} (cast with x.astype(np.float32))"
        )
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{owner}: rng must be a numpy.random.Generator, got {type(rng).__name__}")


def _unit_gain(x: np.ndarray) -> np.ndarray:
    """The gain of a channel without fading: float32 ones of x's shape."""
    return np.ones(x.shape, dtype=np.float32)


def _as_float64(y: object, x: object, gain: object | None = None) -> tuple[np.ndarray, ...]:
    """``y``, ``x`` (and ``gain`` unless None) as float64 arrays, checked to broadcast together."""
    arrays = [np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)]
    if gain is not None:
        arrays.append(np.asarray(gain, dtype=np.float64))
    try:
        np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        names = ["y", "x", "gain"][: len(arrays)]
        shapes = ", ".join(f"{n} {a.shape}" for n, a in zip(names, arrays))
        raise ValueError(f"log_likelihood: shapes do not broadcast: {shapes}") from None
    return tuple(arrays)


# a noiseless channel's density is a delta; its likelihood is taken as a Gaussian this narrow, which ranks
# an exact match first and gives bit LLRs the sign of the nearest point, as the delta's limit does
NOISELESS_SIGMA = 1e-3


def _gaussian(y: np.ndarray, mean: np.ndarray, sigma: float) -> np.ndarray:
    """``-(y - mean)**2 / (2 sigma**2)``; sigma = 0 uses ``NOISELESS_SIGMA`` (the noiseless convention)."""
    sigma = sigma if sigma > 0 else NOISELESS_SIGMA
    return -np.square(y - mean) / (2.0 * sigma**2)


def _awgn_capacity(sigma: float) -> float:
    """``0.5 log2(1 + 1 / sigma**2)`` bits per real use at unit power; inf at sigma = 0."""
    return math.inf if sigma == 0 else 0.5 * math.log2(1.0 + 1.0 / sigma**2)


@dataclass(frozen=True)
class AWGN:
    """Additive white Gaussian noise: ``y = x + sigma * N(0, 1)``, i.i.d. per symbol."""

    sigma: float
    """noise standard deviation (not variance); finite, >= 0; 0 is the noiseless channel"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_sigma(self.sigma, "AWGN"))

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Add Gaussian noise. ``x`` float32 of any shape -> ``y`` float32 of the same shape."""
        return self.transmit(x, rng)[0]

    def transmit(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(y, gain)``: ``y`` as ``self(x, rng)``, ``gain`` float32 ones of x's shape (no fading)."""
        _check_io(x, rng, "AWGN")
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        return (x + np.float32(self.sigma) * noise).astype(np.float32, copy=False), _unit_gain(x)

    @property
    def noise_power(self) -> float:
        """Noise power per symbol, ``sigma**2``."""
        return self.sigma**2

    def snr(self, signal_power: float = 1.0) -> float:
        """Signal-to-noise ratio ``signal_power / sigma**2`` (inf when sigma = 0)."""
        return math.inf if self.sigma == 0 else signal_power / self.sigma**2

    def snr_db(self, signal_power: float = 1.0) -> float:
        """SNR in dB, ``10 log10(signal_power / sigma**2)``; ``-20 log10 sigma`` at unit power."""
        return math.inf if self.sigma == 0 else 10.0 * math.log10(signal_power / self.sigma**2)

    def output_power(self, input_power: float = 1.0) -> float:
        """Expected output power: ``input_power + sigma**2`` (noise independent of the signal)."""
        return input_power + self.sigma**2

    def log_likelihood(self, y: np.ndarray, x: np.ndarray, gain: np.ndarray | None = None) -> np.ndarray:
        """``-(y - x)**2 / (2 sigma**2)`` per symbol, float64 of the broadcast shape of y and x.

        sigma = 0 (a delta density) uses ``NOISELESS_SIGMA`` in place of sigma (the noiseless convention).
        ``gain`` is ignored (this channel does not fade: its gain is always 1).
        """
        y, x = _as_float64(y, x)
        return _gaussian(y, x, self.sigma)

    def capacity_per_use(self) -> float:
        """Exact: ``0.5 log2(1 + 1 / sigma**2)`` bits per real use at unit power (inf at sigma 0)."""
        return _awgn_capacity(self.sigma)


@dataclass(frozen=True)
class Erasure:
    """Erasure channel: each symbol is replaced by 0 with probability ``p``, independently."""

    p: float
    """erasure probability, in [0, 1]"""

    def __post_init__(self) -> None:
        p = _check_real("p", self.p, "Erasure")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Erasure.p must be in [0, 1] (a probability), got {p}")
        object.__setattr__(self, "p", p)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Zero each entry with probability ``p``. ``x`` float32 -> ``y`` float32, same shape."""
        return self.transmit(x, rng)[0]

    def transmit(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(y, gain)``: ``y`` as ``self(x, rng)``, ``gain`` float32 ones of x's shape (no fading)."""
        _check_io(x, rng, "Erasure")
        erased = rng.random(x.shape) < self.p
        return np.where(erased, np.float32(0.0), x).astype(np.float32, copy=False), _unit_gain(x)

    def output_power(self, input_power: float = 1.0) -> float:
        """Expected output power: ``(1 - p) * input_power``."""
        return (1.0 - self.p) * input_power

    def log_likelihood(self, y: np.ndarray, x: np.ndarray, gain: np.ndarray | None = None) -> np.ndarray:
        """Per symbol: 0 where ``y == 0`` exactly (an erasure says nothing about x), else the
        noiseless convention (``NOISELESS_SIGMA``). float64, the broadcast shape of y and x.

        ``p = 0`` uses the noiseless convention everywhere (nothing is erased); ``p = 1`` gives zeros.
        ``gain`` is ignored (no fading).
        """
        y, x = _as_float64(y, x)
        if self.p == 1.0:
            return np.zeros(np.broadcast_shapes(y.shape, x.shape))
        ll = _gaussian(y, x, 0.0)
        return ll if self.p == 0.0 else np.where(y == 0, 0.0, ll)

    def capacity_per_use(self) -> float:
        """inf for p < 1 (an unerased noiseless real symbol carries unbounded information), else 0."""
        return math.inf if self.p < 1.0 else 0.0


@dataclass(frozen=True)
class Quantize:
    """Uniform quantiser: ``2**bits`` levels evenly spaced on ``[-clip, clip]`` (ends included).

    Inputs are clipped to ``[-clip, clip]`` and rounded to the nearest level, so inside the range
    the error is at most ``step / 2`` with ``step = 2 clip / (2**bits - 1)``. ``bits=1`` is the
    sign quantiser with outputs ``+-clip``.
    """

    bits: int
    """bits per symbol, an integer in [1, 24] (24: float32 cannot resolve more levels)"""
    clip: float
    """saturation level, finite, > 0: outputs lie in [-clip, clip]"""

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)):
            raise ValueError(f"Quantize.bits must be an integer in [1, 24], got {self.bits!r}")
        if not 1 <= int(self.bits) <= 24:
            raise ValueError(f"Quantize.bits must be an integer in [1, 24], got {self.bits}")
        clip = _check_real("clip", self.clip, "Quantize")
        if clip <= 0:
            raise ValueError(f"Quantize.clip must be > 0, got {clip}")
        object.__setattr__(self, "bits", int(self.bits))
        object.__setattr__(self, "clip", clip)

    @property
    def num_levels(self) -> int:
        """Number of output levels, ``2**bits``."""
        return 2**self.bits

    @property
    def step(self) -> float:
        """Spacing between adjacent levels, ``2 clip / (2**bits - 1)``."""
        return 2.0 * self.clip / (self.num_levels - 1)

    @property
    def levels(self) -> np.ndarray:
        """The output levels, float32 ``(2**bits,)``, ascending from ``-clip`` to ``clip``."""
        return (-self.clip + self.step * np.arange(self.num_levels)).astype(np.float32)

    @property
    def noise_power(self) -> float:
        """Quantisation noise power ``step**2 / 12`` (uniform-error model, inputs inside the range)."""
        return self.step**2 / 12.0

    def level_index(self, x: np.ndarray) -> np.ndarray:
        """Index in ``[0, 2**bits)`` of the level nearest to each entry of ``x`` (float64 inside).

        Computed in float64 so that 2**24 levels still round right; float64 of x's shape.
        """
        return np.rint(
            (np.clip(np.asarray(x, dtype=np.float64), -self.clip, self.clip) + self.clip) / self.step
        )

    def quantise(self, x: np.ndarray) -> np.ndarray:
        """The channel's output for ``x`` (any real array), float32, without validation."""
        return (-self.clip + self.step * self.level_index(x)).astype(np.float32)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Quantise. ``x`` float32 -> ``y`` float32 of the same shape; ``rng`` is not used."""
        return self.transmit(x, rng)[0]

    def transmit(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(y, gain)``: ``y`` as ``self(x, rng)``, ``gain`` float32 ones of x's shape (no fading)."""
        _check_io(x, rng, "Quantize")
        return self.quantise(x), _unit_gain(x)

    def output_power(self, input_power: float = 1.0) -> float:
        """Approximate output power ``input_power + step**2 / 12`` (additive-noise model, no clipping)."""
        return input_power + self.noise_power

    def log_likelihood(self, y: np.ndarray, x: np.ndarray, gain: np.ndarray | None = None) -> np.ndarray:
        """Noiseless convention (``NOISELESS_SIGMA``) on ``y - Q(x)`` per symbol, ``Q`` this quantiser (exactly as
        the channel computes it, so a sent candidate scores 0). float64, broadcast shape of y and x.
        ``gain`` is ignored (no fading)."""
        y, x = _as_float64(y, x)
        return _gaussian(y, self.quantise(x).astype(np.float64), 0.0)

    def capacity_per_use(self) -> float:
        """``bits``: the output takes ``2**bits`` values. Exact without a power constraint; an upper
        bound at unit input power (reaching the outer levels of a wide ``clip`` costs power)."""
        return float(self.bits)


# nodes of the fading-capacity quadrature (see RayleighBlockFading.capacity_per_use)
_LEGENDRE_NODES = np.polynomial.legendre.leggauss(48)
_LAGUERRE_NODES = np.polynomial.laguerre.laggauss(48)


@dataclass(frozen=True)
class RayleighBlockFading:
    """Rayleigh block fading: ``y = h * x + sigma * N(0, 1)``, the gain ``h`` known to the receiver.

    One real gain ``h = sqrt(g) >= 0``, ``g ~ Exponential(1)`` (a Rayleigh amplitude with
    ``E[h**2] = 1``, so the mean received signal power equals the sent power), for each block of
    ``block_length`` consecutive symbols along the last axis of ``x``; blocks never straddle rows,
    and a final partial block gets its own gain. ``block_length=None``: one gain per row (the whole
    message of n symbols). Gains are independent across blocks and rows. Per call the gains
    ``(..., ceil(n / block_length))`` are drawn first, then the noise ``x.shape``, both from ``rng``.
    Coherent detection: ``transmit`` returns the per-symbol gain, which receivers are told.
    """

    sigma: float
    """noise standard deviation (not variance); finite, >= 0"""
    block_length: int | None = None
    """symbols per fading block along the last axis, an integer >= 1; None: one block per row"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_sigma(self.sigma, "RayleighBlockFading"))
        block = self.block_length
        if block is not None:
            if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
                raise ValueError(
                    f"RayleighBlockFading.block_length must be None or an integer >= 1, got {block!r}"
                )
            object.__setattr__(self, "block_length", int(block))

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Fade and add noise. ``x`` float32 of any shape -> ``y`` float32 of the same shape."""
        return self.transmit(x, rng)[0]

    def transmit(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(y, gain)``: ``y = gain * x + sigma * noise`` float32, ``gain`` float32 of x's shape, the
        per-symbol ``h`` (constant within a block). A 0-d ``x`` is one block of one symbol."""
        _check_io(x, rng, "RayleighBlockFading")
        rows = x.reshape(1) if x.ndim == 0 else x  # (..., n)
        n = rows.shape[-1]
        block = self.block_length if self.block_length is not None else max(n, 1)
        num_blocks = -(-n // block)
        h = np.sqrt(rng.standard_exponential(rows.shape[:-1] + (num_blocks,))).astype(np.float32)
        gain = np.repeat(h, block, axis=-1)[..., :n].reshape(x.shape)  # (..., n)
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        y = (gain * x + np.float32(self.sigma) * noise).astype(np.float32, copy=False)
        return y, gain

    @property
    def noise_power(self) -> float:
        """Noise power per symbol, ``sigma**2``."""
        return self.sigma**2

    def output_power(self, input_power: float = 1.0) -> float:
        """Expected output power: ``input_power + sigma**2`` (``E[h**2] = 1``)."""
        return input_power + self.sigma**2

    def log_likelihood(self, y: np.ndarray, x: np.ndarray, gain: np.ndarray | None = None) -> np.ndarray:
        """``-(y - gain * x)**2 / (2 sigma**2)`` per symbol (coherent), float64, the broadcast shape.

        ``gain`` broadcasts like ``y`` (the ``gain`` from ``transmit``); None means ones (a receiver
        that ignores the channel state). sigma = 0 uses ``NOISELESS_SIGMA`` (the noiseless convention).
        """
        y, x, g = _as_float64(y, x, 1.0 if gain is None else gain)
        return _gaussian(y, g * x, self.sigma)

    def capacity_per_use(self) -> float:
        """Ergodic capacity ``E_g[0.5 log2(1 + g / sigma**2)]``, ``g ~ Exp(1)`` (inf at sigma 0).

        Exact up to quadrature error (below 1e-12 relative for sigma in [1e-3, 1e3]): the integral
        is split at g = 1; on [0, 1] Gauss-Legendre in ``v = ln(1 + g / sigma**2)``, which removes
        the near-singularity at ``g = -sigma**2`` that makes plain Gauss-Laguerre converge slowly for
        small sigma; on [1, inf) Gauss-Laguerre in ``g - 1``. 48 nodes each.
        """
        if self.sigma == 0:
            return math.inf
        s2 = self.sigma**2
        xl, wl = _LEGENDRE_NODES
        top = math.log1p(1.0 / s2)
        v = 0.5 * top * (xl + 1.0)
        g = s2 * np.expm1(v)
        # dg = (s2 + g) dv; integrand exp(-g) ln(1 + g / s2) = exp(-g) v
        head = 0.5 * top * float(np.sum(wl * np.exp(-g) * v * (s2 + g)))
        xg, wg = _LAGUERRE_NODES
        tail = math.exp(-1.0) * float(np.sum(wg * np.log1p((1.0 + xg) / s2)))
        return (head + tail) / (2.0 * math.log(2.0))


# ---------------------------------------------------------------- the normal CDF in log space


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def log_ndtr(x: np.ndarray) -> np.ndarray:
    """``ln Phi(x)``, Phi the standard normal CDF, elementwise, float64, accurate in both tails (scipy's)."""
    return _scipy_log_ndtr(np.asarray(x, dtype=np.float64))


def log_normal_interval(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``ln(Phi(b) - Phi(a))`` elementwise for ``a <= b`` (``a = -inf``, ``b = inf`` allowed), float64.

    Stable: an interval is first reflected (``Phi(b) - Phi(a) = Phi(-a) - Phi(-b)``) so that it lies
    mostly below 0, then ``ln Phi(b) + ln(-expm1(ln Phi(a) - ln Phi(b)))``; a narrow interval
    (``w max(1, |m|) < 0.01``, width ``w``, midpoint ``m``) uses the midpoint expansion
    ``w phi(m) (1 + (m**2 - 1) w**2 / 24 + (m**4 - 6 m**2 + 3) w**4 / 1920)`` instead, which has no
    cancellation. Floored at ``LOG_FLOOR = ln 1e-300`` so that sums stay finite.
    """
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        flip = a + b > 0
        lo = np.where(flip, -b, a)
        hi = np.where(flip, -a, b)
        width = hi - lo
        mid = 0.5 * (hi + lo)
        narrow = width * np.maximum(1.0, np.abs(mid)) < 1e-2
        log_hi = log_ndtr(hi)
        wide = log_hi + np.log(-np.expm1(log_ndtr(lo) - log_hi))
        m2, w2 = np.square(mid), np.square(width)
        series = (
            np.log(width)
            - 0.5 * m2
            - _HALF_LOG_2PI
            + np.log1p((m2 - 1.0) * w2 / 24.0 + (m2 * m2 - 6.0 * m2 + 3.0) * w2 * w2 / 1920.0)
        )
        out = np.where(narrow, series, wide)
    return np.fmax(out, LOG_FLOOR)


# ---------------------------------------------------------------- chains


def _flatten(channels: Sequence[Channel]) -> tuple[Channel, ...]:
    """The stages of ``channels`` with nested chains expanded in order."""
    out: list[Channel] = []
    for stage in channels:
        out.extend(_flatten(stage.channels) if isinstance(stage, Chain) else [stage])
    return tuple(out)


@dataclass(frozen=True)
class Chain:
    """Channels applied in order, all drawing from the same generator: ``Chain([a, b])(x) = b(a(x))``."""

    channels: Sequence[Channel]
    """the stages, first applied first; at least one"""

    SUPPORTED_LIKELIHOODS = (
        "a single stage",
        "[Erasure(p), AWGN(sigma)]",
        "[AWGN(sigma), Erasure(p)]",
        "[AWGN(sigma), Quantize(bits, clip)]",
    )

    def __post_init__(self) -> None:
        if isinstance(self.channels, Channel) or not isinstance(self.channels, Sequence):
            raise ValueError(
                f"Chain.channels must be a sequence of channels, got {type(self.channels).__name__}"
            )
        stages = tuple(self.channels)
        if not stages:
            raise ValueError("Chain.channels must hold at least one channel, got an empty sequence")
        for i, stage in enumerate(stages):
            if not isinstance(stage, Channel):
                raise ValueError(
                    f"Chain.channels[{i}] must be a channel (with __call__, transmit, output_power, "
                    f"log_likelihood and capacity_per_use), got {type(stage).__name__}"
                )
        object.__setattr__(self, "channels", stages)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Apply every stage in order. ``x`` float32 -> ``y`` float32 of the same shape."""
        return self.transmit(x, rng)[0]

    def transmit(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(y, gain)``: every stage in order; ``gain`` float32 the product of the stages' gains."""
        _check_io(x, rng, "Chain")
        gain = _unit_gain(x)
        for stage in self.channels:
            x, stage_gain = stage.transmit(x, rng)
            gain = gain * stage_gain
        return x, gain

    def output_power(self, input_power: float = 1.0) -> float:
        """Expected output power, composed stage by stage."""
        for stage in self.channels:
            input_power = stage.output_power(input_power)
        return input_power

    def log_likelihood(self, y: np.ndarray, x: np.ndarray, gain: np.ndarray | None = None) -> np.ndarray:
        """Per-symbol ``log p(y | x)`` up to terms free of ``x``, float64, for the supported chains.

        - a single stage: that stage's ``log_likelihood`` (``gain`` passed on);
        - ``[Erasure(p), AWGN(sigma)]``, the receiver not knowing which symbols were erased: the
          mixture ``ln(p exp(-y**2 / 2 sigma**2) + (1 - p) exp(-(y - x)**2 / 2 sigma**2))`` (by
          ``np.logaddexp``); sigma = 0 is ``Erasure(p)`` alone;
        - ``[AWGN(sigma), Erasure(p)]``: 0 where ``y == 0`` exactly (erased), else the AWGN term;
        - ``[AWGN(sigma), Quantize(bits, clip)]``: the cell probability
          ``ln P(Q(x + sigma n) = y) = ln(Phi((hi - x) / sigma) - Phi((lo - x) / sigma))``, ``[lo, hi]``
          the cell of the level nearest ``y`` (midpoints between levels; the outer cells reach to
          -inf / inf), by ``log_normal_interval`` (floored at ``ln 1e-300``); sigma = 0 is
          ``Quantize`` alone.

        Nested chains are flattened first. Other chains raise ``NotImplementedError``.
        """
        stages = _flatten(self.channels)
        if len(stages) == 1:
            return stages[0].log_likelihood(y, x, gain)
        if len(stages) == 2:
            first, second = stages
            if isinstance(first, Erasure) and isinstance(second, AWGN):
                if second.sigma == 0:
                    return first.log_likelihood(y, x)
                y, x = _as_float64(y, x)
                p = first.p
                log_p = math.log(p) if p > 0 else -math.inf
                log_q = math.log1p(-p) if p < 1 else -math.inf
                erased = log_p + _gaussian(y, 0.0, second.sigma)
                kept = log_q + _gaussian(y, x, second.sigma)
                return np.logaddexp(erased, kept)
            if isinstance(first, AWGN) and isinstance(second, Erasure):
                y, x = _as_float64(y, x)
                if second.p == 1.0:
                    return np.zeros(np.broadcast_shapes(y.shape, x.shape))
                return np.where(y == 0, 0.0, _gaussian(y, x, first.sigma))
            if isinstance(first, AWGN) and isinstance(second, Quantize):
                if first.sigma == 0:
                    return second.log_likelihood(y, x)
                y, x = _as_float64(y, x)
                q = second
                k = q.level_index(y)
                level = -q.clip + q.step * k
                lo = np.where(k > 0, level - 0.5 * q.step, -np.inf)
                hi = np.where(k < q.num_levels - 1, level + 0.5 * q.step, np.inf)
                return log_normal_interval((lo - x) / first.sigma, (hi - x) / first.sigma)
        raise NotImplementedError(
            f"log_likelihood is not implemented for {self!r}; supported chains: "
            + ", ".join(self.SUPPORTED_LIKELIHOODS)
        )

    def capacity_per_use(self) -> float:
        """Bits per real use. ``[Erasure(p), AWGN(sigma)]``: ``(1 - p) * 0.5 log2(1 + 1 / sigma**2)``,
        an upper bound (the capacity when the receiver is told the erasures);
        ``[AWGN(sigma), Erasure(p)]``: the same, exact (erasures are visible as exact zeros); any
        other chain: the minimum over its stages, an upper bound (data processing). Nested chains
        are flattened first."""
        stages = _flatten(self.channels)
        if len(stages) == 2:
            erasure = next((s for s in stages if isinstance(s, Erasure)), None)
            awgn = next((s for s in stages if isinstance(s, AWGN)), None)
            if erasure is not None and awgn is not None:
                return 0.0 if erasure.p == 1.0 else (1.0 - erasure.p) * awgn.capacity_per_use()
        return min(stage.capacity_per_use() for stage in stages)
