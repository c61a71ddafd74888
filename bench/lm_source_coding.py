"""Bits per token of the separation link's source coders on test passages: unigram, bigram and the token LM.

    python bench/lm_source_coding.py --checkpoint runs/ae-tiny-XXXX [--steps 900] [--passages 200]

The tokenizer is the autoencoder checkpoint's; the LM is ``experiments.common.models.ensure_token_lm``'s token
baseline on it (trained once for ``--steps`` steps and cached under ``--runs-dir``). The unigram and bigram
(Witten-Bell) are fitted on all train passages of length L; every model codes ``--passages`` test passages
(drawn with seed 0) on their own with constriction's range coder. Prints JSON: per model ``entropy`` (its
cross-entropy, bits/token), ``coded`` (the shortest range code that decodes, what a frame spends) and
``coded_words`` (constriction's raw 32-bit-word output), and the seconds each took.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol_power import newest_autoencoder  # noqa: E402  (bench/ is the script's own directory)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None,
                        help="an autoencoder checkpoint directory (its tokenizer); default: the newest under runs/")
    parser.add_argument("--token-lm", default=None, help="a trained token baseline (else ensure_token_lm's)")
    parser.add_argument("--corpus", default="kjv+shakespeare")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--steps", type=int, default=900, help="ensure_token_lm's training steps")
    parser.add_argument("--L", type=int, default=32, help="tokens per passage")
    parser.add_argument("--passages", type=int, default=200, help="test passages coded")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from calm.data import load_token_ids, make_passages
    from calm.tokenizer import load_tokenizer
    from experiments.common.models import ensure_token_lm
    from protocols.lm_source import LMSourceModel
    from protocols.source_coding import TokenSourceModel

    torch.set_num_threads(1)
    ckpt = Path(args.checkpoint or newest_autoencoder()).resolve()
    tok = load_tokenizer(str(ckpt / "tokenizer.json"))
    lm_dir = ensure_token_lm(ckpt, token_lm_checkpoint=args.token_lm, runs_dir=args.runs_dir, corpus=args.corpus,
                             steps=args.steps)
    train = make_passages(load_token_ids(args.corpus, tok, "train"), args.L).astype(np.int64)
    test = make_passages(load_token_ids(args.corpus, tok, args.split), args.L, max_passages=args.passages,
                         seed=0).astype(np.int64)
    models = {"unigram": TokenSourceModel(len(tok), "unigram").fit(train),
              "bigram": TokenSourceModel(len(tok), "bigram").fit(train),
              "lm": LMSourceModel.from_checkpoint(lm_dir).fit(train)}
    out: dict = {"checkpoint": str(ckpt), "token_lm": str(lm_dir), "corpus": args.corpus, "split": args.split,
                 "L": args.L, "passages": len(test), "vocab_size": len(tok),
                 "lm_train_info": {k: v for k, v in json.loads((lm_dir / "train_info.json").read_text()).items()
                                   if k in ("steps", "batch_size", "preset", "seconds")}
                 if (lm_dir / "train_info.json").is_file() else None}
    for name, model in models.items():
        t0 = time.time()
        rate = model.coded_rate(test)
        out[name] = {"entropy": model.entropy_rate(test), "coded": rate["bits_per_token"],
                     "coded_words": rate["words_bits_per_token"], "seconds": round(time.time() - t0, 2)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
