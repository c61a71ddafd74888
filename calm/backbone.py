"""Llama-style transformer blocks shared by the energy transformer and the token baseline.

RMSNorm, SwiGLU MLP, rotary position embeddings (RoPE), causal self-attention with a preallocated
KV cache. No embeddings and no output layer: callers feed vectors (B, T, d) and read vectors (B, T, d).

Dim letters: B batch, T positions (tokens for the baseline, patches for CALM), d hidden size,
H heads, hd head size.

The device is chosen in one place, `default_device()`: CUDA when available, else CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from calm.checks import check_numbers

__all__ = ["BackboneConfig", "Backbone", "Branches", "KVCache", "RMSNorm", "SwiGLU", "default_device", "count_parameters"]


ROPE_MARGIN = 16
"""extra RoPE positions past max_positions, for rollout branches (BrierLM of K < 4 models)"""


def default_device() -> torch.device:
    """The one place the device is chosen: CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with requires_grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@dataclass
class BackboneConfig:
    """Size of a Llama-style decoder stack."""

    hidden_size: int = 768
    """d, the residual width"""
    num_layers: int = 12
    """number of transformer blocks"""
    num_heads: int = 12
    """attention heads; hidden_size must be divisible by it"""
    intermediate_size: int = 2048
    """SwiGLU inner width"""
    max_positions: int = 2048
    """longest sequence (tokens or patches) the RoPE tables and KV cache cover"""
    rope_theta: float = 10000.0
    """RoPE base"""
    norm_eps: float = 1e-6
    """RMSNorm epsilon"""

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"BackboneConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"BackboneConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError("BackboneConfig: head size hidden_size/num_heads must be even for RoPE")
        check_numbers(self)  # finite numbers, ints that are ints (last: the checks above name their field)


class RMSNorm(nn.Module):
    """x / rms(x) * weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused kernel instead of five small ones (generation at batch 1 is overhead-bound)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        dtype = x.dtype  # low precision: normalise in float32
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases (Shazeer 2020)."""

    def __init__(self, dim: int, hidden: int, *, out_dim: int | None = None) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, out_dim or dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def rope_tables(head_dim: int, max_positions: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (max_positions, head_dim/2) for rotary embeddings (Su et al. 2021)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of x (B, H, T, hd) by the angles cos/sin (T, hd/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVCache:
    """Preallocated keys and values for every layer: (B, H, max_len, hd) each, filled left to right."""

    def __init__(
        self, config: BackboneConfig, batch_size: int, max_len: int, *, device: torch.device, dtype: torch.dtype
    ) -> None:
        if max_len > config.max_positions:
            raise ValueError(f"KVCache max_len {max_len} exceeds config.max_positions {config.max_positions}")
        H = config.num_heads
        hd = config.hidden_size // H
        shape = (batch_size, H, max_len, hd)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.length = 0
        """number of positions already stored"""
        self.max_len = max_len

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (B',) in that order (beam search: each beam continues its parent's cache)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]


class Attention(nn.Module):
    """Causal multi-head self-attention with RoPE and an optional KV cache."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = d // config.num_heads
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.o = nn.Linear(d, d, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, d = x.shape
        H, hd = self.num_heads, self.head_dim
        q = self.q(x).view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k(x).view(B, T, H, hd).transpose(1, 2)
        v = self.v(x).view(B, T, H, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            start = cache.length
            end = start + T
            if end > cache.max_len:
                raise ValueError(f"KV cache full: {end} positions > max_len {cache.max_len}")
            cache.keys[layer][:, :, start:end] = k
            cache.values[layer][:, :, start:end] = v
            k_all = cache.keys[layer][:, :, :end]  # (B, H, end, hd)
            v_all = cache.values[layer][:, :, :end]
            if T == 1:
                out = F.scaled_dot_product_attention(q, k_all, v_all)
            else:
                # query i sits at absolute position start + i and sees keys 0..start+i
                mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
                out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        return self.o(out.transpose(1, 2).reshape(B, T, d))

    def forward_branches(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        branches: Branches,
        layer: int,
    ) -> torch.Tensor:
        """One step of Q independent continuations x (B, Q, d) on top of a shared prefix (see `Branches`)."""
        B, Q, d = x.shape
        H, hd = self.num_heads, self.head_dim
        q = self.q(x).view(B, Q, H, hd).transpose(1, 2)  # (B, H, Q, hd)
        k = self.k(x).view(B, Q, H, hd).transpose(1, 2)
        v = self.v(x).view(B, Q, H, hd).transpose(1, 2)
        # cos/sin are (Q, hd/2): every branch sits at its own absolute position
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        branches.keys[layer].append(k)
        branches.values[layer].append(v)
        Lp = branches.prefix.length
        k_all = torch.cat([branches.prefix.keys[layer][:, :, :Lp], *branches.keys[layer]], dim=2)
        v_all = torch.cat([branches.prefix.values[layer][:, :, :Lp], *branches.values[layer]], dim=2)
        return self.o(
            F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=branches.mask()).transpose(1, 2).reshape(B, Q, d)
        )


class Branches:
    """Q continuations ("branches") that each fork off a shared cached prefix at their own start.

    Branch q sees the prefix positions < starts[q] and its own earlier steps, nothing else. This scores
    many short rollouts (one per start position and sample) in one batched pass per step, which is how
    BrierLM draws its n-gram samples for every position of a teacher-forced sequence.
    """

    def __init__(self, prefix: KVCache, starts: torch.Tensor) -> None:
        self.prefix = prefix
        """the filled KV cache of the shared sequence"""
        self.starts = starts
        """(Q,) long: branch q forks after prefix position starts[q] - 1"""
        self.steps = 0
        """number of steps already appended"""
        n_layers = len(prefix.keys)
        self.keys: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        self.values: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]

    def mask(self) -> torch.Tensor:
        """(Q, Lp + steps * Q) bool: prefix keys before the start, then the branch's own steps."""
        Q = self.starts.numel()
        Lp = self.prefix.length
        device = self.starts.device
        prefix = torch.arange(Lp, device=device)[None, :] < self.starts[:, None]  # (Q, Lp)
        own = torch.eye(Q, dtype=torch.bool, device=device).repeat(1, self.steps + 1)  # (Q, (steps+1)*Q)
        return torch.cat([prefix, own], dim=1)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer)
        return x + self.mlp(self.mlp_norm(x))

    def forward_branches(self, x, cos, sin, branches: Branches, layer: int) -> torch.Tensor:
        x = x + self.attn.forward_branches(self.attn_norm(x), cos, sin, branches, layer)
        return x + self.mlp(self.mlp_norm(x))


