"""Tables, bounds and plots of the reconstruction experiment (one row per grid point, ``COLUMNS``).

- ``passage_metrics`` (``experiments.common.tables``): per-passage token accuracy, exact matches and chrF.
- ``pooled``: rows pooled over seeds per (protocol, channel, rho, sigma): means with 95% intervals; ``snr_at_accuracy``.
- ``snr_gap``: the SNR two protocols need for the same token accuracy (``GAP_PAIRS``), and each curve's steepest fall.
- ``reference_lines``: per grid SNR the three lines of ``protocols.bounds``, each named for what it bounds: the
  lossless prefix at capacity (``bound_accuracy``), the finite-blocklength line (AWGN, 1% frame errors) and the
  rate-distortion ceiling, from the source statistics the run recorded (config.json ``facts``).
- ``write_report``: ``summary.md`` (accuracy tables with the reference lines, the SNR for target token accuracies, the
  learned-vs-separated gaps, the oracle's MCS with header and payload bits, decoded examples) and plots.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

import experiments.common.tables as tables
from calm.files import atomic_write_text, save_figure
from experiments.common.rundir import run_facts
from experiments.common.tables import fmt_snr, passage_metrics, shared_legend, snr_at_target, snr_db_header
from protocols.bounds import finite_length_accuracy, rate_distortion_accuracy

__all__ = ["LINES", "FRAME_ERROR", "console_summary", "examples", "passage_metrics", "plot_prior_gain", "pooled",
           "prior_gain", "prior_gain_table", "reference_lines", "snr_at_accuracy", "snr_gap", "write_report"]

#: frame-error rate of the finite-blocklength line
FRAME_ERROR = 0.01
#: the reference lines: column -> (label, what it bounds, in one sentence)
LINES = {
    "bound_accuracy": ("lossless prefix at capacity", "a separated scheme coding a prefix losslessly at the source "
                       "model's entropy rate and delivering it at capacity with infinitely long blocks (the rest "
                       "guessed); a finite frame delivers less, a lossy or joint scheme may deliver more"),
    "finite_length_accuracy": ("finite blocklength (AWGN, 1% frame errors)", "the same prefix coding through one "
                               "frame of n uses with the best code of that length (normal approximation): what a "
                               "separated link can promise at this n"),
    "rd_accuracy": ("rate-distortion ceiling", "no scheme, joint or separated, reaches a higher token accuracy over "
                    "this capacity (Shannon lower bound for token errors at the measured entropy rate)"),
}

#: (learned, separated) pairs whose SNR gap the report tabulates, where both ran
GAP_PAIRS = (("jscc", "separation"), ("lm-jscc", "separation"), ("lm-jscc", "separation-lm"))
GROUP = ["protocol", "channel", "rho", "channel_uses"]
COLORS = {"vector": "tab:blue", "jscc": "tab:cyan", "separation": "tab:red", "separation-lm": "tab:pink",
          "uncoded-tokens": "tab:orange", "quantized": "tab:green", "vector-prior": "tab:purple",
          "vector-snap": "tab:brown", "uncoded-tokens-prior": "tab:olive", "lm-jscc": "tab:blue",
          "lm-jscc-noiseless": "tab:gray"}
#: the LM-prior listeners, each compared with plain decoding of the same symbols (its base protocol)
PRIOR_LISTENERS = {"vector-prior": "vector", "vector-snap": "vector", "uncoded-tokens-prior": "uncoded-tokens"}


def pooled(frame):
    """Rows pooled over seeds: episode-weighted means; intervals from the pooled standard errors."""
    import pandas as pd

    out = []
    for key, g in frame.groupby([*GROUP, "sigma"], sort=False):
        w = g["episodes"].to_numpy(dtype=np.float64)
        row = {**dict(zip([*GROUP, "sigma"], key)), "snr_db": g["snr_db"].iloc[0], "episodes": int(w.sum()),
               "capacity_bits": g["capacity_bits"].iloc[0], "bits_sent": g["bits_sent"].iloc[0],
               "bound_accuracy": g["bound_accuracy"].iloc[0], "mcs": ", ".join(sorted(set(g["mcs"].dropna())))}
        for metric in ("token_accuracy", "chunk_exact", "passage_exact", "chrf"):
            mean = float(np.average(g[metric], weights=w))
            # the half-width of each seed's interval is 1.96 SE; pool the SEs of independent seeds
            se = np.sqrt(np.sum((w * (g[f"{metric}_ci_high"] - g[f"{metric}_ci_low"]) / (2 * 1.96)) ** 2)) / w.sum()
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = mean, mean - 1.96 * se, mean + 1.96 * se
        out.append(row)
    return pd.DataFrame(out)


def reference_lines(table, facts: dict | None):
    """``table`` (pooled) with ``finite_length_accuracy`` (AWGN rows only, NaN elsewhere) and ``rd_accuracy``;
    both NaN without ``facts`` (``experiments.common.rundir.run_facts``)."""
    table = table.copy()
    finite, rd = [], []
    for r in table.itertuples():
        if facts is None or not np.isfinite(r.capacity_bits):
            finite.append(np.nan if facts is None else 1.0)
            rd.append(np.nan if facts is None else 1.0)
            continue
        L, H = int(facts["passage_length"]), float(facts["entropy_bits_per_token"])
        rd.append(rate_distortion_accuracy(r.capacity_bits, H, L, int(facts["vocab_size"])))
        finite.append(finite_length_accuracy(int(r.channel_uses), float(r.sigma), H, L, float(facts["fill_accuracy"]),
                                             FRAME_ERROR) if r.channel == "awgn" else np.nan)
    table["finite_length_accuracy"], table["rd_accuracy"] = finite, rd
    return table


def snr_at_accuracy(table, target: float = 0.9, metric: str = "token_accuracy"):
    """Per (protocol, channel, rho): the Es/N0 (dB) where ``metric`` first reaches ``target``, interpolated in dB
    (``experiments.common.tables.snr_at_target``: ``-inf`` reached at the lowest SNR of the grid, ``inf`` never)."""
    return snr_at_target(table, GROUP, metric, target)


def _snr_for(snr: np.ndarray, value: np.ndarray, level: float) -> float:
    """The lowest SNR (dB, interpolated) from which the curve stays >= ``level`` (nan: never)."""
    above = value >= level
    if not above[-1]:
        return math.nan
    i = len(above) - 1
    while i > 0 and above[i - 1]:
        i -= 1
    if i == 0:
        return float(snr[0]) if value[0] == level else -math.inf
    return float(snr[i - 1] + (level - value[i - 1]) / (value[i] - value[i - 1]) * (snr[i] - snr[i - 1]))


def snr_gap(table, a: str = "jscc", b: str = "separation", levels: int = 4):
    """Per (channel, rho): the SNR ``a`` and ``b`` need for the same token accuracy, and the gap ``b - a`` (dB).

    The accuracy levels are spread over the range both curves cover on the finite-SNR grid (from the higher
    of their lowest values to the lower of their highest); a positive gap means ``a`` needs less SNR. Also per
    curve the steepest fall between neighbouring grid points (accuracy per dB): a cliff shows as a large one.
    """
    import pandas as pd

    out = []
    for (channel, rho, n), t in table[np.isfinite(table["snr_db"])].groupby(["channel", "rho", "channel_uses"],
                                                                              sort=False):
        curves = {}
        for name in (a, b):
            g = t[t["protocol"] == name].sort_values("snr_db")
            if len(g) >= 2:
                curves[name] = (g["snr_db"].to_numpy(), g["token_accuracy"].to_numpy())
        if len(curves) < 2:
            continue
        lo = max(v.min() for _, v in curves.values())
        hi = min(v.max() for _, v in curves.values())
        # accuracy gained per dB between neighbouring SNRs: the fall seen going down in SNR
        steep = {name: float(np.max(np.diff(v) / np.diff(x))) for name, (x, v) in curves.items()}
        cross = _crossing(curves[a], curves[b])
        for level in np.linspace(lo, hi, levels + 2)[1:-1] if hi > lo else []:
            sa, sb = (_snr_for(*curves[name], level) for name in (a, b))
            out.append({"channel": channel, "rho": rho, "channel_uses": n, "token_accuracy": float(level),
                        f"snr_db_{a}": sa, f"snr_db_{b}": sb, "gap_db": sb - sa,
                        f"{b}_overtakes_db": cross, f"steepest_{a}": steep[a], f"steepest_{b}": steep[b],
                        f"best_{a}": float(curves[a][1].max()), f"best_{b}": float(curves[b][1].max())})
    return pd.DataFrame(out)


def _crossing(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """The SNR (dB, interpolated) above which curve ``b`` stays above curve ``a`` (on a shared grid; nan: never,
    -inf: everywhere)."""
    if not np.array_equal(a[0], b[0]):
        return math.nan
    x, d = a[0], b[1] - a[1]
    if d[-1] <= 0:
        return math.nan
    i = len(d) - 1
    while i > 0 and d[i - 1] > 0:
        i -= 1
    return -math.inf if i == 0 else float(x[i - 1] + (0 - d[i - 1]) / (d[i] - d[i - 1]) * (x[i] - x[i - 1]))


def _fmt_cross(value: float) -> str:
    return "never" if math.isnan(value) else "everywhere" if value == -math.inf else f"{value:.1f}"


def gap_table(table, a: str = "jscc", b: str = "separation") -> str:
    """Markdown of ``snr_gap``: one line per (channel, rho, accuracy level)."""
    gaps = snr_gap(table, a, b)
    if not len(gaps):
        return f"(needs {a} and {b} at two or more finite SNRs)"
    lines = [f"| channel | rho | token accuracy | Es/N0 {a} (dB) | Es/N0 {b} (dB) | gap (dB, + favours {a}) | "
             f"{b} overtakes {a} above (dB) | steepest fall {a} / {b} (acc/dB) | best {a} / {b} (finite SNR) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d in gaps.to_dict("records"):  # by name: itertuples renames columns like snr_db_lm-jscc
        lines.append(f"| {d['channel']} | {d['rho']:g} | {d['token_accuracy']:.3f} | {d[f'snr_db_{a}']:.1f} | {d[f'snr_db_{b}']:.1f} "
                     f"| {d['gap_db']:+.1f} | {_fmt_cross(d[f'{b}_overtakes_db'])} | {d[f'steepest_{a}']:.4f} / {d[f'steepest_{b}']:.4f} "
                     f"| {d[f'best_{a}']:.3f} / {d[f'best_{b}']:.3f} |")
    return "\n".join(lines)


def console_summary(frame, metric: str = "token_accuracy", facts: dict | None = None) -> str:
    """Pooled ``metric`` as one table per (channel, rho): a row per protocol, a column per SNR, the reference
    lines (``LINES``; the finite-length and rate-distortion ones need ``facts``, see ``rundir.run_facts``)."""
    if not len(frame):
        return "(no rows)"
    table = reference_lines(pooled(frame), facts)
    blocks = []
    for (channel, rho, n), t in table.groupby(["channel", "rho", "channel_uses"], sort=False):
        sigmas = sorted(t["sigma"].unique())
        lines = [f"{channel}, rho={rho:g} (n={n}): {metric.replace('_', ' ')} pooled over seeds (Es/N0 dB across)",
                 "| protocol | " + " | ".join(snr_db_header(s) for s in sigmas) + " |", "|---|" + "---:|" * len(sigmas)]
        fmt = "{:.1f}" if metric == "chrf" else "{:.3f}"
        for protocol, g in t.groupby("protocol", sort=False):
            by = dict(zip(g["sigma"], g[metric]))
            lines.append(f"| {protocol} | " + " | ".join(fmt.format(by[s]) if s in by else "" for s in sigmas) + " |")
        if metric == "token_accuracy":
            by_sigma = t.drop_duplicates("sigma").set_index("sigma")
            for column, (label, _) in LINES.items():
                values = by_sigma[column]
                if values.notna().any():
                    lines.append(f"| *{label}* | " + " | ".join("" if math.isnan(values[s]) else f"{values[s]:.3f}"
                                                                for s in sigmas) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def snr_table(table, targets: tuple[float, ...]) -> str:
    """Markdown: per protocol and target token accuracy, the Es/N0 (dB) needed, a column per (channel, rho)."""
    lines = []
    for target in targets:
        at = snr_at_accuracy(table, target)
        columns = list(dict.fromkeys(zip(at["channel"], at["rho"])))
        lines += ["| protocol, accuracy >= " + f"{target:g} | " + " | ".join(f"{ch}, rho={rho:g}" for ch, rho in columns)
                  + " |", "|---|" + "---:|" * len(columns)]
        for protocol, g in at.groupby("protocol", sort=False):
            by = {(r.channel, r.rho): fmt_snr(r.snr_db_at_target, r.snr_db_lo, r.snr_db_hi) for r in g.itertuples()}
            lines.append(f"| {protocol} | " + " | ".join(by.get(c, "") for c in columns) + " |")
        lines.append("")
    return "\n".join(lines)


def mcs_table(table, L: int, header: str = "fixed") -> str:
    """Markdown: the oracle's MCS per separation protocol, channel, rho, SNR; k bits = header (T) + payload."""
    h, rows = math.ceil(math.log2(L + 1)), table[table["mcs"] != ""]
    where = f"a fixed {h}-bit header" if header == "fixed" else "a Huffman codeword"
    lines = [f"Each frame: T, the tokens it carries, in {where}, then range code.\n", "| protocol | channel | rho | SNR "
             "| MCS | k bits | header | payload | header share |", "|---|---|---:|---:|---|" + "---:|" * 4]
    for r in rows.itertuples():
        k = r.bits_sent if r.bits_sent > 0 and "," not in r.mcs else math.nan  # nan: nothing sent, or several picks
        cells = (f"{k:.0f} | {h} | {k - h:.0f} | {h / k:.0%}" if header == "fixed" else f"{k:.0f} | Huffman | |") if k == k else " | | |"
        lines.append(f"| {r.protocol} | {r.channel} | {r.rho:g} | {r.snr_db:.0f} | {r.mcs} | {cells} |")
    return "\n".join(lines) if len(rows) else "-"


