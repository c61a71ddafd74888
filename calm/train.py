"""Training entry point: Ray Train on N workers (CPU with gloo, or GPUs), or one plain process.

    python -m calm.train autoencoder --preset tiny --corpus kjv+shakespeare --out runs/ae-k4 \
        [--workers N] [--gpu auto|on|off] [--steps N] [--resume] [--max-failures 3] [--kl-clip X] ...
    python -m calm.train calm --ae runs/ae-k4 --preset tiny --out runs/calm-k4 [--brier-samples 8] ...
    python -m calm.train baseline --preset tiny --out runs/baseline ...

(calm and baseline must use the --tokenizer the autoencoder was trained with.)

Layout (nanoGPT/cleanrl-like, with a Ray driver):
    1. TrainConfig: optimiser, schedule, batch, logging and checkpoint cadence (one dataclass).
    2. Tasks: a small object per model kind that builds the model from its config, draws a batch from
       the token stream and computes the loss and metrics. Each lives next to its model
       (``AutoencoderTask``, ``CalmTask``, ``BaselineTask``); a new model kind is a new task class plus
       one line in ``TASKS``.
    3. ``run_loop``: the step code shared by every path (warmup + cosine lr, AdamW, clipping, NaN
       guard, validation, checkpoints, progress bar). It knows nothing about Ray.
    4. ``train_local`` / ``train_autoencoder``: one process, no Ray (tests, other modules).
    5. ``train_with_ray``: the driver (``TorchTrainer`` + ``ScalingConfig``) and ``_ray_worker``, the
       per-worker function that wraps ``run_loop`` and reports checkpoints through ``ray.train.report``.
    6. The CLI.

Determinism: the batch of step s on rank r is drawn from ``np.random.default_rng([seed, s, r])`` and the
training noise (dropouts, eps) from a torch generator seeded from the same triple, so data order is a
function of (seed, step, rank) and ``--resume`` continues exactly where the checkpoint left off.

A training checkpoint is a ``calm.checkpoint`` directory (``load_pretrained`` reads it) plus
``optimizer.safetensors`` and ``train_state.json`` (step, configs, validation history). No pickle.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from calm.autoencoder import Autoencoder, AutoencoderConfig, AutoencoderTask
from calm.baseline import BaselineTask
from calm.checkpoint import (
    load_optimizer,
    read_safetensors,
    save_optimizer,
    save_pretrained,
)
from calm.energy_transformer import CalmTask
from calm.jscc import JSCCTask

__all__ = [
    "TrainConfig",
    "AutoencoderTask",
    "TASKS",
    "TRAIN_PRESETS",
    "FitResult",
    "NonFiniteLossError",
    "run_loop",
    "train_local",
    "train_autoencoder",
    "train_with_ray",
    "newest_checkpoint",
    "save_training_state",
    "load_training_state",
    "main",
]

TRAIN_STATE_FILE = "train_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


# ----------------------------------------------------------------------------------------------------------
# 1. config


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one training run (the model's own config lives in its task)."""

    steps: int = 6000
    """total optimiser steps (a resumed run continues up to this count)"""
    batch_size: int = 256
    """sequences per worker per step (chunks of K tokens for the autoencoder)"""
    lr: float = 3e-3
    """peak learning rate"""
    warmup: int = 200
    """steps of linear warmup from 0 to lr"""
    min_lr_ratio: float = 0.1
    """cosine decay ends at lr * min_lr_ratio"""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on norms)"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.95
    """AdamW beta2"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0 disables)"""
    seed: int = 0
    """seeds model init, data order and training noise"""
    log_every: int = 25
    """progress-bar refresh interval in steps"""
    val_every: int = 500
    """validate every this many steps (and at the end)"""
    val_size: int = 4096
    """validation examples (non-overlapping chunks of the validation stream)"""
    checkpoint_every: int = 500
    """checkpoint every this many steps (and at the end)"""
    time_limit: float = 0.0
    """stop (with a checkpoint) after this many seconds of training, the cosine ending then; 0: no limit"""
    threads: int = 0
    """torch CPU threads per worker; 0 means cores / workers"""
    brier_samples: int = 2
    """calm and baseline: sampled continuations per position in validation's Brier estimates (>= 2, the
    paper's 2; more lower the noise of the estimate, which stays unbiased)"""

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "log_every", "val_every", "val_size", "checkpoint_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be a finite number > 0, got {self.lr!r}")
        if self.warmup < 0:
            raise ValueError(f"TrainConfig.warmup must be >= 0, got {self.warmup}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "time_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"TrainConfig.threads must be >= 0, got {self.threads}")
        if not isinstance(self.brier_samples, int) or self.brier_samples < 2:
            raise ValueError(f"TrainConfig.brier_samples must be an integer >= 2, got {self.brier_samples!r}")


