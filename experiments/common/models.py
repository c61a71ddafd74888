"""The autoencoder an experiment runs on: a given checkpoint, or the one trained once and cached.

``ensure_checkpoint(cfg)`` returns ``cfg.checkpoint`` (checked), or trains the ``cfg.ae_preset``
autoencoder on the corpus's train split once and caches it as ``<runs_dir>/ae-<preset>-<hash>/`` (the
hash covers every setting that changes the weights); the next run with the same settings starts in
seconds. ``checkpoint_id`` names a checkpoint by its weights, wherever it lives. ``ensure_jscc`` does the
same for a jscc channel adapter around that autoencoder (``ensure_lm_jscc`` for the LM-JSCC adapter around
the token baseline), ``ensure_calm`` for a CALM language model (an
energy transformer) on it, the backbone of the LM-prior listener and the latent dialogue, and
``ensure_token_lm`` for the token baseline on its tokenizer (the digital link's LM prior).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from calm.autoencoder import preset as autoencoder_preset
from calm.baseline import BaselineTask
from calm.checkpoint import MODEL_TYPES, load_config, load_pretrained, save_pretrained
from calm.data import load_token_ids
from calm.energy_transformer import CalmTask
from calm.loop import TrainConfig, train_local
from calm.tokenizer import get_tokenizer, load_tokenizer, special_ids, tokenizer_fingerprint
from calm.train import train_autoencoder
from experiments.common.config import SweepConfig
from protocols.jscc_model import preset as jscc_preset
from protocols.jscc_task import train_jscc
from protocols.lm_jscc_model import preset as lm_jscc_preset
from protocols.lm_jscc_task import train_lm_jscc

__all__ = ["K2_AUTOENCODER", "K2_CALM_STEPS", "K_AUTOENCODER", "K_KL_WEIGHT", "K_LATENT_PER_TOKEN",
           "checkpoint_id", "ensure_calm", "ensure_checkpoint", "ensure_jscc", "ensure_k2_models",
           "ensure_k_autoencoder", "ensure_lm_jscc", "ensure_token_lm", "reconstruction_accuracy"]


#: the K = 2 autoencoder (K = 2, l = 16) the dialogue, steering and SAE studies run on by default
K2_AUTOENCODER = {"tokenizer": "bpe:2048", "ae_preset": "tiny-k2", "ae_steps": 1500}
#: optimiser steps of the default CALM on it
K2_CALM_STEPS = 300
#: the K study's autoencoders (experiments.scaling_k's defaults, which experiments.analyze_vectors reads by
#: K): the tiny preset at K with l = K_LATENT_PER_TOKEN * K and KL weight K_KL_WEIGHT
K_AUTOENCODER = {"tokenizer": "bpe:2048", "ae_steps": 1500}
K_LATENT_PER_TOKEN = 32
K_KL_WEIGHT = 0.01

_SHA_CACHE: dict[tuple[str, int, int, int], str] = {}


def _weights_sha(directory: Path) -> str:
    """sha256[:12] of a checkpoint's model.safetensors, read once per file version (path, inode, size, mtime): a run names
    its checkpoints several times (the run directory, the tracker), and a released CALM's weights are gigabytes."""
    path = (Path(directory) / "model.safetensors").resolve()
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()[:12]
    return _SHA_CACHE[key]


def checkpoint_id(directory: Path) -> str:
    """``<dir name>@<sha256[:12] of model.safetensors>``: names a checkpoint wherever it lives."""
    return f"{directory.name}@{_weights_sha(directory)}"


