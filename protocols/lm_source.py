"""A token language model as the separation link's source model: range coding under an LM's next-token law.

``LMSourceModel`` codes a passage prefix with constriction's range coder (the coder family of
``protocols.source_coding``: ``constriction.stream.queue.RangeEncoder`` / ``RangeDecoder`` with
``constriction.stream.model.Categorical`` rows) under the next-token distribution of a
``calm.baseline.TokenTransformer`` (the token baseline, ``experiments.common.models.ensure_token_lm``). It is a
``TokenSourceModel`` with the ``lm`` kind: the frame-fitting machinery (``frame_code``, ``shortest_code``,
``decodes_to``, ``coded_rate``, the filler) is the bigram path's, only the rows come from the LM.

Context: a passage is coded on its own. The LM sees only the passage's own earlier tokens (no earlier text,
no begin-of-text token: the baseline is trained on windows cut at arbitrary stream positions, so a window
that starts with the passage's first token is what it was trained on). The first token is coded under the
add-alpha unigram fitted on training passages (``fit``), exactly as the bigram codes it, so the two models
differ only from the second token on. ``first_token=<id>`` (e.g. the end-of-text id) instead codes it under
the LM's distribution after that one token, which the LM then keeps as context.

Bit-identical models at both ends: encoder (``coding_rows``) and decoder (``decode_words``) run the *same*
computation, the LM one token at a time with batch 1 and a KV cache (the ``T == 1`` path of
``calm.backbone.Attention``, whose cost per step does not depend on the cache's size), so the float32 logits
are the same bits on both sides (same process or the same software, threads and machine; an LM forward over
the whole passage at once would differ in the last bits). Each row is then built in float64 with numpy:
``softmax(logits)`` mixed with a uniform floor, ``(1 - floor) p + floor / V`` (``floor = 2^-20`` by default:
every id keeps a probability >= ``2^-20 / V``, so no id is uncodable whatever the logits, at a cost below
``2e-6`` bits per token), and constriction quantises it to its 24-bit fixed point with the same code on
both sides. ``entropy_rate`` (cross-entropy, bits/token) runs the LM over whole passages in batches (fast;
it matches the rows' ``-log2 p`` to ~1e-6 bits), ``token_probs`` uses the exact coding rows.

Mixed with the bigram (``mix`` > 0): every row after the first is ``(1 - mix) p_LM + mix p_bigram(. | previous
token)``, the Witten-Bell bigram (``TokenSourceModel``) fitted on the same passages, kept with the unigram counts
(``stats``). The tiny baseline LM is weaker than the bigram over a passage's first tokens (it was trained on windows
where almost every position has a long context): on the test passages of kjv+shakespeare it costs 7.59 bits at the
second token against the bigram's 6.80, and wins only from the eighth on; half and half is better than either at
almost every position (6.56 bits/token over L = 32, the LM 6.83, the bigram 6.97).

Best guesses for the positions a frame could not carry (``fill``): the LM's greedy continuation of the
decoded prefix for ``FILL_HORIZON`` positions, the unigram's most likely token further on.

Sharing the LM's work (``protocols.separation_frames``): ``run(tokens)`` runs the LM once over a passage
(``PassageRun``: its coding rows, and ``fill(tokens[:t], L)`` for any ``t``, each continuing the KV cache truncated
to ``t`` positions: the same float operations on the same cached keys and values as a fresh stream, so the same
ids); ``decode_fill`` is ``fill(decode_words(...), L)`` on one stream. ``weights_id`` names the
LM by its weights (a sha256 of its tensors), whatever directory it was loaded from.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from protocols.source_coding import FILL_HORIZON, TokenSourceModel, _check_alpha, _constriction

__all__ = ["DEFAULT_FLOOR", "LMSourceModel", "weights_id"]

#: weight of the uniform mixed into every LM row (each id keeps probability >= DEFAULT_FLOOR / V)
DEFAULT_FLOOR = 2.0**-20


def _torch():
    import torch

    return torch


def weights_id(model: Any) -> str:
    """``sha256:<16 hex>`` of a torch module's tensors (names, dtypes, shapes and bytes, in name order): the same
    id for the same weights wherever they were loaded from (a saved bank records its LM by it)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(_torch().uint8).numpy().tobytes() if t.numel() else b"")
    return f"sha256:{h.hexdigest()[:16]}"


class _Stream:
    """The LM run one token at a time on one passage (batch 1, KV cache): ``push(token) -> row (V,)``."""

    def __init__(self, source: LMSourceModel) -> None:
        self.source = source
        model = source.model
        self.cache = model.backbone.new_cache(1, model.config.max_positions)

    def push(self, token: int) -> np.ndarray:
        torch = _torch()
        model = self.source.model
        if self.cache.length >= self.cache.max_len:
            raise ValueError(f"the LM's context is full ({self.cache.max_len} tokens)")
        with torch.no_grad():
            ids = torch.tensor([[int(token)]], dtype=torch.long)
            h = model.backbone(model.embed(ids), self.cache)[:, -1]  # (1, d)
            logits = model.lm_head(h)[0].double().numpy()
        return self.source._row(logits, int(token))


