"""Where would CALM win? Brier-1 and BrierLM against training FLOPs for CALM (K = 2, 4) and the token baseline.

    python -m experiments.calm_scaling                  # 3 families x 3 sizes x 3 budgets on local Ray
    python -m experiments.calm_scaling --help
    python -m experiments.calm_scaling --budgets 1e12 2e12 4e12 8e12   # one more budget: same run, more rows

One trial trains one model from scratch to one training-FLOPs budget (its own warm-up and cosine schedule,
Chinchilla-style, not a checkpoint along a longer run) and scores it on the same held-out windows: Brier-1..4
and BrierLM with per-window estimates (for the bootstrap), CALM also with the on-manifold fraction of its head's
samples. Families: ``baseline`` (the token transformer), ``calm-k2`` (the tiny-k2 energy transformer on a K = 2,
l = 16 autoencoder), ``calm-k4`` (the tiny one on K = 4, l = 32); sizes ``xs``/``s``/``m`` scale the
backbone's width and depth alike in every family (``m`` is the tiny preset). The autoencoders are trained once
and cached under runs_dir; their training FLOPs are reported, not charged (as the paper counts).

``experiments.calm_scaling_report`` fits, per family, a power law ``1 - score = a C^-b`` to the compute
frontier (the best size at each budget) with a bootstrap over held-out windows, plots it and extrapolates
where CALM's line crosses the baseline's (or says it cannot). Trials run as a Ray Tune grid (one CPU each,
``max_concurrent`` at once); a killed run resumes where it stopped; rows land in results/<run>/.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np

from experiments.sweep import (
    NOT_IN_HASH,
    SweepConfig,
    SweepResult,
    cli,
    collect_rows,
    connect_ray,
    git_commit,
    missing_trials,
    open_run_dir,
    print_outcome,
    run_trials,
    settings_hash,
    write_frame,
)

__all__ = ["COLUMNS", "Config", "SIZES", "WINDOW_TOKENS", "main", "make_task", "train_and_score", "trial_grid"]

Family = Literal["baseline", "calm-k2", "calm-k4"]
FAMILIES = ("baseline", "calm-k2", "calm-k4")
# backbone sizes of the study (every family); m = the tiny presets of calm.baseline / calm.energy_transformer
SIZES: dict[str, dict[str, int]] = {
    "xs": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=176),
    "s": dict(hidden_size=96, num_layers=3, num_heads=3, intermediate_size=256),
    "m": dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=352),
}
# the autoencoder of each CALM family: (preset, overrides); kl 0.01 widens the posterior the head learns from
AUTOENCODERS = {"calm-k2": ("tiny-k2", {"kl_weight": 0.01}), "calm-k4": ("tiny", {"latent_dim": 32, "kl_weight": 0.01})}
SCORES = ("brier_1", "brier_2", "brier_3", "brier_4", "brier_lm")
COLUMNS = ["family", "size", "budget", "params", "steps", "tokens", "flops", "flops_per_token", *SCORES,
           *[f"{s}_ci_low" for s in SCORES], *[f"{s}_ci_high" for s in SCORES], "on_manifold", "train_seconds",
           "seed", "per_window"]


@dataclass
class Config(SweepConfig):
    """The scaling study. Grid axes: families x sizes x budgets."""

    tokenizer: str = "bpe:2048"
    """tokenizer of every model (a small vocabulary keeps CPU training cheap)"""
    ae_steps: int = 1500
    """autoencoder training steps (K = 2 and K = 4, once each, cached under runs_dir)"""
    families: tuple[Family, ...] = FAMILIES
    """model families to train"""
    sizes: tuple[Literal["xs", "s", "m"], ...] = ("xs", "s", "m")
    """backbone sizes (SIZES: xs d=64 x 2 layers, s d=96 x 3, m d=128 x 4 = the tiny presets)"""
    budgets: tuple[float, ...] = (1e12, 2.5e12, 6.25e12)
    """training-FLOPs budgets (analytic, calm.flops; each model is trained from scratch to each)"""
    batch_size: int = 8
    """windows of 256 tokens per micro-batch, every family"""
    calm_grad_accum: int = 4
    """CALM micro-batches per optimiser step (K = 2: 4,096 patches per step)"""
    lr: float = 2e-3
    """peak learning rate (10% warm-up, cosine to 10%)"""
    eval_windows: int = 32
    """held-out windows of 256 tokens every model is scored on (the bootstrap resamples them)"""
    brier_samples: int = 4
    """sampled continuations per position in the Brier estimates"""
    seed: int = 0
    """seed of every model's initialisation and batches"""
    device: Literal["cpu", "cuda"] = "cpu"
    """where each model trains and is scored (cuda: scripts/gpu_check.sh's larger points; the CPU study never
    needs it). Not part of the run name: give a cuda run its own --run-name"""
    max_concurrent: int = 2
    """models training at once (one CPU thread each)"""
    trial_cpus: float = 1.0
    """logical CPUs per trial"""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "calm_grad_accum", "eval_windows"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.eval_windows < 2:
            raise ValueError("eval_windows must be >= 2 (the intervals bootstrap over windows)")
        if self.brier_samples < 2:
            raise ValueError(f"brier_samples must be >= 2, got {self.brier_samples}")
        if not self.budgets or any(not (math.isfinite(b) and b > 0) for b in self.budgets):
            raise ValueError(f"budgets must be positive FLOPs, got {self.budgets}")
        for name, allowed in (("families", FAMILIES), ("sizes", tuple(SIZES))):
            values = getattr(self, name)
            if not values or any(v not in allowed for v in values):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {values}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


