"""A classroom on one machine, in real browsers: many sessions press Train at once.

In Chromium (Debian's binary, through Playwright), against one `streamlit run app.py` on a fresh run
store with the job queue's default bound:

  A. `--sessions` browser sessions (default 10) open the Train page on the same default settings
     (mnist-5k, LeNet-300-100, binary λ=0.01, 5 epochs) and all press Train within a few seconds:
     how many trainings ran (a monitor reads the job status files every 0.2 s), and when each
     session showed the stored result.
  B. each session trains a different small configuration (mnist-5k, 2 epochs, seed i): the most
     jobs running at once (against the bound), whether every run was stored (none lost), and the
     time each session waited.
  Meanwhile (in B) one more session loads the Home page again and again: its page-load times,
  median and worst, while the queue is busy.

    python bench/classroom.py                 # ~5 min on 2 cores; writes bench/results/classroom.{json,md}
    python bench/classroom.py --sessions 4    # smaller

  C. `--class-turns`: a class of 30 (lighter clients than Chromium: threads calling the core the pages
     call) joins a class; each student trains a different small configuration (digits, 1 epoch,
     seed i), compresses it and sends the point to the board. Rounds, interleaved A B C A B C:
     A nobody hogs; B one student presses Train 20 times (20 settings) before the others, with the
     queue's turns and cap; C the same hog in a first-come-first-served queue (no requesters, no cap).
     The others' wait (submit to stored run, median and worst) per round, how many of the hog's
     presses were refused, the board's point count, and this process's peak memory.

    python bench/classroom.py --class-turns   # ~6 min on 2 cores; writes bench/results/class_turns.{json,md}

  D. `--class-pages`: while trainings run on the server (one Chromium session presses Train on
     mnist-5k, 30 epochs, again whenever none is running), `--page-sessions` other Chromium sessions
     (default 3) of a class load the Class board and the Compress page in turn; each load is timed from
     navigation until its main element shows (the board's "Submitted" metric, the Compress page's
     "FC ratio" metric), with os.getloadavg() and whether a training was running beside it. The
     server's resident memory (its /proc status, VmRSS, sampled every 0.5 s) before and during.

    python bench/classroom.py --class-pages   # ~3 min; writes bench/results/class_pages.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright

from core.config import TrainConfig
from core.jobs import JobManager, JobState, default_max_running
from core.store import RunStore
from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, LONG, free_port, streamlit_app, wait_healthy

DEFAULT = TrainConfig(dataset="mnist-5k", reg="binary", lam=0.01)  # the Train page's defaults
DONE_TEXT = "shown from the store"


class Monitor(threading.Thread):
    """Reads the job status files every 0.2 s: which trainings ran, and how many at once."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.manager = JobManager(root)
        self.stop = threading.Event()
        self.started: dict[str, float] = {}  # key -> when it started running
        self.max_running = 0

    def run(self) -> None:
        while not self.stop.is_set():
            running = [j for j in self.manager.jobs(finished_within_s=1e9) if j.state is JobState.RUNNING]
            self.max_running = max(self.max_running, len(running))
            for job in self.manager.jobs(finished_within_s=1e9):
                if job.kind == "train" and job.started is not None:
                    self.started.setdefault(f"{job.key}@{job.started}", job.started)
            self.stop.wait(0.2)


def open_train(page, url: str, query: str):
    """Open the Train page on `query`; its Train button (None when the run is already stored)."""
    page.goto(f"{url}/train?{query}")
    button = page.get_by_role("button", name="Train", exact=True)
    button.or_(page.get_by_text(DONE_TEXT)).first.wait_for()
    return button if button.count() else None


