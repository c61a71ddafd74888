"""SNR mismatch of learned adapters: token accuracy vs Es/N0 of jscc adapters trained at one SNR beside the
SNR-adaptive one, from reconstruction runs (issue 32, point 4).

    python -m experiments.reconstruction --protocols jscc                         # adaptive (-6..20 dB)
    python -m experiments.reconstruction --protocols jscc --jscc-train-snr-db 0   # trained at 0 dB only
    python scripts/plot_snr_mismatch.py RUN_DIR... [--channel awgn] [--out docs/img/jscc_snr_mismatch.png]

Each run directory's ``config.json`` says how its adapter was trained (``jscc_train_snr_db``; none: adaptive). Prints
a markdown table (rows: training, columns: test Es/N0) and draws the curves.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load(run_dirs: list[Path], channel: str, protocol: str = "jscc") -> dict[str, pd.Series]:
    """``training label -> token accuracy by test Es/N0`` (pooled over seeds) of each run's ``protocol`` rows."""
    curves = {}
    for d in run_dirs:
        cfg = json.loads((d / "config.json").read_text())["config"]
        fixed = cfg.get("jscc_train_snr_db")
        label = "SNR-adaptive, trained -6..20 dB" if fixed is None else f"trained at {fixed:g} dB only"
        rows = pd.read_csv(d / "results.csv")
        rows = rows[(rows.protocol == protocol) & (rows.channel == channel)]
        if rows.empty:
            raise SystemExit(f"{d}: no {protocol} rows on {channel}")
        curves[label] = rows.groupby("snr_db").token_accuracy.mean().sort_index()
    return curves


def table(curves: dict[str, pd.Series]) -> str:
    snrs = sorted({s for c in curves.values() for s in c.index}, reverse=True)
    head = "| training | " + " | ".join("noiseless" if math.isinf(s) else f"{s:.1f} dB" for s in snrs) + " |"
    lines = [head, "|---|" + "---:|" * len(snrs)]
    for label, c in curves.items():
        lines.append(f"| {label} | " + " | ".join(f"{c[s]:.3f}" if s in c.index else "" for s in snrs) + " |")
    return "\n".join(lines)


def plot(curves: dict[str, pd.Series], path: Path, channel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from calm.files import save_figure
    from environments.convention import SNR_LABEL

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, c in curves.items():
        finite = c[[not math.isinf(s) for s in c.index]]
        style = {"lw": 2.2, "color": "k"} if label.startswith("SNR-adaptive") else {"lw": 1.3, "ls": "--"}
        ax.plot(finite.index, finite.values, marker="o", ms=3, label=label, **style)
    ax.set_xlabel(SNR_LABEL)
    ax.set_ylabel("token accuracy")
    ax.set_title(f"jscc adapters on {channel}: trained at one SNR vs SNR-adaptive", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    from calm.cli import OneLineErrorParser

    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--channel", default="awgn")
    parser.add_argument("--out", type=Path, default=Path("docs/img/jscc_snr_mismatch.png"))
    args = parser.parse_args(argv)
    for d in args.run_dirs:
        if not (d / "results.csv").is_file() or not (d / "config.json").is_file():
            parser.error(f"{d} is not a finished run directory (results.csv and config.json)")
    curves = load(args.run_dirs, args.channel)
    plot(curves, args.out, args.channel)
    print(table(curves))
    print(f"\n{args.out}")


if __name__ == "__main__":
    main()
