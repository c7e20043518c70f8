"""Files written safely: the one atomic-write helper of the project.

Every file the project publishes (run store entries, exported models, dataset files, CSVs) goes
through `write_atomic`: the bytes land in a temporary file with a unique name beside the target
and are renamed over it, so a reader never sees half a file, two writers never share a temporary
name, and a failed or interrupted write leaves nothing behind but (at worst, after kill -9) a
dot-file ending in `.tmp` that `is_temporary` recognizes and housekeeping removes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"
PID_MAX_LIMIT = 1 << 22  # Linux never gives a process a larger id
# A temporary this young whose writer's process id is alive is kept even when unlocked (see writer_alive).
PID_TRUST_S = 3600.0


def temporary_name(path: Path) -> Path:
    """A unique hidden sibling of `path`: `.NAME.<pid>.<random>.tmp`."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}{TMP_SUFFIX}")


def is_temporary(path: Path) -> bool:
    """True for the names `temporary_name` makes (what a killed writer may leave)."""
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


def hold_temporary(fd: int) -> None:
    """Mark the temporary open as `fd` as in use (an exclusive flock) until the descriptor closes:
    the kernel lets go when its writer exits, even by SIGKILL, so `writer_alive` sees a dead writer."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def writer_alive(path: Path) -> bool:
    """True while the writer of the temporary `path` may still be at work: it holds the temporary's
    flock (whatever its age, from any host that shares the folder), or, for a temporary younger
    than PID_TRUST_S, the process whose id its name carries still runs on this host (that covers
    the moment between creating a temporary and locking it, and temporaries nobody locks; past
    that age a live id is more likely a reused one). Housekeeping removes a temporary only when
    this is False."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        fd = None  # gone, or a link: its name alone tells
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
        finally:
            os.close(fd)
    pid = _writer_pid(path)
    try:
        young = time.time() - os.lstat(path).st_mtime < PID_TRUST_S
    except OSError:
        return False  # gone
    if pid is None or not young:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's process
    return True


def _writer_pid(path: Path) -> int | None:
    """The process id in a `temporary_name` (`.NAME.<pid>.<random>.tmp`), or None."""
    parts = path.name[: -len(TMP_SUFFIX)].rsplit(".", 2)
    if len(parts) < 3 or not parts[1].isdigit():
        return None
    pid = int(parts[1])
    return pid if 0 < pid <= PID_MAX_LIMIT else None


def write_atomic(path: str | Path, data: bytes | Callable[[BinaryIO], None], fsync: bool = False) -> None:
    """Write `data` (bytes, or a function that writes to the open file) to `path` atomically.

    The temporary file is created with O_EXCL and the process's default mode (not mkstemp's 0600,
    which would hide a shared folder's files from other users). `fsync=True` flushes it to disk
    before the rename, for entries that must survive a power cut as well as a crash.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "xb") as out:
            hold_temporary(out.fileno())  # until it is renamed: housekeeping leaves it alone
            if isinstance(data, bytes | bytearray | memoryview):
                out.write(data)
            else:
                data(out)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
            else:
                out.flush()
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output_path(path: str | Path) -> None:
    """Raise ValueError (one line) unless `path` can take a new regular file: BEFORE the work.

    Refused: a folder, a missing or unwritable parent folder, and anything already there that is
    not a regular file (a FIFO, a device, a symlink: writing would replace or follow it)."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; give the path of a regular file")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file path inside it, e.g. {path / 'model.safetensors'}")
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} exists and is not a regular file; give another path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"the folder {parent} does not exist; create it first or give another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"the folder {parent} is not writable; give another path")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{path} is not writable; give another path")
