"""Rebuild a run's self-contained HTML report from its run directory alone.

    python -m experiments.report results/referential-552d43ff5f-1a8f4a   # writes report.html there
    python -m experiments.report results/*                                 # every run directory given

The page (``experiments.common.html_report``): the study's question, the headline table with intervals, the plots,
decoded examples, bounds, every table of ``summary.md``, settings, provenance and the command that reruns the run.
A path that is not a run directory, or a run whose files are damaged, is named and the status is 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from calm.files import DamagedFileError
from experiments.common.html_report import write_html_report

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Write ``report.html`` in every run directory given; 0 when every one was written, else 2."""
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories (results/<run>)")
    args = parser.parse_args(argv)
    status = 0
    for run_dir in args.run_dirs:
        try:
            path = write_html_report(run_dir)
        except (FileNotFoundError, DamagedFileError, ValueError) as exc:
            print(f"experiments.report: error: {exc}", file=sys.stderr)
            status = 2
            continue
        print(f"[report] {path}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
