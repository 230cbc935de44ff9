"""The documentation site builds with ``mkdocs build --strict`` and its pages render in a real browser.

The site (docs/, mkdocs.yml) is built into a temporary folder, served on loopback with
``python -m http.server``, and the home page and an API reference page are opened in headless
Chromium (Debian's ``chromium``, which ``.ci/browser.sh`` installs, driven by the ``playwright``
package of the dev extra). Any console error, page error or request to another host fails: the
site must render offline. Skipped, saying why, where mkdocs, Chromium or playwright is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# page -> text it must show once rendered
PAGES = {
    "": "Experiment-tracked ablation studies",
    "reference/stats/": "The statistics of an ablation study",
}


def _need_mkdocs() -> None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is missing
            found = False
        if not found:
            pytest.skip(f"no {module}: pip install -e '.[dev]' (mkdocs-material, mkdocstrings-python)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built with --strict into a temporary folder (a broken link or docstring fails here)."""
    _need_mkdocs()
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_strict_build_writes_every_page(site):
    for page in PAGES:
        assert (site / page / "index.html").is_file(), page
    assert (site / "ui.png").is_file()  # the screenshot the MLflow page shows
    html = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html  # theme.font: false


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(site):
    """``http://127.0.0.1:PORT/`` serving the built site."""
    port = _free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base, timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"http.server did not answer {base}")
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_home_and_reference_pages_render_without_console_errors(served):
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

            def offline(route):  # the site must not fetch anything from another host
                if route.request.url.startswith(served) or route.request.url.startswith("data:"):
                    route.continue_()
                else:
                    problems.append(f"request to another host: {route.request.url}")
                    route.abort()

            page.route("**/*", offline)
            for path, text in PAGES.items():
                response = page.goto(served + path, wait_until="load")
                assert response is not None and response.ok, f"{path}: {response and response.status}"
                page.get_by_text(text).first.wait_for(timeout=30_000)
                assert page.title().strip(), path
                page.wait_for_timeout(500)  # let deferred scripts (search worker, palette) run
        finally:
            browser.close()
    assert not problems, "\n".join(problems)
