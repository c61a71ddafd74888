"""JSCC: a learned channel adapter around a frozen CALM autoencoder (deep joint source-channel coding, for text).

    ids (B, L) -> frozen CALM encoder -> mu (B, N, l) -> flatten (B, D)
      -> encoder MLP on [mu, SNR, kind one-hot] -> n real symbols -> power normalisation (fixed statistics)
      -> simulated channel (awgn | rayleigh | erasure), differentiable, noise from a torch.Generator
      -> decoder MLP on [equalised y, gain, SNR, kind one-hot] -> D latents -> frozen CALM decoder
      -> logits (B, L, V);  loss = token cross-entropy

DeepJSCC (Bourtsoulatze, Burth Kurka, Gunduz 2019, arXiv:1809.01733) with the SNR given to both ends as in
SNR-adaptive JSCC (Xu et al. 2021, arXiv:2012.00533): one model serves every SNR in
[snr_db_min, snr_db_max] and every channel kind in ``channels``; one model per n (channel uses per message).
The SNR fed to the MLPs is clamped to the trained range (extrapolating an MLP's conditioning is guesswork);
the decoder's equaliser uses the true sigma.

Power. Every protocol sends mean power 1 per symbol, with the scale fixed by training statistics, never per
message (DESIGN.md section 3). A batch-norm-like rule: in training, a batch is split into G condition groups,
each with one (kind, SNR) draw, and each group's symbols are divided by the root of that group's mean power
(gradients flow through it, as through batch norm); a running mean of the batch's raw power is kept as a
buffer and used as-is at eval. Normalising per group rather than over the whole batch stops the encoder from
moving power from high-SNR messages to low-SNR ones, which would make the low SNRs look better than they are;
within a group the encoder may spend more power on some messages than on others (an average power
constraint). The cross-entropy cannot see a group's raw scale, so a penalty (log raw power of each group)^2
holds it at 1 for every condition; one running scalar then serves every SNR and kind (measured after the tiny
preset, n = 8, L = 32: raw power 0.994..1.002 over -6..20 dB). ``protocols.jscc`` recalibrates one scalar on training passages on top.

Channels: awgn, rayleigh (one gain per message, told to the receiver) and erasure (then AWGN, not told),
simulated by ``environments.torch_channels.simulate_channel``.

Importing this module registers the model type ``jscc`` with ``calm.checkpoint`` (``save_pretrained`` /
``load_pretrained``). Training: ``protocols.jscc_task`` (``JSCCTask``, registered with ``calm.tasks`` as
``jscc``; in process with ``train_jscc``), or ``python -m protocols.jscc_train --ae DIR --channel-uses 16 --out DIR``
(Ray Train, as ``python -m calm.train``).

Dim letters: B batch, L tokens per passage, K tokens per chunk, N = L/K chunks, l latent size, D = N*l
latent coordinates, n channel uses, d hidden width, V vocabulary, G condition groups, C sampled-softmax ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from calm.autoencoder import Autoencoder, AutoencoderConfig, SwiGLUBlock
from calm.checkpoint import register_model_type
from calm.checks import check_numbers
from calm.config import DictConfig
from environments.torch_channels import CHANNEL_KINDS, ChannelKind, simulate_channel

__all__ = [
    "CHANNEL_KINDS",
    "JSCCConfig",
    "JSCCModel",
    "JSCCOutput",
    "PRESETS",
    "check_autoencoder_config",
    "check_training_fields",
    "condition_input",
    "equalise",
    "normalise_power",
    "preset",
    "resolve_conditions",
    "sample_conditions",
]

# running power: exponential moving average per training step, like BatchNorm's momentum (starts at 1, where
# the power penalty holds the raw power)
POWER_MOMENTUM = 0.02
# the decoder's equaliser never sees a sigma below this (SNR 60 dB), so a noiseless channel stays finite
MIN_SIGMA = 1e-3


# ----------------------------------------------------------------------------------------------------------
# blocks


class MLP(nn.Module):
    """in -> Linear d -> SwiGLU blocks (inner width 2d) -> RMSNorm -> Linear out. Acts on the last dim."""

    def __init__(self, d_in: int, d: int, num_layers: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(SwiGLUBlock(d, 2 * d, eps) for _ in range(num_layers))
        self.norm = nn.RMSNorm(d, eps=eps)
        self.out = nn.Linear(d, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))


# ----------------------------------------------------------------------------------------------------------
# config


@dataclass
class JSCCConfig(DictConfig):
    """Hyperparameters of the JSCC adapter. K, latent_dim and vocab_size come from the autoencoder."""

    autoencoder: dict = field(default_factory=dict)
    """AutoencoderConfig.to_dict() of the frozen autoencoder inside"""
    autoencoder_path: str = ""
    """checkpoint the autoencoder's weights are loaded from when training starts (the jscc checkpoint holds them)"""
    passage_length: int = 32
    """L: tokens per message, a multiple of K"""
    channel_uses: int = 16
    """n: real channel symbols per message"""
    hidden_size: int = 256
    """d: width of the encoder and decoder MLPs (SwiGLU inner width 2d)"""
    num_layers: int = 2
    """SwiGLU blocks in each of the encoder and decoder"""
    channels: tuple[ChannelKind, ...] = ("awgn",)
    """channel kinds to train on (awgn, rayleigh, erasure), one drawn uniformly per condition group"""
    snr_db_min: float = -6.0
    """lowest training SNR in dB (SNR drawn uniformly in dB)"""
    snr_db_max: float = 20.0
    """highest training SNR in dB"""
    erasure_p: float = 0.1
    """erasure probability of the erasure kind (not an input: the adapter is trained for this p only)"""
    temperature: float = 10.0
    """initial temperature the loss divides the CALM decoder's logits by (then learned): the frozen decoder was
    trained to be sure (logits up to ~50), and a message that carries less than every token needs a softer
    distribution for a useful gradient; argmax decoding does not change"""
    finetune_decoder: bool = False
    """also train the CALM decoder's blocks (the tied embedding stays frozen, so the CALM encoder is unchanged)"""
    power_weight: float = 1.0
    """weight of the penalty mean_g (log raw power of group g)^2, which holds the encoder's raw power at 1 for
    every condition (the cross-entropy cannot see that scale), so one running power serves them all"""
    condition_groups: int = 8
    """G: a training batch is split into G groups with one (kind, SNR) draw each; power is normalised per group"""
    train_negatives: int = 0
    """training only: if > 0, a sampled softmax over the batch's ids plus this many uniform ids; 0 = full softmax"""
    K: int | None = None
    """tokens per chunk, copied from the autoencoder (checked against it)"""
    latent_dim: int | None = None
    """l, copied from the autoencoder (checked against it)"""
    vocab_size: int | None = None
    """V, copied from the autoencoder (checked against it)"""

    def __post_init__(self) -> None:
        if isinstance(self.autoencoder, AutoencoderConfig):
            self.autoencoder = self.autoencoder.to_dict()
        if not self.autoencoder:
            raise ValueError("JSCCConfig.autoencoder must hold the autoencoder's config (see protocols.jscc_model.preset)")
        ae = AutoencoderConfig.from_dict(self.autoencoder)
        for name in ("K", "latent_dim", "vocab_size"):
            value, want = getattr(self, name), getattr(ae, name)
            if value is None:
                setattr(self, name, want)
            elif value != want:
                raise ValueError(f"JSCCConfig.{name}={value} does not match the autoencoder's {name}={want}")
        for name in ("passage_length", "channel_uses", "hidden_size", "num_layers", "condition_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"JSCCConfig.{name} must be a positive integer, got {value!r}")
        if self.passage_length % self.K:
            raise ValueError(f"JSCCConfig.passage_length={self.passage_length} must be a multiple of K={self.K}")
        check_training_fields(self)
        if not (self.temperature > 0.0 and math.isfinite(self.temperature)):
            raise ValueError(f"JSCCConfig.temperature must be a finite number > 0, got {self.temperature!r}")
        if not 0.0 <= self.erasure_p < 1.0:
            raise ValueError(f"JSCCConfig.erasure_p must be in [0, 1), got {self.erasure_p}")
        check_numbers(self)  # finite numbers, ints that are ints (last: the checks above name their field)

    def to_dict(self) -> dict:
        """The config as a JSON-ready dict (channels as a list, so it equals its JSON round trip)."""
        out = super().to_dict()
        out["channels"] = list(self.channels)
        return out

    @property
    def ae_config(self) -> AutoencoderConfig:
        """The autoencoder's config."""
        return AutoencoderConfig.from_dict(self.autoencoder)

    @property
    def latent_size(self) -> int:
        """D = L/K * l: latent coordinates per message."""
        return self.passage_length // self.K * self.latent_dim


def check_training_fields(config) -> None:
    """The training fields every adapter told the channel shares (``JSCCConfig``, ``LMJSCCConfig``): ``channels``
    (made a tuple of distinct known kinds), the SNR range, ``power_weight`` and ``train_negatives``; a ValueError
    names the config class and the field."""
    name = type(config).__name__
    config.channels = tuple(config.channels) if not isinstance(config.channels, str) else (config.channels,)
    if not config.channels or len(set(config.channels)) != len(config.channels):
        raise ValueError(f"{name}.channels must name distinct channel kinds, got {config.channels!r}")
    for kind in config.channels:
        if kind not in CHANNEL_KINDS:
            raise ValueError(f"{name}.channels: unknown channel kind {kind!r}; choose from {CHANNEL_KINDS}")
    for field_name in ("snr_db_min", "snr_db_max"):
        if not math.isfinite(getattr(config, field_name)):
            raise ValueError(f"{name}.{field_name} must be finite, got {getattr(config, field_name)}")
    if config.snr_db_min > config.snr_db_max:
        raise ValueError(f"{name}.snr_db_min={config.snr_db_min} exceeds snr_db_max={config.snr_db_max}")
    if not (config.power_weight >= 0.0 and math.isfinite(config.power_weight)):
        raise ValueError(f"{name}.power_weight must be a finite number >= 0, got {config.power_weight!r}")
    negatives = config.train_negatives
    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
        raise ValueError(f"{name}.train_negatives must be an integer >= 0, got {negatives!r}")


# Sizes. tiny: sized for two CPU cores (see the TrainConfig defaults in protocols.jscc_task.JSCCTask);
# tiny-mixed: the same trained on all three channel kinds (the CLI has no --channels flag).
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=256, num_layers=2, train_negatives=1024),
    "tiny-mixed": dict(hidden_size=256, num_layers=2, train_negatives=1024, channels=CHANNEL_KINDS),
}


