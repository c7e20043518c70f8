"""The jobs folder on disk, trusted for nothing: lock files, status files, cancel requests, cleanup.

    <root>/jobs/<key>.lock      flock'ed by the job's owner for the job's whole life (queued and running)
    <root>/jobs/<key>.json      its JobStatus, replaced atomically on each change; readable from any process
    <root>/jobs/<key>.cancel    a cancel request; the owner's ctx.report() raises Cancelled once it exists
    <root>/jobs/slots/<i>.lock  flock'ed while a job computes, so at most max_running compute at once

Anyone who can write the store can put anything at those paths. A lock is opened without following
a link and only if it is a regular file; a status file is read the same way, at most
MAX_STATUS_BYTES, and parsed with its types checked. Where a job would write, what cannot be used is
a JobsFolderError (one line, raised before the job is queued); where a page only looks, it reads as
nothing. An unusable status file is reported once (a logging warning) and removed when no owner
holds its key, so it never stops another job.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .fileio import is_temporary, temporary_name, write_atomic, writer_alive
from .jobstatus import KEY_PATTERN, JobStatus, one_line

log = logging.getLogger(__name__)

# A status file is about a kilobyte; anything much larger is not one of ours (and is not read whole).
MAX_STATUS_BYTES = 64 << 10

# A temporary file older than this is a killed writer's leftover (status writes take microseconds).
LEFTOVER_TMP_S = 60.0

# What a lock file made by a cleanup probe holds (an owner's lock file is empty).
PROBE_MARK = b"probe"

# Unusable status files this process already reported: (path, inode, mtime), so each is logged once.
_REPORTED: set[tuple[str, int, int]] = set()
_REPORTED_LOCK = threading.Lock()


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


def folder_error(path: Path, exc: OSError) -> JobsFolderError:
    why = _WHY.get(exc.errno or 0, f"cannot be used ({exc.strerror or exc})")
    return JobsFolderError(f"the job file {path} {why}; {_FIX}")


def _open_lock(path: Path, probe: bool) -> int:
    """A read-write descriptor of the lock file `path`, created if absent. Never through a symbolic
    link (it could create or lock a file outside the store) and only a regular file (a FIFO or a
    device is not ours to lock). JobsFolderError otherwise. A `probe` (cleanup looking whether a
    key is live) that finds no lock file makes a marked one (see `is_probe_lock`)."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    while True:
        if probe and not os.path.lexists(path):
            _make_probe_lock(path)
        try:
            fd = os.open(path, flags if probe else flags | os.O_CREAT, 0o666)
        except FileNotFoundError:
            if probe:
                continue  # removed between our two looks: make it again
            raise
        except OSError as exc:
            raise folder_error(path, exc) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise JobsFolderError(f"the job file {path} is not a regular file; {_FIX}")
        return fd


def _make_probe_lock(path: Path) -> None:
    """Create `path` already holding PROBE_MARK (written aside, then linked into place), so that no
    one, even a cleanup that opens it before its maker locks it, can take it for an owner's."""
    tmp = temporary_name(path)
    try:
        tmp.write_bytes(PROBE_MARK)
        with contextlib.suppress(FileExistsError):  # someone made it meanwhile: use theirs
            os.link(tmp, path)
    except OSError as exc:
        raise folder_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def is_probe_lock(fd: int) -> bool:
    """True for a lock file a cleanup probe made (owners' lock files are empty): removing it is
    undoing that probe, not removing a job's file, so it is not counted."""
    return os.fstat(fd).st_size > 0


def try_lock(path: Path, tries: int = 1, probe: bool = False) -> int | None:
    """An open descriptor holding an exclusive flock on `path`, or None when someone else holds it.

    Lock files may be deleted by `cleanup` (while it holds them); a lock taken on a file that was
    unlinked meanwhile guards nothing, so the descriptor's inode must still be the path's.
    Readers probing a lock hold it for a few microseconds; `tries` > 1 keeps such a probe from
    being mistaken for an owner. JobsFolderError when `path` cannot be a lock file.
    """
    attempt = 0
    while True:
        fd = _open_lock(path, probe)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise folder_error(path, exc) from None
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


def unlock(fd: int) -> None:
    os.close(fd)  # closing the last descriptor of the open file description releases the flock


def is_held(path: Path) -> bool:
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


def mtime_s(path: Path, default: float) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return default


def _older(path: Path, now: float, seconds: float) -> bool:
    return now - mtime_s(path, now) > seconds


