"""LM-JSCC: joint source-channel coding whose receiver is a language model that listens to the channel.

    sender:   ids (B, L) -> frozen CALM encoder -> the JSCC adapter's encoder (``protocols.jscc_model``, started
              from a trained adapter, trained on), told SNR and kind -> n real symbols, unit power
    channel:  awgn | rayleigh | erasure, differentiable (environments.torch_channels.simulate_channel)
    receiver: (a) evidence: the JSCC adapter's decoder -> latents -> frozen CALM decoder -> per-token logits
                  e (B, L, V), divided by the adapter's temperature (what the symbols say about each token);
              (b) prior: a token LM (started from the trained token baseline, fine-tuned) that reads
                  [P prefix vectors made from the received symbols, h_0 .. h_{L-2}], where h_i is the evidence
                  softmax's weighted mean of the LM's input embeddings of the k ids most likely at position i;
              token i = argmax(LM logits_i + beta * e_i): a product of experts of the LM (having read the
              evidence of every earlier position) and the evidence at i (beta learned, starting at 1)

In the spirit of nonlinear-transform source-channel coding (Dai et al. 2022, arXiv:2112.10961: the sender
codes what the receiver's model cannot predict) and of SNR-adaptive JSCC (Xu et al. 2021, arXiv:2012.00533:
SNR and channel kind told to both ends). ``protocols.jscc_model`` alone decodes chunk by chunk with no language
model across chunks; here a token LM carries context across the whole passage. Trained end to end (token
cross-entropy over a sampled softmax: the batch's ids plus ``train_negatives`` uniform ids); the CALM autoencoder
stays frozen. Training and decoding read the same inputs (the receiver LM never reads a true token), and decoding
is one parallel pass.

Two designs came first and lost to the adapter alone (n = 32, AWGN, greedy decoded token accuracy on
validation passages): (1) the LM reading only prefix vectors made from the symbols, with a sender MLP on LM
features, both from scratch: 0.08 at 20 dB after 1,500 steps (the prior drowned the message); (2) this fusion,
but the LM teacher-forced on true tokens and decoding greedily on its own: 0.093 at 20 dB after 500 steps
against the adapter's 0.195 (exposure bias: trained on true histories, it compounded its own errors).

Power: the JSCC adapter's per-condition-group normalisation, running power and raw-power penalty
(``protocols.jscc_model.normalise_power``).

Importing this module registers the model type ``lm-jscc`` with ``calm.checkpoint``. Training:
``protocols.lm_jscc_task`` (``train_lm_jscc``).

Dim letters: B batch, L tokens, n channel uses, P prefix vectors, d LM width, V vocabulary, C sampled ids,
k history ids.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from calm.baseline import BaselineConfig, TokenTransformer
from calm.checkpoint import register_model_type
from calm.checks import check_numbers
from calm.config import DictConfig
from environments.torch_channels import CHANNEL_KINDS, ChannelKind, simulate_channel
from protocols.jscc_model import (
    MLP,
    JSCCConfig,
    JSCCModel,
    check_training_fields,
    condition_input,
    equalise,
    resolve_conditions,
)

__all__ = ["LMJSCCConfig", "LMJSCCModel", "LMJSCCOutput", "PRESETS", "preset"]


@dataclass
class LMJSCCConfig(DictConfig):
    """Hyperparameters of the LM-JSCC adapter. vocab_size, passage_length and channel_uses come from the parts."""

    lm: dict = field(default_factory=dict)
    """BaselineConfig.to_dict() of the token LM the receiver starts from"""
    jscc: dict = field(default_factory=dict)
    """JSCCConfig.to_dict() of the JSCC adapter the sender and the evidence path start from (its own channels and
    SNR range stay as trained: they scale its condition input)"""
    lm_path: str = ""
    """checkpoint the LM's weights are loaded from when training starts (the lm-jscc checkpoint then holds them)"""
    jscc_path: str = ""
    """checkpoint the JSCC adapter's weights are loaded from when training starts"""
    prefix_length: int = 4
    """P: vectors the received symbols become at the head of the receiver LM's input"""
    history_top: int = 32
    """k: the receiver LM reads, at each position, the mean of its input embeddings of the k most likely ids under
    the channel evidence of the position before (weighted by their evidence softmax)"""
    hidden_size: int = 256
    """width of the prefix MLP (SwiGLU inner width 2x)"""
    num_layers: int = 2
    """SwiGLU blocks of the prefix MLP"""
    channels: tuple[ChannelKind, ...] = ("awgn",)
    """channel kinds trained on (each must be one the JSCC adapter knows), one drawn per condition group"""
    snr_db_min: float = -6.0
    """lowest training SNR in dB (uniform in dB)"""
    snr_db_max: float = 20.0
    """highest training SNR in dB (snr_db_min = snr_db_max = 60: the noiseless ceiling)"""
    condition_groups: int = 8
    """G: condition groups per training batch (power normalised per group)"""
    power_weight: float = 1.0
    """weight of the raw-power penalty (protocols.jscc_model)"""
    train_negatives: int = 1024
    """training only: sampled softmax over the batch's ids plus this many uniform ids (0: full softmax)"""

    def __post_init__(self) -> None:
        if isinstance(self.lm, BaselineConfig):
            self.lm = self.lm.to_dict()
        if isinstance(self.jscc, JSCCConfig):
            self.jscc = self.jscc.to_dict()
        if not self.lm or not self.jscc:
            raise ValueError("LMJSCCConfig.lm and .jscc must hold the token LM's and the JSCC adapter's configs "
                             "(see protocols.lm_jscc_model.preset)")
        lm, jscc = self.lm_config, self.jscc_config
        if lm.vocab_size != jscc.vocab_size:
            raise ValueError(f"the token LM's vocab_size {lm.vocab_size} differs from the JSCC adapter's "
                             f"{jscc.vocab_size}")
        for name in ("prefix_length", "history_top", "hidden_size", "num_layers", "condition_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LMJSCCConfig.{name} must be a positive integer, got {value!r}")
        if self.history_top > lm.vocab_size:
            raise ValueError(f"LMJSCCConfig.history_top={self.history_top} exceeds the vocabulary ({lm.vocab_size})")
        if self.prefix_length + jscc.passage_length > lm.max_positions:
            raise ValueError(f"prefix_length + passage_length = {self.prefix_length + jscc.passage_length} exceeds "
                             f"the LM's max_positions {lm.max_positions}")
        check_training_fields(self)
        for kind in self.channels:
            if kind not in jscc.channels:
                raise ValueError(f"LMJSCCConfig.channels: the JSCC adapter was trained on {list(jscc.channels)}, "
                                 f"not {kind!r}")
        check_numbers(self)

    def to_dict(self) -> dict:
        """The config as a JSON-ready dict (channels as a list)."""
        out = super().to_dict()
        out["channels"] = list(self.channels)
        return out

    @property
    def lm_config(self) -> BaselineConfig:
        """The token LM's config."""
        return BaselineConfig.from_dict(self.lm)

    @property
    def jscc_config(self) -> JSCCConfig:
        """The JSCC adapter's config."""
        return JSCCConfig.from_dict(self.jscc)

    @property
    def passage_length(self) -> int:
        """L, the JSCC adapter's."""
        return self.jscc_config.passage_length

    @property
    def channel_uses(self) -> int:
        """n, the JSCC adapter's."""
        return self.jscc_config.channel_uses

    @property
    def vocab_size(self) -> int:
        """V, the token LM's (= the autoencoder's)."""
        return self.lm_config.vocab_size

    @property
    def erasure_p(self) -> float:
        """The erasure channel's p, the JSCC adapter's."""
        return self.jscc_config.erasure_p


