"""Held-out evaluation of a trained model.

    python -m calm.evaluate autoencoder runs/ae-k4 [--corpus kjv+shakespeare] [--split test]
        [--max-chunks N] [--sigmas 0.1,0.2,0.3,0.5,1.0] [--json PATH]
    python -m calm.evaluate calm|baseline DIR [--split test] [--max-passages 64]   (BrierLM; calm: on-manifold)

For the autoencoder: token accuracy and exact-chunk accuracy of greedy reconstruction from mu; the same
when Gaussian noise of standard deviation sigma is added to mu (the latent robustness CALM relies on);
per-dimension KL to the prior and the count of collapsed dimensions (KL < 0.01 nats); the scale of mu
and of the posterior sigma (so that a noise level can be read against the size of the signal).
Prints a table and writes JSON (default ``<checkpoint>/eval_<split>.json``).

The settings, the output path (a folder that can be written, not a directory) and the checkpoint (its type,
finite weights) are checked before anything is evaluated: a fault is one line and exit status 2, never an
evaluation that runs and is then lost or a NaN model reported as accuracy 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from calm.autoencoder import Autoencoder
from calm.brier import BrierScores, evaluate_brier
from calm.cli import OneLineErrorParser
from calm.files import DamagedFileError, atomic_write_text
from calm.integrity import check_output_path

__all__ = ["AutoencoderReport", "COLLAPSE_THRESHOLD", "DEFAULT_SIGMAS", "chunk_stream", "evaluate_autoencoder",
           "evaluate_checkpoint", "format_report", "main"]

DEFAULT_SIGMAS = (0.1, 0.2, 0.3, 0.5, 1.0)
COLLAPSE_THRESHOLD = 0.01
"""a latent dimension whose mean KL to the prior is below this many nats carries (almost) nothing"""


@dataclass
class AutoencoderReport:
    """Held-out figures of an autoencoder (accuracies are fractions in [0, 1])."""

    chunks: int
    """number of K-token chunks evaluated"""
    token_accuracy: float
    """greedy decode of mu: fraction of tokens right"""
    chunk_accuracy: float
    """fraction of chunks with all K tokens right"""
    noise_token_accuracy: dict[str, float]
    """sigma (as a string key) -> token accuracy of decode(mu + sigma * N(0, 1))"""
    noise_chunk_accuracy: dict[str, float]
    """sigma -> exact-chunk accuracy under that noise"""
    kl_per_dim: list[float]
    """(l,) mean KL(q(z|x) || N(0, I)) of each latent dimension, nats"""
    kl_total: float
    """sum of kl_per_dim"""
    collapsed_dims: int
    """dimensions with KL < COLLAPSE_THRESHOLD"""
    latent_dim: int
    """l"""
    mu_rms: float
    """root mean square of mu over chunks and dimensions"""
    mu_std: float
    """mean over dimensions of the standard deviation of mu across chunks"""
    sigma_mean: float
    """mean posterior standard deviation exp(log_sigma)"""


def chunk_stream(ids: np.ndarray, K: int, max_chunks: int | None = None) -> torch.Tensor:
    """(N, K) int64: consecutive non-overlapping K-token chunks of a flat token stream (remainder dropped)."""
    n = len(ids) // K
    if max_chunks is not None:
        n = min(n, max_chunks)
    if n == 0:
        raise ValueError(f"the token stream has {len(ids)} ids, fewer than K={K}")
    return torch.from_numpy(np.asarray(ids[: n * K], dtype=np.int64).reshape(n, K))


@torch.no_grad()
def evaluate_autoencoder(
    model: Autoencoder,
    chunks: torch.Tensor,
    *,
    sigmas: tuple[float, ...] = DEFAULT_SIGMAS,
    batch_size: int = 4096,
    seed: int = 0,
) -> AutoencoderReport:
    """Evaluate ``model`` on ``chunks``.

    Args:
        model: the autoencoder (put in eval mode here).
        chunks: (N, L) token ids, L a multiple of K (usually L = K).
        sigmas: noise standard deviations added to mu.
        batch_size: rows per forward pass.
        seed: seeds the noise (a torch.Generator on the model's device).

    Returns:
        AutoencoderReport.
    """
    for s in sigmas:
        if not s >= 0:
            raise ValueError(f"sigmas must be >= 0, got {s}")
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    K = model.config.K
    N = len(chunks)
    hits = {s: 0.0 for s in (None, *sigmas)}
    exact = {s: 0.0 for s in (None, *sigmas)}
    kl_sum = torch.zeros(model.config.latent_dim, dtype=torch.float64)
    mu_sum = torch.zeros_like(kl_sum)
    mu_sq = torch.zeros_like(kl_sum)
    sigma_sum = 0.0
    count = 0
    for i in range(0, N, batch_size):
        ids = chunks[i : i + batch_size].to(device)  # (b, L)
        mu, log_sigma = model.encode(ids)  # (b, n, l)
        for s in (None, *sigmas):
            z = mu if s is None else mu + s * torch.randn(mu.shape, generator=gen, device=device)
            ok = model.decode(z).argmax(-1) == ids  # (b, L)
            hits[s] += ok.float().sum().item()
            exact[s] += ok.view(ok.shape[0], -1, K).all(-1).float().sum().item()
        flat_mu = mu.reshape(-1, mu.shape[-1]).double().cpu()  # (b*n, l)
        flat_ls = log_sigma.reshape(-1, mu.shape[-1]).double().cpu()
        kl_sum += (0.5 * (flat_mu.pow(2) + torch.exp(2 * flat_ls) - 1 - 2 * flat_ls)).sum(0)
        mu_sum += flat_mu.sum(0)
        mu_sq += flat_mu.pow(2).sum(0)
        sigma_sum += torch.exp(flat_ls).sum().item()
        count += flat_mu.shape[0]
    tokens = N * chunks.shape[1]
    kl = kl_sum / count
    mean = mu_sum / count
    var = (mu_sq / count - mean.pow(2)).clamp_min(0)
    return AutoencoderReport(
        chunks=count,
        token_accuracy=hits[None] / tokens,
        chunk_accuracy=exact[None] / count,
        noise_token_accuracy={str(s): hits[s] / tokens for s in sigmas},
        noise_chunk_accuracy={str(s): exact[s] / count for s in sigmas},
        kl_per_dim=[round(x, 6) for x in kl.tolist()],
        kl_total=float(kl.sum()),
        collapsed_dims=int((kl < COLLAPSE_THRESHOLD).sum()),
        latent_dim=model.config.latent_dim,
        mu_rms=float((mu_sq.sum() / (count * len(kl))).sqrt()),
        mu_std=float(var.sqrt().mean()),
        sigma_mean=sigma_sum / (count * len(kl)),
    )


def format_report(report: AutoencoderReport) -> str:
    """A plain-text table of a report."""
    lines = [f"chunks {report.chunks}   latent dim {report.latent_dim}",
             f"{'sigma':>8} {'token acc':>10} {'chunk acc':>10}",
             f"{'0 (mu)':>8} {100 * report.token_accuracy:>9.3f}% {100 * report.chunk_accuracy:>9.3f}%"]
    for s, acc in report.noise_token_accuracy.items():
        lines.append(f"{s:>8} {100 * acc:>9.3f}% {100 * report.noise_chunk_accuracy[s]:>9.3f}%")
    lines.append(f"KL total {report.kl_total:.3f} nats; collapsed dims (KL < {COLLAPSE_THRESHOLD}) "
                 f"{report.collapsed_dims}/{report.latent_dim}")
    lines.append(f"mu rms {report.mu_rms:.3f}, mu std per dim {report.mu_std:.3f}, "
                 f"posterior sigma mean {report.sigma_mean:.4f}")
    return "\n".join(lines)


def evaluate_checkpoint(
    directory: str,
    *,
    model_type: str,
    corpus: str = "kjv+shakespeare",
    split: str = "test",
    max_passages: int = 64,
    seed: int = 0,
    num_samples: int = 2,
    json_path: str | None = None,
) -> BrierScores:
    """Brier-1..4 and BrierLM of a calm or baseline checkpoint on a held-out split (`python -m calm.evaluate`);
    for calm also the on-manifold fraction of its head's samples (``EnergyTransformer.on_manifold``).

    Passages are windows of the model's training length (calm: max_patches * K, baseline: max_positions),
    up to max_passages of them drawn with `seed`. Prints a table and writes JSON (default
    <checkpoint>/eval_brier_<split>.json), whose path is checked before anything is evaluated.
    """
    from calm.backbone import default_device
    from calm.checkpoint import load_pretrained
    from calm.data import load_token_ids, make_passages

    out = check_output_path(json_path or Path(directory) / f"eval_brier_{split}.json")
    device = default_device()
    model, tokenizer = load_pretrained(directory, device=device, expect=model_type)
    c = model.config
    length = c.max_patches * c.K if model_type == "calm" else c.max_positions
    ids = load_token_ids(corpus, tokenizer, split, progress=False)
    passages = make_passages(ids, length, max_passages=max_passages, seed=seed)
    scores = evaluate_brier(model, passages, num_samples=num_samples,
                            generator=torch.Generator(device=device).manual_seed(seed))
    print(f"{model_type} {directory}  {split} split, {len(passages)} passages of {length} tokens, "
          f"{num_samples} samples per position")
    for n, b in enumerate(scores.brier, start=1):
        print(f"  Brier-{n}  {b:.4f}   ({scores.counts[n - 1]} positions)")
    print(f"  BrierLM  {scores.brier_lm:.2f}")
    manifold = {}
    if model_type == "calm":  # the head's samples: on the autoencoder's manifold, or a blob between its codes
        manifold = model.on_manifold(torch.as_tensor(passages[:64], dtype=torch.long, device=device),
                                     generator=torch.Generator(device=device).manual_seed(seed))
        print(f"  on-manifold {100 * manifold['on_manifold']:.1f}% of head samples (distance to the re-encoding "
              f"of their decoded tokens: median {manifold['sample_distance']:.3f}, real chunks "
              f"{manifold['data_distance']:.3f})")
    atomic_write_text(out, json.dumps({"checkpoint": str(directory), "model_type": model_type, "corpus": corpus,
                                       "split": split, "passages": len(passages), "length": length,
                                       "samples": num_samples, **scores.as_dict(), **manifold,
                                       "counts": scores.counts}, indent=1) + "\n")
    return scores


def main(argv: list[str] | None = None) -> AutoencoderReport | BrierScores:
    """CLI entry point (see the module docstring). A setting, checkpoint or output path that is refused
    raises (ValueError, CheckpointError, DamagedFileError, FileNotFoundError) before anything is evaluated;
    ``python -m calm.evaluate`` prints it as one line and exits with status 2."""
    return _run(_parser().parse_args(argv))


def _sigmas(text: str) -> tuple[float, ...]:
    try:
        sigmas = tuple(float(s) for s in text.split(",") if s)
    except ValueError:
        raise ValueError(f"--sigmas {text!r}: not comma-separated numbers") from None
    if not all(math.isfinite(s) and s >= 0 for s in sigmas):
        raise ValueError(f"--sigmas {text!r}: each must be a finite number >= 0")
    return sigmas


def _run(args: argparse.Namespace) -> AutoencoderReport | BrierScores:
    from calm.checkpoint import load_pretrained
    from calm.data import load_token_ids

    for flag, value, low in (("--max-chunks", getattr(args, "max_chunks", None), 1),
                             ("--max-passages", getattr(args, "max_passages", None), 1),
                             ("--samples", getattr(args, "samples", None), 2)):
        if value is not None and value < low:
            name = flag[2:].replace("-", "_") if flag != "--samples" else "num_samples"
            raise ValueError(f"{flag}: {name} must be >= {low}, got {value}")
    if args.model in ("calm", "baseline"):
        return evaluate_checkpoint(args.checkpoint, model_type=args.model, corpus=args.corpus, split=args.split,
                                   max_passages=args.max_passages, seed=args.seed, num_samples=args.samples,
                                   json_path=args.json)

    sigmas = _sigmas(args.sigmas)
    # the output path first: an evaluation that cannot be kept is not run
    out = check_output_path(args.json or Path(args.checkpoint) / f"eval_{args.split}.json")
    model, tokenizer = load_pretrained(args.checkpoint, expect="autoencoder")
    ids = load_token_ids(args.corpus, tokenizer, args.split)
    chunks = chunk_stream(ids, model.config.K, args.max_chunks)
    report = evaluate_autoencoder(model, chunks, sigmas=sigmas, seed=args.seed)
    print(format_report(report))
    atomic_write_text(out, json.dumps({"checkpoint": str(args.checkpoint), "corpus": args.corpus,
                                       "split": args.split, **asdict(report)}, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return report


def _parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m calm.evaluate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="model", required=True)
    p = sub.add_parser("autoencoder", help="evaluate an autoencoder checkpoint")
    p.add_argument("checkpoint", help="checkpoint directory (save_pretrained layout)")
    p.add_argument("--corpus", default="kjv+shakespeare", help="corpus name (see calm.data)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"], help="data split")
    p.add_argument("--max-chunks", type=int, default=None, help="evaluate at most this many chunks")
    p.add_argument("--sigmas", default=",".join(str(s) for s in DEFAULT_SIGMAS), help="comma-separated sigmas")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--json", default=None, help="output path (default <checkpoint>/eval_<split>.json)")
    for name in ("calm", "baseline"):
        q = sub.add_parser(name, help=f"Brier-1..4 and BrierLM of a {name} checkpoint")
        q.add_argument("checkpoint", help="checkpoint directory (save_pretrained layout)")
        q.add_argument("--corpus", default="kjv+shakespeare", help="corpus name (see calm.data)")
        q.add_argument("--split", default="test", choices=["train", "validation", "test"], help="data split")
        q.add_argument("--max-passages", type=int, default=64, help="evaluate at most this many passages")
        q.add_argument("--seed", type=int, default=0, help="seed of the passage draw and the samples")
        q.add_argument("--samples", type=int, default=2,
                       help="sampled continuations per position (>= 2; the paper's 2, more lower the variance)")
        q.add_argument("--json", default=None, help="output path (default <checkpoint>/eval_brier_<split>.json)")
    return parser


if __name__ == "__main__":
    try:
        main()
    except (DamagedFileError, FileNotFoundError, ValueError) as exc:  # CheckpointError is a ValueError
        print(f"python -m calm.evaluate: error: {exc}", file=sys.stderr)
        sys.exit(2)
