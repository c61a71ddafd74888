"""Tables and the plot of the population study (``experiments.emergent_population``).

- ``pooled``: rows pooled over seeds per (protocol, P, pairing, SNR): success with a Wilson interval, the lowest
  and highest single pairing.
- ``compare_sizes``: per (protocol, pairing, SNR) each P > 1 against P = 1: higher, lower, or overlapping intervals.
- ``write_report``: ``summary.md`` (the success table, the answer to "do populations make protocols that new
  partners understand?", what newcomers learn) and ``success_vs_snr.png`` (one panel per protocol; colour: the
  pairing, line style: P; 95% Wilson bands; chance line).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calm.files import atomic_write_text, save_figure
from experiments.common.tables import shared_legend
from protocols.metrics import wilson_interval

__all__ = ["compare_sizes", "pooled", "write_report"]

GROUP = ["protocol", "size", "pairing", "snr_db"]
COLORS = {"trained": "tab:blue", "new-partner": "tab:red", "new-listener": "tab:green"}
STYLES = ["-", "--", ":", "-."]


def pooled(frame):
    """Success pooled over seeds per (protocol, P, pairing, SNR), with a Wilson interval."""
    import pandas as pd

    out = []
    for key, g in frame.groupby(GROUP, sort=True):
        games = g["episodes"] * g["pairs_played"]
        wins = int(round((g["success"] * games).sum()))
        low, high = wilson_interval(wins, int(games.sum()))
        out.append({**dict(zip(GROUP, key)), "success": wins / int(games.sum()), "low": low, "high": high,
                    "games": int(games.sum()), "pair_min": float(g["pair_min"].min()),
                    "pair_max": float(g["pair_max"].max()), "train_success": float(g["train_success"].mean()),
                    "chance": float(g["chance"].iloc[0]), "seeds": len(g)})
    return pd.DataFrame(out)


def compare_sizes(table) -> list[dict]:
    """Per (protocol, pairing, SNR) and P > 1: P's success against P = 1's, ``verdict`` higher / lower (the
    intervals do not overlap) or overlap."""
    out = []
    for (protocol, pairing, snr), g in table.groupby(["protocol", "pairing", "snr_db"], sort=True):
        one = g[g["size"] == 1]
        if not len(one):
            continue
        one = one.iloc[0]
        for r in g[g["size"] > 1].itertuples():
            verdict = "higher" if r.low > one["high"] else "lower" if r.high < one["low"] else "overlap"
            out.append({"protocol": protocol, "pairing": pairing, "snr_db": float(snr), "size": int(r.size),
                        "success": r.success, "low": r.low, "high": r.high, "one": float(one["success"]),
                        "one_low": float(one["low"]), "one_high": float(one["high"]), "verdict": verdict})
    return out


def _rank(pairing: str) -> int:
    order = ("trained", "new-partner", "new-listener")
    return order.index(pairing) if pairing in order else len(order)


def _cell(r) -> str:
    return f"{r.success:.3f} [{r.low:.3f}, {r.high:.3f}] ({r.pair_min:.3f}-{r.pair_max:.3f})"


def _success_tables(table) -> str:
    parts = []
    snrs = sorted(table["snr_db"].unique())
    for protocol, t in table.groupby("protocol", sort=True):
        lines = [f"### {protocol}", "", "| pairing | P | " + " | ".join(f"{s:g} dB" for s in snrs)
                 + " | training success |", "|---|---|" + "---|" * (len(snrs) + 1)]
        for (pairing, size), g in sorted(t.groupby(["pairing", "size"]), key=lambda kv: (_rank(kv[0][0]), kv[0][1])):
            cells = {float(r.snr_db): _cell(r) for r in g.itertuples()}
            lines.append(f"| {pairing} | {size} | " + " | ".join(cells.get(float(s), "—") for s in snrs)
                         + f" | {g['train_success'].mean():.3f} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _answer(table) -> str:
    comparisons = compare_sizes(table)
    if not comparisons:
        return "Only one population size in this run: nothing to compare (add --sizes 1 3)."
    lines = []
    for c in comparisons:
        word = {"higher": "**higher than**", "lower": "**lower than**", "overlap": "no different from"}[c["verdict"]]
        lines.append(f"- {c['protocol']}, {c['pairing']}, {c['snr_db']:g} dB: P = {c['size']} "
                     f"{c['success']:.3f} [{c['low']:.3f}, {c['high']:.3f}] is {word} P = 1 {c['one']:.3f} "
                     f"[{c['one_low']:.3f}, {c['one_high']:.3f}]")
    gaps = []
    for (protocol, size, snr), g in table.groupby(["protocol", "size", "snr_db"], sort=True):
        by = {r.pairing: r.success for r in g.itertuples()}
        if "trained" in by and "new-partner" in by:
            gaps.append(f"- {protocol}, P = {size}, {snr:g} dB: trained {by['trained']:.3f}, new partner "
                        f"{by['new-partner']:.3f} (gap {by['trained'] - by['new-partner']:+.3f})")
    return ("Each size against P = 1 at the same pairing and SNR (higher / lower: the 95% intervals do not overlap):"
            "\n\n" + "\n".join(lines) + ("\n\nWhat a speaker loses with a listener it never met (trained minus new "
                                          "partner):\n\n" + "\n".join(gaps) if gaps else ""))


def write_report(frame, run_dir: Path, *, plots: bool = True) -> None:
    """``summary.md`` and, with ``plots``, ``success_vs_snr.png`` of the rows ``frame``."""
    table = pooled(frame)
    C = int(frame["candidates"].iloc[0])
    n = int(frame["channel_uses"].iloc[0])
    text = (f"# Emergent populations: {run_dir.name}\n\n"
            f"n = {n} channel uses, C = {C} candidates (chance {1 / C:.3f}), {frame['channel'].iloc[0]} channel. "
            "Success pooled over the pairings of a row and over seeds, 95% Wilson interval in brackets, the lowest and "
            "highest single pairing in parentheses; each pairing plays its own games. trained: a speaker with a listener of its own population; new-partner: with a "
            "listener of the other population (never met); new-listener: with a fresh listener trained briefly "
            "against it. Training success: the populations' (newcomers' for new-listener) last logged training "
            "batches.\n\n## Success vs SNR\n\n" + _success_tables(table)
            + "\n\n## Does training with several partners make a protocol that new partners understand?\n\n"
            + _answer(table) + "\n")
    atomic_write_text(run_dir / "summary.md", text)
    if plots:
        plot_success(table, run_dir)


def plot_success(table, run_dir: Path) -> None:
    """``success_vs_snr.png``: one panel per protocol; colour per pairing, line style per P; Wilson bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(table.groupby("protocol", sort=True))
    sizes = sorted(table["size"].unique())
    finite = table["snr_db"][np.isfinite(table["snr_db"])]
    inf_at = (finite.max() + 6.0) if len(finite) else 30.0  # where SNR inf (noiseless) is drawn
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.6), squeeze=False)
    for ax, (protocol, t) in zip(axes.flat, panels):
        for (pairing, size), g in sorted(t.groupby(["pairing", "size"]), key=lambda kv: (_rank(kv[0][0]), kv[0][1])):
            x = np.where(np.isinf(g["snr_db"]), inf_at, g["snr_db"])
            order = np.argsort(x)
            color = COLORS.get(pairing)
            ax.plot(x[order], g["success"].to_numpy()[order], STYLES[sizes.index(size) % len(STYLES)], marker="o",
                    ms=3, color=color, label=f"{pairing}, P={size}")
            ax.fill_between(x[order], g["low"].to_numpy()[order], g["high"].to_numpy()[order], alpha=0.12,
                            color=color)
        ax.axhline(float(t["chance"].iloc[0]), color="gray", lw=0.8, ls=":", label="chance (1/C)")
        ax.set_xlabel("Es/N0 (dB)")
        ax.set_ylabel("success")
        ax.set_ylim(0, 1.02)
        ax.set_title(protocol)
        ax.grid(alpha=0.3)
    entries = shared_legend(fig, axes.flat, ncol=3)
    fig.tight_layout(rect=(0, 0.05 + 0.035 * -(-entries // 3), 1, 1))
    save_figure(fig, run_dir / "success_vs_snr.png", dpi=110)
    plt.close(fig)
