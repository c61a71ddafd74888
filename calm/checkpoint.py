"""Checkpoints in the Hugging Face layout, without pickle.

A checkpoint directory holds:

    model.safetensors   the model's state dict (float tensors, bit-exact)
    config.json         {"format_version", "model_type", "config": <the config dataclass as a dict>,
                         "tokenizer_fingerprint", "vocab_size", "num_parameters"}
    tokenizer.json      the tokenizer the model was trained with

``load_pretrained`` refuses a checkpoint whose parts disagree (tokenizer vs. the fingerprint in the config,
vocabulary size or K vs. the weights) and says what differs (``CheckpointError``, a ``ValueError``). A part
that is there but damaged (config.json truncated or holding ``"false"`` where a boolean belongs, a truncated or
pickled model.safetensors, NaN weights) raises ``calm.files.DamagedFileError`` naming the file, which is not a
``ValueError``: code that reads a ``ValueError`` as "this cannot be built" never absorbs it. ``expect=`` names
the model type(s) a caller wants, so a checkpoint of another type (an adapter given for an autoencoder)
is named as such.

Any model type registered in ``MODEL_TYPES`` can be stored; a model is an ``nn.Module`` with a ``config``
dataclass that has ``to_dict``/``from_dict``. A model defined outside calm registers itself when its module is
imported (``register_model_type``); a checkpoint only names its type, never a module to import.

The optimizer helpers (``save_optimizer``/``load_optimizer``) store AdamW state the same way, keyed by
parameter name, for resumable training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from calm.files import DamagedFileError, atomic_write_text, read_json
from calm.integrity import check_json_types, check_tensors, read_safetensors, safetensors_shapes, with_fix

__all__ = [
    "FORMAT_VERSION",
    "MODEL_TYPES",
    "CheckpointError",
    "autoencoder_config_for",
    "model_type_of",
    "register_model_type",
    "save_pretrained",
    "load_pretrained",
    "load_config",
    "read_safetensors",
    "check_checkpoint",
    "save_optimizer",
    "load_optimizer",
]

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"

# model_type -> (module, config class, model class); calm's own are imported lazily so that this module
# imports no model. A new calm model type is one line here; a model outside calm calls register_model_type.
MODEL_TYPES: dict[str, tuple[str, str, str]] = {
    "autoencoder": ("calm.autoencoder", "AutoencoderConfig", "Autoencoder"),
    "calm": ("calm.energy_transformer", "EnergyTransformerConfig", "EnergyTransformer"),
    "baseline": ("calm.baseline", "BaselineConfig", "TokenTransformer"),
}


class CheckpointError(ValueError):
    """A checkpoint directory is missing, of another model type, or its parts do not match (damage is a
    ``calm.files.DamagedFileError``)."""


def register_model_type(name: str, config_cls: type, model_cls: type) -> None:
    """Let ``save_pretrained``/``load_pretrained`` store and build ``model_cls`` as ``model_type`` ``name``.

    Called by the module that defines the model, when it is imported. ``config_cls`` must be importable from
    ``model_cls``'s module. Registering the same classes again is a no-op; another pair under a taken name
    is a ValueError.
    """
    entry = (model_cls.__module__, config_cls.__name__, model_cls.__name__)
    if getattr(importlib.import_module(entry[0]), entry[1], None) is not config_cls:
        raise ValueError(f"register_model_type({name!r}): {config_cls.__qualname__} must be importable from "
                         f"{entry[0]}, the module of {model_cls.__qualname__}")
    if MODEL_TYPES.get(name, entry) != entry:
        raise ValueError(f"model_type {name!r} is already registered to {'.'.join(MODEL_TYPES[name][::2])}")
    MODEL_TYPES[name] = entry


def _classes(model_type: str) -> tuple[type, type]:
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"unknown model_type {model_type!r}; registered types are {sorted(MODEL_TYPES)}. A model type "
            "defined outside calm is registered (calm.checkpoint.register_model_type) when the module that "
            "defines it is imported: import that module before loading the checkpoint")
    module, config_name, model_name = MODEL_TYPES[model_type]
    mod = importlib.import_module(module)
    return getattr(mod, config_name), getattr(mod, model_name)


def model_type_of(model: nn.Module) -> str:
    """The registered ``model_type`` of a model instance."""
    for name, (module, _, model_name) in MODEL_TYPES.items():
        cls = type(model)
        if cls.__module__ == module and cls.__name__ == model_name:
            return name
    raise CheckpointError(f"{type(model).__module__}.{type(model).__name__} is not a registered model type; "
                          f"known types are {sorted(MODEL_TYPES)} (register it with calm.checkpoint.register_model_type)")


def save_pretrained(model: nn.Module, directory: str | os.PathLike, tokenizer) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``tokenizer.json`` into ``directory``.

    Args:
        model: a registered model (see ``MODEL_TYPES``) with a ``config`` dataclass.
        directory: created if missing; existing checkpoint files are replaced.
        tokenizer: the ``PreTrainedTokenizerFast`` whose ids the model was trained on.

    Returns:
        The directory as a ``Path``.
    """
    from calm.tokenizer import save_tokenizer, tokenizer_fingerprint

    model_type = model_type_of(model)
    config = model.config
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) != vocab:
        raise CheckpointError(f"tokenizer has {len(tokenizer)} ids but the model's vocab_size is {vocab}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage, and a state dict may hold views
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = directory / (MODEL_FILE + ".tmp")
    # one metadata entry only: the header stores metadata in hash order, and saves must be byte-identical
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / MODEL_FILE)
    save_tokenizer(tokenizer, directory)
    meta = {
        "format_version": FORMAT_VERSION,
        "model_type": model_type,
        "config": config.to_dict(),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "vocab_size": len(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    return directory


def _checkpoint_fix(directory: Path) -> contextlib.AbstractContextManager:
    """Damage inside a checkpoint is named with the fix that suits one: a trained model is restored or
    retrained, not deleted on a hint (one a run caches is rebuilt once its directory is removed)."""
    return with_fix(f"restore or retrain the checkpoint {directory} (one a run caches is rebuilt once removed: "
                    f"rm -r {directory})")


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _expected_types(expect: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if expect is None else (expect,) if isinstance(expect, str) else tuple(expect)


def load_config(directory: str | os.PathLike, *, expect: str | tuple[str, ...] | None = None) -> dict:
    """Read and check ``config.json`` of a checkpoint directory (no weights are loaded).

    Args:
        directory: the checkpoint directory.
        expect: the model type(s) the caller wants (``"autoencoder"``, ...); None: any.

    Raises:
        CheckpointError: no such directory, a file instead of one, no config.json in it, an unsupported
            format version, or a model type other than ``expect``.
        DamagedFileError: config.json is truncated, not JSON, or lacks a field or has one of the wrong kind.
    """
    directory = Path(directory)
    with _checkpoint_fix(directory):
        return _load_config(directory, expect)


def _load_config(directory: Path, expect: str | tuple[str, ...] | None) -> dict:
    path = directory / CONFIG_FILE
    if not directory.exists():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is a file, not a checkpoint directory (save_pretrained writes a "
                              "directory of model.safetensors, config.json and tokenizer.json; pickles are never "
                              "loaded)")
    if not path.exists():
        raise CheckpointError(f"{path} is missing: not a checkpoint directory written by save_pretrained")
    meta = read_json(path, what="checkpoint config")
    if "format_version" not in meta and "patch_size" in meta:  # the official code's save_pretrained
        raise CheckpointError(f"{directory} is a released CALM checkpoint (the official code's layout); convert it "
                              f"once: python -m calm.convert {directory} OUT, and pass OUT")
    kinds = {"format_version": int, "model_type": str, "config": dict, "tokenizer_fingerprint": str}
    for key, kind in kinds.items():
        if key not in meta:
            raise DamagedFileError(path, f"the checkpoint config lacks the field {key!r}")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise DamagedFileError(path, f"the checkpoint config's {key!r} holds {meta[key]!r}, not "
                                         f"{_article(kind.__name__)}")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta['format_version']} is not supported "
                              f"(this code reads version {FORMAT_VERSION})")
    wanted = _expected_types(expect)
    if wanted and meta["model_type"] not in wanted:
        raise CheckpointError(f"{directory} is {_article(meta['model_type'])} checkpoint, not "
                              f"{' or '.join(_article(w) for w in wanted)}")
    return meta


def autoencoder_config_for(ae: str | os.PathLike | None, vocab_size: int, what: str) -> dict:
    """The config of the autoencoder checkpoint ``--ae`` that a ``what`` model is built on, checked against
    the tokenizer's ``vocab_size`` (clear errors for a missing flag, another model type or another tokenizer)."""
    if not ae:
        raise ValueError(f"{what} training needs --ae DIR, a trained autoencoder checkpoint")
    try:
        meta = check_checkpoint(ae, expect="autoencoder")
    except CheckpointError as exc:
        raise CheckpointError(f"--ae {ae}: {exc}") from None
    if meta["config"]["vocab_size"] != vocab_size:
        raise ValueError(f"--ae {ae} has vocab_size {meta['config']['vocab_size']} but the tokenizer has "
                         f"{vocab_size} ids; pass the --tokenizer the autoencoder was trained with")
    return meta["config"]


def _build_config(directory: Path, meta: dict):
    """The config dataclass of a checkpoint's config.json (its values of the declared JSON kinds)."""
    path = directory / CONFIG_FILE
    config_cls, _ = _classes(meta["model_type"])
    values = meta["config"]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:  # another version of the model, not damage
        raise CheckpointError(f"{path}: bad {meta['model_type']} config: {config_cls.__name__}: unknown fields "
                              f"{unknown}; known fields are {sorted(known)}")
    check_json_types(path, config_cls, values, what=f"{meta['model_type']} config")
    if isinstance(values.get("autoencoder"), dict):  # the frozen autoencoder's config inside a model built on one
        from calm.autoencoder import AutoencoderConfig

        check_json_types(path, AutoencoderConfig, values["autoencoder"], what="autoencoder config")
    try:
        return config_cls.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise DamagedFileError(path, f"the {meta['model_type']} config is refused: {exc}") from None


_INIT_FUNCTIONS = ("normal_", "zeros_", "ones_", "uniform_", "constant_", "trunc_normal_", "kaiming_uniform_",
                   "kaiming_normal_", "xavier_uniform_", "xavier_normal_")


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """Build modules on the meta device without running ``torch.nn.init``: only names and shapes are wanted,
    and torch's meta ``normal_`` imports torch._dynamo on first use (1-1.5 s in every process that checks a
    checkpoint: each agent actor). Short-lived and single-purpose: the init functions are restored on exit."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        with torch.device("meta"):
            yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def _expected_shapes(model_cls: type, config) -> dict[str, tuple[int, ...]]:
    with shapes_only():
        return {k: tuple(v.shape) for k, v in model_cls(config).state_dict().items()}


def _check_fit(directory: Path, meta: dict, config, shapes: dict[str, tuple[int, ...]]) -> None:
    """The weights' names and shapes ``shapes`` are those of the model ``config`` describes."""
    _, model_cls = _classes(meta["model_type"])
    expected = _expected_shapes(model_cls, config)
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{directory / MODEL_FILE} does not fit a {meta['model_type']} with this config: "
                              f"missing tensors {missing[:5]}, unexpected tensors {extra[:5]}")
    bad = [(k, shapes[k], exp) for k, exp in expected.items() if shapes[k] != exp]
    if bad:
        k, got, exp = bad[0]
        hint = _shape_hint(config, k, got)
        raise CheckpointError(f"{directory / MODEL_FILE}: tensor {k!r} has shape {got} but config.json "
                              f"({_summary(config)}) expects {exp}{hint}; {len(bad)} tensor(s) differ")


