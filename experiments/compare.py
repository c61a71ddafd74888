"""Several runs' headline metrics side by side, and the settings in which they differ.

    python -m experiments.compare results/referential-aaa results/referential-bbb
    python -m experiments.compare results/* --html compare.html --csv compare.csv

Each run's headline is its ``headline.csv`` (the table its HTML report opens with), or, for a study that writes
none, the first table of its ``summary.md``. Rows are matched on the headline's text and whole-number columns
(protocol, receiver, channel, n); each real-valued column becomes one line per run, so a metric reads across. The
MLflow UI does the same for tracked runs (``mlflow ui --backend-store-uri sqlite:///results/mlflow.db``: select the
runs, then Compare). A path that is not a run directory is named and the status is 2.
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from calm.files import DamagedFileError, atomic_write_text, read_json
from calm.tracking import flatten_params
from experiments.common.html_report import headline_columns, headline_frame, summary_table

__all__ = ["compare_runs", "differing_settings", "main", "run_headline"]


def run_headline(run_dir: Path):
    """The run's headline table as a DataFrame (``headline.csv``, else the first table of ``summary.md``).

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory, or it has neither table yet.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no run.json)")
    frame = headline_frame(run_dir)
    if frame is None and (run_dir / "summary.md").exists():
        frame = summary_table(run_dir / "summary.md")
    if frame is None:
        raise FileNotFoundError(f"{run_dir} has no headline.csv and no table in summary.md (an unfinished run?)")
    return frame


def compare_runs(run_dirs: list[Path]):
    """One table: a row per (headline key, metric), a column per run (its directory name)."""
    import pandas as pd

    long = []
    for run_dir in run_dirs:
        frame = run_headline(run_dir)
        keys, values = headline_columns(frame)
        melted = frame.melt(id_vars=keys, value_vars=values, var_name="metric", value_name="value")
        melted["row"] = melted[keys].astype(str).agg(" / ".join, axis=1) if keys else ""
        melted["run"] = Path(run_dir).name
        long.append(melted[["row", "metric", "run", "value"]])
    table = pd.concat(long, ignore_index=True)
    order = list(dict.fromkeys(Path(d).name for d in run_dirs))
    wide = table.pivot_table(index=["row", "metric"], columns="run", values="value", aggfunc="first", sort=False)
    return wide.reindex(columns=order).reset_index()


def differing_settings(run_dirs: list[Path]):
    """The settings (``config.json``) whose values differ between the runs: a row per setting, a column per run."""
    import pandas as pd

    flat = {}
    for run_dir in run_dirs:
        path = Path(run_dir) / "config.json"
        config = read_json(path, what="run config") if path.exists() else {}
        flat[Path(run_dir).name] = {**flatten_params(config.get("config", {})),
                                    "experiment": str(config.get("experiment", read_json(
                                        Path(run_dir) / "run.json", what="run record").get("experiment"))),
                                    "git_commit": str(config.get("git_commit"))}
    names = sorted(set().union(*(f.keys() for f in flat.values())))
    rows = [{"setting": n, **{run: f.get(n, "") for run, f in flat.items()}} for n in names
            if len({f.get(n, "") for f in flat.values()}) > 1]
    return pd.DataFrame(rows, columns=["setting", *flat])


def _markdown(frame) -> str:
    cells = [[str(c) for c in frame.columns]] + [[_fmt(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells[1:]])


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"  # NaN: the run has no such row
    return str(value)


def main(argv: list[str] | None = None) -> int:
    """Print the comparison (and write ``--html`` / ``--csv``); 0, or 2 when a path is not a readable run."""
    parser = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories (results/<run>)")
    parser.add_argument("--html", type=Path, help="also write the comparison as a self-contained HTML page")
    parser.add_argument("--csv", type=Path, help="also write the metrics table as CSV")
    args = parser.parse_args(argv)
    try:
        table = compare_runs(args.run_dirs)
        settings = differing_settings(args.run_dirs)
    except (FileNotFoundError, DamagedFileError, ValueError) as exc:
        print(f"experiments.compare: error: {exc}", file=sys.stderr)
        return 2
    print("## Headline metrics\n\n" + _markdown(table) + "\n\n## Settings that differ\n\n"
          + (_markdown(settings) if len(settings) else "none") + "\n")
    if args.csv:
        atomic_write_text(args.csv, table.to_csv(index=False))
    if args.html:
        style = ("body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse;font-size:.85rem}"
                 "td,th{border:1px solid #ccd;padding:.2rem .5rem;text-align:right}td:first-child,th:first-child,"
                 "td:nth-child(2){text-align:left}th{background:#eef}")
        page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Comparison of {len(args.run_dirs)} "
                f"runs</title><style>{style}</style></head><body><h1>Comparison of {len(args.run_dirs)} runs</h1>"
                f"<p>{html.escape(', '.join(str(d) for d in args.run_dirs))}</p><h2>Headline metrics</h2>"
                + table.to_html(index=False, classes="compare", border=0, na_rep="", float_format=lambda v: f"{v:.4g}")
                + "<h2>Settings that differ</h2>"
                + (settings.to_html(index=False, classes="settings", border=0) if len(settings) else "<p>none</p>")
                + "</body></html>\n")
        atomic_write_text(args.html, page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
