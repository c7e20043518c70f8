"""Helpers to drive the app in a real browser: a headless `streamlit run app.py` on a free port and
Chromium (Debian's binary) through Playwright. Used by tests/test_browser.py and
bench/app_walkthrough.py; nothing here is a test."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LONG = 90_000  # ms: a page's first run imports torch and may load a dataset on 2 shared cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer {url}/_stcore/health within {timeout_s} s")


@contextlib.contextmanager
def streamlit_app(store_root: Path, log_path: Path):
    """`streamlit run app.py` headless on a free port over the run store `store_root`; yields its URL."""
    port = free_port()
    env = os.environ | {"COMPRESSION_LAB_CACHE": str(store_root), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.headless",
                "true",
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--browser.gatherUsageStats",
                "false",
                "--server.fileWatcherType",
                "none",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, process)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def settle(page) -> None:
    """Wait until the app has finished its script run (the running indicator is gone)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.match(/Running|Stop/)",
        timeout=LONG,
    )


def no_exception(page, name: str) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, f"{name} shows an exception"


def shot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main container, so grow the viewport to fit it."""
    height = page.evaluate(
        "() => Math.max(document.body.scrollHeight, ...[...document.querySelectorAll("
        '\'[data-testid="stMain"], [data-testid="stAppViewContainer"]\')].map(e => e.scrollHeight))'
    )
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(int(height) + 60, 8000)})
    page.wait_for_timeout(800)  # let Plotly re-lay out to the new size
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)


def metric_value(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


def press_and_time_metric(
    page, selector: str, key: str, label: str, expected: str | None = None, before: str | None = None
) -> float:
    """Focus `selector`, press `key` and return the seconds until the metric `label` shows `expected`
    (or anything other than `before`)."""
    page.locator(selector).focus()
    started = time.perf_counter()
    page.keyboard.press(key)
    page.wait_for_function(
        """([label, expected, before]) => {
            const box = [...document.querySelectorAll('[data-testid="stMetric"]')]
                .find(m => m.innerText.includes(label));
            const value = box && box.querySelector('[data-testid="stMetricValue"]');
            if (!value) return false;
            const text = value.innerText.trim();
            return expected !== null ? text === expected : text !== before;
        }""",
        arg=[label, expected, before],
        timeout=LONG,
    )
    return time.perf_counter() - started