def check_checkpoint(directory: str | os.PathLike, *, expect: str | tuple[str, ...] | None = None) -> dict:
    """Check a checkpoint without loading its weights (before a long run starts): config.json (its kinds and
    model type), and model.safetensors's header (safetensors, not a pickle; the names and shapes the config
    implies). Returns the config.json dict. Raises what ``load_pretrained`` raises for the same faults."""
    directory = Path(directory)
    with _checkpoint_fix(directory):
        meta = load_config(directory, expect=expect)
        config = _build_config(directory, meta)
        _check_fit(directory, meta, config, safetensors_shapes(directory / MODEL_FILE))
    return meta


def load_pretrained(directory: str | os.PathLike, *, tokenizer=None, device: str | torch.device = "cpu",
                    expect: str | tuple[str, ...] | None = None):
    """Load a checkpoint written by ``save_pretrained``.

    Args:
        directory: the checkpoint directory.
        tokenizer: if given, the tokenizer the caller's data uses; it must match the checkpoint's.
        device: where to put the weights.
        expect: the model type(s) the caller wants (``"autoencoder"``, ``("calm", "baseline")``); None: any.

    Returns:
        (model in eval mode, tokenizer) - the tokenizer from ``tokenizer.json`` when none was passed.

    Raises:
        CheckpointError: no checkpoint there, another model type than ``expect`` ("X is a calm checkpoint,
            not an autoencoder"), a tokenizer whose fingerprint or size differs from the checkpoint's, or
            weights whose shapes do not fit the config (different K, vocabulary or sizes). The message says
            what differs.
        DamagedFileError: a part that is there but damaged, named: config.json (truncated, a field of the
            wrong kind or a value its config refuses), tokenizer.json missing or unreadable, model.safetensors
            missing, truncated or not safetensors, or NaN/inf weights.
    """
    directory = Path(directory)
    with _checkpoint_fix(directory):
        return _load_pretrained(directory, tokenizer, device, expect)