def lr_at(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warmup, then cosine to lr*min_lr_ratio.

    With a ``time_limit`` the cosine follows whichever runs out first, steps or time (``elapsed`` seconds),
    so a time-limited run still ends annealed; such a run is not bit-reproducible.
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.time_limit > 0:
        progress = max(progress, elapsed / cfg.time_limit)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """A 63-bit seed that is a function of (seed, step, rank, stream) only."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(2, np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------------------------------------
# 2. tasks


# subcommand name -> task class. A task class has: name, config_cls (with to_dict/from_dict), presets,
# build_model(), sample_batch(ids, rng, batch_size), loss(model, batch, generator), validation_set(ids, n),
# validate(model, val_set).
TASKS: dict[str, type] = {"autoencoder": AutoencoderTask, "calm": CalmTask, "baseline": BaselineTask,
                          "jscc": JSCCTask}
# each also has ``make_config(preset, vocab_size=, pad_id=, overrides=, **cli_args)`` and ``train_presets``
# (TrainConfig defaults per preset); the language-model tasks have ``tokens_per_example``.
TRAIN_PRESETS = AutoencoderTask.train_presets  # the autoencoder's TrainConfig defaults (train_autoencoder uses them)


# ----------------------------------------------------------------------------------------------------------
# 3. the loop


class NonFiniteLossError(RuntimeError):
    """Training met a NaN or inf loss (or gradient) and stopped."""


@dataclass
class FitResult:
    """Outcome of ``run_loop``."""

    model: nn.Module
    """the trained model (unwrapped from DDP)"""
    step: int
    """optimiser steps completed"""
    history: list[dict] = field(default_factory=list)
    """one record per validation: step, train loss/acc, validation metrics, elapsed seconds"""
    stopped: str | None = None
    """why training stopped early (a non-finite loss), else None"""
    elapsed: float = 0.0
    """seconds spent in this call's loop"""


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on linear weights and none on embeddings and norm gains.

    Decoupled decay shrinks every embedding row every step, while a rare token's row is only trained when
    the token occurs; with a tied output layer that erases rare tokens, so embeddings are not decayed.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in embeddings]
    no_decay = [p for p in model.parameters() if p.dim() < 2 or id(p) in embeddings]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def _make_progress(total: int, initial: int, in_ray: bool):
    if in_ray:
        from ray.experimental.tqdm_ray import tqdm as tqdm_ray

        return tqdm_ray(total=total, desc="train", position=0) if initial == 0 else _RayBar(total, initial)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, mininterval=1.0)


class _RayBar:
    """tqdm_ray has no ``initial``: advance it once to the resumed step."""

    def __init__(self, total: int, initial: int):
        from ray.experimental.tqdm_ray import tqdm as tqdm_ray

        self.bar = tqdm_ray(total=total, desc="train", position=0)
        self.bar.update(initial)

    def update(self, n: int) -> None:
        self.bar.update(n)

    def set_description(self, text: str) -> None:
        self.bar.set_description(text)

    def close(self) -> None:
        self.bar.close()


