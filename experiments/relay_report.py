"""Tables and the plot of the relay experiment (``experiments.relay``; one row per (mode, H, SNR, seed)).

- ``pooled``: rows pooled over seeds per (mode, H, SNR): episode-weighted means with 95% intervals.
- ``first_below``: per SNR, the first hop count at which one mode's token accuracy falls below another's
  (analog forward vs digital regenerate), or none up to the largest H.
- ``write_report``: ``summary.md`` (token accuracy and chrF vs H per (SNR, mode), the crossing lines, the MCS the
  oracle picked, one passage as each mode delivers it at the largest H) and ``accuracy_vs_hops.png``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from calm.files import atomic_write_text, save_figure

__all__ = ["console_summary", "crossing_lines", "end_to_end_snr_db", "first_below", "pooled", "write_report"]

GROUP = ["mode", "snr_db", "hops"]
COLORS = {"forward": "tab:blue", "regenerate": "tab:red", "reencode": "tab:green"}
LABELS = {"forward": "analog forward (vector, AF)", "regenerate": "digital regenerate (separation)",
          "reencode": "CALM re-encode (vector)"}


def end_to_end_snr_db(snr_db: float, hops: int) -> float:
    """End-to-end SNR of an amplify-and-forward AWGN chain of ``hops`` equal hops (gain 1/sqrt(1 + sigma^2) per
    relay): 1 / ((1 + sigma^2)^H - 1), in dB (inf without noise)."""
    if snr_db == math.inf:
        return math.inf
    s2 = 10.0 ** (-snr_db / 10.0)
    return -10.0 * math.log10((1.0 + s2) ** hops - 1.0)


def pooled(frame):
    """Rows pooled over seeds per (mode, SNR, H): episode-weighted means; intervals from pooled standard errors."""
    import pandas as pd

    out = []
    for key, g in frame.groupby(GROUP, sort=False):
        w = g["episodes"].to_numpy(dtype=np.float64)
        row = {**dict(zip(GROUP, key)), "episodes": int(w.sum()), "mcs": ", ".join(sorted(set(g["mcs"].dropna())))}
        for metric in ("token_accuracy", "chrf"):
            mean = float(np.average(g[metric], weights=w))
            se = np.sqrt(np.sum((w * (g[f"{metric}_ci_high"] - g[f"{metric}_ci_low"]) / (2 * 1.96)) ** 2)) / w.sum()
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = mean, mean - 1.96 * se, mean + 1.96 * se
        out.append(row)
    return pd.DataFrame(out)


def first_below(table, low: str = "forward", high: str = "regenerate", metric: str = "token_accuracy"):
    """Per SNR of the pooled ``table``: the smallest H (among those both modes have) at which ``low``'s ``metric``
    is below ``high``'s (``hops_at``; ``never`` and NaN when it never is up to ``max_hops``), both values there (at
    ``max_hops`` when never), whether their 95% intervals are apart there (``apart``), and the smallest H at which
    ``low``'s interval lies wholly below ``high``'s (``hops_apart``, NaN: at none). Empty when a mode has no rows."""
    import pandas as pd

    out = []
    for snr, g in table.groupby("snr_db", sort=True):
        a = g[g["mode"] == low].set_index("hops")
        b = g[g["mode"] == high].set_index("hops")
        common = sorted(set(a.index) & set(b.index))
        if not common:
            continue
        at = next((h for h in common if a.loc[h, metric] < b.loc[h, metric]), None)
        apart = next((h for h in common if a.loc[h, f"{metric}_high"] < b.loc[h, f"{metric}_low"]), None)
        h = at if at is not None else common[-1]
        out.append({"snr_db": snr, "hops_at": math.nan if at is None else at, "never": at is None, "hops": common,
                    "max_hops": common[-1], "low": float(a.loc[h, metric]), "high": float(b.loc[h, metric]),
                    "apart": bool(a.loc[h, f"{metric}_high"] < b.loc[h, f"{metric}_low"]
                                  or b.loc[h, f"{metric}_high"] < a.loc[h, f"{metric}_low"]),
                    "hops_apart": math.nan if apart is None else apart})
    return pd.DataFrame(out)


def _snr(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def crossing_lines(table, low: str = "forward", high: str = "regenerate") -> list[str]:
    """One sentence per SNR: at which H ``low`` falls below ``high`` (token accuracy), or that it never does."""
    lines = []
    a = "analog forward" if low == "forward" else LABELS[low]
    b = "digital regenerate" if high == "regenerate" else LABELS[high]
    for r in first_below(table, low, high).itertuples():
        grid = "" if r.hops == list(range(1, r.max_hops + 1)) else f"; hop counts of this grid: {r.hops}"
        if r.never:
            lines.append(f"at {_snr(r.snr_db)} dB {a} never falls below {b}, up to {r.max_hops} hops (at "
                         f"H = {r.max_hops}: {r.low:.3f} vs {r.high:.3f} token accuracy{grid})")
            continue
        first = ", the smallest hop count of the grid" if r.hops_at == r.hops[0] else ""
        sure = ("95% intervals apart" if r.apart else "95% intervals overlapping; "
                + ("apart at no H" if math.isnan(r.hops_apart) else f"first apart at H = {int(r.hops_apart)}"))
        lines.append(f"at {_snr(r.snr_db)} dB {a} falls below {b} at H = {int(r.hops_at)}{first} ({r.low:.3f} vs "
                     f"{r.high:.3f} token accuracy, {sure}{grid})")
    return lines


def console_summary(frame, metric: str = "token_accuracy") -> str:
    """``metric`` vs H, one line per (SNR, mode), pooled over seeds, with the end-to-end SNR of analog forward."""
    if not len(frame):
        return "(no rows)"
    table = pooled(frame)
    hops = sorted(table["hops"].unique())
    lines = ["| Es/N0 per hop dB | mode | " + " | ".join(f"H={h}" for h in hops) + " |",
             "|---:|---|" + "---:|" * len(hops)]
    for (snr, mode), g in table.groupby(["snr_db", "mode"], sort=True):
        values = g.set_index("hops")[metric]
        cells = [f"{values[h]:.3f}" if h in values.index else "-" for h in hops]
        lines.append(f"| {_snr(snr)} | {mode} | " + " | ".join(cells) + " |")
    for snr in sorted(table["snr_db"].unique()):
        lines.append(f"| {_snr(snr)} | (forward end-to-end Es/N0 dB) | "
                     + " | ".join(f"{end_to_end_snr_db(snr, int(h)):.1f}" for h in hops) + " |")
    return "\n".join(lines)


def write_report(frame, run_dir: Path, *, plots: bool = True) -> None:
    """``summary.md`` and (``plots``) ``accuracy_vs_hops.png`` of the rows in ``frame``."""
    if not len(frame):
        atomic_write_text(run_dir / "summary.md", f"# Relay: {run_dir.name}\n\n(no rows)\n")
        return
    table = pooled(frame)
    crossings = crossing_lines(table)
    extra = crossing_lines(table, "reencode", "regenerate")
    mcs = table[table["mcs"] != ""][["snr_db", "hops", "mcs"]]
    examples = frame.loc[frame.groupby(["snr_db", "mode"], sort=True)["hops"].idxmax()]
    text = (f"# Relay: {run_dir.name}\n\n"
            "Token accuracy vs hop count H, pooled over seeds; each hop an AWGN channel at the SNR shown, the same "
            "passages and noise for every mode. The last lines give the end-to-end SNR of the analog "
            "amplify-and-forward chain, 1 / ((1 + sigma^2)^H - 1).\n\n" + console_summary(frame)
            + "\n\n## Analog forward vs digital regenerate\n\n"
            + ("\n".join(f"- {line}" for line in crossings) or "- (a mode is missing: no comparison)")
            + "\n\n## CALM re-encode vs digital regenerate\n\n"
            + ("\n".join(f"- {line}" for line in extra) or "- (a mode is missing: no comparison)")
            + "\n\n## chrF (sacrebleu, detokenised text)\n\n" + console_summary(frame, "chrf")
            + "\n\n## Regenerate: the code rate and modulation the oracle picked for the chain\n\n"
            + ("\n".join(f"- {_snr(r.snr_db)} dB, H = {r.hops}: {r.mcs}" for r in mcs.itertuples()) or "-")
            + "\n\n## One passage as each mode delivers it at the largest H\n\n| Es/N0 dB | mode | H | decoded | sent |\n"
              "|---:|---|---:|---|---|\n"
            + "\n".join(f"| {_snr(r.snr_db)} | {r.mode} | {r.hops} | {_cell(r.example)} | {_cell(r.example_target)} |"
                        for r in examples.itertuples()) + "\n")
    atomic_write_text(run_dir / "summary.md", text)
    if plots:
        plot_accuracy(table, run_dir / "accuracy_vs_hops.png")


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def plot_accuracy(table, path: Path, metric: str = "token_accuracy") -> None:
    """``metric`` vs H, one panel per SNR, one line per mode with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snrs = sorted(table["snr_db"].unique())
    fig, axes = plt.subplots(1, len(snrs), figsize=(4.5 * len(snrs), 3.6), sharey=True, squeeze=False)
    for ax, snr in zip(axes[0], snrs):
        for mode, g in table[table["snr_db"] == snr].groupby("mode", sort=False):
            g = g.sort_values("hops")
            ax.plot(g["hops"], g[metric], marker="o", color=COLORS.get(mode), label=LABELS.get(mode, mode))
            ax.fill_between(g["hops"], g[f"{metric}_low"], g[f"{metric}_high"], color=COLORS.get(mode), alpha=0.15)
        ax.set_xticks(sorted(int(h) for h in table["hops"].unique()))
        ax.set_title(f"{_snr(snr)} dB per hop")
        ax.set_xlabel("hops H")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
