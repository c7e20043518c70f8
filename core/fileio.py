"""Files written safely: the one atomic-write helper of the project.

Every file the project publishes (run store entries, exported models, dataset files, CSVs) goes
through `write_atomic`: the bytes land in a temporary file with a unique name beside the target
and are renamed over it, so a reader never sees half a file, two writers never share a temporary
name, and a failed or interrupted write leaves nothing behind but (at worst, after kill -9) a
dot-file ending in `.tmp` that `is_temporary` recognizes and housekeeping removes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    """A unique hidden sibling of `path`: `.NAME.<pid>.<random>.tmp`."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}{TMP_SUFFIX}")


def is_temporary(path: Path) -> bool:
    """True for the names `temporary_name` makes (what a killed writer may leave)."""
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


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
            if isinstance(data, bytes | bytearray | memoryview):
                out.write(data)
            else:
                data(out)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
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
