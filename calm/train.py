"""Training entry point: Ray Train on N workers (CPU with gloo, or GPUs), or one plain process.

    python -m calm.train autoencoder --preset tiny --corpus kjv+shakespeare --out runs/ae-k4 \
        [--workers N] [--gpu auto|on|off] [--steps N] [--resume] [--max-failures 3] [--kl-clip X] ...
    python -m calm.train calm --ae runs/ae-k4 --preset tiny --out runs/calm-k4 [--brier-samples 8] ...
    python -m calm.train baseline --preset tiny --out runs/baseline ...

(calm and baseline must use the --tokenizer the autoencoder was trained with.)

Layout (nanoGPT/cleanrl-like, with a Ray driver), bottom-up:
    1. ``calm.loop``: ``TrainConfig``, ``run_loop`` (the step code every path shares; no Ray in it),
       training checkpoints, ``train_local`` (one process).
    2. ``calm.tasks``: ``TASKS``, a small object per model kind that builds the model from its config,
       draws a batch and computes the loss and metrics (each lives next to its model), and
       ``train_autoencoder`` (in process).
    3. ``calm.train_ray``: ``train_with_ray``, the Ray Train driver and per-worker function.
    4. This module: the CLI, and the names above for callers that import them from here.

Determinism: the batch of step s on rank r is drawn from ``np.random.default_rng([seed, s, r])`` and the
training noise (dropouts, eps) from a torch generator seeded from the same triple, so data order is a
function of (seed, step, rank) and ``--resume`` continues exactly where the checkpoint left off.

A training checkpoint is a ``calm.checkpoint`` directory (``load_pretrained`` reads it) plus
``optimizer.safetensors`` and ``train_state.json`` (step, configs, validation history). No pickle.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path

from calm.autoencoder import AutoencoderTask
from calm.checkpoint import CheckpointError, check_checkpoint, shapes_only
from calm.cli import OneLineErrorParser, add_dataclass_args, given_values
from calm.files import DamagedFileError, read_json
from calm.loop import (
    TRAIN_STATE_FILE,
    FitResult,
    NonFiniteLossError,
    TrainConfig,
    load_training_state,
    newest_checkpoint,
    run_loop,
    save_training_state,
    train_local,
)
from calm.tasks import TASKS, TRAIN_PRESETS, train_autoencoder
from calm.tracking import TRACKERS, check_tracking, open_recorded, provenance_tags
from calm.train_ray import check_out, train_with_ray

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


# ----------------------------------------------------------------------------------------------------------
# the CLI


def _derived_fields(task_cls) -> tuple[str, ...]:
    """Model-config fields that get no flag: the tokenizer's, and for a model built on a trained autoencoder
    (a config with an ``autoencoder`` field) the ones copied from the ``--ae`` checkpoint."""
    derived = ("vocab_size", "pad_id", "autoencoder_path")
    if "autoencoder" in {f.name for f in fields(task_cls.config_cls)}:
        derived += ("autoencoder", "K", "latent_dim")
    return derived


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m calm.train`` parser: one subcommand per task."""
    parser = OneLineErrorParser(prog="python -m calm.train", description=__doc__.split("\n\n")[0])
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
        p.add_argument("--tracking", default=os.environ.get("LATENTCOMM_TRACKING", "mlflow"), choices=TRACKERS,
                       help="experiment tracker: mlflow (a local store beside --out unless --tracking-uri), wandb or "
                            "none (default from LATENTCOMM_TRACKING, else mlflow)")
        p.add_argument("--tracking-uri", default="",
                       help="MLflow store or server; empty: sqlite:///<folder above --out>/mlflow.db (on a cluster, a "
                            "server every worker reaches)")
        # a flag that is not given leaves the preset's value (see configs_from_args)
        add_dataclass_args(p, TrainConfig, overrides=True)
        add_dataclass_args(p, task_cls.config_cls, skip=_derived_fields(task_cls), overrides=True)
        if "ae" in inspect.signature(task_cls.make_config).parameters:  # a model built on a trained autoencoder
            p.add_argument("--ae", required=True, help="trained autoencoder checkpoint directory (kept frozen)")
    return parser


def configs_from_args(args: argparse.Namespace, task_cls, *, vocab_size: int, pad_id: int):
    """(model config, TrainConfig) from a preset plus the flags that were given."""
    model_over = given_values(args, task_cls.config_cls)
    train_over = given_values(args, TrainConfig)
    model_cfg = task_cls.make_config(args.preset, vocab_size=vocab_size, pad_id=pad_id, overrides=model_over,
                                     ae=getattr(args, "ae", None))
    train_cfg = TrainConfig(**{**task_cls.train_presets.get(args.preset, {}), **train_over})
    return model_cfg, train_cfg