def write_report(frame, run_dir: Path, *, examples: list[dict[str, Any]] | None = None, plots: bool = True,
                 targets: tuple[float, ...] = (0.9, 0.5, 0.25)) -> None:
    """``summary.md`` and the plots. ``examples``: decoded texts of one passage (see ``examples_table``)."""
    if not len(frame):
        atomic_write_text(run_dir / "summary.md", f"# Reconstruction: {run_dir.name}\n\n(no rows)\n")
        return
    facts = run_facts(run_dir)
    table = reference_lines(pooled(frame), facts)
    text = (f"# Reconstruction: {run_dir.name}\n\n" + tables.CONVENTION_NOTE + " "
            "Token accuracy pooled over seeds. The reference lines, in italics, each bound something else:\n\n"
            + "".join(f"- *{label}*: {what}.\n" for label, what in LINES.values())
            + (f"\nSource statistics on the test passages the trials play: {facts['entropy_bits_per_token']:.3f} "
               f"bits/token, best-guess fill accuracy {facts['fill_accuracy']:.3f}.\n" if facts else "")
            + "\n" + console_summary(frame, facts=facts) + "\n\n## chrF (sacrebleu, detokenised text)\n\n"
            + console_summary(frame, "chrf")
            + "\n\n## SNR needed for a token accuracy\n\nInterpolated in dB between grid points; `< x`: reached at the "
            "grid's lowest SNR x; `> x`: not reached at any finite SNR up to x.\n\n" + snr_table(table, targets)
            + "\n\n## Learned vs separated: SNR at equal token accuracy\n\nLevels spread over the accuracy range both "
            "curves cover at finite SNR; the lowest SNR from which each curve stays at or above the level, interpolated "
            "in dB (`-inf`: already at the grid's lowest SNR). Steepest fall: the largest accuracy change per dB "
            "between neighbouring grid SNRs (a cliff shows as a large one).\n\n" + "\n\n".join(
                f"**{a} vs {b}**\n\n{gap_table(table, a, b)}" for a, b in GAP_PAIRS if {a, b} <= set(table["protocol"]))
            + "\n\n## Separation: the code rate and modulation the oracle picked\n\n"
            + mcs_table(table, int(frame["passage_length"].iloc[0]), facts.get("separation_header", "fixed")) + "\n")
    gains = prior_gain(table)
    if len(gains):
        text += ("\n## LM-prior listener: token accuracy gain over plain decoding\n\nThe same symbols decoded by the "
                 "listener with its LM as the prior (the CALM for the vector symbols, the token baseline for `uncoded-tokens-prior`) "
                 "minus plain decoding of the same symbols (`vector`, `uncoded-tokens`), pooled over seeds; 95% "
                 "intervals from the two pooled standard errors added in quadrature (conservative: the passages and "
                 "noise are the same, the difference is paired).\n\n" + prior_gain_table(gains) + "\n")
    if examples:
        text += "\n## One passage as each protocol delivers it\n\n" + examples_table(examples) + "\n"
    atomic_write_text(run_dir / "summary.md", text)
    if plots:
        plot_metric(table, run_dir / "accuracy_vs_snr.png", "token_accuracy", "token accuracy", bound=True)  # with lines
        plot_metric(table, run_dir / "chrf_vs_snr.png", "chrf", "chrF")
        if len(gains):
            plot_prior_gain(gains, run_dir / "prior_gain_vs_snr.png")


