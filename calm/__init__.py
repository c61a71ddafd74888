"""The CALM model library: data and tokenizer, autoencoder, energy transformer, training, evaluation.

The names below are re-exported lazily: ``import calm`` stays cheap, and Ray is imported only by
``calm.train`` when training starts.

>>> from calm import Autoencoder, AutoencoderConfig, load_pretrained  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the submodule that owns it
_EXPORTS = {
    "Document": "calm.corpus",
    "load_documents": "calm.corpus",
    "split_documents": "calm.corpus",
    "load_split": "calm.corpus",
    "load_token_ids": "calm.data",
    "make_passages": "calm.data",
    "get_tokenizer": "calm.tokenizer",
    "load_tokenizer": "calm.tokenizer",
    "tokenizer_fingerprint": "calm.tokenizer",
    "PAD_ID": "calm.tokenizer",
    "EOT_ID": "calm.tokenizer",
    "Autoencoder": "calm.autoencoder",
    "AutoencoderConfig": "calm.autoencoder",
    "save_pretrained": "calm.checkpoint",
    "load_pretrained": "calm.checkpoint",
    "load_released": "calm.official",
    "CheckpointError": "calm.checkpoint",
    "EnergyTransformer": "calm.energy_transformer",
    "EnergyTransformerConfig": "calm.energy_transformer",
    "energy_loss": "calm.energy_transformer",
    "TokenTransformer": "calm.baseline",
    "BaselineConfig": "calm.baseline",
    "brier_lm": "calm.brier",
    "evaluate_brier": "calm.brier",
    "exact_temperature_sample": "calm.sampling",
    "batch_temperature_sample": "calm.sampling",
    "calm_flops": "calm.flops",
    "baseline_flops": "calm.flops",
    "train_autoencoder": "calm.tasks",
    "evaluate_autoencoder": "calm.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'calm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
