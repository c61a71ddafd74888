"""What the experiments' reports share: the SNR where a pooled metric crosses a target, and SNR labels."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["fmt_snr", "snr_at_target", "snr_db_header"]


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
