"""What to compute, and when: a run or a compression from the store when it is there, computed and
published when it is not, always as a job (core/jobs.py) keyed by its content hash:

    training     key = run id                         (TrainConfig.run_id())
    compression  key = run id + "-" + compression key (CompressConfig.key())
    sweep        key = "sweep-" + hash of its runs and settings

so a second request for a key that is being computed, by another thread, tab or process on the
same store, waits for that one instead of computing it again, and at most `max_running` jobs
compute at once. The CLI and bench call the blocking `get_or_*`; the app `submit_*`s and polls.

The store (core/store.py) only persists; this module decides what runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from .calibration import CALIBRATION_SAMPLES
from .compress import coded_shapes
from .config import CompressConfig, TrainConfig
from .data import DATASET_SOURCES, Dataset
from .executors import Executor, get_executor, set_torch_threads
from .jobs import Cancelled, JobContext, JobManager, JobsFolderError, JobSpec, JobState, JobStatus
from .pq import check_fits, row_shape
from .records import CompressionRecord, EpochMetrics, LayerHistogram, RunRecord
from .store import RunStore
from .train import OnEpoch, OnStep

OnStatus = Callable[[JobStatus], None]

# Work this machine does in a second (2 CPU cores; measured on LeNet-300-100 / mnist-5k: pq d=8 k=256
# in 0.27 s, i.e. ~17 GFLOP/s of distances; pq d=2 k=4096 in 8.2 s, ~9 GFLOP/s; one epoch of centroid
# fine-tuning in ~0.2 s, ~30 GFLOP/s), rounded down; used to tell a cheap compression (computed at
# once in the app) from an expensive one (computed as a job after a click). Over-estimating is safe.
KMEANS_FLOPS_PER_S = 8e9
TRAIN_FLOPS_PER_S = 15e9
CHEAP_SECONDS = 1.0


class JobFailed(ValueError):
    """A job failed where this process could not see its exception (another thread or process)."""


class JobCancelled(ValueError):
    """The job was cancelled (from this or another session) before it published anything."""


_MANAGERS: dict[str, JobManager] = {}
_MANAGERS_LOCK = threading.Lock()


def job_manager(store: RunStore) -> JobManager:
    """The one JobManager of this process for the store's root."""
    key = str(Path(store.root).resolve())
    with _MANAGERS_LOCK:
        if key not in _MANAGERS:
            _MANAGERS[key] = JobManager(store.root)
            # its jobs run as threads of this process, so their torch pools must share the cores
            set_torch_threads(_MANAGERS[key].max_running)
            # what a killed writer (kill -9 mid-publication) left behind goes at the first job
            store.clean_temporaries()
        return _MANAGERS[key]


def compression_key(run_id: str, cfg: CompressConfig | str) -> str:
    """The job key of a compression: its run id and its compression key (a config, or its key)."""
    return f"{run_id}-{cfg if isinstance(cfg, str) else cfg.key()}"


def delete_run(store: RunStore, run_id: str) -> int:
    """Remove a run, its compressions and their finished job entries (so the Jobs page no longer
    lists them); a live job of the run is left to finish. Returns the bytes freed."""
    freed = store.delete_run(run_id)
    with contextlib.suppress(JobsFolderError):  # the run is gone; an unusable jobs folder lists nothing
        job_manager(store).cleanup(
            older_than_s=0, keys=lambda key: key == run_id or key.startswith(compression_key(run_id, ""))
        )
    return freed


def delete_compression(store: RunStore, run_id: str, key: str) -> int:
    """Remove one compression and its finished job entry. Returns the bytes freed."""
    freed = store.delete_compression(run_id, key)
    with contextlib.suppress(JobsFolderError):
        job_manager(store).cleanup(older_than_s=0, keys=lambda job_key: job_key == compression_key(run_id, key))
    return freed


