"""Steering run report (``experiments.steering``): summary.md, examples.md, frontier.png and fidelity.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calm.files import atomic_write_text, save_figure

__all__ = ["plot_frontier", "write_report"]

_STYLE = {"codec": "-", "latent": "--", "hidden": "-.", "token": ":"}


def _cell(text: str, width: int = 90) -> str:
    text = " ".join(text.replace("|", "/").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_frontier(frame, path: Path, *, x: str, xlabel: str, invert: bool = False,
                  reference: dict[str, float] | None = None) -> None:
    """Judge success (Wilson interval) against ``x`` (with its interval), one line per method, one panel per
    attribute; alpha = 0 is the hollow marker; ``reference``: a vertical line per attribute (the real text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attributes = list(dict.fromkeys(frame["attribute"]))
    cols = min(2, len(attributes))
    rows = -(-len(attributes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    methods = list(dict.fromkeys(frame["method"]))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, attribute in zip(axes.flat, attributes):
        for method in methods:
            g = frame[(frame["attribute"] == attribute) & (frame["method"] == method)].sort_values("alpha")
            if g.empty:
                continue
            yerr = np.vstack([g["success"] - g["success_lo"], g["success_hi"] - g["success"]])
            xerr = np.vstack([g[x] - g[f"{x}_lo"], g[f"{x}_hi"] - g[x]])
            ax.errorbar(g[x], g["success"], yerr=yerr, xerr=xerr, color=colors[method],
                        linestyle=_STYLE[method.split("-")[0]], marker="o", ms=3.5, lw=1.3, capsize=2,
                        label=method)
            first = g.iloc[0]
            ax.plot(first[x], first["success"], "o", ms=8, mfc="none", color=colors[method])
        ax.axhline(0.5, color="0.6", lw=0.8)
        if reference and reference.get(attribute) is not None:
            ax.axvline(reference[attribute], color="k", lw=0.8, ls="--", label="real continuation")
        ax.set_title(attribute)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("judge success")
        ax.set_ylim(-0.02, 1.02)
        if invert:
            ax.invert_xaxis()
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(attributes):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle("steering: success vs " + xlabel + " (hollow: alpha = 0; bars: 95% intervals)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
    plt.close(fig)


def _reach_table(result: dict) -> list[str]:
    lines = ["| attribute | method | success at alpha 0 | alpha at 50% success | fluency cost there (nats/token) | "
             "best success |", "|---|---|---|---|---|---|"]
    for r in result["reach_50"]:
        alpha = "not reached" if r["alpha"] is None else f"{r['alpha']:.2f}"
        cost = "" if r["nll_cost"] is None else f"{r['nll_cost']:+.2f}"
        lines.append(f"| {r['attribute']} | {r['method']} | {r['success_at_0']:.3f} | {alpha} | {cost} | "
                     f"{r['max_success']:.3f} |")
    return lines


def write_report(result: dict, frame, run_dir: Path, *, plots: bool = True) -> None:
    """Write summary.md and examples.md (and the plots) into ``run_dir``."""
    import pandas as pd

    if plots:
        plot_frontier(frame, run_dir / "frontier.png", x="nll", xlabel="fluency loss (token baseline, nats/token)",
                      reference={a: v["real_continuation_nll"] for a, v in result["attributes"].items()})
        plot_frontier(frame, run_dir / "fidelity.png", x="chrf", xlabel="chrF to the unsteered output",
                      invert=True)
    cfg = result["config"]
    out = [f"# Steering: {Path(result['lm_checkpoint']).name}", "",
           f"Autoencoder `{result['checkpoint']}`, CALM `{result['lm_checkpoint']}`, token baseline "
           f"`{result['token_lm_checkpoint']}`; {cfg['tokens']}-token windows, block {cfg['layer']} steered, "
           f"{result['seconds']:.0f} s. Reproduce: `{result['command']}`", "",
           "| attribute | judge balanced accuracy (held-out documents) | positive / negative training windows | "
           "prompts | prompts judged positive | real continuation's fluency loss | logit-bias tokens |",
           "|---|---|---|---|---|---|---|"]
    for name, a in result["attributes"].items():
        tokens = ", ".join(repr(t) for t in a["bias_tokens"][:8])
        out.append(f"| {name} | {a['judge_balanced_accuracy']:.3f} | {a['train_windows']['positive']} / "
                   f"{a['train_windows']['negative']} | {a['prompts']} | {a['prompt_judged_positive']:.3f} | "
                   f"{a['real_continuation_nll'] or float('nan'):.2f} | {tokens} |")
    use = result.get("same_noise_other_prompt_overlap")
    if use:
        out += ["", f"Context use: continued with the same sampling noise, two sets of random prompts share "
                f"{use['calm']:.3f} of the CALM's output tokens and {use['token']:.3f} of the token baseline's "
                "(1 = the prompt is ignored)."]
    out += ["", "## Where each method reaches 50% judge success", "", *_reach_table(result), ""]
    if plots:
        out += ["![frontier](frontier.png)", "", "![fidelity](fidelity.png)", ""]
    out += ["## Every grid point", "",
            "Fluency: the token baseline's loss on the output (after the prompt for generation; on the passage "
            "alone for the codec level). Overlap and chrF: against the same method's alpha = 0 output.", ""]
    for attribute, g in frame.groupby("attribute", sort=False):
        out += [f"### {attribute}", "", "| method | alpha | success [95%] | overlap | chrF | fluency loss [95%] | "
                "on manifold |", "|---|---|---|---|---|---|---|"]
        for _, r in g.iterrows():
            manifold = f"{r['on_manifold']:.3f}" if pd.notna(r.get("on_manifold")) else ""
            out.append(f"| {r['method']} | {r['alpha']:g} | {r['success']:.3f} [{r['success_lo']:.3f}, "
                       f"{r['success_hi']:.3f}] | {r['overlap']:.3f} | {r['chrf']:.3f} | {r['nll']:.2f} "
                       f"[{r['nll_lo']:.2f}, {r['nll_hi']:.2f}] | {manifold} |")
        out.append("")
    out += ["Example outputs: [examples.md](examples.md)", ""]
    atomic_write_text(run_dir / "summary.md", "\n".join(out))
    ex = ["# Steering examples (the first prompt of each attribute)", ""]
    for attribute, e in result["examples"].items():
        alphas = sorted({a for outs in e["outputs"].values() for a in outs}, key=float)
        ex += [f"## {attribute}", "", f"Prompt: `{_cell(e['prompt'], 200)}`", "",
               "| method | " + " | ".join(f"alpha {a}" for a in alphas) + " |", "|---" * (len(alphas) + 1) + "|"]
        for method, outs in e["outputs"].items():
            ex.append(f"| {method} | " + " | ".join(f"`{_cell(outs.get(a, ''))}`" for a in alphas) + " |")
        ex.append("")
    atomic_write_text(run_dir / "examples.md", "\n".join(ex))
