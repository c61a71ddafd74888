"""Validation curves of cached trained models, read from their ``train_info.json`` (``history`` records).

    python scripts/plot_training_curves.py runs/lm-jscc-n32-awgn-* runs/lm-jscc-n16-awgn-* \
        --metric-prefix val_acc_ --out docs/img/lm_jscc_validation.png

One panel per checkpoint directory, one line per metric whose name starts with ``--metric-prefix`` (e.g. the
decoded token accuracy at each validation SNR), against the optimiser step. A directory without a history is
named and refused (exit 2), never skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def curves(directory: Path, prefix: str) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` of the history records in ``directory/train_info.json``."""
    path = directory / "train_info.json"
    try:
        history = json.loads(path.read_text())["history"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: no readable training history ({type(exc).__name__}: {exc})") from None
    out: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        for name, value in record.items():
            if name.startswith(prefix) and isinstance(value, (int, float)):
                out.setdefault(name[len(prefix):], []).append((int(record["step"]), float(value)))
    if not out:
        raise ValueError(f"{path}: no metric starting with {prefix!r} in its history")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="checkpoint directories holding train_info.json")
    parser.add_argument("--metric-prefix", default="val_acc_", help="plot metrics whose name starts with this")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        panels = [(d, curves(d, args.metric_prefix)) for d in args.dirs]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, sharey=True)
    for ax, (d, metrics) in zip(axes[0], panels):
        for name, points in metrics.items():
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", label=name)
        ax.set_title(d.name, fontsize=9)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(args.metric_prefix.rstrip("_"))
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
