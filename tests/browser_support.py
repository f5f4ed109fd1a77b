"""The browser suites' shared helpers (tests/test_lab.py, tests/test_browser.py): playwright driving the system Chromium.

Never `playwright install` (it downloads a browser; the project's machines are offline): playwright drives the Chromium
installed by the system (apt's /usr/bin/chromium, else `chromium` or `chromium-browser` on PATH). Without Chromium or
without the playwright package a browser test skips, naming what is missing, unless LIPNOTES_BROWSER=required (CI sets
it): then it fails instead, so that a CI machine without a browser cannot pass by skipping.
"""
import os, shutil
import pytest

# Headless Chromium in a container, on a closed network: no sandbox (root), no GPU, and none of the background
# connections (QUIC, component updates, sync, ...) it would otherwise keep attempting.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def browser_required() -> bool:
    "Whether the browser tests must run (LIPNOTES_BROWSER=required) rather than skip when the browser is missing."
    return os.environ.get("LIPNOTES_BROWSER") == "required"


def unavailable(reason: str):
    "Skip the calling test for `reason`, or fail it when LIPNOTES_BROWSER=required."
    if browser_required():
        pytest.fail(f"{reason}, and LIPNOTES_BROWSER=required", pytrace=False)
    pytest.skip(f"{reason} (set LIPNOTES_BROWSER=required to fail instead)")


def chromium_path_or_skip() -> str:
    "The system Chromium's path, once the playwright package is known importable; else skip (or fail: see above)."
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("the playwright package is not installed (pip install -e '.[dev]'; never `playwright install`)")
    for path in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    unavailable("no Chromium: neither /usr/bin/chromium nor chromium/chromium-browser on PATH (apt-get install chromium)")


def launch(playwright):
    "A headless Chromium from `playwright` (a `sync_playwright()` instance) with the flags above; close it when done."
    return playwright.chromium.launch(executable_path=chromium_path_or_skip(), headless=True, args=CHROMIUM_ARGS)
