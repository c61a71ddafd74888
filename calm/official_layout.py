"""The released CALM layout, name by name and field by field: its config.json -> our configs, its tensor names
-> our state dict (``calm.official`` reads the files; the table of names is in its docstring).

Every mismatch is a ``CheckpointError`` naming the field or tensor: an unsupported variant (grouped-query
attention, RoPE scaling, attention or MLP biases, another activation or head), a tensor with no place, a
missing tensor, a shape the config does not imply, a tied or repeated copy that differs from its original.
"""

from __future__ import annotations

import re

import torch

from calm.autoencoder import AutoencoderConfig
from calm.checkpoint import CheckpointError, shapes_only
from calm.energy_transformer import EnergyTransformerConfig

__all__ = ["IGNORED", "autoencoder_config", "build_model", "calm_config", "map_names"]

# buffers a released state dict may carry that are not weights (recomputed from the config)
IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


# ----------------------------------------------------------------------------------------------------------
# configs


def _need(config: dict, key: str, kind: type, where: str):
    value = config.get(key)
    if value is None or isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise CheckpointError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
    return value


def _refuse_unsupported(config: dict, where: str) -> None:
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: hidden_act {config['hidden_act']!r} is not supported (silu only)")
    if config.get("mlp_bias"):
        raise CheckpointError(f"{where}: mlp_bias=true is not supported (the released models have none)")


def autoencoder_config(config: dict, tensors: dict[str, torch.Tensor], prefix: str, where: str) -> AutoencoderConfig:
    """Our AutoencoderConfig of a released autoencoder (its config.json, or the LM's tensors ``ae_model.*``)."""
    _refuse_unsupported(config, where)
    embed = tensors.get(prefix + "encoder.embed_tokens.weight")
    if embed is None or embed.dim() != 2:
        raise CheckpointError(f"{where}: tensor {prefix}encoder.embed_tokens.weight is missing")
    enc = {int(m.group(1)) for k in tensors if (m := re.match(re.escape(prefix) + r"encoder\.encoder_layers\.(\d+)\.", k))}
    dec = {int(m.group(1)) for k in tensors if (m := re.match(re.escape(prefix) + r"decoder\.decoder_layers\.(\d+)\.", k))}
    layers = config.get("num_encoder_layers", len(enc))
    if config.get("num_decoder_layers", len(dec)) != layers or len(enc) != layers or len(dec) != layers:
        raise CheckpointError(f"{where}: {len(enc)} encoder and {len(dec)} decoder layers in the weights (config: "
                              f"{config.get('num_encoder_layers')} / {config.get('num_decoder_layers')}); only equal, "
                              "even counts map onto our autoencoder")
    if layers < 2 or layers % 2:
        raise CheckpointError(f"{where}: {layers} layers per side; the released code splits them into two stages, "
                              "so the count must be even")
    squeeze = tensors.get(prefix + "encoder.squeeze_layer.weight")
    K = _need(config, "patch_size", int, where)
    if squeeze is not None and squeeze.dim() == 2 and squeeze.shape[1] != K * embed.shape[1]:
        raise CheckpointError(f"{where}: patch_size {K} but the autoencoder weights {prefix}encoder.squeeze_layer "
                              f"{tuple(squeeze.shape)} were trained with K={squeeze.shape[1] / embed.shape[1]:g}")
    gate = tensors.get(prefix + "encoder.encoder_layers.0.mlp.gate_proj.weight")
    latent = config.get("latent_size")
    if latent is None:
        latent = tensors[prefix + "encoder.hidden_to_latent.weight"].shape[0] // 2
    dropout = float(config.get("ae_dropout", 0.15))
    return AutoencoderConfig(
        K=K, latent_dim=int(latent), hidden_size=int(embed.shape[1]),
        intermediate_size=int(gate.shape[0]) if gate is not None else int(config.get("intermediate_size", 1)),
        num_layers=int(layers), vocab_size=int(embed.shape[0]), token_dropout=dropout, latent_dropout=dropout,
        kl_clip=float(config.get("kl_clamp", 0.5)), kl_weight=float(config.get("kl_weight", 1e-3)),
        # the tokenizer's [PAD], which the rest of the project pads with (the official token dropout writes 0)
        pad_id=pad if isinstance(pad := config.get("pad_token_id"), int) and 0 <= pad < embed.shape[0] else 0,
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)), init_std=float(config.get("initializer_range", 0.02)),
        embed_init_std=float(config.get("initializer_range", 0.02)), linear_bias=True)


