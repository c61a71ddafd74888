"""What do CALM vectors hold? Per-dimension information, linear probes, manifold pictures of one autoencoder.

    python -m experiments.analyze_vectors                       # the K = 4 autoencoder of experiments.scaling_k
    python -m experiments.analyze_vectors --k 8                 # another K of that study (trained once, cached)
    python -m experiments.analyze_vectors --checkpoint runs/ae-tiny-...   # any autoencoder checkpoint
    python -m experiments.analyze_vectors --help

On held-out (test split) documents, each K-token chunk's encoder mean mu is analysed:
- per dimension: KL to the prior and variance of mu (sorted bar plot), collapsed dimensions, effective rank;
- linear probes (``experiments.common.probes``: logistic regression, train and test chunks from different
  documents) from mu to each of the K token ids, each token's class (capitalised / punctuation / digit /
  whitespace-led / other), the source corpus (KJV or Shakespeare, when the documents' names say), the position
  in the verse/line and the next chunk's first token; read against the majority class and a bag-of-token-ids
  probe; the same probes on mu + sigma N(0,1); and single-dimension probes of the dimension with most KL;
- pictures: PCA and UMAP of mu coloured by source (when known), first token class and position; interpolation
  between two chunks' latents decoded every 10%; nearest-neighbour chunks, and how often neighbours share a label.
Writes summary.md, probes.csv, analysis.json and PNGs under results/<run>/ (default vectors-<checkpoint>).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from calm.checkpoint import load_pretrained
from calm.checks import check_numbers, in_range, merge_duplicates, positive_ints
from calm.corpus import load_split
from calm.files import atomic_write_text
from calm.tracking import check_tracking
from experiments.analyze_vectors_report import (
    interpolation_table,
    neighbour_table,
    plot_dimensions,
    plot_manifold,
    write_summary,
)
from experiments.common.config import SweepConfig, TrackerName, check_run_name, default_tracking, unhashed
from experiments.common.models import K_AUTOENCODER, checkpoint_id, ensure_k_autoencoder
from experiments.common.probes import (
    TOKEN_CLASSES,
    bag_of_ids,
    cap_classes,
    chunk_set,
    effective_rank,
    neighbour_agreement,
    probe,
    split_by_document,
    token_classes,
)
from experiments.common.sweep import claim_single_run, cli, mark_finished

__all__ = ["Config", "main", "probe_table"]

K_STUDY_PASSAGE_LENGTH = 16
"""experiments.scaling_k's default passage_length: its Ks divide it"""


@dataclass
class Config:
    """One autoencoder's vector analysis."""

    # both pick the autoencoder, whose weights (its checkpoint id in run.json) name the run
    checkpoint: str | None = unhashed(None)
    """autoencoder checkpoint directory; none: experiments.scaling_k's autoencoder at --k (trained once, cached)"""
    k: int = unhashed(4)
    """without --checkpoint: the K of experiments.scaling_k's autoencoder (its defaults: l = 32 K, bpe:2048;
    K divides 16, that study's passage length)"""
    runs_dir: str = unhashed("runs")
    """where experiments.scaling_k caches its autoencoders"""
    results_dir: str = unhashed("results")
    """where the run directory goes"""
    run_name: str | None = unhashed(None)
    """run directory name; default vectors-<checkpoint directory name>"""
    corpus: str = "kjv+shakespeare"
    """held-out documents: the test split of this corpus, which the autoencoder's tokenizer encodes (WikiText-103,
    text:<path>); the source label needs KJV / Shakespeare document names and is left out without them"""
    max_chunks: int = 12000
    """held-out chunks analysed (a uniform sample)"""
    test_fraction: float = 0.3
    """share of the chunks (whole documents) the probes are scored on"""
    max_classes: int = 256
    """probe labels with many values (token ids) keep the most frequent max_classes - 1; the rest are one class"""
    probe_cs: tuple[float, ...] = (0.01, 0.1, 1.0)
    """inverse regularisation strengths each probe picks from on held-out training documents (one value: no pick)"""
    noise_sigmas: tuple[float, ...] = (0.3, 1.0)
    """noise added to mu for the noisy probes"""
    umap_points: int = 3000
    """chunks in the UMAP picture (UMAP reads 15 neighbours of each)"""
    seed: int = 0
    """seed of the chunk sample, the split, the noise and UMAP"""
    plots: bool = unhashed(True)
    """write the PNG plots"""
    overwrite: bool = unhashed(False)
    """replace a finished analysis of these settings in the run directory (a finished one is otherwise refused)"""
    tracking: TrackerName = default_tracking()
    """experiment tracker (calm.tracking): mlflow (results_dir/mlflow.db unless --tracking-uri), wandb or none
    (default from LATENTCOMM_TRACKING, else mlflow)"""
    tracking_uri: str = unhashed("")
    """MLflow store or server (sqlite:///path/mlflow.db, http://host:5000); empty: results_dir/mlflow.db"""

    def __post_init__(self) -> None:
        check_numbers(self)
        check_tracking(self.tracking, self.tracking_uri)
        merge_duplicates(self, "probe_cs", "noise_sigmas")
        positive_ints(self, "k")
        positive_ints(self, "max_chunks", minimum=100)  # fewer leave the probes' held-out documents nearly empty
        positive_ints(self, "max_classes", minimum=2)
        positive_ints(self, "umap_points", minimum=16)
        positive_ints(self, "seed", minimum=0)
        if not 0.05 <= self.test_fraction <= 0.95:
            raise ValueError(f"test_fraction must be in [0.05, 0.95], got {self.test_fraction}")
        in_range("noise_sigmas", self.noise_sigmas, 0, 1e4)
        if not self.probe_cs:
            raise ValueError("--probe-cs needs at least one value")
        in_range("probe_cs", self.probe_cs, 0, 1e6, low_open=True)
        if self.checkpoint is None and K_STUDY_PASSAGE_LENGTH % self.k:  # the K study makes no other autoencoder
            raise ValueError(f"--k {self.k}: experiments.scaling_k has autoencoders at the K dividing "
                             f"{K_STUDY_PASSAGE_LENGTH} (its passage length): 1 2 4 8 16; or give --checkpoint")
        if self.run_name is not None:
            check_run_name(self.run_name)