def phase(pages, url: str, queries: list[str]) -> tuple[list[float], float]:
    """Every page opens its query; then all press Train, one right after the other; returns the
    seconds from the first press until each page shows its stored run, and the spread of the presses."""
    buttons = [open_train(page, url, query) for page, query in zip(pages, queries)]
    first = time.perf_counter()
    for button in buttons:
        if button is not None:
            button.click()
    pressed = time.perf_counter() - first
    results = []
    for page in pages:  # each page's own job panel polls; here we only read when it shows the run
        page.get_by_text(DONE_TEXT).first.wait_for(timeout=LONG * 10)
        results.append(time.perf_counter() - first)
    return results, pressed


def home_loads(url: str, stop: threading.Event, times: list[float]) -> None:
    """Another user loading Home while the queue is busy, in a browser of its own (Playwright's sync
    API belongs to the thread that started it): seconds from navigation to a drawn page."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(LONG * 4)
        while not stop.is_set():
            started = time.perf_counter()
            page.goto(url)
            page.get_by_text("Where to go").wait_for()
            times.append(time.perf_counter() - started)
            page.wait_for_timeout(500)
        browser.close()


def class_round(root: Path, students: int, hog_presses: int, turns: bool) -> dict:
    """One lesson on a fresh store: the hog (student 0) presses Train `hog_presses` times first, then
    every other student submits one training; then all compress and send their point to the board."""
    from core.classroom import Challenge, Classroom
    from core.config import CompressConfig
    from core.jobs import QueueFull
    from core.pipeline import get_or_compress, job_manager, submit_training

    store = RunStore(root)
    room = Classroom(store)
    opened = room.open_class(Challenge(title="bench", dataset="digits", max_epochs=1, budget_pts=100.0))
    members = [room.join(opened.code, f"Student {i}") for i in range(students)]
    mine = {i: TrainConfig(dataset="digits", hidden=(32, 16), epochs=1, seed=i) for i in range(students)}
    hog = [TrainConfig(dataset="digits", hidden=(32, 16), epochs=1, seed=1000 + j) for j in range(hog_presses)]
    submitted: dict[str, float] = {}
    refused = 0
    for cfg in hog:
        try:
            submit_training(store, cfg, requester="student:0" if turns else "")
            submitted[cfg.run_id()] = time.time()
        except QueueFull:
            refused += 1
    for i in range(students):
        if i == 0 and hog_presses:
            continue  # the hog's own first press was among the presses above
        submit_training(store, mine[i], requester=f"student:{i}" if turns else "")
        submitted[mine[i].run_id()] = time.time()
    manager = job_manager(store)
    finished = {}
    for key in submitted:
        status = manager.wait(key)
        assert status is not None and status.finished_ok, status
        assert status.finished is not None
        finished[key] = status.finished
    others = [finished[mine[i].run_id()] - submitted[mine[i].run_id()] for i in range(1, students)]
    for i, member in enumerate(members):
        cfg = hog[0] if i == 0 and hog_presses else mine[i]
        run = store.load_run(cfg.run_id())
        assert run is not None
        record, _ = get_or_compress(store, run, CompressConfig(method="binarize"))
        room.submit(member, record.run_id, record.key)
    board = room.board(opened.code)
    return {
        "others_wait_median_s": round(statistics.median(others), 2),
        "others_wait_worst_s": round(max(others), 2),
        "hog_presses_refused": refused,
        "jobs_run": len(submitted),
        "board_points": len(board.points),
        "board_submitted": board.submitted,
    }


def class_turns(out: Path, students: int = 30, hog_presses: int = 20, repeats: int = 2) -> int:
    import resource

    os.environ["COMPRESSION_LAB_MAX_JOBS"] = "1"  # one at a time: the queue decides every wait
    rounds: dict[str, list[dict]] = {"A_no_hog": [], "B_hog_with_turns": [], "C_hog_first_come": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):  # A B C A B C: drift of a shared machine hits every round alike
            for name, presses, turns in (("A_no_hog", 0, True), ("B_hog_with_turns", hog_presses, True),
                                         ("C_hog_first_come", hog_presses, False)):  # fmt: skip
                rounds[name].append(class_round(Path(tmp) / f"{name}-{repeat}", students, presses, turns))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "students": students,
        "hog_presses": hog_presses,
        "rounds": rounds,
        "peak_rss_mb_of_this_process": round(peak_mb),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    (out / "class_turns.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# A class of {students} on one server: fair turns ({result['machine']})\n",
        "Lighter clients than Chromium: threads calling the core the pages call (join, Train, compress, send to",
        "the board). One job computes at a time. Each round on a fresh store; rounds interleaved A B C A B C.\n",
        "| round | others' wait, median (s) | others' wait, worst (s) | hog presses refused | jobs run | "
        "points on the board |",
        "|---|---|---|---|---|---|",
    ]
    for name, results in rounds.items():
        for r in results:
            lines.append(
                f"| {name} | {r['others_wait_median_s']} | {r['others_wait_worst_s']} | {r['hog_presses_refused']} | "
                f"{r['jobs_run']} | {r['board_points']} ({r['board_submitted']} students) |"
            )
    lines.append(
        f"\nPeak memory of the bench process (clients, queue and workers together): "
        f"{result['peak_rss_mb_of_this_process']} MB."
    )
    lines.append("Not measured here: page loads while training runs (class_pages.md: `--class-pages`, Chromium).")
    (out / "class_turns.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=1))
    return 0


def rss_mb(pid: int) -> float:
    """The process's resident memory (VmRSS of /proc/<pid>/status), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