def ensure_checkpoint(cfg: SweepConfig, *, overrides: dict[str, Any] | None = None) -> Path:
    """The autoencoder checkpoint: ``cfg.checkpoint``, or one trained once and cached under ``runs_dir``.

    ``overrides``: further AutoencoderConfig fields of the trained one (e.g. ``{"kl_weight": 0.01}``); they
    enter the cache key only when given, so the caches of runs without them keep their names.
    """
    if cfg.checkpoint is not None:
        path = Path(cfg.checkpoint).expanduser()
        if not (path / "model.safetensors").is_file():
            raise ValueError(f"checkpoint {cfg.checkpoint!r} holds no model.safetensors (a calm.checkpoint directory)"
                             + _released_hint(path))
        return path.resolve()

    tok = get_tokenizer(cfg.tokenizer, cfg.corpus)
    pad_id, _ = special_ids(tok)
    fields = {k: v for k, v in (("latent_dim", cfg.ae_latent_dim), ("hidden_size", cfg.ae_hidden_size),
                                ("intermediate_size", cfg.ae_intermediate_size)) if v is not None}
    ae_cfg = autoencoder_preset(cfg.ae_preset, vocab_size=len(tok), pad_id=pad_id, **{**(overrides or {}), **fields})
    # a tokenizer given as a file (a given speaker's, for alignment listeners) is keyed by its vocabulary: the same
    # path may hold another tokenizer tomorrow; spec strings (bpe:2048) keep the keys of existing caches
    tokenizer_key = f"file:{tokenizer_fingerprint(tok)}" if os.path.exists(cfg.tokenizer) else cfg.tokenizer
    key = {"ae": ae_cfg.to_dict(), "corpus": cfg.corpus, "tokenizer": tokenizer_key, "steps": cfg.ae_steps,
           "batch_size": cfg.ae_batch_size, "time_limit": cfg.ae_time_limit, "seed": cfg.ae_seed}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = (Path(cfg.runs_dir).expanduser() / f"ae-{cfg.ae_preset}-{digest}").resolve()
    if (path / "model.safetensors").is_file():
        print(f"[ae] using the cached autoencoder {path}", flush=True)
        return path
    limit = f", at most {cfg.ae_time_limit:.0f} s" if cfg.ae_time_limit > 0 else ""
    print(f"[ae] training the {cfg.ae_preset} autoencoder ({cfg.ae_steps} steps{limit}); "
          f"cached at {path}", flush=True)
    train_ids = load_token_ids(cfg.corpus, tok, "train")
    val_ids = load_token_ids(cfg.corpus, tok, "validation")
    t0 = time.time()
    model = train_autoencoder(ae_cfg, train_ids, steps=cfg.ae_steps, val_ids=val_ids, seed=cfg.ae_seed,
                              progress=True, time_limit=cfg.ae_time_limit, batch_size=cfg.ae_batch_size,
                              val_size=2048)
    seconds = time.time() - t0
    accuracy = reconstruction_accuracy(model, val_ids, ae_cfg.K)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_pretrained(model, tmp, tok)
    (tmp / "train_info.json").write_text(json.dumps({**key, "seconds": seconds, "steps_done": model.trained_steps,
                                                     "val_token_accuracy": accuracy,
                                                     "history": getattr(model, "history", [])},
                                                    indent=2) + "\n")
    tmp.replace(path)  # atomic: a half-written checkpoint is never picked up
    print(f"[ae] trained {model.trained_steps} steps in {seconds:.0f} s; held-out token accuracy {accuracy:.4f}"
          + (" (--ae-time-limit: the weights depend on this machine's speed)" if cfg.ae_time_limit > 0 else ""),
          flush=True)
    return path


def reconstruction_accuracy(model, ids: np.ndarray, K: int, *, tokens: int = 32768) -> float:
    """Greedy token accuracy of ``model.reconstruct`` on the first ``tokens`` ids of a stream."""
    import torch

    n = min(len(ids), tokens) // (8 * K) * (8 * K)
    x = torch.as_tensor(np.asarray(ids[:n], dtype=np.int64).reshape(-1, 8 * K))  # (B, 8K)
    with torch.inference_mode():
        return float((model.reconstruct(x) == x).float().mean())