def sweep_key(train_cfgs: Sequence[TrainConfig], compress_cfgs: Sequence[CompressConfig]) -> str:
    text = ",".join(cfg.run_id() for cfg in train_cfgs) + "|" + ",".join(cfg.key() for cfg in compress_cfgs)
    return "sweep-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _outcome(status: JobStatus, errors: list[BaseException], what: str) -> None:
    """Raise what made the job end other than DONE: a cancel as JobCancelled; a failure as its own
    exception when it ran here and is one a user can act on (a ValueError: diverged, unavailable
    dataset, a setting that does not fit), else as JobFailed with its one-line message."""
    if status.state is JobState.DONE:
        return
    if status.state is JobState.CANCELLED:
        raise JobCancelled(f"{what} was cancelled: {status.message}")
    if errors and isinstance(errors[-1], ValueError):
        raise errors[-1]
    raise JobFailed(f"{what} failed: {status.message}")


class _Local:
    """What a job run by this call left behind: whether it ran here, and its exception."""

    def __init__(self) -> None:
        self.ran = False
        self.errors: list[BaseException] = []

    def wrap(self, run: Callable[[JobContext], None]) -> Callable[[JobContext], None]:
        def wrapped(ctx: JobContext) -> None:
            self.ran = True
            try:
                run(ctx)
            except Exception as error:
                self.errors.append(error)
                raise

        return wrapped


# -------------------------------------------------------------------------------------- training


def _training(
    store: RunStore,
    cfg: TrainConfig,
    device: str | torch.device | None,
    data: Dataset | None,
    on_epoch: OnEpoch | None,
    on_step: OnStep | None,
    executor: Executor,
) -> Callable[[JobContext], None]:
    """The job's body: train, reporting each step and epoch (a report is where a cancel lands), publish."""

    def run(ctx: JobContext) -> None:
        epoch_done = [0]

        def step(i: int, n: int) -> None:
            ctx.report(epoch_done[0], cfg.epochs, f"epoch {epoch_done[0] + 1} of {cfg.epochs}: step {i}/{n}")
            if on_step is not None:
                on_step(i, n)

        def epoch(metrics: EpochMetrics, histograms: tuple[LayerHistogram, ...]) -> None:
            epoch_done[0] = metrics.epoch
            ctx.report(
                metrics.epoch,
                cfg.epochs,
                f"epoch {metrics.epoch} of {cfg.epochs} done",
                loss=metrics.loss,
                reg=metrics.reg,
                test_accuracy=metrics.test_accuracy,
            )
            if on_epoch is not None:
                on_epoch(metrics, histograms)

        ctx.report(0, cfg.epochs, "loading the dataset" if executor.name == "local" else f"on {executor.name}")

        def waiting() -> None:  # a remote executor: no steps to report, but a cancel must land
            ctx.report(0, cfg.epochs, f"training on the {executor.name} cluster")

        record = executor.train(cfg, device=device, on_epoch=epoch, on_step=step, data=data, poll=waiting)
        ctx.report(cfg.epochs, cfg.epochs, "storing the run")
        store.save_run(record)

    return run


def training_spec(
    store: RunStore,
    cfg: TrainConfig,
    device: str | torch.device | None = None,
    data: Dataset | None = None,
    on_epoch: OnEpoch | None = None,
    on_step: OnStep | None = None,
    local: _Local | None = None,
    executor: Executor | None = None,
) -> JobSpec:
    run_id = cfg.run_id()
    body = _training(store, cfg, device, data, on_epoch, on_step, executor or get_executor())
    return JobSpec(
        key=run_id,
        kind="train",
        label=f"train {cfg.dataset} {cfg.model} {cfg.label()} {cfg.epochs} ep seed {cfg.seed}",
        run=local.wrap(body) if local is not None else body,
        is_done=lambda: store.load_run(run_id, verify_weights=True) is not None,
    )


