"""The released CALM checkpoints (Shao et al. 2025; github.com/shaochenze/calm) as our models.

``cccczshao/CALM-Autoencoder`` (75M, K = 4, l = 128) and ``CALM-M`` / ``CALM-L`` / ``CALM-XL`` are Hugging Face
``save_pretrained`` directories of the official code (commit c556310, ``models/``): a ``config.json`` without
``format_version`` (and without ``model_type``), and ``pytorch_model.bin`` or ``model.safetensors`` (possibly
sharded, with an ``*.index.json``). ``load_released`` reads one into our ``Autoencoder`` / ``EnergyTransformer``
with the architecture variants the released models need; ``python -m calm.convert`` writes it once in our
safetensors + config format, after which every experiment takes it as ``--checkpoint`` / ``--lm-checkpoint``.

The mapping (released name -> ours; ``calm.official_layout`` applies it), checked tensor by tensor: a name with no place, a missing tensor or a
shape the config does not imply is a ``CheckpointError`` naming it.

    autoencoder   encoder.embed_tokens -> embed (tied with decoder.lm_head_weight, which must equal it)
                  encoder.encoder_layers.{i<n/2}.{layernorm, mlp.{gate,up,down}_proj} -> enc_token_blocks.{i}
                  encoder.encoder_layers.{i>=n/2} -> enc_chunk_blocks; decoder.decoder_layers.{i<n/2} ->
                  dec_chunk_blocks, {i>=n/2} -> dec_token_blocks; squeeze_layer -> squeeze, hidden_to_latent ->
                  to_latent (2l outputs: mean, then log-std), latent_to_hidden -> from_latent, expand_layer ->
                  expand (these four with biases: ``linear_bias``), encoder.norm / decoder.norm -> enc_norm / dec_norm
    LM            transformer.embed_tokens -> embed; transformer.layers.{i}.{self_attn.{q,k,v,o}_proj,
                  input_layernorm, post_attention_layernorm, mlp.*} -> backbone.layers.{i}.{attn.*, attn_norm,
                  mlp_norm, mlp.*}; transformer.norm -> backbone.norm; embed_proj.{0,2,3} -> compress.{0,2,3};
                  mlp_generator.{noise_embd, norm_noise, hidden_embd, norm_hidden} -> head.{noise_in, noise_norm,
                  cond_in, cond_norm}; mlp_generator.mlp_blocks.{i}.{in_ln, linears.{0,2,4}, down_proj} ->
                  head.blocks.{i}.{norm, mlp.{0,2,4}, down} (``head_block="mlp-glu"``); final_layer.{in_ln,
                  linears.0, linears.2} -> head.{out_norm, out_hidden, out}; generative_head.* (the same module
                  again, must equal mlp_generator.*); ae_model.* -> autoencoder.* as above
    variants      ``linear_bias=True`` (autoencoder), ``start_vector=False`` (patch t+1 is read off patch t; no
                  learned start), ``head_block="mlp-glu"``, ``layer_norm_eps=1e-6``; the backbone's RoPE base
                  and RMSNorm epsilon from the config

The tokenizer comes from the checkpoint's own ``tokenizer.json`` (or ``tokenizer=`` a directory holding one,
e.g. the official repo's ``llama3_tokenizer``), read with the ``tokenizers`` library. The official trainer
adds ``[PAD]`` after the vocabulary (Llama-3: 128256, vocabulary 128257); it is added the same way when the
config's pad id is the next free id. The vocabulary size and the bos/eos/pad ids are checked against the config.

``.bin`` files are read only with ``torch.load(weights_only=True)``: a pickle that would import or call anything
is refused before any of it runs.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
from pathlib import Path

import torch

from calm.autoencoder import Autoencoder
from calm.checkpoint import CheckpointError
from calm.energy_transformer import EnergyTransformer
from calm.files import DamagedFileError, read_json
from calm.integrity import check_tensors, read_safetensors
from calm.official_layout import autoencoder_config, build_model, calm_config, map_names

__all__ = ["RELEASED", "is_released_layout", "load_released", "read_released", "released_kind",
           "released_tokenizer", "resolve_source"]

#: the released checkpoints on the Hugging Face hub: id -> (kind, parameters, BrierLM in the paper)
RELEASED = {
    "cccczshao/CALM-Autoencoder": ("autoencoder", "75M", None),
    "cccczshao/CALM-M": ("calm", "371M", 5.72),
    "cccczshao/CALM-L": ("calm", "735M", 6.58),
    "cccczshao/CALM-XL": ("calm", "1.82B", 8.53),
}
HUB_FILES = ["*.json", "*.bin", "*.safetensors", "tokenizer*"]
PAD_TOKEN = "[PAD]"  # what train/train_calm.py adds when the tokenizer has no pad token


# ----------------------------------------------------------------------------------------------------------
# where the files are


def resolve_source(source: str | os.PathLike) -> Path:
    """A released checkpoint's local directory: ``source`` itself, or a hub id fetched into the HF cache.

    Raises:
        CheckpointError: no such directory; or a hub id while offline (``HF_HUB_OFFLINE=1`` or no route to
            huggingface.co), which says to download it elsewhere and pass the directory.
    """
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the checkpoint's directory (config.json + weights)")
        return path
    text = str(source)
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text):
        raise CheckpointError(f"{text}: no such directory (and not a hub id like cccczshao/CALM-M)")
    hint = (f"download it where the hub is reachable (huggingface-cli download {text} --local-dir DIR) and pass "
            "DIR instead")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("", "0"):
        raise CheckpointError(f"{text}: not a local directory, and the hub is switched off (HF_HUB_OFFLINE); {hint}")
    try:  # fail at once offline instead of after the hub client's retries
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError as exc:
        raise CheckpointError(f"{text}: not a local directory, and huggingface.co cannot be reached ({exc}); "
                              f"{hint}") from None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, allow_patterns=HUB_FILES))
    except Exception as exc:  # the hub client raises many kinds; each means "not fetched"
        raise CheckpointError(f"{text}: cannot be fetched from the hub ({type(exc).__name__}: {exc}); {hint}") from None


def is_released_layout(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a checkpoint of the official code (a ``config.json`` with ``patch_size``
    and no ``format_version``), not one of ours."""
    path = Path(directory) / "config.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format_version" not in meta and "patch_size" in meta


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A ``pytorch_model.bin`` through torch's weights-only unpickler: nothing in it is imported or called."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DamagedFileError(path, f"refused: it holds a pickle that is not plain weights ({first}); nothing "
                                     "in it was run", "use the checkpoint from its source, never this file") from None
    except (EOFError, OSError, RuntimeError, ValueError) as exc:
        raise DamagedFileError(path, f"not a readable torch weights file ({type(exc).__name__}: {exc})",
                               "download it again") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise DamagedFileError(path, "does not hold a state dict of named tensors", "download it again")
    return state


