"""Example messages of the emergent study (``experiments.emergent``): what the discrete protocols send for a
passage, its most similar passage and its least similar one.

Similarity is the cosine of the frozen autoencoder's features (the meanings the topographic similarity uses).
For a few targets the section shows the three passages' text and each discrete protocol's message (learned
symbols over V = 2^b written as digits; the hash's bits), then, over many targets, the mean Hamming distance
between a passage's message and its nearest neighbour's against a random passage's: a protocol whose similar
passages get similar messages shows a smaller first number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols.emergent_train import load_pair

__all__ = ["message_examples", "neighbours"]

# targets shown as text, and targets the mean Hamming distances are taken over
SHOWN, MEASURED = 3, 512


def neighbours(meanings: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(most, least)`` similar item to each target by cosine of ``meanings (N, D)`` (never the target itself)."""
    unit = meanings / np.maximum(np.linalg.norm(meanings, axis=1, keepdims=True), 1e-12)
    cos = unit[targets] @ unit.T  # (T, N)
    cos[np.arange(len(targets)), targets] = np.nan
    return np.nanargmax(cos, axis=1), np.nanargmin(cos, axis=1)


def _speak(directory: Path, bank: np.ndarray, items: np.ndarray, distractors: np.ndarray, snr_db: float) -> np.ndarray:
    """(T, m) greedy symbols of the pair's speaker for ``items`` of ``bank``; a speaker that sees distractors gets
    ``distractors`` (T,), one per row, the same whichever passage it describes."""
    _, speaker, _, _ = load_pair(directory)
    with torch.no_grad():
        msg = speaker(torch.as_tensor(bank[items]), torch.as_tensor(bank[distractors])[:, None],
                      torch.full((len(items),), float(snr_db)), mode="greedy")
    return msg.symbols.numpy()


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).mean(axis=1)


def message_examples(pairs: dict[str, tuple[Path, str]], banks: dict[str, np.ndarray], hash_codes: np.ndarray | None,
                     passages: np.ndarray, meanings: np.ndarray, decode, *, snr_db: float, n: int,
                     seed: int = 0) -> str:
    """The "Example messages" markdown section.

    Args:
        pairs: label -> (pair directory, features name) of each learned discrete protocol at ``n`` channel uses.
        banks: features name -> (N, D) features of the held-out passages (what the speakers see).
        hash_codes: (N, n) the hash's +-1 symbols of the same passages, or None.
        passages: (N, L) token ids; ``decode(ids) -> str`` writes one as text.
        meanings: (N, D) CALM features, the similarity.
        snr_db: the SNR a speaker that is told it hears (the reference SNR).
    """
    rng = np.random.default_rng(seed)
    N = len(passages)
    measured = rng.choice(N, size=min(MEASURED, N), replace=False)
    near, far = neighbours(meanings, measured)
    distractors = rng.choice(N, size=len(measured))
    messages: dict[str, Any] = {}
    for label, (directory, feats) in pairs.items():
        messages[label] = lambda items, d=directory, f=feats: _speak(d, banks[f], items, distractors, snr_db)
    if hash_codes is not None:
        messages["hash"] = lambda items: (hash_codes[items] < 0).astype(np.int64)
    if not messages:
        return ""
    lines = [f"## Example messages (n = {n})", "",
             "Each target's most and least similar held-out passage by cosine of the CALM features, and the message "
             "every discrete protocol sends for each (learned symbols as digits, the hash's bits); d = Hamming "
             "distance to the target's message, as a fraction of its symbols.", ""]
    heads = list(messages)
    lines += ["| passage | text | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    roles = {"target": measured, "similar": near, "dissimilar": far}
    sent = {h: {role: fn(idx) for role, idx in roles.items()} for h, fn in messages.items()}
    for i in range(min(SHOWN, len(measured))):
        for role, idx in roles.items():
            text = decode(passages[idx[i]]).replace("|", "/").replace("\n", " ").strip()
            cells = []
            for h in heads:
                symbols, target = sent[h][role][i], sent[h]["target"][i]
                d = "" if role == "target" else f" (d = {_hamming(symbols[None], target[None])[0]:.2f})"
                cells.append(f"`{''.join(str(int(v)) for v in symbols)}`{d}")
            lines.append(f"| {role} {i + 1} | {text} | " + " | ".join(cells) + " |")
    lines += ["", f"Mean Hamming distance over {len(measured)} held-out targets (fraction of symbols):", "",
              "| protocol | to the most similar passage | to the least similar | to a random passage |",
              "|---|---|---|---|"]
    random_items = np.roll(measured, 1)  # another target: a random passage
    for h, fn in messages.items():
        t = sent[h]["target"]
        d_near, d_far = _hamming(t, sent[h]["similar"]).mean(), _hamming(t, sent[h]["dissimilar"]).mean()
        d_rand = _hamming(t, fn(random_items)).mean()
        lines.append(f"| {h} | {d_near:.3f} | {d_far:.3f} | {d_rand:.3f} |")
    return "\n".join(lines)