def run_loop(
    task,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_ids: np.ndarray,
    val_ids: np.ndarray | None,
    cfg: TrainConfig,
    *,
    start_step: int = 0,
    history: list[dict] | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    on_checkpoint: Callable[[int, list[dict]], None] | None = None,
    progress: bool = False,
    in_ray: bool = False,
) -> FitResult:
    """Train ``model`` from ``start_step`` to ``cfg.steps``; the step code of every training path.

    With ``world_size > 1`` torch.distributed must be initialised; the model is wrapped in DDP here.
    ``on_checkpoint(step, history)`` is called on every rank every ``cfg.checkpoint_every`` steps, at the
    end and at the time limit (it must save ``model``/``optimizer`` itself). Validation runs on rank 0.
    A NaN or inf loss or gradient norm on any rank stops every rank before the optimiser step, so the
    weights and the last checkpoint stay finite; the result's ``stopped`` says where.
    """
    device = torch.device(device)
    distributed = world_size > 1
    if distributed:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        wrapped = model
    history = list(history or [])
    if hasattr(task, "brier_samples"):  # the language-model tasks' validation draws this many samples
        task.brier_samples = cfg.brier_samples
    val_set = task.validation_set(val_ids, cfg.val_size).to(device) if (val_ids is not None and rank == 0) else None
    bar = _make_progress(cfg.steps, start_step, in_ray) if (progress and rank == 0) else None
    model.train()
    t0 = time.time()
    base_elapsed = history[-1]["elapsed"] if history else 0.0  # elapsed is cumulative over resumes
    clock = base_elapsed  # rank 0's elapsed seconds, shared by the all-reduce so every rank uses one lr
    step = start_step
    stopped = None
    running: dict[str, float] = {}
    shown = start_step
    while step < cfg.steps:
        # ---- one optimiser step; batch and noise are functions of (seed, step, rank)
        lr = lr_at(step, cfg, clock)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rng = np.random.default_rng([cfg.seed, step, rank])
        batch = task.sample_batch(train_ids, rng, cfg.batch_size).to(device)
        gen = torch.Generator(device=device).manual_seed(step_seed(cfg.seed, step, rank, 1))
        loss, metrics = task.loss(wrapped, batch, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        else:
            grad_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
        # one small all-reduce carries the logged means and the stop flags of every rank
        finite = bool(torch.isfinite(loss.detach()).item() and torch.isfinite(grad_norm).item())
        now = base_elapsed + time.time() - t0 if rank == 0 else 0.0
        timeout = rank == 0 and cfg.time_limit > 0 and now >= cfg.time_limit
        names = ["loss", *metrics]
        stats = torch.stack([loss.detach().float(), *[v.float() for v in metrics.values()]]).cpu()
        flags = torch.tensor([now, 0.0 if finite else 1.0, 1.0 if timeout else 0.0], dtype=torch.float32)
        packed = torch.cat([torch.nan_to_num(stats, nan=0.0, posinf=0.0, neginf=0.0), flags])
        if distributed:
            packed = packed.to(device)
            dist.all_reduce(packed)
            packed = packed.cpu()
            packed[: len(names)] /= world_size
        clock = float(packed[-3])
        if packed[-2] > 0:
            stopped = (f"non-finite loss or gradient at step {step + 1} (loss {loss.item():.4g}, grad norm "
                       f"{float(grad_norm):.4g} on rank {rank}); training stopped before that update; the last "
                       f"good checkpoint is kept")
            break
        optimizer.step()
        step += 1
        for name, value in zip(names, packed[: len(names)].tolist()):
            running[name] = value
        if bar is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            bar.update(step - shown)
            shown = step
            bar.set_description(f"train loss {running['loss']:.4f} acc {running.get('acc', float('nan')):.4f}")
        timed_out = packed[-1] > 0
        last = step == cfg.steps or timed_out
        if step % cfg.val_every == 0 or last:
            record = {"step": step, "elapsed": round(base_elapsed + time.time() - t0, 2), "lr": lr,
                      **{f"train_{k}": round(v, 6) for k, v in running.items()}}
            if val_set is not None:
                record.update(task.validate(model, val_set))
                model.train()
            if rank == 0:
                history.append(record)
                if progress:
                    print(json.dumps(record), flush=True)
        if on_checkpoint is not None and (step % cfg.checkpoint_every == 0 or last):
            on_checkpoint(step, history)
        if timed_out:
            break
    if bar is not None:
        bar.close()
    return FitResult(model=model, step=step, history=history, stopped=stopped, elapsed=time.time() - t0)


# ----------------------------------------------------------------------------------------------------------
# checkpoints of a training run


def save_training_state(directory: str | os.PathLike, task, model: nn.Module, optimizer, tokenizer, *,
                        step: int, cfg: TrainConfig, history: list[dict], world_size: int) -> Path:
    """Write a resumable checkpoint: a ``calm.checkpoint`` directory + optimizer + ``train_state.json``."""
    directory = Path(directory)
    save_pretrained(model, directory, tokenizer)
    save_optimizer(optimizer, model, directory / OPTIMIZER_FILE)
    state = {
        "task": task.name,
        "step": step,
        "world_size": world_size,
        "train_config": asdict(cfg),
        "model_config": task.config.to_dict(),
        "history": history,
    }
    tmp = directory / (TRAIN_STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, directory / TRAIN_STATE_FILE)
    return directory


def load_training_state(directory: str | os.PathLike, task, model: nn.Module, optimizer) -> dict:
    """Load weights and optimizer state of a checkpoint into ``model``/``optimizer``; return its state."""
    directory = Path(directory)
    path = directory / TRAIN_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a training checkpoint")
    state = json.loads(path.read_text())
    if state["task"] != task.name:
        raise ValueError(f"checkpoint {directory} is from task {state['task']!r}, not {task.name!r}")
    if state["model_config"] != task.config.to_dict():
        diff = {k: (v, task.config.to_dict().get(k)) for k, v in state["model_config"].items()
                if task.config.to_dict().get(k) != v}
        raise ValueError(f"checkpoint {directory} has a different model config (checkpoint, now): {diff}")
    model.load_state_dict(read_safetensors(directory / "model.safetensors"), strict=True)
    load_optimizer(optimizer, model, directory / OPTIMIZER_FILE)
    return state


def newest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The training checkpoint with the highest step anywhere under ``root`` (None if there is none)."""
    best, best_key = None, None
    for path in Path(root).glob("**/" + TRAIN_STATE_FILE):
        try:
            step = json.loads(path.read_text())["step"]
        except (OSError, ValueError, KeyError):
            continue  # a checkpoint being written or a damaged one
        if not (path.parent / OPTIMIZER_FILE).is_file():
            continue
        key = (step, path.stat().st_mtime)
        if best_key is None or key > best_key:
            best, best_key = path.parent, key
    return best


# ----------------------------------------------------------------------------------------------------------
# 4. one process, no Ray


def train_local(
    task,
    train_ids: np.ndarray,
    cfg: TrainConfig,
    *,
    val_ids: np.ndarray | None = None,
    tokenizer=None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = False,
) -> FitResult:
    """Train in this process (no Ray, no torch.distributed). Same step code as the Ray workers.

    With ``checkpoint_dir`` (needs ``tokenizer``), checkpoints go to ``checkpoint_dir/step_NNNNNNN``;
    with ``resume`` it continues from the newest of them.
    """
    if checkpoint_dir is not None and tokenizer is None:
        raise ValueError("checkpoint_dir needs the tokenizer (checkpoints store tokenizer.json)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    optimizer = make_optimizer(model, cfg)
    start, history = 0, []
    if resume:
        ckpt = newest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
        if ckpt is None:
            raise FileNotFoundError(f"resume: no training checkpoint under {checkpoint_dir}")
        state = load_training_state(ckpt, task, model, optimizer)
        start, history = state["step"], state["history"]

    def on_checkpoint(step: int, hist: list[dict]) -> None:
        save_training_state(Path(checkpoint_dir) / f"step_{step:07d}", task, model, optimizer, tokenizer,
                            step=step, cfg=cfg, history=hist, world_size=1)

    result = run_loop(task, model, optimizer, train_ids, val_ids, cfg, start_step=start, history=history,
                      on_checkpoint=on_checkpoint if checkpoint_dir is not None else None, progress=progress)
    result.model.eval()
    return result


def train_autoencoder(
    config: AutoencoderConfig,
    train_ids: np.ndarray,
    *,
    steps: int,
    val_ids: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = False,
    **train_overrides,
) -> Autoencoder:
    """A briefly trained autoencoder, in this process, in seconds for a tiny config.

    Args:
        config: the model config (its vocab_size must cover ``train_ids``).
        train_ids: flat int token stream.
        steps: optimiser steps.
        val_ids: optional stream to validate on (history is printed when ``progress``).
        seed: seeds init, data order and noise.
        **train_overrides: any other ``TrainConfig`` field (lr, batch_size, warmup, ...).

    Returns:
        The trained model in eval mode; its ``trained_steps`` attribute holds the optimiser steps that ran
        (fewer than ``steps`` when a ``time_limit`` override stopped training).

    Raises:
        NonFiniteLossError: the loss became NaN or inf.
    """
    defaults = {**TRAIN_PRESETS["tiny"], "warmup": min(TRAIN_PRESETS["tiny"]["warmup"], max(1, steps // 10))}
    cfg = TrainConfig(**{**defaults, "steps": steps, "seed": seed, "val_every": steps, "checkpoint_every": steps,
                         **train_overrides})
    result = train_local(AutoencoderTask(config), train_ids, cfg, val_ids=val_ids, progress=progress)
    if result.stopped:
        raise NonFiniteLossError(result.stopped)
    result.model.trained_steps = result.step
    return result.model


# ----------------------------------------------------------------------------------------------------------
# 5. Ray Train: per-worker function and driver


def _ray_worker(config: dict) -> None:
    """Per-worker training function for ``TorchTrainer`` (runs on every rank)."""
    import ray
    import ray.train
    import ray.train.torch

    from calm.tokenizer import load_tokenizer

    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TrainConfig(**config["train_config"])
    task = TASKS[config["task"]](TASKS[config["task"]].config_cls.from_dict(config["model_config"]))
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world_size))
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    train_ids = ray.get(config["train_ids"])
    val_ids = ray.get(config["val_ids"]) if config["val_ids"] is not None else None
    tokenizer = load_tokenizer(config["tokenizer_path"]) if rank == 0 else None

    # seeding: the same init on every rank (DDP broadcasts rank 0's weights anyway)
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(device)
    optimizer = make_optimizer(model, cfg)
    start, history = 0, []
    # a worker restart inside this run (FailureConfig) resumes from Ray's latest checkpoint
    ray_ckpt = ray.train.get_checkpoint()
    if ray_ckpt is not None:
        with ray_ckpt.as_directory() as d:
            state = load_training_state(d, task, model, optimizer)
            start, history = state["step"], state["history"]
    elif config["resume_from"] is not None:
        state = load_training_state(config["resume_from"], task, model, optimizer)
        start, history = state["step"], state["history"]
    if start and rank == 0:
        source = "this run's newest checkpoint after a worker-group restart" if ray_ckpt is not None else \
            config["resume_from"]
        print(f"[calm.train] resuming at step {start} of {cfg.steps} from {source}", flush=True)

    def on_checkpoint(step: int, hist: list[dict]) -> None:
        metrics = {"step": step, **(hist[-1] if hist and hist[-1]["step"] == step else {})}
        name = f"step_{step:07d}"
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_training_state(tmp, task, model, optimizer, tokenizer, step=step, cfg=cfg, history=hist,
                                    world_size=world_size)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=name)
        else:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)

    result = run_loop(task, model, optimizer, train_ids, val_ids, cfg, start_step=start, history=history,
                      rank=rank, world_size=world_size, device=device, on_checkpoint=on_checkpoint,
                      progress=config["progress"], in_ray=True)
    # the stop reason reaches the driver through a status file (Ray keeps only checkpointed metrics)
    if rank == 0:
        status = {"step": result.step, "stopped": result.stopped, "elapsed": result.elapsed}
        Path(config["status_path"]).write_text(json.dumps(status) + "\n")


def _resolve_gpu(gpu: str) -> bool:
    if gpu not in ("auto", "on", "off"):
        raise ValueError(f"--gpu must be auto, on or off, got {gpu!r}")
    if gpu == "off":
        return False
    available = torch.cuda.is_available()
    if gpu == "on" and not available:
        raise RuntimeError("--gpu on: no CUDA device is visible to torch")
    return available


def train_with_ray(
    task,
    cfg: TrainConfig,
    *,
    tokenizer,
    train_ids: np.ndarray,
    val_ids: np.ndarray | None,
    out: str | os.PathLike,
    workers: int = 2,
    gpu: str = "auto",
    resume: bool = False,
    progress: bool = True,
    max_failures: int = 3,
) -> FitResult:
    """Driver: train ``task`` with Ray Train on ``workers`` workers and export ``out`` (HF-style).

    Checkpoints live under ``out/ray/<run>/step_NNNNNNN``; ``resume`` continues from the newest one
    (same step, same data order). When training ends normally the final model is written to ``out``
    with ``save_pretrained`` (``model.safetensors``, ``config.json``, ``tokenizer.json``).
    A worker that dies (preempted node, OOM kill) restarts the worker group up to ``max_failures``
    times; the new group resumes from this run's newest checkpoint, with the same data order.

    Raises:
        NonFiniteLossError: a NaN/inf loss stopped training; the message names the last good checkpoint.
        FileExistsError: ``out`` already has checkpoints and ``resume`` is False.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from calm.ray_runtime import init_ray, train_logging_config, train_worker_env
    from calm.tokenizer import save_tokenizer

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if max_failures < 0:
        raise ValueError(f"max_failures must be >= 0, got {max_failures}")
    use_gpu = _resolve_gpu(gpu)
    out = Path(out).resolve()
    storage = out / "ray"
    previous = newest_checkpoint(storage) if storage.exists() else None
    if resume and previous is None:
        raise FileNotFoundError(f"--resume: no training checkpoint under {storage}")
    if previous is not None and not resume:
        raise FileExistsError(f"{out} already holds checkpoints (newest {previous}); pass --resume to "
                              "continue, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "ray" / "tokenizer"
    save_tokenizer(tokenizer, tok_dir)

    status_path = storage / f"status-{os.getpid()}-{time.time_ns()}.json"
    # joins a cluster under `ray submit`, else a local Ray (loopback only)
    started_ray = init_ray(address="auto", num_cpus=max(os.cpu_count() or 1, workers + 1))
    try:
        loop_config = {
            "task": task.name,
            "model_config": task.config.to_dict(),
            "train_config": asdict(cfg),
            "train_ids": ray.put(np.ascontiguousarray(train_ids, dtype=np.int32)),
            "val_ids": ray.put(np.ascontiguousarray(val_ids, dtype=np.int32)) if val_ids is not None else None,
            "tokenizer_path": str(tok_dir / "tokenizer.json"),
            "resume_from": str(previous) if resume else None,
            "use_gpu": use_gpu,
            "progress": progress,
            "status_path": str(status_path),
        }
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         resources_per_worker=None if use_gpu else {"CPU": 1}),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                                 storage_path=str(storage),
                                 checkpoint_config=CheckpointConfig(num_to_keep=None),
                                 failure_config=FailureConfig(max_failures=max_failures),
                                 logging_config=train_logging_config(),
                                 worker_runtime_env=train_worker_env()),
        )
        result = trainer.fit()
    finally:
        if started_ray:
            ray.shutdown()
    if result.error is not None:
        raise RuntimeError(f"Ray Train failed: {result.error}") from result.error
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    newest = newest_checkpoint(storage)
    if status.get("stopped"):
        raise NonFiniteLossError(f"{status['stopped']}: {newest}")
    if newest is None:
        raise RuntimeError(f"training finished without a checkpoint under {storage}")
    # export: the newest checkpoint's weights, as an HF-style directory at out
    model = task.build_model()
    state = load_training_state(newest, task, model, make_optimizer(model, cfg))
    save_pretrained(model, out, tokenizer)
    (out / TRAIN_STATE_FILE).write_text(json.dumps({k: v for k, v in state.items()}, indent=1) + "\n")
    model.eval()
    return FitResult(model=model, step=state["step"], history=state["history"], stopped=None)