def get_or_train(
    store: RunStore,
    cfg: TrainConfig,
    device: str | torch.device | None = None,
    on_epoch: OnEpoch | None = None,
    on_step: OnStep | None = None,
    data: Dataset | None = None,
    on_status: OnStatus | None = None,
    executor: Executor | None = None,
) -> tuple[RunRecord, bool]:
    """(run, was_cached). On a miss, trains as a job (or waits for the thread or process already
    training it) and returns the stored run; was_cached is False only when this call trained it. A
    failed, cancelled or interrupted training stores nothing and raises."""
    cached = store.load_run(cfg.run_id(), verify_weights=True)
    if cached is not None:
        return cached, True
    # an entry whose weights fail their check is replaced by the job's own publication (save_run),
    # under the key's lock: nothing is deleted here, where another process may be publishing
    store.check_writable()  # a read-only store is one line now, not a failed job later
    local = _Local()
    spec = training_spec(store, cfg, device, data, on_epoch, on_step, local, executor)
    status = job_manager(store).run(spec, on_status=on_status)
    _outcome(status, local.errors, f"training run {cfg.run_id()}")
    record = store.load_run(cfg.run_id(), verify_weights=True)
    if record is None:
        raise JobFailed(f"training run {cfg.run_id()} finished but its stored entry fails its checks")
    return record, not local.ran


def submit_training(store: RunStore, cfg: TrainConfig, requester: str = "") -> JobStatus:
    """Start (or join) the training in a background thread; returns at once (the app). `requester`:
    who asked (the queue takes requesters in turn; QueueFull when they have too many waiting)."""
    store.check_writable()
    return job_manager(store).submit(replace(training_spec(store, cfg), requester=requester))


# ----------------------------------------------------------------------------------- compression


def compression_spec(
    store: RunStore,
    run: RunRecord,
    cfg: CompressConfig,
    device: str | torch.device | None = None,
    data: Dataset | None = None,
    on_step: OnStep | None = None,
    local: _Local | None = None,
    executor: Executor | None = None,
    transient: bool = False,
) -> JobSpec:
    chosen = executor or get_executor()

    def body(ctx: JobContext) -> None:
        def step(i: int, n: int) -> None:
            ctx.report(i, n, f"fine-tuning the centroids: step {i}/{n}")
            if on_step is not None:
                on_step(i, n)

        def waiting() -> None:
            ctx.report(0, 1, f"compressing on the {chosen.name} cluster: {cfg.label()}")

        ctx.report(0, 1, f"compressing: {cfg.label()}")
        record, blob = chosen.compress(run, cfg, device=device, data=data, on_step=step, poll=waiting)
        store.save_compression(record, blob, transient=transient)

    return JobSpec(
        key=compression_key(run.run_id, cfg),
        kind="compress",
        label=f"compress {run.run_id[:6]}: {cfg.label()}",
        run=local.wrap(body) if local is not None else body,
        is_done=lambda: store.load_compression(run.run_id, cfg) is not None,
    )


def get_or_compress(
    store: RunStore,
    run: RunRecord,
    cfg: CompressConfig,
    device: str | torch.device | None = None,
    data: Dataset | None = None,
    on_step: OnStep | None = None,
    on_status: OnStatus | None = None,
    executor: Executor | None = None,
    transient: bool = False,
) -> tuple[CompressionRecord, bool]:
    """(record with its file path, was_cached). Compresses as a job on a miss; raises DoesNotFit
    (before any work, and before any job) when the setting does not fit the run. `transient` for a
    setting a slider only passes over (kept off the Frontier until settled); any other request for
    it (the CLI, a sweep) settles it."""
    cached = store.load_compression(run.run_id, cfg)
    if cached is not None:
        if cached.transient and not transient:
            store.settle_compression(run.run_id, cached.key)
            cached = cached.with_file(cached.file_path, transient=False)
        return cached, True
    check_fits(coded_shapes(run, cfg.targets), cfg)  # the one check
    store.check_writable()
    local = _Local()
    spec = compression_spec(store, run, cfg, device, data, on_step, local, executor, transient)
    status = job_manager(store).run(spec, on_status=on_status)
    _outcome(status, local.errors, f"compression {cfg.label()} of run {run.run_id}")
    record = store.load_compression(run.run_id, cfg)
    if record is None:
        raise JobFailed(f"compression {cfg.label()} finished but its stored entry fails its checks")
    return record, not local.ran