class RssSampler(threading.Thread):
    """The server's resident memory every 0.5 s (its peak, and its last value)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop = pid, threading.Event()
        self.samples: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append(rss_mb(self.pid))
            except (OSError, RuntimeError):
                return  # the server is gone
            self.stop.wait(0.5)


def start_server(root: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on 127.0.0.1 and a free port, in a process group of its own (so it and
    only it is stopped at the end); its process and URL."""
    port = free_port()
    env = os.environ | {"COMPRESSION_LAB_CACHE": str(root), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]  # fmt: skip
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, server)
    return server, url


def stop_server(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGTERM)  # its own group: the server and nothing else
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        pass


def prepare_class(root: Path, students: int) -> tuple[str, str]:
    """A class on `root` with `students` members, each with a point on the board (digits runs); the
    class code and one of the runs (the Compress page opens it)."""
    from core.classroom import Challenge, Classroom
    from core.config import CompressConfig
    from core.pipeline import get_or_compress, get_or_train

    store = RunStore(root)
    room = Classroom(store)
    opened = room.open_class(Challenge(title="bench", dataset="digits", max_epochs=1, budget_pts=100.0))
    run_id = ""
    for i in range(students):
        member = room.join(opened.code, f"Student {i}")
        run, _ = get_or_train(store, TrainConfig(dataset="digits", hidden=(32, 16), epochs=1, seed=i))
        record, _ = get_or_compress(store, run, CompressConfig(method="binarize"))
        room.submit(member, record.run_id, record.key)
        run_id = run.run_id
    return opened.code, run_id


def timed_load(page, url: str, metric: str) -> float:
    """Seconds from navigation until the page's metric `metric` shows."""
    started = time.perf_counter()
    page.goto(url)
    page.locator('[data-testid="stMetric"]').filter(has_text=metric).first.wait_for()
    return time.perf_counter() - started