def preset(name: str, autoencoder: AutoencoderConfig | dict, **overrides) -> JSCCConfig:
    """A JSCCConfig from a named preset around an autoencoder config (its K, l, V are copied)."""
    if name not in PRESETS:
        raise ValueError(f"unknown jscc preset {name!r}; choose one of {sorted(PRESETS)}")
    ae = autoencoder.to_dict() if isinstance(autoencoder, AutoencoderConfig) else dict(autoencoder)
    return JSCCConfig(autoencoder=ae, **{**PRESETS[name], **overrides})


def check_autoencoder_config(config: JSCCConfig, ae: dict) -> None:
    """Raise ValueError naming the first field where an autoencoder config ``ae`` differs from the adapter's."""
    for name in ("K", "latent_dim", "vocab_size", *sorted(config.autoencoder)):
        if ae.get(name) != config.autoencoder.get(name):
            raise ValueError(f"autoencoder {name}={ae.get(name)!r} does not match the jscc adapter's "
                             f"{name}={config.autoencoder.get(name)!r}")
    extra = sorted(set(ae) - set(config.autoencoder))
    if extra:
        raise ValueError(f"autoencoder config has fields {extra} the jscc adapter's does not")


# ----------------------------------------------------------------------------------------------------------
# channel conditions and power: shared by every adapter that is told the channel (also protocols.lm_jscc_model)