def calm_config(config: dict, ae: AutoencoderConfig, where: str) -> EnergyTransformerConfig:
    """Our EnergyTransformerConfig of a released CALM config.json around its autoencoder's config ``ae``:
    the released variants (no start vector, the mlp-glu head of width d, LayerNorm eps 1e-6) and the backbone's
    RoPE base and RMSNorm epsilon; ``where`` names the checkpoint in errors."""
    _refuse_unsupported(config, where)
    if config.get("model_type", "energy") != "energy":
        raise CheckpointError(f"{where}: model_type {config['model_type']!r}; only the energy head is supported")
    if config.get("rope_scaling") is not None:
        raise CheckpointError(f"{where}: rope_scaling {config['rope_scaling']!r} is not supported")
    if config.get("attention_bias"):
        raise CheckpointError(f"{where}: attention_bias=true is not supported (the released models have none)")
    heads = _need(config, "num_attention_heads", int, where)
    if config.get("num_key_value_heads", heads) != heads:
        raise CheckpointError(f"{where}: num_key_value_heads {config['num_key_value_heads']} != num_attention_heads "
                              f"{heads}: grouped-query attention is not supported")
    if _need(config, "patch_size", int, where) != ae.K or config.get("latent_size", ae.latent_dim) != ae.latent_dim:
        raise CheckpointError(f"{where}: patch_size {config['patch_size']} / latent_size {config.get('latent_size')} "
                              f"differ from its autoencoder's K={ae.K} / l={ae.latent_dim}")
    if config.get("vocab_size", ae.vocab_size) != ae.vocab_size:
        raise CheckpointError(f"{where}: vocab_size {config['vocab_size']} but its autoencoder has {ae.vocab_size} ids")
    d = _need(config, "hidden_size", int, where)
    return EnergyTransformerConfig(
        autoencoder=ae.to_dict(), hidden_size=d, num_layers=_need(config, "num_hidden_layers", int, where),
        num_heads=heads, intermediate_size=_need(config, "intermediate_size", int, where),
        max_patches=int(config.get("max_position_embeddings", 2048)), noise_dim=_need(config, "noise_size", int, where),
        head_blocks=_need(config, "num_mlp_layers", int, where), head_intermediate_size=d,
        num_samples=int(config.get("num_samples", 8)), alpha=float(config.get("beta", 1.0)), start_vector=False,
        head_block="mlp-glu", layer_norm_eps=1e-6, rope_theta=float(config.get("rope_theta", 10000.0)),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)))


# ----------------------------------------------------------------------------------------------------------
# names


_AE_RULES = [
    (r"encoder\.embed_tokens\.weight", "embed.weight"),
    (r"encoder\.squeeze_layer\.(weight|bias)", r"squeeze.\1"),
    (r"encoder\.norm\.weight", "enc_norm.weight"),
    (r"encoder\.hidden_to_latent\.(weight|bias)", r"to_latent.\1"),
    (r"decoder\.latent_to_hidden\.(weight|bias)", r"from_latent.\1"),
    (r"decoder\.expand_layer\.(weight|bias)", r"expand.\1"),
    (r"decoder\.norm\.weight", "dec_norm.weight"),
]
_BLOCK_PARTS = {"layernorm.weight": "norm.weight", "mlp.gate_proj.weight": "gate.weight",
                "mlp.up_proj.weight": "up.weight", "mlp.down_proj.weight": "down.weight"}
