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

The source model and its range coder live in ``protocols.source_coding`` (``TokenSourceModel``).

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
those after a stop) are filled with the model's best guess (``TokenSourceModel.fill``): in unigram mode
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

Receivers: ``decode`` as above; ``hard_score`` is minus the number of tokens where the decode and each
candidate differ; ``score`` is the base class's exact likelihood of the candidates' symbols.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from calm.files import DamagedFileError, atomic_write_text, read_json
from protocols.base import ChannelModel, Protocol, check_budget
from protocols.coded import MODULATION_BITS, CodedLink, check_link_fields
from protocols.saved import build_config
from protocols.source_coding import (
    _WORD,
    FILL_HORIZON,
    SOURCE_MODELS,
    TokenSourceModel,
    _bits_to_words,
    _check_alpha,
    _check_lambda,
    _filler,
    _is_int,
)

__all__ = [
    "MCS_MODULATIONS",
    "MCS_RATES",
    "FILL_HORIZON",
    "SLACK_BITS",
    "SOURCE_MODELS",
    "SeparationProtocol",
    "SeparationProtocolConfig",
    "TokenSourceModel",
    "mcs_menu",
    "separation_bound_accuracy",
    "separation_bound_tokens",
]

#: code rates of the link-adaptation menu (5G-like MCS rates)
MCS_RATES = (1 / 5, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 5 / 6, 0.9)
#: modulations of the link-adaptation menu (1, 2, 3 coded bits per real use)
MCS_MODULATIONS = ("bpsk", "16qam", "64qam")
#: decoded tokens may carry at most this many bits of information beyond the payload before the
#: decoder concludes that the frame has run out of bits (the encoder keeps a bit of margin below it)
SLACK_BITS = 16.0


# ---- the protocol -------------------------------------------------------------------------------


@dataclass
class SeparationProtocolConfig:
    """Settings of the separation protocol (entropy coding -> 5G LDPC / Polar -> Gray PAM)."""

    vocab_size: int
    """number of token ids V (>= 2)"""
    budget: int
    """channel uses n per message (required, >= 1): N = n m coded bits"""
    source_model: Literal["unigram", "bigram"] = "bigram"
    """token model of the entropy coder: unigram, or bigram interpolated with the unigram"""
    code: Literal["ldpc", "polar"] = "ldpc"
    """channel code: 5G NR LDPC (BP decoding) or 5G NR uplink polar (CRC-aided SCL)"""
    rate: float = 0.5
    """code rate r in (0, 1): k = round(r n m) info bits per frame"""
    modulation: Literal["bpsk", "qpsk", "16qam", "64qam"] = "bpsk"
    """bpsk / qpsk: 1 coded bit per real use; 16qam: 2 (4-PAM); 64qam: 3 (8-PAM), Gray-labelled"""
    alpha: float = 0.5
    """add-alpha smoothing of the unigram counts (> 0: every token id stays codable)"""
    bigram_lambda: float | None = None
    """bigram interpolation weight: None is Witten-Bell (per context), a number in [0, 1] fixes it"""
    header_bits: int | None = None
    """bits of the header holding T; None: ceil(log2(L + 1)) for the fitted L (a larger value is allowed)"""
    bp_iterations: int = 20
    """belief-propagation iterations of the LDPC decoder (>= 1)"""
    list_size: int = 8
    """list size of the polar SCL decoder (a power of two >= 1)"""

    def __post_init__(self) -> None:
        if not _is_int(self.vocab_size) or self.vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {self.vocab_size!r}")
        self.vocab_size = int(self.vocab_size)
        if self.budget is None:
            raise ValueError("budget (channel uses n) must be set for the separation protocol: an integer >= 1")
        self.budget = check_budget(self.budget)
        if self.source_model not in SOURCE_MODELS:
            raise ValueError(f"source_model must be one of {', '.join(SOURCE_MODELS)}, got {self.source_model!r}")
        check_link_fields(self)
        _check_alpha(self.alpha)
        self.alpha = float(self.alpha)
        _check_lambda(self.bigram_lambda)
        if self.header_bits is not None:
            if not _is_int(self.header_bits) or not 0 <= self.header_bits <= 32:
                raise ValueError(f"header_bits must be None or an integer in [0, 32], got {self.header_bits!r}")
            self.header_bits = int(self.header_bits)

    def info_bits(self) -> int:
        """``k = round(rate n m)``: the frame's information bits."""
        return int(round(self.rate * self.budget * MODULATION_BITS[self.modulation]))


@functools.lru_cache(maxsize=256)
def _link(k: int, n: int, code: str, modulation: str, bp_iterations: int, list_size: int) -> CodedLink:
    """A CodedLink, built once per size (the Sionna blocks are stateless between calls)."""
    return CodedLink(k, n, code=code, modulation=modulation, bp_iterations=bp_iterations, list_size=list_size)


