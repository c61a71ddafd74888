"""The SNR convention of every table and plot: complex baseband, Es/N0 per complex channel use (issue 32).

A communications reader's first question about an SNR axis is which convention it uses; a real-vs-complex noise
mix-up moves a curve by 3 dB (and Eb/N0 vs Es/N0 by more). Ours, stated once:

- **A channel use is one complex baseband symbol** ``s = x_I + j x_Q``. The protocols emit real symbols of mean
  power 1 per real dimension; two consecutive real symbols are the in-phase and quadrature parts of one complex
  symbol (``pair_real``). A budget of ``n`` real symbols is ``complex_uses(n) = ceil(n / 2)`` complex channel
  uses; the study tables keep ``n`` in real dimensions and say so.
- **SNR means Es/N0 per complex use.** Our AWGN adds ``sigma * N(0, 1)`` to every real dimension, so the complex
  noise is CN(0, N0) with ``N0 = 2 sigma^2``, and a complex symbol has ``Es = E|s|^2 = 2``:
  ``Es/N0 = 2 / (2 sigma^2) = 1 / sigma^2``. The "SNR = 1 / sigma^2 per real use" the project used before is
  therefore *the same number* as Es/N0 per complex use: no figure's dB value moves under this convention; only
  the channel-use count is halved when stated in complex uses.
- **Eb/N0** is Es/N0 per information bit: ``Eb/N0 = Es/N0 / (bits per complex use)``, so a message of ``k`` bits in
  ``n`` real dimensions has ``Eb/N0 = Es/N0 * n / (2 k)`` (QPSK, 2 bits per complex use: Eb/N0 = Es/N0 - 3.01 dB).
- **Sionna's** ``no`` is N0 at ``Es = 1`` (``sionna.phy.utils.ebnodb2no``): ``no = 1 / (Es/N0)``, i.e. noise
  variance ``no / 2`` per real dimension of a unit-energy complex symbol, which is our ``sigma^2`` scaled by the
  same factor 1/2 as the signal. ``sionna_no`` gives it.
- **Capacity** is unchanged: ``log2(1 + Es/N0)`` bits per complex use is ``2 * 0.5 log2(1 + 1 / sigma^2)``, two
  real uses' worth.
- **Fading** (``RayleighBlockFading``): the real gain ``h = |g|`` of a complex Rayleigh gain ``g ~ CN(0, 1)`` after
  coherent phase correction; the I and Q parts of a complex symbol share it when the fading block holds whole
  complex symbols (an even block length, or one gain per message, the default).

``SNR_LABEL`` is the axis label every report uses. ``tests/test_convention.py`` checks our AWGN against Sionna's at
the same Es/N0 on QPSK, and both against the exact bit error rate ``Q(sqrt(Es/N0))``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SNR_LABEL", "complex_uses", "eb_n0_db", "es_n0_db", "pair_real", "qpsk_ber", "sigma_from_es_n0_db",
           "sionna_no", "unpair_complex"]

SNR_LABEL = "Es/N0 (dB)"
"""the SNR axis label of every table and plot: Es/N0 per complex channel use, in dB"""


def es_n0_db(sigma: float) -> float:
    """Es/N0 in dB of unit-power real symbols under AWGN of standard deviation ``sigma`` per real dimension:
    ``-20 log10 sigma`` (inf at sigma 0)."""
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    return math.inf if sigma == 0 else -20.0 * math.log10(sigma)


def sigma_from_es_n0_db(value_db: float) -> float:
    """The per-real-dimension noise standard deviation of unit-power real symbols at Es/N0 ``value_db`` (inf: 0)."""
    value_db = float(value_db)
    if math.isnan(value_db) or value_db == -math.inf:
        raise ValueError(f"Es/N0 must be a number of dB or inf, got {value_db}")
    return 0.0 if value_db == math.inf else 10.0 ** (-value_db / 20.0)


def sionna_no(value_db: float) -> float:
    """Sionna's ``no`` (N0 for unit-energy complex symbols) at Es/N0 ``value_db``: ``10^(-Es/N0 / 10)``."""
    return sigma_from_es_n0_db(value_db) ** 2


def complex_uses(real_uses: int) -> int:
    """Complex channel uses of ``real_uses`` real symbols paired as I and Q: ``ceil(real_uses / 2)``."""
    if isinstance(real_uses, bool) or int(real_uses) != real_uses or real_uses < 0:
        raise ValueError(f"real_uses must be an integer >= 0, got {real_uses!r}")
    return -(-int(real_uses) // 2)


def eb_n0_db(es_n0: float, bits: float, real_uses: int) -> float:
    """Eb/N0 in dB of ``bits`` information bits carried in ``real_uses`` real dimensions at Es/N0 ``es_n0`` dB:
    ``Es/N0 - 10 log10(bits per complex use)``, bits per complex use ``2 bits / real_uses``."""
    if not (bits > 0 and real_uses > 0):
        raise ValueError(f"bits and real_uses must be > 0, got {bits} and {real_uses}")
    return float(es_n0) - 10.0 * math.log10(2.0 * bits / real_uses)


def pair_real(x: np.ndarray) -> np.ndarray:
    """Real symbols ``(..., n)`` -> complex symbols ``(..., ceil(n/2))``: ``x[2i] + j x[2i+1]`` (an odd last one
    alone on I). Unit power per real dimension gives ``Es = 2`` (1 for the odd one)."""
    x = np.asarray(x)
    n = x.shape[-1]
    if n % 2:
        x = np.concatenate([x, np.zeros((*x.shape[:-1], 1), dtype=x.dtype)], axis=-1)
    return x[..., 0::2] + 1j * x[..., 1::2]


def unpair_complex(s: np.ndarray, real_uses: int) -> np.ndarray:
    """Invert ``pair_real``: complex ``(..., m)`` -> real ``(..., real_uses)`` (I, Q interleaved)."""
    s = np.asarray(s)
    out = np.stack([s.real, s.imag], axis=-1).reshape(*s.shape[:-1], 2 * s.shape[-1])
    return out[..., :real_uses]


def qpsk_ber(value_db: np.ndarray | float) -> np.ndarray:
    """Exact bit error rate of Gray-mapped QPSK with coherent detection on AWGN at Es/N0 ``value_db``:
    ``Q(sqrt(Es/N0)) = Q(sqrt(2 Eb/N0))``."""
    from scipy.special import ndtr

    snr = 10.0 ** (np.asarray(value_db, dtype=np.float64) / 10.0)
    return ndtr(-np.sqrt(snr))
