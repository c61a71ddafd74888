"""The separation link's settings: ``SeparationProtocolConfig``, the 5G MCS menus and ``mcs_menu``.

``protocols.separation`` (the protocol and its bank) imports and re-exports all of it; kept apart so that the menu
and the config, which need no protocol, stay out of that module's length.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from protocols.base import check_budget
from protocols.coded import MODULATION_BITS, CodedLink, check_link_fields
from protocols.source_coding import SOURCE_MODELS, _check_alpha, _check_lambda, _is_int

__all__ = ["FINE_RATES", "HEADER_FIT_PASSAGES", "MCS_MENUS", "MCS_MODULATIONS", "MCS_RATES", "SEPARATION_SOURCES",
           "SeparationProtocolConfig", "mcs_menu"]

#: code rates of the link-adaptation menu (5G-like MCS rates)
MCS_RATES = (1 / 5, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 5 / 6, 0.9)
#: the finer menu: every 0.05 from 0.2 to 0.9 and the rates above (5G NR's MCS tables end at code rate 948/1024 =
#: 0.926; Sionna builds LDPC codes up to 0.95 but warns above 0.926)
FINE_RATES = tuple(sorted({round(0.2 + 0.05 * i, 2) for i in range(15)} | set(MCS_RATES)))
#: the rate menus by name (``mcs_menu(..., rates=MCS_MENUS[name])``)
MCS_MENUS = {"standard": MCS_RATES, "fine": FINE_RATES}
#: modulations of the link-adaptation menu (1, 2, 3 coded bits per real use)
MCS_MODULATIONS = ("bpsk", "16qam", "64qam")
#: the source models a separation link codes under: the token models and the token baseline LM
SEPARATION_SOURCES = (*SOURCE_MODELS, "lm")
#: training passages (a seeded sample) a huffman header's T counts come from
HEADER_FIT_PASSAGES = 512


@dataclass
class SeparationProtocolConfig:
    """Settings of the separation protocol (entropy coding -> 5G LDPC / Polar -> Gray PAM)."""

    vocab_size: int
    """number of token ids V (>= 2)"""
    budget: int
    """channel uses n per message (required, >= 1): N = n m coded bits"""
    source_model: Literal["unigram", "bigram", "lm"] = "bigram"
    """token model of the entropy coder: unigram, bigram interpolated with the unigram, or lm (the token baseline
    LM named by token_lm; the first token under the unigram)"""
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
    token_lm: str | None = None
    """source_model lm: the LM's ``weights_id`` (``sha256:<16 hex>`` of its tensors); None for the token models"""
    lm_mix: float = 0.0
    """source_model lm: the bigram's weight in the LM's rows, in [0, 1) (0: the LM alone; ``LMSourceModel``'s mix)"""
    header_code: Literal["fixed", "huffman"] = "fixed"
    """how a frame states T: fixed (header_bits bits) or huffman (a prefix-free code of T's distribution on training
    frames, kept with the protocol: ``separation_frames.HuffmanHeader``)"""

    def __post_init__(self) -> None:
        if not _is_int(self.vocab_size) or self.vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {self.vocab_size!r}")
        self.vocab_size = int(self.vocab_size)
        if self.budget is None:
            raise ValueError("budget (channel uses n) must be set for the separation protocol: an integer >= 1")
        self.budget = check_budget(self.budget)
        if self.source_model not in SEPARATION_SOURCES:
            raise ValueError(f"source_model must be one of {', '.join(SEPARATION_SOURCES)}, got {self.source_model!r}")
        if isinstance(self.lm_mix, bool) or not isinstance(self.lm_mix, (int, float)) or not 0 <= self.lm_mix < 1 or (
                self.lm_mix and self.source_model != "lm"):
            raise ValueError(f"lm_mix must be a number in [0, 1), and 0 unless source_model is lm, got {self.lm_mix!r}")
        self.lm_mix = float(self.lm_mix)
        if (self.source_model == "lm") != isinstance(self.token_lm, str):
            raise ValueError(f"token_lm must name the LM's weights_id exactly when source_model is lm, got "
                             f"source_model={self.source_model!r}, token_lm={self.token_lm!r}")
        check_link_fields(self)
        _check_alpha(self.alpha)
        self.alpha = float(self.alpha)
        _check_lambda(self.bigram_lambda)
        if self.header_code not in ("fixed", "huffman"):
            raise ValueError(f"header_code must be fixed or huffman, got {self.header_code!r}")
        if self.header_code == "huffman" and self.header_bits is not None:
            raise ValueError(f"header_bits sizes the fixed header: None with header_code huffman, got {self.header_bits}")
        if self.header_bits is not None:
            if not _is_int(self.header_bits) or not 0 <= self.header_bits <= 32:
                raise ValueError(f"header_bits must be None or an integer in [0, 32], got {self.header_bits!r}")
            self.header_bits = int(self.header_bits)

    def info_bits(self) -> int:
        """``k = round(rate n m)``: the frame's information bits."""
        return int(round(self.rate * self.budget * MODULATION_BITS[self.modulation]))


def _fields(config: SeparationProtocolConfig) -> dict[str, Any]:
    """The config as saved: every field, less ``token_lm`` where it is None, ``lm_mix`` where 0 and ``header_code`` where fixed
    (a token model's saved config with the fixed header is the one written before the fields existed)."""
    fields = dataclasses.asdict(config)
    if fields["token_lm"] is None:
        del fields["token_lm"]
    if fields["lm_mix"] == 0.0:
        del fields["lm_mix"]
    if fields["header_code"] == "fixed":
        del fields["header_code"]
    return fields


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


def _t_counts(values: Any) -> np.ndarray:
    """T's counts, checked: non-negative integers over 0..L (ValueError otherwise)."""
    counts = np.asarray(values)
    if counts.ndim != 1 or len(counts) < 2 or not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise ValueError(f"T's counts must be integers >= 0 over 0..L, got {values!r}")
    return counts.astype(np.int64)


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

BANK_FILE = "separation_bank.json"