class JobFolder:
    """The files of one store's jobs: where each lives, reading and writing them, cleaning up.

    `owned(key)` says whether a thread of this process owns the key (its files are then its own
    business: never cleaned from under it)."""

    def __init__(self, root: Path, max_running: int, owned: Callable[[str], bool]):
        self.jobs_dir = root / "jobs"
        self.slots_dir = self.jobs_dir / "slots"
        self.max_running = max_running
        self._owned = owned

    def lock_path(self, key: str) -> Path:
        return self.jobs_dir / f"{key}.lock"

    def status_path(self, key: str) -> Path:
        return self.jobs_dir / f"{key}.json"

    def cancel_path(self, key: str) -> Path:
        return self.jobs_dir / f"{key}.cancel"

    def slot_path(self, i: int) -> Path:
        return self.slots_dir / f"{i}.lock"

    def prepare(self) -> None:
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
            path = self.slot_path(i)
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    raise JobsFolderError(f"the job file {path} is not a regular file; {_FIX}")

    def status_keys(self) -> set[str]:
        """The keys that have a status file (a folder that is not one has none)."""
        return {path.stem for path in self.jobs_dir.glob("*.json") if KEY_PATTERN.fullmatch(path.stem)}

    def held(self, key: str) -> bool:
        """True when some thread or process holds the key's lock."""
        return is_held(self.lock_path(key))

    def last_write(self, key: str, default: float) -> float:
        return mtime_s(self.status_path(key), default)

    def read(self, key: str) -> JobStatus | None:
        """The status file as written, or None when absent or unusable. An unusable one (damaged,
        edited, of the wrong types) is reported once and removed when no owner holds its key."""
        path = self.status_path(key)
        try:
            data = _read_small(path, MAX_STATUS_BYTES)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOTDIR, errno.EACCES, errno.EPERM):
                return None  # the folder itself is unusable: nothing to read, nothing to clean
            self._unreadable(key, one_line(exc))
            return None
        if len(data) > MAX_STATUS_BYTES:
            self._unreadable(key, f"larger than {MAX_STATUS_BYTES} bytes")
            return None
        try:
            status = JobStatus.from_json(data)
        except ValueError as exc:
            self._unreadable(key, one_line(exc))
            return None
        if status.key != key:
            self._unreadable(key, f"it is the status of another key, {status.key!r}")
            return None
        return status

    def _unreadable(self, key: str, reason: str) -> None:
        """Report a bad status file once (per version of it), and remove it unless its key is live:
        then its owner's next write replaces it. Never raises: other jobs go on regardless."""
        path = self.status_path(key)
        try:
            info = os.lstat(path)
        except OSError:
            return
        seen = (str(path), info.st_ino, info.st_mtime_ns)
        with _REPORTED_LOCK:
            first = seen not in _REPORTED
            _REPORTED.add(seen)
        if first:
            log.warning("job status %s is unusable (%s); it is ignored and removed", path, reason)
        if self._owned(key):
            return
        lock_path = self.lock_path(key)
        try:
            fd = try_lock(lock_path, probe=True)
        except (JobsFolderError, OSError):
            return
        if fd is None:
            return  # live: its owner rewrites the file
        try:
            after = os.lstat(path)
            if (after.st_ino, after.st_mtime_ns) == (info.st_ino, info.st_mtime_ns):
                path.unlink()
            if is_probe_lock(fd):
                lock_path.unlink()  # the lock file this probe made
        except OSError:
            pass
        finally:
            unlock(fd)

    def write_status(self, status: JobStatus) -> None:
        """Replace the key's status file. A full disk must not kill the computation: readers keep the
        previous status; if even the terminal write fails, the released lock makes the entry read as
        interrupted, and the next submit finds the result through is_done()."""
        with contextlib.suppress(OSError):
            write_atomic(self.status_path(status.key), status.to_json().encode())

    def request_cancel(self, key: str, request: dict[str, Any]) -> None:
        """Leave a cancel request for the key's owner, in whichever process it is; JobsFolderError
        when it cannot be written."""
        try:
            write_atomic(self.cancel_path(key), json.dumps(request).encode())
        except OSError as exc:
            raise folder_error(self.cancel_path(key), exc) from None

    def cancel_requested(self, key: str) -> bool:
        return self.cancel_path(key).is_file()  # a folder in the way asks nothing

    def clear_cancel(self, key: str) -> None:
        """Remove a request left from an earlier run of the key (which must not cancel a new one);
        JobsFolderError when something that is not a request is in the way."""
        try:
            self.cancel_path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise folder_error(self.cancel_path(key), exc) from None

    def drop_cancel(self, key: str) -> None:
        """As `clear_cancel`, for an owner letting go: it must let go whatever is in the folder."""
        with contextlib.suppress(OSError):
            self.cancel_path(key).unlink(missing_ok=True)

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
            raise folder_error(Path(exc.filename or self.jobs_dir), exc) from None

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
            if self._owned(key):
                continue
            lock_path = self.lock_path(key)
            try:
                fd = try_lock(lock_path, probe=True)
            except JobsFolderError:
                if lock_path.is_symlink():  # a link is never ours: remove the name, not what it points to
                    removed += _remove(lock_path)
                continue  # a folder where a lock should be: not ours to remove; jobs say so
            if fd is None:
                continue  # live: its owner holds the lock
            try:
                probe_made = is_probe_lock(fd)  # no lock file was there: the probe made this one
                status_path = self.status_path(key)
                if os.path.lexists(status_path):
                    status = self.read(key)
                    when = status.finished if status is not None and status.finished is not None else None
                    if status is not None and (not status.terminal or when is None):
                        when = mtime_s(status_path, now)  # a dead owner's: aged from its last write
                    if when is not None and now - when < older_than_s:
                        if probe_made:
                            lock_path.unlink(missing_ok=True)
                        continue  # recent: keep its status (and its lock file) for the jobs list
                for path in (status_path, self.cancel_path(key)):
                    if not path.is_dir() or path.is_symlink():
                        removed += _remove(path)
                if probe_made:  # undoing the probe is not removing a job's file: not counted
                    lock_path.unlink(missing_ok=True)
                else:
                    removed += _remove(lock_path)
            finally:
                unlock(fd)
        return removed
