"""OFDM over a 3GPP TDL channel (Sionna), as one of our numpy channels (issue 32, point 2).

    real symbols (B, n) -> complex (B, n/2) at Es = 1 -> packed, message after message, into the data resource
    elements of OFDM resource grids with pilots -> Sionna ``OFDMChannel`` (TDL-A..E of TR 38.901: delay spread,
    speed, carrier frequency) + CN(0, N0) noise -> receiver: perfect CSI, LS estimates at the pilots
    (nearest-neighbour interpolated), or none -> LMMSE equalisation -> equalised symbols and their
    post-equalisation noise variance -> real (B, n)

The convention is ``environments.convention``'s: ``sigma`` is the noise standard deviation per real dimension of
unit-power real symbols, Es/N0 = 1 / sigma^2 per complex use; Sionna sees unit-energy symbols and ``no = sigma^2``.

What the receivers are told. After LMMSE equalisation a data symbol is ``x_hat = x + e`` with ``e`` of variance
``v`` per real dimension (Sionna's post-equalisation noise variance, channel estimation error included). That is our
told-gain channel form with the reference noise ``sigma``: ``transmit`` returns ``y = g * x_hat`` and ``gain = g``,
``g = sigma / sqrt(v)``, so ``log_likelihood(y, x, gain) = -(y - g x)^2 / (2 sigma^2) = -(x_hat - x)^2 / (2 v)``: a
soft receiver weighs each symbol by its own reliability, exactly as Rayleigh's told gains do. Without CSI
(``csi="none"``) the receiver gets the raw resource elements (no equalisation, gain 1) and assumes AWGN.

Channel uses. A message of ``n`` real symbols is ``n / 2`` complex data symbols; the grid also carries pilots (and
unfilled data elements of the last grid, padded with zeros), so ``uses_per_message(n)`` counts ``n / 2`` times the
grid's resource elements over its data elements (the cyclic prefix is time, not resource elements: it is
``cp_overhead``).

Messages of one ``transmit`` call that share a grid share its channel realisation (as consecutive messages in one
slot do); each grid has its own TDL draw. Randomness: the TDL draws and the noise come from torch generators seeded
from ``rng``, so a ``transmit`` is reproducible from the numpy generator's state.

Dim letters: B messages, n real symbols per message, m = n / 2 complex symbols, G grids, S OFDM symbols, F
subcarriers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from environments.channels import (
    NOISELESS_SIGMA,
    _as_float64,
    _awgn_capacity,
    _check_io,
    _check_sigma,
    _gaussian,
)

__all__ = ["CSI_MODES", "OFDM", "OFDM_CHANNELS", "PROFILES", "TDL_MODELS", "ofdm_channel"]

TDL_MODELS = ("A", "B", "C", "D", "E")
#: the 3GPP TR 38.901 link-level channel families: tapped delay line, or clustered delay line (single antennas)
PROFILES = ("tdl", "cdl")
CSI_MODES = ("perfect", "ls", "lmmse", "none")
_VAR_FLOOR = 1e-12
#: the sweep's channel names of OFDM links: <tdl|cdl>-<model>-<csi>, e.g. tdl-a-ls, cdl-c-perfect
#: (cdl has no lmmse: the estimator takes its covariances from the TDL model)
OFDM_CHANNELS: tuple[str, ...] = tuple(f"{p}-{m.lower()}-{c}" for p in PROFILES for m in TDL_MODELS for c in CSI_MODES
                                       if not (p == "cdl" and c == "lmmse"))


def ofdm_channel(name: str, sigma: float, *, speed: float = 0.0, delay_spread: float = 100e-9,
                 interpolation: str = "nn") -> OFDM:
    """The ``OFDM`` channel a sweep names ``<tdl|cdl>-<model>-<csi>`` (``OFDM_CHANNELS``) at ``sigma``, speed in m/s."""
    if name not in OFDM_CHANNELS:
        raise ValueError(f"unknown OFDM channel {name!r}; choose <tdl|cdl>-<a..e>-<perfect|ls|lmmse|none> (lmmse: tdl only)")
    profile, model, csi = name.split("-")
    return OFDM(sigma, model=model.upper(), csi=csi, speed=speed, delay_spread=delay_spread, profile=profile,
                interpolation=interpolation)


@dataclass(frozen=True)
class OFDM:
    """Real symbols over OFDM on a TDL channel with pilots; LMMSE equalisation with perfect, LS or no CSI."""

    sigma: float
    """noise standard deviation per real dimension (Es/N0 = 1 / sigma^2)"""
    model: Literal["A", "B", "C", "D", "E"] = "A"
    """TDL model of 3GPP TR 38.901 (A-C: no line of sight; D, E: with)"""
    delay_spread: float = 100e-9
    """RMS delay spread in seconds"""
    speed: float = 0.0
    """terminal speed in m/s (Doppler: time variation across the grid's OFDM symbols)"""
    csi: Literal["perfect", "ls", "lmmse", "none"] = "ls"
    """what the receiver knows of the channel: perfect, LS estimates at the pilots, LMMSE estimates (LS at the pilots
    filtered across frequency then time with the TDL model's own covariances: the receiver knows the model, its
    delay spread and the speed), none"""
    fft_size: int = 12
    """subcarriers F"""
    num_ofdm_symbols: int = 14
    """OFDM symbols S of a grid (one slot)"""
    pilot_symbols: tuple[int, ...] = (2, 11)
    """indices of the OFDM symbols that carry pilots (Kronecker pattern: every subcarrier)"""
    subcarrier_spacing: float = 30e3
    """Hz"""
    cyclic_prefix_length: int = 0
    """samples of cyclic prefix (counted in ``cp_overhead``; the frequency-domain channel does not simulate it)"""
    carrier_frequency: float = 3.5e9
    """Hz"""
    interpolation: Literal["nn", "lin"] = "nn"
    """csi="ls": how the pilots' LS estimates reach the data elements: nearest pilot symbol, or linear in time and
    frequency between pilots (Sionna's LinearInterpolator)"""
    profile: Literal["tdl", "cdl"] = "tdl"
    """TR 38.901's tapped delay line, or its clustered delay line between single vertically polarised 38.901
    antennas (downlink)"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_sigma(self.sigma, "OFDM"))
        if self.model not in TDL_MODELS:
            raise ValueError(f"OFDM model must be one of {TDL_MODELS}, got {self.model!r}")
        if self.profile not in PROFILES:
            raise ValueError(f"OFDM profile must be one of {PROFILES}, got {self.profile!r}")
        if self.interpolation not in ("nn", "lin"):
            raise ValueError(f"OFDM interpolation must be nn or lin, got {self.interpolation!r}")
        if self.csi not in CSI_MODES:
            raise ValueError(f"OFDM csi must be one of {CSI_MODES}, got {self.csi!r}")
        for name in ("fft_size", "num_ofdm_symbols"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"OFDM {name} must be an integer >= 1, got {value!r}")
        pilots = tuple(self.pilot_symbols)
        object.__setattr__(self, "pilot_symbols", pilots)
        if len(set(pilots)) != len(pilots) or not all(0 <= p < self.num_ofdm_symbols for p in pilots):
            raise ValueError(f"OFDM pilot_symbols must be distinct indices in [0, {self.num_ofdm_symbols}), got {pilots}")
        if len(pilots) >= self.num_ofdm_symbols:
            raise ValueError("OFDM needs at least one OFDM symbol without pilots for data")
        if self.csi in ("ls", "lmmse") and not pilots:
            raise ValueError(f"OFDM csi={self.csi!r} estimates the channel at pilots: give pilot_symbols")
        if self.csi == "lmmse" and self.profile != "tdl":
            raise ValueError("OFDM csi='lmmse' takes its covariances from the TDL model: use profile='tdl'")
        for name in ("delay_spread", "speed", "subcarrier_spacing", "carrier_frequency"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0 and (value > 0 or name == "speed")):
                raise ValueError(f"OFDM {name} must be finite and {'>= 0' if name == 'speed' else '> 0'}, got {value}")
        if isinstance(self.cyclic_prefix_length, bool) or not 0 <= int(self.cyclic_prefix_length) <= self.fft_size:
            raise ValueError(f"OFDM cyclic_prefix_length must be in [0, fft_size], got {self.cyclic_prefix_length}")

    def __getstate__(self) -> dict:
        """Pickled without the built Sionna layers (an agent that is sent the channel model rebuilds them)."""
        return {k: v for k, v in self.__dict__.items() if k != "_parts"}

    # ---- accounting ----

    @property
    def data_elements(self) -> int:
        """Data resource elements of one grid."""
        return self.fft_size * (self.num_ofdm_symbols - len(self.pilot_symbols))

    @property
    def pilot_overhead(self) -> float:
        """Resource elements per data element (>= 1)."""
        return self.fft_size * self.num_ofdm_symbols / self.data_elements

    @property
    def cp_overhead(self) -> float:
        """Time per OFDM symbol with its cyclic prefix over without."""
        return (self.fft_size + self.cyclic_prefix_length) / self.fft_size

    def uses_per_message(self, n: int) -> float:
        """Complex channel uses (resource elements, pilots counted) of a message of ``n`` real symbols."""
        return math.ceil(n / 2) * self.pilot_overhead

    # ---- the Sionna chain ----

    @cached_property
    def _parts(self) -> dict:
        import torch
        from sionna.phy import config

        pilots = list(self.pilot_symbols)
        # the layers draw at construction (from torch's global generator and Sionna's): fixed draws, so two equal
        # channels play alike, and torch's global state is left as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            config.seed = 0
            return self._build(pilots)

    def _build(self, pilots: list[int]) -> dict:
        from sionna.phy.channel import OFDMChannel
        from sionna.phy.channel.tr38901 import TDL
        from sionna.phy.mimo import StreamManagement
        from sionna.phy.ofdm import LMMSEEqualizer, ResourceGrid, ResourceGridMapper

        rg = ResourceGrid(num_ofdm_symbols=self.num_ofdm_symbols, fft_size=self.fft_size,
                          subcarrier_spacing=self.subcarrier_spacing, cyclic_prefix_length=int(self.cyclic_prefix_length),
                          pilot_pattern="kronecker" if pilots else "empty",
                          pilot_ofdm_symbol_indices=pilots if pilots else None)
        if self.profile == "cdl":
            from sionna.phy.channel.tr38901 import CDL, Antenna

            def antenna() -> Antenna:
                return Antenna("single", "V", "38.901", self.carrier_frequency)

            model = CDL(self.model, self.delay_spread, self.carrier_frequency, ut_array=antenna(),
                        bs_array=antenna(), direction="downlink", min_speed=self.speed, max_speed=self.speed)
        else:
            model = TDL(self.model, delay_spread=self.delay_spread, carrier_frequency=self.carrier_frequency,
                        min_speed=self.speed, max_speed=self.speed)
        sm = StreamManagement(np.array([[1]]), 1)
        return {"rg": rg, "mapper": ResourceGridMapper(rg),
                "channel": OFDMChannel(model, rg, normalize_channel=True, return_channel=True),
                "estimator": self._estimator(rg) if pilots else None,
                "equalizer": LMMSEEqualizer(rg, sm)}

    def _estimator(self, rg):
        """LS (with its interpolation) or LMMSE over frequency then time with the TDL's covariance matrices."""
        from sionna.phy.ofdm import LSChannelEstimator

        if self.csi != "lmmse":
            return LSChannelEstimator(rg, interpolation_type=self.interpolation)
        from sionna.phy.ofdm import LMMSEChannelEstimator, tdl_freq_cov_mat, tdl_time_cov_mat

        freq = tdl_freq_cov_mat(self.model, self.subcarrier_spacing, self.fft_size, self.delay_spread)
        time = tdl_time_cov_mat(self.model, self.speed, self.carrier_frequency, rg.ofdm_symbol_duration,
                                self.num_ofdm_symbols)
        return LMMSEChannelEstimator(rg, cov_mat_time=time, cov_mat_freq=freq, order="f-t")

    def _equalise(self, s: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Complex data symbols (N,) at Es = 1 -> (equalised symbols (N,), their noise variance per complex (N,))."""
        import torch
        from sionna.phy import config

        p = self._parts
        D = self.data_elements
        N = s.shape[0]
        G = max(1, math.ceil(N / D))
        data = np.zeros(G * D, dtype=np.complex64)
        data[:N] = s
        config.seed = int(rng.integers(0, 2**31 - 1))  # Sionna draws the TDL and the noise from its own generator
        x = torch.as_tensor(data.reshape(G, 1, 1, D))
        grid = p["mapper"](x)  # (G, 1, 1, S, F)
        no = torch.tensor(self.sigma**2)  # the noise the channel adds (none at sigma 0)
        # the receiver's noise level: at sigma 0 the noiseless convention's (NOISELESS_SIGMA), so that the told gains
        # sigma / sqrt(v) stay the channel's magnitudes |h| (v = N0 / |h|^2), as Rayleigh's do, not 1e-12 floors
        no_rx = torch.tensor(max(self.sigma, NOISELESS_SIGMA) ** 2)
        y, h = p["channel"](grid, no)  # y (G, 1, 1, S, F); h (G, 1, 1, 1, 1, S, F)
        if self.csi == "none":
            flat = y.reshape(G, -1)[:, self._data_mask()].reshape(-1).numpy()[:N]
            return flat, np.full(N, np.nan)
        if self.csi == "perfect":
            h_hat, err_var = h, torch.zeros((), dtype=torch.float32)
        else:
            h_hat, err_var = p["estimator"](y, no_rx)
        x_hat, no_eff = p["equalizer"](y, h_hat, err_var, no_rx)  # (G, 1, 1, D) each
        return x_hat.reshape(-1).numpy()[:N], no_eff.reshape(-1).numpy()[:N].astype(np.float64)

    def _data_mask(self) -> np.ndarray:
        mask = np.ones((self.num_ofdm_symbols, self.fft_size), dtype=bool)
        mask[list(self.pilot_symbols)] = False
        return mask.reshape(-1)

    # ---- the channel interface (environments.channels) ----

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``transmit(x, rng)[0]``."""
        return self.transmit(x, rng)[0]

    def transmit(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``x (..., n)`` float32 real symbols -> ``(y, gain)``, each float32 of x's shape (module docstring)."""
        _check_io(x, rng, "OFDM")
        from environments.convention import pair_real, unpair_complex

        shape = x.shape
        n = shape[-1]
        rows = x.reshape(-1, n).astype(np.float64)
        s = pair_real(rows) / math.sqrt(2.0)  # (R, m) at Es = 1 (an odd n's last symbol carries half)
        x_hat, var = self._equalise(s.reshape(-1), rng)
        y = unpair_complex(x_hat.reshape(s.shape) * math.sqrt(2.0), n)  # real, unit power per dimension
        if self.csi == "none":
            return y.reshape(shape).astype(np.float32), np.ones(shape, dtype=np.float32)
        # per real dimension: the complex variance no_eff of a unit-energy symbol, times 2 / 2 (rescale, then halve)
        v = np.repeat(np.maximum(var.reshape(s.shape), _VAR_FLOOR), 2, axis=-1)[:, :n]
        gain = max(self.sigma, NOISELESS_SIGMA) / np.sqrt(v)
        return (gain * y).reshape(shape).astype(np.float32), gain.reshape(shape).astype(np.float32)

    def log_likelihood(self, y: np.ndarray, x: np.ndarray, gain: np.ndarray | None = None) -> np.ndarray:
        """``-(y - gain x)^2 / (2 sigma^2)``: the equalised symbols' Gaussian likelihood (module docstring)."""
        y, x, g = _as_float64(y, x, 1.0 if gain is None else gain)
        return _gaussian(y, g * x, self.sigma)  # RayleighBlockFading's told-gain likelihood

    def capacity_per_use(self) -> float:
        """Upper bound per real data dimension: AWGN's at the same Es/N0 (normalised fading cannot beat it on
        average; pilots are not counted here, ``uses_per_message`` counts them)."""
        return _awgn_capacity(self.sigma)

    def output_power(self, input_power: float = 1.0) -> float:
        """Expected power of the equalised symbols: about ``input_power + sigma^2``."""
        return input_power + self.sigma**2