def class_pages(out: Path, sessions: int = 3, rounds: int = 6) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        code, run_id = prepare_class(root, students=sessions)
        manager = JobManager(root)

        def training_running() -> bool:
            jobs = manager.jobs(finished_within_s=1e9)
            return any(j.kind == "train" and j.state is JobState.RUNNING for j in jobs)

        server, url = start_server(root, Path(tmp) / "streamlit.log")
        sampler = RssSampler(server.pid)
        sampler.start()
        loads: list[dict] = []
        presses = 0
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                contexts = [browser.new_context(viewport={"width": 1200, "height": 900}) for _ in range(sessions + 1)]
                trainer, *students = [c.new_page() for c in contexts]
                for page in (trainer, *students):
                    page.set_default_timeout(LONG * 4)
                # a first load of each page before any training: the server's imports and first runs
                idle = [timed_load(students[0], f"{url}/board?class={code}", "Submitted"),
                        timed_load(students[0], f"{url}/compress?run={run_id}", "FC ratio")]  # fmt: skip
                rss_idle = rss_mb(server.pid)
                for _ in range(rounds):
                    for page in students:
                        if not training_running():
                            presses += 1
                            button = open_train(trainer, url, f"epochs=30&seed={presses}")
                            if button is not None:
                                button.click()
                                deadline = time.monotonic() + 60
                                while not training_running() and time.monotonic() < deadline:
                                    time.sleep(0.2)
                        for name, path, metric in (("board", f"/board?class={code}", "Submitted"),
                                                   ("compress", f"/compress?run={run_id}", "FC ratio")):  # fmt: skip
                            during = training_running()
                            seconds = timed_load(page, url + path, metric)
                            loads.append({"page": name, "seconds": round(seconds, 2),
                                          "training_running": during and training_running(),
                                          "loadavg_1min": round(os.getloadavg()[0], 2)})  # fmt: skip
                browser.close()
        finally:
            sampler.stop.set()
            stop_server(server)
    counted = [x for x in loads if x["training_running"]]

    def summary(page: str) -> dict:
        times = [x["seconds"] for x in counted if x["page"] == page]
        loadavg = [x["loadavg_1min"] for x in counted if x["page"] == page]
        return {
            "count": len(times),
            "median_s": round(statistics.median(times), 2) if times else None,
            "worst_s": round(max(times), 2) if times else None,
            "loadavg_1min_median": round(statistics.median(loadavg), 2) if loadavg else None,
            "loadavg_1min_range": [min(loadavg), max(loadavg)] if loadavg else None,
        }

    first = {"board": round(idle[0], 2), "compress": round(idle[1], 2)}
    b, c = summary("board"), summary("compress")
    rss = {
        "idle_after_first_loads": round(rss_idle),
        "peak": round(max(sampler.samples)) if sampler.samples else None,
        "last": round(sampler.samples[-1]) if sampler.samples else None,
    }
    result = {
        "page_sessions": sessions,
        "loads": loads,
        "board_during_training": b,
        "compress_during_training": c,
        "first_loads_before_training_s": first,
        "trainings_pressed": presses,
        "server_rss_mb": rss,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (out / "class_pages.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# Page loads by students while training runs (Chromium, one server, {result['machine']})\n",
        f"{sessions} Chromium sessions of a class (each with a point on the board) load the Class board and the",
        "Compress page in turn while another session keeps a training running on the server (mnist-5k,",
        "LeNet-300-100, 30 epochs; pressed again whenever none runs). Each load: navigation until the page's",
        "main element shows (the board's *Submitted* metric, the Compress page's *FC ratio* metric). Only loads",
        f"with a training running before and after count. Measured {result['measured']}.\n",
        "| page | loads | median (s) | worst (s) | load average (1 min) at the loads: median [range] |",
        "|---|---|---|---|---|",
        f"| Class board | {b['count']} | {b['median_s']} | {b['worst_s']} | {b['loadavg_1min_median']} "
        f"{b['loadavg_1min_range']} |",
        f"| Compress | {c['count']} | {c['median_s']} | {c['worst_s']} | {c['loadavg_1min_median']} "
        f"{c['loadavg_1min_range']} |",
        "",
        f"First loads before any training (the server's imports, the first compression): board "
        f"{first['board']} s, Compress {first['compress']} s.",
        f"Trainings pressed: {presses}. The server's resident memory (VmRSS): {rss['idle_after_first_loads']} MB "
        f"after the first loads, {rss['peak']} MB at its peak while training and serving, {rss['last']} MB at the end.",
    ]
    (out / "class_pages.md").write_text("\n".join(lines) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "loads"}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--class-turns", action="store_true", help="section C: a class of 30, fair turns")
    parser.add_argument("--class-pages", action="store_true", help="section D: page loads while training runs")
    parser.add_argument("--page-sessions", type=int, default=3)
    parser.add_argument("--page-rounds", type=int, default=6)
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.class_turns:
        return class_turns(out, args.students, repeats=args.repeats)
    if args.class_pages:
        return class_pages(out, args.page_sessions, args.page_rounds)
    n = args.sessions
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        monitor = Monitor(root)
        with streamlit_app(root, Path(tmp) / "streamlit.log") as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            contexts = [browser.new_context(viewport={"width": 1200, "height": 900}) for _ in range(n)]
            pages = [c.new_page() for c in contexts]
            for page in pages:
                page.set_default_timeout(LONG * 10)
            monitor.start()

            # A. everyone on the same defaults
            same, pressed_a = phase(pages, url, [""] * n)
            trainings_a = sum(1 for key in monitor.started if key.startswith(DEFAULT.run_id()))

            # B. everyone on a different small configuration; one more user loads Home meanwhile
            stop = threading.Event()
            loads: list[float] = []
            watcher = threading.Thread(target=home_loads, args=(url, stop, loads), daemon=True)
            watcher.start()
            queries = [f"epochs=2&seed={i + 1}" for i in range(n)]
            try:
                different, pressed_b = phase(pages, url, queries)
            finally:
                stop.set()
                watcher.join(timeout=120)
            monitor.stop.set()
            browser.close()

        store = RunStore(root)
        wanted = [TrainConfig(dataset="mnist-5k", reg="binary", lam=0.01, epochs=2, seed=i + 1) for i in range(n)]
        stored = sum(store.load_run(cfg.run_id()) is not None for cfg in wanted)
    result = {
        "sessions": n,
        "max_running_bound": default_max_running(),
        "A_same_defaults": {
            "trainings_that_ran": trainings_a,
            "press_spread_s": round(pressed_a, 2),
            "seconds_to_result": [round(t, 2) for t in same],
        },
        "B_different_configs": {
            "max_running_at_once": monitor.max_running,
            "runs_stored": stored,
            "press_spread_s": round(pressed_b, 2),
            "seconds_to_result": [round(t, 2) for t in different],
        },
        "home_page_loads_s": {
            "count": len(loads),
            "median": round(statistics.median(loads), 2) if loads else None,
            "worst": round(max(loads), 2) if loads else None,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    (out / "classroom.json").write_text(json.dumps(result, indent=1))
    a, b, home = result["A_same_defaults"], result["B_different_configs"], result["home_page_loads_s"]
    (out / "classroom.md").write_text(
        f"# Classroom load ({n} Chromium sessions, one server, {result['machine']})\n\n"
        f"Job queue bound: {result['max_running_bound']} job(s) computing at once.\n\n"
        f"| | A: same defaults | B: a different config each |\n|---|---|---|\n"
        f"| presses spread over | {a['press_spread_s']} s | {b['press_spread_s']} s |\n"
        f"| trainings that ran | {a['trainings_that_ran']} | {b['runs_stored']} stored of {n} |\n"
        f"| most jobs running at once | 1 | {b['max_running_at_once']} |\n"
        f"| seconds to each session's result (min / median / max) | {min(a['seconds_to_result'])} / "
        f"{round(statistics.median(a['seconds_to_result']), 2)} / {max(a['seconds_to_result'])} | "
        f"{min(b['seconds_to_result'])} / {round(statistics.median(b['seconds_to_result']), 2)} / "
        f"{max(b['seconds_to_result'])} |\n\n"
        f"Home page loads by another user during B: {home['count']} loads, median {home['median']} s, "
        f"worst {home['worst']} s.\n"
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
