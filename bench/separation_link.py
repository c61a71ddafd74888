"""The separated digital link on real text: entropy rates, coded bits/token, oracle-MCS token accuracy over AWGN.

    python bench/separation_link.py [--passages 256] [--codes ldpc,polar] [--budgets 8,16,32,64]

Passages of L = 32 tokens (bpe:8192, kjv+shakespeare): the token models (``protocols.separation.TokenSourceModel``,
unigram and Witten-Bell bigram) are fitted on the train split; everything is measured on the test split.

1. Source coding: each model's cross-entropy on held-out passages (bits/token, what an ideal coder spends),
   the shortest constriction range code of whole passages (what a frame spends) and constriction's raw
   word-aligned output, and the accuracy of the best-guess fill (unigram argmax; bigram greedy chain from
   the passage's start).
2. The link: for each budget n and AWGN SNR, every configuration of ``mcs_menu(n, ...)`` (per code) is
   fitted (sharing the fitted source model), sent the same passages through the same noise, and decoded;
   the oracle (the experiment's link adaptation) keeps the best token accuracy and its (code, rate,
   modulation). Beside it: the separation bound at capacity, ``min(L, n C / H) / L`` with H the bigram's
   held-out entropy rate, plus the unigram best guess on the rest (``separation_bound_accuracy``).
   ``no_token_budgets`` lists the budgets where no menu entry carries a token of any passage.
   ``frame_tokens_right_when_frame_ok``: the share of the T tokens in a frame decoded right when the frame
   arrives without a bit error (must be 1.0: the source coder is exact), beside the ``frame_error_rate``.

Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from environments.channels import AWGN  # noqa: E402
from protocols.separation import (  # noqa: E402
    SeparationProtocol,
    TokenSourceModel,
    mcs_menu,
    separation_bound_accuracy,
    separation_bound_tokens,
)

L = 32
SNRS_DB = (-6.0, 0.0, 6.0, 12.0, 20.0)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


_STATE: dict = {}


def _setup(tokenizer: str, passages: int, seed: int) -> None:
    """Worker initializer: the tokenizer, the train and test passages, both fitted source models."""
    torch.set_num_threads(1)
    from calm.data import load_token_ids, make_passages
    from calm.tokenizer import get_tokenizer

    tok = get_tokenizer(tokenizer)
    train = make_passages(load_token_ids("kjv+shakespeare", tok, "train", progress=False), L)
    test_stream = load_token_ids("kjv+shakespeare", tok, "test", progress=False)
    _STATE.update(
        V=len(tok), train=train, test_stream=test_stream,
        test=make_passages(test_stream, L, max_passages=passages, seed=seed + 1).astype(np.int64),
        sources={kind: TokenSourceModel(len(tok), kind).fit(train) for kind in ("unigram", "bigram")},
    )


def _evaluate(n: int, kind: str, codes: list[str], seed: int) -> list[dict]:
    """Every menu entry for (n, kind) and each code at every SNR: the best accuracy per SNR and the max T seen.

    Exactly ``proto.decode``, computed faster: ``decode`` is ``decode_frames(link.receive(y))`` message by
    message, so frames received without a bit error are given the sent frames' decode (computed once per
    configuration) and only the others go through the entropy decoder; frames depend on k alone, so configs
    of equal k (across codes) share them.
    """
    V, train, test, src = _STATE["V"], _STATE["train"], _STATE["test"], _STATE["sources"][kind]
    noise = np.random.default_rng([seed, n]).standard_normal((len(test), n)).astype(np.float32)  # same per config
    frames_by_k: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    out = []
    for code in codes:
        best: list[dict | None] = [None] * len(SNRS_DB)
        max_tokens, enc_s, dec_s = 0, 0.0, 0.0
        for cfg in mcs_menu(n, vocab_size=V, source_model=kind, code=code):
            proto = SeparationProtocol(cfg, source=src).fit(train[:1])
            t = time.perf_counter()
            if proto.k not in frames_by_k:
                frames, T = proto.frames(test)
                frames_by_k[proto.k] = (frames, T, proto.decode_frames(frames))
            frames, T, clean = frames_by_k[proto.k]
            # a frame received without a bit error decodes to `clean`: its T tokens must all be right
            sent = np.arange(L)[None, :] < T[:, None]
            prefix_exact = float((clean == test)[sent].mean()) if sent.any() else None
            x = proto.link.modulate(frames)
            enc_s += time.perf_counter() - t
            max_tokens = max(max_tokens, int(T.max()))
            for j, snr_db in enumerate(SNRS_DB):
                sigma = 10 ** (-snr_db / 20)
                t = time.perf_counter()
                bits = proto.link.receive(x + np.float32(sigma) * noise, AWGN(sigma))
                wrong = (bits != frames).any(axis=1)
                ids = clean.copy()
                ids[wrong] = proto.decode_frames(bits[wrong])
                dec_s += time.perf_counter() - t
                acc = float((ids == test).mean())
                if best[j] is None or acc > best[j]["accuracy"]:
                    best[j] = {"accuracy": round(acc, 4), "code": code, "rate": round(cfg.rate, 4),
                               "modulation": cfg.modulation, "k": proto.k,
                               "mean_tokens_in_frame": round(float(T.mean()), 2),
                               "frame_tokens_right_when_frame_ok": prefix_exact,
                               "frame_error_rate": round(float(wrong.mean()), 4)}
        out.append({"n": n, "kind": kind, "code": code, "best": best, "max_tokens": max_tokens, "encode_s": enc_s,
                    "decode_s": dec_s})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=256, help="test passages per evaluation")
    ap.add_argument("--rate-passages", type=int, default=512, help="test passages for the entropy rates")
    ap.add_argument("--codes", default="ldpc,polar", help="codes the oracle picks from")
    ap.add_argument("--budgets", default="8,16,32,64", help="channel uses n per message")
    ap.add_argument("--tokenizer", default="bpe:8192")
    ap.add_argument("--workers", type=int, default=2, help="processes (one per core)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    codes = [c for c in args.codes.split(",") if c]
    budgets = [int(b) for b in args.budgets.split(",")]

    from calm.data import make_passages

    t0 = time.perf_counter()
    _setup(args.tokenizer, args.passages, args.seed)
    rate_set = make_passages(_STATE["test_stream"], L, max_passages=args.rate_passages,
                             seed=args.seed).astype(np.int64)
    rates = {}
    for kind, src in _STATE["sources"].items():
        t = time.perf_counter()
        coded = src.coded_rate(rate_set)
        coded_s = time.perf_counter() - t
        fill = src.fill(np.zeros(0, np.int64), L)  # what an empty frame decodes to
        rates[kind] = {
            "entropy_bits_per_token": round(src.entropy_rate(rate_set), 4),
            "coded_bits_per_token": round(coded["bits_per_token"], 4),
            "constriction_words_bits_per_token": round(coded["words_bits_per_token"], 4),
            "empty_frame_accuracy": round(float((rate_set == fill[None, :]).mean()), 4),
            "coded_rate_ms_per_passage": round(1e3 * coded_s / len(rate_set), 2),
        }
        log(f"{kind}: {rates[kind]}")
    H = rates["bigram"]["entropy_bits_per_token"]
    best_token = int(np.argmax(_STATE["sources"]["unigram"].p1))
    fill_acc = round(float((rate_set == best_token).mean()), 4)  # the unigram's best guess, per token

    jobs = [(n, kind, codes, args.seed) for n in reversed(budgets) for kind in ("bigram", "unigram")]
    if args.workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn"), initializer=_setup,
                                 initargs=(args.tokenizer, args.passages, args.seed)) as pool:
            done = [d for part in pool.map(_evaluate, *zip(*jobs, strict=True)) for d in part]
    else:
        done = [d for job in jobs for d in _evaluate(*job)]

    results, no_token = [], []
    for n in budgets:
        mine = [d for d in done if d["n"] == n]
        if max(d["max_tokens"] for d in mine) == 0:
            no_token.append(n)
        for j, snr_db in enumerate(SNRS_DB):
            cap = n * AWGN(10 ** (-snr_db / 20)).capacity_per_use()
            row = {"n": n, "snr_db": snr_db, "capacity_bits": round(cap, 2),
                   "bound_tokens": round(separation_bound_tokens(cap, H, L), 2),
                   "bound_accuracy": round(separation_bound_accuracy(cap, H, L, fill_accuracy=fill_acc), 4)}
            for kind in ("unigram", "bigram"):
                cands = [d["best"][j] for d in mine if d["kind"] == kind and d["best"][j] is not None]
                row[kind] = max(cands, key=lambda b: b["accuracy"]) if cands else None
            results.append(row)
            log(f"n={n:3d} {snr_db:+5.0f} dB  bound {row['bound_accuracy']:.3f}  "
                + "  ".join(f"{k} {row[k]['accuracy']:.3f} ({row[k]['code']} {row[k]['rate']:.2f} "
                            f"{row[k]['modulation']})" for k in ("unigram", "bigram") if row[k]))

    out = {
        "setup": {"L": L, "tokenizer": args.tokenizer, "corpus": "kjv+shakespeare", "test_passages": args.passages,
                  "rate_passages": len(rate_set), "codes": codes, "snr_db": list(SNRS_DB), "workers": args.workers,
                  "bound": "min(L, n C(snr) / H_bigram) / L, plus the unigram's best guess on the rest",
                  "bound_fill_accuracy": fill_acc},
        "source_models": rates,
        "links": results,
        "no_token_budgets": no_token,
        "timing_s": {"encode_cpu": round(sum(d["encode_s"] for d in done), 1),
                     "decode_cpu": round(sum(d["decode_s"] for d in done), 1),
                     "wall": round(time.perf_counter() - t0, 1)},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
