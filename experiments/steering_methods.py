"""The parts of a steering run (``experiments.steering``): labelled windows, the attribute judge, directions,
interventions.

- ``cut_windows`` cuts documents into L-token windows; ``attribute_labels`` labels each window for one of
  ``ATTRIBUTES`` from its text alone (no hand labelling): ``source`` (KJV 1 vs Shakespeare 0: steered
  towards KJV, because the judge reads the word salad of an unsteered tiny CALM as Shakespeare); and, outside
  KJV so that their direction is not the source's, ``archaic`` (thee / thou / thy / thine and no you / your:
  1; you / your and none of those: 0), ``question`` (a "?": 1; none: 0) and ``speech`` (a line that is a
  speaker's name in capitals, "HAMLET.": 1; none: 0). -1: neither side. Outside KJV is Shakespeare in the
  default corpus, and every window of a corpus whose documents carry neither name (WikiText-103, a ``text:``
  corpus), which has no ``source`` contrast (``check_attribute`` says so).
- ``Judge``: a bag-of-words logistic regression (scikit-learn) on the window text, fitted on training
  documents and scored on held-out ones, positive side vs every other window of the attribute's population
  (``judge_labels``: a text with neither thee nor you is not archaic). It reads words, never a model's
  vectors, so it shares nothing with what is steered.
- ``mean_direction`` / ``probe_direction``: the difference of the two groups' mean activation, and a
  logistic probe's weight (in the activations' own units, scaled to the mean difference's norm, so one alpha
  means the same step length for both).
- interventions: ``codec_steer`` adds alpha * direction to every latent of a passage and decodes it (in pieces
  whose logits stay under ``LOGITS_BUDGET`` numbers: a 128k-id vocabulary makes them large);
  ``calm_generate`` continues prompts with the CALM, optionally adding a vector to each generated latent;
  ``residual_shift`` adds a vector to one block's output (the residual stream) of either model while it
  runs; ``logit_bias`` adds alpha nats to chosen token ids of the token baseline's next-token logits.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ATTRIBUTES", "LOGITS_BUDGET", "Judge", "Windows", "activations", "attribute_labels", "attribute_tokens",
           "calm_generate", "check_attribute", "codec_steer", "cut_windows", "document_sources", "judge_labels",
           "logit_bias", "mean_direction", "probe_direction", "residual_shift", "rows_per_piece", "token_nll"]

ATTRIBUTES = ("source", "archaic", "question", "speech")
"""what a steering run moves: the positive side is the target, the negative side the prompts"""
POSITIVE = {"source": "KJV", "archaic": "thee/thou/thy", "question": "question",
            "speech": "speech prefix"}
NEGATIVE = {"source": "Shakespeare", "archaic": "you/your", "question": "no question", "speech": "no speech prefix"}

LOGITS_BUDGET = 1 << 25
"""numbers of one vocabulary-sized tensor (logits) a step here may hold at once: 128 MB in float32, as
``protocols.latent.MAX_LOGITS``. At the released CALM's 128,257 ids the logits of 256 prompts x 16 tokens
would take 2 GB"""

_ARCHAIC = re.compile(r"\b(thee|thou|thy|thine)\b", re.IGNORECASE)
_MODERN = re.compile(r"\b(you|your)\b", re.IGNORECASE)
_SPEAKER = re.compile(r"(?:^|\n)[A-Z][A-Z'\-]+(?: [A-Z][A-Z'\-]+)*\.[ \t]*(?:\n|$)")
_WORDS = r"[A-Za-z']+|[?!.,;:]|\n"


@dataclass
class Windows:
    """Non-overlapping L-token windows of documents (N windows)."""

    ids: np.ndarray
    """(N, L) int64 token ids"""
    text: list[str]
    """each window decoded"""
    doc: np.ndarray
    """(N,) document index (the unit of a held-out split)"""
    source: np.ndarray
    """(N,) 0 = KJV, 1 = Shakespeare, -1 = other"""

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> Windows:
        return Windows(self.ids[index], [self.text[i] for i in index], self.doc[index], self.source[index])


def cut_windows(documents, tokenizer, length: int, *, max_windows: int | None = None, seed: int = 0) -> Windows:
    """Cut each ``calm.corpus.Document`` into ``length``-token windows (a uniform sample of ``max_windows``)."""
    ids, doc, source = [], [], []
    sources = document_sources(documents)
    for d, document in enumerate(documents):
        tokens = np.asarray(tokenizer(document.text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        n = len(tokens) // length
        if n == 0:
            continue
        ids.append(tokens[: n * length].reshape(n, length))
        doc.append(np.full(n, d))
        source.append(np.full(n, sources[d]))
    if not ids:
        raise ValueError(f"no document holds a whole window of {length} tokens")
    all_ids, all_doc, all_source = np.concatenate(ids), np.concatenate(doc), np.concatenate(source)
    index = np.arange(len(all_ids))
    if max_windows is not None and len(index) > max_windows:
        index = np.sort(np.random.default_rng(seed).choice(len(index), max_windows, replace=False))
    text = tokenizer.batch_decode(all_ids[index].tolist())
    return Windows(all_ids[index], text, all_doc[index], all_source[index])


def document_sources(documents) -> np.ndarray:
    """(N,) the source of each ``calm.corpus.Document`` from its name: 0 = KJV, 1 = Shakespeare, -1 = other."""
    return np.array([{"kjv": 0, "shakespeare": 1}.get(d.name.split("/", 1)[0], -1) for d in documents],
                    dtype=np.int64)


def attribute_labels(texts: list[str], source: np.ndarray, attribute: str) -> np.ndarray:
    """(N,) 1 = the attribute's positive side, 0 = its negative side, -1 = neither (see the module doc)."""
    source = np.asarray(source)
    if attribute == "source":
        return np.where(source == 0, 1, np.where(source == 1, 0, -1))
    if attribute == "archaic":
        old = np.array([bool(_ARCHAIC.search(t)) for t in texts])
        new = np.array([bool(_MODERN.search(t)) for t in texts])
        y = np.where(old & ~new, 1, np.where(new & ~old, 0, -1))
    elif attribute == "question":
        y = np.array([1 if "?" in t else 0 for t in texts])
    elif attribute == "speech":
        y = np.array([1 if _SPEAKER.search(t) else 0 for t in texts])
    else:
        raise ValueError(f"unknown attribute {attribute!r}; choose from {ATTRIBUTES}")
    return np.where(_population(source, attribute), y, -1)  # outside KJV: the contrast is not the source's


