"""The jobs this process owns: taking a key, waiting in the queue for a slot, computing, reporting,
letting go (core/jobs.py's `JobManager` is the public face; this is its engine room).

Owning a key is holding its lock (core/jobfiles.py) for the job's whole life. A queued job waits in
turn, the order read from every process's status files (requesters round-robin, then first come
first served: `SlotQueue.rank`), for one of the max_running slot locks; a job with no slot of its
own (a sweep, which only coordinates) skips the queue, and its items queue for their own. Progress
is kept in memory at once and written to the status file at most every WRITE_INTERVAL_S; the
terminal status is written before the lock is let go.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from .jobfiles import JobFolder, try_lock, unlock
from .jobstatus import (
    CANCELLED_MESSAGE,
    INTERRUPTED_MESSAGE,
    Cancelled,
    JobContext,
    JobSpec,
    JobState,
    JobStatus,
    one_line,
)

# A job may report once per training step; its status file is rewritten at most this often so that
# progress costs no disk traffic worth the name. A timer makes the last throttled report land anyway.
WRITE_INTERVAL_S = 0.25


class _Job:
    """A job this process owns: its lock, its latest status (fresher than the throttled file), its waiters."""

    def __init__(self, spec: JobSpec, lock_fd: int, status: JobStatus, folder: JobFolder):
        self.spec = spec
        self.lock_fd = lock_fd
        self.folder = folder  # where its status file is written
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

    def update(self, force: bool = False, **changes: Any) -> None:
        """Change the status in memory at once, on disk at most every WRITE_INTERVAL_S."""
        with self.cond:
            self.status = replace(self.status, **changes)
            self.version += 1
            wait = self.last_write + WRITE_INTERVAL_S - time.monotonic()
            if force or wait <= 0:
                self.write_locked()
            elif self.timer is None:
                self.timer = threading.Timer(wait, self._write_later)
                self.timer.daemon = True
                self.timer.start()
            self.cond.notify_all()
            status = self.status
        for listener in self.listeners:
            listener(status)

    def _write_later(self) -> None:
        """The timer's body: land the last throttled report, unless the job ended meanwhile."""
        with self.cond:
            self.timer = None
            if self.written != self.version and not self.status.terminal:
                self.write_locked()

    def write_locked(self, status: JobStatus | None = None) -> None:
        """Write the status file: the job's status, or `status` (the caller holds self.cond)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.folder.write_status(status or self.status)  # never raises: a full disk must not kill the job
        self.written = self.version
        self.last_write = time.monotonic()


_NO_SLOT = -1  # the "descriptor" of a job that holds no slot (a sweep: each of its items queues for its own)

# One more slot, beside the max_running ones, for the short work a page waits on (a compression the
# cost model calls cheap, computed while a slider moves): it must not queue behind other sessions'
# trainings for the one slot of a 2-core machine. It is one lock for the whole root, so at most one
# such job runs beside the queue; a second one waits in the queue as any job does.
INTERACTIVE_SLOT = "interactive.lock"

# Owned jobs of this process by (jobs folder, key), shared by all managers of one root.
_REGISTRY: dict[tuple[str, str], _Job] = {}
_REGISTRY_LOCK = threading.Lock()


def registered(folder_id: str, key: str) -> _Job | None:
    """The job of `key` a thread of this process owns, if any."""
    with _REGISTRY_LOCK:
        return _REGISTRY.get((folder_id, key))


def registered_keys(folder_id: str) -> set[str]:
    with _REGISTRY_LOCK:
        return {key for folder, key in _REGISTRY if folder == folder_id}


@dataclass
class _Claim:
    """The outcome of trying to take a key: exactly one field is set."""

    owned: _Job | None = None  # we took it: compute it
    local: _Job | None = None  # another thread of this process owns it: wait in memory
    status: JobStatus | None = None  # already done, failed to check, or another process owns it (live)


class QueueFull(ValueError):
    """A requester already has as many jobs waiting as one may; raised before anything is queued."""


class SlotQueue:
    """The queue every process of a root shares: FIFO by submit time, read from the status files,
    and the max_running slot locks a job holds while it computes."""

    def __init__(self, folder: JobFolder, max_running: int, holder_alive: Callable[[str], bool]):
        self.folder = folder
        self.max_running = max_running
        self._holder_alive = holder_alive

    def rank(self, status: JobStatus) -> int:
        """1 + the number of live queued jobs on this root served before this one. Requesters take
        turns (round-robin): a queued job's turn is the number of its requester's jobs submitted before
        it that still wait, run, or ran since it was submitted, so one student's twentieth job never
        delays another's first; within a turn, and for jobs of no requester (each its own turn 0),
        first submitted, first served."""
        queued = [status]
        earlier: dict[str, list[JobStatus]] = defaultdict(list)  # each requester's jobs that may count
        for key in self.folder.status_keys():
            if key == status.key:
                continue
            other = self.folder.read(key)
            if other is None:
                continue
            live = other.live and self._holder_alive(other.key)
            if other.live and not live:
                continue  # a dead owner's leftover: neither waiting nor served
            if other.state is JobState.QUEUED:
                queued.append(other)
            if other.requester and (live or other.started is not None):
                earlier[other.requester].append(other)
        if status.requester:
            earlier[status.requester].append(status)

        def turn(job: JobStatus) -> int:
            if not job.requester:
                return 0
            return sum(
                (other.submitted, other.key) < (job.submitted, job.key)
                and (other.live or (other.finished or 0.0) >= job.submitted)
                for other in earlier[job.requester]
            )

        def order(job: JobStatus) -> tuple[int, float, str]:
            return (turn(job), job.submitted, job.key)

        mine = order(status)
        return 1 + sum(order(job) < mine for job in queued[1:])

    def waiting(self, requester: str, but: str) -> int:
        """How many live queued jobs of `requester` there are on this root, `but` (a key) left out."""
        count = 0
        for key in self.folder.status_keys():
            if key == but:
                continue
            other = self.folder.read(key)
            if other is not None and other.requester == requester and other.state is JobState.QUEUED:
                count += self._holder_alive(key)
        return count

    def take_slot(self, rank: int) -> int | None:
        """A held slot lock, if at least `rank` slots are free (the jobs ahead of us get theirs first)."""
        held: list[int] = []
        for i in range(self.max_running):
            fd = try_lock(self.folder.slot_path(i))
            if fd is not None:
                held.append(fd)
                if len(held) >= rank:
                    break
        keep = held[0] if len(held) >= rank else None
        for fd in held:
            if fd != keep:
                unlock(fd)
        return keep


class JobRunner:
    """Claims keys for this process and runs the jobs it owns, from queued to terminal."""

    def __init__(
        self,
        folder: JobFolder,
        folder_id: str,
        max_running: int,
        poll_s: float,
        pid: int,
        host: str,
        max_waiting: int | None = None,
    ):
        self.folder = folder
        self.max_waiting = max_waiting  # queued jobs one requester may have; None: no cap
        self.folder_id = folder_id
        self.max_running = max_running
        self.poll_s = poll_s
        self.pid = pid
        self.host = host
        self.queue = SlotQueue(folder, max_running, self.holder_alive)

    def registered(self, key: str) -> _Job | None:
        return registered(self.folder_id, key)

    def holder_alive(self, key: str) -> bool:
        return self.registered(key) is not None or self.folder.held(key)

    # ---------------------------------------------------------------------------- taking a key
    def claim(self, spec: JobSpec) -> _Claim:
        """Take the key (and queue it), or find who has it, or find it done."""
        self.folder.prepare()
        while True:
            done, _ = self.check_done(spec)
            if done:
                return _Claim(status=self.done_status(spec))
            job = self.registered(spec.key)
            if job is not None:
                return _Claim(local=job)
            fd = try_lock(self.folder.lock_path(spec.key), tries=3)
            if fd is not None:
                return self._own(spec, fd)
            status = self.folder.read(spec.key)
            if status is not None and status.live:
                return _Claim(status=status)
            # Held, but its status is old or missing: an owner is starting or finishing. Look again.
            time.sleep(min(self.poll_s, 0.02))

    def _own(self, spec: JobSpec, fd: int) -> _Claim:
        """We hold the key's lock: queue the job, unless another owner finished it just before us."""
        try:
            # An error checking the store is the job's failure too: say so rather than recompute blindly.
            done, error = self.check_done(spec)
            if done or error:
                unlock(fd)
                if done:
                    return _Claim(status=self.done_status(spec))
                return _Claim(status=self.status_for(spec, JobState.FAILED, message=error, finished=time.time()))
            if spec.requester and self.max_waiting is not None:
                waiting = self.queue.waiting(spec.requester, but=spec.key)
                if waiting >= self.max_waiting:  # the handler below lets go of the key
                    raise QueueFull(
                        f"you already have {waiting} jobs waiting in the queue (the most one person may have); "
                        "wait for one to start, or cancel one on the Jobs page, then press again"
                    )
            # A cancel left from an earlier run of this key must not cancel this one.
            self.folder.clear_cancel(spec.key)
            status = self.status_for(spec, JobState.QUEUED)
            job = _Job(spec, fd, replace(status, position=self.queue.rank(status)), self.folder)
            with job.cond:
                job.write_locked()
            with _REGISTRY_LOCK:
                _REGISTRY[(self.folder_id, spec.key)] = job
            return _Claim(owned=job)
        except BaseException:
            unlock(fd)
            raise

    def check_done(self, spec: JobSpec) -> tuple[bool, str]:
        """(is the result in the store, the error message if asking failed)."""
        try:
            return bool(spec.is_done()), ""
        except Exception as exc:
            return False, f"checking the store failed: {one_line(exc)}"

    def status_for(self, spec: JobSpec, state: JobState, **changes: Any) -> JobStatus:
        status = JobStatus(
            spec.key,
            spec.kind,
            spec.label,
            state,
            submitted=time.time(),
            pid=self.pid,
            host=self.host,
            requester=spec.requester,
        )
        return replace(status, **changes)

    def done_status(self, spec: JobSpec) -> JobStatus:
        """The status of a key found in the store: nothing ran, nothing is written."""
        now = time.time()
        return self.status_for(spec, JobState.DONE, text="already computed", submitted=now, finished=now)

    # ------------------------------------------------------------------------ queue and run
    def wait_for_slot(self, job: _Job, interactive: bool = False) -> int | None:
        """Sleep in the queue until a slot is ours (its descriptor), or None when cancelled meanwhile.
        An `interactive` job first tries the interactive slot, which no queued job waits for."""
        while True:
            if self.cancel_requested(job):
                return None
            if interactive:
                fd = try_lock(self.folder.slots_dir / INTERACTIVE_SLOT)
                if fd is not None:
                    return fd
            status = job.snapshot()
            rank = self.queue.rank(status)
            if rank != status.position:
                job.update(force=True, position=rank)
            if rank <= self.max_running:
                fd = self.queue.take_slot(rank)
                if fd is not None:
                    return fd
            job.cancel_event.wait(self.poll_s)

    def cancel_requested(self, job: _Job) -> bool:
        return job.cancel_event.is_set() or self.folder.cancel_requested(job.spec.key)

    def execute_quietly(self, job: _Job, needs_slot: bool = True, interactive: bool = False) -> None:
        """The background thread's body: whatever happens is in the job's status, nothing escapes."""
        with contextlib.suppress(BaseException):  # SystemExit from a job: already recorded as its end
            self.execute(job, needs_slot, interactive)

    def execute(self, job: _Job, needs_slot: bool = True, interactive: bool = False) -> JobStatus:
        """Queue, compute, record the terminal state, let go. Returns the terminal status."""
        state, message = JobState.FAILED, INTERRUPTED_MESSAGE
        slot: int | None = None
        try:
            slot = self.wait_for_slot(job, interactive) if needs_slot else _NO_SLOT
            if slot is None:
                state, message = JobState.CANCELLED, CANCELLED_MESSAGE
            else:
                job.update(force=True, state=JobState.RUNNING, position=None, started=time.time())
                state, message = self._call(job)
        except KeyboardInterrupt:
            state, message = JobState.CANCELLED, "interrupted (Ctrl-C); submit it again to start over"
            raise
        except Exception as exc:  # trouble in the queue itself (the jobs folder removed...): the job's end too
            state, message = JobState.FAILED, f"the job could not run: {one_line(exc)}"
        finally:
            if slot is not None and slot != _NO_SLOT:
                unlock(slot)
            final = self.finish(job, state, message)
        return final

    def _call(self, job: _Job) -> tuple[JobState, str]:
        """Run the job's callable; its outcome as (state, message)."""
        ctx = JobContext(
            job.spec.key, on_report=partial(self._report, job), is_cancelled=partial(self.cancel_requested, job)
        )
        try:
            job.spec.run(ctx)
        except Cancelled:
            return JobState.CANCELLED, CANCELLED_MESSAGE
        except Exception as exc:
            # A job may wrap Cancelled in its own error; the user asked it to stop, so that is what happened.
            if self.cancel_requested(job):
                return JobState.CANCELLED, CANCELLED_MESSAGE
            return JobState.FAILED, one_line(exc)
        done, error = self.check_done(job.spec)
        if error:
            return JobState.FAILED, error
        if not done:
            return JobState.FAILED, "the job returned without publishing its result"
        return JobState.DONE, ""

    def _report(self, job: _Job, done: int, total: int, text: str, metrics: dict[str, float]) -> None:
        job.update(done=done, total=total, text=text, metrics={**job.snapshot().metrics, **metrics})

    def finish(self, job: _Job, state: JobState, message: str) -> JobStatus:
        """Record the terminal state, let go of the key, then wake this process's waiters.

        The status file is terminal before the lock is free (so a free lock beside a live status
        means a dead owner), and waiters wake after it is free (so whoever wait()ed sees a key that
        can be submitted afresh, with nothing left to cancel).
        """
        with job.cond:
            final = replace(job.status, state=state, message=message, position=None, finished=time.time())
            job.write_locked(final)
        self.folder.drop_cancel(job.spec.key)
        with _REGISTRY_LOCK:
            _REGISTRY.pop((self.folder_id, job.spec.key), None)
        unlock(job.lock_fd)
        with job.cond:
            job.status = final
            job.version += 1
            job.cond.notify_all()
        for listener in job.listeners:
            listener(final)
        return final


def wait_local(job: _Job, timeout: float | None, on_status: Callable[[JobStatus], None] | None) -> JobStatus:
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
