"""CALM vectors vs SAE features: TopK sparse autoencoders on the latents and on the energy transformer's states.

    python -m experiments.compare_sae                                   # the tiny K = 2 autoencoder and its CALM
    python -m experiments.compare_sae --checkpoint runs/ae-... --lm-checkpoint runs/calm-...
    python -m experiments.compare_sae --sae results/sae-x/saes/hidden-x16-k8   # evaluate SAEs trained elsewhere
    python -m experiments.compare_sae --help

Rows are K-token chunks in windows of ``window`` consecutive chunks of one document (train split: SAEs and
probes are fitted there; test split: everything is scored there). Two activation sources per chunk:
``latent``, the autoencoder's encoder mean mu (l dims), and ``hidden``, the energy transformer's hidden state
h[:, t] (d dims) for t >= 1, paired with chunk t - 1, the last chunk it has read (it predicts chunk t, whose
first token is that row's "next first token" label). TopK SAEs (``calm.sae``) of ``expansions`` x d_in
features at each k of ``ks`` give held-out FVE against L0 (with PCA's top-k components as the dense
reference). Each live feature is then matched with: every input dimension and every probe direction
(the decision score of a logistic probe, ``experiments.common.probes.probe``, per class) by |Pearson r|; and
the labels of its ``top_n`` most active chunks (a shared token, token class, position in line or source on
at least ``min_share`` of them and ``min_lift`` x its base rate). Writes summary.md, sae.csv, analysis.json
and PNGs under results/sae-<lm checkpoint>/, and every SAE in SAELens's format under its saes/ folder.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from calm.checkpoint import load_pretrained
from calm.checks import check_numbers, in_range, merge_duplicates, positive_ints
from calm.corpus import load_split
from calm.files import atomic_write_text
from calm.sae import (
    dead_features,
    feature_frequency,
    fraction_variance_explained,
    load_sae,
    save_sae,
    train_sae,
)
from calm.tracking import check_tracking
from experiments.common.config import TrackerName, check_run_name, default_tracking, unhashed
from experiments.common.models import checkpoint_id, ensure_k2_models
from experiments.common.probes import ChunkSet, chunk_set, token_classes
from experiments.common.sweep import claim_single_run, cli, mark_finished
from experiments.compare_sae_report import (
    abs_corr,
    feature_matches,
    pca_fve,
    plot_fve_l0,
    plot_matches,
    probe_directions,
    probe_labels,
    reproduce_command,
    strongest,
    write_summary,
)

__all__ = ["Config", "activations", "main", "probe_directions", "windowed_rows"]

SOURCES = ("latent", "hidden")


@dataclass
class Config:
    """One comparison of CALM vectors with SAE features."""

    # the models' weights (checkpoint ids in run.json) name the run, not the paths they are read from
    checkpoint: str | None = unhashed(None)
    """autoencoder checkpoint; none: experiments.dialogue's tiny K = 2 one (trained once, cached)"""
    lm_checkpoint: str | None = unhashed(None)
    """CALM (energy transformer) checkpoint on that autoencoder; none: ensure_calm's (trained once, cached)"""
    runs_dir: str = unhashed("runs")
    """where the default models are cached"""
    corpus: str = "kjv+shakespeare"
    """train split: SAEs and probes; test split: scoring (any corpus the autoencoder's tokenizer encodes, e.g.
    WikiText-103 or text:<path>; KJV / Shakespeare document names give the source label)"""
    results_dir: str = unhashed("results")
    """where the run directory goes"""
    run_name: str | None = unhashed(None)
    """run directory name; default sae-<CALM checkpoint directory name>"""
    sources: tuple[Literal["latent", "hidden"], ...] = SOURCES
    """activations: latent = encoder mean mu of each chunk; hidden = the CALM's hidden state after reading it"""
    expansions: tuple[int, ...] = (4, 16)
    """dictionary sizes as multiples of the input width d_in"""
    ks: tuple[int, ...] = (2, 4, 8, 16)
    """active features per row (TopK): each at most the smallest dictionary, min(expansions) x d_in"""
    sae: tuple[str, ...] = ()
    """SAE directories (SAELens format) to evaluate instead of training; source from metadata hook_name or d_in"""
    steps: int = 1000
    """SAE training steps"""
    batch_size: int = 256
    """SAE training rows per step"""
    lr: float = 2e-3
    """SAE Adam learning rate, in (0, 1]"""
    train_chunks: int = 30000
    """training rows (chunks of train documents)"""
    test_chunks: int = 8000
    """held-out rows (chunks of test documents)"""
    window: int = 32
    """chunks per energy-transformer window (each gives window - 1 rows)"""
    max_classes: int = 16
    """token-id probes keep the max_classes - 1 most frequent ids; the rest are one class"""
    top_n: int = 20
    """most active chunks per feature whose labels are compared"""
    min_share: float = 0.8
    """a label is shared when this share of a feature's top chunks has it ..."""
    min_lift: float = 1.5
    """... and that share is at least this multiple of the label's base rate on the test chunks"""
    threshold: float = 0.5
    """|Pearson r| above which a feature counts as matching a dimension or a probe direction"""
    control: bool = True
    """also fit the SAEs of the smallest expansion to Gaussian rows of the train rows' mean and covariance: the
    FVE a dictionary reaches on data with no sparse structure"""
    seed: int = 0
    """seed of the document and window sample, the SAEs, the probes and the Gaussian rows"""
    plots: bool = unhashed(True)
    """write the PNG plots"""
    overwrite: bool = unhashed(False)
    """replace a finished comparison of these settings in the run directory (a finished one is otherwise refused)"""
    tracking: TrackerName = default_tracking()
    """experiment tracker (calm.tracking): mlflow (results_dir/mlflow.db unless --tracking-uri), wandb or none
    (default from LATENTCOMM_TRACKING, else mlflow)"""
    tracking_uri: str = unhashed("")
    """MLflow store or server (sqlite:///path/mlflow.db, http://host:5000); empty: results_dir/mlflow.db"""

    def __post_init__(self) -> None:
        check_numbers(self)
        check_tracking(self.tracking, self.tracking_uri)
        merge_duplicates(self, "sources", "expansions", "ks", "sae")
        positive_ints(self, "steps", "batch_size", "train_chunks", "test_chunks", "top_n", "expansions", "ks")
        positive_ints(self, "window", "max_classes", minimum=2)
        positive_ints(self, "seed", minimum=0)
        if not self.sources or any(s not in SOURCES for s in self.sources):
            raise ValueError(f"sources must be among {SOURCES}, got {self.sources}")
        in_range("min_share", self.min_share, 0, 1, low_open=True)
        in_range("min_lift", self.min_lift, 1, 1e6)
        in_range("threshold", self.threshold, 0, 1, low_open=True, high_open=True)
        in_range("lr", self.lr, 0, 1, low_open=True)
        if self.run_name is not None:
            check_run_name(self.run_name)