class Backbone(nn.Module):
    """A stack of `num_layers` blocks and a final RMSNorm: (B, T, d) -> (B, T, d)."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        # a margin past max_positions: rollout branches may step a few positions beyond the last true one
        cos, sin = rope_tables(
            config.hidden_size // config.num_heads, config.max_positions + ROPE_MARGIN, config.rope_theta
        )
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(_init_weights)
        # GPT-2 style: scale the residual projections down with depth
        for name, p in self.named_parameters():
            if name.endswith("attn.o.weight") or name.endswith("mlp.down.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.num_layers))

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache on this module's device and dtype."""
        p = next(self.parameters())
        return KVCache(
            self.config, batch_size, max_len or self.config.max_positions, device=p.device, dtype=p.dtype
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). With a cache, x continues the cached positions and is appended."""
        B, T, d = x.shape
        start = 0 if cache is None else cache.length
        if start + T > self.config.max_positions:
            raise ValueError(f"sequence of {start + T} positions exceeds max_positions {self.config.max_positions}")
        cos = self.rope_cos[start : start + T]
        sin = self.rope_sin[start : start + T]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i)
        if cache is not None:
            cache.length += T
        return self.norm(x)

    def forward_branches(self, x: torch.Tensor, branches: Branches) -> torch.Tensor:
        """Advance Q branches by one step: x (B, Q, d) -> (B, Q, d).

        Step j of branch q sits at absolute position starts[q] + j.
        """
        positions = branches.starts + branches.steps  # (Q,)
        if int(positions.max()) >= self.rope_cos.shape[0]:
            raise ValueError(
                f"branch position {int(positions.max())} exceeds max_positions + {ROPE_MARGIN} = {self.rope_cos.shape[0]}"
            )
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (Q, hd/2)
        for i, layer in enumerate(self.layers):
            x = layer.forward_branches(x, cos, sin, branches, i)
        branches.steps += 1
        return self.norm(x)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
