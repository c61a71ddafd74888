"""Tables and transcripts of the latent dialogue (``experiments.dialogue``): summary.md and transcripts.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

from calm.files import atomic_write_text

__all__ = ["savings", "transcript_markdown", "write_report"]


def _snr(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


def _flops(x: float) -> str:
    return f"{x / 1e6:.2f}M"


def per_message_table(frame) -> str:
    """One line per (protocol, channel, sigma), pooled over seeds (message-weighted means)."""
    head = ("| protocol | channel | Es/N0 dB | channel uses / message (/ token) | FLOPs sender | FLOPs receiver | "
            "FLOPs / message | token accuracy [95%] | message exact | wall generate s | wall link s |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for (p, ch, _sigma), g in frame.groupby(["protocol", "channel", "sigma"], sort=False):
        w = g["messages"] / g["messages"].sum()
        mean = {c: float((g[c] * w).sum()) for c in ("flops_sender", "flops_receiver", "flops_message",
                                                      "token_accuracy", "token_accuracy_ci_low",
                                                      "token_accuracy_ci_high", "message_exact", "wall_generate_s",
                                                      "wall_link_s")}
        r = g.iloc[0]
        lines.append(f"| {p} | {ch} | {_snr(r.snr_db)} | {int(r.channel_uses)} ({r.channel_uses_per_token:.1f}) | "
                     f"{_flops(mean['flops_sender'])} | {_flops(mean['flops_receiver'])} | "
                     f"{_flops(mean['flops_message'])} | {mean['token_accuracy']:.3f} "
                     f"[{mean['token_accuracy_ci_low']:.3f}, {mean['token_accuracy_ci_high']:.3f}] | "
                     f"{mean['message_exact']:.3f} | {mean['wall_generate_s']:.3f} | {mean['wall_link_s']:.4f} |")
    return "\n".join(lines)


def savings(frame) -> str:
    """Latent vs tokens at each (channel, sigma): channel uses and FLOPs per message, and their ratios."""
    if not {"latent", "tokens"} <= set(frame.protocol):
        return "(needs both protocols)"
    lines = ["| channel | Es/N0 dB | channel uses latent / tokens | saving | FLOPs latent / tokens | FLOPs change | "
             "token accuracy latent / tokens |", "|---|---:|---:|---:|---:|---:|---:|"]
    pooled = frame.groupby(["channel", "sigma", "protocol"], sort=False).agg(
        snr_db=("snr_db", "first"), n=("channel_uses", "first"), flops=("flops_message", "mean"),
        acc=("token_accuracy", "mean"))
    for (ch, _sigma), g in pooled.groupby(level=[0, 1], sort=False):
        g = g.droplevel([0, 1])
        if not {"latent", "tokens"} <= set(g.index):
            continue
        lat, tok = g.loc["latent"], g.loc["tokens"]
        lines.append(f"| {ch} | {_snr(lat.snr_db)} | {int(lat.n)} / {int(tok.n)} | {1 - lat.n / tok.n:+.1%} | "
                     f"{_flops(lat.flops)} / {_flops(tok.flops)} | {lat.flops / tok.flops - 1:+.1%} | "
                     f"{lat.acc:.3f} / {tok.acc:.3f} |")
    return "\n".join(lines)


def transcript_markdown(row) -> str:
    """The first dialogue of a row as markdown: the prompt, then each message as sent and as received."""
    lines = json.loads(row["transcript"]) or []
    out = []
    for m in lines:
        if m["sender"] == "prompt":
            out.append(f"- **prompt**: {m['sent']!r}")
        else:
            out.append(f"- **{m['sender']}** (message {m['turn']}) sent: {m['sent']!r}\n"
                       f"  - received (token accuracy {m['token_accuracy']:.2f}): {m['received']!r}")
    return "\n".join(out)


def write_report(frame, run_dir: Path) -> str:
    """Write summary.md and transcripts.md; returns the console summary."""
    if not len(frame):
        atomic_write_text(run_dir / "summary.md", "# Latent dialogue\n\nNo rows yet.\n")
        return "[run] no rows yet"
    per_message, saved = per_message_table(frame), savings(frame)
    summary = ("# Latent dialogue\n\nPer message (means over every message of every dialogue; FLOPs analytic, "
               "calm.flops, forward only):\n\n" + per_message + "\n\nLatent vs tokens per message:\n\n" + saved + "\n")
    atomic_write_text(run_dir / "summary.md", summary)
    parts = ["# Latent dialogue transcripts\n\nThe first dialogue of the first seed at each channel and SNR; "
             "`sent` is what the sender's CALM generated, `received` what the other agent decoded and continued "
             "from.\n"]
    first_seed = frame.seed.min()
    for (ch, sigma), g in frame[frame.seed == first_seed].groupby(["channel", "sigma"], sort=False):
        parts.append(f"## {ch}, Es/N0 {_snr(g.snr_db.iloc[0])} dB (sigma {sigma})\n")
        for _, row in g.iterrows():
            parts.append(f"### {row.protocol} ({int(row.channel_uses)} channel uses per message)\n\n"
                         + transcript_markdown(row) + "\n")
    atomic_write_text(run_dir / "transcripts.md", "\n".join(parts))
    return per_message + "\n\n" + saved
