"""The app's user story in a real browser, on mnist-5k, timed: what a new user does after the README's
first command.

In Chromium (Debian's binary, through Playwright) on a fresh run store: train LeNet-300-100 on
mnist-5k (5 epochs, the Train page's defaults) without the regularizer and with the binary term
(lam 0.05), compress both with binarize, kmeans k=2 and PQ d=8 k=16 on the Compress page, then open
Frontier. Prints the accuracies behind the Frontier chart, and the time from a k-slider key press on
Compress to the updated FC ratio on the screen: for a setting never computed (k-means, accuracy of the
rebuilt model, export, stored) and for settings seen before (from the cache), medians of several
presses. Screenshots of every page go to --out.

    python bench/app_walkthrough.py                      # ~3 min; writes bench/results/walkthrough.{json,md}
    python bench/app_walkthrough.py --out /tmp/walk      # elsewhere
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from playwright.sync_api import expect, sync_playwright

from core.config import TrainConfig
from core.store import RunStore
from tests.browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LONG,
    metric_value,
    no_exception,
    press_and_time_metric,
    settle,
    shot,
    streamlit_app,
)

LAMS = (0.0, 0.05)
COMPRESSIONS = ("method=binarize", "method=kmeans&k=2", "method=pq&d=8&k=16&layout=shared")
K_SLIDER = '.st-key-k input[type="range"]'


def walk(url: str, shots: Path, presses: int) -> dict:
    timings = {"new_setting_s": [], "cached_s": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(LONG * 4)
            expect.set_options(timeout=LONG * 4)
            for lam in LAMS:  # the Train page's defaults (mnist-5k, mlp 300-100, 5 epochs) but lam
                page.goto(f"{url}/train?reg=binary&lam={lam:g}")  # the slider's own spelling: 0, 0.05
                train_button = page.get_by_role("button", name="Train", exact=True)
                train_button.or_(page.get_by_text("shown from the store")).first.wait_for()
                if train_button.count():  # not in the store yet (--store may hold it already)
                    train_button.click()
                expect(page.get_by_text("shown from the store")).to_be_visible()
                settle(page)
                no_exception(page, f"train lam={lam}")
            shot(page, shots / "train.png")
            for lam in LAMS:
                run_id = TrainConfig(reg="binary" if lam else "none", lam=lam).run_id()
                for query in COMPRESSIONS:
                    page.goto(f"{url}/compress?run={run_id}&{query}")
                    expect(page.get_by_text(f"on run {run_id[:6]}")).to_be_visible()
                    settle(page)
                    no_exception(page, f"compress {query} lam={lam}")
                    page.wait_for_timeout(2500)  # the user looks at it: it goes on the Frontier
            shot(page, shots / "compress.png")

            # The slider: k from 16 upward, each press a setting never computed; then back and forth.
            run_id = TrainConfig(reg="binary", lam=LAMS[-1]).run_id()
            page.goto(f"{url}/compress?run={run_id}&method=pq&d=8&k=16&layout=shared")
            expect(page.get_by_text(f"on run {run_id[:6]}")).to_be_visible()
            settle(page)
            seen = [metric_value(page, "FC ratio")]
            for _ in range(presses):
                timings["new_setting_s"].append(
                    press_and_time_metric(page, K_SLIDER, "ArrowRight", "FC ratio", before=seen[-1])
                )
                seen.append(metric_value(page, "FC ratio"))
                settle(page)
            for _ in range(presses):
                seen.pop()
                timings["cached_s"].append(
                    press_and_time_metric(page, K_SLIDER, "ArrowLeft", "FC ratio", expected=seen[-1])
                )
                settle(page)
            no_exception(page, "compress slider")

            for name in ("frontier", "compare", "learn"):
                page.goto(f"{url}/{name}")
                page.locator(".js-plotly-plot").first.wait_for()
                settle(page)
                no_exception(page, name)
                shot(page, shots / f"{name}.png")

            # The Frontier over the sweep's many runs, its filters open: only 5-epoch runs, PQ and binarize
            page.goto(f"{url}/frontier?dataset=mnist-5k&f_epochs=5&f_method=binarize,pq")
            page.locator(".js-plotly-plot").first.wait_for()
            page.get_by_text("Filter the runs and the points").click()
            settle(page)
            no_exception(page, "frontier filtered")
            shot(page, shots / "frontier-filters.png")

            # The histogram mid-animation: play pressed, caught between the first and the last epoch
            run_id = TrainConfig(reg="binary", lam=LAMS[-1]).run_id()
            page.goto(f"{url}/train?reg=binary&lam={LAMS[-1]:g}")
            expect(page.get_by_text("shown from the store")).to_be_visible()
            settle(page)
            page.locator(".js-plotly-plot .updatemenu-button").filter(has_text="play").first.click()
            page.wait_for_timeout(1200)
            page.screenshot(path=str(shots / "histogram-animation.png"), full_page=False)

            # The dark theme and a phone's width (390 px)
            dark = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme="dark")
            dark.set_default_timeout(LONG * 4)
            dark.goto(f"{url}/frontier?dataset=mnist-5k")
            dark.locator(".js-plotly-plot").first.wait_for()
            settle(dark)
            shot(dark, shots / "frontier-dark.png")
            phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
            phone.set_default_timeout(LONG * 4)
            phone.goto(f"{url}/frontier?dataset=mnist-5k")
            phone.locator(".js-plotly-plot").first.wait_for()
            settle(phone)
            shot(phone, shots / "frontier-phone.png")
            page.goto(url)
            expect(page.get_by_text("before and after training with the regularizer")).to_be_visible()
            settle(page)
            shot(page, shots / "home.png")
        except Exception:
            shot(page, shots / "failed.png")
            print(f"failed on {page.url}; the page is in {shots / 'failed.png'}", file=sys.stderr)
            raise
        finally:
            browser.close()
    return timings


def frontier_rows(store: RunStore) -> list[dict]:
    """The points behind the Frontier chart, as the store holds them."""
    rows = []
    for lam in LAMS:
        run = store.load_run(TrainConfig(reg="binary" if lam else "none", lam=lam).run_id())
        for result in store.list_compressions(run.run_id):
            cfg = result.compress_config
            if cfg.method == "pq" and cfg.n_centroids != 16:
                continue  # the slider's extra points
            rows.append(
                {
                    "lam": lam,
                    "float_accuracy": run.test_accuracy,
                    "compression": cfg.label(),
                    "fc_ratio": round(result.size.fc_ratio, 2),
                    "accuracy": result.accuracy,
                }
            )
    return sorted(rows, key=lambda r: (r["fc_ratio"], r["lam"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="walkthrough.{json,md} go here")
    parser.add_argument("--shots", help="screenshot folder (default <out>/screenshots)")
    parser.add_argument("--presses", type=int, default=3, help="k-slider presses each way (16 up to 128: cheap)")
    parser.add_argument("--store", help="run store to use (default: a fresh temporary one, so both runs are trained)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    shots = Path(args.shots) if args.shots else out / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store_root = Path(args.store) if args.store else Path(tmp) / "store"
        # many runs for the Frontier: a small sweep (3 and 5 epochs, 3 lambdas, 2 seeds) through the CLI
        for epochs in ("3", "5"):
            subprocess.run(
                [sys.executable, "-m", "core", "sweep", "--dataset", "mnist-5k", "--epochs", epochs,
                 "--lam", "0", "0.02", "0.05", "--seed", "0", "1", "--method", "binarize", "pq", "kmeans",
                 "-d", "4", "8", "-k", "4", "16", "--cache-dir", str(store_root), "--json"],
                check=True, capture_output=True, cwd=ROOT,
            )  # fmt: skip
        with streamlit_app(store_root, Path(tmp) / "streamlit.log") as url:
            timings = walk(url, shots, args.presses)
        rows = frontier_rows(RunStore(store_root))
    env = {
        "device": f"cpu ({os.cpu_count()} cores)",
        "python": platform.python_version(),
        "browser": CHROMIUM,
        "dataset": "mnist-5k",
        "model": "mlp 300-100",
        "epochs": TrainConfig().epochs,
    }
    summary = {name: {"median_s": statistics.median(values), "all_s": values} for name, values in timings.items()}
    (out / "walkthrough.json").write_text(json.dumps({"env": env, "slider": summary, "frontier": rows}, indent=1))
    lines = ["| run | compression | FC ratio | accuracy | float accuracy of the run |", "|---|---|---|---|---|"]
    lines += [
        f"| {'binary lam=' + str(r['lam']) if r['lam'] else 'no regularizer'} | {r['compression']} | "
        f"{r['fc_ratio']}x | {r['accuracy']:.2%} | {r['float_accuracy']:.2%} |"
        for r in rows
    ]
    lines += ["", "| k-slider key press to the new FC ratio on screen (Chromium) | median | all |", "|---|---|---|"]
    names = {
        "new_setting_s": f"new setting (k = 32, 64, ... {16 * 2**args.presses}: computed, then stored)",
        "cached_s": "setting seen before (k back down: from the cache)",
    }
    lines += [
        f"| {names[name]} | {s['median_s']:.2f} s | {', '.join(f'{v:.2f}' for v in s['all_s'])} |"
        for name, s in summary.items()
    ]
    text = f"{json.dumps(env)}\n\n" + "\n".join(lines) + "\n"
    (out / "walkthrough.md").write_text(text)
    print(text + f"\nscreenshots: {shots}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
