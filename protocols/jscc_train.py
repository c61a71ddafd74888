"""Train a JSCC adapter with Ray Train: ``calm.train``'s CLI with the ``jscc`` task (``protocols.jscc_task``).

    python -m protocols.jscc_train --ae runs/ae-k4 --channel-uses 16 --out runs/jscc-n16 \
        [--preset tiny|tiny-mixed] [--passage-length 32] [--workers N] [--steps N] [--resume] ...

The flags are ``calm.train``'s for the ``jscc`` task (``--help`` lists them; its usage line reads
``python -m calm.train jscc``): the same parser, loop and Ray driver as every model kind. The result is a
``calm.checkpoint`` directory that ``protocols.jscc`` loads.
"""

from __future__ import annotations

import sys

from calm.loop import FitResult, NonFiniteLossError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> FitResult:
    """``calm.train.main(["jscc", *argv])`` with the jscc task registered."""
    import protocols.jscc_task  # noqa: F401  (registers the jscc task with calm.tasks)
    from calm.train import main as train_main

    return train_main(["jscc", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    try:
        main()
    except NonFiniteLossError as exc:
        print(f"protocols.jscc_train: stopped: {exc}", file=sys.stderr)
        sys.exit(1)
