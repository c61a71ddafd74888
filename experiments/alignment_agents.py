"""The agents of an alignment run (``experiments.alignment``): their autoencoders and protocols, the anchors
both ends encode, and the maps fitted on them.

``prepare_agents`` trains or loads the speaker's and every listener's autoencoder (``listener_configs``), fits
their protocols, draws the test passages and encodes the anchor pool on both sides (``retokenize``: the
listener's own tokenization of the same text); ``fit_alignments`` fits, or reloads, one
``protocols.alignment`` map per (pairing, method, anchors).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

from calm.checkpoint import load_config, load_pretrained
from calm.data import load_token_ids, make_passages
from calm.tokenizer import special_ids, tokenizer_fingerprint
from experiments.common.links import fit_protocols
from experiments.common.models import checkpoint_id, ensure_checkpoint
from protocols import load_protocol
from protocols.alignment import AlignmentConfig, LatentAlignment

__all__ = ["fit_alignments", "listener_configs", "prepare_agents", "retokenize"]


def retokenize(ids: np.ndarray, source_tok, target_tok, L: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``L`` ids of each row's text under ``target_tok``: ``(ids (N, L), mask (N, L))``; a text shorter
    than L tokens is padded with the target's pad id, its pad positions False in ``mask``."""
    pad, _ = special_ids(target_tok)
    out = np.full((len(ids), L), pad, dtype=np.int64)
    mask = np.zeros((len(ids), L), dtype=bool)
    for i, text in enumerate(source_tok.batch_decode(np.asarray(ids).tolist())):
        row = target_tok.encode(text, add_special_tokens=False)[:L]
        out[i, :len(row)], mask[i, :len(row)] = row, True
    return out, mask


#: the AutoencoderConfig fields a listener trained next to a given speaker checkpoint copies from it (its
#: architecture); the training knobs (dropouts, KL, initialisation, sampled softmax) stay the preset's
ARCHITECTURE = ("K", "latent_dim", "hidden_size", "intermediate_size", "num_layers", "rms_norm_eps", "linear_bias")


def listener_configs(cfg: Any, speaker: Path | None = None) -> dict[str, tuple[Any, dict[str, Any] | None]]:
    """``pairing -> (config, overrides)``: the config each pairing's listener autoencoder comes from (its
    checkpoint given, or trained once and cached) and the ``ensure_checkpoint`` overrides of a trained one.

    ``speaker``: the speaker's checkpoint when ``cfg.checkpoint`` gives it (a released model, say). A listener
    trained here then differs from the speaker only in its pairing's respect: it copies the speaker's
    architecture (``ARCHITECTURE``), and the seed and latent listeners its tokenizer; the ``--ae-*`` size flags
    and ``--tokenizer`` apply only where the speaker is trained here too (then both come from ``cfg``).
    """
    configs = {"same": (cfg, None),
               "seed": (dataclasses.replace(cfg, ae_seed=cfg.other_seed, checkpoint=cfg.seed_checkpoint), None),
               "latent": (dataclasses.replace(cfg, ae_latent_dim=cfg.other_latent_dim,
                                              checkpoint=cfg.latent_checkpoint), None),
               "tokenizer": (dataclasses.replace(cfg, tokenizer=cfg.other_tokenizer,
                                                 checkpoint=cfg.tokenizer_checkpoint), None)}
    if cfg.checkpoint is None or speaker is None:
        return configs
    arch = {k: v for k, v in load_config(speaker, expect="autoencoder")["config"].items() if k in ARCHITECTURE}
    out = {"same": configs["same"]}
    for pairing in ("seed", "latent", "tokenizer"):
        pcfg = dataclasses.replace(configs[pairing][0], ae_latent_dim=None, ae_hidden_size=None,
                                   ae_intermediate_size=None)
        if pairing != "tokenizer":  # the speaker's own tokenizer (a released model's Llama-3 one, say)
            pcfg = dataclasses.replace(pcfg, tokenizer=str(Path(speaker) / "tokenizer.json"))
        out[pairing] = (pcfg, {**arch, "latent_dim": cfg.other_latent_dim} if pairing == "latent" else arch)
    return out


def _same_latent(ell: int) -> str:
    return (f"the latent pairing's listener has the speaker's latent size l={ell}: set --other-latent-dim (or "
            "--latent-checkpoint) to another size")


