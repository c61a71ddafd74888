"""Feature matching, tables, pictures and the markdown report of ``experiments.compare_sae``: each feature's
best correlations and shared top-chunk labels, the PCA reference, fve_l0.png, matches.png, the strongest
matches and summary.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from calm.files import atomic_write_text, save_figure
from experiments.common.probes import POSITION_BUCKETS, SOURCES, TOKEN_CLASSES, cap_classes, probe

__all__ = ["abs_corr", "feature_matches", "pca_fve", "plot_fve_l0", "plot_matches", "probe_directions",
           "probe_labels", "reproduce_command", "shared_labels", "strongest", "write_summary"]


def probe_labels(chunks, classes: np.ndarray, train: np.ndarray, max_classes: int) -> dict[str, np.ndarray]:
    """The labels probed: source (when the rows come from more than one: KJV / Shakespeare document names), first
    token class, position in line, first token id, next first token id."""
    source = {"source": chunks.source} if len(np.unique(chunks.source)) > 1 else {}
    return {**source, "first token class": classes[chunks.ids[:, 0]],
            "position in line": chunks.position,
            "first token": cap_classes(chunks.ids[:, 0], train, max_classes),
            "next first token": cap_classes(chunks.next_first, train, max_classes)}


def _class_name(label: str, value: int, tok) -> str:
    if value == -2:
        return "other"
    if label == "source":
        return SOURCES[value] if 0 <= value < len(SOURCES) else "other"
    if label == "first token class":
        return TOKEN_CLASSES[value]
    if label == "position in line":
        lo, hi = POSITION_BUCKETS[value]
        return f"{lo}" if lo == hi else f"{lo}-{hi}" if hi < math.inf else f"{lo}+"
    return repr(tok.decode([int(value)]))


def probe_directions(x: np.ndarray, labels: dict[str, np.ndarray], train: np.ndarray, test: np.ndarray, tok, *,
                     seed: int = 0) -> tuple[np.ndarray, list[str], list[dict]]:
    """Fit a logistic probe per label on the ``train`` rows of ``x (N, d_in)``; returns its decision scores on
    the ``test`` rows ``(N_test, C)`` (one column per class, one for a binary label), the column names, and
    the probes' accuracies against the majority class."""
    columns, names, accuracies = [], [], []
    for label, y in labels.items():
        r = probe(x, y, train, test, Cs=(1.0,), seed=seed)
        accuracies.append({"label": label, "classes": r.classes, "probe": r.accuracy, "majority": r.majority})
        if r.model is None:
            continue
        score = r.model.decision_function(x[test])
        classes = r.model.classes_
        if score.ndim == 1:  # binary: one direction, towards classes[1]
            score, classes = score[:, None], classes[1:]
        columns.append(score)
        names += [f"{label} = {_class_name(label, int(c), tok)}" for c in classes]
    return np.concatenate(columns, axis=1), names, accuracies


def abs_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(A, B)`` |Pearson r| between the columns of ``a (N, A)`` and ``b (N, B)`` (0 for a constant column)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a.T @ b) / np.outer(na, nb)
    return np.nan_to_num(np.abs(r))


def shared_labels(top: np.ndarray, chunks, classes: np.ndarray, cfg: Any) -> dict[str, tuple[str, float, float]]:
    """Labels shared by the chunks ``top`` (row indices): ``{label: (value, share, base rate)}`` for each label
    on at least ``min_share`` of them and ``min_lift`` x its base rate among all rows of ``chunks``."""
    out = {}
    # a token: the id most of the top chunks contain (any of the K positions)
    ids = chunks.ids[top]
    values, counts = np.unique(ids, return_counts=True)
    token = values[np.argmax([np.any(ids == v, axis=1).sum() for v in values])]
    share = float(np.any(ids == token, axis=1).mean())
    base = float(np.any(chunks.ids == token, axis=1).mean())
    if share >= cfg.min_share and share >= cfg.min_lift * base:
        out["token"] = (int(token), share, base)
    for label, y in (("token class", classes[chunks.ids[:, 0]]), ("position", chunks.position),
                     ("source", chunks.source)):
        values, counts = np.unique(y[top], return_counts=True)
        value = values[counts.argmax()]
        share, base = float(counts.max() / len(top)), float((y == value).mean())
        if share >= cfg.min_share and share >= cfg.min_lift * base:
            out[label] = (int(value), share, base)
    return out


