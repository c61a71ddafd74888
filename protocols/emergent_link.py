"""The link an emergent message takes to the listener: the bare simulated channel, or a 5G code around it.

``transmit(cfg, x, snr_db, kind)`` is what every game of ``protocols.emergent_train`` (and the study's trials)
sends through. Uncoded (``EmergentConfig.link == "uncoded"``): ``environments.torch_channels.simulate_channel``
itself, differentiable in x. Coded (``ldpc`` or ``polar``): the speaker's k bits are encoded by Sionna's 5G code
(``protocols.coded.CodedLink``, BPSK, n channel uses), sent through the same channel, demapped to exact LLRs
(``bpsk_llr``) and decoded; the listener hears the decoded bits, with gradients straight through the decoder.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from environments.torch_channels import CHANNEL_KINDS, simulate_channel
from protocols.coded import CodedLink
from protocols.emergent_model import EmergentConfig

__all__ = ["LLR_CLIP", "bpsk_llr", "coded_link", "transmit"]

# LLRs are clipped here: a noiseless channel gives infinite ones, which the decoders do not take
LLR_CLIP = 100.0


@functools.lru_cache(maxsize=8)
def coded_link(code: str, k: int, n: int) -> CodedLink:
    """Sionna's 5G ``code`` of k information bits in n BPSK channel uses, built once per process."""
    return CodedLink(k, n, code=code, modulation="bpsk")


def bpsk_llr(y: torch.Tensor, gain: torch.Tensor, snr_db: torch.Tensor, kind: torch.Tensor,
             erasure_p: float) -> torch.Tensor:
    """Exact LLRs ``log p(y | bit 1) - log p(y | bit 0)`` (Sionna's sign) of BPSK symbols (bit 0 -> +1) from
    ``simulate_channel``'s output ``y (B, n)``, its gain, each message's SNR (B,) and kind (B,).

    awgn and rayleigh (gain told): ``-2 g y / sigma^2``; erasure (not told which symbols): the mixture
    ``(1 - p) N(y; x, sigma^2) + p N(y; 0, sigma^2)``. Clipped to +-``LLR_CLIP``.
    """
    var = torch.pow(10.0, -snr_db.double() / 10.0).clamp_min(1e-30)[:, None]  # (B, 1) sigma^2
    y, g = y.double(), gain.double()
    llr = -2.0 * g * y / var
    erased = (kind == CHANNEL_KINDS.index("erasure"))[:, None]
    if erased.any() and erasure_p > 0:
        def log_mix(x: float) -> torch.Tensor:
            return torch.logaddexp(math.log1p(-erasure_p) - (y - x) ** 2 / (2 * var),
                                   math.log(erasure_p) - y**2 / (2 * var))

        llr = torch.where(erased, log_mix(-1.0) - log_mix(1.0), llr)
    return llr.clamp(-LLR_CLIP, LLR_CLIP)


def transmit(cfg: EmergentConfig, x: torch.Tensor, snr_db: torch.Tensor, kind: torch.Tensor, *, erasure_p: float,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A speaker's symbols ``x`` through the pair's link and channel: ``(heard, gain)``, each ``(B, heard_size)``.

    Uncoded: ``simulate_channel`` as it is (differentiable in x). Coded (``cfg.link`` ldpc or polar): x (B, k)
    are the k information bits as BPSK; they are encoded into n coded symbols, sent through ``simulate_channel``,
    demapped (``bpsk_llr``) and decoded by Sionna; the listener hears ``x`` with each wrongly decoded bit's sign
    flipped, so gradients pass straight through the code (the flips are the channel's noise). Gain: ones.
    """
    if cfg.link == "uncoded":
        return simulate_channel(x, snr_db, kind, erasure_p=erasure_p, generator=generator)
    B, k = x.shape
    link = coded_link(cfg.link, k, cfg.channel_uses)
    bits = (x.detach() < 0).to(torch.uint8).cpu().numpy()  # BPSK -1 is bit 1
    coded = torch.as_tensor(link.modulate(bits), dtype=x.dtype, device=x.device)  # (B, n)
    y, gain = simulate_channel(coded, snr_db, kind, erasure_p=erasure_p, generator=generator)
    decoded = link.decode(bpsk_llr(y, gain, snr_db, kind, erasure_p).cpu().numpy())  # (B, k)
    flips = torch.as_tensor((decoded != bits).astype(np.float32), dtype=x.dtype, device=x.device)
    return x * (1.0 - 2.0 * flips), torch.ones_like(x)
