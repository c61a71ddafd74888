"""What the many-agent experiments (alignment, relay, broadcast) share: their link settings and metrics.

``LinkConfig`` is the sweep config of a token-reconstruction link between agents: passages of L tokens
sent in n channel uses, over the vector protocol (CALM latents, analog) and the strongest digital
baseline (``separation``: entropy coding + 5G LDPC/Polar + QAM with oracle rate adaptation) fitted by
``experiments.common.links``. Its autoencoder defaults are the small ones these experiments train
several of (l = 32, bpe:2048, 1,500 steps: about 2.5 min each on two cores) rather than the sweeps'
``tiny`` default. ``trial_metrics`` turns decoded ids into the row's metric columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from experiments.common.config import SweepConfig, unhashed
from experiments.common.tables import mean_interval, passage_metrics

__all__ = ["METRICS", "LinkConfig", "draw_candidates", "metric_columns", "sigma_of_snr", "trial_metrics"]

METRICS = ("token_accuracy", "chrf")


def metric_columns(metrics: tuple[str, ...] = METRICS) -> list[str]:
    """``metric, metric_ci_low, metric_ci_high`` for each metric."""
    return [f"{m}{s}" for m in metrics for s in ("", "_ci_low", "_ci_high")]


def draw_candidates(rng: np.random.Generator, index: np.ndarray, pool_size: int, C: int) -> tuple[np.ndarray, np.ndarray]:
    """``(candidate passage indices (B, C), the target's slot (B,))``: the target and C-1 other passages drawn
    uniformly, in a random order."""
    B = len(index)
    cands = rng.integers(0, pool_size - 1, size=(B, C - 1))
    cands += cands >= index[:, None]  # skip the target itself
    slot = rng.integers(0, C, size=B)
    out = np.insert(cands, 0, index, axis=1)
    rows = np.arange(B)
    out[rows, 0], out[rows, slot] = out[rows, slot], index  # the target swaps places with its slot's passage
    return out, slot


def sigma_of_snr(snr_db: float) -> float:
    """Noise standard deviation of a unit-power link at ``snr_db`` (SNR = 1 / sigma^2)."""
    return float(10.0 ** (-snr_db / 20.0))


@dataclass
class LinkConfig(SweepConfig):
    """A reconstruction link between agents: L tokens in n channel uses (fields shared by the many-agent runs)."""

    tokenizer: str = "bpe:2048"
    """tokenizer spec when training an autoencoder (a checkpoint brings its own)"""
    ae_latent_dim: int | None = 32
    """override the preset's latent size l (none: the preset's)"""
    ae_steps: int = 1500
    """optimiser steps when training an autoencoder"""
    passage_length: int = 16
    """L, tokens per message (a multiple of the autoencoder's K)"""
    channel_uses: int = 128
    """n, channel uses per message (per hop) for every protocol; 128 = L/K * l: every latent coordinate once (PCA
    of the l = 32 latents to fewer keeps little: 0.14 token accuracy at n = 32 without noise)"""
    agent_pairs: int = unhashed(1)
    """unused: these experiments place an agent pool (one actor per role) instead of speaker/listener pairs"""
    episodes: int = 256
    """passages per trial"""
    batch_size: int = 256
    """passages per env step"""
    num_passages: int = 2000
    """held-out (test split) passages the trials draw from"""
    fit_passages: int = 4000
    """training passages the protocols are fitted on (the source model uses the whole train split)"""
    source_model: Literal["unigram", "bigram"] = "bigram"
    """separation: the entropy coder's token model (fitted on train)"""
    separation_codes: tuple[Literal["ldpc", "polar"], ...] = ("ldpc", "polar")
    """separation: the 5G codes whose (rate, modulation) menus the oracle picks from"""
    pilot_passages: int = 64
    """separation: passages every MCS of the menu plays before the oracle picks the best one"""
    seeds: tuple[int, ...] = unhashed((0,))
    """passage and noise seeds (each seed: the same passages and noise draws for every protocol)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("passage_length", "channel_uses", "episodes", "batch_size", "num_passages", "fit_passages",
                     "pilot_passages"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.episodes % min(self.batch_size, self.episodes):
            raise ValueError(f"episodes ({self.episodes}) must be a multiple of batch_size ({self.batch_size})")
        if not self.seeds:
            raise ValueError("seeds must hold at least one value")
        bad = [c for c in self.separation_codes if c not in ("ldpc", "polar")]
        if bad or not self.separation_codes:
            raise ValueError(f"separation_codes must be a non-empty subset of (ldpc, polar), got {self.separation_codes}")


def trial_metrics(decoded: list[np.ndarray], target: list[np.ndarray], K: int, tokenizer=None,
                  mask: list[np.ndarray] | None = None) -> dict[str, float]:
    """Row columns of a trial's batches: token accuracy (and chrF on the detokenised text when a
    ``tokenizer`` is given) with 95% intervals over passages.

    ``mask`` (per batch, ``(B, L)`` bool): the positions that count for token accuracy (a re-tokenised
    target shorter than L is padded; its pad positions do not count) and for the text.
    """
    values: dict[str, list[np.ndarray]] = {"token_accuracy": [], "chrf": []}
    for i, (dec, tgt) in enumerate(zip(decoded, target)):
        m = np.ones(tgt.shape, bool) if mask is None else mask[i]
        values["token_accuracy"].append(((dec == tgt) & m).sum(axis=1) / np.maximum(m.sum(axis=1), 1))
        if tokenizer is not None:
            texts = ([tokenizer.decode(d[mm].tolist()) for d, mm in zip(dec, m)],
                     [tokenizer.decode(t[mm].tolist()) for t, mm in zip(tgt, m)])
            values["chrf"].append(passage_metrics(dec, tgt, K, texts)["chrf"])
    row: dict[str, float] = {}
    for name, parts in values.items():
        if parts:
            row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = mean_interval(np.concatenate(parts))
        else:
            row[name] = row[f"{name}_ci_low"] = row[f"{name}_ci_high"] = math.nan
    return row
