"""What the studies' tables share: per-passage metrics (token accuracy, chunk and passage exact, chrF), a mean
with its 95% interval, the SNR where a pooled metric crosses a target, and SNR labels."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CONVENTION_NOTE", "fmt_snr", "mean_interval", "passage_metrics", "shared_legend", "snr_at_target", "snr_db_header"]


CONVENTION_NOTE = ("SNR is Es/N0 per complex channel use (`environments.convention`): two real symbols make one complex "
                   "use, so n real dimensions are n/2 complex uses; sigma is the noise standard deviation per real "
                   "dimension and Es/N0 = 1/sigma^2.")
"""the sentence every summary states its SNR convention with"""


def snr_at_target(table, group: list[str], metric: str, target: float):
    """Per ``group`` of ``table``: the SNR in dB where ``metric`` first reaches ``target``.

    Linear interpolation in dB between the two grid points around the crossing (noise-free points,
    SNR inf, are left out). ``-inf`` when even the noisiest point reaches it, ``inf`` when no finite-SNR
    point does. ``snr_db_lo`` / ``snr_db_hi``: the grid's lowest and highest finite SNR.
    """
    import pandas as pd

    out = []
    for key, g in table.groupby(group, sort=False):
        g = g[np.isfinite(g["snr_db"])].sort_values("snr_db")
        snr, value = g["snr_db"].to_numpy(), g[metric].to_numpy()
        at = math.inf
        if len(snr) and value[0] >= target:
            at = -math.inf
        else:
            for i in range(1, len(snr)):
                if value[i] >= target > value[i - 1]:
                    at = float(snr[i - 1] + (target - value[i - 1]) / (value[i] - value[i - 1]) * (snr[i] - snr[i - 1]))
                    break
        out.append({**dict(zip(group, key)), "snr_db_at_target": at,
                    "snr_db_lo": float(snr[0]) if len(snr) else math.nan,
                    "snr_db_hi": float(snr[-1]) if len(snr) else math.nan})
    return pd.DataFrame(out)


def fmt_snr(value: float, lo: float, hi: float) -> str:
    """A crossing in dB, or where the grid ends: ``< lo`` (reached everywhere), ``> hi`` (nowhere)."""
    if value == -math.inf:
        return f"< {lo:.1f}"
    if value == math.inf:
        return f"> {hi:.1f}"
    return f"{value:.1f}"


def snr_db_header(sigma: float) -> str:
    """The column label of a noise level: its SNR in dB, ``inf`` without noise."""
    return "inf" if sigma == 0 else f"{-20 * math.log10(sigma) + 0.0:.1f}"


def passage_metrics(decoded: np.ndarray, target: np.ndarray, K: int, texts: tuple[list[str], list[str]] | None = None
                    ) -> dict[str, np.ndarray]:
    """Per-passage metrics of ``decoded (B, L)`` against ``target (B, L)`` token ids.

    Returns ``token_accuracy``, ``chunk_exact`` (fraction of the L/K chunks of K tokens all right) and
    ``passage_exact`` (all L right), each ``(B,)``; with ``texts = (decoded texts, target texts)`` also
    ``chrf`` (sacrebleu's sentence chrF, 0..100).
    """
    right = decoded == target  # (B, L)
    B, L = right.shape
    out = {"token_accuracy": right.mean(axis=1), "chunk_exact": right.reshape(B, L // K, K).all(axis=2).mean(axis=1),
           "passage_exact": right.all(axis=1).astype(np.float64)}
    if texts is not None:
        from sacrebleu.metrics import CHRF

        chrf = CHRF()
        out["chrf"] = np.array([chrf.sentence_score(hyp, [ref]).score for hyp, ref in zip(*texts)])
    return out


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean of per-passage values with a 95% normal interval (clipped to the values' range)."""
    values = np.asarray(values, dtype=np.float64)
    m = float(values.mean())
    half = 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return m, max(float(values.min()), m - half), min(float(values.max()), m + half)


def shared_legend(fig, axes, *, ncol: int) -> int:
    """One legend under the figure for every label of ``axes`` (a protocol missing from some panel keeps its entry).

    Returns the number of entries, for the caller's ``tight_layout`` margin.
    """
    labels: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    fig.legend(list(labels.values()), list(labels), fontsize=8, loc="lower center", ncol=min(ncol, len(labels)),
               frameon=False)
    return len(labels)