def _build_link(config: SeparationProtocolConfig) -> CodedLink:
    try:
        return _link(config.info_bits(), config.budget, config.code, config.modulation,
                     int(config.bp_iterations), int(config.list_size))
    except ValueError as err:
        msg = str(err).removeprefix("coded protocol: ")
        raise ValueError(f"separation protocol: {msg}") from err


class SeparationProtocol(Protocol):
    """The separated digital link: ``ids (B, L)`` -> range code -> 5G code -> Gray PAM ``(B, n)``.

    ``source``: an already fitted ``TokenSourceModel`` to share between protocols (an experiment fits one
    per MCS); it must match the config's vocab_size, source_model, alpha and bigram_lambda. ``fit`` then
    keeps it and only records L.
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
            if mine != theirs:
                raise ValueError(f"the source model's (vocab_size, kind, alpha, bigram_lambda) {theirs} do not "
                                 f"match the config's {mine}")
        self.source = source or TokenSourceModel(config.vocab_size, config.source_model, alpha=config.alpha,
                                                 bigram_lambda=config.bigram_lambda)

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
        """Bits of the header holding T: ``ceil(log2(L + 1))`` for the fitted L unless the config sets it."""
        L = self._require_fit()
        return self.config.header_bits if self.config.header_bits is not None else math.ceil(math.log2(L + 1))

    @property
    def payload_bits(self) -> int:
        """Bits left for the range code: ``k - header_bits``."""
        return self.k - self.header_bits

    def _n_words(self) -> int:
        return -(-self.payload_bits // _WORD) + 2

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

    def _payload(self, tokens: np.ndarray) -> tuple[int, np.ndarray]:
        """The longest prefix of ``tokens (L,)`` that fits the payload -> (T, the ``payload_bits`` bits)."""
        budget = self.payload_bits
        info = np.cumsum(-np.log2(self.source.token_probs(tokens[None, :])[0]))
        # the decoder stops past budget + SLACK_BITS: never send a prefix near that line
        limit = int(np.searchsorted(info, budget + SLACK_BITS - 1.0, side="right"))
        t = min(limit, int(np.searchsorted(info, budget, side="right")))
        rows = self.source.coding_rows(tokens)
        filler = _filler(tokens, budget)

        def fits(t: int) -> np.ndarray | None:
            return self.source.frame_code(tokens[:t], budget, filler, rows=rows)

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

    def _frames(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``(B, k)`` uint8 and the tokens each carries ``(B,)`` for validated ids."""
        B = ids.shape[0]
        h = self.header_bits
        frames = np.zeros((B, self.k), dtype=np.uint8)
        counts = np.zeros(B, dtype=np.int64)
        shifts = np.arange(h - 1, -1, -1)
        for i in range(B):
            t, code = self._payload(ids[i])
            counts[i] = t
            frames[i, :h] = (t >> shifts) & 1
            frames[i, h : h + len(code)] = code
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
        h, budget = self.header_bits, self.payload_bits
        frames = np.asarray(frames).astype(np.uint8)
        weights = 1 << np.arange(h - 1, -1, -1, dtype=np.int64)
        T = np.minimum(frames[:, :h].astype(np.int64) @ weights, L)
        out = np.empty((frames.shape[0], L), dtype=np.int64)
        n_words = self._n_words()
        for i in range(frames.shape[0]):
            words = _bits_to_words(frames[i, h:], n_words)
            got = self.source.decode_words(words, int(T[i]), max_info_bits=budget + SLACK_BITS)
            out[i] = self.source.fill(got, L)
        return out

    def _decode(self, symbols: np.ndarray, channel: ChannelModel | None, gain: np.ndarray) -> np.ndarray:
        return self.decode_frames(self.link.receive(symbols, channel, gain))

    def _hard_score(self, symbols, candidates, channel, gain) -> np.ndarray:
        decoded = self._decode(symbols, channel, gain)[:, None, :]  # (B, 1, L)
        return -(candidates != decoded).sum(axis=-1).astype(np.float64)

    # ---- persistence -----------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def _stats(self) -> dict[str, np.ndarray]:
        stats = dict(self.source.stats())
        stats["code_size"] = np.array([self.k, self.N, self.coded_bits_per_use], dtype=np.int64)
        return stats

    def _set_stats(self, stats: dict[str, np.ndarray]) -> None:
        mine = np.array([self.k, self.N, self.coded_bits_per_use], dtype=np.int64)
        if not np.array_equal(stats["code_size"], mine):
            raise ValueError(f"the saved separation protocol's (k, N, m) {stats['code_size'].tolist()} do not "
                             f"match its config's {mine.tolist()}")
        self.source.set_stats(stats)


