"""Tables and the plot of the emergent-protocol study (``experiments.emergent``).

- ``pooled``: rows pooled over seeds per (protocol, features, n, C, split, training SNR, SNR): success with a
  Wilson interval.
- ``beats_hash``: per (n, C, SNR) the learned protocols whose interval lies wholly above the hash's.
- ``write_report``: ``summary.md`` (the success table per (n, C), the answer to "does a learned protocol beat
  the random code, and where?", held-out vs unseen-corpus success, the train/test SNR mismatch table, the
  meaning and influence table at the reference SNR, example messages) and the plots ``success_vs_snr.png`` (one
  panel per (n, C), 95% Wilson bands, chance line) and ``snr_mismatch.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calm.files import atomic_write_text, save_figure
from experiments.common.tables import CONVENTION_NOTE, shared_legend
from protocols.metrics import wilson_interval

__all__ = ["beats_hash", "pooled", "write_report"]

GROUP = ["protocol", "features", "channel_uses", "candidates", "split", "train_snr"]
COLORS = {"learned-continuous": "tab:blue", "learned-gumbel": "tab:green", "learned-reinforce": "tab:olive",
          "learned-coded": "tab:cyan", "vector": "tab:red", "hash": "tab:purple"}
STYLES = {"calm": "-", "bag": "--", "-": "-"}
# lines of pairs trained at one SNR, by training SNR
SINGLE_SNR_COLORS = ("tab:orange", "tab:brown", "tab:pink", "tab:gray", "black")
MEANING = ["topsim", "posdis", "bosdis", "causal_influence", "control_real", "control_shuffled", "control_rotation",
           "control_gaussian", "control_zeroed", "control_other_task"]


def _label(protocol: str, features: str) -> str:
    return protocol if features == "-" else f"{protocol} ({features})"


def pooled(frame):
    """Success pooled over seeds per (protocol, features, n, C, split, training SNR, SNR), with a Wilson interval."""
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
    cols = ["topsim", "posdis", "bosdis", "CIC (bits)", "real", "shuffled", "rotation", "gaussian", "zeroed",
            "other task"]
    lines = [f"At {snr:g} dB, mean over seeds, on the first {int(ref['analysis_games'].iloc[0])} games of each "
             "reference row. Controls: the listener's success on the received symbols (real) and on each control; other "
             "task: the same protocol's messages about unseen-corpus passages, through the same channel.",
             "", "| protocol | n | C | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for (p, f, n, C), g in ref.groupby(GROUP[:4], sort=False):
        vals = [g[c].astype(float).mean() for c in MEANING]
        lines.append(f"| {_label(p, f)} | {n} | {C} | " + " | ".join(_fmt(v) for v in vals) + " |")
    return "\n".join(lines)


def _generalisation_table(table) -> str:
    """Success on the held-out test passages beside the unseen corpus's, per protocol, n and SNR."""
    test, unseen = (table[table["split"] == sp].set_index([*GROUP[:4], "train_snr", "snr_db"]) for sp in
                    ("test", "unseen"))
    both = test.join(unseen, rsuffix="_unseen", how="inner").sort_index(level=["protocol", "features",
                                                                             "channel_uses", "snr_db"], sort_remaining=False)
    if not len(both):
        return "No unseen-corpus rows in this run."
    lines = ["| protocol | n | C | Es/N0 (dB) | held-out test | unseen corpus | unseen - test |", "|---|---|---|---|---|---|---|"]
    for key, r in both.iterrows():
        p, f, n, C, _, snr = key
        lines.append(f"| {_label(p, f)} | {n} | {C} | {snr:g} | {r.success:.3f} [{r.low:.3f}, {r.high:.3f}] | "
                     f"{r.success_unseen:.3f} [{r.low_unseen:.3f}, {r.high_unseen:.3f}] | "
                     f"{r.success_unseen - r.success:+.3f} |")
    return "\n".join(lines)


def _mismatch_table(table, main_train: str) -> str:
    """Learned protocols trained at single SNRs beside those trained over ``main_train``, at every test SNR."""
    test = table[table["split"] == "test"]
    learned = test[test["protocol"].str.startswith("learned")]
    kinds = learned.groupby(["protocol", "features", "channel_uses"])["train_snr"].nunique()
    keep = {k for k, v in kinds.items() if v > 1}
    if not keep:
        return "No mismatch pairs in this run."
    snrs = sorted(test["snr_db"].unique())
    lines = ["| protocol | n | C | trained at (dB) | " + " | ".join(f"{x:g} dB" for x in snrs) + " |",
             "|---|---|---|---|" + "---|" * len(snrs)]
    rows = learned[[k in keep for k in zip(learned["protocol"], learned["features"], learned["channel_uses"])]]
    for (p, f, n, C, t), g in rows.groupby(["protocol", "features", "channel_uses", "candidates", "train_snr"]):
        cells = {float(r.snr_db): f"{r.success:.3f} [{r.low:.3f}, {r.high:.3f}]" for r in g.itertuples()}
        name = f"{t} ({'range' if t == main_train else 'one SNR'})"
        lines.append(f"| {_label(p, f)} | {n} | {C} | {name} | " + " | ".join(cells.get(float(x), "—") for x in snrs)
                     + " |")
    return "\n".join(lines)


