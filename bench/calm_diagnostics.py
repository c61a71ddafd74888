"""Where a trained CALM stands between "knows only the marginal" and "knows the truth", in its own loss.

    python bench/calm_diagnostics.py [runs/bench/calm-k4] [--windows 48] [--seed 0]

Prints one JSON object:

- energy: the energy loss (2 E||x - y|| - E||x - x'||, 8 samples x against 100 posterior samples y per
  position, as in training) on held-out windows for three samplers: the model's head; the marginal
  (true posterior samples of random other positions of the same windows); the oracle (fresh samples of
  each position's own posterior, the floor no model can beat).
- reference_brier: Brier-1..4 of two reference predictors of the chunk at a patch boundary, from
  the training split's chunks: the marginal (its expected Brier score is the collision rate
  sum_x P(x)^2 of n-token chunk prefixes) and, for Brier-1, a bigram predictor of a chunk's first
  token given the previous token (in sample, so slightly optimistic).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calm.checkpoint import load_config, load_pretrained  # noqa: E402
from calm.data import load_token_ids  # noqa: E402
from calm.energy_transformer import energy_terms  # noqa: E402


@torch.no_grad()
def energies(model, windows: torch.Tensor, generator: torch.Generator) -> dict[str, dict[str, float]]:
    """{sampler: {energy, xy, xx}} for the model's head, the marginal and the oracle posterior."""
    c = model.config
    mu, log_sigma = model.autoencoder.encode(windows)  # (B, P, l)
    sigma = log_sigma.exp()
    shape = (*mu.shape[:-1], c.num_posterior, mu.shape[-1])
    y = mu.unsqueeze(-2) + sigma.unsqueeze(-2) * torch.randn(shape, generator=generator)  # (B, P, M, l)
    oracle = mu.unsqueeze(-2) + sigma.unsqueeze(-2) * torch.randn(*mu.shape[:-1], c.num_samples, mu.shape[-1],
                                                                  generator=generator)  # fmt: skip
    pool = y.reshape(-1, y.shape[-1])
    marginal = pool[torch.randint(0, pool.shape[0], (*mu.shape[:-1], c.num_samples), generator=generator)]
    head = model.head.sample(model.hidden(windows), c.num_samples, generator=generator)
    out = {}
    for name, x in (("model", head), ("marginal", marginal), ("oracle", oracle)):
        xy, xx = energy_terms(x, y, alpha=c.alpha)
        out[name] = {"energy": (2 * xy - xx).mean().item(), "xy": xy.mean().item(), "xx": xx.mean().item()}
    return out


def reference_brier(train_ids: np.ndarray, K: int) -> dict[str, object]:
    """Expected Brier-n of the marginal chunk predictor and Brier-1 of a first-token bigram predictor."""
    chunks = train_ids[: len(train_ids) // K * K].reshape(-1, K)
    marginal = []
    for n in range(1, min(K, 4) + 1):
        counts = collections.Counter(map(tuple, chunks[:, :n].tolist()))
        total = len(chunks)
        marginal.append(sum((v / total) ** 2 for v in counts.values()))
    prev = np.concatenate([[0], chunks[:-1, -1]])
    pairs = collections.Counter(zip(prev.tolist(), chunks[:, 0].tolist()))
    prev_counts = collections.Counter(prev.tolist())
    bigram = sum(v / len(chunks) * v / prev_counts[p] for (p, _), v in pairs.items())
    return {"marginal_brier_n": marginal, "bigram_first_token_brier_1": bigram}


def main(argv: list[str] | None = None) -> dict:
    """Run the diagnostics; returns (and prints) the JSON-ready result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default="runs/bench/calm-k4", help="a calm checkpoint directory")
    parser.add_argument("--windows", type=int, default=48, help="held-out windows (validation split)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every sample")
    args = parser.parse_args(argv)
    meta = load_config(args.checkpoint)
    if meta["model_type"] != "calm":
        raise SystemExit(f"{args.checkpoint} holds a {meta['model_type']!r} checkpoint, not a calm one")
    model, tokenizer = load_pretrained(args.checkpoint)
    model.eval()
    corpus = "kjv+shakespeare"
    val_ids = load_token_ids(corpus, tokenizer, "validation", progress=False)
    L = model.config.max_patches * model.K
    n = min(args.windows, len(val_ids) // L)
    windows = torch.from_numpy(val_ids[: n * L].astype(np.int64)).view(n, L)
    result = {
        "checkpoint": args.checkpoint,
        "windows": n,
        "energy": energies(model, windows, torch.Generator().manual_seed(args.seed)),
        "reference_brier": reference_brier(load_token_ids(corpus, tokenizer, "train", progress=False), model.K),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