def ensure_jscc(cfg: Any, checkpoint: Path, model, train_ids: np.ndarray, val_ids: np.ndarray, n: int, *,
                channels: tuple[str, ...], erasure_p: float) -> Path:
    """The jscc adapter (``protocols.jscc_model``) for n channel uses around ``checkpoint``'s autoencoder ``model``, trained
    once on ``channels`` (``cfg.jscc_steps``, ``cfg.jscc_hidden_size``) and cached under ``runs_dir``."""
    key = {"checkpoint": checkpoint_id(checkpoint), "n": n, "L": cfg.passage_length, "channels": list(channels),
           "erasure_p": erasure_p, "steps": cfg.jscc_steps, "hidden": cfg.jscc_hidden_size, "seed": cfg.ae_seed}
    fixed = getattr(cfg, "jscc_train_snr_db", None)
    snr = {} if fixed is None else {"snr_db_min": float(fixed), "snr_db_max": float(fixed)}
    if snr:  # one training SNR: the SNR-mismatch adapter (the key of the adaptive one stays as it was)
        key["snr_db"] = float(fixed)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = (Path(cfg.runs_dir).expanduser() / f"jscc-n{n}-{digest}").resolve()
    if (path / "model.safetensors").is_file():
        print(f"[jscc] using the cached adapter {path}", flush=True)
        return path
    print(f"[jscc] training the adapter for n={n} ({cfg.jscc_steps} steps on {', '.join(channels)}"
          f"{'' if fixed is None else f' at {fixed:g} dB'}); cached at "
          f"{path}", flush=True)
    config = jscc_preset("tiny", model.config, channel_uses=n, passage_length=cfg.passage_length,
                    channels=tuple(channels), erasure_p=erasure_p, hidden_size=cfg.jscc_hidden_size,
                    autoencoder_path=str(checkpoint), **snr)
    t0 = time.time()
    adapter = train_jscc(config, train_ids, steps=cfg.jscc_steps, val_ids=val_ids, seed=cfg.ae_seed, progress=True,
                         autoencoder=model)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_pretrained(adapter, tmp, load_tokenizer(str(checkpoint / "tokenizer.json")))
    (tmp / "train_info.json").write_text(json.dumps({**key, "seconds": time.time() - t0,
                                                     "history": getattr(adapter, "history", [])}, indent=1) + "\n")
    tmp.replace(path)
    print(f"[jscc] trained n={n} in {time.time() - t0:.0f} s", flush=True)
    return path


def ensure_lm_jscc(cfg: Any, token_lm: Path, jscc: Path, train_ids: np.ndarray, val_ids: np.ndarray, *,
                   channels: tuple[str, ...], noiseless: bool = False) -> Path:
    """The LM-JSCC adapter (``protocols.lm_jscc_model``) started from the token baseline ``token_lm`` and the JSCC
    adapter ``jscc`` (whose n it keeps), trained once on ``channels`` (``cfg.lm_jscc_steps`` steps, SNR -6..20 dB;
    ``noiseless``: at 60 dB only, the design's own ceiling) and cached under ``runs_dir`` with its validation curve
    in ``train_info.json``."""
    snr = (60.0, 60.0) if noiseless else (-6.0, 20.0)
    # the LM named by its weights alone: the same baseline cached under two autoencoders' names is one LM
    key = {"token_lm": _weights_sha(token_lm), "jscc": checkpoint_id(jscc), "channels": list(channels),
           "steps": cfg.lm_jscc_steps, "snr_db": list(snr), "seed": cfg.ae_seed}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    adapter, tok = load_pretrained(jscc, expect="jscc")
    n = adapter.config.channel_uses
    name = f"lm-jscc-n{n}-{'noiseless' if noiseless else '-'.join(channels)}-{digest}"
    path = (Path(cfg.runs_dir).expanduser() / name).resolve()
    if (path / "model.safetensors").is_file():
        print(f"[lm-jscc] using the cached adapter {path}", flush=True)
        return path
    print(f"[lm-jscc] training the adapter for n={n} ({cfg.lm_jscc_steps} steps on {', '.join(channels)}, "
          f"{snr[0]:g}..{snr[1]:g} dB); cached at {path}", flush=True)
    lm, _ = load_pretrained(token_lm, expect="baseline")
    config = lm_jscc_preset("tiny", lm.config, adapter.config, channels=tuple(channels), snr_db_min=snr[0],
                            snr_db_max=snr[1], lm_path=str(token_lm), jscc_path=str(jscc))
    t0 = time.time()
    model = train_lm_jscc(config, train_ids, steps=cfg.lm_jscc_steps, val_ids=val_ids, seed=cfg.ae_seed,
                          progress=True, lm=lm, adapter=adapter)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_pretrained(model, tmp, tok)
    (tmp / "train_info.json").write_text(json.dumps({**key, "seconds": time.time() - t0,
                                                     "history": getattr(model, "history", [])}, indent=1) + "\n")
    tmp.replace(path)
    print(f"[lm-jscc] trained n={n} in {time.time() - t0:.0f} s", flush=True)
    return path


