"""Separation: entropy-coded token ids -> Sionna 5G LDPC / Polar -> Gray PAM, the separated digital link.

    ids (B, L) -> per message: [T: h bits][range code of tokens 0..T-1 under a token model, filler] = k bits
               -> CodedLink (5G LDPC | Polar, TB5GScrambler, Gray PAM of m bits per real use) -> (B, n)

The classic answer to the reconstruction task (the listener has no candidates and must output the L
token ids): compress the passage with an entropy coder under a token model fitted on training text,
then protect the compressed bits with a strong channel code at a rate and modulation chosen for the
SNR. Nothing here is a hand-written coder: the source coder is constriction's range coder
(``constriction.stream.queue.RangeEncoder`` / ``RangeDecoder`` with ``constriction.stream.model.Categorical``
models), the channel path is ``protocols.coded.CodedLink`` (Sionna's 5G encoders/decoders, scrambler and
mapper, exact APP demapping for the channel the receiver is told).

The config, the MCS menus and ``mcs_menu`` live in ``protocols.separation_config`` (re-exported here). The source
model and its range coder live in ``protocols.source_coding`` (``TokenSourceModel``: unigram or
bigram), or, with ``source_model="lm"``, in ``protocols.lm_source`` (``LMSourceModel``: range coding under the
token baseline LM's next-token law; the config's ``token_lm`` records the LM's ``weights_id`` and a saved bank
loads only under that LM). Frames and decodes are computed once and kept per source model
(``protocols.separation_frames.FrameCoder``, shared by every entry of a bank): a passage's frame at every size of
the bank from one LM pass, and a memo of decodes by received bits, seeded with the sent frames' decodes.

Frame (``k = round(rate n m)`` info bits of ``CodedLink(k, n, code, modulation)``):

- header: ``T``, the number of tokens in the frame, in ``h = ceil(log2(L + 1))`` bits (MSB first;
  ``header_bits`` may set more);
- payload, exactly ``k - h`` bits: a point of the interval that constriction's range code gives tokens
  ``0..T-1``; ``T`` is the longest prefix for which such a ``(k - h)``-bit point exists (the message is
  truncated, never dropped; ``T = 0`` when not even the first token fits).

Fitting the range code into exactly ``k - h`` payload bits (with a pseudo-random filler past the tokens, so
that the symbols' mean power stays 1): see ``protocols.source_coding``.

Decoding: ``CodedLink.receive`` -> k bits -> header ``T`` (clipped to [0, L]) -> decode up to ``T``
tokens with constriction. It never raises on a corrupted frame: if constriction reports invalid data,
or if the decoded tokens' information content exceeds the payload bits plus ``SLACK_BITS`` (the frame
has run out of bits: the encoder never sends such a prefix), decoding stops there. **A frame whose bits
are wrong decodes to whatever the entropy decoder reads from them: wrong tokens (roughly samples from
the model), counted wrong by token accuracy; nothing flags it** (the LDPC code has no CRC, and the
link does not expose the polar decoder's). Positions not recovered (``T..L-1`` of a good frame, and
those after a stop) are filled with the model's best guess (``TokenSourceModel.fill``; the LM's: its greedy
continuation of the decoded prefix for ``FILL_HORIZON`` positions, ``LMSourceModel.fill``): in unigram mode
its most likely token; in bigram mode, ``j`` positions after the last recovered token, the most likely
token of the bigram's ``j``-step marginal for ``j <= FILL_HORIZON`` (``j = 1``: the most likely
successor), then the unigram's most likely token (the marginal has converged to it by then). On held-out
text this guesses 17.6%, 10.7%, 8.8% of the first three positions right against 7-8% for the unigram's
best; a greedy successor chain cycles through frequent tokens and did worse (5.9% over 8 positions,
against 9.8%).

Rate adaptation is the experiment's job (oracle link adaptation): ``mcs_menu(n, ...)`` lists the
feasible (rate, modulation) configurations for a budget; an experiment fits one ``SeparationProtocol``
per configuration (sharing one fitted ``TokenSourceModel``) and reports, at each SNR, the best one's token
accuracy. ``separation_bound_tokens`` / ``separation_bound_accuracy`` give the separation bound at capacity.

Receivers: ``decode`` as above; ``decode_bound`` (the rate oracle's fast rule, never a trial's) knows the sent
ids: an intact frame gets its decode, a frame with any bit error the fill-only guess ``fill([], L)``; ``hard_score`` is minus the number of tokens where the decode and each
candidate differ; ``score`` is the base class's exact likelihood of the candidates' symbols.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from calm.files import DamagedFileError, atomic_write_text, read_json
from protocols.base import ChannelModel, Protocol
from protocols.bounds import separation_bound_accuracy, separation_bound_tokens
from protocols.coded import MODULATION_BITS
from protocols.saved import build_config
from protocols.separation_config import (
    FINE_RATES,
    HEADER_FIT_PASSAGES,
    MCS_MENUS,
    MCS_MODULATIONS,
    MCS_RATES,
    SEPARATION_SOURCES,
    SeparationProtocolConfig,
    _build_link,
    _fields,
    _t_counts,
    mcs_menu,
)
from protocols.separation_frames import SLACK_BITS, FixedHeader, HuffmanHeader, check_lm, coder_of
from protocols.source_coding import FILL_HORIZON, SOURCE_MODELS, TokenSourceModel

__all__ = [
    "BANK_FILE",
    "FILL_HORIZON",
    "FINE_RATES",
    "MCS_MENUS",
    "MCS_MODULATIONS",
    "MCS_RATES",
    "SEPARATION_SOURCES",
    "SLACK_BITS",
    "SOURCE_MODELS",
    "SeparationProtocol",
    "SeparationProtocolConfig",
    "TokenSourceModel",
    "fit_bank",
    "is_bank",
    "load_bank",
    "mcs_menu",
    "mcs_name",
    "save_bank",
    "separation_bound_accuracy",
    "separation_bound_tokens",
]



# ---- the protocol -------------------------------------------------------------------------------


class SeparationProtocol(Protocol):
    """The separated digital link: ``ids (B, L)`` -> range code -> 5G code -> Gray PAM ``(B, n)``.

    ``source``: an already fitted ``TokenSourceModel`` to share between protocols (an experiment fits one
    per MCS); it must match the config's vocab_size, source_model, alpha and bigram_lambda (and for the lm,
    ``token_lm``: the ``LMSourceModel``'s ``weights_id``, which it must be given). ``fit`` then keeps it and only
    records L. Every protocol on one source shares its ``FrameCoder`` (``self.coder``).
    """

    name = "separation"
    config_class = SeparationProtocolConfig
    decodes_tokens = True

    def __init__(self, config: SeparationProtocolConfig, source: TokenSourceModel | None = None) -> None:
        super().__init__()
        self.config = config
        #: coded bits per real channel use
        self.coded_bits_per_use = MODULATION_BITS[config.modulation]
        #: coded bits per message
        self.N = config.budget * self.coded_bits_per_use
        #: the Sionna bit path (shared by protocols of the same size); ValueError naming the budget when
        #: Sionna cannot build the code
        self.link = _build_link(config)
        #: information bits per frame
        self.k = self.link.k
        #: the code rate actually used, k / N
        self.actual_rate = self.k / self.N
        if source is not None:
            mine = (config.vocab_size, config.source_model, config.alpha, config.bigram_lambda)
            theirs = (source.vocab_size, source.kind, source.alpha, source.bigram_lambda)
            if config.source_model == "lm":
                from protocols.lm_source import DEFAULT_FLOOR

                mine += (config.token_lm, None, DEFAULT_FLOOR, config.lm_mix)
                theirs += (getattr(source, "weights_id", None), getattr(source, "first_token", None),
                           getattr(source, "floor", None), getattr(source, "mix", None))
            if mine != theirs:
                raise ValueError(f"the source model's (vocab_size, kind, alpha, bigram_lambda[, weights_id, "
                                 f"first_token, floor, mix]) {theirs} do not match the config's {mine}")
        elif config.source_model == "lm":
            raise ValueError(f"a separation protocol coding under the token LM {config.token_lm} needs that LM: "
                             "pass source=LMSourceModel(...) (or load it with token_lm=...)")
        self.source = source or TokenSourceModel(config.vocab_size, config.source_model, alpha=config.alpha,
                                                 bigram_lambda=config.bigram_lambda)
        #: frames and decodes kept for every protocol on this source (``protocols.separation_frames``)
        self.coder = coder_of(self.source)
        #: header_code huffman: T's counts on training frames (L + 1,), set by fit or load
        self.t_counts: np.ndarray | None = None
        self._header: FixedHeader | HuffmanHeader | None = None

    # ---- sizes -----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def channel_uses(self, L: int) -> int:
        return self.config.budget

    def bits_sent(self, L: int) -> int:
        """The ``k`` information bits of the frame (header, range code, zero padding)."""
        return self.k

    @property
    def header_bits(self) -> int:
        """Bits of the fixed header holding T: ``ceil(log2(L + 1))`` for the fitted L unless the config sets it
        (header_code huffman: 0, T's codeword is part of the payload and its length varies)."""
        L = self._require_fit()
        if self.config.header_code == "huffman":
            return 0
        return self.config.header_bits if self.config.header_bits is not None else math.ceil(math.log2(L + 1))

    @property
    def header(self) -> FixedHeader | HuffmanHeader:
        """How the frame states T (``protocols.separation_frames``)."""
        if self._header is None:
            if self.config.header_code == "huffman":
                if self.t_counts is None:
                    raise RuntimeError("the huffman header is not fitted: call fit(train_ids) or load(dir) first")
                self._header = HuffmanHeader(self.t_counts)
            else:
                self._header = FixedHeader(self.header_bits)
        return self._header

    @property
    def payload_bits(self) -> int:
        """Bits left for the range code: ``k - header_bits``."""
        return self.k - self.header_bits

    # ---- fitting ---------------------------------------------------------------------------------

    def fit(self, train_ids: np.ndarray) -> SeparationProtocol:
        """Fit the token model on training passages ``(N, L)`` (unless one was given) and record L."""
        ids = self._check_train(train_ids)
        L = int(ids.shape[1])
        h = self.config.header_bits if self.config.header_bits is not None else math.ceil(math.log2(L + 1))
        if h < math.ceil(math.log2(L + 1)):
            raise ValueError(f"header_bits={h} cannot count up to L={L} tokens; need >= {math.ceil(math.log2(L + 1))}")
        if h > self.k:
            raise ValueError(f"separation protocol: budget={self.config.budget} channel uses carry k={self.k} info "
                             f"bits, fewer than the {h}-bit header")
        if not self.source.fitted:
            self.source.fit(ids)
        self.seq_len = L
        if self.config.header_code == "huffman" and self.t_counts is None:  # T's law on a sample of training frames
            rows = np.random.default_rng(0).permutation(len(ids))[:HEADER_FIT_PASSAGES]
            self.t_counts = HuffmanHeader.fit_counts(self.coder, ids[np.sort(rows)], self.k, L)
        self.coder.register(self.header, self.k)
        return self

    def entropy_rate(self, passages: np.ndarray) -> dict[str, float]:
        """Bits per token on held-out ``passages (N, L)``.

        ``entropy``: the model's cross-entropy (an ideal coder's cost); ``coded``: the shortest constriction
        code that decodes (what a frame spends), ``coded_words``: constriction's raw word-aligned output.
        """
        self._require_fit()
        rate = self.source.coded_rate(passages)
        return {"entropy": self.source.entropy_rate(passages), "coded": rate["bits_per_token"],
                "coded_words": rate["words_bits_per_token"]}

    # ---- the frame -------------------------------------------------------------------------------

    def _frames(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``(B, k)`` uint8 and the tokens each carries ``(B,)`` for validated ids (kept by the coder)."""
        B = ids.shape[0]
        frames = np.zeros((B, self.k), dtype=np.uint8)
        counts = np.zeros(B, dtype=np.int64)
        for i in range(B):
            counts[i], frames[i] = self.coder.frame(ids[i], self.header, self.k)
        return frames, counts

    def tokens_in_frame(self, ids: np.ndarray) -> np.ndarray:
        """``T`` per message ``(B,)``: how many leading tokens of each passage its frame carries."""
        return self._frames(self._check_ids(ids, "ids"))[1]

    def frames(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The frames of ``ids (B, L)``: ``(B, k)`` uint8 info bits (``link.modulate`` of them is ``encode``)
        and ``T (B,)``, the tokens each carries; ``decode`` is ``decode_frames(link.receive(...))``."""
        return self._frames(self._check_ids(ids, "ids"))

    def _encode(self, ids: np.ndarray) -> np.ndarray:
        return self.link.modulate(self._frames(ids)[0])

    def decode_frames(self, frames: np.ndarray) -> np.ndarray:
        """Received frames ``(B, k)`` 0/1 -> token ids ``(B, L)`` (see the module docstring); never raises."""
        L = self._require_fit()
        frames = np.asarray(frames).astype(np.uint8)
        out = np.empty((frames.shape[0], L), dtype=np.int64)
        for i in range(frames.shape[0]):
            out[i] = self.coder.decode(frames[i], self.header, self.k, L)
        return out

    def decode_bound(self, symbols: np.ndarray, sent_ids: np.ndarray, *, channel: ChannelModel | None = None,
                     gain: np.ndarray | None = None) -> np.ndarray:
        """The rate oracle's fast rule (never a trial's receiver): ``symbols (B, n)`` received for ``sent_ids
        (B, L)`` -> ids ``(B, L)``. A frame received without a bit error gets its decode (the sent prefix plus the
        fill, from the coder's memo); a frame with any bit error the fill-only guess ``fill([], L)`` instead of
        what the decoder would read from it (no LM run: a guess of that frame's accuracy, ``docs/experiments.md``
        measures what it changes)."""
        y = self._check_symbols(symbols)
        gain = self._check_gain(gain, y.shape)
        ids = self._check_ids(sent_ids, "sent_ids")
        if ids.shape[0] != y.shape[0]:
            raise ValueError(f"sent_ids hold {ids.shape[0]} passages for {y.shape[0]} received messages")
        L = self._require_fit()
        received = np.asarray(self.link.receive(y, channel, gain)).astype(np.uint8)
        sent, _ = self._frames(ids)
        intact = (received == sent).all(axis=1)
        out = np.broadcast_to(self.source.fill(np.zeros(0, dtype=np.int64), L), (len(ids), L)).copy()
        if intact.any():
            out[intact] = self.decode_frames(sent[intact])
        return out

    def _decode(self, symbols: np.ndarray, channel: ChannelModel | None, gain: np.ndarray) -> np.ndarray:
        return self.decode_frames(self.link.receive(symbols, channel, gain))

    def _hard_score(self, symbols, candidates, channel, gain) -> np.ndarray:
        decoded = self._decode(symbols, channel, gain)[:, None, :]  # (B, 1, L)
        return -(candidates != decoded).sum(axis=-1).astype(np.float64)

    # ---- persistence -----------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return _fields(self.config)

    @classmethod
    def load(cls, directory: str | Path, token_lm: Any = None) -> SeparationProtocol:
        """Load a protocol written by ``save``; an lm one needs ``token_lm`` (the token baseline's checkpoint
        directory or an ``LMSourceModel``), checked to be the LM it was saved with (``separation_frames.check_lm``:
        ValueError when missing, DamagedFileError naming both LMs when another)."""
        meta = cls.read_config(directory)
        if meta["protocol"] != cls.name:
            raise ValueError(f"{directory} holds a {meta['protocol']!r} protocol, not {cls.name!r}")
        config = build_config(directory, cls.config_class, meta["config"])
        source = None
        if config.source_model == "lm":
            source = check_lm(directory, config.token_lm, token_lm, alpha=config.alpha, mix=config.lm_mix)
        proto = cls(config, source=source)
        proto._load_stats(directory, meta["seq_len"])
        proto.coder.register(proto.header, proto.k)
        return proto

    def _stats(self) -> dict[str, np.ndarray]:
        stats = dict(self.source.stats())
        stats["code_size"] = np.array([self.k, self.N, self.coded_bits_per_use], dtype=np.int64)
        if self.config.header_code == "huffman":
            stats["t_counts"] = np.asarray(self.t_counts, dtype=np.int64)
        return stats

    def _set_stats(self, stats: dict[str, np.ndarray]) -> None:
        mine = np.array([self.k, self.N, self.coded_bits_per_use], dtype=np.int64)
        if not np.array_equal(stats["code_size"], mine):
            raise ValueError(f"the saved separation protocol's (k, N, m) {stats['code_size'].tolist()} do not "
                             f"match its config's {mine.tolist()}")
        self.source.set_stats(stats)
        if self.config.header_code == "huffman":
            self.t_counts = _t_counts(stats["t_counts"])


# ---- a bank: the MCS menu of one budget, one shared source model ---------------------------------

BANK_FILE = "separation_bank.json"


def mcs_name(config: SeparationProtocolConfig) -> str:
    """A short name of a menu entry, e.g. ``ldpc-r0.75-16qam``."""
    return f"{config.code}-r{config.rate:.3g}-{config.modulation}"


def save_bank(protocols: list[SeparationProtocol], directory: str | Path) -> None:
    """Save the menu of one budget: the first protocol whole (with the source model), the others' configs.

    Every protocol must share the first one's fitted source model (``SeparationProtocol(cfg, source=...)``):
    a bank holds the model once, not once per entry (a bigram over 8,192 ids is megabytes).
    """
    if not protocols:
        raise ValueError("a separation bank needs at least one protocol")
    first = protocols[0]
    if any(p.source is not first.source for p in protocols):
        raise ValueError("every protocol of a separation bank must share one fitted source model")
    directory = Path(directory)
    first.save(directory)
    entries = {mcs_name(p.config): _fields(p.config) for p in protocols}
    meta: dict[str, Any] = {"seq_len": first.seq_len, "entries": entries}
    counts = {mcs_name(p.config): p.t_counts.tolist() for p in protocols if p.config.header_code == "huffman"}
    if counts:  # each entry's T counts (its huffman header)
        meta["t_counts"] = counts
    atomic_write_text(directory / BANK_FILE, json.dumps(meta, indent=1) + "\n")


def is_bank(directory: str | Path) -> bool:
    """Whether ``directory`` holds a bank written by ``save_bank``."""
    return (Path(directory) / BANK_FILE).is_file()


def load_bank(directory: str | Path, token_lm: Any = None) -> dict[str, SeparationProtocol]:
    """The bank's protocols by ``mcs_name``, all sharing the one saved source model (and its ``FrameCoder``, every
    entry's frame size registered). ``token_lm``: an lm bank's LM (``SeparationProtocol.load``).

    Raises:
        ValueError: an lm bank and no ``token_lm``.
        DamagedFileError: a damaged protocol (see ``Protocol.load``) or bank file: not JSON, no entries, a
            seq_len other than the saved protocol's, or an entry that is not a buildable config.
    """
    directory = Path(directory)
    path = directory / BANK_FILE
    first = SeparationProtocol.load(directory, token_lm=token_lm)
    meta = read_json(path, what="separation bank")
    entries = meta.get("entries")
    if not isinstance(entries, dict) or not entries:
        raise DamagedFileError(path, f"the bank's 'entries' hold {entries!r}, not its MCS configs")
    if meta.get("seq_len") != first.seq_len:
        raise DamagedFileError(path, f"the bank's seq_len {meta.get('seq_len')!r} is not the saved protocol's "
                                     f"{first.seq_len}")
    out = {}
    for name, fields in entries.items():
        config = build_config(directory, SeparationProtocolConfig, fields, file=BANK_FILE)
        try:
            proto = SeparationProtocol(config, source=first.source)
        except ValueError as exc:  # it was built when the bank was saved
            raise DamagedFileError(path, f"the entry {name!r} cannot be built: {exc}") from None
        proto.seq_len = first.seq_len
        if config.header_code == "huffman":
            try:
                proto.t_counts = _t_counts((meta.get("t_counts") or {})[name])
            except (KeyError, TypeError, ValueError) as exc:
                raise DamagedFileError(path, f"the entry {name!r} has no usable T counts: {exc}") from None
        proto.coder.register(proto.header, proto.k)
        out[name] = proto
    return out


def fit_bank(configs: list[SeparationProtocolConfig], source: TokenSourceModel,
             train_ids: np.ndarray) -> list[SeparationProtocol]:
    """``SeparationProtocol(c, source=source).fit(train_ids)`` for every config, sharing one source model; with
    huffman headers the frames their T counts come from are coded for every entry at once (one LM pass per
    passage for an LM source)."""
    coder = coder_of(source)
    for c in configs:
        if c.header_code == "huffman":
            coder.register(FixedHeader(0), c.info_bits() - 2)
    return [SeparationProtocol(c, source=source).fit(train_ids) for c in configs]
