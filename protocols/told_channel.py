"""What every adapter protocol told the channel shares (``protocols.jscc``, ``protocols.lm_jscc``).

- ``channel_snr_db(channel)``: the (kind, SNR, erasure p) both ends are told, from a channel model's public fields;
- ``ToldChannel``: binding the speaker to a channel (``with_channel``), the receiver's state, the one power scale
  fitted on training passages, batched encoding, saving with the adapter's path and sha256, and loading it back;
- ``JSCCProtocolConfig``: the settings of such a protocol (budget, adapter path and sha256, batch size).

See ``protocols.jscc``'s module docstring for how each end learns the channel.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from environments.channels import AWGN, Chain, Erasure, RayleighBlockFading
from environments.torch_channels import CHANNEL_KINDS
from protocols.base import check_budget
from protocols.saved import build_config, read_autoencoder_dims

__all__ = ["ChannelState", "JSCCProtocolConfig", "ToldChannel", "budget_config", "channel_snr_db", "file_sha256"]

# kind names, in the order of the adapter's kind input (environments.torch_channels.CHANNEL_KINDS)
KINDS = CHANNEL_KINDS
# passages per fit draw of training conditions (fixed seed: fit is deterministic)
FIT_SEED = 0


class ChannelState(NamedTuple):
    """What both ends of the jscc protocol are told about a channel."""

    kind: str
    """awgn, rayleigh or erasure"""
    snr_db: float
    """-20 log10 sigma (inf for sigma = 0)"""
    erasure_p: float
    """erasure probability (0 for awgn and rayleigh)"""


def _snr_db(sigma: float) -> float:
    return math.inf if sigma == 0 else -20.0 * math.log10(sigma)


def channel_snr_db(channel: Any) -> ChannelState:
    """The (kind, SNR in dB, erasure p) of a channel model, from its public fields (sigma, p).

    Handles ``AWGN(sigma)`` (awgn), ``RayleighBlockFading(sigma, block_length)`` (rayleigh), ``OFDM`` with CSI
    (rayleigh: the equalised symbols with their told gains; without CSI, awgn),
    ``Chain([Erasure(p), AWGN(sigma)])`` and ``Chain([AWGN(sigma), Erasure(p)])`` (erasure), and a chain of
    one of these (nested chains are flattened).

    >>> channel_snr_db(AWGN(0.1))
    ChannelState(kind='awgn', snr_db=20.0, erasure_p=0.0)

    Raises:
        ValueError: any other channel.
    """
    if isinstance(channel, AWGN):
        return ChannelState("awgn", _snr_db(channel.sigma), 0.0)
    if isinstance(channel, RayleighBlockFading):
        return ChannelState("rayleigh", _snr_db(channel.sigma), 0.0)
    from environments.ofdm import OFDM

    if isinstance(channel, OFDM):  # after LMMSE equalisation: per-symbol told gains (no CSI: raw, gain 1)
        return ChannelState("awgn" if channel.csi == "none" else "rayleigh", _snr_db(channel.sigma), 0.0)
    if isinstance(channel, Chain):
        stages: list[Any] = []
        todo = list(channel.channels)
        while todo:
            stage = todo.pop(0)
            if isinstance(stage, Chain):
                todo = list(stage.channels) + todo
            else:
                stages.append(stage)
        if len(stages) == 1:
            return channel_snr_db(stages[0])
        if len(stages) == 2:
            erasure = next((s for s in stages if isinstance(s, Erasure)), None)
            awgn = next((s for s in stages if isinstance(s, AWGN)), None)
            if erasure is not None and awgn is not None:
                return ChannelState("erasure", _snr_db(awgn.sigma), float(erasure.p))
    raise ValueError(f"the jscc protocol cannot use channel {channel!r}; supported: AWGN, RayleighBlockFading, "
                     "Chain([Erasure, AWGN]), Chain([AWGN, Erasure])")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class JSCCProtocolConfig:
    """Settings of the jscc protocol."""

    budget: int | None = None
    """channel uses n per message; must equal the adapter's channel_uses (None: the adapter's)"""
    adapter_path: str = ""
    """the adapter's checkpoint directory (calm.checkpoint.save_pretrained); needed to save the protocol"""
    adapter_sha256: str = ""
    """sha256 of adapter_path/model.safetensors (filled in when empty); a changed adapter is refused"""
    batch_size: int = 256
    """passages per adapter forward pass"""

    def __post_init__(self) -> None:
        self.budget = check_budget(self.budget)
        if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size}")


