"""Pictures and the markdown report of ``experiments.analyze_vectors``: dimensions.png, manifold.png, summary.md,
the interpolation and nearest-neighbour tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calm.files import atomic_write_text, save_figure

__all__ = ["decode_text", "interpolation_table", "neighbour_table", "plot_dimensions", "plot_manifold", "write_summary"]


def _show(text: str) -> str:
    """One table cell: newlines visible, pipes escaped."""
    return text.replace("\n", "⏎").replace("|", "\\|")


def decode_text(model, tok, z: np.ndarray) -> list[str]:
    """Greedy decode of latents ``z (B, l)`` to text, one string per latent."""
    import torch

    with torch.inference_mode():
        ids = model.decode(torch.as_tensor(z, dtype=torch.float32)[:, None, :]).argmax(-1).reshape(len(z), -1)
    return [tok.decode(row.tolist()) for row in ids]


def interpolation_table(model, tok, mu: np.ndarray, chunks, *, steps: int = 10) -> list[dict]:
    """Two pairs of chunks (KJV -> Shakespeare, and two KJV chunks, or two of any document where there are not two
    KJV ones: a corpus without KJV / Shakespeare names) decoded along the straight line between their latents,
    every ``1/steps``: ``[{"from", "to", "rows": [{"t", "text"}]}]``."""
    kjv, shak = np.flatnonzero(chunks.source == 0), np.flatnonzero(chunks.source == 1)
    pairs = []
    if len(kjv) and len(shak):
        pairs.append((kjv[0], shak[len(shak) // 2]))
    same = kjv if len(kjv) > 1 else np.arange(len(chunks))
    if len(same) > 1:
        pairs.append((same[len(same) // 3], same[2 * len(same) // 3]))
    out = []
    t = np.linspace(0.0, 1.0, steps + 1)
    for a, b in pairs:
        z = (1 - t)[:, None] * mu[a] + t[:, None] * mu[b]
        texts = decode_text(model, tok, z)
        out.append({"from": tok.decode(chunks.ids[a].tolist()), "to": tok.decode(chunks.ids[b].tolist()),
                    "rows": [{"t": round(float(x), 2), "text": s} for x, s in zip(t, texts)]})
    return out


def neighbour_table(mu: np.ndarray, chunks, tok, *, queries: int = 4, k: int = 5, seed: int = 0) -> list[dict]:
    """``queries`` random chunks and their ``k`` nearest chunks in mu (Euclidean): text and distance."""
    from sklearn.neighbors import NearestNeighbors

    q = np.random.default_rng(seed + 1).choice(len(mu), size=min(queries, len(mu)), replace=False)
    dist, nn = NearestNeighbors(n_neighbors=k + 1).fit(mu).kneighbors(mu[q])
    return [{"query": tok.decode(chunks.ids[i].tolist()),
             "neighbours": [{"text": tok.decode(chunks.ids[j].tolist()), "distance": round(float(d), 3)}
                            for j, d in zip(nn_row[1:], d_row[1:])]}
            for i, nn_row, d_row in zip(q, nn, dist)]


def plot_dimensions(kl: np.ndarray, variance: np.ndarray, path: Path) -> None:
    """Per-dimension KL and variance of mu, dimensions sorted by KL (bar plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-kl)
    fig, axes = plt.subplots(2, 1, figsize=(max(6, len(kl) * 0.06 + 4), 5.5), sharex=True)
    axes[0].bar(np.arange(len(kl)), kl[order], color="tab:blue")
    axes[0].axhline(0.01, color="red", lw=0.8, ls="--", label="collapse threshold 0.01 nats")
    axes[0].set_ylabel("KL to prior (nats)")
    axes[0].legend(fontsize=8)
    axes[0].set_title("Latent dimensions sorted by KL")
    axes[1].bar(np.arange(len(kl)), variance[order], color="tab:orange")
    axes[1].set_ylabel("variance of mu")
    axes[1].set_xlabel("dimension rank (by KL)")
    step = max(1, len(kl) // 16)
    axes[1].set_xticks(np.arange(0, len(kl), step), [str(d) for d in order[::step]], fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_manifold(mu: np.ndarray, colourings: dict[str, tuple[np.ndarray, tuple[str, ...]]], path: Path, *,
                  umap_points: int = 3000, seed: int = 0) -> None:
    """PCA (all chunks) and UMAP (``umap_points`` of them) of mu, one column per colouring."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import umap
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    sample = rng.choice(len(mu), size=min(umap_points, len(mu)), replace=False)
    pca = PCA(n_components=2, random_state=seed).fit(mu)
    embeddings = {f"PCA ({pca.explained_variance_ratio_.sum():.0%} of variance)": (pca.transform(mu), slice(None)),
                  "UMAP": (umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=seed, n_jobs=1)
                           .fit_transform(mu[sample]), sample)}
    fig, axes = plt.subplots(2, len(colourings), figsize=(4.6 * len(colourings), 8.4), squeeze=False)
    palette = plt.get_cmap("tab10").colors
    for i, (title, (xy, rows)) in enumerate(embeddings.items()):
        order = rng.permutation(len(xy))  # random drawing order: no class hides under the last one drawn
        for j, (name, (labels, names)) in enumerate(colourings.items()):
            ax = axes[i, j]
            lab = np.asarray(labels)[rows][order]
            ax.scatter(xy[order, 0], xy[order, 1], s=3, alpha=0.5, c=[palette[c % 10] for c in lab])
            ax.set_title(f"{title}: {name}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                present = sorted(set(lab.tolist()))
                ax.legend(handles=[plt.Line2D([], [], marker="o", ls="", color=palette[c % 10], label=names[c])
                                   for c in present if 0 <= c < len(names)], fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def write_summary(result: dict, path: Path) -> None:
    """The markdown report of one analysis (``analyze_vectors.main``'s result)."""
    kl = np.asarray(result["kl_per_dim"])
    order = np.argsort(-kl)[:5]
    top = result["top_dimension"]
    sig = list(dict.fromkeys(k.removeprefix("probe_sigma_") for r in result["probes"] for k in r
                             if k.startswith("probe_sigma_")))
    lines = [f"# What the K = {result['K']} vectors hold (l = {result['latent_dim']})", "",
             f"{result['chunks']} held-out chunks from {result['documents']} test documents; "
             f"{result['seconds']:.0f} s. Reproduce: `{result['command']}`.", "",
             "## Dimensions", "",
             f"- KL to the prior: {result['kl_total']:.1f} nats in all; collapsed (< 0.01 nats): "
             f"{result['collapsed_dims']}/{result['latent_dim']}; effective rank of mu: "
             f"{result['effective_rank']:.1f} of {result['latent_dim']}.",
             "- Most KL: " + ", ".join(f"dim {d} ({kl[d]:.2f})" for d in order) + ".",
             "", "![dimensions](dimensions.png)", "",
             "## Probes (logistic regression, test documents unseen in training)", "",
             "| feature | classes | majority | bag of ids | probe on mu | C | " + " | ".join(f"σ={s}" for s in sig)
             + " |", "|---|---|---|---|---|---|" + "---|" * len(sig)]
    for r in result["probes"]:  # a one-class label has no noisy scores (the probe is the majority class)
        noisy = [r.get(f"probe_sigma_{s}") for s in sig]
        lines.append(f"| {r['feature']} | {r['classes']} | {r['majority']:.3f} | {r['bag_of_ids']:.3f} | "
                     f"**{r['probe']:.3f}** | {r['C']:g} | "
                     + " | ".join("–" if v is None or v != v else f"{v:.3f}" for v in noisy) + " |")
    lines += ["", "Labels with more than the cap's values keep the most frequent ones, the rest are one class. C: the "
              "regularisation picked on held-out training documents. The noisy columns score the same probe on "
              "mu + σ N(0, 1).", "",
              f"## The dimension with most KL: {top['dim']} ({top['kl']:.2f} nats)", "",
              "| label | probe on this dimension alone | majority |", "|---|---|---|"]
    for name, r in top["probes"].items():
        lines.append(f"| {name} | {r['probe']:.3f} | {r['majority']:.3f} |")
    lines += ["", "## Nearest neighbours", "", f"Among the {result['distinct_chunks']} distinct chunks: the share of a "
              "chunk's 5 nearest chunks (in mu) with the same label, and of 5 random chunks:", "",
              "| label | neighbours | random |", "|---|---|---|"]
    for name, (nn, rand) in result["neighbour_agreement"].items():
        lines.append(f"| {name} | {nn:.3f} | {rand:.3f} |")
    for q in result["nearest_neighbours"]:
        lines += ["", f"- `{_show(q['query'])}` → " + "; ".join(f"`{_show(n['text'])}` ({n['distance']})"
                                                            for n in q["neighbours"])]
    lines += ["", "## Interpolation (decoded every 10%)", ""]
    for pair in result["interpolation"]:
        lines += [f"`{_show(pair['from'])}` → `{_show(pair['to'])}`", "", "| t | decoded |", "|---|---|"]
        lines += [f"| {r['t']:.1f} | `{_show(r['text'])}` |" for r in pair["rows"]]
        lines.append("")
    lines += ["## Manifold", "", "![manifold](manifold.png)", ""]
    atomic_write_text(path, "\n".join(lines) + "\n")
