"""CALM's energy transformer: next-vector prediction with an energy-score head (Shao et al. 2025, section 3).

A frozen autoencoder turns every chunk of K tokens into a latent vector. A Llama-style backbone reads the
sequence of chunks (patches) and, at patch t, a small generative head maps (hidden state h_t, uniform
noise) to one sample of the next latent vector z_t. There is no likelihood: the head is trained with the
energy score, a strictly proper scoring rule that needs only samples,

    loss = 2 E ||x - y||^alpha - E ||x - x'||^alpha,

x, x' independent head samples (N per position, the second term over the N(N-1) ordered pairs), y a sample
of the autoencoder posterior N(mu, sigma^2) of the true chunk (M per position). Decoding a sampled vector
with the autoencoder (argmax per token) gives the next K tokens.

    input of patch t: the previous patch's K tokens, embedded with the backbone's own table,
                      concat K*d -> Linear 2d -> SiLU -> Linear d -> LayerNorm (a learned start vector at t=0)
    head: noise U[-0.5, 0.5]^noise_dim -> Linear d -> LN; condition c = LN(Linear(h));
          blocks: x += down(SwiGLU([LN(x), c])); LN -> Linear d -> SiLU -> Linear l (zero-initialised)

Dim letters: B batch, L tokens, K tokens per patch, P = L/K patches, d hidden, l latent, V vocabulary,
N model samples, M posterior samples, S samples in general.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from calm.autoencoder import Autoencoder, AutoencoderConfig, manifold_distance
from calm.backbone import Backbone, BackboneConfig, Branches
from calm.checks import check_numbers
from calm.config import DictConfig
from calm.lm_task import WindowTask
from calm.sampling import batch_temperature_sample, exact_temperature_sample, split_temperature

__all__ = [
    "EnergyTransformerConfig",
    "EnergyTransformer",
    "CalmTask",
    "Continuation",
    "EnergyHead",
    "EnergyOutput",
    "energy_loss",
    "energy_terms",
    "ON_MANIFOLD_TOL",
    "PRESETS",
    "preset",
]

#: a head sample counts as on the autoencoder's manifold within this distance of the re-encoding of its own
#: decoded tokens (the audit's threshold: real latents of the tiny K = 4 model lie at a median 0.5, its head
#: samples at 2.9)
ON_MANIFOLD_TOL = 1.5


# ----------------------------------------------------------------------------------------------------------
# the loss


def energy_terms(x: torch.Tensor, y: torch.Tensor, *, alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two expectations of the energy loss, per position.

    Args:
        x: (..., N, l) model samples, N >= 2.
        y: (..., M, l) samples of the target distribution.
        alpha: exponent in (0, 2); 1 is the paper's choice (alpha = 2 is not strictly proper).

    Returns:
        (term_xy, term_xx), each (...,): mean_{n,m} ||x_n - y_m||^alpha and mean_{n != n'} ||x_n - x_n'||^alpha.
    """
    if not 0.0 < alpha < 2.0:
        raise ValueError(f"energy_loss: alpha must be in (0, 2), got {alpha}")
    *lead, N, dim = x.shape
    M = y.shape[-2]
    if N < 2:
        raise ValueError(f"energy_loss needs at least 2 model samples, got N={N}")
    if tuple(y.shape[:-2]) != tuple(lead) or y.shape[-1] != dim:
        raise ValueError(f"energy_loss: x {tuple(x.shape)} and y {tuple(y.shape)} do not match")
    xf = x.reshape(-1, N, dim)
    yf = y.reshape(-1, M, dim)
    # exact pairwise distances (the matmul shortcut loses precision for nearby points)
    d_xy = torch.cdist(xf, yf, compute_mode="donot_use_mm_for_euclid_dist")  # (*, N, M)
    d_xx = torch.cdist(xf, xf, compute_mode="donot_use_mm_for_euclid_dist")  # (*, N, N)
    off_diagonal = ~torch.eye(N, dtype=torch.bool, device=x.device)
    term_xy = d_xy.pow(alpha).mean(dim=(-2, -1))
    term_xx = d_xx[:, off_diagonal].pow(alpha).mean(dim=-1)  # the N(N-1) ordered pairs n != n'
    return term_xy.reshape(lead), term_xx.reshape(lead)


