"""What to compute, and when: a run or a compression from the store when it is there, computed and
published when it is not, always as a job (core/jobs.py) keyed by its content hash:

    training     key = run id                         (TrainConfig.run_id())
    compression  key = run id + "-" + compression key (CompressConfig.key())
    sweep        key = "sweep-" + hash of its runs and settings (core/experiments.py, above this module)

so a second request for a key that is being computed, by another thread, tab or process on the
same store, waits for that one instead of computing it again, and at most `max_running` jobs
compute at once. The CLI and bench call the blocking `get_or_*`; the app `submit_*`s and polls.

The store (core/store.py) only persists; this module decides what runs.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .config import CompressConfig, TrainConfig
from .data import DATASET_SOURCES
from .jobs import JobContext, JobManager, JobsFolderError, JobSpec, JobState, JobStatus
from .records import CompressionRecord, EpochMetrics, LayerHistogram, RunRecord
from .store import RunStore

# A lookup that finds its result in the store, and a waiter that finds it there once the owner
# publishes, import no torch and load no data: what computes is imported where it computes
# (the executors, the models, k-means), when a job body of this process runs.
if TYPE_CHECKING:
    import torch

    from .data import Dataset
    from .executors import Executor
    from .train import OnEpoch, OnStep

OnStatus = Callable[[JobStatus], None]

# Seconds a unit of each kind of work takes on this machine (2 shared CPU cores), fitted by
# bench/estimate.py (bench/results/estimate.md) and scaled so that no calibration point took longer
# than its estimate; with the method's own estimate, they tell a cheap compression (computed at once
# in the app) from an expensive one (computed as a job after a click).
COMPRESSION_COST_SECONDS = {
    # build the model, the file, the record: left at 0 by the fit; the compression that does nothing else
    # (float of LeNet-300-100, 0.09 s) bounds it
    "fixed": 0.09,
    "evaluation": 1.56e-10,  # per multiply-add of evaluating the rebuilt model (counted on the training split)
    "finetune_steps": 0.124,  # per fine-tuning step (the op overhead)
    "finetune_macs": 1.97e-09,  # per multiply-add of a fine-tuning forward pass (the backward included)
    "finetune_decoded": 0.0,  # per coded weight decoded at a fine-tuning step
}
CHEAP_SECONDS = 3.0  # CPU seconds of one busy thread: well under a second on a quiet machine's two
# The longest a page waits on a compression it computes at once; past it, the compression goes on as
# a job whose live panel shows the result the moment it lands (the estimate is a model, and a model can
# be wrong; a busy server is slower than the model). Under a second, so that every slider move is
# answered within one (issue 19): the numbers, or the panel that will show them.
INLINE_LIMIT_S = 0.8


class JobFailed(ValueError):
    """A job failed where this process could not see its exception (another thread or process)."""


class JobCancelled(ValueError):
    """The job was cancelled (from this or another session) before it published anything."""


_MANAGERS: dict[str, JobManager] = {}
_MANAGERS_LOCK = threading.Lock()


def job_manager(store: RunStore) -> JobManager:
    """The one JobManager of this process for the store's root. It imports no torch: a process that
    only waits for another's job never needs it; torch's threads are set when a job body runs here."""
    key = str(Path(store.root).resolve())
    with _MANAGERS_LOCK:
        if key not in _MANAGERS:
            _MANAGERS[key] = JobManager(store.root)  # torch's threads: at its first job body here
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


_TORCH_THREADS_SET: set[int] = set()  # the max_running values torch's threads were set for


def _share_torch_threads(manager: JobManager) -> None:
    """Give this process's jobs their share of the cores as torch threads, at its first job body
    (what JobManager does at construction when asked; here, where torch is needed anyway)."""
    with _MANAGERS_LOCK:
        if manager.max_running not in _TORCH_THREADS_SET:
            _TORCH_THREADS_SET.add(manager.max_running)
            from .executors import set_torch_threads

            set_torch_threads(manager.max_running)


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
    executor: Executor | None,
) -> Callable[[JobContext], None]:
    """The job's body: train, reporting each step and epoch (a report is where a cancel lands), publish.
    `executor` None: the process's default, chosen when the body runs (a waiter imports none)."""

    def run(ctx: JobContext) -> None:
        from .executors import get_executor

        _share_torch_threads(job_manager(store))
        chosen = executor or get_executor()
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

        ctx.report(0, cfg.epochs, "loading the dataset" if chosen.name == "local" else f"on {chosen.name}")

        def waiting() -> None:  # a remote executor: no steps to report, but a cancel must land
            ctx.report(0, cfg.epochs, f"training on the {chosen.name} cluster")

        record = chosen.train(cfg, device=device, on_epoch=epoch, on_step=step, data=data, poll=waiting)
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
    body = _training(store, cfg, device, data, on_epoch, on_step, executor)
    return JobSpec(
        key=run_id,
        kind="train",
        label=f"train {cfg.dataset} {cfg.model} {cfg.label()} {cfg.epochs} ep seed {cfg.seed}",
        run=local.wrap(body) if local is not None else body,
        is_done=lambda: store.load_run(run_id, verify_weights=True) is not None,
    )