def feature_matches(acts: np.ndarray, x: np.ndarray, probes: np.ndarray, chunks, classes: np.ndarray,
                    cfg: Any) -> list[dict]:
    """Per live feature (active on some test row) of ``acts (N, d_sae)``: its frequency, best |r| with an input
    dimension of ``x (N, d_in)`` and with a probe direction (``probes (N, C)``), and the labels its top chunks
    share. Features active on fewer than 5 rows get no top-chunk labels."""
    live = np.flatnonzero((acts > 0).any(0))
    r_dim, r_probe = abs_corr(acts[:, live], x), abs_corr(acts[:, live], probes)
    out = []
    for j, f in enumerate(live):
        active = np.flatnonzero(acts[:, f] > 0)
        top = active[np.argsort(-acts[active, f], kind="stable")[: cfg.top_n]]
        out.append({"feature": int(f), "frequency": len(active) / len(acts),
                    "dim": int(r_dim[j].argmax()), "r_dim": float(r_dim[j].max()),
                    "probe": int(r_probe[j].argmax()), "r_probe": float(r_probe[j].max()),
                    "shared": shared_labels(top, chunks, classes, cfg) if len(top) >= 5 else {},
                    "top": top[:5].tolist()})
    return out


def pca_fve(x_train: np.ndarray, x_test: np.ndarray, ks: list[int]) -> dict[int, float]:
    """Held-out FVE of the top-k principal components of ``x_train (N, d)`` on ``x_test (M, d)``, per k <= d:
    the best dense code of k numbers per row (an SAE at L0 = k also picks which k)."""
    mean = x_train.mean(0)
    _, vecs = np.linalg.eigh(np.cov(x_train - mean, rowvar=False))
    vecs = vecs[:, ::-1]  # (d, d), largest variance first
    centred = x_test - mean
    total = ((x_test - x_test.mean(0)) ** 2).sum()
    out = {}
    for k in ks:
        if k <= x_train.shape[1]:
            v = vecs[:, :k]
            out[int(k)] = float(1 - ((centred - centred @ v @ v.T) ** 2).sum() / total)
    return out


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _show(text: str) -> str:
    """One table cell: newlines visible, pipes escaped."""
    return text.replace("\n", "⏎").replace("|", "\\|")


def _label_value(label: str, value: int, tok) -> str:
    if label == "token":
        return repr(tok.decode([value]))
    if label == "token class":
        return TOKEN_CLASSES[value]
    if label == "position":
        lo, hi = POSITION_BUCKETS[value]
        return f"{lo}-{hi}" if hi != np.inf else f"{lo}+"
    return SOURCES[value] if 0 <= value < len(SOURCES) else str(value)


def strongest(rows: list[dict], features: dict[str, list[dict]], probes: dict, chunks, tok, *,
              n: int = 6) -> dict[str, dict]:
    """Per source, the SAE with most features (k nearest 8 among those) and its ``n`` features best matched to
    a probe direction and ``n`` with the most lifted shared top-chunk label: text for the report."""
    out = {}
    for source in dict.fromkeys(r["source"] for r in rows):
        mine = [r for r in rows if r["source"] == source]
        top_d = max(r["d_sae"] for r in mine)
        row = min((r for r in mine if r["d_sae"] == top_d), key=lambda r: abs(r["k"] - 8))
        names = probes[source][1]

        def describe(m: dict, source: str = source, names: list[str] = names) -> dict:
            texts = []
            for i in m["top"]:
                text = tok.decode(chunks.ids[i].tolist())
                if source == "hidden" and chunks.next_first[i] >= 0:  # what the state predicts comes next
                    text += " → " + tok.decode([int(chunks.next_first[i])])
                texts.append(text)
            return {"feature": m["feature"], "frequency": round(m["frequency"], 4),
                    "probe": names[m["probe"]], "r_probe": round(m["r_probe"], 3),
                    "dim": m["dim"], "r_dim": round(m["r_dim"], 3),
                    "shared": {lab: f"{_label_value(lab, v, tok)} ({s:.0%} vs {b:.0%})"
                               for lab, (v, s, b) in m["shared"].items()},
                    "top_chunks": texts}

        feats = features[row["sae"]]
        by_probe = sorted(feats, key=lambda m: -m["r_probe"])[:n]
        lifted = [m for m in feats if m["shared"]]
        by_share = sorted(lifted, key=lambda m: -max(s / max(b, 1e-9) for _, s, b in m["shared"].values()))[:n]
        out[source] = {"sae": row["sae"], "by_probe": [describe(m) for m in by_probe],
                       "by_shared_label": [describe(m) for m in by_share]}
    return out


