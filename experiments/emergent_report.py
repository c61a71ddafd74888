"""Tables and the plot of the emergent-protocol study (``experiments.emergent``).

- ``pooled``: rows pooled over seeds per (protocol, features, n, C, SNR): success with a Wilson interval.
- ``beats_hash``: per (n, C, SNR) the learned protocols whose interval lies wholly above the hash's.
- ``write_report``: ``summary.md`` (the success table per (n, C), the answer to "does a learned protocol beat
  the random code, and where?", the meaning and influence table at the reference SNR) and
  ``success_vs_snr.png`` (one panel per (n, C), 95% Wilson bands, chance line).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calm.files import atomic_write_text, save_figure
from experiments.common.tables import shared_legend
from protocols.metrics import wilson_interval

__all__ = ["beats_hash", "pooled", "write_report"]

GROUP = ["protocol", "features", "channel_uses", "candidates"]
COLORS = {"learned-continuous": "tab:blue", "learned-gumbel": "tab:green", "learned-reinforce": "tab:olive",
          "vector": "tab:red", "hash": "tab:purple"}
STYLES = {"calm": "-", "bag": "--", "-": "-"}
MEANING = ["topsim", "posdis", "bosdis", "causal_influence", "control_real", "control_shuffled", "control_rotation",
           "control_gaussian", "control_zeroed"]


def _label(protocol: str, features: str) -> str:
    return protocol if features == "-" else f"{protocol} ({features})"


def pooled(frame):
    """Success pooled over seeds per (protocol, features, n, C, SNR), with a Wilson interval."""
    import pandas as pd

    out = []
    for key, g in frame.groupby([*GROUP, "snr_db"], sort=False):
        wins = int(round((g["success"] * g["episodes"]).sum()))
        games = int(g["episodes"].sum())
        low, high = wilson_interval(wins, games)
        out.append({**dict(zip([*GROUP, "snr_db"], key)), "success": wins / games, "low": low, "high": high,
                    "games": games})
    return pd.DataFrame(out)


def beats_hash(table):
    """``(n, C, snr_db, protocol, features, success, hash success)`` where a learned protocol's interval lies
    wholly above the hash's at the same point."""
    hits = []
    for (n, C, snr), g in table.groupby(["channel_uses", "candidates", "snr_db"], sort=True):
        ref = g[g["protocol"] == "hash"]
        if not len(ref):
            continue
        h = ref.iloc[0]
        for r in g[g["protocol"].str.startswith("learned")].itertuples():
            if r.low > h["high"]:
                hits.append((int(n), int(C), float(snr), r.protocol, r.features, r.success, float(h["success"])))
    return hits


def _fmt(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def _success_tables(table) -> str:
    parts = []
    snrs = sorted(table["snr_db"].unique())
    for (n, C), t in table.groupby(["channel_uses", "candidates"], sort=True):
        head = "| protocol | " + " | ".join(f"{s:g} dB" for s in snrs) + " |"
        lines = [f"### n = {n}, C = {C}", "", head, "|---|" + "---|" * len(snrs)]
        for (p, f), g in t.groupby(["protocol", "features"], sort=False):
            cells = {float(r.snr_db): f"{r.success:.3f} [{r.low:.3f}, {r.high:.3f}]" for r in g.itertuples()}
            lines.append(f"| {_label(p, f)} | " + " | ".join(cells.get(float(s), "—") for s in snrs) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _meaning_table(frame) -> str:
    ref = frame[frame["reference"].astype(bool)]
    if not len(ref):
        return "No reference rows yet."
    snr = float(ref["snr_db"].iloc[0])
    cols = ["topsim", "posdis", "bosdis", "CIC (bits)", "real", "shuffled", "rotation", "gaussian", "zeroed"]
    lines = [f"At {snr:g} dB, mean over seeds, on the first {int(ref['analysis_games'].iloc[0])} games of each "
             "reference row. Controls: the listener's success on the received symbols (real) and on each control.",
             "", "| protocol | n | C | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for (p, f, n, C), g in ref.groupby(GROUP, sort=False):
        vals = [g[c].astype(float).mean() for c in MEANING]
        lines.append(f"| {_label(p, f)} | {n} | {C} | " + " | ".join(_fmt(v) for v in vals) + " |")
    return "\n".join(lines)


def write_report(frame, run_dir: Path, *, plots: bool = True) -> None:
    """``summary.md`` and, with ``plots``, ``success_vs_snr.png`` of the rows ``frame``."""
    table = pooled(frame)
    hits = beats_hash(table)
    if hits:
        answer = "\n".join(f"- n = {n}, C = {C}, {snr:g} dB: {_label(p, f)} {s:.3f} vs hash {h:.3f}"
                           for n, C, snr, p, f, s, h in hits)
    elif (table["protocol"] == "hash").any():
        answer = "No learned protocol's interval lies wholly above the hash's at any point of this grid."
    else:
        answer = "The hash was not in this run."
    text = (f"# Emergent protocols: {run_dir.name}\n\n"
            "Success pooled over seeds, 95% Wilson interval in brackets. Learned protocols are decoded by their own "
            "listener; vector and hash by maximum likelihood over the candidates for the channel applied. Every "
            "protocol plays the same games and noise.\n\n## Success vs SNR\n\n" + _success_tables(table)
            + "\n\n## Does a learned protocol beat the random code (the hash)?\n\nPoints where a learned protocol's "
            "interval lies wholly above the hash's:\n\n" + answer
            + "\n\n## What the messages mean, and whether the listener uses them\n\n" + _meaning_table(frame) + "\n")
    atomic_write_text(run_dir / "summary.md", text)
    if plots:
        plot_success(table, run_dir)


def plot_success(table, run_dir: Path) -> None:
    """``success_vs_snr.png``: one panel per (n, C); lines per protocol and features; 95% Wilson bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(table.groupby(["channel_uses", "candidates"], sort=True))
    finite = table["snr_db"][np.isfinite(table["snr_db"])]
    inf_at = (finite.max() + 6.0) if len(finite) else 30.0  # where SNR inf (noiseless) is drawn
    cols = min(len(panels), 2)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    for ax, ((n, C), t) in zip(axes.flat, panels):
        for (p, f), g in t.groupby(["protocol", "features"], sort=False):
            x = np.where(np.isinf(g["snr_db"]), inf_at, g["snr_db"])
            order = np.argsort(x)
            ax.plot(x[order], g["success"].to_numpy()[order], STYLES.get(f, "-"), marker="o", ms=3,
                    color=COLORS.get(p), label=_label(p, f))
            ax.fill_between(x[order], g["low"].to_numpy()[order], g["high"].to_numpy()[order], alpha=0.12,
                            color=COLORS.get(p))
        ax.axhline(1.0 / C, color="gray", lw=0.8, ls=":", label="chance (1/C)")
        ax.set_xlabel("SNR (dB)")
        ax.set_ylabel("success")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"n={n} channel uses, C={C}")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    entries = shared_legend(fig, axes.flat[: len(panels)], ncol=4)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (entries > 4), 1, 1))
    save_figure(fig, run_dir / "success_vs_snr.png", dpi=110)
    plt.close(fig)
