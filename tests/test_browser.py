"""The headless-Chromium harness (tests/browser.py): what it reports of a rendered page must match the page.

The module installs Chromium with apt when it is missing (scripts/install_browser.sh) and fails, never skips,
when that install fails.
"""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path

import pytest
from browser import PageReport, ensure_browser, render_page

pytestmark = pytest.mark.browser

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _browser() -> None:
    ensure_browser()  # RuntimeError (a test error, not a skip) when the apt install fails


@pytest.fixture(autouse=True)
def _no_selenium_manager(monkeypatch) -> None:
    """The harness must never run Selenium Manager (it would try to download a driver or a browser)."""
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    def refuse(*args, **kwargs):
        raise AssertionError("Selenium Manager was invoked")

    monkeypatch.setattr(SeleniumManager, "binary_paths", refuse)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _plot_png_base64() -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2), dpi=80)
    ax.plot([0, 1, 2], [0, 1, 4])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _render(tmp_path: Path, body: str, selectors: list[str], **kwargs) -> tuple[PageReport, Path]:
    html = tmp_path / "page.html"
    html.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>Report</title></head>"
                    f"<body>{body}</body></html>", encoding="utf-8")
    shot = tmp_path / "page.png"
    return render_page(html, shot, selectors=selectors, **kwargs), shot


def test_report_page_renders_cleanly(tmp_path):
    body = (f"<h1 id='head'>Results</h1>"
            f"<table id='scores'><tr><th>run</th><th>acc</th></tr><tr><td>a</td><td>0.91</td></tr></table>"
            f"<img id='plot' alt='plot' src='data:image/png;base64,{_plot_png_base64()}'>")
    report, shot = _render(tmp_path, body, ["h1", "#scores", "#scores td", "img#plot", ".absent"])

    assert report.console_errors == [], report.console_messages
    assert report.broken_images == []
    assert report.title == "Report"
    assert report.matched == {"h1": 1, "#scores": 1, "#scores td": 2, "img#plot": 1, ".absent": 0}
    assert report.visible == {"h1": 1, "#scores": 1, "#scores td": 2, "img#plot": 1, ".absent": 0}
    assert shot.stat().st_size > 0
    width, height = _png_size(shot)
    assert width == 1280
    assert height == report.page_height > 160  # the 240x160 plot is on the page


def test_uncaught_script_error_is_a_console_error(tmp_path):
    report, _ = _render(tmp_path, "<p>text</p><script>throw new Error(\"boom\")</script>", ["p"])
    assert any("boom" in err for err in report.console_errors), report.console_messages
    assert report.visible == {"p": 1}  # the page still shows


def test_hidden_element_is_matched_not_visible_and_screenshot_is_full_page(tmp_path):
    body = ("<div class='box' style='display:none'>hidden</div>"
            "<div class='box' style='height:3000px'>tall</div>"
            "<div class='box' style='visibility:hidden'>invisible</div>"
            "<span class='empty'></span>")
    report, shot = _render(tmp_path, body, [".box", ".empty"], width=800)

    assert report.matched == {".box": 3, ".empty": 1}
    assert report.visible == {".box": 1, ".empty": 0}
    assert report.console_errors == [], report.console_messages
    assert report.page_height >= 3000
    assert _png_size(shot) == (800, report.page_height)  # the whole page, not the first screenful


def test_bad_image_is_broken(tmp_path):
    good = _plot_png_base64()
    body = (f"<img src='data:image/png;base64,{good}'>"
            "<img src='data:image/png;base64,bm90IGEgcG5nIGF0IGFsbA=='>"
            "<img src='missing.png'>")
    report, _ = _render(tmp_path, body, ["img"])

    assert report.matched == {"img": 3}
    assert report.broken_images == ["data:image/png;base64,bm90IGEgcG5nIGF0IGFsbA==", "missing.png"]
    # a missing file is logged; an undecodable data: URI is not (Chromium logs nothing for it)
    assert any("missing.png" in err for err in report.console_errors), report.console_messages
