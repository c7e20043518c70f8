"""Jobs: one computation per key across threads and processes, a bounded queue, progress and cancel.

A job is a key (a content hash: a run id, a run id plus a compression key, a sweep hash) and two
callables: `run(ctx)` computes the result and publishes it into the store, `is_done()` says whether
the store already holds it. This module knows nothing about training; it only decides who computes
a key, when, and what everyone else sees meanwhile.

    <root>/jobs/<key>.lock      flock'ed by the job's owner for the job's whole life (queued and running)
    <root>/jobs/<key>.json      its JobStatus, replaced atomically on each change; readable from any process
    <root>/jobs/<key>.cancel    a cancel request; the owner's ctx.report() raises Cancelled once it exists
    <root>/jobs/slots/<i>.lock  flock'ed while a job computes, so at most max_running compute at once

Why flock: the kernel releases it when its holder dies, even by SIGKILL, so a status file that says
queued or running while nobody holds its lock is a dead owner's leftover, never a job to wait for.
Linux flock locks belong to the open file description: two threads of one process that each open
the lock file conflict exactly as two processes do. The in-process registry only makes attaching
cheap (a condition variable instead of polling a file); correctness rests on the locks alone.

The owner writes a terminal status before it lets go of the lock. Hence a reader that finds the lock
free and the status still queued or running knows the owner died, and `status()` reports such an
entry as FAILED ("interrupted ..."); the next submit of the key takes it over and computes it.

Use from a Streamlit page: one JobManager per process (`st.cache_resource`), `submit(spec)` when the
button is pressed (it returns at once), then `status(key)` on each rerun of a polling fragment, and
`cancel(key)` behind a button; the result itself is read from the store once the state is done.
Use from the CLI: `run(spec, on_status=...)` blocks, computing the key or waiting for whoever already
computes it, and returns the terminal status; `on_status` can drive a progress bar.

All processes that share a root should use the same max_running (the COMPRESSION_LAB_MAX_JOBS
environment variable): each takes the slot files 0..max_running-1 that it knows of.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

from .fileio import is_temporary, write_atomic, writer_alive

log = logging.getLogger(__name__)

ENV_MAX_JOBS = "COMPRESSION_LAB_MAX_JOBS"

# A job may report once per training step; its status file is rewritten at most this often so that
# progress costs no disk traffic worth the name. A timer makes the last throttled report land anyway.
WRITE_INTERVAL_S = 0.25

# A temporary file older than this is a killed writer's leftover (status writes take microseconds).
LEFTOVER_TMP_S = 60.0

# A key becomes file names: plain characters only, so a key can never point outside jobs/.
KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")

# A status file is about a kilobyte; anything much larger is not one of ours (and is not read whole).
MAX_STATUS_BYTES = 64 << 10

# Hosts sharing a store may disagree on the time by this much; a time further ahead is a bad file.
CLOCK_SKEW_S = 300.0

CANCELLED_MESSAGE = "cancelled on request; submit it again to start over"
INTERRUPTED_MESSAGE = "interrupted (the process running it stopped); submit it again to start over"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands, as every process sees it; `to_json` is its one stored form."""

    key: str  # the job's content hash
    kind: str  # "train" | "compress" | "sweep" (free text, for display and filtering)
    label: str  # human description of the job
    state: JobState
    message: str = ""  # why it failed or was cancelled: one line a user can act on, never a traceback
    done: int = 0  # progress: `done` of `total` units (epochs, configs...)
    total: int = 0  # 0 while the job has not said how much work there is
    text: str = ""  # progress in words, e.g. "epoch 3: step 40/63"
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each reported metric
    position: int | None = None  # place in the queue while queued (1 = next), else None
    submitted: float = 0.0  # time.time() when its owner took it
    started: float | None = None  # when it began to compute (None while queued, or if it never ran)
    finished: float | None = None  # when it reached a terminal state
    pid: int = 0  # the owner's process id
    host: str = ""  # the owner's host name

    @property
    def terminal(self) -> bool:
        """True once nothing more will happen to this job."""
        return self.state in TERMINAL_STATES

    @property
    def live(self) -> bool:
        """True while queued or running (for a status read from disk: its owner holds the lock)."""
        return not self.terminal

    @property
    def finished_ok(self) -> bool:
        """True when the result is in the store."""
        return self.state is JobState.DONE

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]; 0 while the total is unknown."""
        return min(1.0, max(0.0, self.done / self.total)) if self.total > 0 else 0.0

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "state": self.state.value})

    @classmethod
    def from_json(cls, text: str | bytes, now: float | None = None) -> JobStatus:
        """Parse `to_json`'s output, every field checked for its type; ValueError (one line) otherwise.

        Fields unknown to this version are ignored (a newer writer). A time that is not finite or is
        ahead of `now` (default: the clock) by more than CLOCK_SKEW_S is refused: such a status would
        sort, age and list wrongly forever. Whoever reads a status file reads it through here.
        """
        try:
            data = json.loads(text)
        except (UnicodeDecodeError, RecursionError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON ({_one_line(exc)})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        latest = (time.time() if now is None else now) + CLOCK_SKEW_S
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name in _REQUIRED_FIELDS:
                    raise ValueError(f"no {f.name!r}")
                continue
            kwargs[f.name] = _FIELD_PARSERS[f.name](f.name, data[f.name], latest)
        check_key(kwargs["key"])
        return cls(**kwargs)


def _text(name: str, value: Any, latest: float) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name!r} is not text")
    return value


def _count(name: str, value: Any, latest: float) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name!r} is not a whole number >= 0")
    return value


def _position(name: str, value: Any, latest: float) -> int | None:
    return None if value is None else _count(name, value, latest)


def _time(name: str, value: Any, latest: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name!r} is not a finite time")
    if not 0 <= value <= latest:
        raise ValueError(f"{name!r} = {value!r} is not a time between 1970 and now")
    return float(value)


def _time_or_none(name: str, value: Any, latest: float) -> float | None:
    return None if value is None else _time(name, value, latest)


def _state(name: str, value: Any, latest: float) -> JobState:
    if not isinstance(value, str) or value not in JobState.__members__.values():
        raise ValueError(f"{name!r} = {str(value)[:40]!r} is not a job state")
    return JobState(value)


def _metrics(name: str, value: Any, latest: float) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
    ):
        raise ValueError(f"{name!r} is not a mapping of names to numbers")
    return {str(k): float(v) for k, v in value.items()}


_FIELD_PARSERS: dict[str, Callable[[str, Any, float], Any]] = {
    "key": _text,
    "kind": _text,
    "label": _text,
    "state": _state,
    "message": _text,
    "done": _count,
    "total": _count,
    "text": _text,
    "metrics": _metrics,
    "position": _position,
    "submitted": _time,
    "started": _time_or_none,
    "finished": _time_or_none,
    "pid": _count,
    "host": _text,
}
_REQUIRED_FIELDS = frozenset({"key", "kind", "label", "state", "submitted"})


class Cancelled(Exception):
    """Raised inside a job by `ctx.report()` once a cancel was requested for its key."""


class JobContext:
    """What a running job sees: where to report progress, and whether it should stop.

    `JobContext(key)` alone reports nowhere and is never cancelled: a job's `run` can be called
    outside a manager (a notebook, a test, a Ray worker that relays progress its own way).
    """

    def __init__(
        self,
        key: str,
        on_report: Callable[[int, int, str, dict[str, float]], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ):
        self.key = key
        self._on_report = on_report
        self._is_cancelled = is_cancelled

    def report(self, done: int, total: int, text: str = "", **metrics: float) -> None:
        """Record progress (`done` of `total`, a line of text, the latest metrics); raise Cancelled
        when a cancel was requested, so a job that reports often stops promptly."""
        if self._on_report is not None:
            self._on_report(int(done), int(total), str(text), {name: float(v) for name, v in metrics.items()})
        if self.cancelled():
            raise Cancelled(CANCELLED_MESSAGE)

    def cancelled(self) -> bool:
        """True once a cancel was requested (for a job that wants to stop between reports)."""
        return self._is_cancelled is not None and self._is_cancelled()


@dataclass(frozen=True)
class JobSpec:
    key: str  # content hash: a run id, a run id + compression key, or a sweep hash
    kind: str  # "train" | "compress" | "sweep" (free text)
    label: str  # human description
    run: Callable[[JobContext], None]  # computes AND publishes the result; if it raises, it published nothing
    is_done: Callable[[], bool]  # True when the result is already in the store

    def __post_init__(self) -> None:
        check_key(self.key)


def check_key(key: str) -> None:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ValueError(
            f"job key {key!r} is not usable as a file name; use 1 to 200 letters, digits, '_', '-' or '.' "
            "(not starting with '.')"
        )


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_max_running() -> int:
    """COMPRESSION_LAB_MAX_JOBS, else half the cores: a training keeps about two cores busy."""
    value = os.environ.get(ENV_MAX_JOBS, "").strip()
    if not value:
        return max(1, usable_cores() // 2)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{ENV_MAX_JOBS}={value!r} must be a whole number of jobs, 1 or more")
    return int(value)


def set_torch_threads(max_running: int) -> int | None:
    """Give each of `max_running` concurrent jobs an equal share of the cores as torch threads.

    Torch sizes its intra-op pool to all cores by default; several jobs doing that at once
    oversubscribe the machine and thrash (measured on the 2-core box: four concurrent trainings of
    two threads each cost about 19x the CPU of one). Threads are process-wide, hence set once here.
    Torch is imported here, not at module level, so the job layer itself does not need it.
    Returns the thread count set, or None when torch is not installed.
    """
    try:
        import torch
    except ImportError:
        return None
    threads = max(1, usable_cores() // max_running)
    torch.set_num_threads(threads)
    return threads


def _one_line(exc: BaseException) -> str:
    """The exception's own message, first line only (a user reads it; tracebacks are for logs)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:500] if lines else type(exc).__name__


