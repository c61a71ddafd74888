"""The channels in torch: differentiable, per-message channel kind and SNR, noise from a ``torch.Generator``.

``environments.channels`` simulates the channels in numpy for the environments; this module is the same
channel models for a learned link that trains through them (``protocols.jscc_model``), on any device.
It imports torch only (not PettingZoo, nothing else of ours).

Channels (sigma = 10^(-SNR_dB / 20), unit signal power), by kind:
    awgn      y = x + sigma * N(0, 1)
    rayleigh  y = h * x + sigma * N(0, 1), one h = sqrt(Exp(1)) per message (E[h^2] = 1), told to the receiver
    erasure   each symbol zeroed with probability erasure_p, then AWGN (the receiver is not told which)

Dim letters: B messages, n channel uses.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["CHANNEL_KINDS", "ChannelKind", "simulate_channel"]

ChannelKind = Literal["awgn", "rayleigh", "erasure"]
#: the kinds, in the order of their int64 index (a learned link's one-hot condition uses the same order)
CHANNEL_KINDS: tuple[str, ...] = ("awgn", "rayleigh", "erasure")
_RAYLEIGH, _ERASURE = CHANNEL_KINDS.index("rayleigh"), CHANNEL_KINDS.index("erasure")


def simulate_channel(
    x: torch.Tensor,
    snr_db: torch.Tensor,
    kind: torch.Tensor,
    *,
    erasure_p: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Send symbols through the simulated channel of each message; differentiable in x.

    Args:
        x: (B, n) symbols.
        snr_db: (B,) SNR per message in dB; sigma = 10^(-snr_db / 20).
        kind: (B,) int64 index into ``CHANNEL_KINDS`` per message.
        erasure_p: erasure probability of the ``erasure`` kind.
        generator: RNG on x's device (torch's default when None). The draws do not depend on the kinds: noise
            (B, n), then fading (B,), then erasure uniforms (B, n), so one seed gives the same noise to any mix.

    Returns:
        (y, gain), each (B, n): received symbols and the fading gain per symbol the receiver is told
        (h for rayleigh, ones otherwise; an erasure is not told).
    """
    B, n = x.shape
    sigma = torch.pow(10.0, -snr_db.to(x.dtype) / 20.0)[:, None]  # (B, 1)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    h = torch.empty(B, device=x.device, dtype=x.dtype).exponential_(generator=generator).sqrt()  # (B,)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    kind = kind[:, None]  # (B, 1)
    gain = torch.where(kind == _RAYLEIGH, h[:, None], torch.ones_like(h[:, None])).expand(B, n)
    keep = (kind != _ERASURE) | (u >= erasure_p)  # (B, n)
    y = gain * x * keep + sigma * noise
    return y, gain.contiguous()