def check_paths(args: argparse.Namespace) -> None:
    """The paths the command line names, checked in a moment before anything slow (the tokenizer, the
    corpus, Ray): ``--ae`` is an autoencoder checkpoint directory (config.json of that model type,
    safetensors weights of the shapes it implies, never a pickle), ``--out`` is not a file, the worker counts
    are counts.

    Raises:
        ValueError: a setting is refused (the message names the flag).
        DamagedFileError: a named file is there but damaged.
    """
    if args.workers < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {args.workers}")
    if args.max_failures < 0:
        raise ValueError(f"--max-failures must be an integer >= 0, got {args.max_failures}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a file, not a run directory")
    if getattr(args, "ae", None) is not None:
        try:
            check_checkpoint(args.ae, expect="autoencoder")
        except (CheckpointError, DamagedFileError) as exc:  # the flag named first: it is the user's to fix
            raise ValueError(f"--ae {args.ae}: {exc}") from None


def _resumed_config(args: argparse.Namespace, task_cls, model_cfg):
    """The model config a ``--resume`` continues with: the newest checkpoint's (flags may only change the
    training schedule); ``model_cfg`` when there is none yet."""
    ckpt = newest_checkpoint(Path(args.out) / "ray")
    if ckpt is None:
        return model_cfg
    path = ckpt / TRAIN_STATE_FILE
    stored = read_json(path, what="training state")
    try:
        return task_cls.config_cls.from_dict(stored["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DamagedFileError(path, f"its model config cannot be rebuilt ({type(exc).__name__}: {exc})") from None


def main(argv: list[str] | None = None) -> FitResult:
    """CLI entry point (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    task_cls = TASKS[args.task]
    try:  # settings are checked before Ray starts: a bad one is one line and exit status 2
        check_tracking(args.tracking, args.tracking_uri)
        check_paths(args)  # first: a wrong --ae is named in a moment, not after the tokenizer, corpus or Ray
        from calm.data import load_token_ids  # (imports transformers: a second)
        from calm.tokenizer import get_tokenizer

        tokenizer = get_tokenizer(args.tokenizer, corpus=args.corpus)
        model_cfg, train_cfg = configs_from_args(args, task_cls, vocab_size=len(tokenizer),
                                                 pad_id=int(tokenizer.pad_token_id))
        if args.resume:
            model_cfg = _resumed_config(args, task_cls, model_cfg)
    except (ValueError, FileNotFoundError, DamagedFileError) as exc:
        parser.error(str(exc))
    task = task_cls(model_cfg)
    train_ids = load_token_ids(args.corpus, tokenizer, "train")
    val_ids = load_token_ids(args.corpus, tokenizer, "validation")
    # derived quantities, printed once
    with shapes_only():  # names and shapes only: no weights, no init
        n_params = task.build_model().num_parameters()
    tokens_per_step = train_cfg.batch_size * train_cfg.grad_accum * args.workers * getattr(task, "tokens_per_example", getattr(model_cfg, "K", 1))
    print(json.dumps({"task": args.task, "preset": args.preset, "params": n_params, "workers": args.workers,
                      "train_tokens": int(len(train_ids)), "val_tokens": int(len(val_ids)),
                      "tokens_per_step": tokens_per_step, "model_config": model_cfg.to_dict(),
                      "train_config": asdict(train_cfg)}), flush=True)
    check_out(args.out, args.resume)  # before a tracked run is opened for a run that cannot start
    tracker = _open_tracker(args, model_cfg, train_cfg, n_params)
    try:
        result = train_with_ray(task, train_cfg, tokenizer=tokenizer, train_ids=train_ids, val_ids=val_ids,
                                out=args.out, workers=args.workers, gpu=args.gpu, resume=args.resume,
                                progress=args.progress, max_failures=args.max_failures,
                                tracking={"uri": tracker.uri, "run_id": tracker.run_id} if tracker.uri else None)
    except BaseException as exc:
        tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if not tracker.uri:  # W&B: the curve from the driver (the workers log only to MLflow)
        tracker.log_history(result.history)
    tracker.log_artifacts(args.out, skip=("model.safetensors", "optimizer.safetensors"))
    tracker.finish()
    if result.history:
        print(json.dumps({"final": result.history[-1], "out": str(Path(args.out).resolve())}), flush=True)
    return result


def _open_tracker(args: argparse.Namespace, model_cfg, train_cfg: TrainConfig, n_params: int):
    """The tracked run of this training run (``calm.tracking``): every setting as a parameter, the provenance tags;
    recorded in ``<out>/tracking.json`` so that ``--resume`` logs into the same run."""
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = {"task": args.task, "preset": args.preset, "corpus": args.corpus, "tokenizer": args.tokenizer,
              "workers": args.workers, "params": n_params, "model": model_cfg.to_dict(), "train": asdict(train_cfg)}
    tags = provenance_tags(out=str(out), corpus=args.corpus, tokenizer=args.tokenizer, autoencoder=getattr(args, "ae", None))
    return open_recorded(out / "tracking.json", args.tracking, args.tracking_uri, out.parent,
                         experiment=f"calm.train-{args.task}", run_name=out.name, params=params, tags=tags,
                         resume=args.resume, label="calm.train")


if __name__ == "__main__":
    try:
        main()
    except NonFiniteLossError as exc:
        print(f"calm.train: stopped: {exc}", file=sys.stderr)
        sys.exit(1)
