"""Training the LM-JSCC adapter (``protocols.lm_jscc_model``): the ``calm.train`` task and an in-process helper.

``train_lm_jscc`` trains one in this process (``calm.loop.train_local``; the task is not registered with
``calm.tasks``: its two starting checkpoints have no ``calm.train`` flags). Validation decodes as the protocol does (``LMJSCCModel.decode``, all ids).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from calm.baseline import TokenTransformer
from calm.lm_task import WindowTask
from environments.torch_channels import simulate_channel
from protocols.jscc_model import JSCCModel
from protocols.lm_jscc_model import PRESETS, LMJSCCConfig, LMJSCCModel, preset

__all__ = ["LMJSCCTask", "decode_accuracy", "train_lm_jscc"]


@torch.no_grad()
def decode_accuracy(model: LMJSCCModel, windows: torch.Tensor, snr_db: float, kind: str, *, seed: int = 0,
                    batch_size: int = 256) -> float:
    """Token accuracy of ``model.decode`` of ``windows (N, L)`` sent at ``snr_db`` over ``kind`` (noise seeded)."""
    from environments.torch_channels import CHANNEL_KINDS

    was_training = model.training
    model.eval()
    gen = torch.Generator(device=windows.device).manual_seed(seed)
    correct = 0
    for i in range(0, len(windows), batch_size):
        ids = windows[i : i + batch_size]
        B = ids.shape[0]
        snr = torch.full((B,), float(snr_db), device=ids.device)
        k = torch.full((B,), CHANNEL_KINDS.index(kind), dtype=torch.long, device=ids.device)
        x = model.encode(ids, snr, k)
        y, gain = simulate_channel(x, snr, k, erasure_p=model.config.erasure_p, generator=gen)
        correct += int((model.decode(y, gain, snr, k) == ids).sum())
    model.train(was_training)
    return correct / windows.numel()


class LMJSCCTask(WindowTask):
    """Train an LM-JSCC adapter on windows of passage_length tokens around a trained token LM."""

    name = "lm-jscc"
    config_cls = LMJSCCConfig
    presets = PRESETS
    # tiny: two CPU cores, batch 64 (a step runs the CALM decoder and the receiver LM over 64 passages, forward and
    # backward)
    train_presets: dict[str, dict] = {
        name: dict(steps=2000, batch_size=64, lr=1e-3, warmup=100, val_every=250, checkpoint_every=500,
                   val_size=256)
        for name in PRESETS
    }
    #: SNRs (dB) validation decodes at, clipped to the trained range
    val_snrs_db: tuple[float, ...] = (-6.0, 0.0, 10.0, 20.0)

    def __init__(self, config: LMJSCCConfig, *, lm: TokenTransformer | None = None,
                 adapter: JSCCModel | None = None) -> None:
        super().__init__(config, tokens_per_example=config.passage_length,
                         tokens_per_unit=config.passage_length)  # val_size counts windows
        self.lm = lm
        """an in-memory token LM to start from (else config.lm_path)"""
        self.adapter = adapter
        """an in-memory JSCC adapter to start from (else config.jscc_path)"""

    @classmethod
    def make_config(cls, preset_name: str, *, vocab_size: int, overrides: dict, lm: str | None = None,
                    jscc: str | None = None, **_) -> LMJSCCConfig:
        """The preset around the token LM checkpoint ``lm`` and the JSCC adapter checkpoint ``jscc``."""
        from pathlib import Path

        from calm.checkpoint import load_config

        if not lm or not jscc:
            raise ValueError("the lm-jscc task needs the token LM and the JSCC adapter checkpoints (lm=DIR, jscc=DIR)")
        lm_meta, jscc_meta = load_config(lm, expect="baseline"), load_config(jscc, expect="jscc")
        if lm_meta["config"]["vocab_size"] != vocab_size:
            raise ValueError(f"the token LM has vocab_size {lm_meta['config']['vocab_size']}, the tokenizer {vocab_size}")
        return preset(preset_name, lm_meta["config"], jscc_meta["config"], lm_path=str(Path(lm).resolve()),
                      jscc_path=str(Path(jscc).resolve()), **overrides)

    def build_model(self) -> LMJSCCModel:
        """A fresh model whose parts start from the trained LM and JSCC adapter (given, or read from the paths)."""
        from calm.checkpoint import load_pretrained

        lm, adapter = self.lm, self.adapter
        if lm is None:
            if not self.config.lm_path:
                raise ValueError("LMJSCCTask needs the trained token LM: set config.lm_path or pass lm=")
            lm, _ = load_pretrained(self.config.lm_path, expect="baseline")
        if adapter is None:
            if not self.config.jscc_path:
                raise ValueError("LMJSCCTask needs the trained JSCC adapter: set config.jscc_path or pass adapter=")
            adapter, _ = load_pretrained(self.config.jscc_path, expect="jscc")
        return LMJSCCModel(self.config, lm, adapter)

    def loss(self, model: nn.Module, batch: torch.Tensor, generator: torch.Generator | None):
        """(loss, metrics: ``acc`` over the sampled ids, ``ce``, ``power``)."""
        out = model(batch, generator=generator)
        return out.loss, {"acc": out.accuracy.detach(), "ce": out.ce, "power": out.power}

    def validate(self, model: LMJSCCModel, windows: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
        """Decoded token accuracy per trained kind at fixed SNRs (fixed noise seed), and the mean ``val_acc``."""
        c = self.config
        scores = {}
        for kind in c.channels:
            for snr in sorted({float(np.clip(s, c.snr_db_min, c.snr_db_max)) for s in self.val_snrs_db}):
                scores[f"val_acc_{kind}_{snr:g}dB"] = decode_accuracy(model, windows, snr, kind,
                                                                      batch_size=batch_size)
        return {"val_acc": float(np.mean(list(scores.values()))), **scores}


def train_lm_jscc(config: LMJSCCConfig, train_ids: np.ndarray, *, steps: int, val_ids: np.ndarray | None = None,
                  seed: int = 0, progress: bool = False, lm: TokenTransformer | None = None,
                  adapter: JSCCModel | None = None, **train_overrides) -> LMJSCCModel:
    """An LM-JSCC adapter trained in this process (the tiny preset's schedule, ``steps`` optimiser steps).

    Returns the model in eval mode with ``trained_steps`` and ``history`` (validation records).

    Raises:
        NonFiniteLossError: the loss became NaN or inf.
    """
    from calm.loop import NonFiniteLossError, TrainConfig, train_local

    tiny = LMJSCCTask.train_presets["tiny"]
    defaults = {**tiny, "warmup": min(tiny["warmup"], max(1, steps // 10)), "checkpoint_every": steps}
    cfg = TrainConfig(**{**defaults, "steps": steps, "seed": seed, **train_overrides})
    result = train_local(LMJSCCTask(config, lm=lm, adapter=adapter), train_ids, cfg, val_ids=val_ids, progress=progress)
    if result.stopped:
        raise NonFiniteLossError(result.stopped)
    result.model.trained_steps = result.step
    result.model.history = result.history
    return result.model