class PassageRun:
    """The LM run once over a passage (``LMSourceModel.run``): ``rows`` ``(L, V)``, exactly ``coding_rows(tokens)``,
    and ``fill(t)``, exactly ``source.fill(tokens[:t], L)``, from the same KV cache.

    A fill truncates the cache to its prefix and writes its guesses past it; the positions it overwrote are
    pushed again (the passage's own tokens, the same computation) before a later fill of a longer prefix.
    """

    def __init__(self, source: LMSourceModel, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens, dtype=np.int64)
        L = len(tokens)
        if L == 0 or L > source.max_tokens:
            raise ValueError(f"a passage of {L} tokens: need 1 to {source.max_tokens} (the LM's context)")
        source._require()
        self.source, self.tokens = source, tokens
        self.stream = _Stream(source)
        self.offset = int(source.first_token is not None)
        self.rows = np.empty((L, source.vocab_size))
        self.rows[0] = source.p1 if source.first_token is None else self.stream.push(source.first_token)
        for i in range(1, L):
            self.rows[i] = self.stream.push(int(tokens[i - 1]))
        self._intact = L - 1  # cache positions 0..intact-1 (after the offset) hold tokens[:intact]

    def fill(self, t: int) -> np.ndarray:
        """``source.fill(tokens[:t], L)`` (0 <= t <= L)."""
        source, tokens, L = self.source, self.tokens, len(self.tokens)
        if not 0 <= t <= L:
            raise ValueError(f"a prefix of {t} tokens of a passage of {L}")
        out = np.full(L, int(np.argmax(source.p1)), dtype=np.int64)
        out[:t] = tokens[:t]
        n = min(FILL_HORIZON, L - t, source.max_tokens - t)
        if n <= 0:
            return out
        cache = self.stream.cache
        if self._intact < t:  # an earlier fill overwrote part of this prefix: push the passage's tokens again
            cache.length = self._intact + self.offset
            for j in range(self._intact, t):
                self.stream.push(int(tokens[j]))
            self._intact = t
        cache.length = t + self.offset
        if n > 1:  # the guesses' pushes overwrite positions t..
            self._intact = t
        source._continue(self.stream, self.rows[t], out, t, n)
        return out


