"""Render a local, self-contained HTML file in a real headless Chromium and report what a person would see.

A helper for tests (not a test module): ``from browser import render_page`` (tests/ has no ``__init__.py``;
pytest puts tests/ on ``sys.path``). It drives Debian's ``chromium`` with its matching ``chromedriver``
(``scripts/install_browser.sh`` installs both) through Selenium, and never downloads a driver or a browser:
the driver path is given to ``Service``, so Selenium Manager is skipped, and ``SE_OFFLINE=true`` is set in
case anything reaches it anyway. The flags keep Chromium off the (closed) network.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install_browser.sh"
MAX_SCREENSHOT_HEIGHT = 20000  # px: a taller page is cut there in the screenshot (page_height stays the true one)
PAGE_LOAD_TIMEOUT_S = 60
IMAGE_SETTLE_TIMEOUT_S = 10  # after the resize, images that start loading then (loading="lazy") get this long

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    # no DNS: Debian's Chromium otherwise resolves its default search engine (start.duckduckgo.com) at start;
    # a page that names a remote host fails at once (net::ERR_NAME_NOT_RESOLVED, a console error) instead
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
    "--hide-scrollbars",  # a scrollbar would take width from the page in the screenshot
    "--force-device-scale-factor=1",  # screenshot pixels == CSS pixels
)

# Installed before any page script runs (CDP Page.addScriptToEvaluateOnNewDocument): records uncaught errors and
# unhandled promise rejections, so they are reported even where the browser log would miss them.
_ERROR_COLLECTOR = """
window.__harnessErrors = [];
window.addEventListener('error', function (e) {
  if (e.target && e.target !== window) { return; }  // resource load failures: not script errors
  var text = e.error && e.error.stack ? String(e.error.stack) : String(e.message);
  window.__harnessErrors.push({key: e.error ? String(e.error) : String(e.message),
                               text: 'Uncaught ' + text + ' (' + e.filename + ':' + e.lineno + ')'});
}, true);
window.addEventListener('unhandledrejection', function (e) {
  var r = e.reason;
  window.__harnessErrors.push({key: String(r),
                               text: 'Unhandled rejection: ' + (r && r.stack ? String(r.stack) : String(r))});
});
"""

_MEASURE = """
const selectors = arguments[0];
const shown = (el) => {
  const r = el.getBoundingClientRect();
  if (!(r.width > 0 && r.height > 0)) { return false; }
  // display:none / visibility:hidden / content-visibility on it or an ancestor, and opacity 0
  return el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true});
};
const matched = {}, visible = {};
for (const s of selectors) {
  const els = Array.from(document.querySelectorAll(s));
  matched[s] = els.length;
  visible[s] = els.filter(shown).length;
}
const broken = Array.from(document.images)
  .filter((img) => !img.complete || img.naturalWidth === 0)
  .map((img) => (img.getAttribute('src') || '').slice(0, 60));
return {matched: matched, visible: visible, broken: broken,
        errors: window.__harnessErrors || []};
"""

_PAGE_HEIGHT = ("return Math.max(document.documentElement.scrollHeight, "
                "document.body ? document.body.scrollHeight : 0);")


@dataclasses.dataclass
class PageReport:
    """What the rendered page showed.

    console_errors: browser log entries of level SEVERE (uncaught JS errors, failed resource loads,
        ``console.error``), plus uncaught errors / unhandled rejections caught in the page that the log lacks.
    visible: selector -> number of matched elements that are displayed (no ``display:none``,
        ``visibility:hidden`` or ``opacity:0`` on them or an ancestor) with nonzero width and height.
    matched: selector -> number of elements ``querySelectorAll`` matched.
    broken_images: the first 60 characters of the ``src`` of every ``<img>`` not loaded (``complete`` false or
        ``naturalWidth`` 0), in document order.
    title: the document title.
    page_height: the document's scroll height in CSS px at the requested width (not capped).
    console_messages: every browser log entry, as "LEVEL message" (for diagnosing a failure).
    """

    console_errors: list[str]
    visible: dict[str, int]
    matched: dict[str, int]
    broken_images: list[str]
    title: str
    page_height: int
    console_messages: list[str] = dataclasses.field(default_factory=list)


def browser_available() -> bool:
    """True when /usr/bin/chromium and /usr/bin/chromedriver exist and Selenium imports."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        return False
    try:
        import selenium.webdriver  # noqa: F401
    except ImportError:
        return False
    return True