def ensure_calm(checkpoint: Path, *, lm_checkpoint: str | None = None, runs_dir: str = "runs", corpus: str = "kjv+shakespeare",
                preset: str = "tiny-k2",
                steps: int = 300, batch_size: int = 8, grad_accum: int = 4, lr: float = 2e-3, seed: int = 0) -> Path:
    """The CALM language model (``calm.energy_transformer``) on the autoencoder ``checkpoint``.

    ``lm_checkpoint`` if given (checked: an EnergyTransformer whose autoencoder has ``checkpoint``'s weights);
    else the ``preset`` energy transformer trained once for ``steps`` optimiser steps of ``batch_size`` windows x
    ``grad_accum`` micro-batches on ``corpus`` (the autoencoder's), cached as ``<runs_dir>/calm-<preset>-<hash>/``.
    The default (tiny-k2 on a K = 2 autoencoder, 300 x 8 x 4 windows of 128 patches) takes about 6 minutes on
    two cores and reaches Brier-1 about 0.035 (``docs/brierlm.md``).
    """
    if lm_checkpoint is not None:
        path = _given_model(lm_checkpoint, "calm", "lm_checkpoint")
        model, _ = load_pretrained(path, expect="calm")
        ae, _ = load_pretrained(checkpoint, expect="autoencoder")
        mine, theirs = ae.state_dict(), model.autoencoder.state_dict()
        if mine.keys() != theirs.keys() or any(not mine[k].equal(theirs[k]) for k in mine):
            raise ValueError(f"lm_checkpoint {lm_checkpoint!r} was trained on another autoencoder than {checkpoint}")
        return path

    def make_task(vocab_size: int):
        return CalmTask(CalmTask.make_config(preset, vocab_size=vocab_size, overrides={}, ae=str(checkpoint)))

    return _train_cached("calm", make_task, checkpoint, runs_dir=runs_dir, corpus=corpus, preset=preset, steps=steps,
                         batch_size=batch_size, grad_accum=grad_accum, lr=lr, seed=seed)


def ensure_token_lm(checkpoint: Path, *, token_lm_checkpoint: str | None = None, runs_dir: str = "runs",
                    corpus: str = "kjv+shakespeare", preset: str = "tiny", steps: int = 900, batch_size: int = 8,
                    lr: float = 2e-3, seed: int = 0) -> Path:
    """The token baseline language model (``calm.baseline.TokenTransformer``) on ``checkpoint``'s tokenizer.

    ``token_lm_checkpoint`` if given (checked: a TokenTransformer with the autoencoder's tokenizer); else the
    ``preset`` baseline trained once for ``steps`` steps of ``batch_size`` windows of 256 tokens on ``corpus``,
    cached as ``<runs_dir>/baseline-<preset>-<hash>/``. The default spends about the training FLOPs of
    ``ensure_calm``'s default CALM (900 x 8 x 256 tokens x 7.96 MFLOPs vs 300 x 32 x 256 x 6.08 MFLOPs).
    """
    if token_lm_checkpoint is not None:
        path = _given_model(token_lm_checkpoint, "baseline", "token_lm_checkpoint")
        if (path / "tokenizer.json").read_bytes() != (checkpoint / "tokenizer.json").read_bytes():
            raise ValueError(f"token_lm_checkpoint {token_lm_checkpoint!r} has another tokenizer than {checkpoint}")
        return path

    def make_task(vocab_size: int):
        return BaselineTask(BaselineTask.make_config(preset, vocab_size=vocab_size, overrides={}))

    return _train_cached("baseline", make_task, checkpoint, runs_dir=runs_dir, corpus=corpus, preset=preset,
                         steps=steps, batch_size=batch_size, grad_accum=1, lr=lr, seed=seed)


def ensure_k2_models(*, runs_dir: str = "runs", corpus: str = "kjv+shakespeare", checkpoint: str | None = None,
                     lm_checkpoint: str | None = None, token_lm_checkpoint: str | None = None, calm: bool = True,
                     token_lm: bool = True) -> tuple[Path, Path | None, Path | None]:
    """``(autoencoder, CALM, token baseline)`` directories: the given ones (checked), else the K = 2 defaults
    (``K2_AUTOENCODER``, ``ensure_calm``'s CALM of ``K2_CALM_STEPS`` and ``ensure_token_lm``'s baseline, each
    trained once and cached) that the dialogue, steering and SAE studies share. ``calm`` / ``token_lm`` False:
    that model is not resolved (None)."""
    d = replace(SweepConfig(runs_dir=runs_dir, corpus=corpus, checkpoint=checkpoint), **K2_AUTOENCODER)
    ae = ensure_checkpoint(d)
    lm = ensure_calm(ae, lm_checkpoint=lm_checkpoint, runs_dir=d.runs_dir, corpus=d.corpus, steps=K2_CALM_STEPS,
                     seed=d.ae_seed) if calm else None
    tm = ensure_token_lm(ae, token_lm_checkpoint=token_lm_checkpoint, runs_dir=d.runs_dir, corpus=d.corpus,
                         seed=d.ae_seed) if token_lm else None
    return ae, lm, tm


