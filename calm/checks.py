"""Checks a config runs on itself before anything starts: finite numbers, ranges, merged duplicate grid values,
and a device that is there.

A config's ``__post_init__`` calls these, so the command line (``calm.cli``: one line, exit status 2) and the
library constructors refuse the same values, before Ray or any model starts. Each check raises ``ValueError``
with the field's command-line name and the value it got.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from typing import Any

__all__ = ["check_device", "check_numbers", "in_range", "merge_duplicates", "positive_ints"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_numbers(cfg: Any, *, allow_inf: tuple[str, ...] = ()) -> None:
    """Every number of the dataclass ``cfg`` (a field, or a value of a tuple/list field) is finite (fields in
    ``allow_inf`` may be +-inf, never NaN), and every field declared ``int`` holds an int, not a bool or a float.

    Raises:
        ValueError: the first field that breaks this, named as its flag.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = list(value) if isinstance(value, (tuple, list)) else [value]
        for v in values:
            if isinstance(v, float) and (math.isnan(v) or (math.isinf(v) and f.name not in allow_inf)):
                raise ValueError(f"{_flag(f.name)} must be finite, got {v}")
        if _element_type(hints.get(f.name)) is int:
            for v in values:
                if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                    raise ValueError(f"{_flag(f.name)} must be an integer, got {v!r}")


def _element_type(tp: Any) -> Any:
    """``int`` for ``int``, ``int | None``, ``tuple[int, ...]`` and ``list[int]``; the same for other types."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    if typing.get_origin(tp) in (tuple, list):
        tp = typing.get_args(tp)[0]
    return tp


def merge_duplicates(cfg: Any, *names: str) -> list[str]:
    """Drop repeated values of the tuple fields ``names`` of ``cfg`` (first occurrence kept, order kept): a
    grid axis given ``0.5 0.5`` would run one grid point twice and report it as two rows. Prints one note per
    field to stderr and returns the notes."""
    notes = []
    for name in names:
        value = getattr(cfg, name)
        merged = type(value)(dict.fromkeys(value))
        if len(merged) != len(value):
            object.__setattr__(cfg, name, merged)
            note = (f"note: {_flag(name)} {' '.join(map(str, value))}: repeated values merged, the grid uses "
                    f"{' '.join(map(str, merged))}")
            print(note, file=sys.stderr, flush=True)
            notes.append(note)
    return notes


def positive_ints(cfg: Any, *names: str, minimum: int = 1) -> None:
    """Each field of ``names`` is an integer >= ``minimum`` (a tuple field: each of its values, and not empty)."""
    for name in names:
        value = getattr(cfg, name)
        values = list(value) if isinstance(value, (tuple, list)) else [value]
        if isinstance(value, (tuple, list)) and not values:
            raise ValueError(f"{_flag(name)} needs at least one value")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{_flag(name)} must be an integer >= {minimum}, got {v!r}")


def in_range(name: str, value: Any, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False) -> None:
    """``value`` (a number or a tuple of numbers, for the field ``name``) lies in the interval from ``low`` to
    ``high`` (closed unless ``low_open`` / ``high_open``; None: unbounded) and is not NaN."""
    values = list(value) if isinstance(value, (tuple, list)) else [value]
    for v in values:
        ok = _is_number(v) and not math.isnan(v)
        if ok and low is not None:
            ok = v > low if low_open else v >= low
        if ok and high is not None:
            ok = v < high if high_open else v <= high
        if not ok:
            lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
            hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
            raise ValueError(f"{_flag(name)} must lie in {lo}, {hi}, got {v!r}")


def check_device(device: str, name: str = "device") -> None:
    """``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``) is one this machine has."""
    if device in ("cpu", "auto"):
        return
    import torch

    if device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"{_flag(name)} mps: this machine has no MPS device; use cpu or auto")
        return
    if device == "cuda" or device.startswith("cuda:"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if device == "cuda" else device.split(":", 1)[1]
        if not str(index).isdigit():
            raise ValueError(f"{_flag(name)} {device}: not a device (cpu, cuda, cuda:N, mps or auto)")
        if int(index) >= count:
            have = "no CUDA GPU" if count == 0 else f"{count} CUDA GPU(s)"
            raise ValueError(f"{_flag(name)} {device}: this machine has {have}; use cpu or auto")
        return
    raise ValueError(f"{_flag(name)} {device!r}: not a device (cpu, cuda, cuda:N, mps or auto)")