def stored_run(store: RunStore, cfg: TrainConfig) -> RunRecord | None:
    """The stored run of `cfg`, its weights checked, or None: the look before any loading (no
    torch, no dataset, no model)."""
    return store.load_run(cfg.run_id(), verify_weights=True)


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
    cached = stored_run(store, cfg)
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
    def body(ctx: JobContext) -> None:
        from .executors import get_executor

        _share_torch_threads(job_manager(store))
        chosen = executor or get_executor()  # here: a waiter imports no executor (nor torch)

        def step(i: int, n: int) -> None:
            ctx.report(i, n, f"fine-tuning the centroids: step {i}/{n}")
            if on_step is not None:
                on_step(i, n)

        def waiting() -> None:
            ctx.report(0, 1, f"compressing on the {chosen.name} cluster: {cfg.label()}")

        ctx.report(0, 1, f"compressing: {cfg.label()}")
        record, blob = chosen.compress(run, cfg, device=device, data=data, on_step=step, poll=waiting)
        ctx.report(1, 1, f"storing: {cfg.label()}")  # a cancel asked during the k-means lands here
        store.save_compression(record, blob, transient=transient)

    return JobSpec(
        key=compression_key(run.run_id, cfg),
        kind="compress",
        label=f"compress {run.run_id[:6]}: {cfg.label()}",
        run=local.wrap(body) if local is not None else body,
        is_done=lambda: store.load_compression(run.run_id, cfg) is not None,
    )


def stored_compression(
    store: RunStore, run: RunRecord, cfg: CompressConfig, transient: bool = False
) -> CompressionRecord | None:
    """The stored compression of `run` by `cfg`, verified, or None: the look before any loading.
    A request that is not `transient` settles a transient entry it finds (see get_or_compress)."""
    cached = store.load_compression(run.run_id, cfg)
    if cached is not None and cached.transient and not transient:
        store.settle_compression(run.run_id, cached.key)
        cached = cached.with_file(cached.file_path, transient=False)
    return cached


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
    cached = stored_compression(store, run, cfg, transient)
    if cached is not None:
        return cached, True
    from .compress import coded_shapes
    from .pq import check_fits

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


def submit_compression(
    store: RunStore,
    run: RunRecord,
    cfg: CompressConfig,
    transient: bool = False,
    interactive: bool = False,
    requester: str = "",
) -> JobStatus:
    """Start (or join) the compression in a background thread; DoesNotFit first, when it does not fit.
    `interactive` for a cheap one a page waits on: it runs in the interactive slot, beside (not behind)
    the trainings that hold the queue's slots (core/jobrunner.py INTERACTIVE_SLOT)."""
    from .compress import coded_shapes
    from .pq import check_fits

    check_fits(coded_shapes(run, cfg.targets), cfg)  # the one check
    store.check_writable()
    spec = replace(compression_spec(store, run, cfg, transient=transient), requester=requester)
    return job_manager(store).submit(spec, interactive=interactive)


