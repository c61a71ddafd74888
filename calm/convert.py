"""Convert a released CALM checkpoint (the official code's layout) into ours, once.

    python -m calm.convert SOURCE OUT [--tokenizer DIR] [--autoencoder DIR] [--overwrite]

SOURCE is a local directory in the released layout (``config.json`` + ``pytorch_model.bin`` or
``model.safetensors``), or a hub id such as ``cccczshao/CALM-M`` where the hub is reachable (offline it stops
at once and says to pass a directory). OUT becomes one of our checkpoints (``model.safetensors``,
``config.json``, ``tokenizer.json``) plus ``converted_from.json`` (the source and the sha256 of its files);
every experiment then takes it as ``--checkpoint`` (an autoencoder) or ``--lm-checkpoint`` (a CALM). The
mapping and the architecture variants are in ``calm.official``; ``.bin`` files are read with torch's
weights-only loader only. Converting twice gives byte-identical files, and loading OUT gives bit-identical
weights to loading SOURCE.

Exit status 2 with one line for every refused input (a missing or foreign directory, a pickle payload, a
tensor with no place, a shape or vocabulary mismatch).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from calm.checkpoint import CheckpointError, model_type_of, save_pretrained
from calm.cli import OneLineErrorParser
from calm.files import DamagedFileError, atomic_write_text

__all__ = ["convert", "main"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert(source: str | os.PathLike, out: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
            autoencoder: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write the released checkpoint ``source`` as our checkpoint ``out`` and return ``out``.

    Raises:
        CheckpointError: ``out`` holds files and ``overwrite`` is False, or what ``calm.official.load_released``
            raises (no checkpoint, a tensor with no place, a shape or vocabulary mismatch).
        DamagedFileError: a damaged file of the source, or a ``.bin`` with a pickle that is not plain weights.
    """
    from calm.official import load_released, resolve_source

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise CheckpointError(f"{out} already holds files; pass --overwrite to replace them")
    directory = resolve_source(source)
    model, tok = load_released(directory, tokenizer=tokenizer, autoencoder=autoencoder)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    save_pretrained(model, tmp, tok)
    files = {p.name: _sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.suffix in (".json", ".bin", ".safetensors")}
    record = {"source": str(source), "kind": model_type_of(model), "files": files,
              "tokenizer": str(tokenizer) if tokenizer is not None else "the checkpoint's own",
              "num_parameters": sum(p.numel() for p in model.parameters())}
    atomic_write_text(tmp / "converted_from.json", json.dumps(record, indent=2) + "\n")
    if out.exists():
        for p in out.iterdir():
            p.unlink() if p.is_file() else None
        out.rmdir() if not any(out.iterdir()) else None
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m calm.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="released checkpoint directory (or a hub id, where the hub is reachable)")
    parser.add_argument("out", help="our checkpoint directory to write")
    parser.add_argument("--tokenizer", help="directory or tokenizer.json, when SOURCE holds none (the released "
                                            "models: the official repo's llama3_tokenizer)")
    parser.add_argument("--autoencoder", help="for a CALM: the released autoencoder directory, checked against the "
                                              "LM's own copy")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty OUT")
    args = parser.parse_args(argv)
    try:
        out = convert(args.source, args.out, tokenizer=args.tokenizer, autoencoder=args.autoencoder,
                      overwrite=args.overwrite)
    except (CheckpointError, DamagedFileError) as exc:
        parser.error(str(exc))
    record = json.loads((out / "converted_from.json").read_text())
    print(f"wrote {out}: {record['kind']} checkpoint of {record['num_parameters']:,} parameters from {args.source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
