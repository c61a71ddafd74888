"""What the two language-model training tasks (CALM and the token baseline) share.

Both train on fixed-length windows of one token stream, validate on the first non-overlapping windows
of the validation stream, and score Brier-1..4 there. `calm.train` drives them through the task
interface (build_model, sample_batch, loss, validation_set, validate); each subclass adds its model.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["WindowTask"]


class WindowTask:
    """Base of `CalmTask` and `BaselineTask`: windows of `tokens_per_example` tokens."""

    # tiny: sized for two CPU cores, the same for both models; the others: the paper's AdamW settings
    # (lr 3e-4, warmup 2000, wd 0.1)
    train_presets: dict[str, dict] = {
        "tiny": dict(steps=3000, batch_size=16, lr=1e-3, warmup=100, val_every=250, checkpoint_every=250),
        # 16 windows of 128 patches, 2 micro-batches: 4,096 patches per optimiser step on one worker
        "tiny-k2": dict(steps=3000, batch_size=16, grad_accum=2, lr=1e-3, warmup=100, val_every=250,
                        checkpoint_every=250),
        **{k: dict(steps=250_000, batch_size=64, lr=3e-4, warmup=2000) for k in ("S", "M", "L", "XL")},
    }

    def __init__(self, config, *, tokens_per_example: int, tokens_per_unit: int) -> None:
        self.config = config
        self.tokens_per_example = tokens_per_example
        """tokens in one training window"""
        self.tokens_per_unit = tokens_per_unit
        """tokens per unit of `validation_set`'s size (K: sizes count chunks, as for the autoencoder)"""
        self.brier_samples = 2
        """sampled continuations per position in validation's Brier estimates (>= 2; more = less noise;
        calm.train sets it from TrainConfig.brier_samples)"""

    def sample_batch(self, ids: np.ndarray, rng: np.random.Generator, batch_size: int) -> torch.Tensor:
        """(B, L) int64 windows of L = tokens_per_example tokens at uniform positions of the stream ids."""
        L = self.tokens_per_example
        if len(ids) < L:
            raise ValueError(f"the token stream has {len(ids)} ids, fewer than one window of {L}")
        start = rng.integers(0, len(ids) - L + 1, size=batch_size)  # (B,)
        return torch.from_numpy(ids[start[:, None] + np.arange(L)].astype(np.int64))

    def validation_set(self, ids: np.ndarray, size: int) -> torch.Tensor:
        """The first non-overlapping windows, holding about size * tokens_per_unit tokens; at least one."""
        L = self.tokens_per_example
        n = max(1, min(size * self.tokens_per_unit // L, len(ids) // L))
        return torch.from_numpy(np.asarray(ids[: n * L], dtype=np.int64).reshape(n, L))