def write_report(frame, run_dir: Path, *, main_train: str, plots: bool = True, examples: str = "") -> None:
    """``summary.md`` and, with ``plots``, ``success_vs_snr.png`` and ``snr_mismatch.png`` of the rows ``frame``;
    ``main_train`` is the main pairs' ``train_snr`` label; ``examples`` a markdown section of example messages."""
    frame = frame.assign(train_snr=frame["train_snr"].astype(str))  # "0" and "6" read back from CSV as numbers
    table = pooled(frame)
    main_pairs = table[table["train_snr"].isin([main_train, "-"])]
    main = main_pairs[main_pairs["split"] == "test"]
    hits = beats_hash(main)
    if hits:
        answer = "\n".join(f"- n = {n}, C = {C}, {snr:g} dB: {_label(p, f)} {s:.3f} vs hash {h:.3f}"
                           for n, C, snr, p, f, s, h in hits)
    elif (main["protocol"] == "hash").any():
        answer = "No learned protocol's interval lies wholly above the hash's at any point of this grid."
    else:
        answer = "The hash was not in this run."
    text = (f"# Emergent protocols: {run_dir.name}\n\n" + CONVENTION_NOTE + " "
            "Success pooled over seeds, 95% Wilson interval in brackets. Learned protocols are decoded by their own "
            "listener; vector and hash by maximum likelihood over the candidates for the channel applied. Every "
            "protocol plays the same games and noise.\n\n## Success vs SNR (held-out test passages)\n\n"
            f"Learned pairs trained over {main_train} dB.\n\n" + _success_tables(main)
            + "\n\n## Does a learned protocol beat the random code (the hash)?\n\nPoints where a learned protocol's "
            "interval lies wholly above the hash's:\n\n" + answer
            + "\n\n## Generalisation: the unseen corpus\n\nThe same pairs and fixed codes on passages of a corpus "
            "that no model, pair or PCA saw, beside the held-out test passages.\n\n" + _generalisation_table(main_pairs)
            + "\n\n## Train/test SNR mismatch\n\nPairs trained at one SNR, played at every SNR, beside the pairs "
            "trained over the range (snr_mismatch.png).\n\n" + _mismatch_table(table, main_train)
            + "\n\n## What the messages mean, and whether the listener uses them\n\n" + _meaning_table(frame)
            + ("\n\n" + examples if examples else "") + "\n")
    atomic_write_text(run_dir / "summary.md", text)
    if plots:
        plot_success(main, run_dir)
        plot_mismatch(table[table["split"] == "test"], run_dir, main_train)


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
        ax.set_xlabel("Es/N0 (dB)")
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


def plot_mismatch(table, run_dir: Path, main_train: str) -> None:
    """``snr_mismatch.png``: one panel per (n, C); success vs test SNR of each learned protocol trained over the
    range (solid) and at each single SNR (dashed, a dotted line at the training SNR), the hash for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = table.groupby(["protocol", "features", "channel_uses"])["train_snr"].transform("nunique")
    rows = table[(trained > 1) | (table["protocol"] == "hash")]
    panels = sorted({(n, C) for n, C in rows.loc[trained > 1, ["channel_uses", "candidates"]].itertuples(index=False)})
    if not panels:
        return
    singles = sorted({t for t in rows["train_snr"].unique() if t not in (main_train, "-")})
    cols = min(len(panels), 2)
    fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(6.2 * cols, 4.4 * -(-len(panels) // cols)),
                             squeeze=False)
    for ax, (n, C) in zip(axes.flat, panels):
        here = rows[(rows["channel_uses"] == n) & (rows["candidates"] == C)]
        for (p, f, t), g in here.groupby(["protocol", "features", "train_snr"], sort=False):
            g = g[np.isfinite(g["snr_db"])].sort_values("snr_db")
            single = t not in (main_train, "-")
            color = SINGLE_SNR_COLORS[singles.index(t) % len(SINGLE_SNR_COLORS)] if single else COLORS.get(p)
            label = _label(p, f) + ("" if t == "-" else f", trained {t} dB")
            ax.plot(g["snr_db"], g["success"], "--" if single else "-", marker="o", ms=3, color=color, label=label)
            ax.fill_between(g["snr_db"], g["low"], g["high"], alpha=0.12, color=color)
            if single:
                ax.axvline(float(t), color=color, lw=0.7, ls=":")
        ax.axhline(1.0 / C, color="gray", lw=0.8, ls=":", label="chance (1/C)")
        ax.set_xlabel("test Es/N0 (dB)")
        ax.set_ylabel("success")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"n={n}, C={C}: trained at one SNR vs over {main_train} dB")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    entries = shared_legend(fig, axes.flat[: len(panels)], ncol=3)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (entries > 3), 1, 1))
    save_figure(fig, run_dir / "snr_mismatch.png", dpi=110)
    plt.close(fig)