PRESETS: dict[str, dict] = {
    # sized for two CPU cores around the tiny token baseline (d = 128, 4 layers, V = 8192)
    "tiny": dict(prefix_length=4, hidden_size=256, num_layers=2, train_negatives=1024),
}


def preset(name: str, lm: BaselineConfig | dict, jscc: JSCCConfig | dict, **overrides) -> LMJSCCConfig:
    """An LMJSCCConfig from a named preset around a token LM config and a JSCC adapter config."""
    if name not in PRESETS:
        raise ValueError(f"unknown lm-jscc preset {name!r}; choose one of {sorted(PRESETS)}")
    lm = lm.to_dict() if isinstance(lm, BaselineConfig) else dict(lm)
    jscc = jscc.to_dict() if isinstance(jscc, JSCCConfig) else dict(jscc)
    return LMJSCCConfig(lm=lm, jscc=jscc, **{**PRESETS[name], **overrides})


@dataclass
class LMJSCCOutput:
    """What ``LMJSCCModel.forward`` returns (0-dim tensors)."""

    loss: torch.Tensor
    """ce + power_weight * the raw-power penalty (training mode)"""
    ce: torch.Tensor
    """mean token cross-entropy (nats)"""
    accuracy: torch.Tensor
    """token accuracy of the argmax (over the sampled ids in training; ``decode`` takes all ids)"""
    power: torch.Tensor
    """mean power per symbol sent"""


