"""Fitting the protocols of the token-reconstruction experiments (reconstruction, alignment, relay, broadcast).

``fit_protocols(cfg, checkpoint, protocols_dir, protocols=..., budgets=...)`` fits (or reloads) every
protocol at every budget n on one autoencoder's training passages and draws the held-out passages the
trials play. A separation directory is a *bank*: its whole 5G (code, rate, modulation) menu, from which
``pick_best`` makes the oracle's choice (what link adaptation approximates). ``separation-lm`` is the same link
coding under the token baseline LM (``protocols.lm_source``; banks ``separation-lm@<n>``, which record the LM's
weights id and load only under it); the ``uncoded-tokens`` fill stays the bigram's. ``game_seed`` seeds one env
step so that every protocol sees the same passages and noise.

The config ``cfg`` is any experiment config with the fields used here: ``passage_length``, ``corpus``,
``fit_passages``, ``num_passages``, ``ae_seed``, ``source_model``, ``separation_codes``, optionally
``separation_menu`` (the rate menu, ``protocols.separation.MCS_MENUS``; default ``standard``),
``separation_header`` (fixed or huffman) and ``separation_lm_mix`` (the bigram's weight in separation-lm's rows)
(and, for jscc,
``channels``, ``erasure_p`` and the jscc settings of ``experiments.reconstruction.Config``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from calm.checkpoint import CheckpointError, load_pretrained
from calm.corpus import SPLITS
from calm.data import load_token_ids, make_passages
from calm.files import DamagedFileError
from experiments.common.models import ensure_jscc, ensure_lm_jscc
from experiments.common.sweep import channel_family, make_channel
from protocols import load_protocol, make_protocol
from protocols.jscc import JSCCProtocol, JSCCProtocolConfig
from protocols.latent import flat_means
from protocols.lm_jscc import LMJSCCProtocol
from protocols.separation import (
    MCS_MENUS,
    TokenSourceModel,
    fit_bank,
    load_bank,
    mcs_menu,
    save_bank,
)
from protocols.token import UncodedTokenProtocol, UncodedTokenProtocolConfig

__all__ = ["LM_JSCC_PROTOCOLS", "PRIOR_BASE", "PRIOR_PROTOCOLS", "bag_features", "calm_features", "corpus_passages",
           "fit_or_load", "fit_protocols", "game_passages",
           "game_seed",
           "load_saved", "open_autoencoder", "pick_best"]

#: the LM-prior listeners on a base protocol's symbols: protocol name -> protocols.prior rule
PRIOR_PROTOCOLS = {"vector-prior": "map", "vector-snap": "snap", "uncoded-tokens-prior": "token"}
#: the LM-JSCC protocols (``protocols.lm_jscc``): one adapter per channel family and n (agent keys
#: ``lm-jscc-<family>@<n>``), and the noiseless ceiling (trained at 60 dB, AWGN, key ``lm-jscc-noiseless@<n>``)
LM_JSCC_PROTOCOLS = ("lm-jscc", "lm-jscc-noiseless")
#: the protocol whose symbols each LM-prior listener decodes
PRIOR_BASE = {"vector-prior": "vector", "vector-snap": "vector", "uncoded-tokens-prior": "uncoded-tokens"}


def game_seed(seed: int, step: int, *, salt: int | None = 7) -> int:
    """Seed of env step ``step`` of a trial: the same passages and noise for every protocol, channel and sigma.
    ``salt=None``: the referential game's seeds (drawn before the salt existed; kept so its rows reproduce)."""
    return int(np.random.SeedSequence([seed, step] if salt is None else [seed, step, salt]).generate_state(1)[0])


def open_autoencoder(checkpoint: Path, passage_length: int):
    """``(model, tokenizer)`` of the autoencoder checkpoint, checked to split passages of ``passage_length``
    tokens into whole chunks."""
    model, tok = load_pretrained(checkpoint, expect="autoencoder")
    if passage_length % model.config.K:
        raise ValueError(f"passage_length must be a multiple of the autoencoder's K={model.config.K}, "
                         f"got {passage_length}")
    return model, tok


def calm_features(model: Any, passages: np.ndarray) -> np.ndarray:
    """(N, L) ids -> (N, L/K * l) float32: the frozen autoencoder's latent means of each chunk, flattened."""
    return flat_means(model, passages, batch_size=256)


