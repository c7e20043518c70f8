"""The job layer: single flight across threads and processes, the bounded queue, cancel, failure, stale locks.

The jobs here are fakes over an in-memory (or, across processes, an on-disk) "store": the layer is
generic, and a real training would make these tests slow without testing anything more of it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from core.fileio import temporary_name, write_atomic
from core.jobs import (
    Cancelled,
    JobContext,
    JobManager,
    JobSpec,
    JobState,
    JobStatus,
    default_max_running,
    usable_cores,
)

POLL_S = 0.02  # fast polls keep the in-process tests short; the process tests use the default


def make_manager(root: Path, max_running: int = 2, poll_s: float = POLL_S) -> JobManager:
    # Torch threads are process-wide: the tests leave them alone (one test checks the setting).
    return JobManager(root, max_running=max_running, poll_s=poll_s, tune_torch_threads=False)


def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        time.sleep(0.005)


class Tracker:
    """How many fake jobs compute at once, and the most that ever did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.started: list[str] = []


class Work:
    """A fake job: counts its calls, reports `steps` times over `seconds`, then fails or publishes.

    With `hold` set it keeps reporting until the event is set (or a cancel stops it).
    """

    def __init__(
        self,
        seconds: float = 0.0,
        steps: int = 1,
        error: Exception | None = None,
        hold: threading.Event | None = None,
        tracker: Tracker | None = None,
    ):
        self.seconds, self.steps, self.error, self.hold, self.tracker = seconds, steps, error, hold, tracker
        self.calls = 0
        self.published = False
        self.lock = threading.Lock()

    def run(self, ctx: JobContext) -> None:
        with self.lock:
            self.calls += 1
        if self.tracker is not None:
            with self.tracker.lock:
                self.tracker.now += 1
                self.tracker.peak = max(self.tracker.peak, self.tracker.now)
                self.tracker.started.append(ctx.key)
        try:
            for step in range(1, self.steps + 1):
                time.sleep(self.seconds / self.steps)
                ctx.report(step, self.steps, f"step {step}/{self.steps}", loss=1.0 / step)
            while self.hold is not None and not self.hold.wait(0.01):
                ctx.report(self.steps, self.steps, "holding")
            if self.error is not None:
                raise self.error
            self.published = True
        finally:
            if self.tracker is not None:
                with self.tracker.lock:
                    self.tracker.now -= 1

    def is_done(self) -> bool:
        return self.published

    def spec(self, key: str = "k1") -> JobSpec:
        return JobSpec(key=key, kind="train", label=f"fake job {key}", run=self.run, is_done=self.is_done)


# -------------------------------------------------------------------------------------- in-process
def test_status_has_one_json_form():
    status = JobStatus(
        "abc", "train", "a run", JobState.RUNNING, done=3, total=10, text="epoch 3", metrics={"loss": 0.5},
        submitted=1.0, started=2.0, pid=7, host="h",
    )  # fmt: skip
    again = JobStatus.from_json(status.to_json())
    assert again == status and again.state is JobState.RUNNING and again.live and not again.terminal
    assert again.fraction == pytest.approx(0.3)
    assert json.loads(status.to_json())["state"] == "running"


def test_done_already_returns_done_without_running(tmp_path):
    work = Work()
    work.published = True
    manager = make_manager(tmp_path)
    assert manager.submit(work.spec()).state is JobState.DONE
    status = manager.run(work.spec())
    assert status.finished_ok and work.calls == 0
    assert not (tmp_path / "jobs" / "k1.json").exists()  # a cache hit leaves no job behind


def test_threads_share_one_computation(tmp_path):
    work = Work(seconds=0.3, steps=3)
    manager = make_manager(tmp_path)
    barrier = threading.Barrier(8)

    def ask(i: int) -> JobStatus | None:
        barrier.wait()
        if i % 2:  # half block like the CLI, half submit and wait like a page
            return manager.run(work.spec())
        manager.submit(work.spec())
        return manager.wait("k1", timeout=5)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(8)))
    assert work.calls == 1
    assert all(s is not None and s.state is JobState.DONE for s in results)
    assert manager.run(work.spec()).finished_ok and work.calls == 1


def test_failure_is_recorded_with_the_message_and_a_retry_starts_fresh(tmp_path):
    work = Work(error=ValueError("bad thing\nsecond line of detail"))
    manager = make_manager(tmp_path)
    status = manager.run(work.spec())  # returns, does not raise
    assert status.state is JobState.FAILED and status.message == "bad thing"
    assert not work.is_done()
    on_disk = JobStatus.from_json((tmp_path / "jobs" / "k1.json").read_bytes())
    assert on_disk.state is JobState.FAILED and on_disk.message == "bad thing" and on_disk.finished is not None
    manager.submit(work.spec())
    assert manager.wait("k1", timeout=5).message == "bad thing" and work.calls == 2


