"""The reconstruction experiment's reference lines at its defaults, from the validation split (before issue 29)
and from the test passages the trials play (now), as JSON.

    python bench/reconstruction_bounds.py [--snrs-db 10 15 20] [--channel-uses 32]

The source model (the bigram separation codes with, fitted on the train split) gives the entropy rate H and
the best guess's fill accuracy on each split; the lines (``protocols.bounds``) follow from them: the lossless
prefix at capacity, the finite-blocklength line (AWGN, 1% frame errors) and the rate-distortion ceiling. Only
the tokenizer is needed (no autoencoder): seconds.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from calm.data import load_token_ids, make_passages
from calm.tokenizer import get_tokenizer
from experiments.common.links import game_passages
from experiments.reconstruction import Config
from protocols.bounds import finite_length_accuracy, rate_distortion_accuracy
from protocols.separation import separation_bound_accuracy
from protocols.source_coding import TokenSourceModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snrs-db", type=float, nargs="+", default=[10.0, 15.0, 20.0])
    parser.add_argument("--channel-uses", type=int, default=32)
    args = parser.parse_args()
    cfg = Config()
    tok = get_tokenizer(cfg.tokenizer, cfg.corpus)
    V, L = len(tok), cfg.passage_length
    train_ids = load_token_ids(cfg.corpus, tok, "train", progress=False)
    train, test = game_passages(cfg, tok, train_ids)
    source = TokenSourceModel(V, cfg.source_model).fit(make_passages(train_ids, L, seed=cfg.ae_seed))
    guess = int(np.bincount(train.ravel(), minlength=V).argmax())
    validation = make_passages(load_token_ids(cfg.corpus, tok, "validation", progress=False), L, max_passages=2000,
                               seed=cfg.ae_seed)
    out = {"bench": "reconstruction_bounds", "corpus": cfg.corpus, "tokenizer": cfg.tokenizer, "vocab_size": V,
           "passage_length": L, "channel_uses": args.channel_uses, "source_model": cfg.source_model, "splits": {}}
    n = args.channel_uses
    for split, passages in (("validation (before)", validation), ("test (now: the passages the trials play)", test)):
        H = float(source.entropy_rate(passages))
        fill = float((passages == guess).mean())
        lines = {}
        for snr_db in args.snrs_db:
            sigma = 10 ** (-snr_db / 20)
            capacity = n * 0.5 * math.log2(1 + 1 / sigma**2)
            lines[f"{snr_db:g} dB"] = {
                "lossless_prefix_at_capacity": round(float(separation_bound_accuracy(capacity, H, L, fill)), 4),
                "finite_length_awgn_1pct": round(finite_length_accuracy(n, sigma, H, L, fill, 0.01), 4),
                "rate_distortion_ceiling": round(rate_distortion_accuracy(capacity, H, L, V), 4),
            }
        out["splits"][split] = {"passages": int(len(passages)), "entropy_bits_per_token": round(H, 4),
                                "fill_accuracy": round(fill, 4), "lines": lines}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