def energy_loss(x: torch.Tensor, y: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    """Energy loss of model samples x (..., N, l) against target samples y (..., M, l), per position (...,).

    2 mean_{n,m} ||x_n - y_m||^alpha - mean_{n != n'} ||x_n - x_n'||^alpha: the negative energy score
    (times 2), minimised in expectation when the model's distribution equals the target's.
    """
    term_xy, term_xx = energy_terms(x, y, alpha=alpha)
    return 2.0 * term_xy - term_xx


# ----------------------------------------------------------------------------------------------------------
# blocks


class HeadBlock(nn.Module):
    """x + down(silu(gate([LN x, c])) * up([LN x, c])): the ``swiglu`` head block."""

    def __init__(self, d: int, intermediate: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d, eps=eps)
        self.gate = nn.Linear(2 * d, intermediate)
        self.up = nn.Linear(2 * d, intermediate)
        self.down = nn.Linear(intermediate, d)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        u = torch.cat([self.norm(x), c], dim=-1)
        return x + self.down(F.silu(self.gate(u)) * self.up(u))


class MLPGLUHeadBlock(nn.Module):
    """The released CALM's head block (``mlp-glu``): [LN x, c] -> Linear d -> SiLU -> Linear d -> SiLU ->
    Linear 2d, split into (gate, up); x + down(silu(gate) * up). Three layers before the gate, width d."""

    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 2 * d))
        self.down = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gate, up = self.mlp(torch.cat([self.norm(x), c], dim=-1)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


HEAD_BLOCKS = ("swiglu", "mlp-glu")
"""the energy head's block structures: ours, and the released CALM's (``calm.official``)"""


class EnergyHead(nn.Module):
    """(h, uniform noise) -> one latent sample per noise vector."""

    def __init__(self, d: int, latent_dim: int, noise_dim: int, num_blocks: int, intermediate: int,
                 *, block: str = "swiglu", eps: float = 1e-5) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.noise_in = nn.Linear(noise_dim, d)
        self.noise_norm = nn.LayerNorm(d, eps=eps)
        self.cond_in = nn.Linear(d, d)
        self.cond_norm = nn.LayerNorm(d, eps=eps)
        if block == "mlp-glu":
            self.blocks = nn.ModuleList(MLPGLUHeadBlock(d, eps) for _ in range(num_blocks))
        else:
            self.blocks = nn.ModuleList(HeadBlock(d, intermediate, eps) for _ in range(num_blocks))
        self.out_norm = nn.LayerNorm(d, eps=eps)
        self.out_hidden = nn.Linear(d, d)
        self.out = nn.Linear(d, latent_dim)

    def forward(self, h: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """h (..., d), noise (..., S, noise_dim) -> samples (..., S, l)."""
        c = self.cond_norm(self.cond_in(h)).unsqueeze(-2)  # (..., 1, d)
        x = self.noise_norm(self.noise_in(noise))  # (..., S, d)
        c = c.expand_as(x)
        for block in self.blocks:
            x = block(x, c)
        return self.out(F.silu(self.out_hidden(self.out_norm(x))))

    def sample(self, h: torch.Tensor, num_samples: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """h (..., d) -> (..., S, l) with S = num_samples fresh noise vectors per position."""
        noise = torch.rand(
            *h.shape[:-1], num_samples, self.noise_dim, generator=generator, device=h.device, dtype=h.dtype
        )
        return self(h, noise - 0.5)


# ----------------------------------------------------------------------------------------------------------
# config


@dataclass
class EnergyTransformerConfig(DictConfig):
    """Hyperparameters of the energy transformer. K, latent size and vocabulary come from the autoencoder."""

    autoencoder: dict = field(default_factory=dict)
    """AutoencoderConfig.to_dict() of the frozen autoencoder inside (K, latent_dim, vocab_size)"""
    hidden_size: int = 768
    """d: backbone and head width"""
    num_layers: int = 12
    """backbone transformer blocks"""
    num_heads: int = 12
    """attention heads"""
    intermediate_size: int = 2048
    """backbone SwiGLU inner width"""
    max_patches: int = 512
    """longest sequence in patches (context = max_patches * K tokens)"""
    noise_dim: int = 64
    """size of the head's uniform noise vector"""
    head_blocks: int = 3
    """MLP blocks in the energy head (the paper uses num_layers / 4)"""
    head_intermediate_size: int = 768
    """inner width of the head's MLP blocks (the paper: d)"""
    num_samples: int = 8
    """N: head samples per position in training (>= 2)"""
    num_posterior: int = 100
    """M: posterior samples of the target vector per position in training"""
    alpha: float = 1.0
    """energy score exponent, in (0, 2)"""
    autoencoder_path: str = ""
    """checkpoint the frozen autoencoder was loaded from when training started (a record; the CALM
    checkpoint itself holds the autoencoder's weights)"""
    start_vector: bool = True
    """a learned start vector before the first patch, so that patch 0 is predicted too; False is the
    released CALM's layout (``calm.official``): patch t+1 is read off patch t's position and the first
    patch, which that model never learned to predict, is read off a zero input vector alone"""
    head_block: str = "swiglu"
    """the energy head's block structure, one of HEAD_BLOCKS (``mlp-glu``: the released CALM's; its width is
    hidden_size and head_intermediate_size is unused)"""
    layer_norm_eps: float = 1e-5
    """epsilon of the LayerNorms of the input compression and the head (the released CALM: 1e-6)"""
    rope_theta: float = 10000.0
    """RoPE base of the backbone"""
    rms_norm_eps: float = 1e-6
    """epsilon of the backbone's RMSNorms"""

    OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("start_vector", "head_block", "layer_norm_eps", "rope_theta",
                                                  "rms_norm_eps")

    def __post_init__(self) -> None:
        for name in (
            "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_patches", "noise_dim",
            "head_blocks", "head_intermediate_size", "num_posterior",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"EnergyTransformerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_samples < 2:
            raise ValueError(f"EnergyTransformerConfig.num_samples must be >= 2, got {self.num_samples}")
        if not 0.0 < self.alpha < 2.0:
            raise ValueError(f"EnergyTransformerConfig.alpha must be in (0, 2), got {self.alpha}")
        if self.head_block not in HEAD_BLOCKS:
            raise ValueError(f"EnergyTransformerConfig.head_block must be one of {HEAD_BLOCKS}, got {self.head_block!r}")
        for name in ("layer_norm_eps", "rope_theta", "rms_norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"EnergyTransformerConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if isinstance(self.autoencoder, AutoencoderConfig):
            self.autoencoder = self.autoencoder.to_dict()
        self.backbone_config()  # validates the backbone sizes
        check_numbers(self)  # finite numbers, ints that are ints (last: the checks above name their field)

    @property
    def K(self) -> int:
        """Tokens per patch (the autoencoder's K)."""
        return int(self.autoencoder["K"])

    @property
    def vocab_size(self) -> int:
        """The autoencoder's (and the tokenizer's) vocabulary size."""
        return int(self.autoencoder["vocab_size"])

    @property
    def ae_config(self) -> AutoencoderConfig:
        """The autoencoder's config."""
        return AutoencoderConfig.from_dict(self.autoencoder)

    def backbone_config(self) -> BackboneConfig:
        """The backbone's config (positions are patches, plus the start vector)."""
        return BackboneConfig(
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_positions=self.max_patches + int(self.start_vector),
            rope_theta=self.rope_theta,
            norm_eps=self.rms_norm_eps,
        )


# Backbone sizes of the paper (S, M, L, XL: head blocks = layers / 4, head width d) and a CPU size.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=352, head_blocks=1,
                 head_intermediate_size=128, max_patches=64),
    # the CPU-scale CALM on the tiny-k2 autoencoder: the same backbone over 128 patches of K = 2 (256 tokens)
    "tiny-k2": dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=352, head_blocks=1,
                    head_intermediate_size=128, max_patches=128),
    "S": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048, head_blocks=3,
              head_intermediate_size=768),
    "M": dict(hidden_size=1024, num_layers=16, num_heads=16, intermediate_size=2752, head_blocks=4,
              head_intermediate_size=1024),
    "L": dict(hidden_size=1536, num_layers=16, num_heads=24, intermediate_size=4096, head_blocks=4,
              head_intermediate_size=1536),
    "XL": dict(hidden_size=2560, num_layers=16, num_heads=32, intermediate_size=6880, head_blocks=4,
               head_intermediate_size=2560),
}  # fmt: skip


def preset(name: str, autoencoder: AutoencoderConfig | dict, **overrides) -> EnergyTransformerConfig:
    """An EnergyTransformerConfig from a named preset (tiny, S, M, L, XL) around an autoencoder config."""
    if name not in PRESETS:
        raise ValueError(f"unknown energy transformer preset {name!r}; choose one of {sorted(PRESETS)}")
    ae = autoencoder.to_dict() if isinstance(autoencoder, AutoencoderConfig) else dict(autoencoder)
    return EnergyTransformerConfig(autoencoder=ae, **{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------------------
# model


class Continuation(NamedTuple):
    """What ``EnergyTransformer.generate_chunks`` samples."""

    ids: torch.Tensor
    """(B, num_chunks * K) the new token ids"""
    latents: torch.Tensor | None
    """(B, num_chunks, l) the vectors decoded into them (latent shift included); None at temperature < 1"""


@dataclass
class EnergyOutput:
    """What `EnergyTransformer.forward` returns. Scalars are 0-dim tensors."""

    loss: torch.Tensor
    """mean energy loss over positions (the training objective)"""
    term_xy: torch.Tensor
    """mean ||x - y||^alpha (fit to the target)"""
    term_xx: torch.Tensor
    """mean ||x - x'||^alpha over pairs (diversity of the samples)"""
    mse: torch.Tensor
    """mean squared distance between the first head sample and the posterior mean (a diagnostic)"""


class EnergyTransformer(nn.Module):
    """Backbone over patches + energy head, with a frozen autoencoder inside."""

    brier_estimator = "samples"
    """CALM can only sample: Brier from sampled continuations (calm.brier)"""

    def __init__(self, config: EnergyTransformerConfig, autoencoder: Autoencoder | None = None) -> None:
        super().__init__()
        self.config = config
        ae_config = config.ae_config
        if autoencoder is not None and autoencoder.config.to_dict() != ae_config.to_dict():
            raise ValueError("EnergyTransformer: the autoencoder's config differs from config.autoencoder")
        self.autoencoder = autoencoder if autoencoder is not None else Autoencoder(ae_config)
        self.autoencoder.requires_grad_(False)
        self.autoencoder.eval()
        self.K = ae_config.K
        self.latent_dim = ae_config.latent_dim
        self.vocab_size = ae_config.vocab_size
        d = config.hidden_size
        self.embed = nn.Embedding(self.vocab_size, d)
        self.compress = nn.Sequential(
            nn.Linear(self.K * d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d), nn.LayerNorm(d, eps=config.layer_norm_eps)
        )
        # without a start vector (the released layout) the first patch is read off a zero input vector
        self.start = nn.Parameter(torch.zeros(d)) if config.start_vector else None
        self.backbone = Backbone(config.backbone_config())
        self.head = EnergyHead(d, self.latent_dim, config.noise_dim, config.head_blocks, config.head_intermediate_size,
                               block=config.head_block, eps=config.layer_norm_eps)
        for module in [self.embed, self.compress, self.head]:
            for m in module.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)
                    if getattr(m, "bias", None) is not None:
                        nn.init.zeros_(m.bias)
        if self.start is not None:
            nn.init.normal_(self.start, std=0.02)
        # zero-initialised output layer: the head starts by predicting the origin for every noise
        nn.init.zeros_(self.head.out.weight)
        nn.init.zeros_(self.head.out.bias)

    def num_parameters(self) -> int:
        """Parameters of the energy transformer without the frozen autoencoder (the paper's count)."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("autoencoder."))

    def train(self, mode: bool = True) -> EnergyTransformer:
        """Training mode for everything but the frozen autoencoder (its dropout stays off)."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    # ---- backbone ----

    def _check_ids(self, ids: torch.Tensor) -> tuple[int, int]:
        if ids.dim() != 2:
            raise ValueError(f"ids must have shape (B, L), got {tuple(ids.shape)}")
        B, L = ids.shape
        if L == 0 or L % self.K:
            raise ValueError(f"ids length L={L} must be a positive multiple of K={self.K}")
        if L // self.K > self.config.max_patches:
            raise ValueError(f"ids has {L // self.K} patches; max_patches is {self.config.max_patches}")
        return B, L

    def patch_inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """Input vector of each patch's K tokens: ids (B, L) -> (B, L/K, d)."""
        B, L = ids.shape
        P, d = L // self.K, self.config.hidden_size
        x = self.embed(ids).view(B, P, self.K * d)  # (B, P, K*d)
        return self.compress(x)  # (B, P, d)

    @property
    def start_offset(self) -> int:
        """Backbone position of patch 0's input: 1 after a start vector, 0 in the released layout."""
        return 0 if self.start is None else 1

    def _start_state(self, B: int) -> torch.Tensor:
        """Released layout: the hidden state that predicts patch 0, read off a zero input vector alone (B, 1, d)."""
        zero = self.compress[-1].bias.new_zeros(1, 1, self.config.hidden_size)
        return self.backbone(zero).expand(B, 1, -1)

    def _with_start(self, inputs: torch.Tensor) -> torch.Tensor:
        """The backbone's input sequence for patch inputs (B, T, d): the start vector first, when there is one."""
        if self.start is None:
            return inputs
        return torch.cat([self.start.expand(inputs.shape[0], 1, -1), inputs], dim=1)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced hidden states: h[:, t] predicts patch t. ids (B, L) -> (B, L/K, d)."""
        B, _ = self._check_ids(ids)
        inputs = self.patch_inputs(ids)  # (B, P, d)
        if self.start is not None:
            return self.backbone(self._with_start(inputs[:, :-1]))  # (B, P, d)
        first = self._start_state(B)
        if inputs.shape[1] == 1:
            return first
        return torch.cat([first, self.backbone(inputs[:, :-1])], dim=1)  # (B, P, d)

    # ---- training ----

    def forward(self, ids: torch.Tensor, *, generator: torch.Generator | None = None) -> EnergyOutput:
        """Energy loss of predicting every patch of ids (B, L) from the patches before it.

        Noise (head and posterior samples) comes from `generator` (torch's default when None).
        """
        c = self.config
        with torch.no_grad():
            mu, log_sigma = self.autoencoder.encode(ids)  # (B, P, l)
        h = self.hidden(ids)  # (B, P, d)
        x = self.head.sample(h, c.num_samples, generator=generator)  # (B, P, N, l)
        eps = torch.randn(
            (*mu.shape[:-1], c.num_posterior, mu.shape[-1]), generator=generator, device=mu.device, dtype=mu.dtype
        )
        y = mu.unsqueeze(-2) + log_sigma.exp().unsqueeze(-2) * eps  # (B, P, M, l)
        term_xy, term_xx = energy_terms(x.float(), y.float(), alpha=c.alpha)  # each (B, P)
        loss = (2.0 * term_xy - term_xx).mean()
        mse = (x[..., 0, :].detach() - mu).pow(2).sum(-1).mean()
        return EnergyOutput(loss=loss, term_xy=term_xy.mean().detach(), term_xx=term_xx.mean().detach(), mse=mse)

    # ---- sampling ----

    @torch.no_grad()
    def decode_chunks(self, z: torch.Tensor, *, max_logits: int = 1 << 25) -> torch.Tensor:
        """Latent vectors (..., l) -> their K tokens by argmax decoding, (..., K).

        Decoded in pieces of at most ``max_logits`` logits (128 MB in float32): at a 128k vocabulary one
        step of 256 sequences would otherwise hold B K V = 131M logits at once.
        """
        lead = z.shape[:-1]
        flat = z.reshape(1, -1, self.latent_dim)  # (1, n, l)
        piece = max(1, max_logits // (self.K * self.vocab_size))
        ids = [self.autoencoder.decode(flat[:, i : i + piece]).argmax(-1) for i in range(0, flat.shape[1], piece)]
        return torch.cat(ids, dim=1).view(*lead, self.K)

    @torch.no_grad()
    def sample_chunks(self, h: torch.Tensor, num_samples: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw chunks of K tokens: h (..., d) -> ids (..., S, K)."""
        return self.decode_chunks(self.head.sample(h, num_samples, generator=generator))

    @torch.no_grad()
    def next_chunk(
        self,
        h: torch.Tensor,
        *,
        temperature: float = 1.0,
        batch_n: int = 0,
        generator: torch.Generator | None = None,
        coins: torch.Generator | None = None,
        max_draws: int = 1_000_000,
    ) -> tuple[torch.Tensor, int]:
        """Sample the next chunk for every sequence: h (B, d) -> (ids (B, K), draws used).

        T = 1 draws once. T < 1 uses the exact rejection sampler (batch_n = 0; it needs about
        1 / sum_x P(x)^(1/T) draws, RuntimeError past max_draws) or the approximate batch sampler with
        batch_n draws (T must then be 1/n). `coins` is the CPU generator for the samplers.
        """
        B = h.shape[0]
        split_temperature(temperature)  # validates T
        if temperature == 1.0:
            return self.sample_chunks(h, 1, generator=generator)[:, 0], B
        coins = coins if coins is not None else torch.Generator().manual_seed(0)
        out = torch.empty(B, self.K, dtype=torch.long, device=h.device)
        draws = 0
        if batch_n > 0:
            chunks = self.sample_chunks(h, batch_n, generator=generator).tolist()  # (B, S, K)
            for b in range(B):
                pool = [tuple(c) for c in chunks[b]]
                r = batch_temperature_sample(lambda n, pool=pool: pool[:n], temperature, batch_n, generator=coins)
                out[b] = torch.tensor(r.value)
                draws += r.draws
            return out, draws
        for b in range(B):

            def draw(n: int, hb: torch.Tensor = h[b]) -> list[tuple[int, ...]]:
                return [tuple(c) for c in self.sample_chunks(hb, n, generator=generator).tolist()]

            # batched draws: one head pass yields many samples (exactness is kept, see calm.sampling)
            r = exact_temperature_sample(draw, temperature, generator=coins, block=8, attempts=32, max_draws=max_draws)
            out[b] = torch.tensor(r.value)
            draws += r.draws
        return out, draws

    @torch.no_grad()
    def generate_chunks(
        self,
        ids: torch.Tensor,
        num_chunks: int,
        *,
        temperature: float = 1.0,
        batch_n: int = 0,
        pad_id: int = 0,
        generator: torch.Generator | None = None,
        coins: torch.Generator | None = None,
        max_draws: int = 1_000_000,
        latent_shift: torch.Tensor | None = None,
    ) -> Continuation:
        """The sampling loop: continue prompts ids (B, T) by num_chunks chunks of K tokens, one backbone step each.

        The prompt is left-padded with pad_id to a multiple of K and run through the backbone once; then each
        step samples the next chunk from the last hidden state and feeds its K tokens back, with a KV cache.
        At T = 1 a step draws one head sample z (noise from ``generator``), adds ``latent_shift (l,)`` to it
        when given, and decodes it by argmax; the (shifted) latents come back with the tokens. At T < 1 a step
        is ``next_chunk``'s tempered sampler (``batch_n``, ``coins``, ``max_draws`` as there), which picks among
        decoded chunks: no latents, and no latent shift. ``generate``, the agents' latent dialogue and the
        steering experiment all sample through this loop, so the same noise gives the same chunks in each.

        Returns:
            ``Continuation(ids (B, num_chunks K), latents (B, num_chunks, l) or None at T < 1)``.
        """
        if ids.dim() != 2:
            raise ValueError(f"ids must have shape (B, T), got {tuple(ids.shape)}")
        if num_chunks < 1:
            raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
        split_temperature(temperature)  # validates T
        if latent_shift is not None and temperature != 1.0:
            raise ValueError("latent_shift needs temperature 1 (the tempered samplers pick among decoded chunks)")
        B, T = ids.shape
        pad = (-T) % self.K
        if pad:
            ids = F.pad(ids, (pad, 0), value=pad_id)
        P0 = ids.shape[1] // self.K
        if P0 + num_chunks > self.config.max_patches:
            raise ValueError(
                f"prompt + generation = {P0 + num_chunks} patches exceeds max_patches {self.config.max_patches}"
            )
        cache = self.backbone.new_cache(B, P0 + num_chunks)
        x = self._with_start(self.patch_inputs(ids))  # (B, P0 + start_offset, d)
        if x.shape[1] == 0:  # released layout, empty prompt: patch 0's state, the cache stays empty
            h = self._start_state(B)[:, 0]
        else:
            h = self.backbone(x, cache)[:, -1]  # (B, d)
        chunks, latents = [], []
        for step in range(num_chunks):
            if temperature == 1.0:
                z = self.head.sample(h, 1, generator=generator)[:, 0]  # (B, l)
                if latent_shift is not None:
                    z = z + latent_shift.to(z.dtype)
                chunk = self.decode_chunks(z)  # (B, K)
                latents.append(z)
            else:
                chunk, _ = self.next_chunk(
                    h, temperature=temperature, batch_n=batch_n, generator=generator, coins=coins, max_draws=max_draws
                )
            chunks.append(chunk)
            if step + 1 < num_chunks:
                h = self.backbone(self.patch_inputs(chunk).view(B, 1, -1), cache)[:, -1]
        return Continuation(torch.cat(chunks, dim=1), torch.stack(latents, dim=1) if latents else None)

    @torch.no_grad()
    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        batch_n: int = 0,
        pad_id: int = 0,
        generator: torch.Generator | None = None,
        coins: torch.Generator | None = None,
        max_draws: int = 1_000_000,
    ) -> torch.Tensor:
        """Continue prompts ids (B, T) by max_new_tokens tokens (``generate_chunks``, then cut to length).

        Returns:
            new token ids (B, max_new_tokens).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        out = self.generate_chunks(ids, math.ceil(max_new_tokens / self.K), temperature=temperature, batch_n=batch_n,
                                   pad_id=pad_id, generator=generator, coins=coins, max_draws=max_draws)
        return out.ids[:, :max_new_tokens]

    @torch.no_grad()
    def on_manifold(self, ids: torch.Tensor, *, num_samples: int = 2, tol: float = ON_MANIFOLD_TOL,
                    generator: torch.Generator | None = None) -> dict[str, float]:
        """Whether the head's samples land on the autoencoder's manifold (``calm.autoencoder.manifold_distance``).

        At every patch of ids (B, L), teacher-forced, ``num_samples`` head samples are drawn. Returns the
        fraction within ``tol`` of the re-encoding of their own decoded tokens (``on_manifold``), their median
        distance, and the median distance of posterior samples of the real chunks (the targets the head is
        trained on: the reference a good model's samples should match). The progress the energy loss hides: a blob around the context mean has a
        near-optimal energy and almost no sample on the manifold.
        """
        self._check_ids(ids)
        z = self.head.sample(self.hidden(ids), num_samples, generator=generator)  # (B, P, S, l)
        samples = manifold_distance(self.autoencoder, z)
        mu, log_sigma = self.autoencoder.encode(ids)  # the targets the head is trained on: posterior samples
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        data = manifold_distance(self.autoencoder, mu + log_sigma.exp() * eps)
        return {"on_manifold": float((samples <= tol).float().mean()), "sample_distance": float(samples.median()),
                "data_distance": float(data.median())}

    @torch.no_grad()
    def rollouts(
        self, ids: torch.Tensor, num_tokens: int, num_samples: int, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sampled continuations of every patch boundary of a teacher-forced sequence.

        For each patch t of ids (B, L), draws num_samples independent continuations of num_tokens tokens
        conditioned on the true tokens before patch t (rolling out further patches when num_tokens > K).

        Returns:
            (B, P, num_samples, num_tokens) token ids.
        """
        B, L = self._check_ids(ids)
        P, S, K = L // self.K, num_samples, self.K
        h = self.hidden(ids)  # (B, P, d)
        first = self.sample_chunks(h, S, generator=generator)  # (B, P, S, K)
        steps = math.ceil(num_tokens / K)
        if steps == 1:
            return first[..., :num_tokens]
        # later patches: branches forking at every patch, one per (t, s), on the cached true prefix
        cache = self.backbone.new_cache(B, P)
        inputs = self.patch_inputs(ids)  # (B, P, d)
        if self.start is not None or P > 1:
            self.backbone(self._with_start(inputs[:, :-1]), cache)
        # branch (t, s) sees the true patches < t and steps from position t + start_offset
        starts = torch.arange(self.start_offset, P + self.start_offset, device=ids.device).repeat_interleave(S)
        branches = Branches(cache, starts)
        pieces = [first]
        chunk = first.reshape(B, P * S, K)
        for _ in range(steps - 1):
            hb = self.backbone.forward_branches(self.patch_inputs(chunk.reshape(B, P * S * K)), branches)
            chunk = self.sample_chunks(hb, 1, generator=generator)[:, :, 0]  # (B, P*S, K)
            pieces.append(chunk.view(B, P, S, K))
        return torch.cat(pieces, dim=-1)[..., :num_tokens]


# ----------------------------------------------------------------------------------------------------------
# training task (used by calm.train: build, batch, loss, validation)


class CalmTask(WindowTask):
    """Train an EnergyTransformer on windows of max_patches * K tokens, around a trained autoencoder
    (validation sizes count K-token chunks)."""

    name = "calm"
    config_cls = EnergyTransformerConfig
    presets = PRESETS

    def __init__(self, config: EnergyTransformerConfig) -> None:
        super().__init__(config, tokens_per_example=config.max_patches * config.K, tokens_per_unit=config.K)

    @classmethod
    def make_config(cls, preset_name: str, *, vocab_size: int, overrides: dict, ae: str | None = None, **_) -> EnergyTransformerConfig:
        """The config for `python -m calm.train calm --ae DIR --preset NAME`: the preset around the
        autoencoder checkpoint DIR (its vocabulary must be the tokenizer's)."""
        from pathlib import Path

        from calm.checkpoint import autoencoder_config_for

        ae_config = autoencoder_config_for(ae, vocab_size, "calm")
        return preset(preset_name, ae_config, autoencoder_path=str(Path(ae).resolve()), **overrides)

    def build_model(self) -> EnergyTransformer:
        """A fresh model; the autoencoder's weights come from config.autoencoder_path (if set)."""
        from pathlib import Path

        from calm.checkpoint import read_safetensors
        from calm.integrity import check_tensors

        model = EnergyTransformer(self.config)
        if self.config.autoencoder_path and not next(model.parameters()).is_meta:
            path = Path(self.config.autoencoder_path) / "model.safetensors"
            weights = read_safetensors(path)
            check_tensors(path, weights)  # a NaN autoencoder would train a NaN model
            model.autoencoder.load_state_dict(weights, strict=True)
        return model

    def loss(self, model: nn.Module, batch: torch.Tensor, generator: torch.Generator | None):
        """(energy loss, metrics to log)."""
        out = model(batch, generator=generator)
        return out.loss, {"xy": out.term_xy, "xx": out.term_xx, "mse": out.mse}

    @torch.no_grad()
    def validate(self, model: EnergyTransformer, windows: torch.Tensor) -> dict[str, float]:
        """Held-out energy loss, Brier-1..4 / BrierLM and the head samples' on-manifold fraction (fixed seed)."""
        from calm.brier import evaluate_brier

        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        gen = torch.Generator(device=device).manual_seed(0)
        energy = sum(model(windows[i : i + 16], generator=gen).loss.item() * len(windows[i : i + 16])
                     for i in range(0, len(windows), 16)) / len(windows)  # fmt: skip
        scores = evaluate_brier(model, windows, num_samples=self.brier_samples, generator=gen)
        manifold = model.on_manifold(windows[:64], generator=gen)
        model.train(was_training)
        return {"val_energy": energy, **{f"val_{k}": v for k, v in scores.as_dict().items()},
                **{f"val_{k}": v for k, v in manifold.items()}}