# ------------------------------------------------------------------------------------------ locks
class JobsFolderError(ValueError):
    """The jobs folder (or a lock file in it) cannot be used: a file where a folder should be, a
    folder or a link where a lock file should be, no permission. One line a user can act on; raised
    before the job is queued, so nothing was computed or written."""


_FIX = "remove it, or use another store (--cache-dir, COMPRESSION_LAB_CACHE)"

_WHY = {
    errno.ELOOP: "is a symbolic link, not a lock file",
    errno.EISDIR: "is a folder, not a lock file",
    errno.ENOTDIR: "is inside something that is not a folder",
    errno.EACCES: "is not writable (permission denied)",
    errno.EPERM: "is not writable (operation not permitted)",
    errno.EROFS: "is on a read-only file system",
    errno.ENOSPC: "cannot be created: no space left on device (the disk is full)",
}


def _folder_error(path: Path, exc: OSError) -> JobsFolderError:
    why = _WHY.get(exc.errno or 0, f"cannot be used ({exc.strerror or exc})")
    return JobsFolderError(f"the job file {path} {why}; {_FIX}")


def _open_lock(path: Path) -> int:
    """A read-write descriptor of the lock file `path`, created if absent. Never through a symbolic
    link (it could create or lock a file outside the store) and only a regular file (a FIFO or a
    device is not ours to lock). JobsFolderError otherwise."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise _folder_error(path, exc) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise JobsFolderError(f"the job file {path} is not a regular file; {_FIX}")
    return fd


def _try_lock(path: Path, tries: int = 1) -> int | None:
    """An open descriptor holding an exclusive flock on `path`, or None when someone else holds it.

    Lock files may be deleted by `cleanup` (while it holds them); a lock taken on a file that was
    unlinked meanwhile guards nothing, so the descriptor's inode must still be the path's.
    Readers probing a lock hold it for a few microseconds; `tries` > 1 keeps such a probe from
    being mistaken for an owner. JobsFolderError when `path` cannot be a lock file.
    """
    attempt = 0
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise _folder_error(path, exc) from None
            attempt += 1
            if attempt >= tries:
                return None
            time.sleep(0.005)
            continue
        try:
            mine, there = os.fstat(fd), os.lstat(path)
            same = (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # unlinked under us: lock the file that is there now


def _unlock(fd: int) -> None:
    os.close(fd)  # closing the last descriptor of the open file description releases the flock


def _is_held(path: Path) -> bool:
    """True when some thread or process holds the flock on `path` (a shared probe, released at once).
    Anything at `path` that is not a regular lock file (nothing, a link, a folder) is held by no one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def _read_small(path: Path, limit: int) -> bytes:
    """The bytes of the regular file `path` (not through a link, not a FIFO), at most `limit` + 1."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)


def _remove(path: Path) -> int:
    """1 when this call removed `path`, 0 when it was already gone (another cleanup got there first)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1