def _population(source: np.ndarray, attribute: str) -> np.ndarray:
    """(N,) bool: the windows an attribute is read on. ``source``: KJV and Shakespeare; the others: every
    window but KJV's (Shakespeare in the default corpus; all of a corpus without KJV / Shakespeare names)."""
    source = np.asarray(source)
    return np.isin(source, (0, 1)) if attribute == "source" else source != 0


def judge_labels(texts: list[str], source: np.ndarray, attribute: str) -> np.ndarray:
    """(N,) what the judge learns: 1 = the positive side, 0 = any other window of the attribute's population
    (both sources for ``source``, every window but KJV's for the rest), -1 = outside it."""
    y = attribute_labels(texts, source, attribute)
    return np.where(y == 1, 1, np.where(_population(source, attribute), 0, -1))


def check_attribute(y: np.ndarray, attribute: str, corpus: str, split: str) -> None:
    """Refuse (``ValueError``, one line) an attribute whose labels ``y`` (``attribute_labels`` of a split's
    windows) lack a side: nothing to fit a direction or a judge on, or no prompt to steer."""
    if (y == 1).any() and (y == 0).any():
        return
    if attribute == "source":
        why = ("it contrasts KJV with Shakespeare documents (names kjv/..., shakespeare/...), and the corpus has "
               "not both")
    else:
        missing = POSITIVE[attribute] if not (y == 1).any() else NEGATIVE[attribute]
        why = f"no {split} window outside KJV is on its {missing!r} side"
    raise ValueError(f"attribute {attribute!r} cannot be steered on corpus {corpus!r}: {why}; choose others with "
                     f"--attributes (of {' '.join(ATTRIBUTES)})")


