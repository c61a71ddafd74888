"""Autoencoder quality benchmark: train the tiny preset from scratch, evaluate on held-out text, ablate KL clip.

    python bench/ae_quality.py [--minutes 15] [--ablation-minutes 3] [--ablation-kl-weight 1.0] [--workers 2]

1. Trains `python -m calm.train autoencoder --preset tiny` on the default corpus (kjv+shakespeare, bpe:8192)
   with Ray Train for ``--minutes`` of training time (the cosine schedule ends with the time budget).
2. Evaluates the exported model on the test split: token and exact-chunk accuracy from mu and under
   Gaussian noise sigma in {0.1, 0.2, 0.3, 0.5, 1.0}, per-dimension KL, collapsed dimensions, scale of mu.
3. Ablation: two short runs, ``--kl-clip 0`` and ``--kl-clip 0.5``, at ``--ablation-kl-weight`` (default 1.0:
   at the paper's 1e-3 no dimension collapses within minutes, so the pressure is raised to show in minutes
   what the paper saw over a long run), and the collapsed-dimension count (KL < 0.01 nats) of each.

Prints one JSON object to stdout (training logs go to stderr). The machine is shared: the JSON records
the core count and the load average before and after, so figures can be read against the contention.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calm.checkpoint import load_pretrained  # noqa: E402
from calm.data import load_token_ids  # noqa: E402
from calm.evaluate import chunk_stream, evaluate_autoencoder  # noqa: E402
from calm.train import main as train_main  # noqa: E402
from calm.train import newest_checkpoint  # noqa: E402

TARGET_TOKEN_ACC = 0.999
TARGET_SIGMA03_ACC = 0.995


def train(out: Path, minutes: float, workers: int, extra: list[str]) -> dict:
    """Run the training CLI (logs to stderr); return the run's summary figures."""
    argv = ["autoencoder", "--preset", "tiny", "--out", str(out), "--workers", str(workers), "--gpu", "auto",
            "--time-limit", str(minutes * 60), "--steps", "100000", *extra]
    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):
        result = train_main(argv)
    wall = time.time() - t0
    state = json.loads((out / "train_state.json").read_text())
    cfg = state["train_config"]
    K = state["model_config"]["K"]
    train_time = result.history[-1]["elapsed"]
    tokens = result.step * cfg["batch_size"] * state["world_size"] * K
    return {
        "argv": argv,
        "steps": result.step,
        "train_seconds": train_time,
        "wall_seconds_incl_startup": round(wall, 1),
        "tokens_trained": tokens,
        "tokens_per_s": round(tokens / train_time, 1),
        "learning_curve": [{k: h.get(k) for k in ("step", "elapsed", "train_loss", "train_acc", "val_acc",
                                                    "val_chunk_acc")} for h in result.history],
    }


def evaluate(path: Path, corpus: str, max_chunks: int | None) -> dict:
    model, tokenizer = load_pretrained(path)
    ids = load_token_ids(corpus, tokenizer, "test")
    report = evaluate_autoencoder(model, chunk_stream(ids, model.config.K, max_chunks))
    out = asdict(report)
    out["kl_per_dim"] = [round(x, 4) for x in out["kl_per_dim"]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="training time of the main run")
    parser.add_argument("--ablation-minutes", type=float, default=3.0,
                        help="training time of each ablation run, kl-clip 0 and 0.5 (0 skips)")
    parser.add_argument("--ablation-kl-weight", type=float, default=1.0,
                        help="KL weight of the ablation runs (the paper's 1e-3 collapses nothing in minutes)")
    parser.add_argument("--ablation-max-chunks", type=int, default=8192, help="test chunks for the ablation evals")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    parser.add_argument("--corpus", default="kjv+shakespeare", help="corpus (see calm.data)")
    parser.add_argument("--max-chunks", type=int, default=None, help="evaluate at most this many test chunks")
    parser.add_argument("--out", default=str(ROOT / "runs" / f"bench-ae-{time.strftime('%Y%m%d-%H%M%S')}"),
                        help="run directory")
    parser.add_argument("--skip-main", action="store_true", help="only the ablation")
    args = parser.parse_args()
    out = Path(args.out)
    machine = {"cpu_count": os.cpu_count(), "loadavg_before": os.getloadavg()}
    common = ["--corpus", args.corpus]
    result: dict = {"bench": "ae_quality", "preset": "tiny", "corpus": args.corpus, "workers": args.workers}

    if not args.skip_main:
        run = train(out / "main", args.minutes, args.workers, common)
        ev = evaluate(out / "main", args.corpus, args.max_chunks)
        result.update({
            "wall_time_s": run["train_seconds"],
            "tokens_per_s": run["tokens_per_s"],
            "heldout_token_accuracy": ev["token_accuracy"],
            "heldout_chunk_accuracy": ev["chunk_accuracy"],
            "accuracy_sigma_0.3": ev["noise_token_accuracy"]["0.3"],
            "collapsed_dims": ev["collapsed_dims"],
            "targets_met": {"token_acc>=0.999": ev["token_accuracy"] >= TARGET_TOKEN_ACC,
                            "sigma0.3_acc>=0.995": ev["noise_token_accuracy"]["0.3"] >= TARGET_SIGMA03_ACC},
            "main_run": run,
            "main_eval": ev,
        })

    if args.ablation_minutes > 0:
        # the same short training with and without the KL floor, at an (optionally raised) KL weight
        weight = str(args.ablation_kl_weight)
        runs = {}
        for clip in ("0", "0.5"):
            path = out / f"ablation_kl_weight_{weight}_clip_{clip}"
            run = train(path, args.ablation_minutes, args.workers, common + ["--kl-clip", clip, "--kl-weight", weight])
            ev = evaluate(path, args.corpus, args.ablation_max_chunks)
            runs[clip] = {"steps": run["steps"], "train_seconds": run["train_seconds"],
                          "collapsed_dims": ev["collapsed_dims"], "kl_total": ev["kl_total"],
                          "kl_per_dim_min": min(ev["kl_per_dim"]), "kl_per_dim_max": max(ev["kl_per_dim"]),
                          "token_accuracy": ev["token_accuracy"],
                          "accuracy_sigma_0.3": ev["noise_token_accuracy"]["0.3"], "mu_rms": ev["mu_rms"]}
        result["ablation"] = {"kl_weight": args.ablation_kl_weight, "minutes": args.ablation_minutes,
                              "latent_dim": 128, "kl_clip_0": runs["0"], "kl_clip_0.5": runs["0.5"],
                              "collapsed_dims_without_clip": runs["0"]["collapsed_dims"],
                              "collapsed_dims_with_clip": runs["0.5"]["collapsed_dims"]}
    machine["loadavg_after"] = os.getloadavg()
    result["machine"] = machine
    result["newest_checkpoint"] = str(newest_checkpoint(out)) if out.exists() else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
