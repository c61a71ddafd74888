"""Rate adaptation on channel state only: the pick a separated link makes from its MCS menu, made once per
channel state on validation passages with noise of its own, and kept in the run directory.

A trial never picks on its own test passages or noise: ``oracle_key`` names the channel state (protocol@n,
channel kind, sigma, and the erasure probability or fading block that shape it), ``oracle_seed`` derives the
validation plays' noise from that key alone, ``validation_passages`` draws them from the corpus's validation
split, and ``cached_pick`` computes the best menu entry once per state (a file per state, written atomically,
a lock so that concurrent trials wait for the first) so that every seed of a state plays the same MCS and a
resumed run reuses it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from calm.data import load_token_ids, make_passages
from calm.files import atomic_write_text, read_json
from calm.tokenizer import load_tokenizer

__all__ = ["ORACLE_SALT", "cached_pick", "oracle_key", "oracle_seed", "validation_passages"]


#: the salt of the oracle's noise seeds (``game_seed``'s ``salt``): never that of a trial's env steps (7)
ORACLE_SALT = 29


def oracle_key(protocol: str, channel: str, sigma: float, n: int, settings: dict[str, Any]) -> str:
    """The channel state a rate is picked for, as a file-name-safe key: protocol@n, channel kind, sigma, and the
    erasure probability (erasure channel) or fading block (rayleigh, when set) that shape the channel."""
    parts = [f"{protocol}@{n}", channel, f"s{float(sigma)!r}"]
    if channel == "erasure":
        parts.append(f"e{float(settings['erasure_p'])!r}")
    if channel == "rayleigh" and settings.get("fading_block") is not None:
        parts.append(f"fb{int(settings['fading_block'])}")
    return "-".join(parts)


def oracle_seed(key: str) -> int:
    """The seed of the oracle's validation plays for channel state ``key``: derived from the key alone (a
    trial's seed never enters it), salted apart from every trial's env steps."""
    return int.from_bytes(hashlib.sha256(f"rate-oracle|{key}".encode()).digest()[:8], "little")


def validation_passages(cfg: Any, checkpoint: Path) -> np.ndarray:
    """The oracle's ``pilot_passages`` passages ``(N, L)`` from the corpus's validation split (never the test split
    the trials play), drawn with ``ae_seed`` and deduplicated."""
    tok = load_tokenizer(Path(checkpoint) / "tokenizer.json")
    ids = load_token_ids(cfg.corpus, tok, "validation", progress=False)
    return np.unique(make_passages(ids, cfg.passage_length, max_passages=cfg.pilot_passages, seed=cfg.ae_seed),
                     axis=0)


def cached_pick(path: Path | None, keys: list, score: Callable[[Any], float]) -> tuple[Any, dict[str, float]]:
    """``(pick, scores)``: the key of ``keys`` with the best ``score`` (the first on ties) and every key's score,
    computed once and kept at ``path`` (JSON, written atomically; None: not kept). A trial that finds another
    computing the same pick waits for it (a lock beside the file) and reads it; a kept pick for another menu is
    recomputed."""
    if path is None:
        scores = {str(k): float(score(k)) for k in keys}
        return keys[int(np.argmax(list(scores.values())))], scores
    path = Path(path)

    def kept():
        if not path.is_file():
            return None
        value = read_json(path, what="rate pick", fix=f"remove it (rm {path}) and rerun: the pick is recomputed")
        if value.get("menu") != [str(k) for k in keys]:
            return None
        return keys[[str(k) for k in keys].index(value["pick"])], value["scores"]

    if (hit := kept()) is not None:
        return hit
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one computes, the others wait for its file
        try:
            if (hit := kept()) is not None:
                return hit
            pick, scores = cached_pick(None, keys, score)
            atomic_write_text(path, json.dumps({"menu": [str(k) for k in keys], "pick": str(pick),
                                                "scores": scores}, indent=1) + "\n")
            return pick, scores
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
