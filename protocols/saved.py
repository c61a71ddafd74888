"""Reading a saved protocol back, checked: ``protocol.json`` and ``protocol.safetensors`` (``Protocol.save``).

A directory without ``protocol.json`` holds no protocol (``FileNotFoundError``: nothing was saved there). A
directory that has one but cannot be read back is damaged, and every way it can be raises
``calm.files.DamagedFileError`` naming the file: a truncated or garbled ``protocol.json``, a field missing or
of the wrong JSON kind, a config its class refuses, a missing, truncated or foreign ``protocol.safetensors``,
an array of another name or shape than the config implies, or NaN/inf in one. ``DamagedFileError`` is not a
``ValueError``, so a caller that reads a ``ValueError`` as "this protocol cannot be built" never absorbs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from calm.files import DamagedFileError, atomic_write_bytes, atomic_write_text, read_json
from calm.integrity import check_json_types, check_json_value, check_tensors, read_safetensors, with_fix

__all__ = ["CONFIG_FILE", "STATS_FILE", "build_config", "read_autoencoder_dims", "read_meta", "read_stats",
           "restore_stats", "write_saved"]

CONFIG_FILE = "protocol.json"
STATS_FILE = "protocol.safetensors"


def _refit(directory: str | Path):
    """What to do about a damaged saved protocol: remove its directory and fit it again."""
    return with_fix(f"remove the saved protocol (rm -r {directory}) and fit it again")


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The checked ``protocol.json`` of ``directory``: ``protocol`` (a string), ``config`` (an object) and
    ``seq_len`` (an integer >= 1: a protocol is saved fitted).

    Raises:
        FileNotFoundError: ``directory`` has no ``protocol.json``.
        DamagedFileError: it is there but cannot be read, or a field is missing or of the wrong kind.
    """
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no saved protocol at {directory}: missing {CONFIG_FILE}")
    with _refit(directory):
        meta = read_json(path, what="protocol config")
        for key, tp in (("protocol", str), ("config", dict), ("seq_len", int)):
            if key not in meta:
                raise DamagedFileError(path, f"the protocol config lacks the field {key!r}")
            check_json_value(path, key, meta[key], tp, what="protocol config")
        if meta["seq_len"] < 1:
            raise DamagedFileError(path, f"the protocol config's seq_len is {meta['seq_len']}, not a length >= 1")
        return meta


def build_config(directory: str | Path, config_class: type, values: Any, *, file: str = CONFIG_FILE) -> Any:
    """``config_class(**values)``, the config stored in ``directory/file``; values of the wrong JSON kind,
    unknown fields and values the class refuses raise ``DamagedFileError`` naming the file."""
    path = Path(directory) / file
    with _refit(directory):
        if not isinstance(values, dict):
            raise DamagedFileError(path, f"a {config_class.__name__} is stored as {values!r}, not an object")
        check_json_types(path, config_class, values, what="protocol config")
        try:
            return config_class(**values)
        except (TypeError, ValueError) as exc:
            raise DamagedFileError(path, f"the {config_class.__name__} it holds is refused: {exc}") from None


def read_autoencoder_dims(directory: str | Path, config: dict[str, Any]) -> dict[str, int]:
    """Pop and check the ``autoencoder`` dims (K, latent_dim, vocab_size integers) a latent protocol's stored
    config records; damage raises ``DamagedFileError`` naming ``protocol.json``."""
    path = Path(directory) / CONFIG_FILE
    with _refit(directory):
        dims = config.pop("autoencoder", None)
        if not isinstance(dims, dict) or set(dims) != {"K", "latent_dim", "vocab_size"}:
            raise DamagedFileError(path, f"the protocol config's 'autoencoder' holds {dims!r}, not the K, "
                                         "latent_dim and vocab_size of the autoencoder it was fitted with")
        for key, value in dims.items():
            check_json_value(path, f"autoencoder.{key}", value, int, what="protocol config")
        return dims


def read_stats(directory: str | Path,
               expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """The fitted arrays in ``directory/protocol.safetensors``, checked finite and, when ``expected`` is given,
    to be exactly its names with its shapes.

    Raises:
        DamagedFileError: the file is missing (``protocol.json`` is there), truncated, not safetensors, or
            its arrays break the checks above.
    """
    path = Path(directory) / STATS_FILE
    with _refit(directory):
        if not path.exists():
            raise DamagedFileError(path, f"the fitted statistics are missing ({CONFIG_FILE} is there)")
        stats = read_safetensors(path, framework="numpy")
        check_tensors(path, stats, expected, what="fitted statistics")
        return stats


def restore_stats(protocol: Any, directory: str | Path, seq_len: int) -> None:
    """Give ``protocol`` (a ``Protocol`` built from the stored config) the fitted arrays of ``directory``,
    checked against the names and shapes its ``_stat_shapes(seq_len)`` implies, then its ``seq_len``."""
    with _refit(directory):
        try:
            expected = protocol._stat_shapes(seq_len)
        except ValueError as exc:  # e.g. a seq_len that is no multiple of K
            raise DamagedFileError(Path(directory) / CONFIG_FILE,
                                   f"seq_len {seq_len} does not fit the protocol: {exc}") from None
        stats = read_stats(directory, expected)
        try:
            protocol._set_stats(stats)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise DamagedFileError(Path(directory) / STATS_FILE, f"the fitted statistics do not fit the protocol "
                                   f"in {CONFIG_FILE} ({type(exc).__name__}: {exc})") from None
        protocol.seq_len = int(seq_len)


def write_saved(directory: str | Path, meta: dict[str, Any], stats: dict[str, np.ndarray]) -> None:
    """Write ``stats`` to ``protocol.safetensors``, then ``meta`` to ``protocol.json``, each atomically: a save
    stopped midway never leaves a ``protocol.json`` beside half a stats file."""
    from safetensors.numpy import save

    directory = Path(directory)
    atomic_write_bytes(directory / STATS_FILE, save({k: np.ascontiguousarray(v) for k, v in stats.items()}))
    atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
