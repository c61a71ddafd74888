"""Seeded channel models on numpy arrays.

A channel maps the transmitted symbols ``x`` to the received symbols ``y`` with an explicit
``numpy.random.Generator``; nothing here touches global random state::

    y = channel(x, rng)        # x, y: float32 arrays of the same shape, e.g. (B, n)

Channels (DESIGN.md section 3; sigma is a standard deviation everywhere):

- ``AWGN(sigma)``: ``y = x + sigma * N(0, 1)``, noise independent per symbol.
  ``noise_power = sigma**2``; for unit signal power ``SNR = 1 / sigma**2`` and
  ``SNR_dB = -20 log10 sigma``.
- ``Erasure(p)``: each symbol is replaced by 0 with probability ``p``, independently.
- ``Quantize(bits, clip)``: deterministic uniform quantiser with ``2**bits`` levels evenly
  spaced on ``[-clip, clip]`` (both ends included); inputs outside the range saturate to the end
  levels. It takes ``rng`` only so that every channel has the same call signature.
- ``Chain([c1, c2, ...])``: applies ``c1`` then ``c2`` ... with the same generator.

Every channel also gives ``output_power(input_power)``: the expected mean power per symbol of
``y`` for an input of mean power ``input_power``. Relays use it for a fixed (not per-message)
amplify-and-forward gain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["AWGN", "Chain", "Channel", "Erasure", "Quantize"]


@runtime_checkable
class Channel(Protocol):
    """What the environments need from a channel model."""

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return the received float32 symbols for the sent float32 symbols ``x`` (same shape)."""
        ...

    def output_power(self, input_power: float = 1.0) -> float:
        """Expected mean power per symbol of the output for an input of mean power ``input_power``."""
        ...


def _check_real(name: str, value: object, owner: str) -> float:
    """Return ``value`` as a float if it is a finite real number, else raise ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{owner}.{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be finite, got {value}")
    return value


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


@dataclass(frozen=True)
class AWGN:
    """Additive white Gaussian noise: ``y = x + sigma * N(0, 1)``, i.i.d. per symbol."""

    sigma: float
    """noise standard deviation (not variance); finite, >= 0; 0 is the noiseless channel"""

    def __post_init__(self) -> None:
        sigma = _check_real("sigma", self.sigma, "AWGN")
        if sigma < 0:
            raise ValueError(f"AWGN.sigma must be >= 0 (a standard deviation), got {sigma}")
        object.__setattr__(self, "sigma", sigma)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Add Gaussian noise. ``x`` float32 of any shape -> ``y`` float32 of the same shape."""
        _check_io(x, rng, "AWGN")
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        return (x + np.float32(self.sigma) * noise).astype(np.float32, copy=False)

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
        _check_io(x, rng, "Erasure")
        erased = rng.random(x.shape) < self.p
        return np.where(erased, np.float32(0.0), x).astype(np.float32, copy=False)

    def output_power(self, input_power: float = 1.0) -> float:
        """Expected output power: ``(1 - p) * input_power``."""
        return (1.0 - self.p) * input_power


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

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Quantise. ``x`` float32 -> ``y`` float32 of the same shape; ``rng`` is not used."""
        _check_io(x, rng, "Quantize")
        # index of the nearest level, computed in float64 so that 2**24 levels still round right
        index = np.rint((np.clip(x.astype(np.float64), -self.clip, self.clip) + self.clip) / self.step)
        return (-self.clip + self.step * index).astype(np.float32)

    def output_power(self, input_power: float = 1.0) -> float:
        """Approximate output power ``input_power + step**2 / 12`` (additive-noise model, no clipping)."""
        return input_power + self.noise_power


@dataclass(frozen=True)
class Chain:
    """Channels applied in order, all drawing from the same generator: ``Chain([a, b])(x) = b(a(x))``."""

    channels: Sequence[Channel]
    """the stages, first applied first; at least one"""

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
                    f"Chain.channels[{i}] must be a channel (callable as channel(x, rng) with output_power), "
                    f"got {type(stage).__name__}"
                )
        object.__setattr__(self, "channels", stages)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Apply every stage in order. ``x`` float32 -> ``y`` float32 of the same shape."""
        _check_io(x, rng, "Chain")
        for stage in self.channels:
            x = stage(x, rng)
        return x

    def output_power(self, input_power: float = 1.0) -> float:
        """Expected output power, composed stage by stage."""
        for stage in self.channels:
            input_power = stage.output_power(input_power)
        return input_power
