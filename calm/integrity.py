"""Checks a loader runs on what it read from disk, so that damage is named instead of absorbed.

A loader reads a JSON config and an array file another run wrote. What it reads must have the kinds of
value the code expects (a boolean is a JSON ``true``/``false``, not the string ``"false"``, which Python's
``bool`` reads as True; an integer is not ``2.7``, which ``int`` truncates to 2), and its arrays must have the
names and shapes the config implies and hold finite numbers (a NaN weight makes every output NaN, and an
argmax over NaN scores picks index 0 without a word). Each check raises ``calm.files.DamagedFileError``
naming the file, the field or tensor, and what is wrong.

``read_safetensors`` / ``safetensors_shapes`` read a safetensors file (all of it, or its header only) and name
a missing, truncated or foreign one (a pickle is never loaded); ``with_fix`` lets a loader say what to do
about a damaged file of its own. ``check_output_path`` is the other side: a place a result will be written is
checked before the work that produces it starts, so a run never computes something it then cannot keep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors import SafetensorError, safe_open

from calm.files import DamagedFileError

__all__ = ["check_json_types", "check_json_value", "check_output_path", "check_tensors", "json_kind",
           "read_safetensors", "safetensors_shapes", "with_fix"]


@contextlib.contextmanager
def with_fix(fix: str) -> Iterator[None]:
    """A ``DamagedFileError`` raised inside names ``fix`` as what to do: the loader knows what a damaged file
    of its own is (a cached protocol is refitted once its directory is removed, a trained model is not)."""
    try:
        yield
    except DamagedFileError as exc:
        raise DamagedFileError(exc.path, exc.problem, fix) from None


def json_kind(value: Any) -> str:
    """The JSON name of ``value``'s kind: boolean, integer, number, string, list, object or null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _fits(value: Any, tp: Any) -> tuple[bool, str]:
    """(whether ``value`` read from JSON fits the annotation ``tp``, the kind ``tp`` wants in words)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, "null"
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:  # a union of several kinds: not checked here
            return True, "any"
        ok, want = _fits(value, rest[0])
        return ok, want + " or null"
    if origin is Literal:
        return value in args, "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False, "a list"
        inner = args[0] if args else Any
        for v in value:
            ok, want = _fits(v, inner)
            if not ok:
                return False, f"a list of {want}"
        return True, "a list"
    if tp is bool:
        return isinstance(value, bool), "a boolean (true or false)"
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), "an integer"
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    if tp is str:
        return isinstance(value, str), "a string"
    if tp is dict or origin is dict:
        return isinstance(value, dict), "an object"
    return True, "any"


def check_json_value(path: str | os.PathLike, name: str, value: Any, tp: Any, *, what: str = "config") -> None:
    """``value``, the field ``name`` of a JSON file at ``path``, has the kind the annotation ``tp`` asks for.

    Raises:
        DamagedFileError: it does not (``"false"`` for a bool, ``2.7`` for an int, ...).
    """
    ok, want = _fits(value, tp)
    if not ok:
        raise DamagedFileError(path, f"the {what} field {name!r} holds {value!r} (a JSON {json_kind(value)}), "
                                     f"not {want}")


def check_json_types(path: str | os.PathLike, cls: type, values: dict, *, what: str = "config") -> None:
    """Every value of ``values`` (a config read from the JSON file ``path``) whose key is a field of the
    dataclass ``cls`` has the kind that field is declared with (see ``check_json_value``); other keys are
    left to ``cls`` (``DictConfig.from_dict`` refuses unknown ones)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values:
            check_json_value(path, f.name, values[f.name], hints[f.name], what=what)


def _non_finite(array: Any) -> bool:
    if hasattr(array, "is_floating_point"):  # a torch tensor
        import torch

        return bool((array.is_floating_point() or array.is_complex()) and not torch.isfinite(array).all())
    array = np.asarray(array)
    return bool(np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all())


def check_tensors(path: str | os.PathLike, tensors: dict[str, Any],
                  expected: dict[str, tuple[int, ...]] | None = None, *, what: str = "weights") -> None:
    """The arrays (torch tensors or numpy arrays) read from ``path`` hold finite numbers and, when
    ``expected`` is given, are exactly its names with its shapes.

    Raises:
        DamagedFileError: a missing or unexpected name, another shape, or NaN/inf in a float array.
    """
    if expected is not None:
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise DamagedFileError(path, f"the {what} lack {missing[:5]} and hold unexpected {extra[:5]}"
                                   if missing and extra else f"the {what} lack {missing[:5]}" if missing
                                   else f"the {what} hold unexpected arrays {extra[:5]}")
        for name, shape in expected.items():
            got = tuple(tensors[name].shape)
            if got != tuple(shape):
                raise DamagedFileError(path, f"{name} has shape {got}, but its config implies {tuple(shape)}")
    for name, array in tensors.items():
        if _non_finite(array):
            raise DamagedFileError(path, f"holds NaN/inf in {name}")


def check_output_path(path: str | os.PathLike, flag: str = "--json") -> Path:
    """``path`` can be written atomically: not a directory, and a file can be created in its folder, or in the
    nearest folder above it that exists when its folder is still to be made (``calm.files.atomic_write_text``
    makes the missing folders and replaces ``path`` through such a file). Nothing is created here.

    Called before the work whose result goes there.

    Raises:
        ValueError: naming ``flag``, the path and why it could not be written.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a directory, not a file to write")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} is a file, so no folder can be made there")
    try:  # a real probe: permission bits say nothing to root, nor about a read-only file system
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {folder} is not writable ({exc.strerror or exc})") from None
    return path


def _check_header(path: Path) -> int:
    """The size of the safetensors file ``path``, after checking its header's frame (not a pickle or zip)."""
    if not path.exists():
        raise DamagedFileError(path, "the file is missing")
    if not path.is_file():
        raise DamagedFileError(path, "a directory, not a safetensors file")
    size = path.stat().st_size
    # format: 8-byte little-endian header length, JSON header, then the raw tensor bytes
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
        first = f.read(1) if header_len > 0 else b""
    if header_len <= 0 or header_len > size - 8 or first != b"{":
        raise DamagedFileError(path, f"not a safetensors file (bad header; size {size} bytes): checkpoints are "
                                     "safetensors only, pickle files are never loaded")
    return size


def read_safetensors(path: str | os.PathLike, *, framework: str = "pt") -> dict:
    """All tensors of a safetensors file (torch tensors; numpy arrays with ``framework="numpy"``).

    Raises:
        DamagedFileError: the file is missing, is not safetensors (a pickle, a zip), or is truncated or has
            a damaged header (safetensors checks that the header's offsets cover the file exactly).
    """
    path = Path(path)
    size = _check_header(path)
    try:
        tensors = {}
        with safe_open(str(path), framework=framework) as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DamagedFileError(path, f"damaged or truncated ({size} bytes): {exc}") from None
    return tensors


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a safetensors file's header declares, reading the header only (no tensor data).

    Raises:
        DamagedFileError: as ``read_safetensors``.
    """
    path = Path(path)
    size = _check_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DamagedFileError(path, f"damaged or truncated ({size} bytes): {exc}") from None