# ----------------------------------------------------------------------------------------------------------
# rows: chunks in windows, and both activation sources


def windowed_rows(documents, tok, K: int, window: int, rows: int, seed: int):
    """Sample windows of ``window`` consecutive chunks of one document until ``rows`` rows (window - 1 each);
    returns (ChunkSet of the rows, (W, window, K) ids). Documents are drawn at random first, about 4x the text
    needed, so that a large split is not tokenised whole."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(documents))
    need = 4 * rows * K * 4  # characters: ~4 per token, 4x the rows for a spread of windows
    picked, chars = [], 0
    for i in order:
        picked.append(documents[int(i)])
        chars += len(documents[int(i)].text)
        if chars >= need:
            break
    chunks = chunk_set(picked, tok, K)
    # a window starts at every window-th chunk of a document and stays inside it
    starts = np.arange(0, len(chunks) - window + 1)
    starts = starts[(chunks.doc[starts] == chunks.doc[starts + window - 1])]
    starts = starts[(starts - np.searchsorted(chunks.doc, chunks.doc[starts])) % window == 0]
    if len(starts) == 0:
        raise ValueError(f"no document holds {window} chunks of K={K} tokens (lower --window)")
    n_windows = min(len(starts), math.ceil(rows / (window - 1)))
    starts = np.sort(rng.choice(starts, n_windows, replace=False))
    index = starts[:, None] + np.arange(window)  # (W, window)
    return chunks.subset(index[:, :-1].ravel()), chunks.ids[index]


def activations(ae, lm, windows: np.ndarray, sources: tuple[str, ...], batch: int = 64) -> dict[str, np.ndarray]:
    """source -> (N, d_in) float32: latent = mu of chunk t - 1, hidden = lm.hidden at t, for t = 1 .. window - 1."""
    import torch

    W, P, K = windows.shape
    out: dict[str, list] = {s: [] for s in sources}
    with torch.inference_mode():
        for i in range(0, W, batch):
            ids = torch.as_tensor(windows[i: i + batch])  # (B, P, K)
            if "latent" in sources:
                mu, _ = ae.encode(ids[:, :-1].reshape(-1, K))  # (B (P-1), l)
                out["latent"].append(mu.reshape(-1, mu.shape[-1]).float().numpy())
            if "hidden" in sources:
                h = lm.hidden(ids.reshape(len(ids), P * K))  # (B, P, d): h[:, t] has read patches < t
                out["hidden"].append(h[:, 1:].reshape(-1, h.shape[-1]).float().numpy())
    return {s: np.concatenate(v) for s, v in out.items()}


# ----------------------------------------------------------------------------------------------------------
# run


def _sae_jobs(cfg: Config, d_in: dict[str, int]) -> list[tuple[str, int, int, str | None]]:
    """(source, expansion, k, directory of a given SAE or None) for each SAE of the run.

    Raises:
        ValueError: a k of --ks exceeds a dictionary it would train (expansion x d_in features).
    """
    if not cfg.sae:
        for s in cfg.sources:
            if too_big := [k for k in cfg.ks if k > min(cfg.expansions) * d_in[s]]:
                raise ValueError(f"--ks {' '.join(map(str, too_big))}: the {s} SAE of expansion {min(cfg.expansions)} "
                                 f"has {min(cfg.expansions) * d_in[s]} features (d_in {d_in[s]}); k must be at most "
                                 "that (lower --ks or raise --expansions)")
        return [(s, e, k, None) for s in cfg.sources for e in cfg.expansions for k in cfg.ks]

    jobs = []
    for directory in cfg.sae:
        sae = load_sae(directory)
        hook = str(sae.metadata.get("hook_name", ""))
        source = hook.removeprefix("calm.") if hook.removeprefix("calm.") in d_in else None
        if source is None:
            matching = [s for s, d in d_in.items() if d == sae.d_in]
            if len(matching) != 1:
                raise ValueError(f"SAE {directory}: d_in={sae.d_in} matches sources {matching} of {d_in}")
            source = matching[0]
        if sae.d_in != d_in[source]:
            raise ValueError(f"SAE {directory}: d_in={sae.d_in}, but {source} activations have {d_in[source]} dims")
        jobs.append((source, sae.d_sae // sae.d_in, sae.k, directory))
    return jobs


def _models(cfg: Config):
    """(autoencoder dir, CALM dir or None, autoencoder, tokenizer, CALM or None)."""
    checkpoint, lm_path, _ = ensure_k2_models(runs_dir=cfg.runs_dir, corpus=cfg.corpus, checkpoint=cfg.checkpoint,
                                              lm_checkpoint=cfg.lm_checkpoint, calm="hidden" in cfg.sources,
                                              token_lm=False)
    ae, tok = load_pretrained(checkpoint)
    lm = load_pretrained(lm_path)[0].eval() if lm_path is not None else None
    return checkpoint, lm_path, ae.eval(), tok, lm


def main(cfg: Config) -> dict:
    """Run the comparison; returns (and writes) analysis.json's content."""
    import torch

    t0 = time.time()
    for directory in cfg.sae:  # a bad --sae fails before minutes of rows and probes
        load_sae(directory)
    checkpoint, lm_path, ae, tok, lm = _models(cfg)
    K = ae.config.K
    # the widths (from the models' configs) decide which k fit, before minutes of rows and probes
    widths = {"latent": ae.config.latent_dim, "hidden": lm.config.hidden_size if lm is not None else 0}
    _sae_jobs(cfg, {s: widths[s] for s in cfg.sources})
    run_dir = claim_single_run(cfg, cfg.run_name or f"sae-{(lm_path or checkpoint).name}",
                               " + ".join(checkpoint_id(p) for p in (checkpoint, lm_path) if p is not None),
                               experiment="sae")
    print(f"[sae] {checkpoint} + {lm_path} (K={K}) -> {run_dir}", flush=True)
    # rows: train documents fit SAEs and probes, test documents score them
    tr, tr_windows = windowed_rows(load_split(cfg.corpus, "train"), tok, K, cfg.window, cfg.train_chunks, cfg.seed)
    te, te_windows = windowed_rows(load_split(cfg.corpus, "test"), tok, K, cfg.window, cfg.test_chunks, cfg.seed)
    x_tr = activations(ae, lm, tr_windows, cfg.sources)
    x_te = activations(ae, lm, te_windows, cfg.sources)
    d_in = {s: x_te[s].shape[1] for s in cfg.sources}
    print(f"[sae] {len(tr)} train rows, {len(te)} test rows; d_in {d_in}; probes ...", flush=True)

    both = ChunkSet(*(np.concatenate([getattr(tr, f), getattr(te, f) + (len(tr.docs) if f == "doc" else 0)])
                      for f in ("ids", "doc", "source", "position", "next_first")), docs=tr.docs + te.docs)
    train = np.arange(len(both)) < len(tr)
    classes = token_classes(tok)
    labels = probe_labels(both, classes, train, cfg.max_classes)
    probes, baselines = {}, {}
    for s in cfg.sources:
        xs = np.concatenate([x_tr[s], x_te[s]]).astype(np.float64)
        scores, names, accuracy = probe_directions(xs, labels, train, ~train, tok, seed=cfg.seed)
        probes[s] = (scores, names)
        r_dim = abs_corr(x_te[s], scores)  # the raw dimensions read as features: the baseline
        baselines[s] = {"d_in": d_in[s], "probes": accuracy, "probe_directions": len(names),
                        "dims_matching_probe": int((r_dim.max(1) > cfg.threshold).sum()),
                        "pca_fve": pca_fve(x_tr[s], x_te[s], sorted({*cfg.ks, 1, d_in[s]}))}
    rows, features = [], {}
    torch.manual_seed(cfg.seed)
    for source, expansion, k, given in _sae_jobs(cfg, d_in):
        t1 = time.time()
        tag = f"{source}-x{expansion}-k{k}"
        if given is None:
            sae = train_sae(torch.as_tensor(x_tr[source]), expansion * d_in[source], k, steps=cfg.steps,
                            batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, progress=True,
                            metadata={"hook_name": f"calm.{source}", "model_name": (lm_path or checkpoint).name})
            if not all(torch.isfinite(p).all() for p in sae.parameters()):
                raise ValueError(f"the SAE {tag} diverged at --lr {cfg.lr:g} (NaN or inf weights; nothing saved): "
                                 "lower --lr")
            save_sae(sae, run_dir / "saes" / tag, training_steps=cfg.steps)
        else:
            sae = load_sae(given)
        fve_gaussian = None
        if cfg.control and given is None and expansion == min(cfg.expansions):
            rng = np.random.default_rng(cfg.seed)
            mean, cov = x_tr[source].mean(0), np.cov(x_tr[source], rowvar=False)
            g_tr, g_te = (torch.as_tensor(rng.multivariate_normal(mean, cov, len(x[source])), dtype=torch.float32)
                          for x in (x_tr, x_te))
            fve_gaussian = fraction_variance_explained(train_sae(g_tr, sae.d_sae, k, steps=cfg.steps, lr=cfg.lr,
                                                                 batch_size=cfg.batch_size, seed=cfg.seed), g_te)
        with torch.no_grad():
            acts = sae.encode(torch.as_tensor(x_te[source])).numpy()
        matched = feature_matches(acts, x_te[source], probes[source][0], te, classes, cfg)
        features[tag] = matched
        freq = feature_frequency(sae, torch.as_tensor(x_tr[source]))
        row = {"sae": tag, "source": source, "d_in": sae.d_in, "d_sae": sae.d_sae, "expansion": expansion, "k": sae.k,
               "fve_test": fraction_variance_explained(sae, torch.as_tensor(x_te[source])),
               "fve_train": fraction_variance_explained(sae, torch.as_tensor(x_tr[source])), "fve_gaussian": fve_gaussian,
               "l0_test": float((acts > 0).sum(1).mean()), "dead_test": dead_features(sae, torch.as_tensor(x_te[source])),
               "dead_train": int((freq == 0).sum()), "live_test": len(matched),
               "match_dim": int(sum(m["r_dim"] > cfg.threshold for m in matched)),
               "match_probe": int(sum(m["r_probe"] > cfg.threshold for m in matched)),
               **{f"share_{lab}": int(sum(lab in m["shared"] for m in matched))
                  for lab in ("token", "token class", "position", "source")},
               "share_any": int(sum(bool(m["shared"]) for m in matched)),
               "seconds": round(time.time() - t1, 1), "path": str(given or run_dir / "saes" / tag)}
        rows.append(row)
        print(f"[sae] {tag}: FVE {row['fve_test']:.3f} at L0 {row['l0_test']:.2f}; dead {row['dead_test']}; "
              f"r>{cfg.threshold} to a dim {row['match_dim']}, to a probe {row['match_probe']} of "
              f"{row['live_test']} live ({row['seconds']:.0f} s)", flush=True)
    import pandas as pd

    atomic_write_text(run_dir / "sae.csv", pd.DataFrame(rows).to_csv(index=False))
    result = {"checkpoint": str(checkpoint), "lm_checkpoint": str(lm_path) if lm_path else None, "K": K,
              "train_rows": len(tr), "test_rows": len(te), "test_documents": len(te.docs), "saes": rows,
              "baselines": baselines,
              "strongest": strongest(rows, features, probes, te, tok),
              "config": asdict(cfg)}
    if cfg.plots:
        plot_fve_l0(rows, baselines, run_dir / "fve_l0.png")
        plot_matches(rows, baselines, run_dir / "matches.png")
    result["seconds"] = round(time.time() - t0, 1)
    command = reproduce_command(cfg)
    result["command"] = command
    atomic_write_text(run_dir / "analysis.json", json.dumps(result, indent=2, default=float) + "\n")
    write_summary(result, run_dir / "summary.md")
    mark_finished(run_dir)
    print(f"[sae] done in {result['seconds']:.0f} s: {run_dir / 'summary.md'}\n[sae] reproduce: {command}", flush=True)
    return result


def _main_one_thread(cfg: Config) -> dict:
    """``main`` with one torch and one BLAS thread: small matmuls on a shared machine train an SAE 3-8x faster
    on one thread than on two spinning against a load (the probes' BLAS likewise)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(1):
        return main(cfg)


if __name__ == "__main__":
    raise SystemExit(cli(_main_one_thread, Config, prog="python -m experiments.compare_sae",
                         description=__doc__.split("\n\n")[0]))