def ensure_k_autoencoder(cfg: SweepConfig, K: int, *, latent_per_token: int = K_LATENT_PER_TOKEN,
                         kl_weight: float = K_KL_WEIGHT) -> Path:
    """The K study's autoencoder at ``K``: the ``tiny`` preset with ``K``, l = ``latent_per_token * K`` and
    ``kl_weight``, trained once on ``cfg``'s tokenizer, corpus and autoencoder settings (``ensure_checkpoint``;
    ``cfg.checkpoint`` is ignored) and cached under ``cfg.runs_dir``. ``replace(SweepConfig(...),
    **K_AUTOENCODER)`` with the default l and KL weight names the cache ``experiments.scaling_k`` fills."""
    overrides = {"K": K, "latent_dim": latent_per_token * K, "kl_weight": kl_weight}
    return ensure_checkpoint(replace(cfg, ae_preset="tiny", checkpoint=None), overrides=overrides)


def _released_hint(path: Path) -> str:
    """The way out when a released CALM directory is given where one of ours belongs."""
    from calm.official import is_released_layout

    return (f"; it is a released CALM checkpoint: convert it once with python -m calm.convert {path} OUT and pass "
            "OUT") if is_released_layout(path) else ""


def _given_model(directory: str, model_type: str, what: str) -> Path:
    """A given checkpoint directory, checked to hold a ``model_type`` model (``calm.checkpoint.MODEL_TYPES``)."""
    path = Path(directory).expanduser()
    if not (path / "model.safetensors").is_file():
        raise ValueError(f"{what} {directory!r} holds no model.safetensors (a calm.checkpoint directory)"
                         + _released_hint(path))
    found = load_config(path)["model_type"]
    if found != model_type:
        raise ValueError(f"{what} {directory!r} is a {MODEL_TYPES[found][2]}, not a {MODEL_TYPES[model_type][2]}")
    return path.resolve()


def _train_cached(kind: str, make_task, checkpoint: Path, *, runs_dir: str, corpus: str, preset: str, steps: int,
                  batch_size: int, grad_accum: int, lr: float, seed: int) -> Path:
    """Train a language model ``make_task(vocab_size)`` on ``corpus`` with ``checkpoint``'s tokenizer once and
    cache it as ``<runs_dir>/<kind>-<preset>-<hash of the settings and the autoencoder's weights>/``."""
    tok = load_tokenizer(str(checkpoint / "tokenizer.json"))
    key = {"checkpoint": checkpoint_id(checkpoint), "preset": preset, "steps": steps, "batch_size": batch_size,
           "grad_accum": grad_accum, "lr": lr, "seed": seed, "corpus": corpus}
    if kind != "calm":  # the CALM's cache key predates the other kinds: keep its paths
        key["kind"] = kind
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = (Path(runs_dir).expanduser() / f"{kind}-{preset}-{digest}").resolve()
    if (path / "model.safetensors").is_file():
        print(f"[{kind}] using the cached model {path}", flush=True)
        return path
    print(f"[{kind}] training the {preset} model ({steps} steps x {batch_size} x {grad_accum} windows); cached at "
          f"{path}", flush=True)
    task = make_task(len(tok))
    train_ids = load_token_ids(corpus, tok, "train")
    val_ids = load_token_ids(corpus, tok, "validation")
    cfg = TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup=max(1, steps // 10),
                      val_every=steps, checkpoint_every=steps, val_size=512, seed=seed, brier_samples=4)
    t0 = time.time()
    result = train_local(task, train_ids, cfg, val_ids=val_ids, progress=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_pretrained(result.model, tmp, tok)
    (tmp / "train_info.json").write_text(json.dumps({**key, "seconds": time.time() - t0, "history": result.history},
                                                    indent=1) + "\n")
    tmp.replace(path)
    last = result.history[-1] if result.history else {}
    print(f"[{kind}] trained {result.step} steps in {time.time() - t0:.0f} s; validation Brier-1 "
          f"{last.get('val_brier_1', float('nan')):.4f}"
          + (f", on-manifold {last['val_on_manifold']:.2f}" if "val_on_manifold" in last else ""), flush=True)
    return path
