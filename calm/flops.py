"""Analytic FLOPs per token for CALM and the token baseline (the accounting of the paper's table 1).

Conventions (Kaplan et al. 2020, "Scaling laws", section 2.1):
- a matrix multiply with a (m x n) weight costs 2 m n FLOPs per row it is applied to;
- attention scores and the weighted sum cost 2 * 2 * context * d per layer per position, with the full
  context window (this is what reproduces the paper's 4.4e8 inference FLOPs/token of Transformer-S);
- norms, activations, softmax, embedding lookups and the loss are ignored (they are a few percent);
- training = forward + backward = 3 x forward for trained parts; frozen parts (the autoencoder encoder
  that produces CALM's targets) cost one forward.

CALM runs its backbone once per patch of K tokens, so backbone FLOPs per token fall by K; the energy
head runs once per sample (N = 8 samples per position in training, 1 per draw at inference), and the
autoencoder decoder turns each sampled vector back into K tokens (its K * d * V logits dominate with a
large vocabulary).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from calm.autoencoder import AutoencoderConfig
from calm.baseline import BaselineConfig
from calm.energy_transformer import EnergyTransformerConfig

__all__ = [
    "FlopsPerToken",
    "backbone_forward_flops",
    "baseline_flops",
    "calm_flops",
    "autoencoder_flops",
    "baseline_parameters",
    "calm_parameters",
]


@dataclass
class FlopsPerToken:
    """FLOPs per generated or trained token, split by part."""

    inference: float
    """one forward pass per token (CALM: one head sample per patch, no rejection draws)"""
    training: float
    """forward + backward (3x forward) of trained parts + forward of frozen ones"""
    parts: dict
    """forward FLOPs per token of each part (for tables)"""

    def as_dict(self) -> dict:
        """JSON-ready."""
        return asdict(self)


def backbone_forward_flops(
    hidden_size: int, num_layers: int, intermediate_size: int, context: int
) -> float:
    """Forward FLOPs of one position through the Llama blocks (no embedding, no output layer)."""
    d, ff = hidden_size, intermediate_size
    matmul = num_layers * (4 * d * d + 3 * d * ff)  # q, k, v, o and SwiGLU gate, up, down
    attention = num_layers * 2 * 2 * context * d  # scores and weighted sum over the context
    return 2.0 * matmul + attention


def baseline_flops(config: BaselineConfig, *, context: int | None = None) -> FlopsPerToken:
    """FLOPs per token of the token transformer (context defaults to max_positions)."""
    ctx = context or config.max_positions
    blocks = backbone_forward_flops(config.hidden_size, config.num_layers, config.intermediate_size, ctx)
    logits = 2.0 * config.hidden_size * config.vocab_size
    forward = blocks + logits
    return FlopsPerToken(inference=forward, training=3.0 * forward, parts={"backbone": blocks, "logits": logits})


def autoencoder_flops(config: AutoencoderConfig) -> dict[str, float]:
    """Forward FLOPs per chunk of the autoencoder's encoder and decoder (logits included in the decoder)."""
    K, d, ff, lat, V = config.K, config.hidden_size, config.intermediate_size, config.latent_dim, config.vocab_size
    half = config.num_layers // 2
    block = 2.0 * 3 * d * ff
    encoder = K * half * block + 2.0 * K * d * d + half * block + 2.0 * d * 2 * lat
    decoder = 2.0 * lat * d + half * block + 2.0 * d * K * d + K * half * block + K * 2.0 * d * V
    return {"encoder": encoder, "decoder": decoder}


def _head_flops(config: EnergyTransformerConfig, latent_dim: int) -> tuple[float, float]:
    """(per-position part, per-sample part) of the energy head's forward FLOPs."""
    d, ffh = config.hidden_size, config.head_intermediate_size
    per_position = 2.0 * d * d  # condition projection, shared by all samples of a position
    # a swiglu block: gate and up 2d -> ffh, down ffh -> d; an mlp-glu block (the released CALM's):
    # 2d -> d -> d -> 2d, down d -> d
    block = 2.0 * (2 * (2 * d) * ffh + ffh * d) if config.head_block == "swiglu" else 2.0 * 6 * d * d
    per_sample = 2.0 * config.noise_dim * d + config.head_blocks * block + 2.0 * (d * d + d * latent_dim)
    return per_position, per_sample


def calm_flops(config: EnergyTransformerConfig, *, context: int | None = None) -> FlopsPerToken:
    """FLOPs per token of CALM (context in tokens; defaults to max_patches * K)."""
    ae = config.ae_config
    K = ae.K
    ctx_patches = (context // K) if context else config.max_patches
    backbone = backbone_forward_flops(config.hidden_size, config.num_layers, config.intermediate_size, ctx_patches)
    d = config.hidden_size
    compress = 2.0 * (K * d * 2 * d + 2 * d * d)
    head_pos, head_sample = _head_flops(config, ae.latent_dim)
    ae_f = autoencoder_flops(ae)
    # inference: per patch one backbone step, one head sample, one decode
    inference = (backbone + compress + head_pos + head_sample + ae_f["decoder"]) / K
    trained = backbone + compress + head_pos + config.num_samples * head_sample
    training = (3.0 * trained + ae_f["encoder"]) / K
    parts = {
        "backbone": backbone / K,
        "compress": compress / K,
        "head_per_sample": (head_pos + head_sample) / K,
        "ae_decoder": ae_f["decoder"] / K,
        "ae_encoder": ae_f["encoder"] / K,
    }
    return FlopsPerToken(inference=inference, training=training, parts=parts)


def _blocks_parameters(d: int, layers: int, ff: int) -> int:
    return layers * (4 * d * d + 3 * d * ff + 2 * d) + d


def baseline_parameters(config: BaselineConfig) -> int:
    """Parameter count of TokenTransformer(config), computed from the config."""
    d, V = config.hidden_size, config.vocab_size
    embeddings = V * d if config.tie_embeddings else 2 * V * d
    return embeddings + _blocks_parameters(d, config.num_layers, config.intermediate_size)


def calm_parameters(config: EnergyTransformerConfig) -> int:
    """Parameter count of an EnergyTransformer(config) without its frozen autoencoder."""
    ae = config.ae_config
    d, K, lat, ffh = config.hidden_size, ae.K, ae.latent_dim, config.head_intermediate_size
    embed = ae.vocab_size * d
    compress = (K * d * 2 * d + 2 * d) + (2 * d * d + d) + 2 * d
    if config.head_block == "swiglu":
        block = 2 * d + 2 * (2 * d * ffh + ffh) + ffh * d + d
    else:  # mlp-glu: LN, 2d -> d, d -> d, d -> 2d, down d -> d, all with biases
        block = 2 * d + (2 * d * d + d) + (d * d + d) + (2 * d * d + 2 * d) + (d * d + d)
    head = (
        (config.noise_dim * d + d) + 2 * d  # noise in + LN
        + (d * d + d) + 2 * d  # condition + LN
        + config.head_blocks * block
        + 2 * d + (d * d + d) + (d * lat + lat)
    )  # fmt: skip
    start = d if config.start_vector else 0
    return embed + compress + start + head + _blocks_parameters(d, config.num_layers, config.intermediate_size)