def _load_pretrained(directory: Path, tokenizer, device: str | torch.device,
                     expect: str | tuple[str, ...] | None):
    from calm.tokenizer import load_tokenizer, tokenizer_fingerprint

    meta = load_config(directory, expect=expect)
    _, model_cls = _classes(meta["model_type"])
    config = _build_config(directory, meta)

    # tokenizer: the stored one must be the one the model was trained with, and so must the caller's
    tok_path = directory / TOKENIZER_FILE
    if not tok_path.is_file():
        raise DamagedFileError(tok_path, "the checkpoint's tokenizer is missing")
    try:
        stored_tok = load_tokenizer(tok_path)
    except Exception as exc:  # the tokenizers library raises plain Exceptions for a damaged file
        raise DamagedFileError(tok_path, f"the tokenizer cannot be read ({exc})") from None
    want = meta["tokenizer_fingerprint"]
    for name, tok in (("tokenizer.json", stored_tok), ("the tokenizer passed in", tokenizer)):
        if tok is None:
            continue
        got = tokenizer_fingerprint(tok)
        if got != want:
            raise CheckpointError(
                f"{name} does not match the checkpoint {directory}: tokenizer fingerprint {got} "
                f"({len(tok)} ids) but the model was trained with {want} ({meta.get('vocab_size')} ids)")
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(stored_tok) != vocab:
        raise CheckpointError(f"tokenizer.json has {len(stored_tok)} ids but config vocab_size is {vocab}")

    # weights: build the model from the config and check every tensor's name, shape and values
    tensors = read_safetensors(directory / MODEL_FILE)
    _check_fit(directory, meta, config, {k: tuple(v.shape) for k, v in tensors.items()})
    check_tensors(directory / MODEL_FILE, tensors)  # a NaN weight would make every output NaN, silently
    model = model_cls(config)
    model.load_state_dict(tensors, strict=True)
    model.to(device)
    model.eval()
    return model, (tokenizer if tokenizer is not None else stored_tok)


