"""Fitting the protocols of the token-reconstruction experiments (reconstruction, alignment, relay, broadcast).

``fit_protocols(cfg, checkpoint, protocols_dir, protocols=..., budgets=...)`` fits (or reloads) every
protocol at every budget n on one autoencoder's training passages and draws the held-out passages the
trials play. A separation directory is a *bank*: its whole 5G (code, rate, modulation) menu, from which
``pick_best`` makes the oracle's choice (what link adaptation approximates). ``game_seed`` seeds one env
step so that every protocol sees the same passages and noise.

The config ``cfg`` is any experiment config with the fields used here: ``passage_length``, ``corpus``,
``fit_passages``, ``num_passages``, ``ae_seed``, ``source_model``, ``separation_codes`` (and, for jscc,
``channels``, ``erasure_p`` and the jscc settings of ``experiments.reconstruction.Config``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from calm.checkpoint import CheckpointError, load_pretrained
from calm.data import load_token_ids, make_passages
from calm.files import DamagedFileError
from experiments.common.models import ensure_jscc
from experiments.common.sweep import make_channel
from protocols import load_protocol, make_protocol
from protocols.jscc import JSCCProtocol, JSCCProtocolConfig
from protocols.separation import SeparationProtocol, TokenSourceModel, load_bank, mcs_menu, save_bank
from protocols.token import UncodedTokenProtocol, UncodedTokenProtocolConfig

__all__ = ["PRIOR_BASE", "PRIOR_PROTOCOLS", "fit_or_load", "fit_protocols", "game_passages", "game_seed",
           "load_saved", "open_autoencoder", "pick_best"]

#: the LM-prior listeners on a base protocol's symbols: protocol name -> protocols.prior rule
PRIOR_PROTOCOLS = {"vector-prior": "map", "vector-snap": "snap", "uncoded-tokens-prior": "token"}
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
                  budgets: Iterable[int]):
    """Fit (or reload) every protocol at every budget n; draw the held-out passages.

    Protocols: ``vector``, ``jscc``, ``separation``, ``uncoded-tokens`` and the LM-prior listeners of
    ``PRIOR_PROTOCOLS`` (which decode a base protocol's symbols and fit nothing of their own). Each fitted
    protocol is saved as ``protocols_dir/<name>@<n>`` and reloaded from there by the next run.

    Returns:
        ``(dirs, variants, facts, skipped, passages)``: ``protocol@n -> saved dir`` (a separation
        directory is a bank of its MCS menu); ``protocol@n -> the agent keys to try`` (several for
        separation, none where no code fits); facts (bits sent per key, the source model's entropy rate,
        its fill accuracy, the best guess ``guess``, K and V); ``{(protocol, n): why}`` for budgets a
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
    dirs, variants, facts, skipped = {}, {}, {"bits_sent": {}}, {}
    # the unigram's mode: the best guess where nothing at all arrives (the bounds' fill). Positions a frame did
    # not carry are filled by the source model's guesses after the last token received, in separation and in
    # uncoded tokens alike (TokenSourceModel.fill)
    facts["guess"] = int(np.bincount(train.ravel(), minlength=V).argmax())
    for name in dict.fromkeys(PRIOR_BASE.get(p, p) for p in protocols):
        for n in budgets:
            key, d = f"{name}@{n}", Path(protocols_dir) / f"{name}@{n}"
            try:
                if name == "separation":
                    menu = [c for code in cfg.separation_codes
                            for c in mcs_menu(n, vocab_size=V, source_model=cfg.source_model, code=code)]
                    if not menu:  # no link at all: the listener can only guess (counted, not left out)
                        print(f"[run] separation at n={n}: no 5G code of the menu fits, the listener guesses",
                              flush=True)
                        variants[key] = []
                        continue
                    if not (d / "protocol.json").exists():
                        save_bank([SeparationProtocol(c, source=source).fit(train) for c in menu], d)
                    bank = load_saved(d, lambda d=d: load_bank(d))
                    variants[key] = [f"{key}#{m}" for m in bank]
                    facts["bits_sent"].update({f"{key}#{m}": p.bits_sent(L) for m, p in bank.items()})
                else:
                    def build(name=name, n=n):
                        if name == "jscc":
                            adapter = ensure_jscc(cfg, checkpoint, model, train_ids, val_ids, n,
                                                  channels=cfg.channels, erasure_p=cfg.erasure_p)
                            p = JSCCProtocol.from_pretrained(adapter, JSCCProtocolConfig(budget=n), autoencoder=model)
                            p.with_channel(make_channel(cfg.channels[0], 1.0, erasure_p=cfg.erasure_p))  # kinds
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
    bound_model = source or TokenSourceModel(V, cfg.source_model).fit(train)
    facts["entropy_bits_per_token"] = float(bound_model.entropy_rate(test))
    facts["fill_accuracy"] = float((test == facts["guess"]).mean())
    facts["K"], facts["vocab_size"] = K, V
    return dirs, variants, facts, skipped, test