def plot_fve_l0(rows: list[dict], baselines: dict, path: Path) -> None:
    """Held-out FVE against L0, one panel per source, a line per dictionary size, PCA's top-k dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(dict.fromkeys(r["source"] for r in rows))
    fig, axes = plt.subplots(1, len(sources), figsize=(5.2 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources):
        mine = [r for r in rows if r["source"] == source]
        for d_sae in sorted({r["d_sae"] for r in mine}):
            pts = sorted((r["l0_test"], r["fve_test"]) for r in mine if r["d_sae"] == d_sae)
            ax.plot(*zip(*pts), marker="o", label=f"TopK SAE, {d_sae} features ({d_sae // mine[0]['d_in']}x)")
        control = [r for r in mine if r.get("fve_gaussian") is not None]
        if control:
            ax.plot(*zip(*sorted((r["l0_test"], r["fve_gaussian"]) for r in control)), ls=":", color="black",
                    marker="x", label=f"SAE, {control[0]['d_sae']} features, on Gaussian rows (control)")
        pca = sorted((int(k), v) for k, v in baselines[source]["pca_fve"].items())
        ax.plot(*zip(*pca), ls="--", color="grey", marker=".", label="PCA, top-k components")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("L0 (active features per row, test)")
        ax.set_ylabel("fraction of variance explained (test)")
        ax.set_title(f"{source} (d_in = {mine[0]['d_in']})")
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_matches(rows: list[dict], baselines: dict, path: Path) -> None:
    """Share of live features matching a dimension, a probe direction, or sharing a top-chunk label, per SAE;
    the raw dimensions' share matching a probe direction as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(dict.fromkeys(r["source"] for r in rows))
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4), squeeze=False)
    kinds = (("match_dim", "|r| > thr to one input dim"), ("match_probe", "|r| > thr to a probe direction"),
             ("share_any", "top chunks share a label"))
    for ax, source in zip(axes[0], sources):
        mine = [r for r in rows if r["source"] == source]
        x = np.arange(len(mine))
        for i, (key, label) in enumerate(kinds):
            ax.bar(x + (i - 1) * 0.27, [r[key] / max(r["live_test"], 1) for r in mine], 0.27, label=label)
        base = baselines[source]
        ax.axhline(base["dims_matching_probe"] / base["d_in"], color="black", ls=":",
                   label="raw dims with |r| > thr to a probe direction")
        ax.set_xticks(x, [r["sae"].removeprefix(source + "-") for r in mine], rotation=45, fontsize=7)
        ax.set_ylabel("share of live features")
        ax.set_ylim(0, 1)
        ax.set_title(source)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def write_summary(result: dict, path: Path) -> None:
    """The markdown report of one comparison (``compare_sae.main``'s result)."""
    cfg = result["config"]
    thr = cfg["threshold"]
    lines = ["# CALM vectors vs SAE features", "",
             f"{result['train_rows']} train rows (SAEs and probes), {result['test_rows']} held-out rows from "
             f"{result['test_documents']} test documents; K = {result['K']}; {result['seconds']:.0f} s. "
             f"Reproduce: `{result['command']}`.", "",
             "Sources: `latent` = the autoencoder's mean mu of a chunk; `hidden` = the CALM's hidden state right "
             "after reading that chunk (it predicts the next one).", "",
             "## Held-out FVE vs L0", "",
             "| source | d_in | features | k | L0 | FVE test | FVE train | Gaussian control | PCA top-k FVE "
             "| dead (test / train) | live |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["saes"]:
        pca = result["baselines"][r["source"]]["pca_fve"].get(r["k"], result["baselines"][r["source"]]["pca_fve"]
                                                                 .get(str(r["k"])))
        lines.append(f"| {r['source']} | {r['d_in']} | {r['d_sae']} | {r['k']} | {r['l0_test']:.2f} | "
                     f"**{r['fve_test']:.3f}** | {r['fve_train']:.3f} | {_fmt(r.get('fve_gaussian'))} | {_fmt(pca)} | "
                     f"{r['dead_test']} / {r['dead_train']} | {r['live_test']} |")
    lines += ["", "Gaussian control: the same SAE fitted to and scored on Gaussian rows of the train rows' mean and "
              "covariance (no sparse structure to find). PCA top-k: the best k-dimensional linear code (dense, the "
              "same k directions for every row).", "",
              "![FVE vs L0](fve_l0.png)", "", "## What the features match", "",
              f"Live features (active on some test row) with |Pearson r| > {thr} to a single input dimension, to a "
              f"probe direction (a logistic probe's decision score per class), and whose {cfg['top_n']} most "
              f"active chunks share a label (≥ {cfg['min_share']:.0%} of them, ≥ {cfg['min_lift']}x its base rate):",
              "", "| SAE | live | r > thr to a dim | r > thr to a probe | token | token class | position | source "
              "| any label |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["saes"]:
        lines.append(f"| {r['sae']} | {r['live_test']} | {r['match_dim']} | {r['match_probe']} | {r['share_token']} "
                     f"| {r['share_token class']} | {r['share_position']} | {r['share_source']} | {r['share_any']} |")
    lines += ["", "The raw dimensions read as features: "
              + "; ".join(f"{s}: {b['dims_matching_probe']} of {b['d_in']} dims have |r| > {thr} to one of "
                          f"{b['probe_directions']} probe directions" for s, b in result["baselines"].items())
              + ".", "", "![matches](matches.png)", "", "## The probes behind the directions (held-out accuracy)", "",
              "| source | label | classes | majority | probe |", "|---|---|---|---|---|"]
    for s, b in result["baselines"].items():
        lines += [f"| {s} | {p['label']} | {p['classes']} | {p['majority']:.3f} | {p['probe']:.3f} |"
                  for p in b["probes"]]
    lines += ["", "## Strongest matches", ""]
    for part in result["strongest"].values():
        for key, title in (("by_probe", "best matched to a probe direction"),
                           ("by_shared_label", "top chunks sharing a label, most lifted")):
            lines += [f"### {part['sae']}: {title}", "",
                      "| feature | freq | best probe direction (r) | best dim (r) | shared | top chunks |",
                      "|---|---|---|---|---|---|"]
            for m in part[key]:
                shared = ", ".join(f"{k}: {v}" for k, v in m["shared"].items()) or "-"
                chunks = " · ".join(f"`{_show(t)}`" for t in m["top_chunks"])
                lines.append(f"| {m['feature']} | {m['frequency']:.3f} | {_show(m['probe'])} ({m['r_probe']:.2f}) "
                             f"| {m['dim']} ({m['r_dim']:.2f}) | {_show(shared)} | {chunks} |")
            lines.append("")
    atomic_write_text(path, "\n".join(lines) + "\n")


def reproduce_command(cfg: Any) -> str:
    """The command line of ``cfg``: every field that differs from its default."""
    from dataclasses import asdict

    default = type(cfg)()
    parts = ["python -m experiments.compare_sae"]
    for name, value in asdict(cfg).items():
        if value == getattr(default, name) or name in ("results_dir", "run_name") and value is None \
                or name == "overwrite":  # how this run met an earlier one, not what it computes
            continue
        flag = "--" + name.replace("_", "-")
        if name == "sae":
            parts += [f"{flag} {' '.join(value)}"]
        elif isinstance(value, bool):
            parts.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            parts.append(f"{flag} {' '.join(map(str, value)) if isinstance(value, tuple) else value}")
    return " ".join(parts)
