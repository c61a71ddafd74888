"""The jscc protocol: a trained JSCC adapter (``protocols.jscc_model.JSCCModel``) as a ``Protocol``.

    ids (B, L) -> CALM encoder mu -> adapter encoder, told the channel's (kind, SNR) -> x (B, n) * s
    y (B, n), gain -> adapter decoder, told (kind, SNR) -> latents -> CALM decoder -> argmax ids (B, L)

``s`` is the one power-normalising scalar, fitted by ``fit`` on training passages (mean power 1 there,
like ``protocols.vector``); the adapter's own normalisation is already close to 1.

How each end learns the channel (SNR-adaptive JSCC gives the SNR to both ends):
- the speaker: ``encode(ids)`` takes nothing extra and uses the channel the protocol is bound to, given at
  construction (``channel=``) or by ``with_channel(channel)``, which returns a view sharing the adapter and
  the fitted scale. Encoding with no channel bound is a ValueError. ``score`` encodes the candidates the same way.
- the receiver: ``decode(symbols, *, channel, gain)`` reads the SNR and the kind from the ``channel`` passed
  to it (None: the bound channel), and the fading gains from ``gain``.
``channel_snr_db(channel)`` turns a channel model into that (kind, SNR, erasure p); it reads only public
fields. The adapter must have been trained on the kind (and, for erasures, on the same p); SNRs outside its
training range are accepted, its MLPs then see the nearest end of the range. Fading is trained with one gain per
message; a ``RayleighBlockFading`` with blocks shorter than n gives per-symbol gains the decoder takes as they come.

This protocol is for reconstruction: ``decode`` gives tokens. Its hard receiver (``hard_score``) decodes, then
scores each candidate by minus the number of tokens that differ (``hard_domain = "tokens"``); the soft
receiver (``score``, from ``Protocol``) is the channel likelihood of each candidate's symbols. ``bits_sent``
is None (analog).

Saving: ``protocol.json`` holds the config, with the adapter's checkpoint directory (``calm.checkpoint``) and
the sha256 of its ``model.safetensors``; ``protocol.safetensors`` holds the scale. ``load`` refuses an adapter
whose weights changed.

Dim letters: B passages, L tokens, n channel uses, C candidates.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols import jscc_model  # noqa: F401  (registers the adapter's model type for load_pretrained)
from protocols.base import ChannelModel
from protocols.latent import LatentProtocol, check_autoencoder
from protocols.told_channel import (  # noqa: F401  (re-exported: the jscc protocol's public names)
    ChannelState,
    JSCCProtocolConfig,
    ToldChannel,
    budget_config,
    channel_snr_db,
    file_sha256,
)

__all__ = ["ChannelState", "JSCCProtocol", "JSCCProtocolConfig", "ToldChannel", "channel_snr_db", "file_sha256"]

# logits held in memory at once by decode: rows * L * V <= this many floats
MAX_LOGITS = 1 << 25


class JSCCProtocol(ToldChannel, LatentProtocol):
    """Analog protocol through a trained JSCC adapter around its frozen CALM autoencoder."""

    name = "jscc"
    config_class = JSCCProtocolConfig
    hard_domain = "tokens"

    def __init__(self, adapter: Any, config: JSCCProtocolConfig | None = None, *, autoencoder: Any | None = None,
                 channel: Any | None = None) -> None:
        """Wrap ``adapter`` (a ``protocols.jscc_model.JSCCModel``, put in eval mode).

        Args:
            adapter: the trained adapter; its frozen autoencoder is the one used.
            config: protocol settings (budget, adapter checkpoint path).
            autoencoder: if given, checked to be the adapter's autoencoder (same config, same weights).
            channel: the channel the speaker is told (see the module docstring); None: bind one later.

        Raises:
            ValueError: budget differs from the adapter's channel_uses; an autoencoder that differs from the
                adapter's (the message names the field); adapter_path's weights differ from ``adapter``'s
                or from ``adapter_sha256``.
        """
        config = budget_config(config, adapter)
        if autoencoder is not None:
            _check_same_autoencoder(autoencoder, adapter.autoencoder)
        super().__init__(adapter.autoencoder, config)
        self.adapter = adapter.eval()
        self.scale = 1.0  # s: the one power-normalising scalar
        self.state: ChannelState | None = None
        self.channel = None
        if config.adapter_path:
            self._check_adapter_file()
        if channel is not None:
            self._bind(channel)

    @classmethod
    def from_pretrained(cls, adapter_dir: str | Path, config: JSCCProtocolConfig | None = None, *,
                        autoencoder: Any | None = None, channel: Any | None = None) -> JSCCProtocol:
        """A protocol around the adapter checkpoint ``adapter_dir`` (its path and sha256 go in the config)."""
        from calm.checkpoint import load_pretrained

        adapter, _ = load_pretrained(adapter_dir, expect="jscc")
        config = dataclasses.replace(config or JSCCProtocolConfig(), adapter_path=str(Path(adapter_dir).resolve()))
        return cls(adapter, config, autoencoder=autoencoder, channel=channel)

    def _encode_batch(self, ids: torch.Tensor, snr_db: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """ids (b, L) -> the adapter's symbols (b, n): CALM means, then the adapter's encoder."""
        return self.adapter.encode(self.adapter.latents(ids), snr_db, kind)

    def _decode(self, symbols: np.ndarray, channel: ChannelModel | None, gain: np.ndarray) -> np.ndarray:
        L = self._require_fit()
        state = self._receiver_state(channel)
        B = symbols.shape[0]
        device = self._device()
        snr, kind = self._condition(state, B)
        rows = max(1, MAX_LOGITS // (L * self.vocab_size))
        out = []
        with torch.inference_mode():
            for start in range(0, B, rows):
                sl = slice(start, start + rows)
                y = torch.as_tensor(symbols[sl] / self.scale, dtype=torch.float32, device=device)
                g = torch.as_tensor(gain[sl], dtype=torch.float32, device=device)
                z = self.adapter.decode(y, g, snr[sl], kind[sl])  # (b, L/K, l)
                out.append(self.adapter.autoencoder.decode(z).argmax(-1).cpu().numpy())
        return np.concatenate(out, axis=0).astype(np.int64)

    @classmethod
    def load(cls, directory: str | Path, autoencoder: Any | None = None, *, channel: Any | None = None) -> JSCCProtocol:
        """Load a protocol written by ``save``: the adapter from its recorded path (refused if its sha256 changed).

        Raises:
            ValueError: a changed adapter; an ``autoencoder`` whose K, latent_dim or vocab_size (or other
                config field, or weights) differ from the adapter's (the message names the field).
            DamagedFileError: a damaged protocol.json or protocol.safetensors, or the recorded adapter missing.
        """
        from calm.checkpoint import load_pretrained

        meta, config = cls._recorded_adapter(directory)
        if autoencoder is not None:
            check_autoencoder(meta["dims"], autoencoder)
        adapter, _ = load_pretrained(config.adapter_path, expect="jscc")
        proto = cls(adapter, config, autoencoder=autoencoder, channel=channel)
        proto._load_stats(directory, meta["seq_len"])
        return proto


def _check_same_autoencoder(autoencoder: Any, inside: Any) -> None:
    """Raise ValueError unless ``autoencoder`` has the config (naming the first differing field) and the
    weights of the adapter's frozen autoencoder ``inside``."""
    have, want = autoencoder.config.to_dict(), inside.config.to_dict()
    for name in ("K", "latent_dim", "vocab_size", *sorted(want)):
        if have.get(name) != want.get(name):
            raise ValueError(f"autoencoder {name}={have.get(name)!r} does not match the jscc adapter's "
                             f"autoencoder {name}={want.get(name)!r}")
    theirs = inside.state_dict()
    for key, value in autoencoder.state_dict().items():
        if not torch.equal(value.detach().cpu(), theirs[key].detach().cpu()):
            raise ValueError(f"the autoencoder's weights differ from the jscc adapter's frozen autoencoder "
                             f"(tensor {key!r}): the adapter was trained on another autoencoder")
