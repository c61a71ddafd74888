"""Mean power per symbol of every protocol on held-out passages (issue 4: 1 within 2%).

Fits each protocol on train passages of the default corpus, then measures mean(x^2) over the validation and
test splits, at several channel-use budgets. Prints one JSON object.

    python bench/protocol_power.py --checkpoint runs/bench-ae/main

Without --checkpoint it takes the newest autoencoder checkpoint under runs/ (``make bench`` trains one first in
bench/ae_quality.py; ``make demo`` caches one too).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from calm.checkpoint import load_pretrained
from calm.data import DEFAULT_CORPUS, load_token_ids, make_passages
from protocols import make_protocol


def newest_autoencoder(root: Path = Path(__file__).resolve().parent.parent / "runs") -> str:
    """The newest checkpoint directory under ``root`` whose config.json says it is an autoencoder."""
    found = []
    for config in root.glob("**/config.json"):
        try:
            if json.loads(config.read_text()).get("model_type") == "autoencoder" and (
                config.parent / "model.safetensors"
            ).is_file():
                found.append(config.parent)
        except (OSError, json.JSONDecodeError):
            continue
    if not found:
        raise SystemExit(f"no autoencoder checkpoint under {root}: run `make demo` or pass --checkpoint DIR")
    return str(max(found, key=lambda d: (d / "model.safetensors").stat().st_mtime))


def main(argv: list[str] | None = None) -> dict:
    """Run the measurement and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="autoencoder checkpoint (default: newest under runs/)")
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--passage-length", type=int, default=16, help="L tokens per message")
    parser.add_argument("--budgets", default="32,64,128,512", help="channel uses n, comma separated")
    parser.add_argument("--train-passages", type=int, default=20000)
    parser.add_argument("--heldout-passages", type=int, default=8000)
    parser.add_argument("--bits", type=int, default=4, help="bits per dimension of the quantised protocol")
    args = parser.parse_args(argv)

    args.checkpoint = args.checkpoint or newest_autoencoder()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, tok = load_pretrained(args.checkpoint)
    model.eval()
    L = args.passage_length
    split_passages = {
        split: make_passages(
            load_token_ids(args.corpus, tok, split, progress=False),
            L,
            max_passages=args.train_passages if split == "train" else args.heldout_passages,
            seed=0,
        )
        for split in ("train", "validation", "test")
    }
    rows = []
    for n in [int(b) for b in args.budgets.split(",")]:
        protocols = {name: make_protocol(name, model, budget=n, quantized_bits=args.bits)
                     for name in ("vector", "uncoded-tokens", "quantized", "hash")}  # fmt: skip
        for name, proto in protocols.items():
            proto.fit(split_passages["train"])
            row = {"protocol": name, "channel_uses": n}
            for split in ("validation", "test"):
                x = proto.encode(split_passages[split])
                row[f"power_{split}"] = round(float(np.mean(x.astype(np.float64) ** 2)), 4)
            row["max_deviation"] = round(max(abs(row["power_validation"] - 1), abs(row["power_test"] - 1)), 4)
            rows.append(row)
    result = {
        "checkpoint": args.checkpoint,
        "passage_length": L,
        "train_passages": len(split_passages["train"]),
        "heldout_passages": {s: len(split_passages[s]) for s in ("validation", "test")},
        "rows": rows,
        "max_deviation": max(r["max_deviation"] for r in rows),
        "within_2_percent": all(r["max_deviation"] <= 0.02 for r in rows),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