def prepare_agents(cfg: Any, run_dir: Path):
    """Train or load every agent's autoencoder and fit its protocols; draw the test passages and the anchors.

    Returns ``(members, facts, passages)``: pool members ``name -> (checkpoint, {protocol: dir})`` (``speaker``
    and one ``listener-<pairing>`` each, the listeners with the speaker's token protocols too); facts per
    pairing (checkpoint ids, whether the tokenizer differs, the listener's tokenizer path, its test targets and
    anchors); the speaker's test passages ``(N, L)``.
    """
    n, L = cfg.channel_uses, cfg.passage_length
    speaker_ckpt = ensure_checkpoint(cfg)
    speaker_model, speaker_tok = load_pretrained(speaker_ckpt, expect="autoencoder")
    train_ids = load_token_ids(cfg.corpus, speaker_tok, "train", progress=False)
    pool = make_passages(train_ids, L, max_passages=max(cfg.anchors + (4,)), seed=cfg.ae_seed + 2)
    if len(pool) < max(cfg.anchors):  # checked before any fitting: a map cannot have more anchors than passages
        raise ValueError(f"--anchors {max(cfg.anchors)}: the corpus {cfg.corpus!r} holds only {len(pool)} training "
                         f"passages of {L} tokens to draw anchors from; use at most {len(pool)} anchors")
    if "latent" in cfg.pairings and cfg.latent_checkpoint is None and cfg.other_latent_dim == speaker_model.config.latent_dim:
        raise ValueError(_same_latent(cfg.other_latent_dim))  # before training a listener that would be no pairing
    dirs, variants, facts_s, skipped, passages = fit_protocols(
        cfg, speaker_ckpt, run_dir / "protocols" / "speaker", protocols=("vector", *cfg.token_protocols), budgets=[n])
    if skipped:
        raise ValueError(f"the speaker's protocols cannot be built at n={n}: {skipped}")
    token_dirs = {k: v for k, v in dirs.items() if not k.startswith("vector@")}
    speaker_vector = load_protocol(dirs[f"vector@{n}"], autoencoder=speaker_model)
    source_anchors = speaker_vector.encode(pool).astype(np.float64)  # (A, n) the speaker's clean symbols
    members = {"speaker": (speaker_ckpt, dirs)}
    facts: dict[str, Any] = {"speaker": checkpoint_id(speaker_ckpt), "K": facts_s["K"], "V": facts_s["vocab_size"],
                             "variants": variants, "pairings": {}}
    for pairing, (pcfg, overrides) in listener_configs(cfg, speaker_ckpt).items():
        if pairing not in cfg.pairings:
            continue
        ckpt = speaker_ckpt if pairing == "same" else ensure_checkpoint(pcfg, overrides=overrides)
        if pairing == "same":
            ldirs = dirs
        else:
            ldirs, _, _, lskipped, _ = fit_protocols(pcfg, ckpt, run_dir / "protocols" / f"listener-{pairing}",
                                                     protocols=("vector",), budgets=[n])
            if lskipped:
                raise ValueError(f"the {pairing} listener's vector protocol cannot be built at n={n}: {lskipped}")
        model, tok = load_pretrained(ckpt, expect="autoencoder")
        if L % model.config.K:
            raise ValueError(f"passage_length {L} is not a multiple of the {pairing} listener's K={model.config.K}")
        if pairing == "latent" and model.config.latent_dim == speaker_model.config.latent_dim:
            raise ValueError(_same_latent(model.config.latent_dim))
        other_tok = tokenizer_fingerprint(tok) != tokenizer_fingerprint(speaker_tok)
        if other_tok:
            targets, mask = retokenize(passages, speaker_tok, tok, L)
            anchor_ids, _ = retokenize(pool, speaker_tok, tok, L)
        else:
            targets, mask, anchor_ids = passages, np.ones(passages.shape, bool), pool
        vector = load_protocol(ldirs[f"vector@{n}"], autoencoder=model)
        # chunk by chunk when both ends send every latent coordinate of the same chunks (same tokenizer and K, no
        # PCA): chunk j of the listener depends on chunk j of the speaker only, and each anchor gives L/K pairs
        chunks = L // model.config.K
        by_chunk = (cfg.alignment_unit != "passage" and not other_tok and model.config.K == facts["K"]
                    and n == vector.latent_size(L) and n == speaker_vector.latent_size(L))
        members[f"listener-{pairing}"] = (ckpt, {f"vector@{n}": ldirs[f"vector@{n}"], **token_dirs})
        facts["pairings"][pairing] = {
            "listener": checkpoint_id(ckpt), "other_tokenizer": bool(other_tok),
            "tokenizer_path": str(ckpt / "tokenizer.json"), "targets": targets, "mask": mask,
            "chunks": chunks if by_chunk else 1,
            "anchors_target": vector.encode(anchor_ids).astype(np.float64)}
    facts["anchors_source"] = source_anchors
    facts["speaker_tokenizer_path"] = str(speaker_ckpt / "tokenizer.json")
    return members, facts, passages


def fit_alignments(cfg: Any, facts: dict, run_dir: Path) -> dict[str, dict]:
    """Fit (or reload from ``run_dir/alignments``) every (pairing, method, anchors) map: ``key -> arrays``."""
    from tqdm import tqdm

    plans = [(p, m, a) for p in cfg.pairings if p != "same" for m in cfg.methods for a in sorted(set(cfg.anchors))
             if a > 0]
    maps = {}
    for pairing, method, anchors in tqdm(plans, desc="[run] alignment maps", unit="map", file=sys.stderr,
                                         disable=not plans):
        key, d = f"{pairing}-{method}-a{anchors}", run_dir / "alignments" / f"{pairing}-{method}-a{anchors}"
        if (d / "alignment.json").is_file():
            alignment = LatentAlignment.load(d)
        else:
            chunks = facts["pairings"][pairing]["chunks"]
            source = facts["anchors_source"][:anchors]
            target = facts["pairings"][pairing]["anchors_target"][:anchors]
            alignment = LatentAlignment(AlignmentConfig(method=method, seed=cfg.ae_seed)).fit(
                source.reshape(anchors * chunks, -1), target.reshape(anchors * chunks, -1))
            alignment.save(d)
        maps[key] = {**alignment.to_arrays(), "chunks": facts["pairings"][pairing]["chunks"]}
    return maps
