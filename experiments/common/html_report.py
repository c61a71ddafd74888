"""One self-contained HTML report per run: ``report.html`` beside ``summary.md``, built from the run directory alone.

Every study gets the same page (``report_template.html``, Jinja2): the question the study asks, the headline table
with intervals, the plots (embedded PNGs: the page reaches no network), decoded examples, the bounds, any sections of
its own, every table of ``summary.md``, the settings and provenance, and how to rerun. A study adds its own parts by
calling ``write_report_extras`` from its report step: ``headline.csv``, ``examples.csv`` and ``report.json`` (notes,
bounds, extra sections in Markdown). A study that adds none still gets a page: its headline is the first table of
its ``summary.md``, said so on the page.

``write_html_report(run_dir)`` is called when a run is marked finished (``experiments.common.rundir.mark_finished``);
``python -m experiments.report RUN_DIR`` rebuilds it.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calm.files import atomic_write_text, read_json
from calm.tracking import flatten_params

__all__ = ["EXAMPLES_FILE", "EXTRAS_FILE", "HEADLINE_FILE", "REPORT_FILE", "headline_columns", "headline_frame",
           "summary_table",
           "write_html_report", "write_report_extras"]

REPORT_FILE = "report.html"
HEADLINE_FILE = "headline.csv"
"""the study's headline table (intervals as columns), also the run's headline metrics in MLflow"""
EXAMPLES_FILE = "examples.csv"
"""decoded examples: text in and out, by protocol and SNR"""
EXTRAS_FILE = "report.json"
"""notes, bounds and extra sections a study adds to its page"""
_TEMPLATE = Path(__file__).with_name("report_template.html")


def write_report_extras(run_dir: Path, *, headline: Any = None, headline_note: str = "", examples: Any = None,
                        examples_note: str = "", bounds: Sequence[str] = (),
                        sections: Sequence[tuple[str, str]] = ()) -> None:
    """A study's own parts of its HTML report.

    Args:
        headline: a DataFrame, the table a reader looks at first (with its intervals); ``headline.csv``.
        examples: a DataFrame of decoded messages (text in, text out, protocol, SNR); ``examples.csv``.
        bounds: one Markdown line per bound or reference line, naming what it bounds.
        sections: ``(title, Markdown)`` of sections only this study has.
    """
    run_dir = Path(run_dir)
    if headline is not None:
        atomic_write_text(run_dir / HEADLINE_FILE, headline.to_csv(index=False))
    if examples is not None:
        atomic_write_text(run_dir / EXAMPLES_FILE, examples.to_csv(index=False))
    atomic_write_text(run_dir / EXTRAS_FILE, json.dumps(
        {"headline_note": headline_note, "examples_note": examples_note, "bounds": list(bounds),
         "sections": [{"title": t, "markdown": m} for t, m in sections]}, indent=2) + "\n")


def headline_frame(run_dir: Path):
    """The run's ``headline.csv`` as a DataFrame, or None."""
    import pandas as pd

    path = Path(run_dir) / HEADLINE_FILE
    return pd.read_csv(path, keep_default_na=False) if path.exists() else None


def headline_columns(frame) -> tuple[list[str], list[str]]:
    """``(keys, values)`` of a headline table: the text and whole-number columns (protocol, channel, n) name a row;
    the real-valued ones are its metrics (MLflow's headline metrics, ``experiments.compare``)."""
    from pandas.api.types import is_integer_dtype, is_numeric_dtype

    values = [c for c in frame.columns if is_numeric_dtype(frame[c]) and not is_integer_dtype(frame[c])]
    return [c for c in frame.columns if c not in values], values


def summary_table(path: Path):
    """The first Markdown table of a ``summary.md`` as a DataFrame (cells that read as numbers become numbers; the
    italics of a reference line dropped), or None when it has none."""
    import pandas as pd

    table, _ = _first_table(Path(path).read_text())
    if not table:
        return None
    lines = table.splitlines()
    cells = [[c.strip().strip("*") for c in line.strip().strip("|").split("|")] for line in lines]
    frame = pd.DataFrame(cells[2:], columns=cells[0])
    for column in frame.columns[1:]:
        converted = pd.to_numeric(frame[column], errors="coerce")
        if converted.notna().sum() >= frame[column].astype(bool).sum():  # every non-empty cell is a number
            frame[column] = converted.astype(float)
    return frame


def _markdown(text: str) -> str:
    import markdown

    return markdown.markdown(text, extensions=["tables", "fenced_code"])


def _first_table(summary: str) -> tuple[str, str]:
    """The first Markdown table of ``summary`` and the line above it (its caption), or ``("", "")``."""
    lines = summary.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[i + 1]):
            end = i
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            caption = lines[i - 1].strip() if i > 0 and lines[i - 1].strip() and not lines[i - 1].startswith("#") else ""
            return "\n".join(lines[i:end]), caption
    return "", ""


