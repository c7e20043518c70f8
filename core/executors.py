"""Where a job's computation runs: in this process (the default), or on a Ray cluster.

An executor computes and returns; it never writes the store. The driver (core/pipeline.py) alone
publishes results, with the store's checksums, so a cluster needs no shared filesystem:

    train(cfg, ...)          -> RunRecord with its weights in memory
    compress(run, cfg, ...)  -> (CompressionRecord, bytes of the exported file)

`RayExecutor` ships each one as a Ray task: the config (JSON) and, for a compression, the run's
record and weights (bytes) go out; the record (JSON) and weights or file (bytes) come back. The
project's `core` package travels with the tasks (Ray's `py_modules`), so the cluster's workers need
only its Python dependencies. Tasks ask for `num_gpus` (fractional, so several small runs share one
GPU) and `num_cpus`; on the CPU a task's result equals the local executor's (same seed, same
arithmetic: tested).

Choose with COMPRESSION_LAB_EXECUTOR=local|ray (the app and the CLI), RAY_ADDRESS or --ray-address
for the cluster (none: a local Ray instance is started), COMPRESSION_LAB_RAY_GPUS for num_gpus.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from .compress import compress_run
from .config import CompressConfig, TrainConfig
from .data import Dataset
from .jobs import usable_cores
from .records import CompressionRecord, MemoryWeights, RunRecord
from .train import OnEpoch, OnStep, train

ENV_EXECUTOR = "COMPRESSION_LAB_EXECUTOR"
ENV_RAY_GPUS = "COMPRESSION_LAB_RAY_GPUS"
EXECUTORS = ("local", "ray")

# How often a driver thread waiting on a Ray task wakes up to report progress (and so to notice a
# cancel): a cancel reaches the task within this many seconds.
RAY_POLL_S = 0.5

Poll = Callable[[], None]  # called while waiting on a remote task; raises to stop (a cancel)


class Executor(Protocol):
    name: str

    def train(
        self,
        cfg: TrainConfig,
        device: str | torch.device | None = None,
        on_epoch: OnEpoch | None = None,
        on_step: OnStep | None = None,
        data: Dataset | None = None,
        poll: Poll | None = None,
    ) -> RunRecord: ...

    def compress(
        self,
        run: RunRecord,
        cfg: CompressConfig,
        device: str | torch.device | None = None,
        data: Dataset | None = None,
        on_step: OnStep | None = None,
        poll: Poll | None = None,
    ) -> tuple[CompressionRecord, bytes]: ...


def set_torch_threads(max_running: int) -> int:
    """Give each of `max_running` concurrent jobs an equal share of the cores as torch threads.

    Torch sizes its intra-op pool to all cores by default; several jobs doing that at once
    oversubscribe the machine and thrash (measured on the 2-core box: four concurrent trainings of
    two threads each cost about 19x the CPU of one). Threads are process-wide, hence set once here.
    Called for the process's job manager (core/pipeline.py): its jobs run as threads of this process,
    executing here (the local executor). Returns the thread count set.
    """
    threads = max(1, usable_cores() // max_running)
    torch.set_num_threads(threads)
    return threads


class LocalExecutor:
    """In this process, in the calling thread: progress callbacks fire step by step."""

    name = "local"

    def train(
        self,
        cfg: TrainConfig,
        device: str | torch.device | None = None,
        on_epoch: OnEpoch | None = None,
        on_step: OnStep | None = None,
        data: Dataset | None = None,
        poll: Poll | None = None,
    ) -> RunRecord:
        return train(cfg, device=device, on_epoch=on_epoch, on_step=on_step, data=data)

    def compress(
        self,
        run: RunRecord,
        cfg: CompressConfig,
        device: str | torch.device | None = None,
        data: Dataset | None = None,
        on_step: OnStep | None = None,
        poll: Poll | None = None,
    ) -> tuple[CompressionRecord, bytes]:
        return compress_run(run, cfg, data=data, device=device, on_step=on_step)


# ------------------------------------------------------------------------------------------- Ray


def _remote_train(cfg_json: dict, device: str | None, threads: int) -> tuple[dict, bytes]:
    """On a worker: train, return (record JSON, weights as safetensors bytes)."""
    from safetensors.torch import save

    from core.config import TrainConfig as Cfg
    from core.train import train as train_here

    torch.set_num_threads(threads)
    record = train_here(Cfg.from_dict(cfg_json), device=device)
    return record.to_json(), save(record.state_dict())


def _remote_compress(
    run_json: dict, weights: bytes, cfg_json: dict, device: str | None, threads: int
) -> tuple[dict, bytes]:
    """On a worker: compress, return (record JSON, the exported file's bytes)."""
    from safetensors.torch import load

    from core.compress import compress_run as compress_here
    from core.config import CompressConfig as Cfg
    from core.records import MemoryWeights as Memory
    from core.records import RunRecord as Run

    torch.set_num_threads(threads)
    run = Run.from_json(run_json, weights=Memory(load(weights)))
    record, blob = compress_here(run, Cfg.from_dict(cfg_json), device=device)
    return record.to_json(), blob


class RayExecutor:
    """Each training and compression is a Ray task on the cluster; results come back as bytes."""

    name = "ray"

    def __init__(self, address: str | None = None, num_gpus: float | None = None, threads_per_task: int | None = None):
        try:
            import ray
        except ImportError:
            raise ValueError(
                "the ray executor needs Ray: pip install -r requirements-ray.txt (or use --executor local)"
            ) from None
        self._ray = ray
        if num_gpus is None:
            num_gpus = float(os.environ.get(ENV_RAY_GPUS, "0") or 0)
        if not 0 <= num_gpus <= 8:
            raise ValueError(f"num_gpus={num_gpus} must be in [0, 8] (fractions share a GPU)")
        self.num_gpus = float(num_gpus)
        self.fixed_threads = threads_per_task
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        _ray_init(ray, self.address)
        self._train_fn = ray.remote(_remote_train)
        self._compress_fn = ray.remote(_remote_compress)

    def _threads(self) -> int:
        """Torch threads of a task: those this driver's own jobs use. Parallel reductions sum in an
        order that depends on the thread count, so the same count is what makes a task's weights and
        accuracy equal the local executor's, bit for bit; the task reserves that many CPUs."""
        return self.fixed_threads or torch.get_num_threads()

    def _options(self) -> dict[str, Any]:
        return {"num_cpus": self._threads(), "num_gpus": self.num_gpus, "max_retries": 0}

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"

    def cluster_cpus(self) -> int:
        return int(self._ray.cluster_resources().get("CPU", 1))

    def parallel_tasks(self) -> int:
        """How many tasks the cluster runs at once with this executor's CPUs a task."""
        return max(1, self.cluster_cpus() // self._threads())

    def _get(self, ref: Any, poll: Poll | None) -> Any:
        """Wait for a task, waking up to `poll` (which raises on a cancel: the task is cancelled too)."""
        ray = self._ray
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=RAY_POLL_S)
                if ready:
                    return ray.get(ref)
                if poll is not None:
                    poll()
        except BaseException:
            ray.cancel(ref, force=True)
            raise

    def train(
        self,
        cfg: TrainConfig,
        device: str | torch.device | None = None,
        on_epoch: OnEpoch | None = None,
        on_step: OnStep | None = None,
        data: Dataset | None = None,
        poll: Poll | None = None,
    ) -> RunRecord:
        from safetensors.torch import load

        target = str(device) if device is not None else self.device
        ref = self._train_fn.options(**self._options()).remote(cfg.to_json(), target, self._threads())
        record_json, weights = _unwrap(self._get(ref, poll))
        return RunRecord.from_json(record_json, weights=MemoryWeights(load(weights)))

    def compress(
        self,
        run: RunRecord,
        cfg: CompressConfig,
        device: str | torch.device | None = None,
        data: Dataset | None = None,
        on_step: OnStep | None = None,
        poll: Poll | None = None,
    ) -> tuple[CompressionRecord, bytes]:
        from safetensors.torch import save

        target = str(device) if device is not None else self.device
        ref = self._compress_fn.options(**self._options()).remote(
            run.to_json(), save(run.state_dict()), cfg.to_json(), target, self._threads()
        )
        record_json, blob = _unwrap(self._get(ref, poll))
        return CompressionRecord.from_json(record_json), blob


def _unwrap(result: Any) -> tuple[dict, bytes]:
    record_json, blob = result
    if not isinstance(record_json, dict) or not isinstance(blob, bytes):
        raise ValueError("a Ray worker returned something that is not a record and its bytes")
    return record_json, blob


_RAY_LOCK = threading.Lock()


def _ray_init(ray: Any, address: str | None) -> None:
    """Connect once per process: to `address` (a running cluster), else start a local instance.
    The `core` package travels with the tasks, so the workers need no copy of this repository."""
    with _RAY_LOCK:
        if ray.is_initialized():
            return
        core_dir = str(Path(__file__).resolve().parent)
        if address:
            _check_reachable(address)
        started = time.monotonic()
        try:
            ray.init(
                address=address,
                runtime_env={"py_modules": [core_dir]},
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = address or "a new local instance"
            raise ValueError(
                f"could not start or reach the Ray cluster at {where} after {time.monotonic() - started:.0f} s "
                f"({' '.join(str(error).split())[:200]}); check RAY_ADDRESS / --ray-address"
            ) from None


def _check_reachable(address: str) -> None:
    """A plain host:port that does not answer fails here in seconds (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", "ray://...": Ray's own resolution
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as error:
        raise ValueError(
            f"no Ray cluster answers at {address} ({error.strerror or error}); start one with "
            f"`ray start --head` or fix RAY_ADDRESS / --ray-address"
        ) from None


_EXECUTORS: dict[tuple[str, str | None], Executor] = {}
_EXECUTORS_LOCK = threading.Lock()


def get_executor(name: str | None = None, address: str | None = None) -> Executor:
    """The executor named (default: $COMPRESSION_LAB_EXECUTOR, else local); one per process."""
    name = name or os.environ.get(ENV_EXECUTOR) or "local"
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
    with _EXECUTORS_LOCK:
        key = (name, address)
        if key not in _EXECUTORS:
            _EXECUTORS[key] = LocalExecutor() if name == "local" else RayExecutor(address=address)
        return _EXECUTORS[key]
