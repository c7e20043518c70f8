"""The job layer: single flight across threads and processes, the bounded queue, cancel, failure, stale locks.

The jobs here are fakes over an in-memory (or, across processes, an on-disk) "store": the layer is
generic, and a real training would make these tests slow without testing anything more of it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
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

from core.fileio import PID_MAX_LIMIT, hold_temporary, temporary_name, write_atomic
from core.jobs import (
    _REGISTRY,
    _REGISTRY_LOCK,
    Cancelled,
    JobContext,
    JobManager,
    JobsFolderError,
    JobSpec,
    JobState,
    JobStatus,
    default_max_running,
    usable_cores,
)
from tests.marks import fast_cases

POLL_S = 0.02  # fast polls keep the in-process tests short; the process tests use the default


def make_manager(root: Path, max_running: int = 2, poll_s: float = POLL_S) -> JobManager:
    return JobManager(root, max_running=max_running, poll_s=poll_s)


def dead_writers_temporary(path: Path) -> Path:
    """A temporary name as `temporary_name` makes it, of a writer that no longer exists (a pid no
    Linux process can have)."""
    return path.with_name(f".{path.name}.{PID_MAX_LIMIT + 1}.{'0' * 32}.tmp")


def until(condition: Callable[[], bool]) -> None:
    """Wait for what must happen, however slow the machine: no deadline here (a busy 2-core box
    can be slow, not wrong); a hang is caught by pytest-timeout (pyproject.toml)."""
    while not condition():
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
        return manager.wait("k1")

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
    assert manager.wait("k1").message == "bad thing" and work.calls == 2


def test_cancel_a_running_job(tmp_path):
    hold = threading.Event()
    work = Work(hold=hold)
    manager = make_manager(tmp_path)
    manager.submit(work.spec())
    until(lambda: manager.status("k1").state is JobState.RUNNING)
    assert manager.cancel("k1")
    status = manager.wait("k1")
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
    assert manager.wait("second").state is JobState.CANCELLED
    assert second.calls == 0 and not second.is_done()
    hold.set()
    assert manager.wait("first").finished_ok


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
    assert all(manager.wait(k).finished_ok for k in "abc")
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
    runner.join()
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
    leftover = dead_writers_temporary(tmp_path / "jobs" / "one.json")
    leftover.write_bytes(b"{")
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    working = temporary_name(tmp_path / "jobs" / "two.json")  # its writer, this process, is alive
    working.write_bytes(b"{")
    os.utime(working, (time.time() - 120, time.time() - 120))
    held = temporary_name(tmp_path / "jobs" / "three.json")  # its writer holds it: kept at any age
    held_fd = os.open(held, os.O_CREAT | os.O_WRONLY)
    hold_temporary(held_fd)
    os.utime(held, (0, 0))
    assert manager.cleanup(older_than_s=3600) == 1  # only the killed writer's temporary
    assert manager.cleanup(older_than_s=0) >= 3
    assert manager.jobs() == [] and not list((tmp_path / "jobs").glob("*.json"))
    assert working.exists() and held.exists()
    os.close(held_fd)  # its writer lets go (or dies): now it is a leftover
    assert manager.cleanup(older_than_s=0) == 1 and not held.exists()


def test_keys_settings_and_unknown_jobs(tmp_path, monkeypatch):
    manager = make_manager(tmp_path)
    assert manager.status("nothing") is None and manager.wait("nothing") is None and not manager.cancel("nothing")
    with pytest.raises(ValueError, match="file name"):
        Work().spec("../escape")
    monkeypatch.setenv("COMPRESSION_LAB_MAX_JOBS", "3")
    assert default_max_running() == 3 and JobManager(tmp_path).max_running == 3
    monkeypatch.setenv("COMPRESSION_LAB_MAX_JOBS", "many")
    with pytest.raises(ValueError, match="COMPRESSION_LAB_MAX_JOBS"):
        default_max_running()
    with pytest.raises(Cancelled):  # a bare context never cancels, but a job may raise Cancelled itself
        raise Cancelled("x")
    JobContext("k").report(1, 2, "no manager", loss=1.0)


def test_the_job_layer_leaves_torch_alone(tmp_path):
    """It knows nothing about training: making a manager sets no torch threads (the pipeline does)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    JobManager(tmp_path, max_running=2 * usable_cores())
    assert torch.get_num_threads() == before