def ensure_browser() -> None:
    """Install Chromium and chromedriver with scripts/install_browser.sh (apt) when either is missing.

    Raises RuntimeError, with the script's output, if the script fails or leaves them missing, and
    ImportError if Selenium is not installed (``pip install -e '.[dev]'``).
    """
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=1800)
        output = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise RuntimeError(f"{INSTALL_SCRIPT} failed (exit {proc.returncode}):\n{output}")
        if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
            raise RuntimeError(f"{INSTALL_SCRIPT} succeeded but {CHROMIUM} or {CHROMEDRIVER} is missing:\n{output}")
    import selenium.webdriver  # noqa: F401  (an ImportError names the missing dev dependency)


def _start_driver(profile_dir: str, driver_log: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager, were it ever run, stays offline
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=driver_log)
    return webdriver.Chrome(service=service, options=options)


def _wait(driver, condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout_s} s")
        time.sleep(0.05)


def render_page(html_path: str | os.PathLike, screenshot_path: str | os.PathLike, *, selectors: list[str],
                width: int = 1280) -> PageReport:
    """Load ``html_path`` (a local file, through its file:// URI) in headless Chromium at ``width`` CSS px,
    write a full-page PNG screenshot to ``screenshot_path`` and report what was shown.

    The window is resized to the document's scroll height (capped at MAX_SCREENSHOT_HEIGHT) before the
    screenshot, so the PNG is ``width`` px wide and as tall as the page. Counts in ``visible`` and
    ``broken_images`` are taken after that resize, once every image finished loading (or
    IMAGE_SETTLE_TIMEOUT_S passed). The browser is always shut down.
    """
    html = Path(html_path).resolve()
    if not html.is_file():
        raise FileNotFoundError(html)
    shot = Path(screenshot_path)
    shot.parent.mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="latentcomm-chromium-")
    driver_log = os.path.join(workdir, "chromedriver.log")
    driver = None
    try:
        try:
            driver = _start_driver(os.path.join(workdir, "profile"), driver_log)
        except Exception as err:
            log = Path(driver_log).read_text(errors="replace")[-4000:] if os.path.exists(driver_log) else ""
            raise RuntimeError(f"could not start Chromium through chromedriver: {err}\n{log}") from err
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
        driver.set_script_timeout(30)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _ERROR_COLLECTOR})
        _resize_viewport(driver, width, 800)
        driver.get(html.as_uri())
        _wait(driver, lambda: driver.execute_script("return document.readyState") == "complete",
              PAGE_LOAD_TIMEOUT_S, f"{html} not loaded")

        page_height = int(driver.execute_script(_PAGE_HEIGHT))
        _resize_viewport(driver, width, max(1, min(page_height, MAX_SCREENSHOT_HEIGHT)))
        try:  # images that only start loading once in view (loading="lazy")
            _wait(driver, lambda: driver.execute_script(
                "return Array.from(document.images).every((i) => i.complete)"),
                IMAGE_SETTLE_TIMEOUT_S, "images still loading")
        except TimeoutError:
            pass  # reported as broken (complete == false)
        page_height = int(driver.execute_script(_PAGE_HEIGHT))
        measured = driver.execute_script(_MEASURE, list(selectors))
        if not driver.save_screenshot(str(shot)):
            raise RuntimeError(f"Chromium wrote no screenshot to {shot}")
        title = driver.title

        entries = driver.get_log("browser")
        messages = [f"{e.get('level')} {e.get('message')}" for e in entries]
        errors = [str(e.get("message")) for e in entries if e.get("level") == "SEVERE"]
        for err in measured["errors"]:  # caught in the page; add those the log does not already hold
            if not any(err["key"] in logged for logged in errors):
                errors.append(err["text"])
        return PageReport(console_errors=errors, visible={k: int(v) for k, v in measured["visible"].items()},
                          matched={k: int(v) for k, v in measured["matched"].items()},
                          broken_images=list(measured["broken"]), title=title, page_height=page_height,
                          console_messages=messages)
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(workdir, ignore_errors=True)


def _resize_viewport(driver, width: int, height: int) -> None:
    """Make the viewport (not the outer window) ``width`` x ``height`` CSS px."""
    driver.set_window_size(width, height)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight];")
    dw, dh = width - int(inner[0]), height - int(inner[1])
    if dw or dh:  # window decorations: grow the window by the difference
        driver.set_window_size(width + dw, height + dh)
