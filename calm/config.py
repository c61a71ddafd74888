"""What every model config shares: a JSON-ready dict that round-trips and refuses unknown keys.

Checkpoints store `config.to_dict()` in their config.json; loading one with a field this version of
the code does not know is an error (it means a different model version), never a silent drop.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import TypeVar

__all__ = ["DictConfig"]

ConfigT = TypeVar("ConfigT", bound="DictConfig")


class DictConfig:
    """Mixin for dataclass configs: `to_dict` and its inverse `from_dict`."""

    def to_dict(self) -> dict:
        """The config as a JSON-ready dict."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[ConfigT], values: dict) -> ConfigT:
        """Inverse of `to_dict`; unknown keys are an error (they mean a different model version)."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known fields are {sorted(known)}")
        return cls(**values)