def _summary(config) -> str:
    keys = [k for k in ("K", "vocab_size", "hidden_size", "latent_dim") if hasattr(config, k)]
    return ", ".join(f"{k}={getattr(config, k)}" for k in keys)


def _shape_hint(config, key: str, got: tuple) -> str:
    # name the config field that differs for the two common cases: another vocabulary, another K
    hidden = getattr(config, "hidden_size", None)
    if key.endswith("embed.weight") and len(got) == 2 and got[1] == hidden:
        return f" (the weights were trained with vocab_size={got[0]})"
    if key == "squeeze.weight" and hidden and len(got) == 2 and got[1] % hidden == 0:
        return f" (the weights were trained with K={got[1] // hidden})"
    if key == "expand.weight" and hidden and len(got) == 2 and got[0] % hidden == 0:
        return f" (the weights were trained with K={got[0] // hidden})"
    return ""


# ----------------------------------------------------------------------------------------------------------
# optimizer state


def save_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, path: str | os.PathLike) -> None:
    """Store an optimizer's per-parameter state as safetensors, keyed ``<param name>/<state key>``.

    Hyperparameters (lr, betas, ...) are not stored: the training config recreates them.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"{names[id(p)]}/{key}"] = t.detach().cpu().contiguous().clone()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def load_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, path: str | os.PathLike) -> None:
    """Restore state written by ``save_optimizer`` into an optimizer over ``model``'s parameters."""
    tensors = read_safetensors(path)
    check_tensors(path, tensors, what="optimizer state")
    params = dict(model.named_parameters())
    per_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, field = key.rpartition("/")
        if name not in params:
            raise CheckpointError(f"{path}: optimizer state for unknown parameter {name!r}")
        per_param.setdefault(name, {})[field] = value
    state = optimizer.state_dict()
    index = 0
    order = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            order[id(p)] = index
            index += 1
    new_state = {}
    for name, fields_ in per_param.items():
        p = params[name]
        new_state[order[id(p)]] = {k: (v.to(p.device) if k != "step" else v) for k, v in fields_.items()}
    state["state"] = new_state
    optimizer.load_state_dict(state)
