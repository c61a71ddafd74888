"""Training the JSCC adapter (``protocols.jscc_model``): the ``calm.train`` task and an in-process helper.

Importing this module registers ``JSCCTask`` with ``calm.tasks`` as ``jscc``, so ``calm.train``'s loop, Ray
driver and CLI train it like any model kind:

- in process: ``train_jscc(config, train_ids, steps=...)`` (``calm.loop.train_local``);
- Ray Train: ``python -m protocols.jscc_train --ae DIR --channel-uses 16 --out DIR`` (``calm.train``'s CLI with
  this task; checkpoints, ``--resume``, ``--workers``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from calm.autoencoder import Autoencoder
from calm.lm_task import WindowTask
from calm.tasks import register_task
from protocols.jscc_model import PRESETS, JSCCConfig, JSCCModel, check_autoencoder_config, preset

__all__ = ["JSCCTask", "train_jscc"]


class JSCCTask(WindowTask):
    """Train a JSCC adapter on windows of passage_length tokens around a trained autoencoder
    (validation sizes count K-token chunks, as for the other tasks)."""

    name = "jscc"
    config_cls = JSCCConfig
    presets = PRESETS
    # tiny: sized for two CPU cores (L = 32 around the tiny autoencoder, n = 8..32, l = 32 or 128: 5.7 steps/s
    # with 2 threads, so 1500 steps take about 4.5 minutes); the tiny preset's sampled softmax makes a step about
    # 3x cheaper than the full 8192-id softmax (1.9 steps/s)
    train_presets: dict[str, dict] = {
        name: dict(steps=1500, batch_size=128, lr=2e-3, warmup=100, val_every=500, checkpoint_every=500)
        for name in PRESETS
    }
    #: SNRs (dB) validation reports token accuracy at, clipped to the trained range
    val_snrs_db: tuple[float, ...] = (-6.0, 0.0, 6.0, 12.0, 20.0)

    def __init__(self, config: JSCCConfig, *, autoencoder: Autoencoder | None = None) -> None:
        super().__init__(config, tokens_per_example=config.passage_length, tokens_per_unit=config.K)
        self.autoencoder = autoencoder
        """an in-memory autoencoder to copy the frozen weights from (else config.autoencoder_path)"""

    @classmethod
    def make_config(cls, preset_name: str, *, vocab_size: int, overrides: dict, ae: str | None = None,
                    **_) -> JSCCConfig:
        """The config for `python -m protocols.jscc_train --ae DIR --preset NAME`: the preset around the autoencoder
        checkpoint DIR (its vocabulary must be the tokenizer's)."""
        from pathlib import Path

        from calm.checkpoint import autoencoder_config_for

        ae_config = autoencoder_config_for(ae, vocab_size, "jscc")
        return preset(preset_name, ae_config, autoencoder_path=str(Path(ae).resolve()), **overrides)

    def build_model(self) -> JSCCModel:
        """A fresh adapter around the autoencoder's weights (from ``autoencoder`` or config.autoencoder_path)."""
        from pathlib import Path

        from calm.checkpoint import load_config, read_safetensors
        from calm.integrity import check_tensors

        model = JSCCModel(self.config)
        if next(model.parameters()).is_meta:
            return model
        if self.autoencoder is not None:
            check_autoencoder_config(self.config, self.autoencoder.config.to_dict())
            weights = self.autoencoder.state_dict()
        elif self.config.autoencoder_path:
            meta = load_config(self.config.autoencoder_path, expect="autoencoder")
            check_autoencoder_config(self.config, meta["config"])
            path = Path(self.config.autoencoder_path) / "model.safetensors"
            weights = read_safetensors(path)
            check_tensors(path, weights)  # a NaN autoencoder would train a NaN adapter
        else:
            raise ValueError("JSCCTask needs the trained autoencoder: set config.autoencoder_path or pass "
                             "autoencoder=")
        model.autoencoder.load_state_dict(weights, strict=True)
        return model

    def loss(self, model: nn.Module, batch: torch.Tensor, generator: torch.Generator | None):
        """(token cross-entropy, metrics to log: token accuracy ``acc`` and the sent power)."""
        out = model(batch, generator=generator)
        return out.loss, {"acc": out.accuracy.detach(), "ce": out.ce, "power": out.power}

    @torch.no_grad()
    def validate(self, model: JSCCModel, windows: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
        """Held-out token accuracy per trained channel kind at fixed SNRs (fixed seed), and their mean ``val_acc``."""
        c = self.config
        was_training = model.training
        model.eval()
        device = windows.device
        scores = {}
        snrs = sorted({float(np.clip(s, c.snr_db_min, c.snr_db_max)) for s in self.val_snrs_db})
        for kind in c.channels:
            for snr in snrs:
                gen = torch.Generator(device=device).manual_seed(0)
                correct = 0.0
                for i in range(0, len(windows), batch_size):
                    batch = windows[i : i + batch_size]
                    correct += model(batch, generator=gen, snr_db=snr, kind=kind).accuracy.item() * len(batch)
                scores[f"val_acc_{kind}_{snr:g}dB"] = correct / len(windows)
        model.train(was_training)
        return {"val_acc": float(np.mean(list(scores.values()))), **scores}


def train_jscc(
    config: JSCCConfig,
    train_ids: np.ndarray,
    *,
    steps: int,
    val_ids: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = False,
    autoencoder: Autoencoder | None = None,
    **train_overrides,
) -> JSCCModel:
    """A briefly trained JSCC adapter, in this process (``calm.loop.train_local``, the tiny preset's schedule).

    Args:
        config: the adapter config (``preset("tiny", ae.config, channel_uses=n, passage_length=L)``).
        train_ids: flat int token stream.
        steps: optimiser steps.
        val_ids: optional stream to validate on (``history`` holds the result).
        seed: seeds init, data order, conditions and channel noise.
        autoencoder: the trained autoencoder (else its weights are read from config.autoencoder_path).
        **train_overrides: any other ``TrainConfig`` field (lr, batch_size, warmup, ...).

    Returns:
        The trained model in eval mode, with ``trained_steps`` and ``history`` (validation records) attributes.

    Raises:
        NonFiniteLossError: the loss became NaN or inf.
    """
    from calm.loop import NonFiniteLossError, TrainConfig, train_local

    tiny = JSCCTask.train_presets["tiny"]
    defaults = {**tiny, "warmup": min(tiny["warmup"], max(1, steps // 10))}
    cfg = TrainConfig(**{**defaults, "steps": steps, "seed": seed, "val_every": steps, "checkpoint_every": steps,
                         **train_overrides})
    result = train_local(JSCCTask(config, autoencoder=autoencoder), train_ids, cfg, val_ids=val_ids,
                         progress=progress)
    if result.stopped:
        raise NonFiniteLossError(result.stopped)
    result.model.trained_steps = result.step
    result.model.history = result.history
    return result.model


register_task(JSCCTask)
