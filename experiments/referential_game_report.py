"""Tables, bounds, the leak check and plots of the referential game (rows as in DESIGN.md section 7).

- ``pooled``: rows pooled over seeds per (protocol, receiver, channel, n, sigma), with a Wilson interval.
- ``bound``: the best success any scheme can reach at the channel's capacity (Fano inverted).
- ``snr_at_success``: per (protocol, receiver, channel, n) the SNR where success crosses 0.9,
  interpolated linearly in dB between grid points.
- ``leaks``: rows whose Fano bound at the lower end of the success interval exceeds the channel's
  capacity: information reached the listener around the channel (a bug in a protocol).
- ``write_report``: ``summary.md`` and the plots ``success_vs_snr.png``, ``delivered_vs_capacity.png``.
- ``write_extras`` (``headline``, ``message_examples``, ``BOUNDS``): the HTML report's own parts
  (``experiments.common.html_report``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from calm.files import atomic_write_text, save_figure
from experiments.common.tables import CONVENTION_NOTE, fmt_snr, shared_legend, snr_at_target, snr_db_header
from protocols.bounds import simplex_success
from protocols.metrics import best_success, fano_delivered_bits, wilson_interval

__all__ = ["BOUNDS", "above_simplex", "console_summary", "headline", "leaks", "message_examples", "pooled", "simplex_line",
           "snr_at_success", "write_extras", "write_report"]

GROUP = ["protocol", "receiver", "channel", "channel_uses"]
COLORS = {"vector": "tab:blue", "quantized": "tab:green", "hash": "tab:purple", "coded": "tab:red",
          "uncoded-tokens": "tab:orange"}
STYLES = {"soft": "-", "hard": "--"}


def simplex_line(channel: str, n: int, sigma: float, C: int) -> float:
    """The simplex line (``protocols.bounds.simplex_success``) of an AWGN point; NaN on other channels (the
    formula is AWGN's) and where C candidates do not fit a simplex in n dimensions."""
    if channel != "awgn" or C > n + 1:
        return float("nan")
    return simplex_success(int(n), float(sigma), int(C))


def pooled(frame):
    """Rows pooled over seeds per (protocol, receiver, channel, n, sigma): success (Wilson), the Fano bound at
    capacity, the simplex line, bits."""
    import pandas as pd

    out = []
    for key, g in frame.groupby([*GROUP, "sigma"], sort=False):
        wins = int(round((g["success"] * g["episodes"]).sum()))
        games = int(g["episodes"].sum())
        low, high = wilson_interval(wins, games)
        C = int(g["candidates"].iloc[0])
        capacity = float(g["capacity_bits"].iloc[0])
        out.append({**dict(zip([*GROUP, "sigma"], key)), "snr_db": g["snr_db"].iloc[0], "candidates": C,
                    "success": wins / games, "low": low, "high": high, "games": games,
                    "bound": best_success(capacity, C), "delivered_bits": fano_delivered_bits(wins / games, C),
                    "simplex": simplex_line(key[2], int(key[3]), float(key[4]), C),
                    "capacity_bits": capacity, "bits_sent": g["bits_sent"].iloc[0],
                    "token_accuracy": g["token_accuracy"].mean()})
    return pd.DataFrame(out)


def snr_at_success(table, target: float = 0.9):
    """Per (protocol, receiver, channel, n): the SNR in dB where pooled success first reaches ``target``
    (``experiments.common.tables.snr_at_target``)."""
    return snr_at_target(table, GROUP, "success", target)


def leaks(frame):
    """Rows whose Fano bound at ``success_ci_low`` exceeds their capacity (DESIGN.md section 3)."""
    if not len(frame):
        return frame
    floor = np.array([fano_delivered_bits(low, int(c)) for low, c in zip(frame.success_ci_low, frame.candidates)])
    return frame[floor > frame.capacity_bits.to_numpy() + 1e-9]


def above_simplex(frame):
    """Rows whose success interval lies wholly above the simplex line: better than ML decoding of the best known
    code for C messages, which a speaker that knows only its target cannot be (a leak, or a listener helped)."""
    if not len(frame):
        return frame
    line = np.array([simplex_line(r.channel, int(r.channel_uses), float(r.sigma), int(r.candidates))
                     for r in frame.itertuples()])
    with np.errstate(invalid="ignore"):
        return frame[frame.success_ci_low.to_numpy() > line + 1e-9]


def console_summary(frame) -> str:
    """Pooled success as one small table per (channel, n): a row per protocol/receiver, a column per SNR."""
    if not len(frame):
        return "(no rows)"
    table = pooled(frame)
    blocks = []
    for (channel, n), t in table.groupby(["channel", "channel_uses"], sort=False):
        sigmas = sorted(t["sigma"].unique())
        snrs = [snr_db_header(s) for s in sigmas]
        C = int(t["candidates"].iloc[0])
        lines = [f"{channel}, n={n}, C={C}: success pooled over seeds (Es/N0 dB across)",
                 "| protocol / receiver | " + " | ".join(snrs) + " |",
                 "|---|" + "---:|" * len(sigmas)]
        for (protocol, receiver), g in t.groupby(["protocol", "receiver"], sort=False):
            by = dict(zip(g["sigma"], g["success"]))
            lines.append(f"| {protocol} / {receiver} | " + " | ".join(
                f"{by[s]:.3f}" if s in by else "" for s in sigmas) + " |")
        by_sigma = t.drop_duplicates("sigma").set_index("sigma")
        lines.append("| *bound (Fano at capacity)* | " + " | ".join(f"{by_sigma['bound'][s]:.3f}" for s in sigmas) + " |")
        if by_sigma["simplex"].notna().any():
            lines.append("| *simplex line (ML, best code for C)* | " + " | ".join(
                "" if math.isnan(by_sigma["simplex"][s]) else f"{by_sigma['simplex'][s]:.3f}" for s in sigmas) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _full_table(table) -> str:
    lines = ["| protocol | receiver | channel | n | sigma | Es/N0 dB | bits sent | success (95% CI) | bound | "
             "delivered bits | capacity bits | token acc |",
             "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in table.itertuples():
        snr = "inf" if math.isinf(r.snr_db) else f"{r.snr_db:.1f}"
        cap = "inf" if math.isinf(r.capacity_bits) else f"{r.capacity_bits:.2f}"
        sent = "analog" if not np.isfinite(r.bits_sent) else f"{int(r.bits_sent)}"
        acc = "" if not np.isfinite(r.token_accuracy) else f"{r.token_accuracy:.3f}"
        lines.append(f"| {r.protocol} | {r.receiver} | {r.channel} | {r.channel_uses} | {r.sigma:g} | {snr} | {sent} "
                     f"| {r.success:.3f} ({r.low:.3f}-{r.high:.3f}) | {r.bound:.3f} | {r.delivered_bits:.2f} | {cap} "
                     f"| {acc} |")
    return "\n".join(lines)


def write_report(frame, run_dir: Path, *, plots: bool = True, target: float = 0.9) -> None:
    """``summary.md`` (pooled tables, the SNR at ``target`` success, leaks) and the PNG plots."""
    if not len(frame):
        atomic_write_text(run_dir / "summary.md", f"# Referential game: {run_dir.name}\n\n(no rows)\n")
        return
    table = pooled(frame)
    at = snr_at_success(table, target)
    columns = list(dict.fromkeys(zip(at["channel"], at["channel_uses"])))
    snr_lines = ["| protocol / receiver | " + " | ".join(f"{ch}, n={n}" for ch, n in columns) + " |",
                 "|---|" + "---:|" * len(columns)]
    for (protocol, receiver), g in at.groupby(["protocol", "receiver"], sort=False):
        by = {(r.channel, r.channel_uses): fmt_snr(r.snr_db_at_target, r.snr_db_lo, r.snr_db_hi)
              for r in g.itertuples()}
        snr_lines.append(f"| {protocol} / {receiver} | " + " | ".join(by.get(c, "") for c in columns) + " |")
    bad = leaks(frame)
    over = above_simplex(frame)
    simplex_text = ("None: no success interval lies above the simplex line." if not len(over) else "\n".join(
        f"- {r.protocol}/{r.receiver} {r.channel} n={r.channel_uses} sigma={r.sigma:g} seed={r.seed}: success >= "
        f"{r.success_ci_low:.3f} above the simplex line" for r in over.itertuples()))
    leak_text = ("None: at every point the Fano bound at the lower end of the success interval stays within "
                 "capacity." if not len(bad) else "\n".join(
                     f"- {r.protocol}/{r.receiver} {r.channel} n={r.channel_uses} sigma={r.sigma:g} seed={r.seed}: "
                     f"success >= {r.success_ci_low:.3f} over a {r.capacity_bits:.2f}-bit channel" for r in bad.itertuples()))
    text = (f"# Referential game: {run_dir.name}\n\n" + CONVENTION_NOTE + " "
            "Success pooled over seeds (95% Wilson interval); bits per message. Two reference lines, in italics: "
            "`bound (Fano at capacity)`: no scheme beats it at the channel's capacity (Fano inverted; loose: at n = 32 "
            "it is 1.000 at every SNR of the grid, so it cannot catch a leak there); `simplex line`: maximum-likelihood "
            "decoding of a regular simplex of C points with the same power and n (AWGN), the best known code for C "
            "messages, which a speaker that knows only its target cannot beat (a protocol above it is flagged).\n\n"
            + console_summary(frame) + f"\n\n## SNR needed for {target:.0%} success\n\n"
            "Interpolated linearly in dB between grid points; `< x`: already reached at the grid's lowest SNR x, "
            "`> x`: not reached at any finite SNR up to x (the noise-free point does not count).\n\n"
            + "\n".join(snr_lines) + "\n\n## Leak check\n\n" + leak_text + "\n\n## Above the simplex line\n\n"
            + simplex_text + "\n\n## Every pooled point\n\n"
            + _full_table(table) + "\n")
    atomic_write_text(run_dir / "summary.md", text)
    if plots:
        plot_results(table, run_dir)


def plot_results(table, run_dir: Path) -> None:
    """``success_vs_snr.png`` (a panel per channel and n; bands: 95% Wilson; the bound line) and
    ``delivered_vs_capacity.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(table.groupby(["channel", "channel_uses"], sort=False))
    finite = table["snr_db"][np.isfinite(table["snr_db"])]
    inf_at = (finite.max() + 6.0) if len(finite) else 30.0  # where sigma = 0 (SNR inf) is drawn
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    for ax, ((channel, n), t) in zip(axes.flat, panels):
        C = int(t["candidates"].iloc[0])
        for (protocol, receiver), g in t.groupby(["protocol", "receiver"], sort=False):
            x = np.where(np.isinf(g["snr_db"]), inf_at, g["snr_db"])
            order = np.argsort(x)
            ax.plot(x[order], g["success"].to_numpy()[order], STYLES.get(receiver, "-"), marker="o", ms=3,
                    color=COLORS.get(protocol), label=f"{protocol} / {receiver}")
            ax.fill_between(x[order], g["low"].to_numpy()[order], g["high"].to_numpy()[order], alpha=0.12,
                            color=COLORS.get(protocol))
        b = t.drop_duplicates("sigma")
        xb = np.where(np.isinf(b["snr_db"]), inf_at, b["snr_db"])
        order = np.argsort(xb)
        ax.plot(xb[order], b["bound"].to_numpy()[order], color="black", lw=1.2, label="bound: Fano at capacity")
        if b["simplex"].notna().any():
            ax.plot(xb[order], b["simplex"].to_numpy()[order], color="black", lw=1.2, ls="-.",
                    label="simplex line: ML, best code for C")
        ax.axhline(1.0 / C, color="gray", lw=0.8, ls=":", label=f"chance (1/{C})")
        ax.set_xlabel(f"Es/N0 (dB); sigma 0 drawn at {inf_at:.0f}")
        ax.set_ylabel("success")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{channel}, n={n} channel uses, C={C}")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    entries = shared_legend(fig, axes.flat[: len(panels)], ncol=6)
    legend_rows = -(-entries // 6)  # about 0.22 inch a row, under the panels' x labels
    fig.tight_layout(rect=(0, min(0.4, (0.1 + 0.22 * legend_rows) / fig.get_figheight()), 1, 1))
    save_figure(fig, run_dir / "success_vs_snr.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    fin = table[np.isfinite(table["capacity_bits"])]
    C = int(table["candidates"].iloc[0])
    for (protocol, receiver), g in fin.groupby(["protocol", "receiver"], sort=False):
        ax.scatter(g["capacity_bits"], g["delivered_bits"], s=12, marker="o" if receiver == "soft" else "x",
                   color=COLORS.get(protocol), label=f"{protocol} / {receiver}")
    if len(fin):
        lo, hi = float(fin["capacity_bits"].min()), float(fin["capacity_bits"].max())
        grid = np.geomspace(min(lo, 0.1), hi, 200)
        ax.plot(grid, np.minimum(grid, math.log2(C)), color="gray", lw=0.8, ls=":", label="min(capacity, log2 C)")
        ax.set_xscale("log")
    ax.axhline(math.log2(C), color="black", lw=0.8, ls="-.", label=f"log2 C = {math.log2(C):.1f}")
    ax.set_ylim(0, 1.15 * math.log2(C))
    ax.set_xlabel("capacity bits per message")
    ax.set_ylabel("delivered bits (Fano lower bound)")
    ax.set_title("Delivered vs capacity bits per message")
    ax.legend(fontsize=6, loc="upper left", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, run_dir / "delivered_vs_capacity.png", dpi=110)
    plt.close(fig)


BOUNDS = [
    "*bound (Fano at capacity)*: the best success **any** scheme can reach over a channel of that capacity (Fano's "
    "inequality inverted); a point above it means information reached the listener around the channel (the leak "
    "check). Loose: at n = 32 it is 1.000 across the grid.",
    "*simplex line*: maximum-likelihood decoding of a regular simplex of C points at the same power and n over AWGN, "
    "the best known code for C messages: it bounds a speaker that knows only its target (a protocol above it is "
    "flagged), not one that sees the distractors.",
    "chance: 1/C, a listener that guesses.",
]


def headline(frame, target: float = 0.9):
    """The headline table: per protocol, receiver, channel and n, the Es/N0 where pooled success reaches ``target``
    (-inf: already at the noisiest point, inf: not at any finite one), and the success with its 95% Wilson interval
    at the grid's noisiest point."""
    import pandas as pd

    table = pooled(frame)
    at = snr_at_success(table, target)
    out = []
    for r in at.itertuples():
        g = table[(table.protocol == r.protocol) & (table.receiver == r.receiver) & (table.channel == r.channel)
                  & (table.channel_uses == r.channel_uses) & np.isfinite(table.snr_db)]
        row = {"protocol": r.protocol, "receiver": r.receiver, "channel": r.channel, "n": int(r.channel_uses),
               f"Es/N0 for {target:.0%} (dB)": round(float(r.snr_db_at_target), 2)}
        if len(g):
            p = g.nsmallest(1, "snr_db").iloc[0]
            row.update({"noisiest Es/N0 (dB)": round(float(p.snr_db), 2), "success there": round(float(p.success), 4),
                        "95% low": round(float(p.low), 4), "95% high": round(float(p.high), 4),
                        "simplex line there": round(float(p.simplex), 4)})
        out.append(row)
    return pd.DataFrame(out)


def message_examples(checkpoint: Path, protocol_dirs: dict[str, str], passage: np.ndarray, *, channel: str,
                     sigmas: list[float], channel_options: dict, seed: int = 0):
    """One held-out passage sent by every protocol that carries tokens and decoded by its receiver at ``sigmas`` over
    ``channel``: ``(passage text, DataFrame of protocol, n, Es/N0, text out, token accuracy)``."""
    import pandas as pd

    from experiments.common.links import open_autoencoder
    from experiments.common.sweep import make_channel
    from protocols import load_protocol

    target = np.asarray(passage, dtype=np.int64)[None, :]
    model, tok = open_autoencoder(checkpoint, target.shape[1])
    rows = []
    for key, directory in protocol_dirs.items():
        protocol = load_protocol(Path(directory), autoencoder=model)
        if not protocol.decodes_tokens:
            continue
        x = protocol.encode(target)
        for sigma in sigmas:
            link = make_channel(channel, sigma, **channel_options)
            y, gain = link.transmit(x, np.random.default_rng(seed))
            ids = protocol.decode(y, channel=link, gain=gain)
            rows.append({"protocol@n": key, "Es/N0 (dB)": snr_db_header(sigma), "text out": tok.decode(ids[0]),
                         "token accuracy": round(float((ids[0] == target[0]).mean()), 3)})
    return tok.decode(target[0]), pd.DataFrame(rows)


def write_extras(frame, run_dir: Path, *, checkpoint: Path, protocol_dirs: dict[str, str], passage: np.ndarray,
                 sigmas: tuple[float, ...], channel: str, channel_options: dict) -> None:
    """The HTML report's headline, bounds and decoded examples (at no noise, the middle and the noisiest sigma)."""
    from experiments.common.html_report import write_report_extras

    finite = sorted(s for s in sigmas if s > 0)
    picked = sorted({0.0, *finite[len(finite) // 2 : len(finite) // 2 + 1], *finite[-1:]})
    text_in, examples = message_examples(checkpoint, protocol_dirs, passage, channel=channel, sigmas=picked,
                                         channel_options=channel_options)
    write_report_extras(run_dir, headline=headline(frame), bounds=BOUNDS, examples=examples,
                        headline_note="Success pooled over seeds with its 95% Wilson interval at the noisiest point; "
                                      "the Es/N0 where it crosses 90% is interpolated between grid points (-inf: "
                                      "reached at the noisiest point already; inf: at no finite one). The hash "
                                      "protocol, a random code, is the yardstick: this task tests channel coding.",
                        examples_note=f"One held-out passage, {text_in!r}, sent over {channel} by each protocol that "
                                      "carries tokens and decoded by its own receiver (the hash protocol carries no "
                                      "tokens: it is scored on the candidates alone).")
