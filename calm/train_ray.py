"""Ray Train: the driver (``TorchTrainer`` + ``ScalingConfig``) and the per-worker function around ``run_loop``.

``train_with_ray`` trains a task (``calm.tasks``) on N workers (CPU with gloo, or GPUs with NCCL), with
checkpoints reported through ``ray.train.report``, worker-group restarts (``FailureConfig``) that resume
from the newest checkpoint, and exports the final model HF-style. ``python -m calm.train`` calls it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from calm.checkpoint import save_pretrained
from calm.loop import (
    TRAIN_STATE_FILE,
    FitResult,
    NonFiniteLossError,
    TrainConfig,
    load_training_state,
    make_optimizer,
    newest_checkpoint,
    run_loop,
    save_training_state,
)

__all__ = ["check_out", "train_with_ray"]

def _ray_worker(config: dict) -> None:
    """Per-worker training function for ``TorchTrainer`` (runs on every rank)."""
    import ray
    import ray.train
    import ray.train.torch

    from calm.tokenizer import load_tokenizer

    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TrainConfig(**config["train_config"])
    # the class itself travels (pickled by reference), so a task registered outside calm is known here too
    task_cls = config["task_cls"]
    task = task_cls(task_cls.config_cls.from_dict(config["model_config"]))
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

    on_record = None
    if rank == 0 and config.get("tracking"):  # the training curve reaches MLflow as it is made, from rank 0
        from calm.tracking import reopen_run

        tracker = reopen_run(config["tracking"]["uri"], config["tracking"]["run_id"])

        def on_record(record: dict) -> None:
            try:
                tracker.log_history([record])
            except Exception as exc:  # noqa: BLE001 - a tracker that fails never stops training
                print(f"[calm.train] tracking: step {record.get('step')} not logged ({type(exc).__name__}: {exc})",
                      flush=True)

    result = run_loop(task, model, optimizer, train_ids, val_ids, cfg, start_step=start, history=history,
                      rank=rank, world_size=world_size, device=device, on_checkpoint=on_checkpoint,
                      on_record=on_record, progress=config["progress"], in_ray=True)
    # the stop reason reaches the driver through a status file (Ray keeps only checkpointed metrics)
    if rank == 0:
        status = {"step": result.step, "stopped": result.stopped, "elapsed": result.elapsed}
        Path(config["status_path"]).write_text(json.dumps(status) + "\n")


def check_out(out: str | os.PathLike, resume: bool) -> Path | None:
    """The newest training checkpoint under ``out/ray`` to resume from (None: a new run).

    Raises:
        FileNotFoundError: ``resume`` without a checkpoint there.
        FileExistsError: checkpoints there, and ``resume`` not given (a run is never overwritten by accident).
    """
    out = Path(out).resolve()
    storage = out / "ray"
    previous = newest_checkpoint(storage) if storage.exists() else None
    if resume and previous is None:
        raise FileNotFoundError(f"--resume: no training checkpoint under {storage}")
    if previous is not None and not resume:
        raise FileExistsError(f"{out} already holds checkpoints (newest {previous}); pass --resume to "
                              "continue, or choose another --out")
    return previous


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
    tracking: dict | None = None,
) -> FitResult:
    """Driver: train ``task`` with Ray Train on ``workers`` workers and export ``out`` (HF-style).

    Checkpoints live under ``out/ray/<run>/step_NNNNNNN``; ``resume`` continues from the newest one
    (same step, same data order). When training ends normally the final model is written to ``out``
    with ``save_pretrained`` (``model.safetensors``, ``config.json``, ``tokenizer.json``).
    A worker that dies (preempted node, OOM kill) restarts the worker group up to ``max_failures``
    times; the new group resumes from this run's newest checkpoint, with the same data order.

    Raises:
    ``tracking``: ``{"uri", "run_id"}`` of an MLflow run that rank 0 logs each validation record to as it is made
    (``calm.tracking``; the store must be reachable from the workers: a server on a cluster).

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
    previous = check_out(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "ray" / "tokenizer"
    save_tokenizer(tokenizer, tok_dir)

    status_path = storage / f"status-{os.getpid()}-{time.time_ns()}.json"
    # joins a cluster under `ray submit`, else a local Ray (loopback only)
    started_ray = init_ray(address="auto", num_cpus=max(os.cpu_count() or 1, workers + 1))
    try:
        loop_config = {
            "task_cls": type(task),
            "model_config": task.config.to_dict(),
            "train_config": asdict(cfg),
            "train_ids": ray.put(np.ascontiguousarray(train_ids, dtype=np.int32)),
            "val_ids": ray.put(np.ascontiguousarray(val_ids, dtype=np.int32)) if val_ids is not None else None,
            "tokenizer_path": str(tok_dir / "tokenizer.json"),
            "resume_from": str(previous) if resume else None,
            "use_gpu": use_gpu,
            "progress": progress,
            "status_path": str(status_path),
            "tracking": tracking,
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
