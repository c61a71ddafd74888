"""The lm-jscc protocol: a trained LM-JSCC adapter (``protocols.lm_jscc_model.LMJSCCModel``) as a ``Protocol``.

    ids (B, L) -> sender MLPs on the frozen token LM, told the channel's (kind, SNR) -> x (B, n) * s
    y (B, n), gain -> CALM evidence per token + receiver LM reading it (and a prefix made from y), fused -> ids (B, L)

Channel state, power scale ``s`` (fitted on training passages), ``with_channel``, saving (the adapter's path
and sha256 in ``protocol.json``) and loading are those of ``protocols.jscc`` (``ToldChannel``): see its module
docstring. This protocol decodes tokens (reconstruction); its hard receiver scores candidates by minus the
number of differing tokens, the soft one is the channel likelihood of each candidate's symbols. ``bits_sent``
is None (analog). Both LMs travel inside the adapter's checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols import lm_jscc_model  # noqa: F401  (registers the adapter's model type for load_pretrained)
from protocols.base import ChannelModel, Protocol
from protocols.told_channel import ChannelState, JSCCProtocolConfig, ToldChannel, budget_config

__all__ = ["LMJSCCProtocol"]


class LMJSCCProtocol(ToldChannel, Protocol):
    """Analog protocol through a trained LM-JSCC adapter (a token LM at both ends)."""

    name = "lm-jscc"
    adapter_kind = "lm-jscc"
    config_class = JSCCProtocolConfig
    hard_domain = "tokens"

    def __init__(self, adapter: Any, config: JSCCProtocolConfig | None = None, *, channel: Any | None = None) -> None:
        """Wrap ``adapter`` (put in eval mode); ``config.budget`` must be its channel_uses; ``channel``: the
        channel the speaker is told (None: bind one later with ``with_channel``)."""
        super().__init__()
        self.config = budget_config(config, adapter)
        self.adapter = adapter.eval()
        self.scale = 1.0
        self.state: ChannelState | None = None
        self.channel = None
        if self.config.adapter_path:
            self._check_adapter_file()
        if channel is not None:
            self._bind(channel)

    @classmethod
    def from_pretrained(cls, adapter_dir: str | Path, config: JSCCProtocolConfig | None = None, *,
                        channel: Any | None = None) -> LMJSCCProtocol:
        """A protocol around the adapter checkpoint ``adapter_dir`` (its path and sha256 go in the config)."""
        from calm.checkpoint import load_pretrained

        adapter, _ = load_pretrained(adapter_dir, expect="lm-jscc")
        config = dataclasses.replace(config or JSCCProtocolConfig(), adapter_path=str(Path(adapter_dir).resolve()))
        return cls(adapter, config, channel=channel)

    @property
    def vocab_size(self) -> int:
        return int(self.adapter.config.vocab_size)

    def _config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def _encode_batch(self, ids: torch.Tensor, snr_db: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """ids (b, L) -> the adapter's symbols (b, n)."""
        return self.adapter.encode(ids, snr_db, kind)

    def _decode(self, symbols: np.ndarray, channel: ChannelModel | None, gain: np.ndarray) -> np.ndarray:
        self._require_fit()
        state = self._receiver_state(channel)
        B = symbols.shape[0]
        device = self._device()
        snr, kind = self._condition(state, B)
        out = []
        with torch.inference_mode():
            for start in range(0, B, self.config.batch_size):
                sl = slice(start, start + self.config.batch_size)
                y = torch.as_tensor(symbols[sl] / self.scale, dtype=torch.float32, device=device)
                g = torch.as_tensor(gain[sl], dtype=torch.float32, device=device)
                out.append(self.adapter.decode(y, g, snr[sl], kind[sl]).cpu().numpy())
        return np.concatenate(out, axis=0).astype(np.int64)

    @classmethod
    def load(cls, directory: str | Path, autoencoder: Any | None = None, *, channel: Any | None = None) -> LMJSCCProtocol:
        """Load a protocol written by ``save`` (``autoencoder`` is ignored: this protocol has none).

        Raises:
            ValueError: the recorded adapter changed (sha256).
            DamagedFileError: a damaged protocol.json or protocol.safetensors, or the recorded adapter missing.
        """
        from calm.checkpoint import load_pretrained

        meta, config = cls._recorded_adapter(directory)
        adapter, _ = load_pretrained(config.adapter_path, expect="lm-jscc")
        proto = cls(adapter, config, channel=channel)
        proto._load_stats(directory, meta["seq_len"])
        return proto