def condition_input(config, snr_db: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """(B,) SNR in dB and (B,) kind index -> (B, 1 + kinds): the SNR scaled to [-1, 1] over the trained range
    ``[config.snr_db_min, config.snr_db_max]`` (clamped to it) and the kind one-hot."""
    mid = (config.snr_db_max + config.snr_db_min) / 2
    half = max((config.snr_db_max - config.snr_db_min) / 2, 1.0)
    snr = ((snr_db.clamp(config.snr_db_min, config.snr_db_max) - mid) / half)[:, None]  # (B, 1)
    onehot = F.one_hot(kind, len(CHANNEL_KINDS)).to(snr.dtype)  # (B, kinds)
    return torch.cat([snr, onehot], dim=-1)


def normalise_power(raw: torch.Tensor, group: torch.Tensor | None, running_power: torch.Tensor,
                    training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw symbols (B, n) -> (unit-power symbols (B, n), raw mean power per group (G,) or None at eval).

    Training: each condition group (``group`` (B,) int64; None: one group) is divided by the root of its mean
    power, and ``running_power`` (a buffer) moves towards the batch's raw power. Eval: every message is divided
    by the root of ``running_power``, so a message's symbols do not depend on its batch (module docstring).
    """
    B = raw.shape[0]
    per_message = raw.pow(2).mean(-1)  # (B,)
    if not training:
        return raw / running_power.sqrt(), None
    group = torch.zeros(B, dtype=torch.long, device=raw.device) if group is None else group
    G = int(group.max()) + 1
    counts = torch.bincount(group, minlength=G).to(raw.dtype)  # (G,)
    power = torch.zeros(G, dtype=raw.dtype, device=raw.device).index_add(0, group, per_message) / counts
    with torch.no_grad():
        running_power += POWER_MOMENTUM * (per_message.mean() - running_power)
    return raw / power[group].sqrt()[:, None], power


def equalise(y: torch.Tensor, gain: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """The linear MMSE estimate ``gain y / (gain^2 + sigma^2)`` per symbol: y, gain (B, n), snr_db (B,) -> (B, n);
    sigma never below ``MIN_SIGMA``."""
    sigma = torch.pow(10.0, -snr_db.to(y.dtype) / 20.0).clamp(min=MIN_SIGMA)[:, None]  # (B, 1)
    return gain * y / (gain.pow(2) + sigma.pow(2))


def sample_conditions(config, B: int, generator: torch.Generator | None, device: torch.device):
    """Training conditions: (snr_db (B,), kind (B,), group (B,)), one uniform draw per contiguous group
    (``config.condition_groups`` groups, kinds from ``config.channels``, SNR uniform in dB over the range)."""
    G = min(config.condition_groups, B)
    group = torch.arange(B, device=device) * G // B  # (B,)
    allowed = torch.tensor([CHANNEL_KINDS.index(k) for k in config.channels], device=device)
    kind = allowed[torch.randint(len(allowed), (G,), generator=generator, device=device)]  # (G,)
    lo, hi = config.snr_db_min, config.snr_db_max
    snr = lo + (hi - lo) * torch.rand(G, generator=generator, device=device)
    return snr[group], kind[group], group


def resolve_conditions(config, B: int, device: torch.device, generator: torch.Generator | None,
                       snr_db: float | torch.Tensor | None, kind: str | torch.Tensor | None):
    """A forward pass's conditions ``(snr_db (B,), kind (B,), group (B,) or None)``: drawn per group when both
    are None, else the given ones (``snr_db`` a float or (B,), ``kind`` a name or (B,) indices)."""
    if snr_db is None and kind is None:
        return sample_conditions(config, B, generator, device)
    if snr_db is None or kind is None:
        raise ValueError("give both snr_db and kind, or neither")
    if isinstance(kind, str):
        if kind not in CHANNEL_KINDS:
            raise ValueError(f"unknown channel kind {kind!r}; choose from {CHANNEL_KINDS}")
        kind = torch.full((B,), CHANNEL_KINDS.index(kind), dtype=torch.long, device=device)
    snr_db = torch.as_tensor(snr_db, dtype=torch.float32, device=device).expand(B)
    return snr_db, kind, None


# ----------------------------------------------------------------------------------------------------------
# model


@dataclass
class JSCCOutput:
    """What ``JSCCModel.forward`` returns. Scalars are 0-dim tensors."""

    loss: torch.Tensor
    """the training objective: ce + power_weight * the raw-power penalty (training mode only)"""
    ce: torch.Tensor
    """mean token cross-entropy (nats)"""
    accuracy: torch.Tensor
    """fraction of tokens whose argmax logit is the sent token"""
    power: torch.Tensor
    """mean power per symbol of the sent symbols (a diagnostic: 1 in training, about 1 at eval)"""


class JSCCModel(nn.Module):
    """Encoder MLP + simulated channel + decoder MLP around a frozen CALM ``Autoencoder``."""

    def __init__(self, config: JSCCConfig, autoencoder: Autoencoder | None = None) -> None:
        super().__init__()
        self.config = c = config
        if autoencoder is not None:
            check_autoencoder_config(c, autoencoder.config.to_dict())
        self.autoencoder = autoencoder if autoencoder is not None else Autoencoder(c.ae_config)
        self.autoencoder.requires_grad_(False)
        if c.finetune_decoder:
            ae = self.autoencoder
            for module in (ae.from_latent, ae.dec_chunk_blocks, ae.expand, ae.dec_token_blocks, ae.dec_norm):
                module.requires_grad_(True)
        self.autoencoder.eval()
        eps = c.ae_config.rms_norm_eps
        cond = 1 + len(CHANNEL_KINDS)  # SNR + kind one-hot
        self.encoder = MLP(c.latent_size + cond, c.hidden_size, c.num_layers, c.channel_uses, eps)
        # decoder input: equalised y (n), gain (n), condition
        self.decoder = MLP(2 * c.channel_uses + cond, c.hidden_size, c.num_layers, c.latent_size, eps)
        for module in (self.encoder, self.decoder):
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        # the encoder starts at raw power ~1 per symbol (its input is RMS-normalised), where the penalty holds it
        nn.init.normal_(self.encoder.out.weight, std=c.hidden_size**-0.5)
        # learned log temperature of the logits in the loss (a scalar: no weight decay)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(c.temperature)))
        # mean raw power per symbol, a running mean over training batches; divides every message at eval
        self.register_buffer("running_power", torch.ones(()))

    def num_parameters(self) -> int:
        """Parameters of the adapter, without the autoencoder."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("autoencoder."))

    def train(self, mode: bool = True) -> JSCCModel:
        """Training mode for the adapter; the autoencoder stays in eval mode."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    # ---- pieces ----

    def _check_ids(self, ids: torch.Tensor) -> tuple[int, int]:
        if ids.dim() != 2 or ids.shape[1] != self.config.passage_length:
            raise ValueError(f"ids must have shape (B, L={self.config.passage_length}), got {tuple(ids.shape)}")
        return ids.shape

    @torch.no_grad()
    def latents(self, ids: torch.Tensor) -> torch.Tensor:
        """The frozen CALM encoder's posterior means: ids (B, L) -> mu (B, N, l)."""
        self._check_ids(ids)
        return self.autoencoder.encode(ids)[0]

    def condition(self, snr_db: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """(B,) SNR in dB and (B,) kind index -> (B, 1 + kinds) (``condition_input``)."""
        return condition_input(self.config, snr_db, kind)

    def encode(self, mu: torch.Tensor, snr_db: torch.Tensor, kind: torch.Tensor, *,
               group: torch.Tensor | None = None) -> torch.Tensor:
        """Channel symbols of unit mean power: mu (B, N, l) -> x (B, n).

        In training mode each group (``group`` (B,) int64, all members sharing one condition; None: one group)
        is divided by the root of its mean power and the running power is updated; in eval mode every message
        is divided by the root of the running power, so a message's symbols do not depend on its batch.
        """
        return self._encode(mu, snr_db, kind, group)[0]

    def _encode(self, mu, snr_db, kind, group):
        """(x (B, n), raw mean power per group (G,) in training mode, else None)."""
        B = mu.shape[0]
        raw = self.encoder(torch.cat([mu.reshape(B, -1), self.condition(snr_db, kind)], dim=-1))  # (B, n)
        return normalise_power(raw, group, self.running_power, self.training)

    def decode(self, y: torch.Tensor, gain: torch.Tensor, snr_db: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """Received symbols -> latent estimates: y (B, n), gain (B, n), snr_db (B,), kind (B,) -> z (B, N, l).

        The input is the linear MMSE estimate gain * y / (gain^2 + sigma^2) per symbol, the gain and the condition.
        """
        B = y.shape[0]
        c = self.config
        z = self.decoder(torch.cat([equalise(y, gain, snr_db), gain, self.condition(snr_db, kind)], dim=-1))  # (B, D)
        return z.view(B, c.passage_length // c.K, c.latent_dim)

    def sample_conditions(self, B: int, generator: torch.Generator | None, device: torch.device):
        """Training conditions (``sample_conditions``)."""
        return sample_conditions(self.config, B, generator, device)

    # ---- training ----

    def forward(self, ids: torch.Tensor, *, generator: torch.Generator | None = None,
                snr_db: float | torch.Tensor | None = None, kind: str | torch.Tensor | None = None) -> JSCCOutput:
        """Token cross-entropy of sending ids (B, L) through the simulated channel.

        Conditions (SNR, kind) are drawn per group from ``generator`` unless given (``snr_db`` a float or (B,),
        ``kind`` a name or (B,) indices; both or neither). Channel noise also comes from ``generator``.
        """
        B, L = self._check_ids(ids)
        c = self.config
        device = ids.device
        snr_db, kind, group = resolve_conditions(c, B, device, generator, snr_db, kind)
        mu = self.latents(ids)  # (B, N, l)
        x, group_power = self._encode(mu, snr_db, kind, group)  # (B, n)
        y, gain = simulate_channel(x, snr_db, kind, erasure_p=c.erasure_p, generator=generator)
        z = self.decode(y, gain, snr_db, kind)  # (B, N, l)
        if self.training and c.train_negatives > 0:
            # sampled softmax, as the autoencoder's: the batch's own ids plus uniform negatives
            negatives = torch.randint(0, c.vocab_size, (c.train_negatives,), generator=generator, device=device)
            candidates = torch.unique(torch.cat([ids.reshape(-1), negatives]))  # (C,) sorted
            targets = torch.searchsorted(candidates, ids)  # (B, L)
            logits = F.linear(self.autoencoder.decode_hidden(z), self.autoencoder.embed.weight[candidates])
        else:
            targets = ids
            logits = self.autoencoder.decode(z)  # (B, L, V)
        ce = F.cross_entropy((logits / self.log_temperature.exp()).reshape(B * L, -1).float(), targets.reshape(B * L))
        loss = ce
        if group_power is not None and c.power_weight > 0:
            loss = ce + c.power_weight * group_power.float().log().pow(2).mean()
        accuracy = (logits.detach().argmax(-1) == targets).float().mean()
        return JSCCOutput(loss=loss, ce=ce.detach(), accuracy=accuracy, power=x.detach().pow(2).mean())


# save_pretrained / load_pretrained know this model as "jscc" once this module is imported
register_model_type("jscc", JSCCConfig, JSCCModel)