_LM_RULES = [
    (r"transformer\.embed_tokens\.weight", "embed.weight"),
    (r"transformer\.norm\.weight", "backbone.norm.weight"),
    (r"transformer\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight", r"backbone.layers.\1.attn.\2.weight"),
    (r"transformer\.layers\.(\d+)\.input_layernorm\.weight", r"backbone.layers.\1.attn_norm.weight"),
    (r"transformer\.layers\.(\d+)\.post_attention_layernorm\.weight", r"backbone.layers.\1.mlp_norm.weight"),
    (r"transformer\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"backbone.layers.\1.mlp.\2.weight"),
    (r"embed_proj\.([023])\.(weight|bias)", r"compress.\1.\2"),
    (r"mlp_generator\.noise_embd\.(weight|bias)", r"head.noise_in.\1"),
    (r"mlp_generator\.norm_noise\.(weight|bias)", r"head.noise_norm.\1"),
    (r"mlp_generator\.hidden_embd\.(weight|bias)", r"head.cond_in.\1"),
    (r"mlp_generator\.norm_hidden\.(weight|bias)", r"head.cond_norm.\1"),
    (r"mlp_generator\.mlp_blocks\.(\d+)\.in_ln\.(weight|bias)", r"head.blocks.\1.norm.\2"),
    (r"mlp_generator\.mlp_blocks\.(\d+)\.linears\.([024])\.(weight|bias)", r"head.blocks.\1.mlp.\2.\3"),
    (r"mlp_generator\.mlp_blocks\.(\d+)\.down_proj\.(weight|bias)", r"head.blocks.\1.down.\2"),
    (r"mlp_generator\.final_layer\.in_ln\.(weight|bias)", r"head.out_norm.\1"),
    (r"mlp_generator\.final_layer\.linears\.0\.(weight|bias)", r"head.out_hidden.\1"),
    (r"mlp_generator\.final_layer\.linears\.2\.(weight|bias)", r"head.out.\1"),
]


def _ae_name(name: str, layers: int) -> str | None:
    for pattern, target in _AE_RULES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, target, name)
    m = re.fullmatch(r"(encoder|decoder)\.(?:encoder|decoder)_layers\.(\d+)\.(.+)", name)
    if m and m.group(3) in _BLOCK_PARTS:
        side, i, half = m.group(1), int(m.group(2)), layers // 2
        first, second = ("enc_token_blocks", "enc_chunk_blocks") if side == "encoder" else ("dec_chunk_blocks", "dec_token_blocks")
        stage, j = (first, i) if i < half else (second, i - half)
        return f"{stage}.{j}.{_BLOCK_PARTS[m.group(3)]}"
    return None


def map_names(tensors: dict[str, torch.Tensor], kind: str, layers: int, where: str) -> dict[str, torch.Tensor]:
    """Our state dict from released tensors; tied and repeated copies must equal their original."""
    out: dict[str, torch.Tensor] = {}
    unplaced: list[str] = []
    copies: list[tuple[str, str]] = []  # (released copy, released original)
    for name, tensor in tensors.items():
        if IGNORED.search(name):
            continue
        if kind == "calm" and name.startswith("generative_head."):
            copies.append((name, "mlp_generator." + name[len("generative_head."):]))
            continue
        ae_prefix = "ae_model." if kind == "calm" else ""
        if name.startswith(ae_prefix) and name[len(ae_prefix):] == "decoder.lm_head_weight":
            copies.append((name, ae_prefix + "encoder.embed_tokens.weight"))
            continue
        target = None
        if kind == "autoencoder" or name.startswith("ae_model."):
            local = _ae_name(name[len(ae_prefix):], layers)
            target = None if local is None else ("autoencoder." if kind == "calm" else "") + local
        else:
            for pattern, replacement in _LM_RULES:
                if re.fullmatch(pattern, name):
                    target = re.sub(pattern, replacement, name)
                    break
        if target is None:
            unplaced.append(name)
        else:
            out[target] = tensor.detach().to(torch.float32).contiguous()
    if unplaced:
        raise CheckpointError(f"{where}: tensor(s) with no place in our model: {unplaced[:5]}"
                              f"{' ...' if len(unplaced) > 5 else ''} ({len(unplaced)} in all)")
    for copy, original in copies:
        if original not in tensors:
            raise CheckpointError(f"{where}: {copy} is there but {original}, which it repeats, is missing")
        if tensors[copy].shape != tensors[original].shape or not torch.equal(tensors[copy], tensors[original]):
            raise CheckpointError(f"{where}: {copy} differs from {original}; the released code ties them")
    return out


def build_model(model_cls: type, config, mapped: dict[str, torch.Tensor], where: str):
    """``model_cls(config)`` in eval mode holding ``mapped``, which must be exactly its names and shapes."""
    with shapes_only():
        expected = {k: tuple(v.shape) for k, v in model_cls(config).state_dict().items()}
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise CheckpointError(f"{where}: missing tensor(s) for {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                              f"({len(missing)} in all)")
    extra = sorted(set(mapped) - set(expected))
    if extra:
        raise CheckpointError(f"{where}: tensor(s) {extra[:5]} do not fit a model of this config")
    for key, shape in expected.items():
        if tuple(mapped[key].shape) != shape:
            raise CheckpointError(f"{where}: tensor for {key} has shape {tuple(mapped[key].shape)} but config.json "
                                  f"implies {shape}")
    model = model_cls(config)
    model.load_state_dict(mapped, strict=True)
    return model.eval()
