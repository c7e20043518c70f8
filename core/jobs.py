"""Jobs: one computation per key across threads and processes, a bounded queue, progress and cancel.

A job is a key (a content hash: a run id, a run id plus a compression key, a sweep hash) and two
callables: `run(ctx)` computes the result and publishes it into the store, `is_done()` says whether
the store already holds it. The job layer knows nothing about training; it only decides who
computes a key, when, and what everyone else sees meanwhile. It is four modules, one concern each:

    jobstatus.py  what a job is and where it stands (JobSpec, JobStatus and its checked JSON form)
    jobfiles.py   the jobs folder on disk, trusted for nothing: lock, status and cancel files, cleanup
    jobrunner.py  the jobs this process owns: claiming a key, the queue and its slots, running, finishing
    jobs.py       this file: JobManager, the one interface pages, the CLI and the pipeline use

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

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .jobfiles import JobFolder, JobsFolderError, is_held

# _REGISTRY and its lock are re-exported for tests that play another process (they hide a key's owner)
from .jobrunner import (  # noqa: F401
    _REGISTRY,
    _REGISTRY_LOCK,
    JobRunner,
    QueueFull,
    _Job,
    registered_keys,
    wait_local,
)
from .jobstatus import (
    CANCELLED_MESSAGE,
    INTERRUPTED_MESSAGE,
    KEY_PATTERN,
    Cancelled,
    JobContext,
    JobSpec,
    JobState,
    JobStatus,
    check_key,
    one_line,
)

ENV_MAX_JOBS = "COMPRESSION_LAB_MAX_JOBS"
ENV_MAX_WAITING = "COMPRESSION_LAB_MAX_WAITING"
# Jobs one requester (a student, a session) may have waiting at once: enough to line up a few
# settings, too few to fill the queue ahead of a class (the queue also takes requesters in turn).
DEFAULT_MAX_WAITING = 3


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


def default_max_waiting() -> int:
    """COMPRESSION_LAB_MAX_WAITING, else DEFAULT_MAX_WAITING."""
    value = os.environ.get(ENV_MAX_WAITING, "").strip()
    if not value:
        return DEFAULT_MAX_WAITING
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{ENV_MAX_WAITING}={value!r} must be a whole number of jobs, 1 or more")
    return int(value)


class JobManager:
    """Single flight per key, a bounded queue shared by all processes on one root, progress and cancel."""

    def __init__(
        self, root: str | Path, max_running: int | None = None, poll_s: float = 0.2, max_waiting: int | None = None
    ):
        self.root = Path(root)
        # queued jobs one requester (JobSpec.requester) may have; jobs of no requester are not capped
        self.max_waiting = default_max_waiting() if max_waiting is None else int(max_waiting)
        if self.max_waiting < 1:
            raise ValueError(f"max_waiting={max_waiting!r} must be 1 or more")
        self.max_running = default_max_running() if max_running is None else int(max_running)
        if self.max_running < 1:
            raise ValueError(f"max_running={max_running!r} must be 1 or more")
        if not poll_s > 0:
            raise ValueError(f"poll_s={poll_s!r} must be a positive number of seconds")
        self.poll_s = float(poll_s)
        # The folders are made by the first job (JobFolder.prepare), not here: a page that only shows
        # statuses must not fail, or write anything, because the store is read-only or broken.
        self.folder = JobFolder(self.root, self.max_running, owned=lambda key: self._registered(key) is not None)
        self.jobs_dir = self.folder.jobs_dir
        self._folder = str(self.jobs_dir.resolve())
        self._pid = os.getpid()
        self._host = socket.gethostname()
        self._runner = JobRunner(
            self.folder, self._folder, self.max_running, self.poll_s, self._pid, self._host, self.max_waiting
        )

    def _registered(self, key: str) -> _Job | None:
        return self._runner.registered(key)

    # ---------------------------------------------------------------------------------- public API
    def submit(self, spec: JobSpec, slot: bool = True, interactive: bool = False) -> JobStatus:
        """Start the job in a daemon thread of this process and return at once (for the app).

        A key already queued or running anywhere is attached to (its status is returned); a key whose
        result is in the store returns DONE without running anything. `spec.is_done` is called here,
        in the caller's thread. `slot=False` for a job that only coordinates others (a sweep): it
        computes nothing itself, and its items take their own slots. `interactive` for short work a
        page waits on: it may run in the one interactive slot beside the max_running ones, ahead of
        the queue (jobrunner.INTERACTIVE_SLOT), and queues as usual while that one is taken.
        JobsFolderError (one line) when the jobs folder cannot be used, QueueFull (one line) when
        `spec.requester` already has max_waiting jobs queued; nothing was queued then.
        """
        claim = self._runner.claim(spec)
        if claim.local is not None:
            return claim.local.snapshot()
        if claim.owned is None:
            assert claim.status is not None
            return claim.status
        job = claim.owned
        thread = threading.Thread(
            target=self._runner.execute_quietly,
            args=(job, slot, interactive),
            name=f"job-{spec.kind}-{spec.key[:16]}",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError as exc:  # no more threads: the job cannot start, say so rather than hang
            return self._runner.finish(job, JobState.FAILED, f"could not start a worker thread: {one_line(exc)}")
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
            claim = self._runner.claim(spec)
            if claim.owned is not None:
                if on_status is not None:
                    claim.owned.listeners.append(on_status)
                    on_status(claim.owned.snapshot())
                return self._runner.execute(claim.owned)
            if claim.local is not None:
                return wait_local(claim.local, None, on_status)
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
        status = self.folder.read(key)
        if status is None or status.terminal or self.folder.held(key):
            return status
        # The owner may have written its terminal status and let go between our two looks.
        again = self.folder.read(key)
        if again is None or again != status:
            return again
        return replace(
            status,
            state=JobState.FAILED,
            message=f"{INTERRUPTED_MESSAGE} [pid {status.pid} on {status.host}]",
            position=None,
            finished=self.folder.last_write(key, time.time()),
        )

    def jobs(self, finished_within_s: float = 3600) -> list[JobStatus]:
        """Queued and running jobs, and those finished within the last `finished_within_s` seconds;
        newest (by submit time) first."""
        horizon = time.time() - finished_within_s
        found = []
        for key in self.folder.status_keys() | registered_keys(self._folder):
            status = self.status(key)
            if status is None:
                continue
            if status.live or (status.finished is not None and status.finished >= horizon):
                found.append(status)
        return sorted(found, key=lambda s: (s.submitted, s.key), reverse=True)

    def cancel(self, key: str) -> bool:
        """Ask the job to stop, from any thread or process. A queued job is cancelled before it starts;
        a running one at its next `ctx.report()`. Returns False when no job of that key is live;
        JobsFolderError when another process's job cannot be asked (the request cannot be written)."""
        check_key(key)
        job = self._registered(key)
        if job is None and not self.folder.held(key):
            return False
        try:
            self.folder.request_cancel(key, {"pid": self._pid, "host": self._host, "time": time.time()})
        except JobsFolderError:
            if job is None:
                raise
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
            return wait_local(job, timeout, None)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(key)
            if status is None or status.terminal:
                return status
            job = self._registered(key)
            if job is not None:  # a thread of ours took the key over meanwhile
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                return wait_local(job, remaining, None)
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
        return self.folder.cleanup(older_than_s, keys)

    # ------------------------------------------------------------------------------------ waiting
    def _wait_remote(self, key: str, since: float, on_status: Callable[[JobStatus], None] | None) -> JobStatus | None:
        """Sleep-poll another process's job until it ends: its terminal status, or None when its owner
        died (or the key was let go without a new terminal status) and the caller should take over.

        `since` (taken before we found the lock held) tells the job's own terminal status from an
        older run's, which the file still shows while a new owner is starting.
        """
        last: JobStatus | None = None
        while True:
            status = self.folder.read(key)
            held = is_held(self.folder.lock_path(key))
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
    "CANCELLED_MESSAGE",
    "ENV_MAX_JOBS",
    "INTERRUPTED_MESSAGE",
    "KEY_PATTERN",
    "Cancelled",
    "JobContext",
    "JobManager",
    "JobSpec",
    "JobState",
    "JobStatus",
    "JobsFolderError",
    "check_key",
    "default_max_running",
    "usable_cores",
]
