"""Language models trained to a training-FLOPs budget: the equal-compute recipe of the scaling studies.

``train_and_score`` trains one model (the token baseline or an energy transformer on a given autoencoder) from
scratch to ``spec['budget']`` training FLOPs (analytic, ``calm.flops``; its own warm-up and cosine schedule) on
windows of ``WINDOW_TOKENS`` tokens, and scores it on held-out windows: Brier-1..4 and BrierLM with bootstrap
intervals and per-window estimates, CALM also with the on-manifold fraction of its head's samples. ``SIZES``
scale the backbone's width and depth alike in every family. ``experiments.calm_scaling`` and
``experiments.scaling_k`` train on it. ``check_budgets`` refuses, before anything starts, a budget that would
train a model more than ``MAX_STEPS`` optimizer steps (the studies' ``--force`` lets it through).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

from calm.autoencoder import preset as autoencoder_preset
from calm.baseline import BaselineTask
from calm.brier import evaluate_brier
from calm.checkpoint import autoencoder_config_for, load_pretrained
from calm.data import load_token_ids
from calm.energy_transformer import CalmTask, EnergyTransformer
from calm.energy_transformer import preset as calm_preset
from calm.flops import baseline_flops, calm_flops
from calm.loop import TrainConfig, train_local
from calm.tokenizer import get_tokenizer

__all__ = ["MAX_STEPS", "SIZES", "WINDOW_TOKENS", "check_budgets", "check_train_device", "generation_measure",
           "generation_speed", "make_task", "training_steps", "train_and_score"]

# backbone sizes of the studies (every family); m = the tiny presets of calm.baseline / calm.energy_transformer
SIZES: dict[str, dict[str, int]] = {
    "xs": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=176),
    "s": dict(hidden_size=96, num_layers=3, num_heads=3, intermediate_size=256),
    "m": dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=352),
}

WINDOW_TOKENS = 256
"""tokens per training and scoring window of every family (CALM: WINDOW_TOKENS / K patches)"""

MAX_STEPS = 100_000
"""optimizer steps of one model above which ``check_budgets`` refuses a budget (without --force): at a few steps a
second on one CPU thread, a day or more of training per model, where the default budgets train at most ~1,700"""


def _calm_overrides(size: str, K: int) -> dict[str, int]:
    if WINDOW_TOKENS % K:
        raise ValueError(f"K={K} does not divide the {WINDOW_TOKENS}-token window")
    dims = SIZES[size]
    return {**dims, "head_intermediate_size": dims["hidden_size"], "max_patches": WINDOW_TOKENS // K}


def make_task(family: str, size: str, vocab_size: int, ae_dir: str | None):
    """The training task (calm.lm_task.WindowTask) of one family at one size.

    ``baseline`` is the token transformer; any other family is an energy transformer on the autoencoder
    ``ae_dir`` (its K sets the patches per window: WINDOW_TOKENS / K, so every family sees 256 tokens).
    """
    if family == "baseline":
        return BaselineTask(BaselineTask.make_config("tiny", vocab_size=vocab_size, overrides=SIZES[size]))
    if ae_dir is None:
        raise ValueError(f"family {family!r} needs an autoencoder checkpoint")
    K = int(autoencoder_config_for(ae_dir, vocab_size, "calm")["K"])
    return CalmTask(CalmTask.make_config("tiny", vocab_size=vocab_size, overrides=_calm_overrides(size, K), ae=ae_dir))


def training_steps(per_token_flops: float, budget: float, batch_size: int, accum: int) -> tuple[int, float]:
    """``(optimizer steps, FLOPs per step)`` of a model of ``per_token_flops`` training FLOPs per token trained to
    ``budget`` on micro-batches of ``batch_size`` windows, ``accum`` per step (at least one step)."""
    step_flops = per_token_flops * batch_size * accum * WINDOW_TOKENS
    return max(1, math.ceil(budget / step_flops)), step_flops


def _vocab_size(tokenizer: str) -> int:
    """The vocabulary a tokenizer spec names (``bpe:N``, ``gpt2``); 256, fewer FLOPs and so more steps than any
    real one, for a tokenizer file."""
    if tokenizer.startswith("bpe:") and tokenizer[4:].isdigit():
        return int(tokenizer[4:])
    return 50257 if tokenizer == "gpt2" else 256


def check_train_device(device: str) -> None:
    """``--device`` (cpu or cuda) is one this machine has (``calm.checks.check_device``)."""
    from calm.checks import check_device

    try:
        check_device(device)
    except ValueError as exc:  # the studies' --device is cpu or cuda: no auto
        raise ValueError(str(exc).replace("use cpu or auto", "use --device cpu")) from None


def check_budgets(cfg: Any, autoencoders: dict[str, dict[str, Any]]) -> None:
    """Refuse (``ValueError``) a ``cfg.budgets`` that would train a model of ``cfg.sizes`` more than ``MAX_STEPS``
    optimizer steps, or two budgets of one grid key, before anything is trained. ``autoencoders``: CALM family
    -> the ``calm.autoencoder.preset`` arguments of its autoencoder (name and fields); ``cfg``: tokenizer, sizes,
    budgets, batch_size, calm_grad_accum, force. The FLOPs are the analytic ones ``train_and_score`` trains to."""
    keys: dict[str, float] = {}
    for budget in cfg.budgets:
        if (key := f"C{float(budget):.3g}") in keys:
            raise ValueError(f"--budgets {keys[key]:g} and {budget:g} name one grid point ({key}: 3 significant "
                             "digits); give budgets that differ there")
        keys[key] = budget
    if getattr(cfg, "force", False):
        return
    vocab = _vocab_size(cfg.tokenizer)
    worst = (0, "", "")
    for family in ["baseline", *autoencoders]:
        for size in cfg.sizes:
            if family == "baseline":
                config = BaselineTask.make_config("tiny", vocab_size=vocab, overrides=SIZES[size])
                per_token, accum = baseline_flops(config).training, 1
            else:
                ae = autoencoder_preset(**{**autoencoders[family], "vocab_size": vocab}).to_dict()
                per_token = calm_flops(calm_preset("tiny", ae, **_calm_overrides(size, ae["K"]))).training
                accum = cfg.calm_grad_accum
            steps, _ = training_steps(per_token, max(cfg.budgets), cfg.batch_size, accum)
            worst = max(worst, (steps, family, size))
    if worst[0] > MAX_STEPS:
        raise ValueError(f"--budgets {max(cfg.budgets):g}: the {worst[1]} {worst[2]} model would train about "
                         f"{worst[0]:.3g} optimizer steps, more than {MAX_STEPS:,} (the default budgets train at most "
                         "about 1,700); lower --budgets, or --force to train it anyway")


def train_and_score(spec: dict[str, Any], *, settings: dict[str, Any], autoencoders: dict[str, str],
                    measure: Callable[[Any, Any, Any], dict] | None = None) -> dict:
    """Train one model to ``spec['budget']`` training FLOPs and score it on the held-out windows (one row).

    ``spec``: family, size, budget. ``settings`` holds the study's Config fields this reads (tokenizer, corpus,
    batch_size, calm_grad_accum, lr, eval_windows, brier_samples, seed, device); ``autoencoders``: family ->
    autoencoder checkpoint of every CALM family. ``measure(model, task, windows)``: more columns for the row.
    """
    import torch

    cfg = SimpleNamespace(**settings)
    torch.set_num_threads(1)
    tok = get_tokenizer(cfg.tokenizer, cfg.corpus)
    train_ids = load_token_ids(cfg.corpus, tok, "train", progress=False)
    val_ids = load_token_ids(cfg.corpus, tok, "validation", progress=False)
    family, size = spec["family"], spec["size"]
    task = make_task(family, size, len(tok), autoencoders.get(family))
    L = task.tokens_per_example
    is_calm = family != "baseline"
    per_token = (calm_flops if is_calm else baseline_flops)(task.config).training
    accum = cfg.calm_grad_accum if is_calm else 1
    assert L == WINDOW_TOKENS, f"a {family} window holds {L} tokens, not {WINDOW_TOKENS}"
    steps, step_flops = training_steps(per_token, spec["budget"], cfg.batch_size, accum)
    train_cfg = TrainConfig(steps=steps, batch_size=cfg.batch_size, grad_accum=accum, lr=cfg.lr,
                            warmup=max(1, steps // 10), val_every=10 * steps, checkpoint_every=10 * steps,
                            seed=cfg.seed, threads=1, brier_samples=cfg.brier_samples)
    t0 = time.time()
    fit = train_local(task, train_ids, train_cfg, device=cfg.device)
    seconds = time.time() - t0
    windows = torch.from_numpy(np.asarray(val_ids[: cfg.eval_windows * L], dtype=np.int64).reshape(-1, L))
    model = fit.model.eval()
    scores = evaluate_brier(model, windows, num_samples=cfg.brier_samples,
                            generator=torch.Generator(cfg.device).manual_seed(cfg.seed))
    ci = scores.interval(seed=cfg.seed)
    manifold = (model.on_manifold(windows.to(cfg.device), generator=torch.Generator(cfg.device).manual_seed(cfg.seed))
                ["on_manifold"] if is_calm else None)
    row = {"family": family, "size": size, "budget": spec["budget"], "params": model.num_parameters(),
           "steps": steps, "tokens": steps * cfg.batch_size * accum * L, "flops": steps * step_flops,
           "flops_per_token": per_token, **scores.as_dict(),
           **{f"{k}_ci_low": v[0] for k, v in ci.items()}, **{f"{k}_ci_high": v[1] for k, v in ci.items()},
           "on_manifold": manifold, "train_seconds": round(seconds, 1), "seed": cfg.seed,
           "per_window": json.dumps(np.round(scores.per_passage, 6).tolist())}
    if measure is not None:
        row.update(measure(model, task, windows))
    return row


def generation_measure(tokens: int):
    """A ``measure`` for ``train_and_score``: inference FLOPs per token and generation tokens/s (8 prompts of 16
    tokens continued by ``tokens``)."""

    def measure(model, task, windows) -> dict:
        import torch

        calm = isinstance(model, EnergyTransformer)
        prompt = windows[:8, :16].to(next(model.parameters()).device)
        gen = torch.Generator(prompt.device).manual_seed(0)
        t0 = time.perf_counter()
        with torch.no_grad():
            if calm:
                model.generate(prompt, tokens, generator=gen, coins=torch.Generator().manual_seed(1))
            else:
                model.generate(prompt, tokens, generator=gen)
        seconds = time.perf_counter() - t0
        per_token = (calm_flops if calm else baseline_flops)(task.config).inference
        return {"inference_flops_per_token": per_token, "generate_tokens_per_s": len(prompt) * tokens / seconds}

    return measure


def generation_speed(cfg: Any, autoencoders: dict[str, str], *, rounds: int = 3) -> dict[str, float]:
    """Generation tokens/s of every family at every size, measured side by side in this process (one thread,
    untrained weights: the cost of sampling does not depend on them), best of ``rounds`` interleaved rounds:
    the per-trial figures were timed on a machine shared with other trials. ``cfg``: corpus, sizes, seed,
    generate_tokens; ``autoencoders``: CALM family -> its autoencoder. ``{"<family>-<size>": tokens/s}``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _, tok = load_pretrained(next(iter(autoencoders.values())))
    ids = load_token_ids(cfg.corpus, tok, "test", progress=False)[: 8 * 16]
    prompt = torch.as_tensor(np.asarray(ids, dtype=np.int64).reshape(8, 16))
    models = {}
    for family in ["baseline", *autoencoders]:
        for size in cfg.sizes:
            torch.manual_seed(cfg.seed)
            models[f"{family}-{size}"] = make_task(family, size, len(tok), autoencoders.get(family)).build_model().eval()
    best: dict[str, float] = {}
    try:
        for _ in range(rounds):
            for key, model in models.items():
                gen = torch.Generator().manual_seed(cfg.seed)
                t0 = time.perf_counter()
                with torch.no_grad():
                    if isinstance(model, EnergyTransformer):
                        model.generate(prompt, cfg.generate_tokens, generator=gen, coins=torch.Generator().manual_seed(1))
                    else:
                        model.generate(prompt, cfg.generate_tokens, generator=gen)
                rate = len(prompt) * cfg.generate_tokens / (time.perf_counter() - t0)
                best[key] = max(best.get(key, 0.0), rate)
    finally:
        torch.set_num_threads(threads)
    return {k: round(v, 1) for k, v in best.items()}