def prior_gain(table, metric: str = "token_accuracy"):
    """Per LM-prior listener, channel, rho and sigma of the pooled ``table``: its ``metric`` minus plain decoding's
    (its base protocol's) with a 95% interval (the two standard errors in quadrature). Empty without such rows."""
    import pandas as pd

    out = []
    bases = {base: table[table["protocol"] == base].set_index(["channel", "rho", "sigma"])
             for base in set(PRIOR_LISTENERS.values())}
    for r in table[table["protocol"].isin(list(PRIOR_LISTENERS))].itertuples():
        plain = bases[PRIOR_LISTENERS[r.protocol]]
        if (r.channel, r.rho, r.sigma) not in plain.index:
            continue
        b = plain.loc[(r.channel, r.rho, r.sigma)]
        se = np.hypot((getattr(r, f"{metric}_high") - getattr(r, f"{metric}_low")) / 3.92,
                      (b[f"{metric}_high"] - b[f"{metric}_low"]) / 3.92)
        gain = getattr(r, metric) - b[metric]
        out.append({"listener": r.protocol, "channel": r.channel, "rho": r.rho, "sigma": r.sigma, "snr_db": r.snr_db,
                    "plain": b[metric], "prior": getattr(r, metric), "gain": gain, "gain_low": gain - 1.96 * se,
                    "gain_high": gain + 1.96 * se})
    return pd.DataFrame(out)