def test_the_pipelines_manager_shares_the_cores_among_its_jobs(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from core import pipeline
    from core.store import RunStore

    before = torch.get_num_threads()
    monkeypatch.setenv("COMPRESSION_LAB_MAX_JOBS", str(2 * usable_cores()))
    pipeline._MANAGERS.clear()
    pipeline._TORCH_THREADS_SET.clear()
    try:
        manager = pipeline.job_manager(RunStore(tmp_path))
        pipeline._share_torch_threads(manager)  # what a job body of this process does first
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
        pipeline._MANAGERS.clear()
        pipeline._TORCH_THREADS_SET.clear()


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
    manager = JobManager(root, max_running=1)  # the default poll, as the CLI uses
    spec = _file_spec(root, seconds=2.0)
    barrier.wait()
    cpu = time.process_time()
    status = manager.run(spec)
    cpu = time.process_time() - cpu
    Path(out).write_text(json.dumps({"state": status.state.value, "cpu": cpu}))


def _child_hang(root: str) -> None:
    JobManager(root, max_running=1).run(_file_spec(root, seconds=60.0))


def _child_cancel(root: str, keys: list[str], out: str) -> None:
    manager = JobManager(root, max_running=1)
    Path(out).write_text(json.dumps([manager.cancel(key) for key in keys]))


def _join(process) -> None:
    """Wait for a child however long a busy machine makes it take (a hang: pytest-timeout)."""
    process.join()
    assert process.exitcode == 0


@contextlib.contextmanager
def _children(*processes):
    """Start the children; whatever happens in the test, none outlives it."""
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()


@pytest.mark.slow
def test_processes_share_one_computation_and_waiters_sleep(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    outs = [tmp_path / f"out{i}.json" for i in range(4)]
    procs = [ctx.Process(target=_child_run, args=(str(tmp_path), str(out), barrier)) for out in outs]
    with _children(*procs):
        for p in procs:
            _join(p)
    results = [json.loads(out.read_text()) for out in outs]
    assert len((tmp_path / "calls.txt").read_text().split()) == 1  # exactly one computation
    assert [r["state"] for r in results] == ["done"] * 4
    assert max(r["cpu"] for r in results) < 0.5, results  # the job sleeps 2 s; waiting costs next to nothing


@pytest.mark.slow
def test_a_killed_owner_is_taken_over(tmp_path):
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_child_hang, args=(str(tmp_path),))
    with _children(child):
        manager = make_manager(tmp_path, max_running=1)
        until(lambda: (s := manager.status("shared")) is not None and s.state is JobState.RUNNING)
        # RUNNING is written just before the body starts: kill it once the body has begun, not before
        until(lambda: (tmp_path / "calls.txt").exists())
        os.kill(child.pid, signal.SIGKILL)
        child.join()
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
    # The queued job first: cancelling the running one first frees the slot, and on a busy machine the
    # queued job could take it and finish before the child gets to its second request.
    child = ctx.Process(target=_child_cancel, args=(str(tmp_path), ["queued", "running", "unknown"], str(out)))
    with _children(child):
        _join(child)
    assert json.loads(out.read_text()) == [True, True, False]
    assert manager.wait("running").state is JobState.CANCELLED
    assert manager.wait("queued").state is JobState.CANCELLED
    assert queued.calls == 0 and not running.is_done()
    hold.set()


# ------------------------------------------------------------------ a jobs folder the layer cannot trust
def _folder_lock(root: Path) -> None:
    (root / "jobs" / "k1.lock").mkdir(parents=True)


def _jobs_a_file(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "jobs").write_text("not a folder")


def _slots_a_file(root: Path) -> None:
    (root / "jobs").mkdir(parents=True)
    (root / "jobs" / "slots").write_text("not a folder")


def _slot_a_folder(root: Path) -> None:
    (root / "jobs" / "slots" / "0.lock").mkdir(parents=True)


def _lock_links_outside(root: Path) -> None:
    (root / "jobs").mkdir(parents=True)
    (root / "jobs" / "k1.lock").symlink_to(root.parent / "outside" / "created-by-a-link")


def _lock_links_to_a_file(root: Path) -> None:
    (root / "jobs").mkdir(parents=True)
    (root / "jobs" / "k1.lock").symlink_to(root.parent / "passwd")  # stands for /etc/passwd


def _slot_links_to_a_file(root: Path) -> None:
    (root / "jobs" / "slots").mkdir(parents=True)
    (root / "jobs" / "slots" / "0.lock").symlink_to(root.parent / "passwd")


def _lock_a_fifo(root: Path) -> None:
    (root / "jobs").mkdir(parents=True)
    os.mkfifo(root / "jobs" / "k1.lock")


BROKEN_FOLDERS = {
    "lock is a folder": (_folder_lock, "is a folder"),
    "jobs is a file": (_jobs_a_file, "is a file, not a folder"),
    "slots is a file": (_slots_a_file, "is a file, not a folder"),
    "slot lock is a folder": (_slot_a_folder, "is not a regular file"),
    "lock links outside the store": (_lock_links_outside, "is a symbolic link"),
    "lock links to a system file": (_lock_links_to_a_file, "is a symbolic link"),
    "slot lock links to a system file": (_slot_links_to_a_file, "is not a regular file"),
    "lock is a fifo": (_lock_a_fifo, "is not a regular file"),
}


def _no_entry_written(root: Path) -> None:
    jobs = root / "jobs"
    if jobs.is_dir():
        assert not [p.name for p in jobs.iterdir() if p.suffix in (".json", ".cancel") or p.name.endswith(".tmp")]


@fast_cases(4)
@pytest.mark.parametrize("how", BROKEN_FOLDERS, ids=list(BROKEN_FOLDERS))
@pytest.mark.parametrize("call", ["run", "submit"])
def test_an_unusable_jobs_folder_is_one_line_and_nothing_runs_or_is_written(tmp_path, how, call):
    root = tmp_path / "store"
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0\n")
    before = passwd.stat()
    make_broken, message = BROKEN_FOLDERS[how]
    make_broken(root)
    work = Work()
    manager = make_manager(root, max_running=1)
    with pytest.raises(JobsFolderError, match=message) as caught:
        getattr(manager, call)(work.spec("k1"))
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)
    assert "remove it, or use another store" in str(caught.value)
    assert work.calls == 0
    _no_entry_written(root)
    assert not (tmp_path / "outside").exists()  # a link did not create its target
    after = passwd.stat()
    assert passwd.read_text() == "root:x:0:0\n" and (after.st_mtime_ns, after.st_ino) == (
        before.st_mtime_ns,
        before.st_ino,
    )
    fd = os.open(passwd, os.O_RDONLY)
    try:  # nobody holds a lock on the file the link points to
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    # the pages' reads go on: nothing listed, nothing raised
    assert manager.jobs() == [] and manager.status("k1") is None