def bag_features(passages: np.ndarray, dim: int) -> np.ndarray:
    """(N, L) ids -> (N, dim) float32 counts of ``id mod dim`` (a hashed bag of token ids: no order, no model)."""
    N = len(passages)
    rows = np.repeat(np.arange(N), passages.shape[1])
    return np.bincount(rows * dim + passages.reshape(-1) % dim, minlength=N * dim).reshape(N, dim).astype(np.float32)


def corpus_passages(corpus: str, tok, length: int, max_passages: int, seed: int) -> np.ndarray:
    """``(N, length)`` passages drawn with ``seed`` from every split of ``corpus`` together: for a corpus that no
    model of the run has seen (an unseen slice), where a train/test split means nothing."""
    ids = np.concatenate([load_token_ids(corpus, tok, split, progress=False) for split in SPLITS])
    return make_passages(ids, length, max_passages=max_passages, seed=seed)


def game_passages(cfg: Any, tok, train_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` passages ``(N, L)``: ``cfg.fit_passages`` training passages the protocols are fitted on
    and ``cfg.num_passages`` held-out (test split) passages the trials play, drawn with ``cfg.ae_seed``."""
    L = cfg.passage_length
    if train_ids is None:
        train_ids = load_token_ids(cfg.corpus, tok, "train", progress=False)
    train = make_passages(train_ids, L, max_passages=cfg.fit_passages, seed=cfg.ae_seed)
    test = make_passages(load_token_ids(cfg.corpus, tok, "test", progress=False), L, max_passages=cfg.num_passages,
                         seed=cfg.ae_seed + 1)
    return train, test


def fit_or_load(directory: Path, autoencoder: Any, build: Callable[[], Any]):
    """The protocol saved in ``directory``, or ``build()`` (a fitted protocol) saved there for the next run.

    A ``ValueError`` from ``build`` means "this protocol cannot be built here" (the caller skips it); a saved
    protocol that cannot be loaded is damage, never that: ``DamagedFileError`` names the directory.
    """
    if (directory / "protocol.json").exists():
        return load_saved(directory, lambda: load_protocol(directory, autoencoder=autoencoder))
    protocol = build()
    protocol.save(directory)
    return protocol


def load_saved(directory: Path, load: Callable[[], Any]):
    """``load()`` of the protocol saved in ``directory``; whatever stops it (a truncated protocol.json, a missing
    or mismatched weight file) is a ``DamagedFileError`` naming ``directory`` and how to refit it."""
    fix = f"remove it (rm -r {directory}) and rerun: the protocol is refitted"
    try:
        return load()
    except DamagedFileError as exc:
        raise DamagedFileError(exc.path, exc.problem, fix) from None
    except (ValueError, KeyError, TypeError, IndexError, OSError, RuntimeError) as exc:
        raise DamagedFileError(directory, f"the saved protocol cannot be loaded ({type(exc).__name__}: {exc})",
                               fix) from None


def pick_best(keys: list[str | None], score: Callable[[str | None], float]) -> str | None:
    """The key of ``keys`` with the highest ``score`` (the first on ties): the oracle's rate adaptation, where
    ``score`` plays pilot passages with the same noise for every key."""
    if len(keys) == 1:
        return keys[0]
    scores = [score(k) for k in keys]
    return keys[int(np.argmax(scores))]


def fit_protocols(cfg: Any, checkpoint: Path, protocols_dir: Path, *, protocols: Iterable[str],
                  budgets: Iterable[int], token_lm: Path | None = None):
    """Fit (or reload) every protocol at every budget n; draw the held-out passages.

    Protocols: ``vector``, ``jscc``, ``separation``, ``separation-lm`` (needs ``token_lm``, the token baseline's
    checkpoint), ``uncoded-tokens`` and the LM-prior listeners of ``PRIOR_PROTOCOLS`` (which decode a base
    protocol's symbols and fit nothing of their own). Each fitted protocol is saved as ``protocols_dir/<name>@<n>``
    and reloaded from there by the next run.

    Returns:
        ``(dirs, variants, facts, skipped, passages)``: ``protocol@n -> saved dir`` (a separation
        directory is a bank of its MCS menu); ``protocol@n -> the agent keys to try`` (several for
        separation, none where no code fits); facts (bits sent per key, the source model's entropy rate,
        its fill accuracy, the best guess ``guess``, K and V, and with separation-lm the LM's entropy rate
        ``entropy_bits_per_token_lm``); ``{(protocol, n): why}`` for budgets a
        protocol cannot be built at; the test passages ``(N, L)``.
    """
    protocols, budgets = list(dict.fromkeys(protocols)), sorted(set(budgets))
    model, tok = open_autoencoder(checkpoint, cfg.passage_length)
    K, V, L = model.config.K, model.config.vocab_size, cfg.passage_length
    train_ids = load_token_ids(cfg.corpus, tok, "train", progress=False)
    val_ids = load_token_ids(cfg.corpus, tok, "validation", progress=False)
    train, test = game_passages(cfg, tok, train_ids)
    source = None
    if {"separation", "uncoded-tokens"} & set(protocols):  # one source model for every budget, MCS and fill, on the
        # whole train split
        source = TokenSourceModel(V, cfg.source_model).fit(make_passages(train_ids, L, seed=cfg.ae_seed))
    lm_source = None
    if "separation-lm" in protocols:  # the token LM as the source model, its first-token unigram on the same passages
        if token_lm is None:
            raise ValueError("separation-lm needs the token baseline LM (token_lm): none was given")
        from protocols.lm_source import LMSourceModel

        lm_source = LMSourceModel.from_checkpoint(token_lm, mix=getattr(cfg, "separation_lm_mix", 0.0)).fit(
            make_passages(train_ids, L, seed=cfg.ae_seed))
    rates = MCS_MENUS[getattr(cfg, "separation_menu", "standard")]
    header = getattr(cfg, "separation_header", "fixed")  # fixed: the configs (and banks) written before it existed
    header = {} if header == "fixed" else {"header_code": header}
    dirs, variants, facts, skipped = {}, {}, {"bits_sent": {}}, {}
    # the unigram's mode: the best guess where nothing at all arrives (the bounds' fill). Positions a frame did
    # not carry are filled by the source model's guesses after the last token received, in separation and in
    # uncoded tokens alike (TokenSourceModel.fill)
    facts["guess"] = int(np.bincount(train.ravel(), minlength=V).argmax())
    for name in dict.fromkeys(PRIOR_BASE.get(p, p) for p in protocols if p not in LM_JSCC_PROTOCOLS):
        for n in budgets:
            key, d = f"{name}@{n}", Path(protocols_dir) / f"{name}@{n}"
            try:
                if name in ("separation", "separation-lm"):
                    if name == "separation-lm":
                        coder = {"source_model": "lm", "token_lm": lm_source.weights_id, "lm_mix": lm_source.mix}
                    else:
                        coder = {"source_model": cfg.source_model}
                    menu = [c for code in cfg.separation_codes
                            for c in mcs_menu(n, vocab_size=V, code=code, rates=rates, **coder, **header)]
                    if not menu:  # no link at all: the listener can only guess (counted, not left out)
                        print(f"[run] {name} at n={n}: no 5G code of the menu fits, the listener guesses",
                              flush=True)
                        variants[key] = []
                        continue
                    src = lm_source if name == "separation-lm" else source
                    if not (d / "protocol.json").exists():
                        save_bank(fit_bank(menu, src, train), d)
                    bank = load_saved(d, lambda d=d, name=name: load_bank(
                        d, token_lm=lm_source if name == "separation-lm" else None))
                    variants[key] = [f"{key}#{m}" for m in bank]
                    facts["bits_sent"].update({f"{key}#{m}": p.bits_sent(L) for m, p in bank.items()})
                else:
                    def build(name=name, n=n):
                        if name == "jscc":
                            families = tuple(dict.fromkeys(channel_family(c) for c in cfg.channels))
                            adapter = ensure_jscc(cfg, checkpoint, model, train_ids, val_ids, n,
                                                  channels=families, erasure_p=cfg.erasure_p)
                            p = JSCCProtocol.from_pretrained(adapter, JSCCProtocolConfig(budget=n), autoencoder=model)
                            p.with_channel(make_channel(families[0], 1.0, erasure_p=cfg.erasure_p))  # kinds
                            return p.fit(train)
                        if name == "uncoded-tokens":  # the unsent positions get separation's fill
                            return UncodedTokenProtocol(UncodedTokenProtocolConfig(
                                vocab_size=V, budget=n, fill_id=facts["guess"], fill_model=cfg.source_model),
                                source=source).fit(train)
                        return make_protocol(name, model, budget=n).fit(train)

                    p = fit_or_load(d, model, build)
                    variants[key] = [key]
                    facts["bits_sent"][key] = p.bits_sent(L)
            except ValueError as exc:
                if isinstance(exc, CheckpointError):  # a damaged or mismatched model file, not "cannot be built"
                    raise
                skipped[(name, n)] = str(exc)
                continue
            dirs[key] = str(d)
    for name in (p for p in LM_JSCC_PROTOCOLS if p in protocols):
        if token_lm is None:
            raise ValueError(f"{name} needs the token baseline LM (token_lm): none was given")
        for n in budgets:
            try:
                fitted = _fit_lm_jscc(cfg, name, n, checkpoint=checkpoint, model=model, token_lm=token_lm,
                                      train_ids=train_ids, val_ids=val_ids, train=train, protocols_dir=protocols_dir)
            except ValueError as exc:
                if isinstance(exc, CheckpointError):
                    raise
                skipped[(name, n)] = str(exc)
                continue
            variants[f"{name}@{n}"] = list(fitted)
            for key, d in fitted.items():
                dirs[key], facts["bits_sent"][key] = str(d), None
    for name in set(protocols) & set(PRIOR_PROTOCOLS):
        base = PRIOR_BASE[name]
        for n in budgets:
            if (base, n) in skipped:
                skipped[(name, n)] = skipped[(base, n)]
            else:
                variants[f"{name}@{n}"] = [f"{base}@{n}"]
    # the bounds' source statistics: the best source model's entropy rate, and how often the best guess (the
    # unigram's mode) is right where nothing arrives, both on the passages the trials play (the test split:
    # the validation split's differ, 6.744 vs 6.968 bits/token on the default corpus, and moved the lines)
    # (fitted on the whole train split like the separation link's, whichever protocols this invocation fits: the
    # facts of a run must not depend on which of its protocols were asked for)
    bound_model = source or TokenSourceModel(V, cfg.source_model).fit(make_passages(train_ids, L, seed=cfg.ae_seed))
    facts["entropy_bits_per_token"] = float(bound_model.entropy_rate(test))
    facts["fill_accuracy"] = float((test == facts["guess"]).mean())
    if lm_source is not None:  # the LM's cross-entropy on the same passages (the bound stays the bigram's)
        facts["entropy_bits_per_token_lm"] = float(lm_source.entropy_rate(test))
    facts["separation_header"] = getattr(cfg, "separation_header", "fixed")
    facts["K"], facts["vocab_size"] = K, V
    return dirs, variants, facts, skipped, test


def _fit_lm_jscc(cfg: Any, name: str, n: int, *, checkpoint: Path, model: Any, token_lm: Path, train_ids: np.ndarray,
                 val_ids: np.ndarray, train: np.ndarray, protocols_dir: Path) -> dict[str, Path]:
    """The saved LM-JSCC protocols of ``name`` at n: ``{agent key: directory}``, one per channel family of
    ``cfg.channels`` (lm-jscc) or the AWGN noiseless ceiling (lm-jscc-noiseless). Each starts from a JSCC adapter
    trained on that family alone (``ensure_jscc``) and the token baseline (``ensure_lm_jscc``), both cached."""
    noiseless = name == "lm-jscc-noiseless"
    out = {}
    for family in ("awgn",) if noiseless else cfg.channels:
        key = f"{name}@{n}" if noiseless else f"lm-jscc-{family}@{n}"
        d = Path(protocols_dir) / key

        def build(family=family):
            base = ensure_jscc(cfg, checkpoint, model, train_ids, val_ids, n, channels=(family,),
                               erasure_p=cfg.erasure_p)
            adapter = ensure_lm_jscc(cfg, token_lm, base, train_ids, val_ids, channels=(family,), noiseless=noiseless)
            channel = make_channel(family, 1.0, erasure_p=cfg.erasure_p)
            return LMJSCCProtocol.from_pretrained(adapter, JSCCProtocolConfig(budget=n), channel=channel).fit(train)

        fit_or_load(d, model, build)
        out[key] = d
    return out
