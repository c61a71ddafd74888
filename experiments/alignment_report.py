"""Tables and plots of an alignment run (``experiments.alignment``): success vs anchors per pairing.

``anchors_needed`` answers the run's question: how many anchors each alignment method needs before the
heterogeneous pair reaches ``fraction`` (90%) of the same-weights pair's result at one SNR.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from calm.files import atomic_write_text, save_figure

__all__ = ["anchors_needed", "console_summary", "write_report"]

METRIC_NAMES = {"success": "referential success", "token_accuracy": "token accuracy", "chrf": "chrF"}


def _pooled(frame):
    """Mean over seeds of every (protocol, pairing, method, anchors, sigma)."""
    keys = ["protocol", "pairing", "method", "anchors", "sigma", "snr_db"]
    return frame.groupby(keys, sort=False, dropna=False)[["success", "token_accuracy", "chrf"]].mean().reset_index()


def anchors_needed(frame, *, sigma: float = 0.316, fraction: float = 0.9, metric: str = "success"):
    """Per (pairing, method): the fewest anchors whose vector ``metric`` at ``sigma`` reaches ``fraction`` of the
    same-weights vector's (``None``: none of the run's anchor counts does), with the values at the largest count.

    Returns a DataFrame: pairing, method, reference, target, anchors_needed, best_anchors, value_at_best.
    """
    import pandas as pd

    pooled = _pooled(frame)
    at = pooled[np.isclose(pooled["sigma"], sigma) & (pooled["protocol"] == "vector")]
    ref = at[(at["pairing"] == "same") & (at["method"] == "none")][metric]
    if ref.empty:
        return pd.DataFrame(columns=["pairing", "method", "reference", "target", "anchors_needed", "best_anchors",
                                     "value_at_best"])
    reference = float(ref.iloc[0])
    rows = []
    for (pairing, method), g in at[at["pairing"] != "same"].groupby(["pairing", "method"], sort=False):
        g = g.sort_values("anchors")
        reached = g[g[metric] >= fraction * reference]
        best = g.iloc[-1]
        rows.append({"pairing": pairing, "method": method, "reference": reference, "target": fraction * reference,
                     "anchors_needed": int(reached["anchors"].iloc[0]) if len(reached) else None,
                     "best_anchors": int(best["anchors"]), "value_at_best": float(best[metric])})
    return pd.DataFrame(rows)


def _table(pooled, metric: str, sigma: float) -> str:
    """Markdown: rows pairing/method, columns anchors; token links as their own rows."""
    at = pooled[np.isclose(pooled["sigma"], sigma)]
    anchors = sorted(at[at["protocol"] == "vector"]["anchors"].unique())
    lines = ["| link | pairing | map | " + " | ".join(str(a) for a in anchors) + " |",
             "|---|---|---|" + "---|" * len(anchors)]
    for (protocol, pairing, method), g in at.groupby(["protocol", "pairing", "method"], sort=False):
        values = dict(zip(g["anchors"], g[metric]))
        if protocol != "vector":  # no map: the same value at every anchor count
            cells = [f"{values.get(0, math.nan):.3f}"] * len(anchors)
        elif method == "none":  # the identity: 0 anchors only
            cells = [f"{values.get(0, math.nan):.3f}"] + [""] * (len(anchors) - 1)
        else:
            cells = [f"{values[a]:.3f}" if a in values else "" for a in anchors]
        lines.append(f"| {protocol} | {pairing} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def console_summary(frame) -> str:
    """Success and token accuracy vs anchors at every SNR, and the anchors needed at 10 dB."""
    if frame.empty:
        return "[run] no rows yet"
    pooled = _pooled(frame)
    out = []
    for sigma in sorted(pooled["sigma"].unique()):
        snr = pooled[np.isclose(pooled["sigma"], sigma)]["snr_db"].iloc[0]
        for metric in ("success", "token_accuracy"):
            out.append(f"\n{METRIC_NAMES[metric]} at {snr:.1f} dB (sigma {sigma:g}), columns: anchors\n"
                       + _table(pooled, metric, sigma))
    for metric in ("success", "token_accuracy"):
        need = anchors_needed(frame, metric=metric)
        if len(need):
            out.append(f"\nanchors to reach 90% of the same-weights {METRIC_NAMES[metric]} at 10 dB "
                       f"({need['reference'].iloc[0]:.3f}):")
            for r in need.itertuples():
                got = f"{r.anchors_needed}" if r.anchors_needed is not None else \
                    f"not within {r.best_anchors} ({r.value_at_best:.3f})"
                out.append(f"  {r.pairing:9s} {r.method:10s} {got}")
    return "\n".join(out)


def _plot(pooled, metric: str, path: Path) -> None:
    """One panel per (SNR, heterogeneous pairing): the metric vs anchors per method; the same-weights vector and
    the token links as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = sorted(pooled["sigma"].unique())
    pairings = [p for p in pooled["pairing"].unique() if p != "same"]
    if not pairings:
        return
    anchors = sorted(pooled[pooled["protocol"] == "vector"]["anchors"].unique())
    x = {a: i for i, a in enumerate(anchors)}
    fig, axes = plt.subplots(len(sigmas), len(pairings), figsize=(3.6 * len(pairings), 2.8 * len(sigmas)),
                             squeeze=False, sharey=True)
    for r, sigma in enumerate(sigmas):
        at = pooled[np.isclose(pooled["sigma"], sigma)]
        snr = at["snr_db"].iloc[0]
        same = at[(at["pairing"] == "same") & (at["protocol"] == "vector")][metric]
        for c, pairing in enumerate(pairings):
            ax = axes[r][c]
            g = at[at["pairing"] == pairing]
            none = g[(g["protocol"] == "vector") & (g["method"] == "none")][metric]
            for method, h in g[(g["protocol"] == "vector") & (g["method"] != "none")].groupby("method", sort=False):
                h = h.sort_values("anchors")
                xs = ([0] if len(none) else []) + [x[a] for a in h["anchors"]]
                ys = ([float(none.iloc[0])] if len(none) else []) + list(h[metric])
                ax.plot(xs, ys, marker="o", label=f"vector, {method}")
            if len(same):
                ax.axhline(float(same.iloc[0]), color="black", ls="--", lw=1, label="vector, same weights")
            for protocol, h in g[g["protocol"] != "vector"].groupby("protocol", sort=False):
                ax.axhline(float(h[metric].iloc[0]), color="tab:red", ls=":", lw=1.5, label=protocol)
            ax.set_xticks(range(len(anchors)), [str(a) for a in anchors])
            ax.set_title(f"{pairing}, {snr:.0f} dB", fontsize=9)
            if c == 0:
                ax.set_ylabel(METRIC_NAMES[metric])
            if r == len(sigmas) - 1:
                ax.set_xlabel("anchors")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def write_report(frame, run_dir: Path, *, plots: bool = True) -> None:
    """``summary.md`` (tables per SNR, anchors needed) and ``alignment_<metric>.png``."""
    lines = ["# Latent alignment between heterogeneous agents", ""]
    if frame.empty:
        atomic_write_text(run_dir / "summary.md", "\n".join(lines + ["no rows yet", ""]))
        return
    lines += ["```", console_summary(frame), "```", ""]
    atomic_write_text(run_dir / "summary.md", "\n".join(lines))
    if plots:
        pooled = _pooled(frame)
        for metric in ("success", "token_accuracy", "chrf"):
            _plot(pooled, metric, run_dir / f"alignment_{metric}.png")
