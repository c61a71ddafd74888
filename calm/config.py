"""What every model config shares: a JSON-ready dict that round-trips and refuses unknown keys.

Checkpoints store `config.to_dict()` in their config.json; loading one with a field this version of
the code does not know is an error (it means a different model version), never a silent drop.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields
from typing import ClassVar, TypeVar

__all__ = ["DictConfig"]

ConfigT = TypeVar("ConfigT", bound="DictConfig")


class DictConfig:
    """Mixin for dataclass configs: `to_dict` and its inverse `from_dict`."""

    OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ()
    """fields added after checkpoints and run caches existed: written only when they differ from their
    default, so the configs (and the cache keys hashed from them) of models that do not use them stay as
    they were"""

    def to_dict(self) -> dict:
        """The config as a JSON-ready dict (``OMIT_AT_DEFAULT`` fields only when not at their default)."""
        values = asdict(self)  # type: ignore[call-overload]
        for f in fields(self):  # type: ignore[arg-type]
            if f.name in self.OMIT_AT_DEFAULT and f.default is not MISSING and values[f.name] == f.default:
                del values[f.name]
        return values

    @classmethod
    def from_dict(cls: type[ConfigT], values: dict) -> ConfigT:
        """Inverse of `to_dict`; unknown keys are an error (they mean a different model version)."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known fields are {sorted(known)}")
        return cls(**values)
