"""Tables and plots of the K study (``experiments.scaling_k``): summary.md, frontier.png, robustness.png, link.png.

The **frontier** at a budget is the best size of a family there (the sizes share the budget). A K is
*beyond the baseline's frontier* at a budget when its BrierLM's 95% interval lies above the baseline's at the
same training FLOPs; *below* when it lies under it; otherwise the two overlap and the data cannot tell.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from calm.files import atomic_write_text, save_figure

__all__ = ["frontier", "link_frame", "verdicts", "write_report"]


def _fmt(value, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def frontier(lm) -> dict[str, list[dict]]:
    """{family: rows of its best size at each budget (by BrierLM, then Brier-1), cheapest first}."""
    out: dict[str, list[dict]] = {}
    for family, group in lm.groupby("family", sort=False):
        best = []
        for _, rows in group.groupby("budget"):
            best.append(rows.sort_values(["brier_lm", "brier_1"], ascending=False).iloc[0].to_dict())
        out[family] = sorted(best, key=lambda r: r["budget"])
    return out


def verdicts(front: dict[str, list[dict]], score: str = "brier_lm") -> dict[str, list[str]]:
    """{family: one word per budget: beyond / below / overlap} against the baseline at the same budget."""
    base = {r["budget"]: r for r in front.get("baseline", [])}
    out = {}
    for family, rows in front.items():
        if family == "baseline":
            continue
        words = []
        for r in rows:
            b = base.get(r["budget"])
            if b is None:
                words.append("no baseline")
            elif r[f"{score}_ci_low"] > b[f"{score}_ci_high"]:
                words.append("beyond")
            elif r[f"{score}_ci_high"] < b[f"{score}_ci_low"]:
                words.append("below")
            else:
                words.append("overlap")
        out[family] = words
    return out


def link_frame(ae):
    """The communication view as one long table (protocol, K, channel uses per token, SNR, metrics)."""
    import pandas as pd

    rows = [r for links in ae["link"].dropna() for r in json.loads(links)]
    return pd.DataFrame(rows)


def _ae_table(ae, ae_batch_size: int) -> list[str]:
    lines = ["| K | l | token acc | σ=0.3 | σ=1.0 | KL (nats) | KL/dim mean | most KL | collapsed | training FLOPs |",
             "|" + "---|" * 10]
    for _, a in ae[ae["K"] > 0].sort_values("K").iterrows():
        noise = json.loads(a["noise_token_accuracy"])
        kl = np.asarray(json.loads(a["kl_per_dim"]))
        # analytic, full softmax (the tiny preset trains with a sampled one, so this bounds it from above)
        train_flops = 3 * (a["encoder_flops_per_token"] + a["decoder_flops_per_token"]) * a["K"] * ae_batch_size * a["steps"]
        lines.append(f"| {int(a['K'])} | {int(a['latent_dim'])} | {a['token_accuracy']:.4f} | "
                     f"{noise.get('0.3', float('nan')):.4f} | {noise.get('1.0', float('nan')):.4f} | "
                     f"{a['kl_total']:.1f} | {kl.mean():.2f} | {kl.max():.2f} (dim {int(kl.argmax())}) | "
                     f"{int(a['collapsed_dims'])}/{int(a['latent_dim'])} | {train_flops:.2g} |")
    return lines


def _lm_table(front, speeds: dict[str, float] | None) -> list[str]:
    lines = ["| model | Brier-1 | Brier-2 | Brier-3 | Brier-4 | BrierLM [95%] | train FLOPs/token | "
             "inference FLOPs/token | generate tok/s | on-manifold |", "|" + "---|" * 10]
    names = sorted(front, key=lambda f: (f != "baseline", int(f.removeprefix("calm-k")) if f != "baseline" else 0))
    for family in names:
        r = front[family][-1]
        speed = (speeds or {}).get(f"{family}-{r['size']}", r["generate_tokens_per_s"])
        lines.append(f"| {'token baseline' if family == 'baseline' else family} | "
                     + " | ".join(_fmt(r[f"brier_{n}"], 4) for n in range(1, 5))
                     + f" | {_fmt(r['brier_lm'])} [{_fmt(r['brier_lm_ci_low'])}, {_fmt(r['brier_lm_ci_high'])}] | "
                     f"{r['flops_per_token']:.3g} | {r['inference_flops_per_token']:.3g} | "
                     f"{speed:.0f} | "
                     f"{_fmt(r['on_manifold'], 2)} |")
    return lines


def _plot_frontier(front, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, score, label in ((axes[0], "brier_lm", "BrierLM"), (axes[1], "brier_1", "Brier-1")):
        for family, rows in front.items():
            x = np.array([r["flops"] for r in rows])
            y = np.array([r[score] for r in rows])
            err = np.array([[r[score] - r[f"{score}_ci_low"] for r in rows], [r[f"{score}_ci_high"] - r[score]
                                                                               for r in rows]])
            style = dict(color="black", lw=2.2, ls="--") if family == "baseline" else {}
            ax.errorbar(x, y, yerr=np.maximum(err, 0), marker="o", capsize=3, label=family, **style)
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel(label + (" (0-100 scale)" if score == "brier_lm" else ""))
        ax.grid(alpha=0.3)
    axes[0].set_title("BrierLM vs training compute (best size per budget)")
    axes[1].set_title("Brier-1 vs training compute")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def _plot_robustness(ae, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for _, a in ae[ae["K"] > 0].sort_values("K").iterrows():
        noise = json.loads(a["noise_token_accuracy"])
        sig = [0.0] + [float(s) for s in noise]
        acc = [a["token_accuracy"]] + list(noise.values())
        ax.plot(sig, acc, marker="o", label=f"K={int(a['K'])}, l={int(a['latent_dim'])}")
    ax.set_xlabel("noise sigma added to mu")
    ax.set_ylabel("held-out token accuracy")
    ax.set_title("Autoencoder robustness per K")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def _plot_link(link, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    uses = sorted(link["channel_uses_per_token"].unique(), reverse=True)
    fig, axes = plt.subplots(2, len(uses), figsize=(5 * len(uses), 7), squeeze=False)
    for j, c in enumerate(uses):
        part = link[link["channel_uses_per_token"] == c]
        for (protocol, K), rows in part.groupby(["protocol", "K"], sort=False):
            rows = rows.sort_values("snr_db")
            label = "separation (oracle MCS)" if protocol == "separation" else f"vector K={K}"
            style = dict(color="black", ls="--") if protocol == "separation" else {}
            for i, metric in enumerate(("token_accuracy", "success")):
                axes[i, j].plot(rows["snr_db"], rows[metric], marker="o", label=label, **style)
        for i, metric in enumerate(("token accuracy", "referential success")):
            axes[i, j].set_title(f"{metric}, {c} channel uses per token")
            axes[i, j].set_xlabel("Es/N0 (dB)")
            axes[i, j].grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def write_report(ae, lm, run_dir: Path, *, plots: bool = True, ae_batch_size: int = 256,
                 speeds: dict[str, float] | None = None) -> None:
    """summary.md (the autoencoder and language-model tables per K, the frontier verdicts, the link table) and
    the PNG plots."""
    front = frontier(lm) if len(lm) else {}
    lines = ["# K study: autoencoder, CALM and link per K", ""]
    if len(ae) and (ae["K"] > 0).any():
        lines += ["## Autoencoders (test split; σ: noise on mu)", "", *_ae_table(ae, ae_batch_size), ""]
    if front:
        lines += [f"## Language models at the largest budget ({max(lm['budget']):.3g} training FLOPs)", "",
                  *_lm_table(front, speeds), "",
                  "Generation tokens/s: " + ("8 prompts x 64 tokens, every model timed side by side in one process "
                                             "(best of 3 rounds)." if speeds else "timed in each trial, on a machine "
                                             "shared with the other trials (noisy)."), ""]
    if front:
        lines += ["## Frontier (best size per budget)", "", "| family | budget | size | steps | Brier-1 [95%] | "
                  "BrierLM [95%] | on-manifold |", "|---|---|---|---|---|---|---|"]
        for family, rows in front.items():
            for r in rows:
                lines.append(f"| {family} | {r['budget']:.3g} | {r['size']} | {int(r['steps'])} | "
                             f"{_fmt(r['brier_1'], 4)} [{_fmt(r['brier_1_ci_low'], 4)}, {_fmt(r['brier_1_ci_high'], 4)}] | "
                             f"{_fmt(r['brier_lm'])} [{_fmt(r['brier_lm_ci_low'])}, {_fmt(r['brier_lm_ci_high'])}] | "
                             f"{_fmt(r['on_manifold'], 2)} |")
        lines += ["", "Against the token baseline at the same training FLOPs (BrierLM 95% intervals; Brier-1 in "
                  "brackets):", ""]
        v_lm, v_1 = verdicts(front, "brier_lm"), verdicts(front, "brier_1")
        for family in v_lm:
            budgets = [f"{r['budget']:.3g}" for r in front[family]]
            lines.append(f"- {family}: " + ", ".join(f"{b}: {w} ({w1})" for b, w, w1 in
                                                     zip(budgets, v_lm[family], v_1[family])))
        lines.append("")
        if plots:
            _plot_frontier(front, run_dir / "frontier.png")
    if len(ae) and "link" in ae:
        link = link_frame(ae)
        if len(link):
            lines += ["## Communication view (fixed channel uses per token, AWGN)", "",
                      "| link | channel uses/token | Es/N0 dB | token acc [95%] | referential success [95%] |",
                      "|---|---|---|---|---|"]
            for _, r in link.sort_values(["channel_uses_per_token", "protocol", "K", "snr_db"],
                                         ascending=[False, True, True, False]).iterrows():
                name = f"separation ({r['mcs']})" if r["protocol"] == "separation" else f"vector K={r['K']}"
                lines.append(f"| {name} | {r['channel_uses_per_token']} | {r['snr_db']:g} | "
                             f"{_fmt(r['token_accuracy'])} [{_fmt(r.get('token_accuracy_ci_low'))}, "
                             f"{_fmt(r.get('token_accuracy_ci_high'))}] | {_fmt(r['success'])} "
                             f"[{_fmt(r.get('success_ci_low'))}, {_fmt(r.get('success_ci_high'))}] |")
            lines.append("")
            atomic_write_text(run_dir / "link.csv", link.to_csv(index=False))
            if plots:
                _plot_link(link, run_dir / "link.png")
        if plots and (ae["K"] > 0).any():
            _plot_robustness(ae, run_dir / "robustness.png")
    atomic_write_text(run_dir / "summary.md", "\n".join(lines) + "\n")