def _weight_files(directory: Path) -> list[Path]:
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = directory / index_name
        if index.exists():
            weight_map = read_json(index, what="weights index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise DamagedFileError(index, "has no weight_map", "download it again")
            return [directory / name for name in sorted(set(weight_map.values()))]
        if (directory / single).exists():
            return [directory / single]
    raise CheckpointError(f"{directory} holds no model.safetensors or pytorch_model.bin (nor a sharded index)")


def read_released(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config.json, all tensors)`` of a released-layout directory (safetensors or weights-only ``.bin``)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{directory} has no config.json: not a checkpoint directory")
    config = read_json(config_path, what="released config", fix="download it again")
    if not is_released_layout(directory):
        raise CheckpointError(f"{config_path} is not a released CALM config (it needs patch_size and no "
                              "format_version; one of our checkpoints loads with calm.checkpoint.load_pretrained)")
    tensors: dict[str, torch.Tensor] = {}
    for path in _weight_files(directory):
        if not path.exists():
            raise CheckpointError(f"{path} is named by the weights index but missing")
        part = read_safetensors(path) if path.suffix == ".safetensors" else _load_bin(path)
        tensors.update(part)
    check_tensors(directory, {k: v for k, v in tensors.items() if v.is_floating_point()})
    return config, tensors


def released_kind(config: dict, tensors: dict[str, torch.Tensor]) -> str:
    """``"calm"`` (an energy transformer with its autoencoder inside) or ``"autoencoder"``."""
    if any(k.startswith("transformer.") for k in tensors):
        if not any(k.startswith("mlp_generator.") for k in tensors):
            raise CheckpointError("a released LM without mlp_generator.*: only the energy head (modeling_energy) is "
                                  "supported, not the diffusion or flow heads")
        return "calm"
    if "encoder.embed_tokens.weight" in tensors:
        return "autoencoder"
    raise CheckpointError(f"neither a CALM (transformer.*) nor an autoencoder (encoder.*): tensors "
                          f"{sorted(tensors)[:5]}")


# ----------------------------------------------------------------------------------------------------------
# tokenizer


def released_tokenizer(directory: str | os.PathLike, config: dict, *, tokenizer: str | os.PathLike | None = None):
    """The released model's tokenizer as a ``PreTrainedTokenizerFast``, checked against ``config``.

    From ``tokenizer`` (a directory or ``tokenizer.json``) when given, else the checkpoint's own
    ``tokenizer.json``. ``[PAD]`` is appended as the official trainer does when the config's pad id is the
    next free id. Raises ``CheckpointError`` when none is found, or the vocabulary size or a bos/eos/pad id
    disagrees with the config.
    """
    from tokenizers import Tokenizer

    from calm.tokenizer import wrap_tokenizer

    where = Path(tokenizer) if tokenizer is not None else Path(directory)
    path = where / "tokenizer.json" if where.is_dir() else where
    if not path.is_file():
        raise CheckpointError(f"no tokenizer.json at {where}; pass --tokenizer DIR (for the released models: the "
                              "official repo's llama3_tokenizer, or the Llama-3 tokenizer.json)")
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exceptions for a damaged file
        raise DamagedFileError(path, f"the tokenizer cannot be read ({exc})", "download it again") from None
    vocab = config.get("vocab_size")
    pad = config.get("pad_token_id")
    size = backend.get_vocab_size(with_added_tokens=True)
    if backend.token_to_id(PAD_TOKEN) is None and pad == size and vocab == size + 1:
        backend.add_special_tokens([PAD_TOKEN])
        size += 1
    if size != vocab:
        raise CheckpointError(f"{path} has {size} ids but the model's vocab_size is {vocab}: another tokenizer")
    names = {}
    for role in ("bos", "eos", "pad"):
        token_id = config.get(f"{role}_token_id")
        token = backend.id_to_token(token_id) if isinstance(token_id, int) else None
        if token is None:
            raise CheckpointError(f"{path}: the config's {role}_token_id {token_id!r} is no token of this tokenizer")
        names[role] = token
    stated = where / "special_tokens_map.json" if where.is_dir() else path.parent / "special_tokens_map.json"
    if stated.is_file():
        for role, value in read_json(stated, what="special tokens map", fix="download it again").items():
            content = value.get("content") if isinstance(value, dict) else value
            if role.endswith("_token") and role[:-6] in names and content != names[role[:-6]]:
                raise CheckpointError(f"{stated} names {content!r} as {role} but the config's id is "
                                      f"{names[role[:-6]]!r}")
    return wrap_tokenizer(backend, eot=names["eos"], pad=names["pad"])


# ----------------------------------------------------------------------------------------------------------
# the loader


def load_released(source: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
                  autoencoder: str | os.PathLike | None = None):
    """A released CALM checkpoint as ``(model in eval mode, tokenizer)``: our ``Autoencoder`` or our
    ``EnergyTransformer`` (its autoencoder inside, from its own ``ae_model.*`` tensors).

    Args:
        source: a directory in the released layout, or a hub id (fetched only where the hub is reachable).
        tokenizer: a directory or ``tokenizer.json`` when the checkpoint holds none.
        autoencoder: for an LM, the released autoencoder's directory, whose config must agree with the LM's
            own ``ae_model.*`` (the LM's config points at the authors' machine); optional.
    """
    directory = resolve_source(source)
    config, tensors = read_released(directory)
    kind = released_kind(config, tensors)
    where = str(directory)
    if kind == "autoencoder":
        ae_config = autoencoder_config(config, tensors, "", where)
        model = build_model(Autoencoder, ae_config, map_names(tensors, kind, ae_config.num_layers, where), where)
    else:
        ae_source = {key: config.get(key) for key in ("patch_size", "latent_size", "pad_token_id")}
        if autoencoder is not None:
            ae_source = read_released(resolve_source(autoencoder))[0]
        ae_config = autoencoder_config(ae_source, tensors, "ae_model.", where)
        lm_config = calm_config(config, ae_config, where)
        model = build_model(EnergyTransformer, lm_config, map_names(tensors, kind, ae_config.num_layers, where), where)
    return model, released_tokenizer(directory, config, tokenizer=tokenizer)