def _table_html(frame, css: str) -> str:
    return frame.to_html(index=False, classes=css, border=0, na_rep="", escape=True, float_format=lambda v: f"{v:.4g}")


def _plots(run_dir: Path) -> list[dict[str, str]]:
    return [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode("ascii")}
            for p in sorted(Path(run_dir).glob("*.png"))]


def write_html_report(run_dir: Path) -> Path:
    """Build ``run_dir/report.html`` from the run directory's files; returns its path.

    Raises:
        DamagedFileError: ``run.json``, ``config.json``, ``report.json`` or ``tracking.json`` cannot be read.
        FileNotFoundError: ``run_dir`` holds no run (no ``run.json``).
    """
    import jinja2
    import pandas as pd

    run_dir = Path(run_dir).resolve()
    if not (run_dir / "run.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no run.json)")
    run = read_json(run_dir / "run.json", what="run record")
    config = read_json(run_dir / "config.json", what="run config") if (run_dir / "config.json").exists() else {}
    extras = read_json(run_dir / EXTRAS_FILE, what="report extras") if (run_dir / EXTRAS_FILE).exists() else {}
    tracking = read_json(run_dir / "tracking.json", what="tracking record") if (run_dir / "tracking.json").exists() else None
    summary = (run_dir / "summary.md").read_text() if (run_dir / "summary.md").exists() else ""
    title_match = re.search(r"^# (.+)$", summary, flags=re.M)
    title = title_match.group(1) if title_match else f"{run.get('experiment', 'run')}: {run_dir.name}"
    summary_body = summary.replace(title_match.group(0), "", 1) if title_match else summary

    headline_note = extras.get("headline_note", "")
    frame = headline_frame(run_dir)
    if frame is not None:
        headline = _table_html(frame, "headline")
    else:
        table, caption = _first_table(summary_body)
        headline = (_markdown(table).replace("<table>", '<table class="headline">', 1) if table
                    else '<p class="note">This run has no table yet (no rows).</p>')
        headline_note = f"{caption} (the first table of summary.md)" if caption else "The first table of summary.md."
    examples = None
    if (run_dir / EXAMPLES_FILE).exists():
        examples = _table_html(pd.read_csv(run_dir / EXAMPLES_FILE, keep_default_na=False), "examples")
    results = run_dir / "results.csv"
    rows = max(0, len(results.read_text().splitlines()) - 1) if results.exists() else 0
    cfg = config.get("config", {}) if isinstance(config.get("config"), dict) else {}
    provenance = [("run directory", str(run_dir)), ("experiment", run.get("experiment")),
                  ("settings hash", run.get("settings_hash")), ("checkpoint", config.get("checkpoint_id")),
                  ("git commit of the rows", config.get("git_commit")), ("torch", config.get("torch_version")),
                  ("ray", config.get("ray_version")), ("python", config.get("python")),
                  ("corpus", cfg.get("corpus")), ("tokenizer", cfg.get("tokenizer")),
                  ("MLflow run", tracking and f"{tracking.get('run_id')} in {tracking.get('uri')}")]
    page = jinja2.Template(_TEMPLATE.read_text(), autoescape=True).render(
        title=title, experiment=run.get("experiment", ""), finished=bool(run.get("finished")), rows=rows,
        commit=(config.get("git_commit") or "unknown")[:12], written=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        question=config.get("question") or "(this run's config.json does not say)",
        convention=_convention(summary), headline=headline, headline_note=headline_note, plots=_plots(run_dir),
        examples=examples, examples_note=extras.get("examples_note", ""),
        bounds=[_inline(b) for b in extras.get("bounds", [])],
        sections=[{"id": f"s{i}", "title": s["title"], "html": _markdown(s["markdown"])}
                  for i, s in enumerate(extras.get("sections", []))],
        summary=_markdown(summary_body), provenance=[(k, v) for k, v in provenance if v],
        settings=sorted(flatten_params(cfg).items()), rerun=config.get("rerun") or "(not recorded)",
        run_dir=str(run_dir), tracking=tracking if tracking and tracking.get("tracking") == "mlflow" else None)
    path = run_dir / REPORT_FILE
    atomic_write_text(path, page)
    return path


def _inline(text: str) -> str:
    """One line of Markdown as inline HTML (no wrapping paragraph)."""
    out = _markdown(text).strip()
    return out[3:-4] if out.startswith("<p>") and out.endswith("</p>") else out


def _convention(summary: str) -> str:
    """The SNR convention sentence when the run's summary states it."""
    from experiments.common.tables import CONVENTION_NOTE

    return CONVENTION_NOTE.replace("`", "") if "Es/N0" in summary else ""