def submit_compression(store: RunStore, run: RunRecord, cfg: CompressConfig, requester: str = "") -> JobStatus:
    """Start (or join) the compression in a background thread; DoesNotFit first, when it does not fit."""
    check_fits(coded_shapes(run, cfg.targets), cfg)  # the one check
    store.check_writable()
    return job_manager(store).submit(replace(compression_spec(store, run, cfg), requester=requester))


def estimate_seconds(run: RunRecord, cfg: CompressConfig) -> float:
    """A rough estimate of a compression's time on this machine: k-means distance work (subvectors x
    k x d x iterations), plus centroid fine-tuning epochs. Enough to tell under a second from minutes."""
    kmeans_flops = 0.0
    shapes = coded_shapes(run, cfg.targets)
    if cfg.method in ("kmeans", "pq"):
        for _, shape in shapes:
            out_features, in_features = row_shape(shape)
            n_sub = out_features * -(-in_features // cfg.subvector_size)
            if n_sub <= cfg.n_centroids:
                continue  # every subvector is its own centroid: nothing to iterate
            if cfg.subvector_size == 1:  # scalar: a binary search per weight, not k distances
                per_point = 30.0 * max(1, cfg.n_centroids.bit_length())
            else:
                per_point = 3.0 * cfg.n_centroids * cfg.subvector_size
            kmeans_flops += n_sub * per_point * (cfg.kmeans_iters + 2)
        if cfg.weighting == "activations":
            # plain k-means first, then as many weighted iterations (each about as costly), after a
            # forward pass over the calibration inputs with each layer's chunked second moments
            kmeans_flops *= 2
            kmeans_flops += sum(
                2.0 * math.prod(shape) * CALIBRATION_SAMPLES * (1 + cfg.subvector_size) for _, shape in shapes
            )
    # fine-tuning: a forward and a backward pass over the training split an epoch (~6 flops a weight
    # and an example; a conv's weights count once a position of its output, which this leaves out)
    weights = sum(math.prod(shape) for _, shape in shapes)
    n_train = DATASET_SOURCES[run.config.dataset].n_train
    finetune_flops = 6.0 * weights * n_train * cfg.finetune_epochs
    return 0.2 + kmeans_flops / KMEANS_FLOPS_PER_S + finetune_flops / TRAIN_FLOPS_PER_S


# ----------------------------------------------------------------------------------------- sweep


def sweep_spec(store: RunStore, train_cfgs: Sequence[TrainConfig], compress_cfgs: Sequence[CompressConfig]) -> JobSpec:
    """One job for a whole sweep. It holds no slot itself: each of its trainings and compressions is a
    job of its own key that queues for a slot like any other (so a sweep never waits on a job that
    waits on the sweep's slot), and each point is in the store (and on the Frontier) as it lands.
    A sweep is never "already done" before it runs: run_sweep itself skips what is stored, cheaply."""
    from .experiments import run_sweep

    finished = threading.Event()

    def body(ctx: JobContext) -> None:
        result = run_sweep(
            store,
            list(train_cfgs),
            list(compress_cfgs),
            on_progress=lambda done, total, text: ctx.report(done, total, text),
            should_stop=ctx.cancelled,
        )
        if result.stopped:
            raise Cancelled  # what is done is stored; the sweep itself ends cancelled, not failed
        if not result.stopped:
            skipped = "; ".join(f"skipped {s.label} on run {s.run_id[:6]}: {s.reason}" for s in result.skipped)
            total = len(train_cfgs) * (1 + len(compress_cfgs))
            ctx.report(total, total, f"{len(result.points)} points, {len(result.skipped)} skipped. {skipped}".strip())
            finished.set()

    return JobSpec(
        key=sweep_key(train_cfgs, compress_cfgs),
        kind="sweep",
        label=f"sweep: {len(train_cfgs)} runs x {len(compress_cfgs)} settings",
        run=body,
        is_done=finished.is_set,
    )


def submit_sweep(
    store: RunStore, train_cfgs: Sequence[TrainConfig], compress_cfgs: Sequence[CompressConfig]
) -> JobStatus:
    store.check_writable()
    return job_manager(store).submit(sweep_spec(store, train_cfgs, compress_cfgs), slot=False)