def _checkpoint(cfg: Config) -> Path:
    if cfg.checkpoint is not None:
        path = Path(cfg.checkpoint).expanduser()
        if not (path / "model.safetensors").is_file():
            raise ValueError(f"checkpoint {cfg.checkpoint!r} holds no model.safetensors (a calm.checkpoint directory)")
        return path.resolve()
    # the K study's default autoencoder (experiments.common.models.K_AUTOENCODER, l = 32 K): the same cache
    return ensure_k_autoencoder(replace(SweepConfig(runs_dir=cfg.runs_dir, corpus=cfg.corpus), **K_AUTOENCODER), cfg.k)


def encode_chunks(model, ids: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, log_sigma)`` ``(N, l)`` float64 of chunks ``ids (N, K)``."""
    import torch

    out_mu, out_ls = [], []
    with torch.inference_mode():
        for i in range(0, len(ids), batch):
            mu, ls = model.encode(torch.as_tensor(ids[i: i + batch]))
            out_mu.append(mu.reshape(-1, mu.shape[-1]).double().numpy())
            out_ls.append(ls.reshape(-1, ls.shape[-1]).double().numpy())
    return np.concatenate(out_mu), np.concatenate(out_ls)


def probe_table(mu: np.ndarray, chunks, classes: np.ndarray, vocab_size: int, split, cfg: Config) -> list[dict]:
    """Every probe of the analysis, on the ``(train, test)`` chunk masks: one row per feature, with its
    baselines and noisy accuracies."""
    train, test = split
    K = chunks.ids.shape[1]
    features = {**{f"token id @{j}": chunks.ids[:, j] for j in range(K)},
                **{f"token class @{j}": classes[chunks.ids[:, j]] for j in range(K)},
                **_source_label(chunks), "position in line": chunks.position}
    has_next = chunks.next_first >= 0
    bag = bag_of_ids(chunks.ids, vocab_size)
    rows = []
    from tqdm.auto import tqdm

    todo = [*features.items(), ("next chunk's first token", chunks.next_first)]
    # each probe fits len(probe_cs) + 1 logistic regressions on mu and as many on the bag of ids: minutes at K = 8
    for name, y in tqdm(todo, desc="probes", unit="label", mininterval=5):
        keep = has_next if name.startswith("next") else np.ones(len(y), bool)
        y = cap_classes(y, train & keep, cfg.max_classes)
        tr, te = train & keep, test & keep
        vec = probe(mu, y, tr, te, groups=chunks.doc, Cs=tuple(cfg.probe_cs), noise=tuple(cfg.noise_sigmas),
                    seed=cfg.seed)
        ids = probe(bag, y, tr, te, groups=chunks.doc, Cs=tuple(cfg.probe_cs), seed=cfg.seed)
        rows.append({"feature": name, "classes": vec.classes, "train": vec.train, "test": vec.test, "C": vec.C,
                     "C_bag_of_ids": ids.C, "majority": vec.majority, "bag_of_ids": ids.accuracy, "probe": vec.accuracy,
                     **{f"probe_sigma_{s}": a for s, a in vec.noisy.items()}})
    return rows


def _source_label(chunks) -> dict[str, np.ndarray]:
    """``{"source": labels}`` when the chunks come from more than one source (KJV / Shakespeare document names),
    else nothing: a corpus of one source (WikiText-103, a ``text:`` corpus) has no source to probe."""
    return {"source": chunks.source} if len(np.unique(chunks.source)) > 1 else {}


def _top_dimension_probes(mu, kl, chunks, classes, split, cfg: Config) -> dict:
    """Single-dimension probes on the dimension with most KL: which label it alone predicts best."""
    train, test = split
    dim = int(np.argmax(kl))
    labels = {"token id @0": chunks.ids[:, 0], "token class @0": classes[chunks.ids[:, 0]], **_source_label(chunks),
              "position in line": chunks.position}
    out = {}
    for name, y in labels.items():
        r = probe(mu[:, [dim]], cap_classes(y, train, cfg.max_classes), train, test, groups=chunks.doc,
                  Cs=tuple(cfg.probe_cs), seed=cfg.seed)
        out[name] = {"probe": r.accuracy, "majority": r.majority}
    return {"dim": dim, "kl": float(kl[dim]), "probes": out}


def main(cfg: Config) -> dict:
    """Run the analysis; returns (and writes) analysis.json's content."""
    t0 = time.time()
    path = _checkpoint(cfg)
    model, tok = load_pretrained(path)
    model.eval()
    K, ell = model.config.K, model.config.latent_dim
    run_dir = claim_single_run(cfg, cfg.run_name or f"vectors-{path.name}", checkpoint_id(path), experiment="vectors")
    print(f"[vectors] {path} (K={K}, l={ell}) -> {run_dir}", flush=True)
    chunks = chunk_set(load_split(cfg.corpus, "test"), tok, K, max_chunks=cfg.max_chunks, seed=cfg.seed)
    classes = token_classes(tok)
    mu, log_sigma = encode_chunks(model, chunks.ids)
    kl = (0.5 * (mu ** 2 + np.exp(2 * log_sigma) - 1 - 2 * log_sigma)).mean(axis=0)
    var = mu.var(axis=0)
    print(f"[vectors] {len(chunks)} chunks from {len(chunks.docs)} documents; probes ...", flush=True)
    split = split_by_document(chunks.doc, strata=chunks.source, test_fraction=cfg.test_fraction, seed=cfg.seed)
    rows = probe_table(mu, chunks, classes, len(tok), split, cfg)
    top = _top_dimension_probes(mu, kl, chunks, classes, split, cfg)
    first_class = classes[chunks.ids[:, 0]]
    # neighbours among distinct chunks: a repeated chunk (every "\n" at K = 1) is its own neighbour at distance 0
    distinct = np.sort(np.unique(chunks.ids, axis=0, return_index=True)[1])
    source = _source_label(chunks.subset(distinct))
    neighbours = neighbour_agreement(mu[distinct], {**source, "first token": chunks.ids[distinct, 0],
                                                    "first token class": first_class[distinct],
                                                    "position in line": chunks.position[distinct]}, seed=cfg.seed)
    result = {"checkpoint": str(path), "K": K, "latent_dim": ell, "chunks": len(chunks), "documents": len(chunks.docs),
              "kl_per_dim": kl.round(5).tolist(), "variance_per_dim": var.round(5).tolist(),
              "kl_total": float(kl.sum()), "collapsed_dims": int((kl < 0.01).sum()),
              "effective_rank": effective_rank(mu), "probes": rows, "top_dimension": top,
              "neighbour_agreement": neighbours,
              "interpolation": interpolation_table(model, tok, mu, chunks),
              "distinct_chunks": len(distinct),
              "nearest_neighbours": neighbour_table(mu[distinct], chunks.subset(distinct), tok, seed=cfg.seed),
              "config": asdict(cfg)}
    import pandas as pd

    atomic_write_text(run_dir / "probes.csv", pd.DataFrame(rows).to_csv(index=False))
    if cfg.plots:
        plot_dimensions(kl, var, run_dir / "dimensions.png")
        plot_manifold(mu, {**({"source": (chunks.source, ("KJV", "Shakespeare"))} if _source_label(chunks) else {}),
                           "first token class": (first_class, TOKEN_CLASSES),
                           "position in line": (chunks.position, ("0", "1-4", "5-9", "10-19", "20+"))},
                      run_dir / "manifold.png", umap_points=cfg.umap_points, seed=cfg.seed)
    result["seconds"] = round(time.time() - t0, 1)
    command = "python -m experiments.analyze_vectors " + (f"--checkpoint {path}" if cfg.checkpoint else f"--k {cfg.k}")
    if cfg.corpus != Config.corpus:
        command += f" --corpus {cfg.corpus}"
    result["command"] = command
    atomic_write_text(run_dir / "analysis.json", json.dumps(result, indent=2) + "\n")
    write_summary(result, run_dir / "summary.md")
    mark_finished(run_dir)
    print(f"[vectors] done in {result['seconds']:.0f} s: {run_dir / 'summary.md'}\n[vectors] reproduce: {command}",
          flush=True)
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, Config, prog="python -m experiments.analyze_vectors",
                         description=__doc__.split("\n\n")[0]))
