"""What the separation frame's fixed header costs: T in h = ceil(log2(L + 1)) bits against T Huffman-coded.

    python bench/separation_header.py --checkpoint runs/ae-tiny-XXXX [--budgets 8 16 32] [--train 512] [--test 512]

Every frame of ``protocols.separation`` states T, the number of tokens it carries, before its range code: in
``h = ceil(log2(L + 1))`` bits (6 for L = 32; ``header_code="fixed"``, the default), or under a Huffman code of T's
distribution on training frames (``header_code="huffman"``, ``protocols.separation_frames.HuffmanHeader``): T is
nearly determined by the frame size, so its codeword is short. For each frame size k of the standard MCS menu (LDPC
and polar) with the bigram source model fitted on train, on ``--test`` test passages: the bits the header spends
(h, or the mean codeword length), the tokens a frame carries and its noiseless token accuracy (the prefix plus the
fill), with each header. The Huffman code is fitted on ``--train`` training passages as ``SeparationProtocol.fit``
fits it. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol_power import newest_autoencoder  # noqa: E402  (bench/ is the script's own directory)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None,
                        help="an autoencoder checkpoint directory (its tokenizer); default: the newest under runs/")
    parser.add_argument("--corpus", default="kjv+shakespeare")
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--train", type=int, default=512, help="training passages T's distribution is fitted on")
    parser.add_argument("--test", type=int, default=512, help="test passages it is measured on")
    parser.add_argument("--L", type=int, default=32)
    args = parser.parse_args(argv)

    import numpy as np

    from calm.data import load_token_ids, make_passages
    from calm.tokenizer import load_tokenizer
    from protocols.separation import TokenSourceModel, mcs_menu
    from protocols.separation_frames import FixedHeader, FrameCoder, HuffmanHeader

    ckpt = Path(args.checkpoint or newest_autoencoder()).resolve()
    tok = load_tokenizer(str(ckpt / "tokenizer.json"))
    V, L = len(tok), args.L
    train_all = make_passages(load_token_ids(args.corpus, tok, "train", progress=False), L, seed=0)
    source = TokenSourceModel(V, "bigram").fit(train_all)
    rng = np.random.default_rng(0)
    train = train_all[np.sort(rng.permutation(len(train_all))[: args.train])].astype(np.int64)
    test = make_passages(load_token_ids(args.corpus, tok, "test", progress=False), L, max_passages=2000, seed=1)
    test = test[np.sort(rng.permutation(len(test))[: args.test])].astype(np.int64)
    coder = FrameCoder(source, max_passages=0, max_decodes=0)
    h = math.ceil(math.log2(L + 1))
    out: dict = {"checkpoint": str(ckpt), "L": L, "header_bits": h, "train": len(train), "test": len(test),
                 "entries": {}}

    def accuracy(ts: np.ndarray) -> float:
        return float(np.mean([(source.fill(x[:t], L) == x).mean() for x, t in zip(test, ts, strict=True)]))

    for n in args.budgets:
        sizes = sorted({c.info_bits() for code in ("ldpc", "polar")
                        for c in mcs_menu(n, vocab_size=V, source_model="bigram", code=code)})
        for k in sizes:
            if k <= h:
                continue
            huffman = HuffmanHeader(HuffmanHeader.fit_counts(coder, train, k, L))
            t_fixed = np.array([coder.frame(x, FixedHeader(h), k)[0] for x in test])
            t_huff = np.array([coder.frame(x, huffman, k)[0] for x in test])
            spent = float(huffman.lengths[t_huff].mean())
            out["entries"][f"n{n}-k{k}"] = {
                "n": n, "k": k, "header_bits_fixed": h, "header_bits_huffman": round(spent, 3),
                "header_share_fixed": round(h / k, 3), "tokens_fixed": round(float(t_fixed.mean()), 3),
                "tokens_huffman": round(float(t_huff.mean()), 3), "accuracy_fixed": round(accuracy(t_fixed), 4),
                "accuracy_huffman": round(accuracy(t_huff), 4)}
            print(f"n={n} k={k}: T costs {spent:.2f} bits vs {h}; tokens {t_fixed.mean():.2f} -> {t_huff.mean():.2f}",
                  file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