def prior_gain_table(gains) -> str:
    """Markdown: plain and prior-listener token accuracy and the gain with its interval, per SNR."""
    lines = ["| listener | channel | rho | Es/N0 dB | plain | prior | gain [95% CI] |", "|---|---|---:|---:|---:|---:|---|"]
    for r in gains.sort_values(["listener", "channel", "rho", "snr_db"]).itertuples():
        lines.append(f"| {r.listener} | {r.channel} | {r.rho:g} | {snr_db_header(r.sigma)} | {r.plain:.3f} | "
                     f"{r.prior:.3f} | {r.gain:+.3f} [{r.gain_low:+.3f}, {r.gain_high:+.3f}] |")
    return "\n".join(lines)


def plot_prior_gain(gains, path: Path) -> None:
    """Token accuracy gain of each LM-prior listener over plain decoding vs SNR, one line per (listener, channel,
    rho), 95% bands, the zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    finite = gains[np.isfinite(gains["snr_db"])]
    for key, g in finite.groupby(["listener", "channel", "rho"], sort=False):
        g = g.sort_values("snr_db")
        line, = ax.plot(g["snr_db"], g["gain"], marker="o", ms=3, label=f"{key[0]}, {key[1]}, rho={key[2]:g}",
                        color=COLORS.get(key[0]) if finite["rho"].nunique() == 1 else None)
        ax.fill_between(g["snr_db"], g["gain_low"], g["gain_high"], alpha=0.15, color=line.get_color())
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("Es/N0 (dB)")
    ax.set_ylabel("token accuracy gain over plain decoding")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def examples_table(examples: list[dict[str, Any]]) -> str:
    """A markdown table: protocol, channel, rho, SNR and the decoded text (``|`` escaped)."""
    lines = ["| protocol | channel | rho | Es/N0 dB | decoded text |", "|---|---|---:|---:|---|"]
    for e in examples:
        lines.append(f"| {e['protocol']} | {e['channel']} | {e['rho']:g} | {snr_db_header(e['sigma'])} | "
                     + " ".join(e["text"].split()).replace("|", "\\|") + " |")
    return "\n".join(lines)


def plot_metric(table, path: Path, metric: str, label: str, *, bound: bool = False) -> None:
    """One panel per (channel, rho): ``metric`` vs SNR per protocol, 95% bands, the reference lines (``LINES``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    channels = list(dict.fromkeys(table["channel"]))
    rhos = sorted(table["rho"].unique())
    finite = table["snr_db"][np.isfinite(table["snr_db"])]
    inf_at = (finite.max() + 6.0) if len(finite) else 30.0
    fig, axes = plt.subplots(len(channels), len(rhos), figsize=(4.2 * len(rhos), 3.6 * len(channels)),
                             squeeze=False, sharey=True)
    # the curves use a fraction of the full scale at this model size: zoom to what is drawn
    finite_rows = table.loc[np.isfinite(table["snr_db"])]
    drawn = [table[f"{metric}_high"].max()] + ([finite_rows[c].max() for c in LINES if c in finite_rows] if bound else [])
    top = min(100.0 if metric == "chrf" else 1.0, 1.1 * float(np.nanmax(drawn)))
    for i, channel in enumerate(channels):
        for j, rho in enumerate(rhos):
            ax = axes[i, j]
            t = table[(table["channel"] == channel) & (table["rho"] == rho)]
            for protocol, g in t.groupby("protocol", sort=False):
                x = np.where(np.isinf(g["snr_db"]), inf_at, g["snr_db"])
                order = np.argsort(x)
                ax.plot(x[order], g[metric].to_numpy()[order], marker="o", ms=3, color=COLORS.get(protocol),
                        label=protocol)
                ax.fill_between(x[order], g[f"{metric}_low"].to_numpy()[order], g[f"{metric}_high"].to_numpy()[order],
                                alpha=0.15, color=COLORS.get(protocol))
            if bound and len(t):  # at finite SNR only: with no noise the capacity is infinite (the lines are 1)
                b = t.drop_duplicates("sigma").loc[lambda d: np.isfinite(d["snr_db"])]
                xb = b["snr_db"].to_numpy()
                order = np.argsort(xb)
                for column, style in (("bound_accuracy", "--"), ("finite_length_accuracy", ":"), ("rd_accuracy", "-.")):
                    if column in b and b[column].notna().any():
                        ax.plot(xb[order], b[column].to_numpy()[order], color="black", lw=1.1, ls=style,
                                label=LINES[column][0])
            n = int(t["channel_uses"].iloc[0]) if len(t) else 0
            ax.set_title(f"{channel}, rho={rho:g} (n={n})", fontsize=9)
            ax.set_ylim(0, top)
            ax.grid(alpha=0.3)
            if i == len(channels) - 1:
                ax.set_xlabel(f"Es/N0 (dB); sigma 0 at {inf_at:.0f}")
            if j == 0:
                ax.set_ylabel(label)
    entries = shared_legend(fig, axes.flat, ncol=4)
    fig.tight_layout(rect=(0, 0.04 * (1 + (entries - 1) // 4), 1, 1))  # a legend row per four entries
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def examples(frame, sigmas: int = 3) -> list[dict[str, Any]]:
    """One passage as each protocol delivers it at a few SNRs (the first channel and the largest rho)."""
    rows = frame[(frame["seed"] == frame["seed"].min()) & (frame["channel"] == frame["channel"].iloc[0])
                 & (frame["rho"] == frame["rho"].max())]
    chosen = sorted(rows["sigma"].unique())
    chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, min(sigmas, len(chosen))).round().astype(int)]
    out = [{"protocol": "(sent)", "channel": rows["channel"].iloc[0], "rho": rows["rho"].iloc[0], "sigma": 0.0,
            "text": rows["example_target"].iloc[0]}] if len(rows) else []
    return out + [{"protocol": r.protocol, "channel": r.channel, "rho": r.rho, "sigma": r.sigma, "text": r.example}
                  for r in rows[rows["sigma"].isin(chosen)].itertuples()]