@fast_cases(2)
@pytest.mark.parametrize("where", ["mkdir", "lock"])
@pytest.mark.parametrize("error", [errno.EACCES, errno.EROFS, errno.ENOSPC])
def test_a_read_only_jobs_folder_is_one_line(tmp_path, monkeypatch, where, error):
    """Tests run as root, where chmod stops nothing: the refusal is simulated at the write points."""
    root = tmp_path / "store"
    jobs = str(root / "jobs")
    if where == "lock":
        (root / "jobs" / "slots").mkdir(parents=True)
    real_open, real_mkdir = os.open, os.mkdir

    def refusing_open(path, flags, *args, **kwargs):
        if str(path).startswith(jobs) and flags & os.O_CREAT:
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, flags, *args, **kwargs)

    def refusing_mkdir(path, *args, **kwargs):
        if str(path).startswith(jobs):
            raise OSError(error, os.strerror(error), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(os, "mkdir", refusing_mkdir)
    work = Work()
    manager = make_manager(root)
    with pytest.raises(JobsFolderError, match="jobs") as caught:
        manager.run(work.spec("k1"))
    message = str(caught.value)
    assert "\n" not in message and os.strerror(error).lower() in message.lower(), message
    assert work.calls == 0
    _no_entry_written(root)


def test_a_cancel_that_cannot_be_written_is_one_line(tmp_path):
    hold = threading.Event()
    work = Work(hold=hold)
    owner, other = make_manager(tmp_path), make_manager(tmp_path)
    owner.submit(work.spec("k1"))
    until(lambda: owner.status("k1").state is JobState.RUNNING)
    with _REGISTRY_LOCK:  # `other` stands for another process: it does not see the owner's registry
        job = _REGISTRY.pop((owner._folder, "k1"))
    try:
        (tmp_path / "jobs" / "k1.cancel").mkdir()  # where the request goes: a folder
        with pytest.raises(JobsFolderError, match=r"k1\.cancel"):
            other.cancel("k1")
    finally:
        with _REGISTRY_LOCK:
            _REGISTRY[(owner._folder, "k1")] = job
        hold.set()
    assert owner.wait("k1").finished_ok  # the folder in the way did not keep the job from ending


# ------------------------------------------------------------------------------ status files, typed
def _status(**changes) -> dict:
    now = time.time()
    base = JobStatus("bad", "train", "a job", JobState.QUEUED, submitted=now - 10, pid=1, host="h")
    return {**json.loads(base.to_json()), **changes}


BAD_STATUSES = {
    "submitted is text": _status(submitted="x"),
    "submitted is null": _status(submitted=None),
    "submitted is NaN": _status(submitted=float("nan")),
    "submitted in the future": _status(submitted=time.time() + 86400),
    "submitted is true": _status(submitted=True),
    "no submitted": {k: v for k, v in _status().items() if k != "submitted"},
    "done, finished is text": _status(state="done", finished="x"),
    "done, finished 1e308": _status(state="done", finished=1e308),
    "done, finished is infinite": _status(state="done", finished=float("inf")),
    "failed, finished negative": _status(state="failed", finished=-5.0),
    "state unknown": _status(state="exploded"),
    "state is a number": _status(state=3),
    "done is text": _status(done="3"),
    "total negative": _status(total=-1),
    "position is a float": _status(position=1.5),
    "metrics are text": _status(metrics={"loss": "low"}),
    "metrics a list": _status(metrics=[1, 2]),
    "label is a number": _status(label=5),
    "key of another job": _status(key="other"),
    "key not a file name": _status(key="../x"),
}
BAD_FILES = {
    "not JSON": b"{ nope",
    "a JSON list": b"[1, 2]",
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "not UTF-8": b"\xff\xfe{}",
    "huge": b'{"key": "bad", "label": "' + b"x" * (1 << 20) + b'"}',
}


def _write_status(root: Path, name: str) -> Path:
    path = root / "jobs" / "bad.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(BAD_FILES[name] if name in BAD_FILES else json.dumps(BAD_STATUSES[name]).encode())
    return path


@fast_cases(4)
@pytest.mark.parametrize("name", [*BAD_STATUSES, *BAD_FILES])
def test_a_bad_status_file_is_unreadable_reported_once_cleaned_and_stops_no_job(tmp_path, caplog, name):
    path = _write_status(tmp_path, name)
    manager = make_manager(tmp_path)
    with caplog.at_level(logging.WARNING, logger="core.jobfiles"):
        assert manager.status("bad") is None  # unreadable: as if absent
        assert manager.jobs() == []  # the Jobs page lists nothing and does not crash
    reports = [r for r in caplog.records if "bad.json" in r.getMessage()]
    assert len(reports) == 1 and "\n" not in reports[0].getMessage()
    assert not path.exists()  # cleaned: no owner holds its key
    _write_status(tmp_path, name)
    work = Work()
    assert manager.run(work.spec("k1")).finished_ok and work.calls == 1  # a new job queues past it
    _write_status(tmp_path, name)
    assert manager.cleanup(older_than_s=3600) == 1  # gc removes it at once (it never fails on it)
    assert not path.exists()


def test_a_bad_status_of_a_live_key_is_left_to_its_owner(tmp_path, caplog):
    hold = threading.Event()
    manager = make_manager(tmp_path)
    manager.submit(Work(hold=hold).spec("bad"))
    until(lambda: manager.status("bad").state is JobState.RUNNING)
    other = make_manager(tmp_path)
    with _REGISTRY_LOCK:
        job = _REGISTRY.pop((manager._folder, "bad"))  # `other` plays another process
    try:
        path = tmp_path / "jobs" / "bad.json"
        path.write_text(json.dumps(_status(submitted="x")))
        with caplog.at_level(logging.WARNING, logger="core.jobfiles"):
            for _ in range(3):
                assert other.status("bad") is None
        assert len([r for r in caplog.records if "bad.json" in r.getMessage()]) == 1  # once, not per read
        assert path.exists()  # its owner holds the lock: its next write replaces the file
    finally:
        with _REGISTRY_LOCK:
            _REGISTRY[(manager._folder, "bad")] = job
        hold.set()
    assert manager.wait("bad").finished_ok and other.status("bad").finished_ok


def test_a_status_file_that_is_a_link_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text(JobStatus("bad", "train", "x", JobState.QUEUED, submitted=time.time()).to_json())
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "bad.json").symlink_to(target)
    manager = make_manager(tmp_path)
    assert manager.status("bad") is None and manager.jobs() == []
    assert target.exists() and not (tmp_path / "jobs" / "bad.json").is_symlink()  # the link went, not its target


# ---------------------------------------------------------------------------------- concurrent gc
def test_concurrent_cleanups_count_each_file_once(tmp_path):
    manager = make_manager(tmp_path)
    for i in range(40):
        manager.run(Work().spec(f"k{i}"))
    files = len([p for p in (tmp_path / "jobs").iterdir() if p.is_file()])
    barrier = threading.Barrier(4)

    def clean(_: int) -> int:
        barrier.wait()
        return make_manager(tmp_path).cleanup(older_than_s=0)

    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(clean, range(4)))
    assert sum(counts) == files and not [p for p in (tmp_path / "jobs").iterdir() if p.is_file()]