class ToldChannel:
    """What every adapter protocol told the channel shares (``JSCCProtocol``, ``protocols.lm_jscc.LMJSCCProtocol``).

    The host class sets ``self.adapter`` (a model with ``config.channels``, ``config.erasure_p``,
    ``config.snr_db_min/max``, ``config.passage_length``), ``self.scale``, ``self.state``, ``self.channel`` and
    defines ``_encode_batch(ids, snr_db, kind)`` (one batch of the adapter's symbols before the scale) and the
    receiver.
    ``adapter_kind`` names the adapter in messages and in ``load_pretrained(expect=...)``.
    """

    adapter_kind: str = "jscc"

    def with_channel(self, channel: Any):
        """A view of this protocol (same adapter, same fitted scale) whose speaker is told ``channel``."""
        view = copy.copy(self)
        view._bind(channel)
        return view

    # ---- channel state ----

    def _state_of(self, channel: Any) -> ChannelState:
        state = channel_snr_db(channel)
        c = self.adapter.config
        if state.kind not in c.channels:
            raise ValueError(f"the {self.adapter_kind} adapter was trained on channels {list(c.channels)}, "
                             f"not {state.kind!r}")
        if state.kind == "erasure" and not math.isclose(state.erasure_p, c.erasure_p):
            raise ValueError(f"the {self.adapter_kind} adapter was trained at erasure p={c.erasure_p}, the channel "
                             f"has p={state.erasure_p}")
        return state

    def _bind(self, channel: Any) -> None:
        self.state = self._state_of(channel)
        self.channel = channel

    def _condition(self, state: ChannelState, B: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(snr_db (B,), kind (B,)) tensors on the adapter's device; an infinite SNR goes in as 1000 dB."""
        device = self._device()
        snr = torch.full((B,), min(state.snr_db, 1000.0), dtype=torch.float32, device=device)
        kind = torch.full((B,), KINDS.index(state.kind), dtype=torch.long, device=device)
        return snr, kind

    def _receiver_state(self, channel: Any) -> ChannelState:
        """The state the receiver is told (``channel``, else the bound one), as the adapter sees its own
        symbols: y / s = gain * x + (sigma / s) noise, i.e. at SNR + 20 log10 s."""
        if channel is not None:
            state = self._state_of(channel)
        elif self.state is not None:
            state = self.state
        else:
            raise ValueError(f"the {self.adapter_kind} receiver is told the channel: pass channel= (or bind one to "
                             "the protocol)")
        return state._replace(snr_db=state.snr_db + 20.0 * math.log10(self.scale))

    def _device(self) -> torch.device:
        return next(self.adapter.parameters()).device

    def _raw_symbols(self, ids: np.ndarray, snr_db: torch.Tensor, kind: torch.Tensor) -> np.ndarray:
        """The adapter's symbols ``(B, n)`` float32 before the protocol's scale, per-passage conditions (B,), in
        batches of ``config.batch_size`` (``_encode_batch``)."""
        device = self._device()
        out = []
        with torch.inference_mode():
            for start in range(0, ids.shape[0], self.config.batch_size):
                sl = slice(start, start + self.config.batch_size)
                batch = torch.as_tensor(ids[sl], dtype=torch.long, device=device)
                out.append(self._encode_batch(batch, snr_db[sl].to(device), kind[sl].to(device)).float().cpu().numpy())
        return np.concatenate(out, axis=0)

    # ---- Protocol ----

    def channel_uses(self, L: int) -> int:
        self._check_length(L)
        return int(self.config.budget)

    def _check_length(self, L: int) -> int:
        want = self.adapter.config.passage_length
        if L != want:
            raise ValueError(f"the {self.adapter_kind} adapter sends passages of L={want} tokens, got L={L}")
        return L

    def fit(self, train_ids: np.ndarray):
        """Fit the power scale on training passages ``(N, L)``: mean power 1 per symbol over them, each passage
        sent under a training condition (kind and SNR drawn like the adapter's training, fixed seed)."""
        ids = self._check_train(train_ids)
        self._check_length(ids.shape[1])
        c = self.adapter.config
        rng = np.random.default_rng(FIT_SEED)
        N = ids.shape[0]
        kinds = np.array([KINDS.index(k) for k in c.channels])[rng.integers(0, len(c.channels), N)]
        snrs = rng.uniform(c.snr_db_min, c.snr_db_max, N)
        x = self._raw_symbols(ids, torch.as_tensor(snrs, dtype=torch.float32), torch.as_tensor(kinds))
        power = float(np.mean(x.astype(np.float64) ** 2))
        if not power > 0:
            raise ValueError(f"training passages give all-zero {self.adapter_kind} symbols; cannot normalise power")
        self.scale = 1.0 / math.sqrt(power)
        self.seq_len = int(ids.shape[1])
        return self

    def _encode(self, ids: np.ndarray) -> np.ndarray:
        if self.state is None:
            raise ValueError(f"the {self.adapter_kind} speaker is told the channel: bind one with "
                             "with_channel(channel) (or channel= at construction) before encode or score")
        snr, kind = self._condition(self.state, ids.shape[0])
        return (self._raw_symbols(ids, snr.cpu(), kind.cpu()) * self.scale).astype(np.float32)

    def _hard_score(self, symbols, candidates, channel, gain) -> np.ndarray:
        ids = self._decode(symbols, channel, gain)  # (B, L)
        return -(ids[:, None, :] != candidates).sum(axis=-1).astype(np.float64)  # (B, C)

    def _stats(self) -> dict[str, np.ndarray]:
        return {"scale": np.array([self.scale])}

    def _stat_shapes(self, L: int) -> dict[str, tuple[int, ...]]:
        self._check_length(L)
        return {"scale": (1,)}

    def _set_stats(self, stats: dict[str, np.ndarray]) -> None:
        if not stats["scale"][0] > 0:
            raise ValueError(f"the power scale must be > 0, got {stats['scale'][0]}")
        self.scale = float(stats["scale"][0])

    # ---- saving ----

    def _check_adapter_file(self) -> None:
        """adapter_path's weights must be the adapter's (and, when recorded, have the recorded sha256)."""
        from calm.checkpoint import read_safetensors

        path = Path(self.config.adapter_path) / "model.safetensors"
        sha = file_sha256(path) if path.is_file() else None
        if sha is None:
            raise ValueError(f"adapter_path {self.config.adapter_path}: {path.name} is missing")
        if self.config.adapter_sha256 and sha != self.config.adapter_sha256:
            raise ValueError(f"the {self.adapter_kind} adapter at {self.config.adapter_path} changed: "
                             f"model.safetensors has sha256 {sha[:16]}..., the protocol was fitted with "
                             f"{self.config.adapter_sha256[:16]}...")
        stored = read_safetensors(path)
        for key, value in self.adapter.state_dict().items():
            if key not in stored or not torch.equal(stored[key], value.detach().cpu()):
                raise ValueError(f"the adapter's weights differ from {path} (tensor {key!r})")
        self.config.adapter_sha256 = sha

    def save(self, directory: str | Path) -> None:
        """Write ``protocol.json`` (with the adapter's path and sha256) and ``protocol.safetensors`` (the scale)."""
        if not self.config.adapter_path:
            raise ValueError(f"saving a {self.name} protocol needs config.adapter_path, the adapter's checkpoint "
                             "directory (save it with calm.checkpoint.save_pretrained; see from_pretrained)")
        super().save(directory)

    @classmethod
    def _recorded_adapter(cls, directory: str | Path) -> tuple[dict, JSCCProtocolConfig]:
        """``(protocol.json's meta, config)`` of a saved protocol whose recorded adapter exists and is unchanged."""
        from calm.files import DamagedFileError

        meta = cls.read_config(directory)
        if meta["protocol"] != cls.name:
            raise ValueError(f"{directory} holds a {meta['protocol']!r} protocol, not {cls.name!r}")
        values = dict(meta["config"])
        meta["dims"] = read_autoencoder_dims(directory, values) if cls.adapter_kind == "jscc" else None
        config = build_config(directory, JSCCProtocolConfig, values)
        path = Path(config.adapter_path) / "model.safetensors"
        if not path.is_file():
            raise DamagedFileError(path, f"the {cls.adapter_kind} adapter recorded in {Path(directory) / 'protocol.json'} "
                                         "is missing", f"restore it, or remove {directory} and refit the protocol")
        sha = file_sha256(path)
        if sha != config.adapter_sha256:
            raise ValueError(f"the {cls.adapter_kind} adapter at {config.adapter_path} changed: model.safetensors has "
                             f"sha256 {sha[:16]}..., the protocol was fitted with {config.adapter_sha256[:16]}...")
        return meta, config


def budget_config(config: JSCCProtocolConfig | None, adapter: Any) -> JSCCProtocolConfig:
    """A copy of ``config`` whose budget is the adapter's channel_uses (None filled in; another value refused)."""
    config = dataclasses.replace(config) if config is not None else JSCCProtocolConfig()
    n = int(adapter.config.channel_uses)
    if config.budget is None:
        config.budget = n
    elif config.budget != n:
        raise ValueError(f"budget={config.budget} must equal the adapter's channel_uses={n} (one adapter per n)")
    return config