def compress_within(
    store: RunStore, run: RunRecord, cfg: CompressConfig, limit_s: float | None = None, requester: str = ""
) -> CompressionRecord | None:
    """A setting the estimate calls cheap, for a page that waits on it: computed as a job (transient:
    kept off the Frontier until settled) that this call waits on for at most `limit_s` (INLINE_LIMIT_S,
    read at the call, when None). Its stored
    record when it is done by then; None when it is still running (it goes on as a job the page shows,
    with its Cancel), so that no estimate, however wrong, holds a page longer. It runs in the
    interactive slot, so it does not queue behind other sessions' trainings. DoesNotFit before any
    work; a failure or a cancel raises as `get_or_compress` does."""
    cached = store.load_compression(run.run_id, cfg)
    if cached is not None:
        return cached
    status = submit_compression(store, run, cfg, transient=True, interactive=True, requester=requester)
    final = job_manager(store).wait(status.key, timeout=INLINE_LIMIT_S if limit_s is None else limit_s) or status
    if not final.terminal:
        return None
    _outcome(final, [], f"compression {cfg.label()} of run {run.run_id}")
    record = store.load_compression(run.run_id, cfg)
    if record is None:
        raise JobFailed(f"compression {cfg.label()} finished but its stored entry fails its checks")
    return record


@functools.lru_cache(maxsize=64)
def forward_macs(model: str, input_shape: tuple[int, int, int], n_classes: int, hidden: tuple[int, ...]) -> int:
    """Multiply-adds of one example's forward pass through a built-in network (its FC and conv layers)."""
    import torch

    from .models import build_model

    macs = [0]

    def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        per_output = weight[0].numel()  # in (FC), in / groups * kh * kw (conv)
        macs[0] += per_output * output[0].numel()

    net = build_model(model, input_shape, n_classes, hidden)
    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    with torch.no_grad():
        net.eval()(torch.zeros(1, *input_shape))
    for hook in hooks:
        hook.remove()
    return macs[0]


def compression_cost_features(run: RunRecord, cfg: CompressConfig) -> dict[str, float]:
    """The work of a compression beside the method's own (the keys of COMPRESSION_COST_SECONDS): the
    evaluation of the rebuilt model on the test split, and the centroid fine-tuning (each step a
    forward and a backward pass of a mini-batch, and a decode of every coded weight)."""
    from .compress import coded_shapes

    source = DATASET_SOURCES[run.config.dataset]
    macs = forward_macs(run.config.model, run.input_shape, run.n_classes, tuple(run.config.hidden))
    coded = sum(math.prod(shape) for _, shape in coded_shapes(run, cfg.targets))
    steps = cfg.finetune_epochs * math.ceil(source.n_train / run.config.batch_size)
    return {
        "fixed": 1.0,
        "evaluation": float(source.n_train * macs),  # the test split is never larger than the training one
        "finetune_steps": float(steps),
        "finetune_macs": float(steps * run.config.batch_size * macs),
        "finetune_decoded": float(steps * coded),
    }


def estimate_seconds(run: RunRecord, cfg: CompressConfig) -> float:
    """An estimate of a compression's time on this machine, from a model measured on it
    (bench/estimate.py): the method's quantization (it counts its own work), the evaluation and the
    centroid fine-tuning. It tells what the page computes at once from what it offers as a job."""
    from .compress import coded_shapes

    work = compression_cost_features(run, cfg)
    rest = sum(COMPRESSION_COST_SECONDS[kind] * amount for kind, amount in work.items())
    shapes = coded_shapes(run, cfg.targets)
    layer_cfgs = [cfg.for_layer(name) for name, _ in shapes]  # each weight priced by its own setting
    return rest + sum(c.method_spec.estimate_seconds([shape], c) for c, shape in zip(layer_cfgs, shapes))
