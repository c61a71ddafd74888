"""Files a run writes and reads back: atomic writes, and reads that name a damaged file instead of absorbing it.

Every result, row, config and report file is written with ``atomic_write_text`` / ``atomic_write_bytes``
(a private temporary file in the same directory, then ``os.replace``), so a reader never sees half a file and
a run stopped mid-write leaves the old file or the new one. ``read_json`` reads a file another run wrote: a
file that is there but cannot be read (truncated, not JSON, a directory, the wrong kind of value) raises
``DamagedFileError`` naming the path, what is wrong and how to remove it. ``DamagedFileError`` is not a
``ValueError``: code that treats a ``ValueError`` as "this cannot be built" never mistakes damage for it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["DamagedFileError", "atomic_write_bytes", "atomic_write_text", "read_json", "save_figure"]


class DamagedFileError(Exception):
    """A file a run relies on is there but cannot be used: its path, what is wrong, and what to do."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix or f"remove it (rm -r {self.path}) and rerun to rebuild it"
        super().__init__(f"damaged file {self.path}: {problem}; {self.fix}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (os.umask can only be read by setting it)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (a temporary file beside it, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600: a result file is as readable as any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode())


def read_json(path: str | os.PathLike, *, expect: type | tuple[type, ...] = dict, what: str = "file",
              fix: str | None = None) -> Any:
    """The JSON value in ``path``, which must be there and hold an ``expect`` (a dict by default).

    Raises:
        FileNotFoundError: nothing is at ``path``.
        DamagedFileError: ``path`` is there but is a directory, cannot be read, is not JSON (truncated) or
            holds another kind of value; the message names the path, ``what`` it is and ``fix``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}")
    if not path.is_file():
        raise DamagedFileError(path, f"the {what} is a directory, not a file", fix)
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedFileError(path, f"the {what} cannot be read ({exc})", fix) from None
    except json.JSONDecodeError as exc:
        raise DamagedFileError(path, f"the {what} is not valid JSON ({exc.msg} at line {exc.lineno} column "
                                     f"{exc.colno}; truncated?)", fix) from None
    if not isinstance(value, expect):
        kinds = expect if isinstance(expect, tuple) else (expect,)
        raise DamagedFileError(path, f"the {what} holds a {type(value).__name__}, not a "
                                     f"{' or '.join(k.__name__ for k in kinds)}", fix)
    return value


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` (a matplotlib figure) to ``path`` atomically, in the format of its suffix."""
    import io

    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    return atomic_write_bytes(path, buffer.getvalue())
