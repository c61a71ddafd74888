"""Token arrays of a corpus under a tokenizer (cached), passages, corpus statistics; ``python -m calm.data``.

The corpora and their splits live in ``calm.corpus`` (re-exported here); the layers read bottom-up:
``calm.corpus`` -> ``calm.tokenizer`` (trains BPE on a corpus) -> ``calm.data``.

The corpus names (``kjv``, ``shakespeare``, ``kjv+shakespeare``, ``text:<glob>``, ``wikitext103``, ``pile``)
and the document splits are described in ``calm.corpus``.

Token ids of a (corpus, tokenizer, split) are cached as ``.npy`` under the cache folder.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from calm.corpus import (
    CORPORA,
    DEFAULT_CORPUS,
    SPLITS,
    Document,
    cache_root,
    corpus_key,
    load_documents,
    load_split,
    split_documents,
)
from calm.tokenizer import DEFAULT_TOKENIZER, get_tokenizer, tokenizer_fingerprint

__all__ = [
    "Document",
    "CORPORA",
    "SPLITS",
    "DEFAULT_CORPUS",
    "load_documents",
    "split_documents",
    "load_split",
    "load_token_ids",
    "make_passages",
    "corpus_stats",
    "format_corpus_stats",
]

CACHE_VERSION = "v1"


def token_cache_path(corpus: str, tokenizer, split: str) -> Path:
    """Where ``load_token_ids`` caches the ids of (corpus, tokenizer, split)."""
    key = hashlib.sha256(
        f"{corpus_key(corpus)}|{tokenizer_fingerprint(tokenizer)}|{split}|{CACHE_VERSION}".encode()
    ).hexdigest()[:20]
    return cache_root() / "tokens" / f"{split}-{key}.npy"


def load_token_ids(corpus: str, tokenizer, split: str, *, progress: bool = True, batch_docs: int = 64) -> np.ndarray:
    """One flat ``int32`` stream of the split's token ids, documents separated by the end-of-text id.

    The first call tokenises in batches (a progress bar shows it) and caches the array; later calls load it.
    """
    path = token_cache_path(corpus, tokenizer, split)
    if path.is_file():
        return np.load(path, allow_pickle=False)
    docs = load_split(corpus, split)
    eot = int(tokenizer.eos_token_id)
    backend = tokenizer.backend_tokenizer
    pieces = []
    bar = tqdm(total=len(docs), desc=f"tokenising {corpus}/{split}", unit="doc", disable=not progress, leave=False)
    for start in range(0, len(docs), batch_docs):
        batch = docs[start : start + batch_docs]
        for enc in backend.encode_batch([d.text for d in batch], add_special_tokens=False):
            pieces.append(np.asarray(enc.ids, dtype=np.int32))
            pieces.append(np.asarray([eot], dtype=np.int32))
        bar.update(len(batch))
    bar.close()
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npy")
    np.save(tmp, ids)
    os.replace(tmp, path)  # atomic: parallel workers never see a half-written file
    return ids


def make_passages(
    ids: np.ndarray, length: int, *, max_passages: int | None = None, seed: int = 0
) -> np.ndarray:
    """Cut a token stream into non-overlapping passages.

    Args:
        ids: a flat int token stream ``(T,)``.
        length: tokens per passage ``L``.
        max_passages: keep at most this many, drawn without replacement with ``seed`` (all, in order, if None).
        seed: the seed of that draw.

    Returns:
        ``(N, L)`` int32 array, ``N = min(T // L, max_passages)``.

    >>> make_passages(np.arange(10), 4).tolist()
    [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    if length <= 0:
        raise ValueError(f"passage length must be > 0, got {length}")
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be a flat stream (T,), got shape {ids.shape}")
    n = len(ids) // length
    if n == 0:
        raise ValueError(f"a stream of {len(ids)} tokens holds no passage of length {length}")
    passages = ids[: n * length].reshape(n, length).astype(np.int32)
    if max_passages is not None and max_passages < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_passages, replace=False))
        passages = passages[rows]
    return passages


def corpus_stats(corpus: str = DEFAULT_CORPUS, tokenizer_spec: str | None = None) -> list[dict]:
    """Documents, characters and tokens per split (the tokenizer is trained on the train split if needed)."""
    tok = get_tokenizer(tokenizer_spec or DEFAULT_TOKENIZER, corpus=corpus)
    splits = split_documents(load_documents(corpus))
    rows = []
    for split in SPLITS:
        ids = load_token_ids(corpus, tok, split)
        docs = splits[split]
        rows.append(
            {
                "split": split,
                "documents": len(docs),
                "characters": sum(len(d.text) for d in docs),
                "tokens": int(len(ids)),
            }
        )
    return rows


def format_corpus_stats(rows: list[dict], corpus: str, tokenizer_spec: str) -> str:
    """The table ``corpus_stats`` rows print as: documents, characters and tokens per split."""
    lines = [
        f"corpus {corpus}, tokenizer {tokenizer_spec}",
        f"{'split':<12}{'documents':>10}{'characters':>14}{'tokens':>12}{'chars/token':>13}",
    ]
    for r in rows:
        lines.append(
            f"{r['split']:<12}{r['documents']:>10,}{r['characters']:>14,}{r['tokens']:>12,}"
            f"{r['characters'] / max(r['tokens'], 1):>13.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print corpus statistics: ``python -m calm.data --corpus kjv+shakespeare --tokenizer bpe:8192``."""
    from calm.cli import OneLineErrorParser

    parser = OneLineErrorParser(prog="python -m calm.data", description=main.__doc__)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS, help=f"one of {', '.join(CORPORA)}")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="gpt2, bpe:<size> or a tokenizer.json")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        rows = corpus_stats(args.corpus, args.tokenizer)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    print(format_corpus_stats(rows, args.corpus, args.tokenizer))
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
