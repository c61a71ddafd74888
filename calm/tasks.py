"""The model kinds ``calm.train`` can train: subcommand name -> task class, and an in-process helper.

A task lives next to its model (``AutoencoderTask``, ``CalmTask``, ``BaselineTask``); a new calm model kind
is a new task class plus one line in ``TASKS``. A task defined outside calm registers itself with
``register_task`` when its module is imported (``calm.train.main`` and the Ray workers then know it).
"""

from __future__ import annotations

import numpy as np

from calm.autoencoder import Autoencoder, AutoencoderConfig, AutoencoderTask
from calm.baseline import BaselineTask
from calm.energy_transformer import CalmTask
from calm.loop import NonFiniteLossError, TrainConfig, train_local

__all__ = ["TASKS", "TRAIN_PRESETS", "register_task", "train_autoencoder"]

# subcommand name -> task class. A task class has: name, config_cls (with to_dict/from_dict), presets,
# build_model(), sample_batch(ids, rng, batch_size), loss(model, batch, generator), validation_set(ids, n),
# validate(model, val_set).
TASKS: dict[str, type] = {"autoencoder": AutoencoderTask, "calm": CalmTask, "baseline": BaselineTask}
# each also has ``make_config(preset, vocab_size=, pad_id=, overrides=, **cli_args)`` and ``train_presets``
# (TrainConfig defaults per preset); the language-model tasks have ``tokens_per_example``.
TRAIN_PRESETS = AutoencoderTask.train_presets  # the autoencoder's TrainConfig defaults (train_autoencoder uses them)


def register_task(task_cls: type) -> type:
    """Add a task class to ``TASKS`` under its ``name`` (a ``calm.train`` subcommand); returns the class.

    Registering the same class again is a no-op; another class under a taken name is a ValueError.
    """
    name = task_cls.name
    if TASKS.get(name, task_cls) is not task_cls:
        raise ValueError(f"task {name!r} is already registered to {TASKS[name].__module__}.{TASKS[name].__qualname__}")
    TASKS[name] = task_cls
    return task_cls


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
    # validation (fixed seed, no effect on the weights) up to 10 times, at most every 100 steps: the training curve
    # the tracker logs
    cfg = TrainConfig(**{**defaults, "steps": steps, "seed": seed, "val_every": max(steps // 10, min(steps, 100)),
                         "checkpoint_every": steps, **train_overrides})
    result = train_local(AutoencoderTask(config), train_ids, cfg, val_ids=val_ids, progress=progress)
    if result.stopped:
        raise NonFiniteLossError(result.stopped)
    result.model.trained_steps = result.step
    result.model.history = result.history  # the training curve, for train_info.json and the experiment tracker
    return result.model
