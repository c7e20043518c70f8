"""End to end in a real browser: `streamlit run app.py` + Chromium through Playwright.

Trains a tiny run from a URL (?dataset=digits&epochs=1...), compresses it and moves the k slider
(the FC ratio must change; the time from the key press to the new number is printed), opens the
Frontier (a Plotly chart must be drawn), and checks that no page shows an exception.
Screenshots of every page go to test-artifacts/screenshots/ (gitignored).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TINY = dict(dataset="digits", hidden=(32, 16), epochs=2)  # what the URL below asks the Train page for
LONG = 90_000  # ms: a page's first run imports torch and may load a dataset on 2 shared cores

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
expect = sync_api.expect
expect.set_options(timeout=90_000)


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


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = os.environ | {"COMPRESSION_LAB_CACHE": str(tmp_path / "store"), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "streamlit.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
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
        log.close()
        print(f"\nstreamlit log: {tmp_path / 'streamlit.log'}")


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


def shot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main container, so grow the viewport to fit it."""
    height = page.evaluate(
        "() => Math.max(document.body.scrollHeight, ...[...document.querySelectorAll("
        "'[data-testid=\"stMain\"], [data-testid=\"stAppViewContainer\"]')].map(e => e.scrollHeight))")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(int(height) + 60, 8000)})
    page.wait_for_timeout(800)  # let Plotly re-lay out to the new size
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(size)


def metric_value(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


def test_train_compress_frontier_in_a_browser(server):
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(LONG)

            # Home on an empty store: the labelled illustration
            page.goto(server)
            expect(page.get_by_text("Illustration: a weight cloud")).to_be_visible()
            page.locator(".js-plotly-plot").first.wait_for()
            settle(page)
            no_exception(page, "home (empty store)")

            # Train two tiny runs, set up from the URL
            for lam in ("0", "0.01"):
                page.goto(f"{server}/train?dataset=digits&hidden=32,16&epochs=2&reg=binary&lam={lam}")
                expect(page.get_by_text("has not been trained yet")).to_be_visible()
                page.get_by_role("button", name="Train").click()
                expect(page.get_by_text("shown from the store")).to_be_visible()
                page.locator(".js-plotly-plot").first.wait_for()
                settle(page)
                no_exception(page, f"train lam={lam}")
            # the λ = 0.01 run is on screen; reload: shown from the store at once, not retrained
            page.reload()
            expect(page.get_by_text("shown from the store")).to_be_visible()
            settle(page)
            shot(page, "train")

            # Compress: move the k slider, the FC ratio must change
            page.goto(f"{server}/compress?method=pq&d=2&k=4")
            expect(page.locator('[data-testid="stMetric"]').filter(has_text="FC ratio")).to_be_visible()
            settle(page)
            before = metric_value(page, "FC ratio")
            page.locator('.st-key-k input[type="range"]').focus()  # the k select_slider (key "k")
            started = time.perf_counter()
            page.keyboard.press("ArrowRight")  # k = 4 -> 8: a new compression, computed then stored
            page.wait_for_function(
                """(before) => {
                    const box = [...document.querySelectorAll('[data-testid="stMetric"]')]
                        .find(m => m.innerText.includes('FC ratio'));
                    const value = box && box.querySelector('[data-testid="stMetricValue"]');
                    return value && value.innerText.trim() !== before;
                }""", arg=before, timeout=LONG)
            new_setting_s = time.perf_counter() - started
            after = metric_value(page, "FC ratio")
            settle(page)
            assert after != before
            assert "k=8" in page.url, page.url  # the slider writes the URL: a link reproduces the view
            cached_s = []
            for key, expected in (("ArrowLeft", before), ("ArrowRight", after), ("ArrowLeft", before)):
                page.locator('.st-key-k input[type="range"]').focus()
                started = time.perf_counter()
                page.keyboard.press(key)  # k back and forth between settings seen before: from the cache
                page.wait_for_function(
                    """(expected) => {
                        const box = [...document.querySelectorAll('[data-testid="stMetric"]')]
                            .find(m => m.innerText.includes('FC ratio'));
                        const value = box && box.querySelector('[data-testid="stMetricValue"]');
                        return value && value.innerText.trim() === expected;
                    }""", arg=expected, timeout=LONG)
                cached_s.append(time.perf_counter() - started)
                settle(page)
            print(f"\nCompress k slider in Chromium: FC ratio {before} -> {after}; key press to new number "
                  f"{new_setting_s:.2f} s (new setting, computed), "
                  f"{', '.join(f'{s:.2f}' for s in cached_s)} s (settings seen before, cached)")
            page.locator(".js-plotly-plot").first.wait_for()
            no_exception(page, "compress")
            shot(page, "compress")

            # Binarize both runs (the λ = 0 one is the paper's baseline), picked by ?run= in the URL
            for lam in (0.0, 0.01):
                run_id = TrainConfig(**TINY, reg="binary", lam=lam).run_id()
                page.goto(f"{server}/compress?run={run_id}&method=binarize")
                expect(page.get_by_text(f"binarize on run {run_id[:6]}")).to_be_visible()
                settle(page)
                no_exception(page, f"compress binarize lam={lam}")

            # Frontier: a Plotly chart is drawn from the stored points
            page.goto(f"{server}/frontier")
            page.locator(".js-plotly-plot").first.wait_for()
            settle(page)
            assert page.locator(".js-plotly-plot").count() >= 1
            no_exception(page, "frontier")
            shot(page, "frontier")

            # Compare the two runs, and Learn
            page.goto(f"{server}/compare")
            expect(page.get_by_text("What differs")).to_be_visible()
            page.locator(".js-plotly-plot").first.wait_for()
            settle(page)
            no_exception(page, "compare")
            shot(page, "compare")

            page.goto(f"{server}/learn")
            expect(page.get_by_text("463,248 bits")).to_be_visible()
            settle(page)
            no_exception(page, "learn")
            shot(page, "learn")

            page.goto(server)
            expect(page.get_by_text("before and after training with the regularizer")).to_be_visible()
            settle(page)
            no_exception(page, "home")
            shot(page, "home")
        finally:
            browser.close()
    print(f"screenshots: {SHOTS}")
