"""What a latent vector holds: labelled held-out chunks, linear probes and their baselines (``analyze_vectors``).

``chunk_set`` cuts each held-out document into K-token chunks and labels every chunk with what the corpus
gives without a tagger: its K token ids, each token's class (``TOKEN_CLASSES``: capitalised word,
punctuation, digit, whitespace-led lower-case word, other = a piece inside a word), the source corpus
(KJV or Shakespeare, from the document's name), its position in the verse/line (tokens since the last
newline, bucketed) and the *next* chunk's first token. ``probe`` fits a scikit-learn logistic regression on
one set of documents and scores it on the others (``split_by_document``): a probe never sees a test
document, so it cannot memorise passages. Its accuracy is read against the majority class and against the
same probe on a bag of the chunk's token ids (what knowing the ids, but not their order or anything beyond
them, buys).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = ["POSITION_BUCKETS", "TOKEN_CLASSES", "ChunkSet", "ProbeResult", "bag_of_ids", "cap_classes",
           "chunk_set", "effective_rank", "neighbour_agreement", "probe", "split_by_document", "token_classes"]

TOKEN_CLASSES = ("capitalised", "punctuation", "digit", "whitespace-led", "other")
POSITION_BUCKETS = ((0, 0), (1, 4), (5, 9), (10, 19), (20, math.inf))
"""tokens since the last newline -> position class (verse/line start, early, middle, late, very late)"""
SOURCES = ("kjv", "shakespeare")


def token_class(piece: str) -> int:
    """Index in ``TOKEN_CLASSES`` of one decoded token."""
    stripped = piece.strip()
    if not stripped:
        return TOKEN_CLASSES.index("punctuation")  # whitespace alone (newlines) counts with the punctuation
    if all(not ch.isalnum() for ch in stripped):
        return TOKEN_CLASSES.index("punctuation")
    if any(ch.isdigit() for ch in stripped):
        return TOKEN_CLASSES.index("digit")
    if stripped[0].isupper():
        return TOKEN_CLASSES.index("capitalised")
    if piece[0].isspace():
        return TOKEN_CLASSES.index("whitespace-led")
    return TOKEN_CLASSES.index("other")


def token_classes(tokenizer) -> np.ndarray:
    """``(V,)`` int: the class of every token id of ``tokenizer``."""
    return np.array([token_class(tokenizer.decode([i])) for i in range(len(tokenizer))], dtype=np.int64)


def _position_class(since_newline: np.ndarray) -> np.ndarray:
    out = np.zeros(len(since_newline), dtype=np.int64)
    for c, (lo, hi) in enumerate(POSITION_BUCKETS):
        out[(since_newline >= lo) & (since_newline <= hi)] = c
    return out


@dataclass
class ChunkSet:
    """Held-out K-token chunks and their labels (N chunks)."""

    ids: np.ndarray
    """(N, K) int64 token ids"""
    doc: np.ndarray
    """(N,) index into ``docs`` (the unit of the held-out split)"""
    source: np.ndarray
    """(N,) 0 = KJV, 1 = Shakespeare (-1: neither)"""
    position: np.ndarray
    """(N,) class of the chunk's first token's distance from the last newline (``POSITION_BUCKETS``)"""
    next_first: np.ndarray
    """(N,) first token id of the next chunk in the document (-1: the document ends)"""
    docs: list[str] = field(default_factory=list)
    """document names"""

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> ChunkSet:
        return ChunkSet(self.ids[index], self.doc[index], self.source[index], self.position[index],
                        self.next_first[index], self.docs)


def chunk_set(documents, tokenizer, K: int, *, max_chunks: int | None = None, seed: int = 0) -> ChunkSet:
    """Cut each document (``calm.corpus.Document``) into K-token chunks and label them (a uniform sample of
    at most ``max_chunks``, drawn with ``seed``; chunks whose next chunk is past the document end are kept,
    with ``next_first = -1``)."""
    newline = np.array(["\n" in tokenizer.decode([i]) for i in range(len(tokenizer))])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("ids", "doc", "source", "position", "next")}
    names = []
    for document in documents:
        ids = np.asarray(tokenizer(document.text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        n = len(ids) // K
        if n == 0:
            continue
        names.append(document.name)
        ids = ids[: n * K]
        # tokens since the last newline, at every position (a token holding a newline restarts the count after it)
        since = np.zeros(len(ids), dtype=np.int64)
        for t in range(1, len(ids)):
            since[t] = 0 if newline[ids[t - 1]] else since[t - 1] + 1
        chunks = ids.reshape(n, K)
        parts["ids"].append(chunks)
        parts["doc"].append(np.full(n, len(names) - 1))
        source = document.name.split("/", 1)[0]
        parts["source"].append(np.full(n, SOURCES.index(source) if source in SOURCES else -1))
        parts["position"].append(_position_class(since[::K]))
        parts["next"].append(np.append(chunks[1:, 0], -1))
    if not names:
        raise ValueError(f"no document holds a whole chunk of K={K} tokens")
    out = ChunkSet(*(np.concatenate(parts[k]) for k in ("ids", "doc", "source", "position", "next")), docs=names)
    if max_chunks is not None and len(out) > max_chunks:
        out = out.subset(np.sort(np.random.default_rng(seed).choice(len(out), max_chunks, replace=False)))
    return out


def split_by_document(doc: np.ndarray, *, strata: np.ndarray | None = None, test_fraction: float = 0.3,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``(train, test)`` over chunks: whole documents go to one side, about ``test_fraction`` of
    the chunks to test. ``strata`` (one label per chunk, e.g. the source corpus): keep its proportions alike on
    both sides (scikit-learn's StratifiedGroupKFold; without it, GroupShuffleSplit), so that a probe is not
    scored on a test side of another mixture than it was fitted on."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    if len(np.unique(doc)) < 2:
        raise ValueError("a split by document needs at least two documents")
    if strata is not None and len(np.unique(strata)) > 1:
        folds = max(2, round(1 / test_fraction))
        splitter = StratifiedGroupKFold(n_splits=min(folds, len(np.unique(doc))), shuffle=True, random_state=seed)
        train, test = next(splitter.split(np.zeros(len(doc)), strata, groups=doc))
    else:
        train, test = next(GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
                           .split(np.zeros(len(doc)), groups=doc))
    masks = np.zeros((2, len(doc)), dtype=bool)
    masks[0, train], masks[1, test] = True, True
    return masks[0], masks[1]


def cap_classes(y: np.ndarray, train: np.ndarray, max_classes: int) -> np.ndarray:
    """Keep the ``max_classes - 1`` labels most frequent on ``train``; every other label becomes one class
    (``-2``), so a probe over a large vocabulary stays cheap. Majority and probe see the same labels."""
    values, counts = np.unique(y[train], return_counts=True)
    if len(values) <= max_classes:
        return y
    keep = values[np.argsort(-counts, kind="stable")[: max_classes - 1]]
    return np.where(np.isin(y, keep), y, -2)


@dataclass
class ProbeResult:
    """A probe's held-out accuracy, and what it is read against."""

    accuracy: float
    majority: float
    """accuracy of always answering the most frequent training label"""
    classes: int
    train: int
    test: int
    C: float = 1.0
    """inverse regularisation strength the probe was fitted with (picked on held-out training documents)"""
    noisy: dict[str, float] = field(default_factory=dict)
    """sigma -> accuracy of the same probe on latents with N(0, sigma^2) noise added"""
    model: object = None


