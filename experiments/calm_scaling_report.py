"""The scaling study's fits, crossover estimate, plot and markdown report (``experiments.calm_scaling``).

Per family and score (Brier-1, BrierLM), the **compute frontier** is the best size at each budget; a power law
``1 - score = a C^-b`` (a line in log-log; scores here are far below 1, so ``1 - score`` is the loss that falls
with compute C) is fitted to it by least squares. Intervals come from a bootstrap over the held-out windows
(every model was scored on the same windows, so one resample re-scores every model at once, and the frontier is
re-picked). CALM's line crosses the baseline's at ``log C* = (log a_calm - log a_base) / (b_calm - b_base)``
when CALM falls faster (b_calm > b_base); the replicates in which it does not give no crossover, and the report
says what fraction do. The intervals cover the noise of the held-out estimate only, not the choice of the law:
with three budgets a fit has one degree of freedom left.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from calm.brier import brier_lm
from calm.files import atomic_write_text, save_figure

__all__ = ["crossover", "fit_power_law", "frontier_losses", "summarise", "write_report"]

SCORES = {"brier_1": "Brier-1", "brier_lm": "BrierLM"}


def fit_power_law(flops: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """(log a, b) of ``loss = a C^-b`` by least squares in log-log (needs >= 2 distinct budgets, loss > 0)."""
    if len(np.unique(flops)) < 2:
        raise ValueError("a power law needs at least two budgets")
    slope, intercept = np.polyfit(np.log(flops), np.log(np.maximum(loss, 1e-12)), 1)
    return float(intercept), float(-slope)


def crossover(calm: tuple[float, float], base: tuple[float, float]) -> float | None:
    """log C where CALM's fitted loss meets the baseline's, or None when CALM does not fall faster."""
    (log_a_c, b_c), (log_a_b, b_b) = calm, base
    if b_c <= b_b:
        return None
    return (log_a_c - log_a_b) / (b_c - b_b)


def _scores(per_window: np.ndarray) -> dict[str, float]:
    """{"brier_1", "brier_lm"} of one model from its (N, 4) per-window Brier-1..4 (mean over windows)."""
    means = per_window.mean(axis=0)
    return {"brier_1": float(means[0]), "brier_lm": brier_lm(list(means))}


def frontier_losses(rows: list[dict], score: str, index: np.ndarray | None = None) -> dict[str, tuple]:
    """{family: (budget FLOPs (B,), frontier loss (B,))}: the best size's ``1 - score`` at each budget.

    ``index`` resamples the held-out windows (a bootstrap replicate); None uses them as they are. Scores on
    the BrierLM scale (0-100) are divided by 100 first.
    """
    best: dict[str, dict[float, float]] = {}
    for row in rows:
        pw = row["_pw"] if index is None else row["_pw"][index]
        value = _scores(pw)[score] / (100.0 if score == "brier_lm" else 1.0)
        fam = best.setdefault(row["family"], {})
        fam[row["flops_budget"]] = max(fam.get(row["flops_budget"], -math.inf), value)
    out = {}
    for family, by_budget in best.items():
        budgets = np.array(sorted(by_budget))
        out[family] = (budgets, np.array([1.0 - by_budget[b] for b in budgets]))
    return out


def summarise(frame, *, resamples: int = 1000, seed: int = 0) -> dict:
    """The fits and crossovers of every score, with 95% bootstrap intervals (JSON-ready)."""
    rows = []
    for rec in frame.to_dict("records"):
        rows.append({**rec, "_pw": np.asarray(json.loads(rec["per_window"]), dtype=float),
                     "flops_budget": float(rec["budget"])})
    n_windows = len(rows[0]["_pw"])
    rng = np.random.default_rng(seed)
    draws = [None] + [rng.integers(0, n_windows, n_windows) for _ in range(resamples)]
    out: dict = {"resamples": resamples, "windows": n_windows, "scores": {}}
    for score in SCORES:
        fits: dict[str, list] = {}
        cross: dict[str, list] = {}
        # a family scoring exactly 0 at every budget (BrierLM with some Brier-n <= 0) has no law to fit
        zero = sorted(f for f, (_, loss) in frontier_losses(rows, score).items() if np.all(loss == 1.0))
        for index in draws:
            frontier = frontier_losses(rows, score, index)
            reps = {f: fit_power_law(c, loss) for f, (c, loss) in frontier.items() if len(c) >= 2 and f not in zero}
            for family, fit in reps.items():
                fits.setdefault(family, []).append(fit)
            if "baseline" in reps:
                for family in reps:
                    if family != "baseline":
                        cross.setdefault(family, []).append(crossover(reps[family], reps["baseline"]))
        entry: dict = {"fits": {}, "crossover": {}, "zero_everywhere": zero}
        for family, values in fits.items():
            arr = np.array(values)  # (1 + resamples, 2): point estimate first
            entry["fits"][family] = {
                "log_a": arr[0, 0], "b": arr[0, 1],
                "b_ci": [float(np.percentile(arr[1:, 1], 2.5)), float(np.percentile(arr[1:, 1], 97.5))],
                "frontier": [[float(c), float(v)] for c, v in zip(*frontier_losses(rows, score)[family])],
            }
        for family, values in cross.items():
            point, reps = values[0], [v for v in values[1:] if v is not None]
            frac = len(reps) / max(1, len(values) - 1)
            entry["crossover"][family] = {
                "log10_flops": None if point is None else point / math.log(10),
                "log10_flops_ci": ([float(np.percentile(reps, q)) / math.log(10) for q in (2.5, 97.5)]
                                   if len(reps) >= 20 else None),
                "fraction_of_resamples_with_crossover": frac,
                "verdict": _verdict(point, frac, max(r["flops_budget"] for r in rows)),
            }
        for family in zero:
            if family != "baseline":
                entry["crossover"][family] = {
                    "log10_flops": None, "log10_flops_ci": None, "fraction_of_resamples_with_crossover": 0.0,
                    "verdict": "no fit: CALM scores exactly 0 at every budget (some Brier-n <= 0), so there is no "
                               "trend to extrapolate"}
        out["scores"][score] = entry
    return out


def _verdict(log_c: float | None, frac: float, largest: float) -> str:
    """One sentence on a crossover estimate."""
    if log_c is None or frac < 0.5:
        return (f"no crossover: CALM's fitted loss does not fall faster than the baseline's (in {frac:.0%} of the "
                "resamples it does); the fit cannot extrapolate a compute where CALM wins")
    c = math.exp(log_c)
    if c <= largest:
        return f"CALM's line is already at or past the baseline's within the measured range (C* = {c:.2g} FLOPs)"
    return (f"CALM's line would cross the baseline's at about {c:.2g} FLOPs ({c / largest:.2g}x the largest budget "
            f"measured), an extrapolation of a two-parameter fit; {frac:.0%} of the resamples cross at all")


def plot(frame, summary: dict, path: Path) -> None:
    """1 - score against training FLOPs (log-log), every model, the frontier fits extended past the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"baseline": "tab:blue", "calm-k2": "tab:orange", "calm-k4": "tab:green"}
    markers = {"xs": "v", "s": "o", "m": "s"}
    fig, axes = plt.subplots(1, len(SCORES), figsize=(6.5 * len(SCORES), 4.5))
    for ax, (score, label) in zip(np.atleast_1d(axes), SCORES.items()):
        scale = 100.0 if score == "brier_lm" else 1.0
        for rec in frame.to_dict("records"):
            ax.plot(rec["flops"], 1 - rec[score] / scale, markers.get(rec["size"], "o"),
                    color=colours.get(rec["family"], "k"), alpha=0.6, markersize=5)
        entry = summary["scores"][score]
        c_max = frame["flops"].max()
        ends = [c_max * 30] + [10 ** v["log10_flops"] * 2 for v in entry["crossover"].values()
                               if v["log10_flops"] is not None and 10 ** v["log10_flops"] < c_max * 1e4]
        grid = np.geomspace(frame["flops"].min() / 1.5, max(ends), 100)
        for family, fit in entry["fits"].items():
            ax.plot(grid, np.exp(fit["log_a"]) * grid ** -fit["b"], "--", color=colours.get(family, "k"),
                    label=f"{family}: b = {fit['b']:.3f} [{fit['b_ci'][0]:.3f}, {fit['b_ci'][1]:.3f}]")
        for family, cross in entry["crossover"].items():
            if cross["log10_flops"] is not None and 10 ** cross["log10_flops"] <= grid[-1]:
                ax.axvline(10 ** cross["log10_flops"], color=colours.get(family, "k"), lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs (analytic)")
        ax.set_ylabel(f"1 - {label}" + (" / 100" if scale != 1 else ""))
        ax.set_title(f"{label}: frontier fits (markers: xs v, s o, m square)")
        if ax.get_legend_handles_labels()[0]:  # no fit (a single budget, or a score 0 everywhere): no legend
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def write_report(frame, run_dir: Path, *, plots: bool = True, seed: int = 0) -> dict:
    """fits.json, summary.md and (with plots) scaling.png in run_dir; prints the verdicts. Returns the summary."""
    if frame["budget"].nunique() < 2:
        print("[report] one budget only: no power law to fit yet", flush=True)
        return {}
    summary = summarise(frame, seed=seed)
    atomic_write_text(run_dir / "fits.json", json.dumps(summary, indent=1) + "\n")
    lines = ["# CALM scaling study", "", "| family | size | budget | params | steps | Brier-1 [95%] | BrierLM [95%] | "
             "on-manifold | s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in frame.sort_values(["family", "size", "budget"]).to_dict("records"):
        om = "" if r["on_manifold"] is None or (isinstance(r["on_manifold"], float) and math.isnan(r["on_manifold"])) \
            else f"{r['on_manifold']:.2f}"
        lines.append(f"| {r['family']} | {r['size']} | {r['budget']:.3g} | {r['params']:,} | {r['steps']} | "
                     f"{r['brier_1']:.4f} [{r['brier_1_ci_low']:.4f}, {r['brier_1_ci_high']:.4f}] | "
                     f"{r['brier_lm']:.3f} [{r['brier_lm_ci_low']:.3f}, {r['brier_lm_ci_high']:.3f}] | {om} | "
                     f"{r['train_seconds']:.0f} |")
    for score, label in SCORES.items():
        entry = summary["scores"][score]
        lines += ["", f"## {label}", ""]
        for family, fit in entry["fits"].items():
            lines.append(f"- {family}: 1 - score = {math.exp(fit['log_a']):.3g} C^(-{fit['b'] + 0.0:.4f}), b 95% "
                         f"[{fit['b_ci'][0] + 0.0:.4f}, {fit['b_ci'][1] + 0.0:.4f}]")
        lines += [f"- {family}: {label} is 0 at every budget: no fit" for family in entry.get("zero_everywhere", [])]
        for family, cross in entry["crossover"].items():
            line = f"- {family} vs baseline: {cross['verdict']}"
            if cross["log10_flops_ci"]:
                line += f" (95% of crossing resamples: 10^{cross['log10_flops_ci'][0]:.1f} - " \
                        f"10^{cross['log10_flops_ci'][1]:.1f} FLOPs)"
            lines.append(line)
            print(f"[report] {label}: {line[2:]}", flush=True)
    atomic_write_text(run_dir / "summary.md", "\n".join(lines) + "\n")
    if plots:
        plot(frame, summary, run_dir / "scaling.png")
    return summary