def _mtime_s(path: Path, default: float) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return default


def _older(path: Path, now: float, seconds: float) -> bool:
    return now - _mtime_s(path, now) > seconds


# ------------------------------------------------------------------------------ owned jobs (one process)
class _Job:
    """A job this process owns: its lock, its latest status (fresher than the throttled file), its waiters."""

    def __init__(self, spec: JobSpec, lock_fd: int, status: JobStatus):
        self.spec = spec
        self.lock_fd = lock_fd
        self.status = status
        self.version = 0  # bumped on each status change; waiters wake when it moves
        self.written = -1  # the version last written to the status file
        self.last_write = 0.0  # time.monotonic() of that write
        self.timer: threading.Timer | None = None  # pending write of a throttled report
        self.cond = threading.Condition()
        self.cancel_event = threading.Event()
        self.listeners: list[Callable[[JobStatus], None]] = []

    def snapshot(self) -> JobStatus:
        with self.cond:
            return self.status


_NO_SLOT = -1  # the "descriptor" of a job that runs inside its parent's slot

# Owned jobs of this process by (jobs folder, key), shared by all managers of one root.
_REGISTRY: dict[tuple[str, str], _Job] = {}
_REGISTRY_LOCK = threading.Lock()

# Unusable status files already reported by this process: (path, inode, mtime), so each is logged once.
_REPORTED: set[tuple[str, int, int]] = set()