def _fit(x, y, C: float, max_iter: int, dense: bool):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = LogisticRegression(C=C, max_iter=max_iter)
    model = make_pipeline(StandardScaler(), clf) if dense else clf
    with warnings.catch_warnings():  # lbfgs stopping at max_iter on a many-class label is expected, not news
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, *, groups: np.ndarray | None = None,
          Cs: tuple[float, ...] = (1.0,), max_iter: int = 200, noise: tuple[float, ...] = (),
          seed: int = 0) -> ProbeResult:
    """Logistic-regression probe (standardised features) from ``x`` to the labels ``y``: fit on ``train``,
    scored on ``test`` (boolean masks).

    ``Cs`` (several) with ``groups`` (the document of each row): the regularisation is picked on a quarter of
    the training documents held out from a first fit (a many-class probe overfits at C = 1: on the next
    chunk's first token it falls below the majority class), then the probe is refitted on all of train.
    ``noise``: also score the same probe on ``x + sigma N(0, 1)`` (x in its own units, so sigma is the channel's
    noise on the latent). ``x`` may be a scipy sparse matrix (the bag-of-ids baseline: then not standardised).
    """
    y = np.asarray(y)
    ytr, yte = y[train], y[test]
    if len(ytr) == 0 or len(yte) == 0:
        raise ValueError("a probe needs training and test chunks")
    values, counts = np.unique(ytr, return_counts=True)
    majority = float((yte == values[counts.argmax()]).mean())
    if len(values) < 2:
        return ProbeResult(majority, majority, 1, len(ytr), len(yte))
    dense = isinstance(x, np.ndarray)
    xtr = x[train]
    C = Cs[-1]
    if len(Cs) > 1 and groups is not None and len(np.unique(groups[train])) >= 2:
        fit, val = split_by_document(np.asarray(groups)[train], test_fraction=0.25, seed=seed)
        scores = [float((_fit(xtr[fit], ytr[fit], c, max_iter, dense).predict(xtr[val]) == ytr[val]).mean())
                  for c in Cs]
        C = Cs[int(np.argmax(scores))]
    model = _fit(xtr, ytr, C, max_iter, dense)
    result = ProbeResult(float((model.predict(x[test]) == yte).mean()), majority, len(values), len(ytr), len(yte),
                         C=C, model=model)
    rng = np.random.default_rng(seed)
    for sigma in noise:
        noisy = x[test] + sigma * rng.standard_normal(x[test].shape)
        result.noisy[str(sigma)] = float((model.predict(noisy) == yte).mean())
    return result


def bag_of_ids(ids: np.ndarray, vocab_size: int):
    """``(N, V)`` sparse counts of each chunk's token ids (order forgotten)."""
    from scipy.sparse import csr_matrix

    N, K = ids.shape
    return csr_matrix((np.ones(N * K), (np.repeat(np.arange(N), K), ids.ravel())), shape=(N, vocab_size))


def effective_rank(x: np.ndarray) -> float:
    """exp of the entropy of the normalised eigenvalues of the covariance of ``x (N, l)`` (Roy & Vetterli):
    l for an isotropic cloud, 1 for a line."""
    eig = np.clip(np.linalg.eigvalsh(np.cov(np.asarray(x, dtype=np.float64), rowvar=False)), 0, None)
    p = eig / eig.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def neighbour_agreement(x: np.ndarray, labels: dict[str, np.ndarray], *, k: int = 5, queries: int = 500,
                        seed: int = 0) -> dict[str, tuple[float, float]]:
    """For ``queries`` random chunks, the fraction of their ``k`` nearest neighbours (Euclidean, itself left
    out) that share each label, and that fraction for ``k`` random chunks: ``{label: (neighbours, random)}``."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    q = rng.choice(len(x), size=min(queries, len(x)), replace=False)
    _, nn = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x[q])
    nn = nn[:, 1:]
    rand = rng.integers(0, len(x), size=nn.shape)
    return {name: (float((y[nn] == y[q, None]).mean()), float((y[rand] == y[q, None]).mean()))
            for name, y in labels.items()}