# ----------------------------------------------------------------------------------------------------------
# 6. CLI


def _field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings under each field of a dataclass (used as argparse help)."""
    docs: dict[str, str] = {}
    body = ast.parse(inspect.getsource(cls)).body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = str(nxt.value.value)
    return docs


def _add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """``--field-name`` for every field of ``cls`` (default None: the preset decides)."""
    docs = _field_docs(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        kind = {"int": int, "float": float, "str": str}.get(str(f.type), None)
        if kind is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, type=kind, default=None, help=docs.get(f.name, f.name))


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m calm.train`` parser: one subcommand per task."""
    parser = argparse.ArgumentParser(prog="python -m calm.train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="task", required=True)
    for name, task_cls in TASKS.items():
        p = sub.add_parser(name, help=f"train the {name}")
        p.add_argument("--preset", default="tiny", choices=sorted(task_cls.presets), help="model + training preset")
        p.add_argument("--corpus", default="kjv+shakespeare", help="corpus name (see calm.data)")
        p.add_argument("--tokenizer", default="bpe:8192", help="tokenizer spec (see calm.tokenizer)")
        p.add_argument("--out", required=True, help="run directory: checkpoints under out/ray, final model in out")
        p.add_argument("--workers", type=int, default=2, help="Ray Train workers (processes)")
        p.add_argument("--gpu", default="auto", choices=["auto", "on", "off"], help="use GPUs (auto: if visible)")
        p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under out")
        p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
        p.add_argument("--max-failures", type=int, default=3,
                       help="worker-group restarts after a worker dies (each resumes from the newest checkpoint)")
        _add_dataclass_args(p, TrainConfig)
        _add_dataclass_args(p, task_cls.config_cls, skip=("vocab_size", "pad_id", "autoencoder_path"))
        if name in ("calm", "jscc"):
            p.add_argument("--ae", required=True, help="trained autoencoder checkpoint directory (kept frozen)")
    return parser


def configs_from_args(args: argparse.Namespace, task_cls, *, vocab_size: int, pad_id: int):
    """(model config, TrainConfig) from a preset plus the flags that were given."""
    train_names = {f.name for f in fields(TrainConfig)}
    model_names = {f.name for f in fields(task_cls.config_cls)}
    model_over = {k: v for k, v in vars(args).items() if k in model_names and v is not None}
    train_over = {k: v for k, v in vars(args).items() if k in train_names and v is not None}
    model_cfg = task_cls.make_config(args.preset, vocab_size=vocab_size, pad_id=pad_id, overrides=model_over,
                                     ae=getattr(args, "ae", None))
    train_cfg = TrainConfig(**{**task_cls.train_presets.get(args.preset, {}), **train_over})
    return model_cfg, train_cfg


def main(argv: list[str] | None = None) -> FitResult:
    """CLI entry point (see the module docstring)."""
    from calm.data import load_token_ids
    from calm.tokenizer import get_tokenizer

    args = build_parser().parse_args(argv)
    task_cls = TASKS[args.task]
    tokenizer = get_tokenizer(args.tokenizer, corpus=args.corpus)
    model_cfg, train_cfg = configs_from_args(args, task_cls, vocab_size=len(tokenizer),
                                             pad_id=int(tokenizer.pad_token_id))
    if args.resume:
        ckpt = newest_checkpoint(Path(args.out) / "ray")
        if ckpt is not None:
            # a resumed run keeps its model config; flags may only change the training schedule
            stored = json.loads((ckpt / TRAIN_STATE_FILE).read_text())
            model_cfg = task_cls.config_cls.from_dict(stored["model_config"])
    task = task_cls(model_cfg)
    train_ids = load_token_ids(args.corpus, tokenizer, "train")
    val_ids = load_token_ids(args.corpus, tokenizer, "validation")
    # derived quantities, printed once
    with torch.device("meta"):
        n_params = task.build_model().num_parameters()
    tokens_per_step = train_cfg.batch_size * args.workers * getattr(task, "tokens_per_example", getattr(model_cfg, "K", 1))
    print(json.dumps({"task": args.task, "preset": args.preset, "params": n_params, "workers": args.workers,
                      "train_tokens": int(len(train_ids)), "val_tokens": int(len(val_ids)),
                      "tokens_per_step": tokens_per_step, "model_config": model_cfg.to_dict(),
                      "train_config": asdict(train_cfg)}), flush=True)
    result = train_with_ray(task, train_cfg, tokenizer=tokenizer, train_ids=train_ids, val_ids=val_ids,
                            out=args.out, workers=args.workers, gpu=args.gpu, resume=args.resume,
                            progress=args.progress, max_failures=args.max_failures)
    if result.history:
        print(json.dumps({"final": result.history[-1], "out": str(Path(args.out).resolve())}), flush=True)
    return result


if __name__ == "__main__":
    try:
        main()
    except NonFiniteLossError as exc:
        print(f"calm.train: stopped: {exc}", file=sys.stderr)
        sys.exit(1)
