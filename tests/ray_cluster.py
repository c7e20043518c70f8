"""A real local Ray cluster for the tests and the bench: `ray start --head` on 127.0.0.1 in a
process session of its own, ended by its process group's id and, for the workers Ray moves to
groups of their own, by the ids of the processes of that session. Never `ray stop`, which ends
every Ray process on the machine, other people's included."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
                if int(fields[3]) == sid and fields[0] != "Z":  # state ppid pgrp session; zombies are gone
                    pids.append(int(entry.name))
    return pids


def _wait_port(port: int, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with code {process.returncode}")
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.settimeout(1)
            sock.connect(("127.0.0.1", port))
            return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not listen on 127.0.0.1:{port} within {timeout_s} s")


@dataclass(frozen=True)
class RayCluster:
    address: str  # "127.0.0.1:PORT"
    session: int  # the session (and process group) id of everything the cluster runs


@contextlib.contextmanager
def local_ray_cluster(log_path: Path, num_cpus: int = 2, timeout_s: float = 120) -> Iterator[RayCluster]:
    """A fresh head node on 127.0.0.1; everything it started ends after the block."""
    ray = shutil.which("ray")
    if ray is None:
        raise RuntimeError("the `ray` command is not installed (pip install -r requirements-ray.txt)")
    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--num-cpus", str(num_cpus), "--include-dashboard", "false", "--disable-usage-stats", "--block"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session and process group: ended by their ids
            env=os.environ | {"RAY_USAGE_STATS_ENABLED": "0"},
        )  # fmt: skip
    try:
        _wait_port(port, process, timeout_s)
        time.sleep(2)  # the raylet registers a moment after the GCS listens
        yield RayCluster(f"127.0.0.1:{port}", process.pid)
    finally:
        sid = process.pid  # start_new_session: the session id and group id are the head's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sid, signal.SIGKILL)
        for pid in _session_pids(sid):  # Ray's workers sit in process groups of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