# the grid axes (more budgets add rows to the same run) and the device (scripts/gpu_check.sh names its own run)
_NOT_IN_HASH = NOT_IN_HASH | {"families", "sizes", "budgets", "checkpoint", "agent_pairs", "num_gpus", "device"}


def trial_grid(cfg: Config) -> list[dict[str, Any]]:
    """One point per (family, size, budget), cheapest budget first (a short run has the small models)."""
    grid = [{"family": f, "size": s, "budget": float(b)} for b in sorted(cfg.budgets) for f in cfg.families
            for s in cfg.sizes]
    for spec in grid:
        spec["key"] = f"{spec['family']}-{spec['size']}-C{spec['budget']:.3g}"
    return grid


WINDOW_TOKENS = 256
"""tokens per training and scoring window of every family (CALM: WINDOW_TOKENS / K patches)"""


def make_task(family: str, size: str, vocab_size: int, ae_dir: str | None):
    """The training task (calm.lm_task.WindowTask) of one family at one size.

    ``baseline`` is the token transformer; any other family is an energy transformer on the autoencoder
    ``ae_dir`` (its K sets the patches per window: WINDOW_TOKENS / K, so every family sees 256 tokens).
    """
    from calm.baseline import BaselineTask
    from calm.checkpoint import autoencoder_config_for
    from calm.energy_transformer import CalmTask

    dims = SIZES[size]
    if family == "baseline":
        return BaselineTask(BaselineTask.make_config("tiny", vocab_size=vocab_size, overrides=dims))
    if ae_dir is None:
        raise ValueError(f"family {family!r} needs an autoencoder checkpoint")
    K = int(autoencoder_config_for(ae_dir, vocab_size, "calm")["K"])
    if WINDOW_TOKENS % K:
        raise ValueError(f"K={K} does not divide the {WINDOW_TOKENS}-token window")
    overrides = {**dims, "head_intermediate_size": dims["hidden_size"], "max_patches": WINDOW_TOKENS // K}
    return CalmTask(CalmTask.make_config("tiny", vocab_size=vocab_size, overrides=overrides, ae=ae_dir))


def train_and_score(spec: dict[str, Any], *, settings: dict[str, Any], autoencoders: dict[str, str],
                    measure: Callable[[Any, Any, Any], dict] | None = None) -> dict:
    """Train one model to ``spec['budget']`` training FLOPs and score it on the held-out windows (one row).

    ``settings`` holds the fields of ``Config`` this reads (tokenizer, corpus, batch_size, calm_grad_accum,
    lr, eval_windows, brier_samples, seed, device); other experiments' configs that share them train the same
    way (``experiments.scaling_k``). ``measure(model, task, windows)``: more columns for the row.
    """
    import torch

    from calm.brier import evaluate_brier
    from calm.data import load_token_ids
    from calm.flops import baseline_flops, calm_flops
    from calm.loop import TrainConfig, train_local
    from calm.tokenizer import get_tokenizer

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
    step_flops = per_token * cfg.batch_size * accum * L
    steps = max(1, math.ceil(spec["budget"] / step_flops))
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


def _trial(spec: dict[str, Any], **shared: Any) -> dict:
    return train_and_score(spec, **shared)


def main(cfg: Config) -> SweepResult:
    """Train the missing grid points, then write results.csv, the fits (fits.json) and the plot."""
    from experiments.autoencoder import checkpoint_id, ensure_checkpoint
    from experiments.calm_scaling_report import write_report

    t0 = time.time()
    settings = settings_hash(cfg, _NOT_IN_HASH)
    run_name = cfg.run_name or f"calm-scaling-{settings}"
    run_dir = open_run_dir(cfg.results_dir, run_name, settings, None)
    autoencoders = {}
    for family in cfg.families:
        if family != "baseline":
            preset, overrides = AUTOENCODERS[family]
            path = ensure_checkpoint(replace(cfg, ae_preset=preset, checkpoint=None), overrides=overrides)
            autoencoders[family] = str(path)
    (run_dir / "config.json").write_text(json.dumps(
        {**asdict(cfg), "settings_hash": settings, "git_commit": git_commit(),
         "autoencoders": {f: checkpoint_id(Path(p)) for f, p in autoencoders.items()}}, indent=2) + "\n")
    grid = trial_grid(cfg)
    missing = missing_trials(grid, run_dir, cfg.max_trials)
    print(f"[run] {run_dir}: {len(grid) - len(missing)} of {len(grid)} models done; training {len(missing)} "
          f"({cfg.max_concurrent} at once)", flush=True)
    failed: list[str] = []
    if missing:
        import ray

        started = connect_ray(cfg.address, cfg.num_cpus)
        try:
            failed = run_trials(_trial, missing, run_dir, trial_cpus=cfg.trial_cpus, max_concurrent=cfg.max_concurrent,
                                shared={"settings": asdict(cfg), "autoencoders": autoencoders})
        finally:
            if started:
                ray.shutdown()
    frame = collect_rows(grid, run_dir, COLUMNS)
    write_frame(frame, run_dir)
    if len(frame):
        write_report(frame, run_dir, plots=cfg.plots, seed=cfg.seed)
    ran = [s["key"] for s in missing if (run_dir / "rows" / f"{s['key']}.json").is_file()]
    print_outcome(len(frame), len(grid), run_dir, time.time() - t0, failed)
    return SweepResult(run_dir=run_dir, ran=ran, failed=failed, rows=len(frame), total=len(grid))


if __name__ == "__main__":
    raise SystemExit(cli(main, Config, prog="python -m experiments.calm_scaling",
                         description=__doc__.split("\n\n")[0]))