def test_cancel_a_running_job(tmp_path):
    hold = threading.Event()
    work = Work(hold=hold)
    manager = make_manager(tmp_path)
    manager.submit(work.spec())
    until(lambda: manager.status("k1").state is JobState.RUNNING)
    assert manager.cancel("k1")
    status = manager.wait("k1", timeout=5)
    assert status.state is JobState.CANCELLED and "cancelled" in status.message
    assert not work.is_done() and not (tmp_path / "jobs" / "k1.cancel").exists()
    assert not manager.cancel("k1")  # nothing live any more
    hold.set()
    assert manager.run(work.spec()).finished_ok and work.calls == 2  # a new submit starts fresh


def test_cancel_a_queued_job_before_it_starts(tmp_path):
    hold = threading.Event()
    first, second = Work(hold=hold), Work()
    manager = make_manager(tmp_path, max_running=1)
    manager.submit(first.spec("first"))
    until(lambda: manager.status("first").state is JobState.RUNNING)
    assert manager.submit(second.spec("second")).state is JobState.QUEUED
    assert manager.cancel("second")
    assert manager.wait("second", timeout=5).state is JobState.CANCELLED
    assert second.calls == 0 and not second.is_done()
    hold.set()
    assert manager.wait("first", timeout=5).finished_ok


def test_bounded_concurrency_fifo_queue_with_positions(tmp_path):
    tracker, hold = Tracker(), threading.Event()
    works = {"a": Work(hold=hold, tracker=tracker), "b": Work(0.1, tracker=tracker), "c": Work(0.1, tracker=tracker)}
    manager = make_manager(tmp_path, max_running=1)
    for key, work in works.items():
        manager.submit(work.spec(key))
        time.sleep(0.01)  # distinct submit times: FIFO order is a, b, c

    def queue_shows_positions() -> bool:
        a, b, c = (manager.status(k) for k in "abc")
        return a.state is JobState.RUNNING and (b.state, b.position, c.state, c.position) == (
            JobState.QUEUED, 1, JobState.QUEUED, 2,
        )  # fmt: skip

    until(queue_shows_positions)
    # Another process sees the same queue in the status files.
    on_disk = {k: JobStatus.from_json((tmp_path / "jobs" / f"{k}.json").read_bytes()) for k in "abc"}
    assert [(s.state, s.position) for s in on_disk.values()] == [
        (JobState.RUNNING, None), (JobState.QUEUED, 1), (JobState.QUEUED, 2),
    ]  # fmt: skip
    hold.set()
    assert all(manager.wait(k, timeout=5).finished_ok for k in "abc")
    assert tracker.peak == 1 and tracker.started == ["a", "b", "c"]


def test_progress_reaches_callbacks_and_the_status_file(tmp_path):
    hold = threading.Event()
    work = Work(steps=200, hold=hold)  # 200 reports in a burst: the file is written a few times a second
    manager = make_manager(tmp_path)
    seen: list[JobStatus] = []
    runner = threading.Thread(target=lambda: seen.append(manager.run(work.spec(), on_status=seen.append)))
    runner.start()
    path = tmp_path / "jobs" / "k1.json"
    # The last throttled report lands in the file even though no further report follows it.
    until(lambda: path.exists() and JobStatus.from_json(path.read_bytes()).text == "holding")
    live = JobStatus.from_json(path.read_bytes())
    assert (live.state, live.done, live.total, live.metrics["loss"]) == (JobState.RUNNING, 200, 200, 1 / 200)
    listed = manager.jobs()
    assert [s.key for s in listed] == ["k1"] and listed[0].started is not None
    hold.set()
    runner.join(5)
    states = [s.state for s in seen]
    assert states[0] is JobState.QUEUED and JobState.RUNNING in states and states[-1] is JobState.DONE
    assert seen[-1].done == 200 and seen[-1].finished is not None


def test_jobs_list_and_cleanup(tmp_path):
    manager = make_manager(tmp_path)
    for key in ("one", "two", "three"):
        manager.run(Work().spec(key))
        time.sleep(0.01)
    assert [s.key for s in manager.jobs()] == ["three", "two", "one"]  # newest first
    assert manager.jobs(finished_within_s=-1) == []
    leftover = temporary_name(tmp_path / "jobs" / "one.json")
    leftover.write_bytes(b"{")
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    assert manager.cleanup(older_than_s=3600) == 1  # only the killed writer's temporary
    assert manager.cleanup(older_than_s=0) >= 3
    assert manager.jobs() == [] and not list((tmp_path / "jobs").glob("*.json"))