class LMJSCCModel(nn.Module):
    """A JSCC adapter (sender and evidence) + a token LM listening to the channel (prior), fused per token."""

    def __init__(self, config: LMJSCCConfig, lm: TokenTransformer | None = None,
                 adapter: JSCCModel | None = None) -> None:
        """``lm`` / ``adapter``: the trained token LM and JSCC adapter to start from (copied; else random weights
        of ``config.lm`` / ``config.jscc``)."""
        super().__init__()
        self.config = c = config
        if lm is not None and lm.config.to_dict() != c.lm_config.to_dict():
            raise ValueError("the token LM's config differs from LMJSCCConfig.lm")
        if adapter is not None and adapter.config.to_dict() != c.jscc_config.to_dict():
            raise ValueError("the JSCC adapter's config differs from LMJSCCConfig.jscc")
        self.receiver_lm = copy.deepcopy(lm) if lm is not None else TokenTransformer(c.lm_config)
        self.adapter = copy.deepcopy(adapter) if adapter is not None else JSCCModel(c.jscc_config)
        d, cond = c.lm_config.hidden_size, 1 + len(CHANNEL_KINDS)
        self.prefix = MLP(2 * c.channel_uses + cond, c.hidden_size, c.num_layers, c.prefix_length * d, 1e-6)
        for m in self.prefix.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # weight of the channel evidence in the product of experts (a scalar: no weight decay)
        self.evidence_weight = nn.Parameter(torch.ones(()))

    def train(self, mode: bool = True) -> LMJSCCModel:
        """Training mode (the adapter keeps its autoencoder in eval mode)."""
        super().train(mode)
        self.adapter.train(mode)
        return self

    def num_parameters(self) -> int:
        """Trainable parameters (not the frozen CALM autoencoder)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _check_ids(self, ids: torch.Tensor) -> tuple[int, int]:
        if ids.dim() != 2 or ids.shape[1] != self.config.passage_length:
            raise ValueError(f"ids must have shape (B, L={self.config.passage_length}), got {tuple(ids.shape)}")
        return ids.shape

    # ---- sender ----

    def encode(self, ids: torch.Tensor, snr_db: torch.Tensor, kind: torch.Tensor, *,
               group: torch.Tensor | None = None) -> torch.Tensor:
        """Channel symbols of unit mean power: ids (B, L) -> x (B, n) (the JSCC adapter's encoder)."""
        self._check_ids(ids)
        return self.adapter.encode(self.adapter.latents(ids), snr_db, kind, group=group)

    # ---- receiver ----

    def _evidence_hidden(self, y, gain, snr_db, kind) -> torch.Tensor:
        """The CALM decoder's token states (B, L, d_ae) for the adapter's latent estimate of the received symbols."""
        ad = self.adapter
        return ad.autoencoder.decode_hidden(ad.decode(y, gain, snr_db, kind))

    def _evidence_logits(self, hidden: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """beta * CALM logits / temperature over all ids (``ids`` None) or over ``ids (C,)``: (B, L, V or C)."""
        ad = self.adapter
        weight = ad.autoencoder.embed.weight if ids is None else ad.autoencoder.embed.weight[ids]
        return F.linear(hidden, weight) * (self.evidence_weight / ad.log_temperature.exp())

    def prefix_vectors(self, y: torch.Tensor, gain: torch.Tensor, snr_db: torch.Tensor,
                       kind: torch.Tensor) -> torch.Tensor:
        """Received symbols -> the receiver LM's prefix: y, gain (B, n), snr_db, kind (B,) -> (B, P, d)."""
        c = self.config
        x = torch.cat([equalise(y, gain, snr_db), gain, condition_input(self.adapter.config, snr_db, kind)], dim=-1)
        return self.prefix(x).view(y.shape[0], c.prefix_length, c.lm_config.hidden_size)

    def evidence_history(self, evidence_hidden: torch.Tensor) -> torch.Tensor:
        """What the receiver LM reads at each position: (B, L, d_ae) evidence states -> (B, L, d), row i the
        evidence-softmax-weighted mean of the LM's input embeddings of the ``history_top`` most likely ids at i."""
        ad = self.adapter
        table = ad.autoencoder.embed.weight  # (V, d_ae)
        with torch.no_grad():
            top = F.linear(evidence_hidden, table).topk(self.config.history_top, dim=-1).indices  # (B, L, k)
        logits = (evidence_hidden[..., None, :] * table[top]).sum(-1) / ad.log_temperature.exp()  # (B, L, k)
        weights = torch.softmax(logits, dim=-1)
        return (weights[..., None] * self.receiver_lm.embed.weight[top]).sum(-2)  # (B, L, d)

    def hidden(self, prefix: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """prefix (B, P, d), history (B, L, d) -> the receiver LM's states predicting t_0..t_{L-1} (B, L, d): the
        state for t_i has read the prefix and the evidence of positions 0..i-1, never a decoded or a true token."""
        P = prefix.shape[1]
        x = torch.cat([prefix, history[:, :-1]], dim=1)  # (B, P + L - 1, d)
        return self.receiver_lm.backbone(x)[:, P - 1 :]

    def fused_logits(self, y: torch.Tensor, gain: torch.Tensor, snr_db: torch.Tensor, kind: torch.Tensor,
                     ids: torch.Tensor | None = None) -> torch.Tensor:
        """LM logits + beta * evidence logits (B, L, V), or over ``ids (C,)`` only (B, L, C)."""
        ev = self._evidence_hidden(y, gain, snr_db, kind)  # (B, L, d_ae)
        h = self.hidden(self.prefix_vectors(y, gain, snr_db, kind), self.evidence_history(ev))  # (B, L, d)
        weight = self.receiver_lm.lm_head.weight
        return F.linear(h, weight if ids is None else weight[ids]) + self._evidence_logits(ev, ids)

    @torch.no_grad()
    def decode(self, y: torch.Tensor, gain: torch.Tensor, snr_db: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """The argmax of the fused logits at every position, in one pass: y, gain (B, n), snr_db, kind (B,) -> ids (B, L)."""
        return self.fused_logits(y, gain, snr_db, kind).argmax(-1)

    # ---- training ----

    def forward(self, ids: torch.Tensor, *, generator: torch.Generator | None = None,
                snr_db: float | torch.Tensor | None = None, kind: str | torch.Tensor | None = None) -> LMJSCCOutput:
        """Token cross-entropy of sending ids (B, L) through the simulated channel (training and decoding read the
        same inputs: no teacher forcing); conditions drawn per group from ``generator`` unless given (both or
        neither), noise from ``generator``."""
        B, L = self._check_ids(ids)
        c = self.config
        snr_db, kind, group = resolve_conditions(c, B, ids.device, generator, snr_db, kind)
        ad = self.adapter
        x, group_power = ad._encode(ad.latents(ids), snr_db, kind, group)
        y, gain = simulate_channel(x, snr_db, kind, erasure_p=c.erasure_p, generator=generator)
        if self.training and c.train_negatives > 0:
            negatives = torch.randint(0, c.vocab_size, (c.train_negatives,), generator=generator, device=ids.device)
            candidates = torch.unique(torch.cat([ids.reshape(-1), negatives]))  # (C,) sorted
            targets = torch.searchsorted(candidates, ids)
            logits = self.fused_logits(y, gain, snr_db, kind, candidates)
        else:
            targets, logits = ids, self.fused_logits(y, gain, snr_db, kind)
        ce = F.cross_entropy(logits.reshape(B * L, -1).float(), targets.reshape(B * L))
        loss = ce
        if group_power is not None and c.power_weight > 0:
            loss = ce + c.power_weight * group_power.float().log().pow(2).mean()
        accuracy = (logits.detach().argmax(-1) == targets).float().mean()
        return LMJSCCOutput(loss=loss, ce=ce.detach(), accuracy=accuracy, power=x.detach().pow(2).mean())


register_model_type("lm-jscc", LMJSCCConfig, LMJSCCModel)
