"""The training loop every model shares, with no Ray in it: config, step code, checkpoints, one process.

- ``TrainConfig``: optimiser, schedule, batch, logging and checkpoint cadence (one dataclass).
- ``run_loop``: the step code shared by every path (warmup + cosine lr, AdamW, clipping, NaN guard,
  validation, checkpoints, progress bar). A task (``calm.tasks``) builds the model, draws batches and
  computes the loss; the loop knows nothing about Ray or about which model it trains.
- ``save_training_state`` / ``load_training_state`` / ``newest_checkpoint``: a training checkpoint is a
  ``calm.checkpoint`` directory (``load_pretrained`` reads it) plus ``optimizer.safetensors`` and
  ``train_state.json`` (step, configs, validation history). No pickle.
- ``train_local``: train in this process (tests, experiments, ``calm.tasks.train_autoencoder``).

Determinism: the batch of step s on rank r is drawn from ``np.random.default_rng([seed, s, r])`` and the
training noise (dropouts, eps) from a torch generator seeded from the same triple, so data order is a
function of (seed, step, rank) and a resumed run continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from calm.checkpoint import load_optimizer, read_safetensors, save_optimizer, save_pretrained
from calm.checks import check_numbers
from calm.files import DamagedFileError, read_json
from calm.integrity import check_tensors

__all__ = ["OPTIMIZER_FILE", "TRAIN_STATE_FILE", "FitResult", "NonFiniteLossError", "TrainConfig", "load_training_state",
           "lr_at", "make_optimizer", "newest_checkpoint", "run_loop", "save_training_state", "step_seed",
           "train_local"]

TRAIN_STATE_FILE = "train_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


# ----------------------------------------------------------------------------------------------------------
# config


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one training run (the model's own config lives in its task)."""

    steps: int = 6000
    """total optimiser steps (a resumed run continues up to this count)"""
    batch_size: int = 256
    """sequences per worker per micro-batch (chunks of K tokens for the autoencoder)"""
    grad_accum: int = 1
    """micro-batches per optimiser step (gradients summed, losses averaged): the batch of one step is
    batch_size x grad_accum x workers sequences"""
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
        positive = ("steps", "batch_size", "grad_accum", "log_every", "val_every", "val_size", "checkpoint_every")
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
        check_numbers(self)  # finite numbers, ints that are ints (last: the checks above name their field)


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
# the loop


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


def _accumulate(task, model: nn.Module, wrapped: nn.Module, train_ids: np.ndarray, cfg: TrainConfig, step: int,
                rank: int, device: torch.device, distributed: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward and backward ``cfg.grad_accum`` micro-batches of step ``step``; the mean loss and metrics.

    Micro-batch 0 draws its batch from ``default_rng([seed, step, rank])`` and its noise from stream 1, as a
    step without accumulation does; micro-batch m > 0 from ``[seed, step, rank, m]`` and stream 100 + m. Under
    DDP only the last backward all-reduces the gradients.
    """
    n = cfg.grad_accum
    total, sums = torch.zeros((), device=device), {}
    for m in range(n):
        rng = np.random.default_rng([cfg.seed, step, rank] if m == 0 else [cfg.seed, step, rank, m])
        batch = task.sample_batch(train_ids, rng, cfg.batch_size).to(device)
        gen = torch.Generator(device=device).manual_seed(step_seed(cfg.seed, step, rank, 1 if m == 0 else 100 + m))
        sync = nullcontext() if (not distributed or m == n - 1) else wrapped.no_sync()
        with sync:
            loss, metrics = task.loss(wrapped, batch, gen)
            (loss / n if n > 1 else loss).backward()
        total = total + loss.detach()
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + torch.as_tensor(v).detach()
    if n == 1:
        return loss, metrics
    return total / n, {k: v / n for k, v in sums.items()}


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
    on_record: Callable[[dict], None] | None = None,
    progress: bool = False,
    in_ray: bool = False,
) -> FitResult:
    """Train ``model`` from ``start_step`` to ``cfg.steps``; the step code of every training path.

    With ``world_size > 1`` torch.distributed must be initialised; the model is wrapped in DDP here.
    ``on_checkpoint(step, history)`` is called on every rank every ``cfg.checkpoint_every`` steps, at the
    end and at the time limit (it must save ``model``/``optimizer`` itself). Validation runs on rank 0;
    ``on_record(record)`` is called there with each validation record as it is made (the experiment tracker).
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
        optimizer.zero_grad(set_to_none=True)
        loss, metrics = _accumulate(task, model, wrapped, train_ids, cfg, step, rank, device, distributed)
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
                if on_record is not None:
                    on_record(record)
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
    state = read_json(path, what="training state")
    for key in ("task", "step", "model_config"):
        if key not in state:
            raise DamagedFileError(path, f"the training state lacks the field {key!r}")
    if state["task"] != task.name:
        raise ValueError(f"checkpoint {directory} is from task {state['task']!r}, not {task.name!r}")
    if state["model_config"] != task.config.to_dict():
        diff = {k: (v, task.config.to_dict().get(k)) for k, v in state["model_config"].items()
                if task.config.to_dict().get(k) != v}
        raise ValueError(f"checkpoint {directory} has a different model config (checkpoint, now): {diff}")
    weights = read_safetensors(directory / "model.safetensors")
    check_tensors(directory / "model.safetensors", weights)  # a NaN checkpoint is not resumed from
    model.load_state_dict(weights, strict=True)
    load_optimizer(optimizer, model, directory / OPTIMIZER_FILE)
    return state


def newest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The training checkpoint with the highest step anywhere under ``root`` (None if there is none)."""
    best, best_key = None, None
    for path in Path(root).glob("**/" + TRAIN_STATE_FILE):
        # written atomically (os.replace), so one that cannot be read is damage, never "being written"
        state = read_json(path, what="training state",
                          fix=f"remove that checkpoint (rm -r {path.parent}) to resume from an older one")
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise DamagedFileError(path, f"the training state's step is {step!r}, not an integer",
                                   f"remove that checkpoint (rm -r {path.parent}) to resume from an older one")
        if not (path.parent / OPTIMIZER_FILE).is_file():
            continue
        key = (step, path.stat().st_mtime)
        if best_key is None or key > best_key:
            best, best_key = path.parent, key
    return best


# ----------------------------------------------------------------------------------------------------------
# one process, no Ray


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
    device: torch.device | str = "cpu",
) -> FitResult:
    """Train in this process (no Ray, no torch.distributed). Same step code as the Ray workers.

    With ``checkpoint_dir`` (needs ``tokenizer``), checkpoints go to ``checkpoint_dir/step_NNNNNNN``;
    with ``resume`` it continues from the newest of them. ``device``: where the model trains (cpu or cuda).
    """
    if checkpoint_dir is not None and tokenizer is None:
        raise ValueError("checkpoint_dir needs the tokenizer (checkpoints store tokenizer.json)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(device)
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
                      on_checkpoint=on_checkpoint if checkpoint_dir is not None else None, progress=progress,
                      device=device)
    result.model.eval()
    return result
