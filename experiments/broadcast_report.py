"""Tables and plots of the broadcast experiment (``experiments.broadcast``): results.csv lines, summary.md, PNG.

A trial's row (``ROW_COLUMNS``) holds every listener's results in its ``listeners`` list; ``long_frame`` turns
rows into ``results.csv`` lines (``COLUMNS``), one per (protocol, rate_for, listener, seed).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from calm.files import atomic_write_text, save_figure
from experiments.common.multiagent import METRICS, metric_columns

__all__ = ["COLUMNS", "LISTENER_COLUMNS", "ROW_COLUMNS", "console_summary", "long_frame", "per_listener_table",
           "plot_listeners", "pooled", "write_report"]

#: one trial's row (rows/<key>.json): ``listeners`` is a list of dicts of ``LISTENER_COLUMNS``
ROW_COLUMNS = ["protocol", "rate_for", "rate_snr_db", "mcs", "channel_uses", "passage_length", "bits_sent",
               "listeners", "episodes", "seed", "checkpoint"]
LISTENER_COLUMNS = ["listener", "snr_db", "sigma", "capacity_bits", "bound_accuracy", *metric_columns()]
#: results.csv: one line per listener of each trial
COLUMNS = ["protocol", "rate_for", "rate_snr_db", "mcs", "listener", "snr_db", "sigma", "channel_uses",
           "passage_length", "bits_sent", "capacity_bits", "bound_accuracy", *metric_columns(), "episodes", "seed",
           "checkpoint"]
POLICY = ["protocol", "rate_for"]


def long_frame(rows):
    """Trial rows (a DataFrame of ``ROW_COLUMNS``) -> one line per listener (``COLUMNS``), in row order."""
    import pandas as pd

    lines = []
    for row in rows.to_dict("records"):
        for listener in row["listeners"]:
            lines.append({**{k: v for k, v in row.items() if k != "listeners"}, **listener})
    return pd.DataFrame(lines, columns=COLUMNS)


def pooled(frame):
    """Lines pooled over seeds per (protocol, rate_for, listener): episode-weighted means, intervals from the
    pooled standard errors (one seed: its own interval)."""
    import pandas as pd

    out = []
    for key, g in frame.groupby([*POLICY, "listener"], sort=False):
        w = g["episodes"].to_numpy(dtype=np.float64)
        row = {**dict(zip([*POLICY, "listener"], key)), "rate_snr_db": g["rate_snr_db"].iloc[0],
               "snr_db": g["snr_db"].iloc[0], "bound_accuracy": g["bound_accuracy"].iloc[0],
               "bits_sent": g["bits_sent"].iloc[0], "episodes": int(w.sum()),
               "mcs": ", ".join(sorted(set(g["mcs"].dropna())))}
        for metric in METRICS:
            mean = float(np.average(g[metric], weights=w))
            if len(g) == 1:
                low, high = float(g[f"{metric}_ci_low"].iloc[0]), float(g[f"{metric}_ci_high"].iloc[0])
            else:
                se = np.sqrt(np.sum((w * (g[f"{metric}_ci_high"] - g[f"{metric}_ci_low"]) / (2 * 1.96)) ** 2)) / w.sum()
                low, high = mean - 1.96 * se, mean + 1.96 * se
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = mean, low, high
        out.append(row)
    return pd.DataFrame(out)


def policy_label(protocol: str, rate_for: str) -> str:
    """``vector``, or ``separation, rate for -3 dB``."""
    return protocol if rate_for == "-" else f"{protocol}, rate for {rate_for}"


def _unicast(table):
    """The diagonal of the rated rows: each listener served at the rate picked for its own SNR (what M separate
    links, M times the channel uses, would give); empty when no rated protocol ran."""
    rated = table[table["rate_for"] != "-"]
    return rated[np.isclose(rated["rate_snr_db"].astype(float), rated["snr_db"])]


def per_listener_table(table, metric: str = "token_accuracy", *, chrf: bool = True) -> str:
    """Markdown: one line per protocol / rate policy, one column per listener SNR; cells the pooled ``metric``
    [95%] (and chrF); the separation bound and, for rated protocols, each listener at its own rate below."""
    listeners = table.drop_duplicates("listener").sort_values("listener")
    head = ["protocol / rate", "MCS", "bits sent", *(f"listener {int(r.listener)}: {r.snr_db:g} dB"
                                                     for r in listeners.itertuples())]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|" + "---:|" * len(listeners)]

    def cell(r) -> str:
        d = 1 if metric == "chrf" else 3
        text = f"{r[metric]:.{d}f} [{r[f'{metric}_low']:.{d}f}, {r[f'{metric}_high']:.{d}f}]"
        return text + (f" / {r['chrf']:.1f}" if chrf and metric != "chrf" else "")

    for (protocol, rate_for), g in table.groupby(POLICY, sort=False):
        g = g.set_index("listener")
        bits = g["bits_sent"].iloc[0]
        cells = [cell(g.loc[m]) if m in g.index else "" for m in listeners["listener"]]
        lines.append(f"| {policy_label(protocol, rate_for)} | {g['mcs'].iloc[0] or '-'} | "
                     f"{'-' if math.isnan(bits) else f'{bits:.0f}'} | " + " | ".join(cells) + " |")
    for protocol, g in _unicast(table).groupby("protocol", sort=False):
        g = g.set_index("listener")
        cells = [f"{cell(g.loc[m])} ({g.loc[m, 'mcs']})" if m in g.index else "" for m in listeners["listener"]]
        lines.append(f"| {protocol}, each its own rate ({len(listeners)} unicasts: {len(listeners)}x the channel "
                     f"uses) | | | " + " | ".join(cells) + " |")
    if metric == "token_accuracy":
        bounds = [f"{b:.3f}" for b in listeners["bound_accuracy"]]
        lines.append("| separation bound (capacity at each listener's SNR) | | | " + " | ".join(bounds) + " |")
    return "\n".join(lines)


def console_summary(frame) -> str:
    """The per-listener token accuracy table (pooled over seeds) for the console."""
    if not len(frame):
        return "[run] no rows yet"
    return "Token accuracy [95%] / chrF per listener:\n" + per_listener_table(pooled(frame))


def plot_listeners(table, path: Path) -> None:
    """Grouped bars: per listener SNR, one bar per protocol / rate policy; token accuracy and chrF panels with
    95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    listeners = table.drop_duplicates("listener").sort_values("listener")
    policies = list(dict.fromkeys(zip(table["protocol"], table["rate_for"])))
    x = np.arange(len(listeners))
    width = 0.8 / max(len(policies), 1)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.0 * len(METRICS), 3.8))
    cmap = plt.get_cmap("tab10")
    for ax, metric in zip(np.atleast_1d(axes), METRICS):
        for i, (protocol, rate_for) in enumerate(policies):
            g = table[(table["protocol"] == protocol) & (table["rate_for"] == rate_for)].set_index("listener")
            g = g.reindex(listeners["listener"])
            y = g[metric].to_numpy(dtype=float)
            err = np.stack([y - g[f"{metric}_low"].to_numpy(dtype=float), g[f"{metric}_high"].to_numpy(dtype=float) - y])
            ax.bar(x + (i - (len(policies) - 1) / 2) * width, y, width, yerr=np.clip(err, 0, None), capsize=2,
                   color=cmap(i % 10), label=policy_label(protocol, rate_for))
        ax.set_xticks(x, [f"{s:g} dB" for s in listeners["snr_db"]])
        ax.set_xlabel("listener Es/N0 (dB)")
        ax.set_ylabel("token accuracy" if metric == "token_accuracy" else "chrF")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle("One broadcast, every listener at its own SNR", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def write_report(frame, run_dir: Path, *, plots: bool = True) -> None:
    """Write summary.md (and broadcast.png with ``plots``) from the results.csv lines ``frame``."""
    if not len(frame):
        atomic_write_text(run_dir / "summary.md", "# Broadcast\n\nNo rows yet.\n")
        return
    table = pooled(frame)
    r = frame.iloc[0]
    summary = (
        "# Broadcast: one speaker, every listener at its own SNR\n\n"
        f"Passages of L = {int(r.passage_length)} tokens, each sent once in n = {int(r.channel_uses)} channel uses "
        f"to every listener (AWGN, each listener its own noise); {int(table.episodes.iloc[0])} passages per cell "
        f"({frame.seed.nunique()} seed{'s' * (frame.seed.nunique() > 1)}). The vector is analog: each listener decodes at its own quality. The "
        "digital link carries one MCS for everyone, the oracle's pick for the listener its rate is *for*; the "
        "listeners below that SNR lose the frame, those above gain nothing.\n\n"
        "Token accuracy [95%] / chrF per listener:\n\n" + per_listener_table(table) + "\n\n"
        "chrF [95%] per listener:\n\n" + per_listener_table(table, "chrf", chrf=False) + "\n"
        + ("\n![per listener](broadcast.png)\n" if plots else ""))
    atomic_write_text(run_dir / "summary.md", summary)
    if plots:
        plot_listeners(table, run_dir / "broadcast.png")