# ---- link adaptation and bounds -----------------------------------------------------------------


def mcs_menu(n: int, *, vocab_size: int, source_model: str, code: str = "ldpc",
             rates: tuple[float, ...] = MCS_RATES, modulations: tuple[str, ...] = MCS_MODULATIONS,
             **config: Any) -> list[SeparationProtocolConfig]:
    """The feasible (rate, modulation) configurations for a budget of ``n`` channel uses.

    One ``SeparationProtocolConfig`` per (rate, modulation) of the menu whose 5G code Sionna can build
    for ``k = round(rate n m)`` and ``N = n m`` (others are skipped; so are repeats of an earlier entry's
    (k, modulation), which would be the same protocol). ``config`` adds other fields (alpha, ...).

    Oracle link adaptation is the experiment's job: fit one ``SeparationProtocol`` per entry (sharing one
    fitted ``TokenSourceModel``), evaluate each at every SNR, and report the best one's token accuracy.
    Entries may carry no token at all for tiny budgets (a header alone); they are still listed.
    """
    out, seen = [], set()
    for modulation in modulations:
        for rate in rates:
            cfg = SeparationProtocolConfig(vocab_size=vocab_size, budget=n, source_model=source_model, code=code,
                                           rate=rate, modulation=modulation, **config)
            key = (cfg.info_bits(), modulation)
            if key in seen:
                continue
            try:
                _build_link(cfg)
            except ValueError:
                continue
            seen.add(key)
            out.append(cfg)
    return out


def separation_bound_tokens(capacity_bits: Any, entropy_bits_per_token: Any, L: int) -> Any:
    """Tokens a separated scheme can deliver at capacity: ``min(L, capacity / H)`` (a float).

    ``capacity_bits``: the channel's capacity over the message's n uses (e.g. ``n * channel.capacity_per_use()``);
    ``entropy_bits_per_token``: the best source model's entropy rate H (bits per token, held out). Lossless
    delivery of a prefix at rate H over a channel of capacity C: the most tokens source-channel separation
    can promise (infinitely long blocks; a finite frame, a worse model or an imperfect code deliver fewer).
    Arrays broadcast; a scalar in gives a float out.
    """
    C = np.asarray(capacity_bits, dtype=np.float64)
    H = np.asarray(entropy_bits_per_token, dtype=np.float64)
    if not (L >= 1 and _is_int(L)):
        raise ValueError(f"L must be an integer >= 1, got {L!r}")
    if (C < 0).any() or np.isnan(C).any():
        raise ValueError("capacity_bits must be >= 0")
    if (H <= 0).any() or not np.isfinite(H).all():
        raise ValueError("entropy_bits_per_token must be finite and > 0")
    out = np.minimum(float(L), C / H)
    return float(out) if out.ndim == 0 else out


def separation_bound_accuracy(capacity_bits: Any, entropy_bits_per_token: Any, L: int,
                              fill_accuracy: float = 0.0) -> Any:
    """Token accuracy of the separation bound: ``(T + (L - T) fill_accuracy) / L``, ``T = separation_bound_tokens``.

    ``fill_accuracy``: the accuracy of guessing an undelivered token (e.g. the unigram's most likely token's
    frequency on held-out text); 0 counts undelivered tokens wrong. This bounds separated lossless coding
    of a prefix, not every scheme: a joint (or lossy) scheme may deliver a higher accuracy.
    """
    if not 0 <= fill_accuracy <= 1:
        raise ValueError(f"fill_accuracy must be in [0, 1], got {fill_accuracy!r}")
    T = separation_bound_tokens(capacity_bits, entropy_bits_per_token, L)
    return (T + (L - T) * fill_accuracy) / L


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
    entries = {mcs_name(p.config): dataclasses.asdict(p.config) for p in protocols}
    atomic_write_text(directory / BANK_FILE, json.dumps({"seq_len": first.seq_len, "entries": entries}, indent=1) + "\n")


def is_bank(directory: str | Path) -> bool:
    """Whether ``directory`` holds a bank written by ``save_bank``."""
    return (Path(directory) / BANK_FILE).is_file()


def load_bank(directory: str | Path) -> dict[str, SeparationProtocol]:
    """The bank's protocols by ``mcs_name``, all sharing the one saved source model.

    Raises:
        DamagedFileError: a damaged protocol (see ``Protocol.load``) or bank file: not JSON, no entries, a
            seq_len other than the saved protocol's, or an entry that is not a buildable config.
    """
    directory = Path(directory)
    path = directory / BANK_FILE
    first = SeparationProtocol.load(directory)
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
        out[name] = proto
    return out
