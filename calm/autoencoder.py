"""The CALM autoencoder: K tokens <-> one continuous vector (Shao et al. 2025, arXiv:2510.27688, section 2).

A variational autoencoder over chunks of K tokens. No attention and no positions: every chunk is encoded
and decoded on its own, so a passage of L tokens is L/K independent chunks.

    encoder: ids (K) -> tied embedding -> per-token SwiGLU blocks -> flatten K*d -> Linear d
             -> SwiGLU blocks -> RMSNorm -> Linear 2l = (mu, log_sigma)
    decoder: z (l) -> Linear d -> SwiGLU blocks -> Linear K*d -> per-token SwiGLU blocks -> RMSNorm
             -> logits against the (tied) embedding table

Training makes the latent space robust, which is what lets a generator (or a noisy channel) be slightly
off and still decode to the right tokens: token dropout on the input, z = mu + sigma * eps, dropout on z,
and a per-dimension KL term floored at ``kl_clip`` nats ("free bits"), which keeps dimensions from
collapsing to the prior. loss = CE * K + kl_weight * KL.

Dim letters used in this module:
    B  batch size (passages, or chunks when L == K)
    L  tokens per passage, a multiple of K
    N  chunks per passage, L / K
    K  tokens per chunk
    d  hidden size, l latent size, V vocabulary size
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from calm.checks import check_numbers
from calm.config import DictConfig

__all__ = [
    "AutoencoderConfig",
    "AutoencoderOutput",
    "Autoencoder",
    "PRESETS",
    "preset",
    "kl_per_dimension",
    "clipped_kl",
    "AutoencoderTask",
    "manifold_distance",
]


# ----------------------------------------------------------------------------------------------------------
# blocks


class SwiGLUBlock(nn.Module):
    """Pre-norm residual SwiGLU MLP: x + down(silu(gate(norm x)) * up(norm x)). Acts on the last dim."""

    def __init__(self, d: int, intermediate: int, eps: float):
        super().__init__()
        self.norm = nn.RMSNorm(d, eps=eps)
        self.gate = nn.Linear(d, intermediate, bias=False)
        self.up = nn.Linear(d, intermediate, bias=False)
        self.down = nn.Linear(intermediate, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


# ----------------------------------------------------------------------------------------------------------
# config


@dataclass
class AutoencoderConfig(DictConfig):
    """Hyperparameters of the autoencoder. Defaults are the paper's K=4 model (with its 128k vocabulary)."""

    OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("linear_bias",)

    K: int = 4
    """tokens per chunk (one latent vector per K tokens)"""
    latent_dim: int = 128
    """l: size of the latent vector (the paper found l = 32 * K best)"""
    hidden_size: int = 512
    """d: width of the token and chunk representations"""
    intermediate_size: int = 1280
    """hidden width of every SwiGLU block"""
    num_layers: int = 2
    """SwiGLU blocks in each of encoder and decoder, split evenly between the per-token and per-chunk stage"""
    vocab_size: int = 128256
    """V: rows of the tied embedding table; must equal the tokenizer's vocabulary size"""
    token_dropout: float = 0.15
    """training only: probability that an input token is replaced by pad_id"""
    latent_dropout: float = 0.15
    """training only: dropout probability on the sampled latent z (survivors scaled by 1/(1-p))"""
    train_negatives: int = 0
    """training only: if > 0, a sampled softmax over the batch's own tokens plus this many uniform random
    ids replaces the full-vocabulary softmax (several times cheaper on CPU); 0 = full softmax"""
    kl_clip: float = 0.5
    """floor, in nats, of each dimension's batch-mean KL (free bits); 0 disables the floor"""
    kl_weight: float = 1e-3
    """weight of the summed (clipped) KL in the loss"""
    pad_id: int = 0
    """the id token dropout writes (PAD_ID of the bpe tokenizers)"""
    rms_norm_eps: float = 1e-6
    """epsilon of every RMSNorm"""
    init_std: float = 0.02
    """standard deviation of the normal initialisation of linear weights"""
    embed_init_std: float = 0.02
    """standard deviation of the normal initialisation of the (tied) embedding"""
    linear_bias: bool = False
    """biases on the four reshaping layers (squeeze, to-latent, from-latent, expand), as in the released
    CALM autoencoder (``calm.official``); the SwiGLU blocks never have biases"""

    def __post_init__(self) -> None:
        for name in ("K", "latent_dim", "hidden_size", "intermediate_size", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AutoencoderConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_layers, int) or self.num_layers < 2 or self.num_layers % 2:
            raise ValueError(f"AutoencoderConfig.num_layers must be an even integer >= 2, got {self.num_layers!r}")
        for name in ("token_dropout", "latent_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"AutoencoderConfig.{name} must be in [0, 1), got {value!r}")
        if not (self.kl_clip >= 0.0 and math.isfinite(self.kl_clip)):
            raise ValueError(f"AutoencoderConfig.kl_clip must be a finite number >= 0, got {self.kl_clip!r}")
        if not (self.kl_weight >= 0.0 and math.isfinite(self.kl_weight)):
            raise ValueError(f"AutoencoderConfig.kl_weight must be a finite number >= 0, got {self.kl_weight!r}")
        if not isinstance(self.train_negatives, int) or self.train_negatives < 0:
            raise ValueError(f"AutoencoderConfig.train_negatives must be an integer >= 0, got {self.train_negatives!r}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"AutoencoderConfig.pad_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_id}")
        check_numbers(self)  # finite numbers, ints that are ints (last: the checks above name their field)


# Named sizes. `paper` is the paper's K=4 model. `tiny` is sized for 15 minutes on two CPU cores with the
# bpe:8192 tokenizer (figures and the search that chose it in docs/autoencoder.md): l = 32 K as in the
# paper; a unit-scale embedding (rows start nearly orthogonal, so the identity map reaches rare tokens
# early); no token dropout (it makes the encoder guess dropped tokens, which short training cannot
# afford; sigma robustness comes from sampling z, latent dropout and the KL floor); and a sampled softmax
# over 1024 negatives plus the batch's ids, about 2.4x cheaper per step on CPU than the full 8192.
# tiny-k2: the same at K = 2 with l = 16, the CPU-scale CALM's autoencoder (issue 12's audit: an energy
# transformer learns far faster per FLOP at K = 2 than at K = 4 at this scale).
PRESETS: dict[str, dict] = {
    "tiny": dict(K=4, latent_dim=128, hidden_size=128, intermediate_size=256, num_layers=2, token_dropout=0.0,
                 embed_init_std=1.0, train_negatives=1024),
    "tiny-k2": dict(K=2, latent_dim=16, hidden_size=128, intermediate_size=256, num_layers=2, token_dropout=0.0,
                    embed_init_std=1.0, train_negatives=1024),
    "paper": dict(K=4, latent_dim=128, hidden_size=512, intermediate_size=1280, num_layers=2),
}


def preset(name: str, **overrides) -> AutoencoderConfig:
    """An ``AutoencoderConfig`` from a named preset (``tiny`` or ``paper``) with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown autoencoder preset {name!r}; choose one of {sorted(PRESETS)}")
    return AutoencoderConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------------------
# KL arithmetic


def kl_per_dimension(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per latent dimension, averaged over all chunks.

    Args:
        mu, log_sigma: (..., l).

    Returns:
        (l,) nats: mean over the leading dims of 0.5 * (mu^2 + sigma^2 - 1 - 2 log sigma).
    """
    kl = 0.5 * (mu.pow(2) + torch.exp(2.0 * log_sigma) - 1.0 - 2.0 * log_sigma)  # (..., l)
    return kl.reshape(-1, kl.shape[-1]).mean(0)  # (l,)


def clipped_kl(kl_dims: torch.Tensor, kl_clip: float) -> torch.Tensor:
    """The KL objective with free bits: sum_i max(kl_clip, KL_i) (CALM eq. for L_KL^clip).

    A dimension whose KL is below the floor contributes the constant ``kl_clip`` and gets no gradient,
    so the KL term cannot push it all the way to the prior (collapse).
    """
    return torch.clamp(kl_dims, min=kl_clip).sum()


# ----------------------------------------------------------------------------------------------------------
# model


@dataclass
class AutoencoderOutput:
    """What ``Autoencoder.forward`` returns. Scalars are 0-dim tensors."""

    loss: torch.Tensor
    """CE * K + kl_weight * clipped KL: the training objective"""
    ce: torch.Tensor
    """mean cross-entropy per token (nats)"""
    kl: torch.Tensor
    """clipped KL summed over dimensions (what the loss uses)"""
    kl_per_dim: torch.Tensor
    """(l,) unclipped batch-mean KL per dimension"""
    accuracy: torch.Tensor
    """fraction of tokens whose argmax logit is the input token"""
    logits: torch.Tensor
    """(B, L, V); with a sampled softmax (training, train_negatives > 0) (B, L, C) over ``candidates``"""
    mu: torch.Tensor
    """(B, N, l)"""
    log_sigma: torch.Tensor
    """(B, N, l)"""
    candidates: torch.Tensor | None = None
    """(C,) sorted vocabulary ids the sampled softmax ran over, or None for the full softmax"""


class Autoencoder(nn.Module):
    """CALM's variational autoencoder. ``encode``/``decode`` are deterministic; ``forward`` adds the
    training noise (token dropout, sampling, latent dropout) when the module is in training mode."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = c = config
        half = c.num_layers // 2
        self.embed = nn.Embedding(c.vocab_size, c.hidden_size)  # tied with the output logits
        # encoder
        self.enc_token_blocks = nn.ModuleList(
            SwiGLUBlock(c.hidden_size, c.intermediate_size, c.rms_norm_eps) for _ in range(half)
        )
        self.squeeze = nn.Linear(c.K * c.hidden_size, c.hidden_size, bias=c.linear_bias)
        self.enc_chunk_blocks = nn.ModuleList(
            SwiGLUBlock(c.hidden_size, c.intermediate_size, c.rms_norm_eps) for _ in range(half)
        )
        self.enc_norm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.to_latent = nn.Linear(c.hidden_size, 2 * c.latent_dim, bias=c.linear_bias)
        # decoder
        self.from_latent = nn.Linear(c.latent_dim, c.hidden_size, bias=c.linear_bias)
        self.dec_chunk_blocks = nn.ModuleList(
            SwiGLUBlock(c.hidden_size, c.intermediate_size, c.rms_norm_eps) for _ in range(half)
        )
        self.expand = nn.Linear(c.hidden_size, c.K * c.hidden_size, bias=c.linear_bias)
        self.dec_token_blocks = nn.ModuleList(
            SwiGLUBlock(c.hidden_size, c.intermediate_size, c.rms_norm_eps) for _ in range(half)
        )
        self.dec_norm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.embed_init_std)

    def num_parameters(self) -> int:
        """Number of parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    # ---- encoder ----

    def _check_ids(self, ids: torch.Tensor) -> tuple[int, int]:
        if ids.dim() != 2:
            raise ValueError(f"ids must have shape (B, L), got {tuple(ids.shape)}")
        B, L = ids.shape
        if L == 0 or L % self.config.K:
            raise ValueError(f"ids length L={L} must be a positive multiple of K={self.config.K}")
        return B, L

    def _encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L = ids.shape
        K, d = self.config.K, self.config.hidden_size
        N = L // K
        x = self.embed(ids).view(B, N, K, d)  # (B, N, K, d)
        for block in self.enc_token_blocks:
            x = block(x)  # per token
        x = self.squeeze(x.reshape(B, N, K * d))  # (B, N, d)
        for block in self.enc_chunk_blocks:
            x = block(x)
        h = self.to_latent(self.enc_norm(x))  # (B, N, 2l)
        mu, log_sigma = h.chunk(2, dim=-1)  # each (B, N, l)
        return mu, log_sigma

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters of every chunk.

        Args:
            ids: (B, L) token ids, L a multiple of K.

        Returns:
            (mu, log_sigma), each (B, L/K, l).
        """
        self._check_ids(ids)
        return self._encode(ids)

    # ---- decoder ----

    def decode_hidden(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder up to the tied output layer: z (B, N, l) -> normalised states (B, N*K, d)."""
        if z.dim() != 3 or z.shape[-1] != self.config.latent_dim:
            raise ValueError(f"z must have shape (B, N, l={self.config.latent_dim}), got {tuple(z.shape)}")
        B, N, _ = z.shape
        K, d = self.config.K, self.config.hidden_size
        x = self.from_latent(z)  # (B, N, d)
        for block in self.dec_chunk_blocks:
            x = block(x)
        x = self.expand(x).view(B, N, K, d)  # (B, N, K, d)
        for block in self.dec_token_blocks:
            x = block(x)  # per token
        return self.dec_norm(x).view(B, N * K, d)  # (B, L, d)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Token logits of each latent vector's K tokens.

        Args:
            z: (B, N, l) latent vectors.

        Returns:
            logits (B, N*K, V).
        """
        return F.linear(self.decode_hidden(z), self.embed.weight)  # (B, L, V), tied output embedding

    @torch.no_grad()
    def reconstruct(self, ids: torch.Tensor) -> torch.Tensor:
        """Encode to mu and decode greedily: ids (B, L) -> ids (B, L)."""
        mu, _ = self.encode(ids)
        return self.decode(mu).argmax(-1)

    # ---- training objective ----

    def forward(self, ids: torch.Tensor, *, generator: torch.Generator | None = None) -> AutoencoderOutput:
        """Loss of reconstructing ``ids``.

        In training mode: token dropout, z = mu + sigma * eps, latent dropout (and the negatives of a sampled
        softmax), all drawn from ``generator`` (torch's default generator when None). In eval mode: z = mu,
        no dropout, full softmax.

        Args:
            ids: (B, L) token ids, L a multiple of K.
            generator: RNG for the training noise (on the ids' device).

        Returns:
            AutoencoderOutput with loss = CE * K + kl_weight * sum_i max(kl_clip, KL_i).
        """
        B, L = self._check_ids(ids)
        c = self.config
        inputs = ids
        if self.training and c.token_dropout > 0:
            drop = torch.rand(ids.shape, generator=generator, device=ids.device) < c.token_dropout
            inputs = torch.where(drop, torch.full_like(ids, c.pad_id), ids)
        mu, log_sigma = self._encode(inputs)  # (B, N, l)
        if self.training:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + torch.exp(log_sigma) * eps
            if c.latent_dropout > 0:
                keep = torch.rand(z.shape, generator=generator, device=z.device) >= c.latent_dropout
                z = z * keep / (1.0 - c.latent_dropout)
        else:
            z = mu
        candidates = None
        if self.training and c.train_negatives > 0:
            # sampled softmax: the batch's own ids plus uniform negatives; targets re-indexed into them
            negatives = torch.randint(0, c.vocab_size, (c.train_negatives,), generator=generator, device=ids.device)
            candidates = torch.unique(torch.cat([ids.reshape(-1), negatives]))  # (C,) sorted
            targets = torch.searchsorted(candidates, ids)  # (B, L)
            logits = F.linear(self.decode_hidden(z), self.embed.weight[candidates])  # (B, L, C)
        else:
            targets = ids
            logits = self.decode(z)  # (B, L, V)
        ce = F.cross_entropy(logits.reshape(B * L, -1).float(), targets.reshape(B * L))
        kl_dims = kl_per_dimension(mu.float(), log_sigma.float())  # (l,)
        kl = clipped_kl(kl_dims, c.kl_clip)
        loss = ce * c.K + c.kl_weight * kl
        accuracy = (logits.detach().argmax(-1) == targets).float().mean()
        return AutoencoderOutput(
            loss=loss,
            ce=ce,
            kl=kl,
            kl_per_dim=kl_dims,
            accuracy=accuracy,
            logits=logits,
            mu=mu,
            log_sigma=log_sigma,
            candidates=candidates,
        )


@torch.no_grad()
def manifold_distance(autoencoder, z: torch.Tensor, *, batch: int = 512) -> torch.Tensor:
    """How far latent vectors lie from the autoencoder's manifold: ``||z - mu(argmax decode(z))||``.

    A vector is decoded greedily to its K tokens and those are encoded again; a vector the autoencoder
    could have produced comes back to (nearly) itself, one between the codes of real chunks does not. Only
    ``encode(ids) -> (mu, log_sigma)`` and ``decode(z) -> logits`` are used. z (..., l) -> distances (...).
    """
    lead, dim = z.shape[:-1], z.shape[-1]
    flat = z.reshape(-1, dim)
    out = torch.empty(flat.shape[0], device=z.device, dtype=torch.float32)
    for i in range(0, flat.shape[0], batch):  # the logits of a piece are (piece K, V): keep them small
        piece = flat[i : i + batch].unsqueeze(0)  # (1, n, l)
        mu, _ = autoencoder.encode(autoencoder.decode(piece).argmax(-1))  # (1, n, l)
        out[i : i + batch] = (piece - mu).float().norm(dim=-1)[0]
    return out.reshape(lead)


# ----------------------------------------------------------------------------------------------------------
# training task (used by calm.train: build, batch, loss, validation)


class AutoencoderTask:
    """Train the CALM autoencoder on random K-token windows of a token stream."""

    name = "autoencoder"
    config_cls = AutoencoderConfig
    presets = PRESETS
    # TrainConfig defaults per preset. tiny: large lr and short warmup, sized for two CPU cores.
    # paper: the paper's AdamW settings (lr 3e-4, warmup 1000, wd 0.1, betas 0.9/0.95, clip 1.0).
    train_presets: dict[str, dict] = {
        "tiny": dict(steps=6000, batch_size=256, lr=3e-3, warmup=200, val_every=250, checkpoint_every=250),
        "tiny-k2": dict(steps=6000, batch_size=512, lr=3e-3, warmup=200, val_every=250, checkpoint_every=250),
        "paper": dict(steps=100_000, batch_size=512, lr=3e-4, warmup=1000),
    }

    def __init__(self, config: AutoencoderConfig):
        self.config = config

    @classmethod
    def make_config(cls, preset_name: str, *, vocab_size: int, pad_id: int, overrides: dict, **_) -> AutoencoderConfig:
        """The config for `python -m calm.train autoencoder --preset NAME` (the tokenizer's vocabulary and pad id)."""
        return preset(preset_name, vocab_size=vocab_size, pad_id=pad_id, **overrides)

    def build_model(self) -> nn.Module:
        """A freshly initialised model (seed torch before calling for a reproducible init)."""
        return Autoencoder(self.config)

    def sample_batch(self, ids: np.ndarray, rng: np.random.Generator, batch_size: int) -> torch.Tensor:
        """(B, K) int64: windows of K consecutive tokens starting at uniform positions of ``ids``."""
        K = self.config.K
        if len(ids) < K:
            raise ValueError(f"the token stream has {len(ids)} ids, fewer than K={K}")
        start = rng.integers(0, len(ids) - K + 1, size=batch_size)  # (B,)
        return torch.from_numpy(ids[start[:, None] + np.arange(K)].astype(np.int64))  # (B, K)

    def loss(self, model: nn.Module, batch: torch.Tensor, generator: torch.Generator | None):
        """(loss, metrics): the training objective and 0-dim tensors to log (``acc`` is token accuracy)."""
        out = model(batch, generator=generator)
        return out.loss, {"acc": out.accuracy.detach(), "ce": out.ce.detach(), "kl": out.kl.detach()}

    def validation_set(self, ids: np.ndarray, size: int) -> torch.Tensor:
        """(size, K): the first ``size`` non-overlapping, aligned chunks of the validation stream."""
        K = self.config.K
        n = min(size, len(ids) // K)
        return torch.from_numpy(ids[: n * K].reshape(n, K).astype(np.int64))

    @torch.no_grad()
    def validate(self, model: nn.Module, chunks: torch.Tensor, batch_size: int = 2048) -> dict[str, float]:
        """Held-out metrics of the deterministic (eval-mode) model: token and chunk accuracy, loss."""
        was_training = model.training
        model.eval()
        correct = exact = loss = 0.0
        for i in range(0, len(chunks), batch_size):
            batch = chunks[i : i + batch_size]
            out = model(batch)
            hit = out.logits.argmax(-1) == batch  # (b, K)
            correct += hit.float().sum().item()
            exact += hit.all(-1).float().sum().item()
            loss += out.ce.item() * len(batch)
        model.train(was_training)
        n = len(chunks)
        return {"val_acc": correct / (n * self.config.K), "val_chunk_acc": exact / n, "val_ce": loss / n}