def test_keys_settings_and_unknown_jobs(tmp_path, monkeypatch):
    manager = make_manager(tmp_path)
    assert manager.status("nothing") is None and manager.wait("nothing") is None and not manager.cancel("nothing")
    with pytest.raises(ValueError, match="file name"):
        Work().spec("../escape")
    monkeypatch.setenv("COMPRESSION_LAB_MAX_JOBS", "3")
    assert default_max_running() == 3 and JobManager(tmp_path, tune_torch_threads=False).max_running == 3
    monkeypatch.setenv("COMPRESSION_LAB_MAX_JOBS", "many")
    with pytest.raises(ValueError, match="COMPRESSION_LAB_MAX_JOBS"):
        default_max_running()
    with pytest.raises(Cancelled):  # a bare context never cancels, but a job may raise Cancelled itself
        raise Cancelled("x")
    JobContext("k").report(1, 2, "no manager", loss=1.0)


def test_torch_threads_share_the_cores(tmp_path):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        manager = JobManager(tmp_path, max_running=2 * usable_cores())
        assert manager.torch_threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------ processes
# Children are spawned (a fresh interpreter, as two CLI invocations are): they build their own
# specs from these module-level functions over files in the shared root.
def _publish_slowly(root: str, seconds: float, ctx: JobContext) -> None:
    with open(os.path.join(root, "calls.txt"), "a") as calls:
        calls.write(f"{os.getpid()}\n")
    steps = 10
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        ctx.report(step, steps, f"step {step}")
    write_atomic(os.path.join(root, "result.txt"), b"42")


def _file_spec(root: str, seconds: float) -> JobSpec:
    run = partial(_publish_slowly, root, seconds)
    return JobSpec("shared", "train", "file job", run, partial(os.path.exists, os.path.join(root, "result.txt")))


def _child_run(root: str, out: str, barrier) -> None:
    manager = JobManager(root, max_running=1, tune_torch_threads=False)  # the default poll, as the CLI uses
    spec = _file_spec(root, seconds=2.0)
    barrier.wait()
    cpu = time.process_time()
    status = manager.run(spec)
    cpu = time.process_time() - cpu
    Path(out).write_text(json.dumps({"state": status.state.value, "cpu": cpu}))


def _child_hang(root: str) -> None:
    JobManager(root, max_running=1, tune_torch_threads=False).run(_file_spec(root, seconds=60.0))


def _child_cancel(root: str, keys: list[str], out: str) -> None:
    manager = JobManager(root, max_running=1, tune_torch_threads=False)
    Path(out).write_text(json.dumps([manager.cancel(key) for key in keys]))


def _join(process, timeout: float = 10.0) -> None:
    process.join(timeout)
    if process.is_alive():
        process.kill()
    assert process.exitcode == 0


@pytest.mark.slow
def test_processes_share_one_computation_and_waiters_sleep(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    outs = [tmp_path / f"out{i}.json" for i in range(4)]
    procs = [ctx.Process(target=_child_run, args=(str(tmp_path), str(out), barrier)) for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        _join(p, 20)
    results = [json.loads(out.read_text()) for out in outs]
    assert len((tmp_path / "calls.txt").read_text().split()) == 1  # exactly one computation
    assert [r["state"] for r in results] == ["done"] * 4
    assert max(r["cpu"] for r in results) < 0.5, results  # the job sleeps 2 s; waiting costs next to nothing


@pytest.mark.slow
def test_a_killed_owner_is_taken_over(tmp_path):
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_child_hang, args=(str(tmp_path),))
    child.start()
    manager = make_manager(tmp_path, max_running=1)
    until(lambda: (s := manager.status("shared")) is not None and s.state is JobState.RUNNING, timeout=10)
    os.kill(child.pid, signal.SIGKILL)
    child.join(5)
    on_disk = JobStatus.from_json((tmp_path / "jobs" / "shared.json").read_bytes())
    assert on_disk.state is JobState.RUNNING  # what the dead owner left
    stale = manager.status("shared")
    assert not stale.live and stale.state is JobState.FAILED and "interrupted" in stale.message
    assert [s.key for s in manager.jobs()] == ["shared"]
    status = manager.run(_file_spec(str(tmp_path), seconds=0.1))  # takes over the key and its slot
    assert status.finished_ok and status.pid == os.getpid()
    assert len((tmp_path / "calls.txt").read_text().split()) == 2 and (tmp_path / "result.txt").exists()


@pytest.mark.slow
def test_cancel_from_another_process(tmp_path):
    hold = threading.Event()
    running, queued = Work(hold=hold), Work()
    manager = make_manager(tmp_path, max_running=1)
    manager.submit(running.spec("running"))
    until(lambda: manager.status("running").state is JobState.RUNNING)
    manager.submit(queued.spec("queued"))
    ctx = mp.get_context("spawn")
    out = tmp_path / "cancel.json"
    child = ctx.Process(target=_child_cancel, args=(str(tmp_path), ["running", "queued", "unknown"], str(out)))
    child.start()
    _join(child)
    assert json.loads(out.read_text()) == [True, True, False]
    assert manager.wait("running", timeout=5).state is JobState.CANCELLED
    assert manager.wait("queued", timeout=5).state is JobState.CANCELLED
    assert queued.calls == 0 and not running.is_done()
    hold.set()