class LMSourceModel(TokenSourceModel):
    """Range coding of token passages under a ``TokenTransformer``'s next-token distribution.

    ``model``: a ``calm.baseline.TokenTransformer`` (or anything with its ``config.vocab_size``,
    ``config.max_positions``, ``embed``, ``backbone`` with ``new_cache`` and a cached forward, ``lm_head``); put
    in eval mode and on the CPU. ``alpha``: the add-alpha of the unigram (first token, far-out guesses).
    ``first_token``: None codes a passage's first token under the unigram; an id (e.g. end-of-text) under the
    LM after that id. ``floor``: the uniform weight mixed into every row (> 0). ``mix``: the weight of the bigram
    (fitted by ``fit``) in every row after the first, in [0, 1) (0: the LM alone). See the module docstring.
    """

    def __init__(self, model: Any, *, alpha: float = 0.5, first_token: int | None = None,
                 floor: float = DEFAULT_FLOOR, mix: float = 0.0) -> None:
        V = int(model.config.vocab_size)
        if V < 2:
            raise ValueError(f"the LM's vocab_size must be >= 2, got {V}")
        _check_alpha(alpha)
        if first_token is not None and not 0 <= int(first_token) < V:
            raise ValueError(f"first_token must be None or an id in [0, {V}), got {first_token!r}")
        if not 0 < floor < 1:
            raise ValueError(f"floor must be in (0, 1), got {floor!r}")
        if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0 <= mix < 1:
            raise ValueError(f"mix (the bigram's weight) must be a number in [0, 1), got {mix!r}")
        self.model = model.cpu().eval()
        self.vocab_size, self.kind = V, "lm"
        self.alpha, self.bigram_lambda = float(alpha), None
        self.first_token = None if first_token is None else int(first_token)
        self.floor, self.mix = float(floor), float(mix)
        #: the bigram mixed into the rows (mix > 0), fitted with the unigram
        self.bigram: TokenSourceModel | None = None
        self.fitted = False
        self._weights_id: str | None = None

    def fit(self, passages: np.ndarray) -> LMSourceModel:
        """The unigram of ``passages (N, L)`` (first token, far guesses), and with ``mix`` > 0 the bigram."""
        super().fit(passages)
        if self.mix > 0:
            self.bigram = TokenSourceModel(self.vocab_size, "bigram", alpha=self.alpha).fit(passages)
        return self

    def stats(self) -> dict[str, np.ndarray]:
        """The counts ``save`` writes: the unigram's, and with ``mix`` > 0 the bigram's pairs."""
        return self.bigram.stats() if self.bigram is not None else super().stats()

    def set_stats(self, stats: dict[str, np.ndarray]) -> LMSourceModel:
        """Restore the counts written by ``stats``."""
        super().set_stats(stats)
        if self.mix > 0:
            self.bigram = TokenSourceModel(self.vocab_size, "bigram", alpha=self.alpha).set_stats(stats)
        return self

    @property
    def weights_id(self) -> str:
        """The LM's ``weights_id`` (computed once)."""
        if self._weights_id is None:
            self._weights_id = weights_id(self.model)
        return self._weights_id

    @classmethod
    def from_checkpoint(cls, directory: str | Path, **kwargs: Any) -> LMSourceModel:
        """The source model of a saved token baseline (``calm.checkpoint`` directory, e.g. ``ensure_token_lm``'s)."""
        from calm.checkpoint import load_pretrained

        model, _ = load_pretrained(Path(directory), expect="baseline")
        return cls(model, **kwargs)

    @property
    def max_tokens(self) -> int:
        """The longest passage the LM's context holds."""
        return int(self.model.config.max_positions) - (self.first_token is not None)

    # ---- rows --------------------------------------------------------------------------------------

    def _row(self, logits: np.ndarray, prev: int) -> np.ndarray:
        """float64 logits (V,) after token ``prev`` -> the coding distribution (V,): softmax mixed with the uniform
        floor, and with the bigram's row after ``prev`` (``mix`` > 0)."""
        z = np.exp(logits - logits.max())
        p = z / z.sum()
        row = (1.0 - self.floor) * p + self.floor / self.vocab_size
        if self.mix > 0:
            row = (1.0 - self.mix) * row + self.mix * self.bigram.rows(np.array([prev]))[0]
        return row

    def _rows_of(self, tokens: np.ndarray, n_rows: int) -> np.ndarray:
        """The first ``n_rows`` coding rows of a passage starting with ``tokens`` (needs ``n_rows - 1`` of them)."""
        self._require()
        out = np.empty((n_rows, self.vocab_size))
        stream = _Stream(self)
        out[0] = self.p1 if self.first_token is None else stream.push(self.first_token)
        for i in range(1, n_rows):
            out[i] = stream.push(int(tokens[i - 1]))
        return out

    def coding_rows(self, tokens: np.ndarray) -> np.ndarray | None:
        """The rows coding ``tokens (t,)``: the LM run token by token on the prefix (the decoder's own rows)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) == 0:
            return None
        if len(tokens) > self.max_tokens:
            raise ValueError(f"a passage of {len(tokens)} tokens exceeds the LM's context ({self.max_tokens})")
        return self._rows_of(tokens, len(tokens))

    def run(self, tokens: np.ndarray) -> PassageRun:
        """The LM run once over a passage ``tokens (L,)``: its coding rows and the fills of its prefixes
        (``PassageRun``)."""
        return PassageRun(self, tokens)

    def _continue(self, stream: _Stream, row: np.ndarray, out: np.ndarray, t: int, n: int) -> None:
        """Greedy guesses ``out[t : t + n]`` from ``row`` (the distribution after ``t`` tokens), ``stream``
        holding exactly those t tokens."""
        for j in range(t, t + n):
            out[j] = int(np.argmax(row))
            if j + 1 < t + n:
                row = stream.push(int(out[j]))

    def rows(self, contexts: np.ndarray) -> np.ndarray:  # the bigram's context interface has no meaning here
        raise NotImplementedError("an LM source model's rows depend on the whole prefix: use coding_rows(tokens)")

    def token_probs(self, passages: np.ndarray) -> np.ndarray:
        """The coding probability of each token of ``passages (N, L)`` (exactly the range coder's rows)."""
        ids = self._check(passages)
        out = np.empty(ids.shape)
        for i, row in enumerate(ids):
            if ids.shape[1]:
                out[i] = self.coding_rows(row)[np.arange(ids.shape[1]), row]
        return out

    def entropy_rate(self, passages: np.ndarray, *, batch_size: int = 64) -> float:
        """Cross-entropy in bits/token on ``passages (N, L)``: whole passages through the LM in batches."""
        torch = _torch()
        ids = self._check(passages)
        self._require()
        if ids.shape[1] > self.max_tokens:
            raise ValueError(f"passages of {ids.shape[1]} tokens exceed the LM's context ({self.max_tokens})")
        total = 0.0
        for s in range(0, len(ids), batch_size):
            chunk = ids[s : s + batch_size]
            if self.first_token is None:
                total += float(-np.log2(self.p1[chunk[:, 0]]).sum())
                inputs, targets = chunk[:, :-1], chunk[:, 1:]
            else:
                inputs = np.concatenate([np.full((len(chunk), 1), self.first_token), chunk[:, :-1]], axis=1)
                targets = chunk
            if targets.shape[1] == 0:
                continue
            with torch.no_grad():
                logits = self.model.logits(torch.as_tensor(inputs)).double()
            p = torch.softmax(logits, dim=-1).gather(-1, torch.as_tensor(targets)[..., None])[..., 0].numpy()
            p = (1.0 - self.floor) * p + self.floor / self.vocab_size
            if self.mix > 0:  # the bigram after each target's previous token (inputs[:, 0] precedes targets[:, 0])
                pb = self.bigram.token_probs(np.concatenate([inputs[:, :1], targets], axis=1))[:, 1:]
                p = (1.0 - self.mix) * p + self.mix * pb
            total += float(-np.log2(p).sum())
        return total / ids.size

    # ---- decoding and guesses ----------------------------------------------------------------------

    def decode_words(self, words: np.ndarray, count: int, max_info_bits: float = math.inf) -> np.ndarray:
        """Decode up to ``count`` tokens from ``words``, running the LM on the prefix decoded so far; never raises.

        Stops early if constriction reports invalid data or once the decoded tokens' information content
        exceeds ``max_info_bits`` (as ``TokenSourceModel.decode_words``).
        """
        c = _constriction()
        self._require()
        count = min(int(count), self.max_tokens)
        out: list[int] = []
        if count <= 0:
            return np.zeros(0, dtype=np.int64)
        try:
            dec = c.stream.queue.RangeDecoder(words)
        except Exception:
            return np.zeros(0, dtype=np.int64)
        stream = _Stream(self)
        info = 0.0
        for i in range(count):
            if i == 0:
                row = self.p1 if self.first_token is None else stream.push(self.first_token)
            else:
                row = stream.push(out[-1])
            try:
                tok = int(dec.decode(self._family, row[None, :])[0])
            except Exception:
                break
            info += -math.log2(row[tok])
            if info > max_info_bits:
                break
            out.append(tok)
        return np.asarray(out, dtype=np.int64)

    def decode_fill(self, words: np.ndarray, count: int, L: int, max_info_bits: float = math.inf) -> np.ndarray:
        """``fill(decode_words(words, count, max_info_bits), L)`` on one LM stream (the decode's last row is the
        fill's first): the same ids, about half the LM steps; never raises."""
        c = _constriction()
        self._require()
        count = min(int(count), self.max_tokens, L)
        out = np.full(L, int(np.argmax(self.p1)), dtype=np.int64)
        stream = _Stream(self)
        row = self.p1 if self.first_token is None else stream.push(self.first_token)
        t, info, stopped = 0, 0.0, False
        try:
            dec = c.stream.queue.RangeDecoder(words) if count > 0 else None
        except Exception:
            dec = None
        while dec is not None and t < count:
            try:
                tok = int(dec.decode(self._family, row[None, :])[0])
            except Exception:
                stopped = True
                break
            info += -math.log2(row[tok])
            if info > max_info_bits:
                stopped = True
                break
            out[t] = tok
            t += 1
            if t < count:
                row = stream.push(tok)
        n = min(FILL_HORIZON, L - t, self.max_tokens - t)
        if n <= 0:
            return out
        if t > 0 and not stopped:  # all count tokens decoded: the stream holds t - 1, the fill needs the t-th too
            row = stream.push(int(out[t - 1]))
        self._continue(stream, row, out, t, n)
        return out

    def guesses_after(self, prev: int) -> np.ndarray:  # the LM's guesses depend on the whole prefix
        raise NotImplementedError("an LM source model guesses from the whole prefix: use fill(prefix, L)")

    def fill(self, prefix: np.ndarray, L: int) -> np.ndarray:
        """``prefix (t,)`` extended to ``L`` ids: the LM's greedy continuation for ``FILL_HORIZON`` positions,
        the unigram's most likely token further on."""
        self._require()
        out = np.full(L, int(np.argmax(self.p1)), dtype=np.int64)
        prefix = np.asarray(prefix, dtype=np.int64)
        t = min(len(prefix), L)
        out[:t] = prefix[:t]
        n = min(FILL_HORIZON, L - t, self.max_tokens - t)
        if n <= 0:
            return out
        stream = _Stream(self)
        row = self.p1 if self.first_token is None else stream.push(self.first_token)
        for j in range(t):
            row = stream.push(int(out[j]))
        for j in range(t, t + n):
            out[j] = int(np.argmax(row))
            if j + 1 < t + n:
                row = stream.push(int(out[j]))
        return out