def rows_per_piece(per_row: int, budget: int = LOGITS_BUDGET) -> int:
    """How many rows of ``per_row`` numbers each (e.g. tokens x vocabulary) fit in ``budget`` (at least 1)."""
    return max(1, budget // max(1, per_row))


class Judge:
    """Bag-of-words logistic regression: P(positive side | text). Case is kept (speaker names are capitals)."""

    def __init__(self, C: float = 1.0) -> None:
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.model = make_pipeline(CountVectorizer(token_pattern=_WORDS, lowercase=False, binary=True),
                                   LogisticRegression(C=C, solver="liblinear", class_weight="balanced"))

    def fit(self, texts: list[str], y: np.ndarray) -> Judge:
        if len(np.unique(y)) < 2:
            raise ValueError("the judge needs texts of both sides")
        self.model.fit(texts, y)
        return self

    def positive(self, texts: list[str]) -> np.ndarray:
        """(N,) bool: judged on the positive side."""
        return self.model.predict(list(texts)) == 1

    def balanced_accuracy(self, texts: list[str], y: np.ndarray) -> float:
        """Mean of the per-side accuracies on labelled texts (the sides are unbalanced)."""
        hit = self.positive(texts) == (np.asarray(y) == 1)
        return float(np.mean([hit[y == side].mean() for side in (0, 1)]))


def mean_direction(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """mean(pos) - mean(neg): rows are activations (n, d). Adding it moves the negative mean onto the positive."""
    return np.asarray(pos, np.float64).mean(0) - np.asarray(neg, np.float64).mean(0)


def probe_direction(pos: np.ndarray, neg: np.ndarray, *, C: float = 0.1, max_rows: int | None = None,
                    seed: int = 0) -> np.ndarray:
    """A logistic probe's weight, pos vs neg, mapped back to the activations' units (standardised weight / std)
    and scaled to the norm of ``mean_direction`` (the direction in which the probe's logit rises fastest).
    ``max_rows``: fit on at most that many rows of each side (a uniform sample; the probe's cost)."""
    from sklearn.linear_model import LogisticRegression

    scale = np.linalg.norm(mean_direction(pos, neg))
    rng = np.random.default_rng(seed)
    if max_rows is not None:
        pos, neg = (a[rng.choice(len(a), max_rows, replace=False)] if len(a) > max_rows else a for a in (pos, neg))
    x = np.concatenate([pos, neg]).astype(np.float64)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    mean, std = x.mean(0), x.std(0) + 1e-8
    w = LogisticRegression(C=C, max_iter=2000, class_weight="balanced", random_state=seed).fit(
        (x - mean) / std, y).coef_[0] / std
    return w / np.linalg.norm(w) * scale


@contextmanager
def residual_shift(backbone, layer: int, shift: torch.Tensor | None):
    """While inside, add ``shift (d,)`` to the output of ``backbone.layers[layer]`` at every position (the
    prompt's too: activation addition). ``None``: nothing changes."""
    if shift is None:
        yield
        return
    if not 0 <= layer < len(backbone.layers):
        raise ValueError(f"layer {layer} is not a block index of a {len(backbone.layers)}-block backbone")
    handle = backbone.layers[layer].register_forward_hook(lambda _m, _i, out: out + shift.to(out.dtype))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def logit_bias(model, ids: np.ndarray, alpha: float):
    """While inside, the token baseline's ``lm_head`` adds ``alpha`` to the logits of ``ids``."""
    bias = torch.zeros(model.config.vocab_size)
    bias[torch.as_tensor(np.asarray(ids, dtype=np.int64))] = float(alpha)
    handle = model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias.to(out.dtype))
    try:
        yield
    finally:
        handle.remove()


def attribute_tokens(ids: np.ndarray, y: np.ndarray, vocab_size: int, count: int, *, min_count: int = 5) -> np.ndarray:
    """The ``count`` token ids most over-represented on the positive side (smoothed log-odds of their
    frequencies in positive vs negative windows ``ids (N, L)``): the logit-bias baseline's vocabulary."""
    pos = np.bincount(ids[y == 1].ravel(), minlength=vocab_size).astype(np.float64)
    neg = np.bincount(ids[y == 0].ravel(), minlength=vocab_size).astype(np.float64)
    score = np.log((pos + 1) / (pos.sum() + vocab_size)) - np.log((neg + 1) / (neg.sum() + vocab_size))
    score[pos < min_count] = -np.inf
    return np.argsort(-score, kind="stable")[:count]


@torch.no_grad()
def activations(model, ids: np.ndarray, *, layer: int | None, batch: int = 256) -> np.ndarray:
    """Per-position activations of windows ``ids (N, L)``, rows pooled: ``(N * P, d)``.

    ``layer None``: the autoencoder latent (``model`` an Autoencoder: mu of each K-token chunk, P = L / K).
    Otherwise the output of block ``layer`` of an EnergyTransformer (teacher-forced, P = L / K patches: row t
    is where ``model.hidden``'s h[:, t], which predicts patch t, is computed) or a TokenTransformer (P = L
    tokens; its backbone alone, no vocabulary-sized logits).

    The released CALM layout (no start vector) computes h[:, 0] in a backbone pass of its own, on a zero input
    vector shared by every window: its block output is that pass's, broadcast, followed by the pass over the
    patches; with a start vector one pass gives all P rows.
    """
    out = []
    for i in range(0, len(ids), batch):
        x = torch.as_tensor(ids[i: i + batch])
        if layer is None:
            h = model.encode(x)[0]
        else:
            seen: list[torch.Tensor] = []
            hook = model.backbone.layers[layer].register_forward_hook(lambda _m, _i, o, seen=seen: seen.append(o))
            try:
                model.hidden(x) if hasattr(model, "hidden") else model.backbone(model.embed(x))
            finally:
                hook.remove()
            h = torch.cat([o.expand(len(x), -1, -1) for o in seen], dim=1)  # the passes in position order
        out.append(h.reshape(-1, h.shape[-1]).double().numpy())
    return np.concatenate(out)


@torch.no_grad()
def codec_steer(autoencoder, ids: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode passages ``ids (B, L)``, add ``shift (l,)`` to every latent, decode by argmax (passages in pieces
    whose logits hold at most ``LOGITS_BUDGET`` numbers). Returns ``(ids (B, L), steered latents (B, L/K, l))``."""
    mu, _ = autoencoder.encode(ids)
    z = mu + shift.to(mu.dtype)
    rows = rows_per_piece(ids.shape[1] * autoencoder.config.vocab_size)
    out = torch.cat([autoencoder.decode(z[i: i + rows]).argmax(-1) for i in range(0, len(z), rows)])
    return out.reshape(ids.shape), z


@torch.no_grad()
def calm_generate(lm, prompt: torch.Tensor, new_tokens: int, *, latent_shift: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue ``prompt (B, T)`` (T a multiple of K) by ``new_tokens`` with the CALM at temperature 1: one head
    sample per patch, ``latent_shift (l,)`` added to it before it is decoded, the decoded chunk fed back
    (``EnergyTransformer.generate_chunks``, the loop ``generate`` uses: without a shift, the same noise gives the
    same tokens). Returns ``(B, new_tokens)``. A residual shift comes from ``residual_shift`` around this call."""
    T = prompt.shape[1]
    if T % lm.K:
        raise ValueError(f"the prompt length {T} must be a multiple of K = {lm.K}")
    steps = -(-new_tokens // lm.K)
    return lm.generate_chunks(prompt, steps, latent_shift=latent_shift, generator=generator).ids[:, :new_tokens]


@torch.no_grad()
def token_nll(model, context: torch.Tensor, text: torch.Tensor) -> np.ndarray:
    """(B,) mean negative log-likelihood (nats per token) of ``text (B, n)`` after ``context (B, T)`` under the
    token baseline (the fluency judge). With an empty context the first token is not scored. Rows go through in
    pieces whose logits hold at most ``LOGITS_BUDGET`` numbers."""
    ids = torch.cat([context, text], dim=1)
    rows = rows_per_piece(ids.shape[1] * model.config.vocab_size)
    start = max(context.shape[1] - 1, 0)
    out = []
    for i in range(0, len(ids), rows):
        piece = ids[i: i + rows]
        logits = model.logits(piece)[:, :-1].float()  # (b, T + n - 1, V)
        nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, piece[:, 1:, None])[..., 0]  # nll of ids[:, 1:]
        out.append(nll[:, start:].mean(1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)
