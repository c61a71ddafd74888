"""The separation link's frames and their decodes, computed once and kept: what every MCS of a bank shares.

A bank (``protocols.separation``) plays every (code, rate, modulation) of one budget on the same passages, and the
rate oracle plays each at every channel state. What an entry sends is a function of the passage and of its frame
format ``(header, k)`` alone (``k`` information bits: a header stating ``T``, the tokens carried, then the range
code), and what the receiver decodes a function of the received bits alone, so ``FrameCoder`` (one per source
model, shared by every protocol built on it) keeps both:

- **frames**: per passage (up to ``max_passages``, least recently used dropped), the frame of every format asked.
  With the LM source (``protocols.lm_source.LMSourceModel``) a miss codes the passage in every format
  ``register``-ed so far that it lacks: one LM pass over the passage (``LMSourceModel.run``: about 53 ms for
  L = 32 on one core, 131 ms with the fills and frames of 14 to 19 formats) serves every entry of the bank, where
  each entry alone would run it twice. The bigram's rows are cheap: it codes
  each format on its own, as ``SeparationProtocol`` always did (``fit_payload`` is that code, moved here unchanged).
- **decodes**: a memo of ``decode`` by (format, L, the received bits), up to ``max_decodes`` (least recently used
  dropped). A frame received without a bit error is the sent frame, and by construction (``fit_payload`` checks
  that constriction decodes the prefix from it with the receiver's rows, and keeps its information ``SLACK_BITS``
  - 1 below the decoder's stop) its decode is the sent prefix plus the model's fill, ``fill(tokens[:T], L)``:
  coding a frame puts exactly that into the memo (for the LM from the same pass, ``PassageRun.fill``), so a frame
  that arrives intact is never decoded again, at any channel state. A frame with bit errors is decoded honestly
  (for the LM: the model run on what the range decoder reads, ``LMSourceModel.decode_fill``) and kept too: the same
  bits again are the same computation. ``tests/test_separation.py`` checks the memo against fresh decodes.

Headers: ``FixedHeader`` (T in ``h = ceil(log2(L + 1))`` bits, the default and the frame the link always sent) or
``HuffmanHeader`` (T under a Huffman code of its distribution on training frames: ``bench/separation_header.py``
measures what it saves).

``open_lm`` and ``check_lm`` tie a saved bank to its LM: the bank's configs record the LM's ``weights_id``
(a sha256 of its tensors) and loading refuses any other LM, naming both.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from calm.files import DamagedFileError
from protocols.source_coding import _WORD, TokenSourceModel, _bits_to_words, _filler

__all__ = ["SLACK_BITS", "FixedHeader", "FrameCoder", "HuffmanHeader", "check_lm", "coder_of", "fit_payload",
           "open_lm"]

#: decoded tokens may carry at most this many bits of information beyond the payload before the
#: decoder concludes that the frame has run out of bits (the encoder keeps a bit of margin below it)
SLACK_BITS = 16.0


def fit_payload(source: TokenSourceModel, tokens: np.ndarray, budget: int, info: np.ndarray,
                rows: np.ndarray | None) -> tuple[int, np.ndarray]:
    """The longest prefix of ``tokens (L,)`` that fits ``budget`` payload bits -> (T, the ``budget`` bits).

    ``info``: the cumulative information ``-log2 p`` of the tokens under the coding rows (bits, ``(L,)``);
    ``rows``: ``source.coding_rows(tokens)`` (None for the unigram). Starts at the prefix whose information fits,
    then steps up or down by one token until constriction's code (checked by decoding) fits.
    """
    # the decoder stops past budget + SLACK_BITS: never send a prefix near that line
    limit = int(np.searchsorted(info, budget + SLACK_BITS - 1.0, side="right"))
    t = min(limit, int(np.searchsorted(info, budget, side="right")))
    filler = _filler(tokens, budget)

    def fits(t: int) -> np.ndarray | None:
        return source.frame_code(tokens[:t], budget, filler, rows=rows)

    code = fits(t)
    if code is not None:
        while t < limit:
            more = fits(t + 1)
            if more is None:
                break
            t, code = t + 1, more
        return t, code
    while code is None:  # t = 0 always fits (filler alone)
        t -= 1
        code = fits(t)
    return t, code


class FixedHeader:
    """T in ``h`` bits, most significant first, then ``k - h`` payload bits (the frame ``SeparationProtocol`` has
    always sent)."""

    def __init__(self, h: int) -> None:
        self.h = int(h)
        self.key: tuple = ("fixed", self.h)

    def fit(self, source: TokenSourceModel, tokens: np.ndarray, k: int, info: np.ndarray,
            rows: np.ndarray | None) -> tuple[int, np.ndarray]:
        """``(T, the k frame bits)``: the longest prefix that fits ``k - h`` payload bits (``fit_payload``)."""
        h = self.h
        t, code = fit_payload(source, tokens, k - h, info, rows)
        frame = np.zeros(k, dtype=np.uint8)
        frame[:h] = (t >> np.arange(h - 1, -1, -1)) & 1
        frame[h : h + len(code)] = code
        return t, frame

    def read(self, frame: np.ndarray, L: int) -> tuple[int, int]:
        """``(T clipped to [0, L], header bits)`` of a received frame."""
        h = self.h
        return min(int(frame[:h].astype(np.int64) @ (1 << np.arange(h - 1, -1, -1, dtype=np.int64))), L), h


class HuffmanHeader:
    """T under a prefix-free code of its own distribution, then the range code in the bits left.

    The code is constriction's Huffman code (``constriction.symbol.huffman``) of ``p(t) = (c(t) + 1/2) / (N +
    (L + 1) / 2)`` over ``t = 0..L``, ``c`` the counts of T on training frames (``fit_counts``); T's codeword costs
    ``len(t)`` bits, about ``-log2 p(t)``, against the fixed header's ``ceil(log2(L + 1))``. The frame carries the
    longest prefix ``t`` for which ``len(t)`` bits and a range code of ``t`` tokens in ``k - len(t)`` bits fit.
    """

    def __init__(self, counts: np.ndarray) -> None:
        import constriction

        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 1 or len(counts) < 2 or (counts < 0).any():
            raise ValueError(f"T's counts must be >= 0 over 0..L, got {counts!r}")
        self.counts = counts
        p = (counts + 0.5) / (counts.sum() + 0.5 * len(counts))
        huffman = constriction.symbol.huffman
        self._encoder, self._decoder = huffman.EncoderHuffmanTree(p), huffman.DecoderHuffmanTree(p)
        self.codewords = []
        for t in range(len(counts)):
            enc = constriction.symbol.QueueEncoder()
            enc.encode_symbol(t, self._encoder)
            words, n = enc.get_compressed_and_bitrate()
            self.codewords.append(np.array([(int(words[i // 32]) >> (i % 32)) & 1 for i in range(n)], np.uint8))
        self.lengths = np.array([len(c) for c in self.codewords])
        self.key = ("huffman", counts.tobytes())

    @staticmethod
    def fit_counts(coder: FrameCoder, passages: np.ndarray, k: int, L: int) -> np.ndarray:
        """T's counts ``(L + 1,)`` over ``passages``, the frames coded with a nominal 2-bit header (``k - 2``
        payload bits: about what a coded T costs)."""
        return np.bincount([coder.frame(x, FixedHeader(0), k - 2)[0] for x in passages], minlength=L + 1)

    def fit(self, source: TokenSourceModel, tokens: np.ndarray, k: int, info: np.ndarray,
            rows: np.ndarray | None) -> tuple[int, np.ndarray]:
        """``(T, the k frame bits)``: the longest prefix whose codeword and range code fit ``k`` bits."""
        L = min(len(tokens), len(self.lengths) - 1)
        # no prefix of more information than the payload (plus a bit) fits: start below it and step down
        start = int(np.searchsorted(info[:L], k - self.lengths.min() + 1.0, side="right"))
        for t in range(start, -1, -1):
            budget = k - int(self.lengths[t])
            if budget < 0 or (t and info[t - 1] > budget + SLACK_BITS - 1.0):
                continue
            code = source.frame_code(tokens[:t], budget, _filler(tokens, budget), rows=rows)
            if code is not None:
                return t, np.concatenate([self.codewords[t], code]).astype(np.uint8)
        raise ValueError(f"no codeword of T fits a frame of {k} bits (the shortest has {self.lengths.min()})")

    def read(self, frame: np.ndarray, L: int) -> tuple[int, int]:
        """``(T clipped to [0, L], header bits)`` of a received frame (any bits decode to some T)."""
        import constriction

        bits = np.zeros(-(-max(len(frame), 64) // 32) * 32, dtype=np.int64)
        bits[: len(frame)] = frame
        words = (bits.reshape(-1, 32) << np.arange(32)).sum(axis=1).astype(np.uint32)
        t = int(constriction.symbol.QueueDecoder(words).decode_symbol(self._decoder))
        return min(t, L), int(self.lengths[t])


class FrameCoder:
    """Frames and decodes of the protocols sharing one source model (see the module docstring).

    A frame format is ``(header, k)``: a ``FixedHeader`` or ``HuffmanHeader`` and the frame's ``k`` bits.
    ``max_passages`` / ``max_decodes``: how many passages' frames and how many decodes are kept (0: none, every
    call computes afresh: the reference the memo is tested against). ``counts`` tallies the work done.
    """

    def __init__(self, source: TokenSourceModel, *, max_passages: int = 4096, max_decodes: int = 65536) -> None:
        self.source = source
        self.eager = source.kind == "lm"
        self.formats: dict[tuple, tuple[FixedHeader | HuffmanHeader, int]] = {}
        self.max_passages, self.max_decodes = int(max_passages), int(max_decodes)
        self._frames: OrderedDict[bytes, dict[tuple, tuple[int, np.ndarray]]] = OrderedDict()
        self._decodes: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.counts = {"passages_coded": 0, "frames_coded": 0, "decodes": 0, "decode_hits": 0}

    def register(self, header: FixedHeader | HuffmanHeader, k: int) -> tuple:
        """A frame format of the bank (an LM passage is coded in every one at its first miss); its key."""
        key = (header.key, int(k))
        self.formats.setdefault(key, (header, int(k)))
        return key

    # ---- frames ----------------------------------------------------------------------------------

    def frame(self, tokens: np.ndarray, header: FixedHeader | HuffmanHeader, k: int) -> tuple[int, np.ndarray]:
        """``(T, frame)``: the ``k`` bits (uint8) that carry the longest prefix of ``tokens (L,)`` that fits:
        the header stating T, then the range code (``header.fit``)."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        size = self.register(header, k)
        key = tokens.tobytes()
        kept = self._frames.get(key)
        if kept is not None:
            self._frames.move_to_end(key)
            if size in kept:
                return kept[size]
        sizes = [s for s in self.formats if kept is None or s not in kept] if self.eager else [size]
        coded = self._code(tokens, sizes)
        if self.max_passages > 0:
            if kept is None:
                kept = self._frames[key] = {}
                while len(self._frames) > self.max_passages:
                    self._frames.popitem(last=False)
            kept.update(coded)
        return coded[size]

    def _code(self, tokens: np.ndarray, sizes: list[tuple]) -> dict[tuple, tuple[int, np.ndarray]]:
        """Code one passage in every format of ``sizes``; put each frame's decode (prefix + fill) in the memo."""
        source, L = self.source, len(tokens)
        run = None
        if self.eager:  # one LM pass: the rows and every prefix's fill
            run = source.run(tokens)
            rows = run.rows
            info = np.cumsum(-np.log2(rows[np.arange(L), tokens]))
        else:
            rows = source.coding_rows(tokens)
            info = np.cumsum(-np.log2(source.token_probs(tokens[None, :])[0]))
        self.counts["passages_coded"] += 1
        out, fills = {}, {}
        for size in sizes:
            header, k = self.formats[size]
            t, frame = header.fit(source, tokens, k, info, rows)
            out[size] = (t, frame)
            self.counts["frames_coded"] += 1
            if t not in fills:
                fills[t] = run.fill(t) if run is not None else source.fill(tokens[:t], L)
            self._remember((*size, L, np.packbits(frame).tobytes()), fills[t])
        return out

    # ---- decodes ---------------------------------------------------------------------------------

    def decode(self, frame: np.ndarray, header: FixedHeader | HuffmanHeader, k: int, L: int) -> np.ndarray:
        """Received ``frame (k,)`` 0/1 -> token ids ``(L,)``: the header's ``T`` (clipped to [0, L]), up to ``T``
        tokens range-decoded from the bits after it (stopping on invalid data or past their count ``+
        SLACK_BITS`` bits of information), the rest filled with the model's guesses. Never raises; memoised."""
        frame = np.asarray(frame).astype(np.uint8)
        key = (header.key, int(k), int(L), np.packbits(frame).tobytes())
        kept = self._decodes.get(key)
        if kept is not None:
            self._decodes.move_to_end(key)
            self.counts["decode_hits"] += 1
            return kept.copy()
        T, n = header.read(frame, L)
        budget = max(k - n, 0)
        words = _bits_to_words(frame[n:k], -(-budget // _WORD) + 2)
        if self.eager:
            out = self.source.decode_fill(words, T, L, max_info_bits=budget + SLACK_BITS)
        else:
            out = self.source.fill(self.source.decode_words(words, T, max_info_bits=budget + SLACK_BITS), L)
        self.counts["decodes"] += 1
        self._remember(key, out)
        return out.copy()

    def _remember(self, key: tuple, ids: np.ndarray) -> None:
        if self.max_decodes <= 0:
            return
        self._decodes[key] = np.asarray(ids, dtype=np.int64)
        self._decodes.move_to_end(key)
        while len(self._decodes) > self.max_decodes:
            self._decodes.popitem(last=False)


def coder_of(source: TokenSourceModel) -> FrameCoder:
    """The ``FrameCoder`` of a source model (made on first use): every protocol sharing the model shares it."""
    coder = getattr(source, "_frame_coder", None)
    if coder is None:
        coder = source._frame_coder = FrameCoder(source)
    return coder


# ---- the LM a bank codes under ------------------------------------------------------------------


def open_lm(token_lm: Any, *, alpha: float, mix: float = 0.0):
    """An ``LMSourceModel`` (unfitted) from a token baseline checkpoint directory, or ``token_lm`` itself when it
    already is one (its alpha and mix must then be the bank's: ``SeparationProtocol`` checks them)."""
    from protocols.lm_source import LMSourceModel

    if isinstance(token_lm, LMSourceModel):
        return token_lm
    return LMSourceModel.from_checkpoint(Path(token_lm), alpha=alpha, mix=mix)


def check_lm(directory: str | Path, recorded: str | None, token_lm: Any, *, alpha: float, mix: float = 0.0):
    """The LM source a saved LM bank codes under: ``token_lm`` (a checkpoint directory or an ``LMSourceModel``),
    checked to be the LM whose ``weights_id`` the bank recorded.

    Raises:
        ValueError: no LM was given (the bank names the one it needs).
        DamagedFileError: another LM was given (its id and the recorded one named): the bank cannot decode
            under it; pass the recorded LM, or remove the bank and refit it for this one.
    """
    path = Path(directory) / "protocol.json"
    if token_lm is None:
        raise ValueError(f"the separation bank at {directory} codes under the token LM {recorded}: pass its "
                         "checkpoint (token_lm / --token-lm-checkpoint) to load it")
    source = open_lm(token_lm, alpha=alpha, mix=mix)
    if source.weights_id != recorded:
        raise DamagedFileError(path, f"the bank codes under the token LM {recorded}, not the one given "
                                     f"({token_lm!s}: {source.weights_id})",
                               f"pass the LM it was saved with, or remove the bank (rm -r {directory}) and refit it")
    return source