@dataclass
class _Claim:
    """The outcome of trying to take a key: exactly one field is set."""

    owned: _Job | None = None  # we took it: compute it
    local: _Job | None = None  # another thread of this process owns it: wait in memory
    status: JobStatus | None = None  # already done, failed to check, or another process owns it (live)


class JobManager:
    """Single flight per key, a bounded queue shared by all processes on one root, progress and cancel."""

    def __init__(
        self,
        root: str | Path,
        max_running: int | None = None,
        poll_s: float = 0.2,
        tune_torch_threads: bool = True,
    ):
        self.root = Path(root)
        self.jobs_dir = self.root / "jobs"
        self.slots_dir = self.jobs_dir / "slots"
        # The folders are made by the first job (`_prepare`), not here: a page that only shows
        # statuses must not fail, or write anything, because the store is read-only or broken.
        self.max_running = default_max_running() if max_running is None else int(max_running)
        if self.max_running < 1:
            raise ValueError(f"max_running={max_running!r} must be 1 or more")
        if not poll_s > 0:
            raise ValueError(f"poll_s={poll_s!r} must be a positive number of seconds")
        self.poll_s = float(poll_s)
        self._folder = str(self.jobs_dir.resolve())
        self._pid = os.getpid()
        self._host = socket.gethostname()
        # Jobs run as threads of this process (submit), so their torch pools must share the cores.
        self.torch_threads = set_torch_threads(self.max_running) if tune_torch_threads else None

    # ------------------------------------------------------------------------------------ paths
    def _lock_path(self, key: str) -> Path:
        return self.jobs_dir / f"{key}.lock"

    def _status_path(self, key: str) -> Path:
        return self.jobs_dir / f"{key}.json"

    def _cancel_path(self, key: str) -> Path:
        return self.jobs_dir / f"{key}.cancel"

    def _registered(self, key: str) -> _Job | None:
        with _REGISTRY_LOCK:
            return _REGISTRY.get((self._folder, key))

    def _prepare(self) -> None:
        """Make the jobs and slots folders, and check the slot locks: before a job is queued, so a
        broken or read-only jobs folder is one JobsFolderError and nothing is written."""
        for folder in (self.jobs_dir, self.slots_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)  # exist_ok: only an existing folder
            except (FileExistsError, NotADirectoryError):
                raise JobsFolderError(f"the jobs folder {folder} is a file, not a folder; {_FIX}") from None
            except OSError as exc:
                if not folder.is_dir():
                    raise JobsFolderError(
                        f"the jobs folder {folder} cannot be created ({exc.strerror}); {_FIX}"
                    ) from None
        for i in range(self.max_running):
            path = self.slots_dir / f"{i}.lock"
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    raise JobsFolderError(f"the job file {path} is not a regular file; {_FIX}")

    def _read(self, key: str) -> JobStatus | None:
        """The status file as written, or None when absent or unusable. An unusable one (damaged,
        edited, of the wrong types) is reported once and removed when no owner holds its key."""
        path = self._status_path(key)
        try:
            data = _read_small(path, MAX_STATUS_BYTES)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOTDIR, errno.EACCES, errno.EPERM):
                return None  # the folder itself is unusable: nothing to read, nothing to clean
            self._unreadable(key, _one_line(exc))
            return None
        if len(data) > MAX_STATUS_BYTES:
            self._unreadable(key, f"larger than {MAX_STATUS_BYTES} bytes")
            return None
        try:
            status = JobStatus.from_json(data)
        except ValueError as exc:
            self._unreadable(key, _one_line(exc))
            return None
        if status.key != key:
            self._unreadable(key, f"it is the status of another key, {status.key!r}")
            return None
        return status

    def _unreadable(self, key: str, reason: str) -> None:
        """Report a bad status file once (per version of it), and remove it unless its key is live:
        then its owner's next write replaces it. Never raises: other jobs go on regardless."""
        path = self._status_path(key)
        try:
            info = os.lstat(path)
        except OSError:
            return
        seen = (str(path), info.st_ino, info.st_mtime_ns)
        with _REGISTRY_LOCK:
            first = seen not in _REPORTED
            _REPORTED.add(seen)
        if first:
            log.warning("job status %s is unusable (%s); it is ignored and removed", path, reason)
        if self._registered(key) is not None:
            return
        lock_path = self._lock_path(key)
        try:
            lock_existed = os.path.lexists(lock_path)
            fd = _try_lock(lock_path)
        except (JobsFolderError, OSError):
            return
        if fd is None:
            return  # live: its owner rewrites the file
        try:
            after = os.lstat(path)
            if (after.st_ino, after.st_mtime_ns) == (info.st_ino, info.st_mtime_ns):
                path.unlink()
            if not lock_existed:
                lock_path.unlink()  # the lock file this probe made
        except OSError:
            pass
        finally:
            _unlock(fd)

    def _holder_alive(self, key: str) -> bool:
        return self._registered(key) is not None or _is_held(self._lock_path(key))

    # ---------------------------------------------------------------------------------- public API
    def submit(self, spec: JobSpec, slot: bool = True) -> JobStatus:
        """Start the job in a daemon thread of this process and return at once (for the app).

        A key already queued or running anywhere is attached to (its status is returned); a key whose
        result is in the store returns DONE without running anything. `spec.is_done` is called here,
        in the caller's thread. `slot=False` for a job that only coordinates others (a sweep): it
        computes nothing itself, and its items take their own slots.
        """
        claim = self._claim(spec)
        if claim.local is not None:
            return claim.local.snapshot()
        if claim.owned is None:
            assert claim.status is not None
            return claim.status
        job = claim.owned
        thread = threading.Thread(
            target=self._execute_quietly, args=(job, slot), name=f"job-{spec.kind}-{spec.key[:16]}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # no more threads: the job cannot start, say so rather than hang
            return self._finish(job, JobState.FAILED, f"could not start a worker thread: {_one_line(exc)}")
        return job.snapshot()

    def run(self, spec: JobSpec, on_status: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Compute the job in the caller's thread, or wait for whoever computes it (for the CLI).

        Same single flight and queue as `submit`. Waiting sleeps between polls of the status file.
        `on_status` is called, in this thread, with each new status, the terminal one included.
        Returns the terminal status instead of raising; a KeyboardInterrupt while this thread owns
        the job is recorded (cancelled, "interrupted") and then re-raised.
        """
        while True:
            since = time.time()
            claim = self._claim(spec)
            if claim.owned is not None:
                if on_status is not None:
                    claim.owned.listeners.append(on_status)
                    on_status(claim.owned.snapshot())
                return self._execute(claim.owned)
            if claim.local is not None:
                return self._wait_local(claim.local, None, on_status)
            assert claim.status is not None
            if claim.status.terminal:
                if on_status is not None:
                    on_status(claim.status)
                return claim.status
            final = self._wait_remote(spec.key, since, on_status)
            if final is not None:
                return final
            # Its owner died (or the entry vanished) while we waited: go round and take it over.

    def status(self, key: str) -> JobStatus | None:
        """The job's latest status, or None when this root never saw the key (or it was cleaned up).

        A status file that says queued or running while no one holds the key's lock was left by a
        process that died: it is returned as FAILED with an "interrupted" message (the file is left
        alone; the next submit takes the key over).
        """
        check_key(key)
        job = self._registered(key)
        if job is not None:
            return job.snapshot()
        status = self._read(key)
        if status is None or status.terminal or _is_held(self._lock_path(key)):
            return status
        # The owner may have written its terminal status and let go between our two looks.
        again = self._read(key)
        if again is None or again != status:
            return again
        last_sign_of_life = _mtime_s(self._status_path(key), time.time())
        return replace(
            status,
            state=JobState.FAILED,
            message=f"{INTERRUPTED_MESSAGE} [pid {status.pid} on {status.host}]",
            position=None,
            finished=last_sign_of_life,
        )

    def jobs(self, finished_within_s: float = 3600) -> list[JobStatus]:
        """Queued and running jobs, and those finished within the last `finished_within_s` seconds;
        newest (by submit time) first."""
        horizon = time.time() - finished_within_s
        keys = {path.stem for path in self.jobs_dir.glob("*.json") if KEY_PATTERN.fullmatch(path.stem)}
        with _REGISTRY_LOCK:
            keys.update(key for folder, key in _REGISTRY if folder == self._folder)
        found = []
        for key in keys:
            status = self.status(key)
            if status is None:
                continue
            if status.live or (status.finished is not None and status.finished >= horizon):
                found.append(status)
        return sorted(found, key=lambda s: (s.submitted, s.key), reverse=True)

    def cancel(self, key: str) -> bool:
        """Ask the job to stop, from any thread or process. A queued job is cancelled before it starts;
        a running one at its next `ctx.report()`. Returns False when no job of that key is live."""
        check_key(key)
        job = self._registered(key)
        if job is None and not _is_held(self._lock_path(key)):
            return False
        request = {"pid": self._pid, "host": self._host, "time": time.time()}
        try:
            write_atomic(self._cancel_path(key), json.dumps(request).encode())
        except OSError as exc:
            if job is None:
                raise _folder_error(self._cancel_path(key), exc) from None
            # our own job: the in-memory request below is enough
        if job is not None:
            job.cancel_event.set()  # wakes a queued job at once instead of at its next poll
        return True

    def wait(self, key: str, timeout: float | None = None) -> JobStatus | None:
        """Block until the job is terminal (or `timeout` seconds pass) and return its status;
        None when the key is unknown."""
        check_key(key)
        job = self._registered(key)
        if job is not None:
            return self._wait_local(job, timeout, None)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(key)
            if status is None or status.terminal:
                return status
            job = self._registered(key)
            if job is not None:  # a thread of ours took the key over meanwhile
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                return self._wait_local(job, remaining, None)
            if deadline is not None and time.monotonic() >= deadline:
                return status
            pause = self.poll_s if deadline is None else min(self.poll_s, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)

    def cleanup(self, older_than_s: float = 86400, keys: Callable[[str], bool] | None = None) -> int:
        """Remove the files of jobs that finished (or whose owner died) more than `older_than_s`
        seconds ago, unusable status files, orphaned lock and cancel files, and killed writers'
        temporaries; with `keys`, only the entries of the keys it accepts (no temporaries).
        Live jobs are never touched. Returns the number of files this call removed (another
        cleanup at the same moment counts its own). JobsFolderError when the folder is unusable."""
        if not self.jobs_dir.exists():
            return 0
        if not self.jobs_dir.is_dir():
            raise JobsFolderError(f"the jobs folder {self.jobs_dir} is a file, not a folder; {_FIX}")
        try:
            return self._cleanup(older_than_s, keys)
        except OSError as exc:
            raise _folder_error(Path(exc.filename or self.jobs_dir), exc) from None

    def _cleanup(self, older_than_s: float, wanted: Callable[[str], bool] | None) -> int:
        now = time.time()
        removed = 0
        keys = set()
        for path in self.jobs_dir.iterdir():
            if path.is_dir() and not path.is_symlink():
                continue
            if is_temporary(path):
                if wanted is None and _older(path, now, LEFTOVER_TMP_S) and not writer_alive(path):
                    removed += _remove(path)
            elif (
                path.suffix in (".json", ".lock", ".cancel")
                and KEY_PATTERN.fullmatch(path.stem)
                and (wanted is None or wanted(path.stem))
            ):
                keys.add(path.stem)
        for key in keys:
            if self._registered(key) is not None:
                continue
            lock_path = self._lock_path(key)
            lock_existed = os.path.lexists(lock_path)
            try:
                fd = _try_lock(lock_path)
            except JobsFolderError:
                if lock_path.is_symlink():  # a link is never ours: remove the name, not what it points to
                    removed += _remove(lock_path)
                continue  # a folder where a lock should be: not ours to remove; jobs say so
            if fd is None:
                continue  # live: its owner holds the lock
            try:
                status_path = self._status_path(key)
                if os.path.lexists(status_path):
                    status = self._read(key)
                    when = status.finished if status is not None and status.finished is not None else None
                    if status is not None and (not status.terminal or when is None):
                        when = _mtime_s(status_path, now)  # a dead owner's: aged from its last write
                    if when is not None and now - when < older_than_s:
                        continue  # recent: keep its status (and its lock file) for the jobs list
                for path in (status_path, self._cancel_path(key)):
                    if not path.is_dir() or path.is_symlink():
                        removed += _remove(path)
                if lock_existed:  # the lock file we just made to probe is not counted
                    removed += _remove(lock_path)
                else:
                    lock_path.unlink(missing_ok=True)
            finally:
                _unlock(fd)
        return removed

    # ---------------------------------------------------------------------------- taking a key
    def _claim(self, spec: JobSpec) -> _Claim:
        """Take the key (and queue it), or find who has it, or find it done."""
        self._prepare()
        while True:
            done, _ = self._check_done(spec)
            if done:
                return _Claim(status=self._done_status(spec))
            job = self._registered(spec.key)
            if job is not None:
                return _Claim(local=job)
            fd = _try_lock(self._lock_path(spec.key), tries=3)
            if fd is not None:
                return self._own(spec, fd)
            status = self._read(spec.key)
            if status is not None and status.live:
                return _Claim(status=status)
            # Held, but its status is old or missing: an owner is starting or finishing. Look again.
            time.sleep(min(self.poll_s, 0.02))

    def _own(self, spec: JobSpec, fd: int) -> _Claim:
        """We hold the key's lock: queue the job, unless another owner finished it just before us."""
        try:
            # An error checking the store is the job's failure too: say so rather than recompute blindly.
            done, error = self._check_done(spec)
            if done or error:
                _unlock(fd)
                if done:
                    return _Claim(status=self._done_status(spec))
                return _Claim(status=self._status_for(spec, JobState.FAILED, message=error, finished=time.time()))
            # A cancel left from an earlier run of this key must not cancel this one.
            try:
                self._cancel_path(spec.key).unlink(missing_ok=True)
            except OSError as exc:
                raise _folder_error(self._cancel_path(spec.key), exc) from None
            status = self._status_for(spec, JobState.QUEUED)
            job = _Job(spec, fd, replace(status, position=self._queue_rank(status)))
            with job.cond:
                self._write_locked(job)
            with _REGISTRY_LOCK:
                _REGISTRY[(self._folder, spec.key)] = job
            return _Claim(owned=job)
        except BaseException:
            _unlock(fd)
            raise

    def _check_done(self, spec: JobSpec) -> tuple[bool, str]:
        """(is the result in the store, the error message if asking failed)."""
        try:
            return bool(spec.is_done()), ""
        except Exception as exc:
            return False, f"checking the store failed: {_one_line(exc)}"

    def _status_for(self, spec: JobSpec, state: JobState, **changes: Any) -> JobStatus:
        status = JobStatus(
            spec.key, spec.kind, spec.label, state, submitted=time.time(), pid=self._pid, host=self._host
        )
        return replace(status, **changes)

    def _done_status(self, spec: JobSpec) -> JobStatus:
        """The status of a key found in the store: nothing ran, nothing is written."""
        now = time.time()
        return self._status_for(spec, JobState.DONE, text="already computed", submitted=now, finished=now)

    # ------------------------------------------------------------------------------- the queue
    def _queue_rank(self, status: JobStatus) -> int:
        """1 + the number of live queued jobs on this root submitted before this one (FIFO)."""
        ahead = 0
        mine = (status.submitted, status.key)
        for path in self.jobs_dir.glob("*.json"):
            if path.stem == status.key or not KEY_PATTERN.fullmatch(path.stem):
                continue
            other = self._read(path.stem)
            if other is None:
                continue
            if other.state is JobState.QUEUED and (other.submitted, other.key) < mine:
                ahead += self._holder_alive(other.key)
        return ahead + 1

    def _take_slot(self, rank: int) -> int | None:
        """A held slot lock, if at least `rank` slots are free (the jobs ahead of us get theirs first)."""
        held: list[int] = []
        for i in range(self.max_running):
            fd = _try_lock(self.slots_dir / f"{i}.lock")
            if fd is not None:
                held.append(fd)
                if len(held) >= rank:
                    break
        keep = held[0] if len(held) >= rank else None
        for fd in held:
            if fd != keep:
                _unlock(fd)
        return keep

    def _wait_for_slot(self, job: _Job) -> int | None:
        """Sleep in the queue until a slot is ours (its descriptor), or None when cancelled meanwhile."""
        while True:
            if self._cancel_requested(job):
                return None
            status = job.snapshot()
            rank = self._queue_rank(status)
            if rank != status.position:
                self._update(job, force=True, position=rank)
            if rank <= self.max_running:
                fd = self._take_slot(rank)
                if fd is not None:
                    return fd
            job.cancel_event.wait(self.poll_s)

    def _cancel_requested(self, job: _Job) -> bool:
        return job.cancel_event.is_set() or self._cancel_path(job.spec.key).is_file()  # a folder asks nothing

    # --------------------------------------------------------------------------- running a job
    def _execute_quietly(self, job: _Job, needs_slot: bool = True) -> None:
        """The background thread's body: whatever happens is in the job's status, nothing escapes."""
        with contextlib.suppress(BaseException):  # SystemExit from a job: already recorded as its end
            self._execute(job, needs_slot)

    def _execute(self, job: _Job, needs_slot: bool = True) -> JobStatus:
        """Queue, compute, record the terminal state, let go. Returns the terminal status."""
        state, message = JobState.FAILED, INTERRUPTED_MESSAGE
        slot: int | None = None
        try:
            slot = self._wait_for_slot(job) if needs_slot else _NO_SLOT
            if slot is None:
                state, message = JobState.CANCELLED, CANCELLED_MESSAGE
            else:
                self._update(job, force=True, state=JobState.RUNNING, position=None, started=time.time())
                state, message = self._call(job)
        except KeyboardInterrupt:
            state, message = JobState.CANCELLED, "interrupted (Ctrl-C); submit it again to start over"
            raise
        except Exception as exc:  # trouble in the queue itself (the jobs folder removed...): the job's end too
            state, message = JobState.FAILED, f"the job could not run: {_one_line(exc)}"
        finally:
            if slot is not None and slot != _NO_SLOT:
                _unlock(slot)
            final = self._finish(job, state, message)
        return final

    def _call(self, job: _Job) -> tuple[JobState, str]:
        """Run the job's callable; its outcome as (state, message)."""
        ctx = JobContext(
            job.spec.key, on_report=partial(self._report, job), is_cancelled=partial(self._cancel_requested, job)
        )
        try:
            job.spec.run(ctx)
        except Cancelled:
            return JobState.CANCELLED, CANCELLED_MESSAGE
        except Exception as exc:
            # A job may wrap Cancelled in its own error; the user asked it to stop, so that is what happened.
            if self._cancel_requested(job):
                return JobState.CANCELLED, CANCELLED_MESSAGE
            return JobState.FAILED, _one_line(exc)
        done, error = self._check_done(job.spec)
        if error:
            return JobState.FAILED, error
        if not done:
            return JobState.FAILED, "the job returned without publishing its result"
        return JobState.DONE, ""

    def _report(self, job: _Job, done: int, total: int, text: str, metrics: dict[str, float]) -> None:
        self._update(job, done=done, total=total, text=text, metrics={**job.snapshot().metrics, **metrics})

    def _update(self, job: _Job, force: bool = False, **changes: Any) -> None:
        """Change the job's status in memory at once, on disk at most every WRITE_INTERVAL_S."""
        with job.cond:
            job.status = replace(job.status, **changes)
            job.version += 1
            wait = job.last_write + WRITE_INTERVAL_S - time.monotonic()
            if force or wait <= 0:
                self._write_locked(job)
            elif job.timer is None:
                job.timer = threading.Timer(wait, self._write_later, args=(job,))
                job.timer.daemon = True
                job.timer.start()
            job.cond.notify_all()
            status = job.status
        for listener in job.listeners:
            listener(status)

    def _write_later(self, job: _Job) -> None:
        """The timer's body: land the last throttled report, unless the job ended meanwhile."""
        with job.cond:
            job.timer = None
            if job.written != job.version and not job.status.terminal:
                self._write_locked(job)

    def _write_locked(self, job: _Job, status: JobStatus | None = None) -> None:
        """Write the status file: the job's status, or `status` (the caller holds job.cond)."""
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        # A full disk must not kill the computation. Readers keep the previous status; if even the
        # terminal write fails, the released lock makes the entry read as interrupted, and the
        # next submit finds the result through is_done().
        with contextlib.suppress(OSError):
            write_atomic(self._status_path(job.spec.key), (status or job.status).to_json().encode())
        job.written = job.version
        job.last_write = time.monotonic()

    def _finish(self, job: _Job, state: JobState, message: str) -> JobStatus:
        """Record the terminal state, let go of the key, then wake this process's waiters.

        The status file is terminal before the lock is free (so a free lock beside a live status
        means a dead owner), and waiters wake after it is free (so whoever wait()ed sees a key that
        can be submitted afresh, with nothing left to cancel).
        """
        with job.cond:
            final = replace(job.status, state=state, message=message, position=None, finished=time.time())
            self._write_locked(job, final)
        with contextlib.suppress(OSError):  # the lock must be let go whatever is in the folder
            self._cancel_path(job.spec.key).unlink(missing_ok=True)
        with _REGISTRY_LOCK:
            _REGISTRY.pop((self._folder, job.spec.key), None)
        _unlock(job.lock_fd)
        with job.cond:
            job.status = final
            job.version += 1
            job.cond.notify_all()
        for listener in job.listeners:
            listener(final)
        return final

    # ------------------------------------------------------------------------------------ waiting
    def _wait_local(self, job: _Job, timeout: float | None, on_status: Callable[[JobStatus], None] | None) -> JobStatus:
        """Wait on a job owned by a thread of this process (a condition variable: no polling)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = -1
        while True:
            with job.cond:
                while job.version == seen:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return job.status
                    job.cond.wait(remaining)
                seen, status = job.version, job.status
            if on_status is not None:
                on_status(status)
            if status.terminal:
                return status

    def _wait_remote(self, key: str, since: float, on_status: Callable[[JobStatus], None] | None) -> JobStatus | None:
        """Sleep-poll another process's job until it ends: its terminal status, or None when its owner
        died (or the key was let go without a new terminal status) and the caller should take over.

        `since` (taken before we found the lock held) tells the job's own terminal status from an
        older run's, which the file still shows while a new owner is starting.
        """
        last: JobStatus | None = None
        while True:
            status = self._read(key)
            held = _is_held(self._lock_path(key))
            fresh = status is not None and (status.live or (status.finished or 0.0) >= since)
            if fresh and status != last:
                last = status
                if on_status is not None and status is not None:
                    on_status(status)
            if status is not None and status.terminal and (status.finished or 0.0) >= since:
                return status
            if not held:
                return None
            time.sleep(self.poll_s)


__all__ = [
    "ENV_MAX_JOBS",
    "Cancelled",
    "JobContext",
    "JobManager",
    "JobSpec",
    "JobState",
    "JobStatus",
    "check_key",
    "default_max_running",
    "set_torch_threads",
    "usable_cores",
]
