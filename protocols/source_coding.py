"""The token source model of the separation baseline: a unigram / interpolated bigram and its range coder.

The source half of ``protocols.separation`` (entropy-coded token ids -> 5G channel code): a token model
fitted on training passages codes a passage prefix with constriction's range coder
(``constriction.stream.queue.RangeEncoder`` / ``RangeDecoder`` with ``constriction.stream.model.Categorical``
models) into exactly the payload bits a frame has, and fills the positions a frame could not carry with
its best guess. Nothing here is a hand-written entropy coder.

Source models (``TokenSourceModel``, fitted on training passages; rows of passages are independent, the
first token of a passage is coded under the unigram):

- ``unigram``: ``p(b) = (c(b) + alpha) / (N + alpha V)`` (add-alpha, alpha > 0, so every id is codable).
- ``bigram``: interpolated with the unigram, ``p(b | a) = lam_a c(a, b) / c(a) + (1 - lam_a) p(b)``.
  ``bigram_lambda=None`` (the default) is Witten-Bell interpolation, ``lam_a = c(a) / (c(a) + u(a))``
  with ``u(a)`` the number of distinct successors of ``a`` seen in training (a parameter-free, per-context
  weight fitted from the counts: 6.89 bits/token on held-out kjv+shakespeare at bpe:8192, against 6.98,
  7.02 and 7.21 for a fixed 0.9, 0.7 and 0.5); a float fixes
  ``lam_a`` for every seen context (e.g. 0.9). Unseen contexts back off to the unigram (``lam_a = 0``).
  Only the observed pairs are stored (CSR: per context its successors and counts); a context's
  distribution is built on demand, vectorised over the message's contexts.

Constriction quantises the float probabilities to its fixed-point precision (24 bits for the default
range coder) itself; both ends compute every row with the same elementwise numpy code from the integer
counts, so encoder and decoder see bit-identical models and the coder is exactly invertible.

Fitting the range code into the payload: constriction's range decoder reads a point, and decodes the
tokens correctly from any point inside their interval. The receiver reads the payload followed by zeros,
so any ``(k - h)``-bit string inside the interval will do; one exists iff constriction's output cut to
``k - h`` bits, or that cut plus one unit in its last place, is one (both are checked by decoding with
constriction, never assumed). A prefix of ``t`` tokens thus costs about its information content
(``-log2 p``, give or take a bit), not the coder's 32-bit word granularity. The bits past the tokens'
information are not zeros: the encoder codes a pseudo-random filler (uniform 16-bit symbols seeded by a
hash of the message, never decoded) after the tokens, which picks a pseudo-random point of the interval.
Zero padding would put the same bits, hence (the 5G scrambler's sequence being fixed) the same symbols,
in every message with room to spare, and 16/64-QAM's mean power would drift from 1 (by ~5% with a
generous budget); with the filler it stays within sampling error of 1. ``coded_rate`` measures the
shortest code of whole passages (and constriction's raw word-aligned output) on held-out text.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

__all__ = ["FILL_HORIZON", "SOURCE_MODELS", "TokenSourceModel"]

#: the token models a separation link can code under
SOURCE_MODELS = ("unigram", "bigram")
#: unrecovered positions this close after the last recovered token get the bigram's marginal best guess
FILL_HORIZON = 3
_WORD = 32
_FILLER_BITS = 16
_FILLER_SIZE = 1 << _FILLER_BITS


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def _constriction():
    import constriction

    return constriction


# ---- bits <-> constriction words ----------------------------------------------------------------


def _words_to_bits(words: np.ndarray) -> np.ndarray:
    """uint32 words -> bits (uint8), each word most significant bit first."""
    return np.unpackbits(np.asarray(words, dtype=">u4").view(np.uint8))


def _bits_to_words(bits: np.ndarray, n_words: int) -> np.ndarray:
    """Bits (any length <= 32 n_words) -> ``n_words`` uint32 words, zero-padded (the inverse of the above)."""
    full = np.zeros(n_words * _WORD, dtype=np.uint8)
    full[: len(bits)] = bits
    return np.packbits(full).view(">u4").astype(np.uint32)


def _round_up(bits: np.ndarray) -> np.ndarray | None:
    """``bits`` read as a binary fraction plus one unit in its last place, same length (None on overflow)."""
    zeros = np.flatnonzero(bits == 0)
    if len(zeros) == 0:
        return None
    out = bits.copy()
    j = zeros[-1]
    out[j] = 1
    out[j + 1 :] = 0
    return out


# ---- the token source model ---------------------------------------------------------------------


class TokenSourceModel:
    """A unigram or interpolated-bigram token model and its constriction range coder.

    Fitted on training passages ``(N, L)``; the arrays (integer counts) are all it stores, so it saves to
    safetensors. See the module docstring for the formulas.
    """

    def __init__(self, vocab_size: int, kind: str = "bigram", *, alpha: float = 0.5,
                 bigram_lambda: float | None = None) -> None:
        if not _is_int(vocab_size) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
        if kind not in SOURCE_MODELS:
            raise ValueError(f"source_model must be one of {', '.join(SOURCE_MODELS)}, got {kind!r}")
        _check_alpha(alpha)
        _check_lambda(bigram_lambda)
        self.vocab_size, self.kind = int(vocab_size), kind
        self.alpha = float(alpha)
        self.bigram_lambda = None if bigram_lambda is None else float(bigram_lambda)
        self.fitted = False

    # ---- fitting -------------------------------------------------------------------------------

    def fit(self, passages: np.ndarray) -> TokenSourceModel:
        """Count tokens (and, for the bigram, adjacent pairs within each passage) of ``passages (N, L)``."""
        ids = self._check(passages)
        V = self.vocab_size
        uni = np.bincount(ids.ravel(), minlength=V).astype(np.int64)
        if self.kind == "bigram" and ids.shape[1] > 1:
            keys = (ids[:, :-1] * V + ids[:, 1:]).ravel()
            keys, counts = np.unique(keys, return_counts=True)
            ctx = keys // V
            indptr = np.zeros(V + 1, dtype=np.int64)
            np.cumsum(np.bincount(ctx, minlength=V), out=indptr[1:])
            succ, counts = (keys % V).astype(np.int64), counts.astype(np.int64)
        else:
            indptr, succ, counts = np.zeros(V + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        self._set_counts(uni, indptr, succ, counts)
        return self

    def _set_counts(self, uni: np.ndarray, indptr: np.ndarray, succ: np.ndarray, counts: np.ndarray) -> None:
        V = self.vocab_size
        uni, indptr = np.asarray(uni, np.int64), np.asarray(indptr, np.int64)
        succ, counts = np.asarray(succ, np.int64), np.asarray(counts, np.int64)
        if uni.shape != (V,) or indptr.shape != (V + 1,) or succ.shape != counts.shape or indptr[-1] != len(succ):
            raise ValueError(f"source model counts do not fit vocab_size={V}: unigram {uni.shape}, "
                             f"indptr {indptr.shape}, successors {succ.shape}, counts {counts.shape}")
        self.unigram_counts, self.indptr, self.successors, self.pair_counts = uni, indptr, succ, counts
        #: unigram probabilities, float64 (V,), add-alpha
        self.p1 = (uni + self.alpha) / (uni.sum() + self.alpha * V)
        pair_ctx = np.repeat(np.arange(V, dtype=np.int64), np.diff(indptr))
        ctx_total = np.bincount(pair_ctx, weights=counts, minlength=V)  # c(a), float64 (exact integers)
        distinct = np.diff(indptr).astype(np.float64)
        if self.kind == "unigram":
            lam = np.zeros(V)
        elif self.bigram_lambda is None:  # Witten-Bell
            lam = np.divide(ctx_total, ctx_total + distinct, out=np.zeros(V), where=ctx_total > 0)
        else:
            lam = np.where(ctx_total > 0, self.bigram_lambda, 0.0)
        #: interpolation weight of each context's bigram estimate (0: the unigram)
        self.lam = lam
        # weight of one pair count in its context's row: lam_a / c(a)
        self._pair_scale = np.divide(lam, ctx_total, out=np.zeros(V), where=ctx_total > 0)
        self._pair_ctx = pair_ctx
        self._pair_keys = pair_ctx * V + succ  # sorted
        self._guesses: dict[int, np.ndarray] = {}
        self._transition = None
        if self.kind == "unigram":
            self._unigram_model = _constriction().stream.model.Categorical(self.p1, perfect=False)
        self._family = _constriction().stream.model.Categorical(perfect=False)
        self.fitted = True

    def stats(self) -> dict[str, np.ndarray]:
        """The integer counts (what ``save`` writes)."""
        self._require()
        return {"unigram_counts": self.unigram_counts, "bigram_indptr": self.indptr,
                "bigram_successors": self.successors, "bigram_counts": self.pair_counts}

    def set_stats(self, stats: dict[str, np.ndarray]) -> TokenSourceModel:
        """Restore the counts written by ``stats``."""
        self._set_counts(stats["unigram_counts"], stats["bigram_indptr"], stats["bigram_successors"],
                         stats["bigram_counts"])
        return self

    # ---- probabilities ---------------------------------------------------------------------------

    def rows(self, contexts: np.ndarray) -> np.ndarray:
        """Coding distributions for ``contexts (t,)`` (previous token ids, -1 at a passage's start) -> (t, V).

        Float64, each row sums to 1 up to rounding. Encoder and decoder both call this (the decoder one row
        at a time): every entry comes from the same elementwise operations, so they are bit-identical.
        """
        ctx = np.asarray(contexts, dtype=np.int64)
        if self.kind == "unigram":
            return np.broadcast_to(self.p1, (len(ctx), self.vocab_size)).copy()
        safe = np.maximum(ctx, 0)
        lam = np.where(ctx >= 0, self.lam[safe], 0.0)
        rows = (1.0 - lam)[:, None] * self.p1[None, :]
        starts, ends = self.indptr[safe], self.indptr[safe + 1]
        ends = np.where(ctx >= 0, ends, starts)
        lengths = ends - starts
        if lengths.sum():
            r = np.repeat(np.arange(len(ctx)), lengths)
            j = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
            rows[r, self.successors[j]] += self._pair_scale[safe[r]] * self.pair_counts[j]
        return rows

    def token_probs(self, passages: np.ndarray) -> np.ndarray:
        """The model's probability of each token of ``passages (N, L)`` given its context -> float64 (N, L)."""
        ids = self._check(passages)
        p = self.p1[ids]
        if self.kind == "bigram" and ids.shape[1] > 1:
            a, b = ids[:, :-1], ids[:, 1:]
            keys = a * self.vocab_size + b
            pos = np.searchsorted(self._pair_keys, keys)
            pos = np.minimum(pos, max(len(self._pair_keys) - 1, 0))
            if len(self._pair_keys):
                found = self._pair_keys[pos] == keys
                cnt = np.where(found, self.pair_counts[pos], 0)
            else:
                cnt = np.zeros_like(keys)
            p[:, 1:] = (1.0 - self.lam[a]) * self.p1[b] + self._pair_scale[a] * cnt
        return p

    def entropy_rate(self, passages: np.ndarray) -> float:
        """Cross-entropy in bits per token on ``passages (N, L)``: what an ideal coder spends under the model."""
        return float(-np.log2(self.token_probs(passages)).mean())

    def step(self, v: np.ndarray) -> np.ndarray:
        """One step of the bigram chain: a distribution ``v (V,)`` over a token -> that over the next one."""
        if self._transition is None:  # the bigram part, transposed: (successor, context) -> lam_a c(a, b) / c(a)
            from scipy.sparse import csr_matrix

            V = self.vocab_size
            self._transition = csr_matrix((self._pair_scale[self._pair_ctx] * self.pair_counts,
                                           (self.successors, self._pair_ctx)), shape=(V, V))
        return float((v * (1.0 - self.lam)).sum()) * self.p1 + self._transition @ v

    def guesses_after(self, prev: int) -> np.ndarray:
        """Best guesses for the ``FILL_HORIZON`` positions after token ``prev`` (-1: a passage's first positions).

        Position ``j`` after ``prev`` gets the most likely token of the model's ``j``-step marginal
        ``P(x_{t+j} | x_t = prev)`` (j = 1: the most likely successor; at the start: the unigram's best, then
        the marginals from it). Cached per ``prev``. Unigram model: its most likely token everywhere.
        """
        prev = int(prev) if self.kind == "bigram" else -1
        if prev not in self._guesses:
            best = int(np.argmax(self.p1))
            if self.kind == "unigram":
                guesses = [best] * FILL_HORIZON
            else:
                v = self.p1.copy() if prev < 0 else self.rows(np.array([prev]))[0]
                guesses = [int(np.argmax(v))]
                for _ in range(FILL_HORIZON - 1):
                    v = self.step(v)
                    guesses.append(int(np.argmax(v)))
            self._guesses[prev] = np.asarray(guesses, dtype=np.int64)
        return self._guesses[prev]

    def fill(self, prefix: np.ndarray, L: int) -> np.ndarray:
        """``prefix (t,)`` extended to ``L`` ids with the model's best guesses for the unrecovered positions.

        Bigram: the ``j``-step marginal's most likely token after the last recovered one for
        ``j <= FILL_HORIZON`` (``guesses_after``), the unigram's most likely token further on (where the
        marginal has converged to it on held-out text; a greedy successor chain did worse: it cycles through
        frequent tokens). Unigram: its most likely token.
        """
        out = np.full(L, int(np.argmax(self.p1)), dtype=np.int64)
        t = min(len(prefix), L)
        out[:t] = prefix[:t]
        guesses = self.guesses_after(int(prefix[t - 1]) if t else -1)[: L - t]
        out[t : t + len(guesses)] = guesses
        return out

    # ---- coding ----------------------------------------------------------------------------------

    def coding_rows(self, tokens: np.ndarray) -> np.ndarray | None:
        """The rows coding ``tokens (t,)`` (a passage's first t tokens): ``rows`` of their contexts, (t, V).

        None for the unigram (one fixed model codes every token). A prefix's rows are a prefix of these.
        """
        if self.kind == "unigram" or len(tokens) == 0:
            return None
        return self.rows(_contexts(np.asarray(tokens, dtype=np.int64)))

    def encode_words(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Range-code ``tokens (t,)`` (a passage's first t tokens) -> constriction's uint32 words.

        ``rows``: ``coding_rows(tokens)`` (or of a longer passage it begins), when already computed.
        """
        c = _constriction()
        enc = c.stream.queue.RangeEncoder()
        tokens = np.asarray(tokens, dtype=np.int32)
        if len(tokens):
            if self.kind == "unigram":
                enc.encode(tokens, self._unigram_model)
            else:
                rows = self.coding_rows(tokens) if rows is None else rows[: len(tokens)]
                enc.encode(tokens, self._family, rows)
        return enc.get_compressed()

    def decodes_to(self, words: np.ndarray, tokens: np.ndarray, rows: np.ndarray | None = None) -> bool:
        """Whether constriction decodes ``words`` back to ``tokens`` (as ``decode_words`` would)."""
        c = _constriction()
        tokens = np.asarray(tokens, dtype=np.int32)
        try:
            dec = c.stream.queue.RangeDecoder(words)
            if self.kind == "unigram":
                got = dec.decode(self._unigram_model, len(tokens))
            else:
                # the true contexts: a sequential decoder sees exactly these rows up to its first error
                rows = self.coding_rows(tokens) if rows is None else rows[: len(tokens)]
                got = dec.decode(self._family, rows)
        except Exception:  # constriction: "invalid compressed data"
            return False
        return bool(np.array_equal(got, tokens))

    def decode_words(self, words: np.ndarray, count: int, max_info_bits: float = math.inf) -> np.ndarray:
        """Decode up to ``count`` tokens from ``words``; never raises.

        Stops early if constriction reports invalid data or once the decoded tokens' information content
        (``-log2 p`` summed) exceeds ``max_info_bits``. Returns the tokens decoded before the stop (int64).
        """
        c = _constriction()
        out: list[int] = []
        if count <= 0:
            return np.zeros(0, dtype=np.int64)
        try:
            dec = c.stream.queue.RangeDecoder(words)
        except Exception:
            return np.zeros(0, dtype=np.int64)
        if self.kind == "unigram":
            try:
                got = np.asarray(dec.decode(self._unigram_model, count), dtype=np.int64)
            except Exception:  # decode one by one up to the invalid point
                dec = c.stream.queue.RangeDecoder(words)
                got = []
                for _ in range(count):
                    try:
                        got.append(int(dec.decode(self._unigram_model)))
                    except Exception:
                        break
                got = np.asarray(got, dtype=np.int64)
            info = np.cumsum(-np.log2(self.p1[got]))
            return got[: int(np.searchsorted(info, max_info_bits, side="right"))]
        info, prev = 0.0, -1
        for _ in range(count):
            row = self.rows(np.array([prev]))
            try:
                tok = int(dec.decode(self._family, row)[0])
            except Exception:
                break
            info += -math.log2(row[0, tok])
            if info > max_info_bits:
                break
            out.append(tok)
            prev = tok
        return np.asarray(out, dtype=np.int64)

    def shortest_code(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """The shortest bit string whose zero-padded words decode to ``tokens (t,)`` (the cost of a frame).

        Binary search over the length ``b``: constriction's output cut to ``b`` bits, or the cut plus one unit
        in its last place, decodes iff any ``b``-bit string does, and that is monotone in ``b``. ``rows`` as
        in ``encode_words``.
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) == 0:
            return np.zeros(0, dtype=np.uint8)
        if rows is None:
            rows = self.coding_rows(tokens)
        bits = _words_to_bits(self.encode_words(tokens, rows))

        # a fixed number of words (the code, zero-padded, then two zero words), as the receiver reads
        n_words = -(-len(bits) // _WORD) + 2

        def at(b: int) -> np.ndarray | None:
            cut = bits[:b]
            cands = [cut] if b >= len(bits) else [cut, _round_up(cut)]
            for cand in cands:
                if cand is not None and self.decodes_to(_bits_to_words(cand, n_words), tokens, rows):
                    return cand
            return None

        lo, hi = 0, len(bits)  # at(hi) holds: constriction's own output
        best = at(hi)
        if best is None:  # never expected; keep the raw output
            return bits
        while lo < hi:
            mid = (lo + hi) // 2
            got = at(mid)
            if got is None:
                lo = mid + 1
            else:
                hi, best = mid, got
        return best

    def frame_code(self, tokens: np.ndarray, n_bits: int, filler: np.ndarray,
                   rows: np.ndarray | None = None) -> np.ndarray | None:
        """Exactly ``n_bits`` bits that decode to ``tokens`` when zero-padded, or None if no such string exists.

        constriction codes ``tokens`` then the ``filler`` symbols (uniform over 2^16, never decoded); the
        output cut to ``n_bits`` (or the cut plus one unit in the last place) lies in the tokens' interval
        whenever any ``n_bits``-bit string does, and is checked by decoding. The filler only picks where in
        that interval the point sits: the bits past the tokens' information look random instead of zeros.
        """
        c = _constriction()
        tokens = np.asarray(tokens, dtype=np.int64)
        enc = c.stream.queue.RangeEncoder()
        if len(tokens):
            if self.kind == "unigram":
                enc.encode(tokens.astype(np.int32), self._unigram_model)
            else:
                rows = self.coding_rows(tokens) if rows is None else rows[: len(tokens)]
                enc.encode(tokens.astype(np.int32), self._family, rows)
        enc.encode(np.asarray(filler, dtype=np.int32), c.stream.model.Uniform(_FILLER_SIZE))
        bits = _words_to_bits(enc.get_compressed())
        if len(bits) < n_bits:  # not expected: the filler carries n_bits + 64 bits
            bits = np.concatenate([bits, np.zeros(n_bits - len(bits), dtype=np.uint8)])
        cut = bits[:n_bits]
        n_words = -(-n_bits // _WORD) + 2
        for cand in (cut, _round_up(cut)):
            if cand is not None and (len(tokens) == 0
                                     or self.decodes_to(_bits_to_words(cand, n_words), tokens, rows)):
                return cand
        return None

    def coded_rate(self, passages: np.ndarray) -> dict[str, float]:
        """Mean coded bits per token of whole passages with constriction, on ``passages (N, L)``.

        ``bits_per_token``: the shortest zero-padded string that decodes (what a frame spends);
        ``words_bits_per_token``: constriction's raw output, whole 32-bit words.
        """
        ids = self._check(passages)
        short = raw = 0
        for row in ids:
            rows = self.coding_rows(row)
            short += len(self.shortest_code(row, rows=rows))
            raw += _WORD * len(self.encode_words(row, rows))
        return {"bits_per_token": short / ids.size, "words_bits_per_token": raw / ids.size}

    # ---- checks ----------------------------------------------------------------------------------

    def _require(self) -> None:
        if not self.fitted:
            raise RuntimeError("the token source model is not fitted: call fit(passages) first")

    def _check(self, passages: Any) -> np.ndarray:
        ids = np.asarray(passages)
        if not np.issubdtype(ids.dtype, np.integer) or ids.ndim != 2:
            raise ValueError(f"passages must be an integer array (N, L), got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"passages must hold token ids in [0, {self.vocab_size})")
        return ids.astype(np.int64, copy=False)


def _contexts(tokens: np.ndarray) -> np.ndarray:
    """Previous-token contexts of a passage prefix: -1 (start), tokens[0], ..., tokens[t-2]."""
    ctx = np.empty(len(tokens), dtype=np.int64)
    ctx[0] = -1
    ctx[1:] = tokens[:-1]
    return ctx


def _filler(tokens: np.ndarray, n_bits: int) -> np.ndarray:
    """Pseudo-random filler symbols (uniform over 2^16) for a frame, seeded by the message: ``n_bits + 64`` bits."""
    seed = int.from_bytes(hashlib.blake2b(np.asarray(tokens, dtype="<i8").tobytes(), digest_size=8).digest(), "little")
    count = -(-(n_bits + 64) // _FILLER_BITS)
    return np.random.default_rng(seed).integers(0, _FILLER_SIZE, size=count).astype(np.int32)


def _check_alpha(alpha: Any) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0 < alpha < math.inf):
        raise ValueError(f"alpha (add-alpha smoothing) must be a finite number > 0, got {alpha!r}")


def _check_lambda(lam: Any) -> None:
    if lam is None:
        return
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam <= 1:
        raise ValueError(f"bigram_lambda must be None (Witten-Bell) or a number in [0, 1], got {lam!r}")
