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
import enum
import functools
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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
# be wrong; a busy server is slower than the model). Short, so that every slider move is answered within
# a second, median 0.5 s (issue 19): the numbers, or the panel that will show them. At 0.8 s the presses
# were answered in a median of 1.09 s; at 0.25 s, 0.57 s (bench/results/slider*.md, load ~4): a new
# setting's numbers take 2-3 s here anyway, so a longer wait only delays the panel.
INLINE_LIMIT_S = 0.25


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
            ctx.report(i, n, f"fine-tuning (survivors, then centroids): step {i}/{n}")
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
    from .compress import check_pruned_run, coded_shapes
    from .pq import check_fits

    check_fits(coded_shapes(run, cfg.targets), cfg)  # the one check
    check_pruned_run(run, cfg)  # a run pruned in training: its zeros stay the mask
    store.check_writable()
    local = _Local()
    spec = compression_spec(store, run, cfg, device, data, on_step, local, executor, transient)
    status = job_manager(store).run(spec, on_status=on_status)
    _outcome(status, local.errors, f"compression {cfg.label()} of run {run.run_id}")
    record = store.load_compression(run.run_id, cfg)
    if record is None:
        raise JobFailed(f"compression {cfg.label()} finished but its stored entry fails its checks")
    return record, not local.ran


class PlanKind(enum.Enum):
    """What a page does with a setting: show it, compute it at once, offer it as a job, or say why not."""

    STORED = "stored"  # in the store, verified: show its record
    CHEAP = "cheap"  # fits, and the estimate is under CHEAP_SECONDS: compute it while the page waits
    EXPENSIVE = "expensive"  # fits, but takes longer: offer it as a job, with its estimate
    DOES_NOT_FIT = "does not fit"  # the method's sentence says what would fit


@dataclass(frozen=True)
class CompressionPlan:
    """The answer of `plan_compression` for one setting of one run: exactly what the page needs, the
    fit check and the estimate done once. `record` (STORED) is the store's verified record, `seconds`
    (CHEAP, EXPENSIVE) the measured cost model's estimate, `reason` (DOES_NOT_FIT) the method's sentence."""

    kind: PlanKind
    run_id: str
    key: str  # the compression key (CompressConfig.key())
    record: CompressionRecord | None = None
    seconds: float = 0.0
    reason: str = ""

    @property
    def fits(self) -> bool:
        return self.kind is not PlanKind.DOES_NOT_FIT

    def check(self, run: RunRecord, cfg: CompressConfig) -> None:
        """The fit check's outcome, for a call that computes: DoesNotFit (the method's sentence) when
        it does not fit; ValueError when this plan is of another run or setting (a caller's bug)."""
        from .pq import DoesNotFit

        if (self.run_id, self.key) != (run.run_id, cfg.key()):
            raise ValueError(f"this plan is for {self.run_id}-{self.key}, not {compression_key(run.run_id, cfg)}")
        if not self.fits:
            raise DoesNotFit(self.reason)


def plan_compression(store: RunStore, run: RunRecord, cfg: CompressConfig) -> CompressionPlan:
    """One look for a page: the stored compression (verified), else whether the setting fits the run
    (the one fit check: the plan carries its outcome to `submit_compression` and `compress_within`),
    else its estimate, cheap or expensive. Nothing is computed, written or settled; no dataset is
    loaded and no weight read (the network is built on the meta device)."""
    from .compress import check_pruned_run, coded_shapes
    from .pq import DoesNotFit, check_fits

    key = cfg.key()
    record = store.load_compression(run.run_id, cfg)
    if record is not None:
        return CompressionPlan(PlanKind.STORED, run.run_id, key, record=record)
    shapes = coded_shapes(run, cfg.targets)
    try:
        check_fits(shapes, cfg)
        check_pruned_run(run, cfg)  # a run pruned in training: its zeros stay the mask
    except DoesNotFit as error:
        return CompressionPlan(PlanKind.DOES_NOT_FIT, run.run_id, key, reason=str(error))
    seconds = _estimate(run, cfg, shapes)
    kind = PlanKind.CHEAP if seconds <= CHEAP_SECONDS else PlanKind.EXPENSIVE
    return CompressionPlan(kind, run.run_id, key, seconds=seconds)


def submit_compression(
    store: RunStore,
    run: RunRecord,
    cfg: CompressConfig,
    transient: bool = False,
    interactive: bool = False,
    requester: str = "",
    plan: CompressionPlan | None = None,
) -> JobStatus:
    """Start (or join) the compression in a background thread; DoesNotFit first, when it does not fit
    (`plan`: the outcome of `plan_compression`'s fit check, which is then not run again).
    `interactive` for a cheap one a page waits on: it runs in the interactive slot, beside (not behind)
    the trainings that hold the queue's slots (core/jobrunner.py INTERACTIVE_SLOT)."""
    if plan is None:
        from .compress import check_pruned_run, coded_shapes
        from .pq import check_fits

        check_fits(coded_shapes(run, cfg.targets), cfg)  # the one check of a caller with no plan
        check_pruned_run(run, cfg)  # a run pruned in training: its zeros stay the mask
    else:
        plan.check(run, cfg)
    store.check_writable()
    spec = replace(compression_spec(store, run, cfg, transient=transient), requester=requester)
    return job_manager(store).submit(spec, interactive=interactive)


def compress_within(
    store: RunStore,
    run: RunRecord,
    cfg: CompressConfig,
    limit_s: float | None = None,
    requester: str = "",
    plan: CompressionPlan | None = None,
) -> CompressionRecord | None:
    """A setting the estimate calls cheap, for a page that waits on it: computed as a job (transient:
    kept off the Frontier until settled) that this call waits on for at most `limit_s` (INLINE_LIMIT_S,
    read at the call, when None). Its stored record when it is done by then; None when it is still
    running (it goes on as a job the page shows, with its Cancel), so that no estimate, however wrong,
    holds a page longer. It runs in the interactive slot, so it does not queue behind other sessions'
    trainings. `plan`: the page's `plan_compression` of it (its stored record is returned as it is, its
    fit check not run again); without one, it is planned here. DoesNotFit before any work; a failure
    or a cancel raises as `get_or_compress` does."""
    plan = plan or plan_compression(store, run, cfg)
    plan.check(run, cfg)
    if plan.record is not None:
        return plan.record
    status = submit_compression(store, run, cfg, transient=True, interactive=True, requester=requester, plan=plan)
    hurry(store, status.key)  # computed ahead at low priority: not any more, someone waits on it
    final = job_manager(store).wait(status.key, timeout=INLINE_LIMIT_S if limit_s is None else limit_s) or status
    if not final.terminal:
        return None
    _outcome(final, [], f"compression {cfg.label()} of run {run.run_id}")
    record = store.load_compression(run.run_id, cfg)
    if record is None:
        raise JobFailed(f"compression {cfg.label()} finished but its stored entry fails its checks")
    return record


# ------------------------------------------------------------------------ computed ahead of a slider

PRECOMPUTE_MAX = 4  # settings one page view has computed ahead of its slider, at most, when a server turns it on
# Off unless a server sets COMPRESSION_LAB_PRECOMPUTE (e.g. 4): in bench/results/slider.md no press found
# its setting computed ahead (0 of 9), and a niced thread in the page's process may hold the GIL while
# descheduled (the first press took 1.9 s at load 13); a niced worker process is the design that would
# fix it. Measured benefit first, then on by default.
PRECOMPUTE_DEFAULT = 0
ENV_PRECOMPUTE = "COMPRESSION_LAB_PRECOMPUTE"  # that number for this server; 0 turns computing ahead off
PRECOMPUTE_LOOK = 8  # settings it looks at for them (stored, expensive or unfit ones are passed over)
PRECOMPUTE_NICE = 10  # the niceness of their threads: the page's own work and trainings come first


def precompute_budget() -> int:
    """COMPRESSION_LAB_PRECOMPUTE, else PRECOMPUTE_DEFAULT (off): how many settings a page view computes ahead."""
    value = os.environ.get(ENV_PRECOMPUTE, "").strip()
    if not value:
        return PRECOMPUTE_DEFAULT
    if not value.isdigit():
        raise ValueError(f"{ENV_PRECOMPUTE}={value!r} must be a whole number of settings, 0 (off) or more")
    return int(value)


def _can_raise_priority() -> bool:
    """Whether this process may take a thread back from PRECOMPUTE_NICE to nice 0 (root, or an
    RLIMIT_NICE of 20 or more): only then is a setting computed ahead at low priority, because a
    press that joins it must not wait on a starved thread."""
    try:
        import resource

        return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20
    except (ImportError, AttributeError, OSError):
        return False


class Precompute:
    """The settings next to the one a page shows (the next and previous values of its sliders), computed
    ahead at low priority, so that the next press finds its result stored: one process's, for one store.

    Each requester (a page session) has one list of wanted settings, nearest first, replaced at each
    `want`: the first PRECOMPUTE_LOOK are looked at (`plan_compression`), and at most
    `precompute_budget()` of them (none unless the server sets COMPRESSION_LAB_PRECOMPUTE), the cheap ones,
    computed; stored settings and those that do not fit or are expensive are passed over. One worker
    thread computes them one at a time, each as a transient compression job (single flight: a press
    on a setting being computed ahead joins its job), with no queue slot (it never waits behind a
    training; one runs at most) and at PRECOMPUTE_NICE until a press waits on it (`hurry`; where the
    process may not raise a thread's priority again, at the usual one). When a requester's run changes, its list is
    dropped and the job it is computing ahead is cancelled (at the job's next report: a k-means in
    flight ends first, then stores nothing)."""

    def __init__(self, store: RunStore):
        self.store = store
        self._lock = threading.Lock()
        # requester -> (run, settings still to look at, how many more it may compute)
        self._wanted: dict[str, tuple[RunRecord, list[CompressConfig], int]] = {}
        self._order: list[str] = []  # requesters, the most recent `want` first
        self._running: tuple[str, str, str] | None = None  # (requester, run id, job key) being computed
        self._thread: threading.Thread | None = None
        self._threads: dict[str, int] = {}  # job key -> native id of the thread computing it at low priority
        self._hurried: set[str] = set()  # keys someone waited on before their body started
        self.nice = PRECOMPUTE_NICE if _can_raise_priority() else 0

    def want(self, run: RunRecord, settings: Sequence[CompressConfig], requester: str = "") -> list[str]:
        """Compute these settings of `run` ahead, for `requester`, in place of what it wanted before.
        Returns the compression keys kept to look at (at most PRECOMPUTE_LOOK). Returns at once: the
        looks and the work happen in the worker thread."""
        budget = precompute_budget()
        kept = list({cfg.key(): cfg for cfg in settings}.values())[:PRECOMPUTE_LOOK] if budget else []
        cancel = None
        with self._lock:
            if self._running is not None and self._running[0] == requester and self._running[1] != run.run_id:
                cancel = self._running[2]  # the old run's list is dropped below, its running job cancelled
            self._wanted[requester] = (run, kept, budget)
            self._order = [requester, *(name for name in self._order if name != requester)]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="precompute", daemon=True)
                self._thread.start()
        if cancel is not None:
            with contextlib.suppress(JobsFolderError):
                job_manager(self.store).cancel(cancel)
        return [cfg.key() for cfg in kept]

    def wanted(self, requester: str = "") -> list[str]:
        """The compression keys still waiting to be computed ahead for `requester`."""
        with self._lock:
            entry = self._wanted.get(requester)
            return [] if entry is None or entry[2] <= 0 else [cfg.key() for cfg in entry[1]]

    def hurry(self, key: str) -> bool:
        """Someone waits on `key` now: if it is being computed ahead at low priority, its thread goes back
        to nice 0. Whether it did."""
        with self._lock:
            native_id = self._threads.pop(key, None)
            if native_id is None and self._running is not None and self._running[2] == key:
                self._hurried.add(key)  # its body has not started yet: it starts at nice 0
                return True
        if native_id is None:
            return False
        with contextlib.suppress(OSError):  # the thread has ended meanwhile
            os.setpriority(os.PRIO_PROCESS, native_id, 0)
            return True
        return False

    def _low_priority(self, key: str, run: Callable[[JobContext], None]) -> Callable[[JobContext], None]:
        """The job's body at `self.nice`: its thread (one a job, gone with it) yields the CPU to the page's
        own work and to trainings until someone waits on it (`hurry`). Torch's intra-op threads, where
        there are several, keep their priority."""

        def low(ctx: JobContext) -> None:
            with self._lock:
                if self.nice and key not in self._hurried:
                    with contextlib.suppress(OSError, AttributeError):  # not Linux: the usual priority
                        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
                        self._threads[key] = threading.get_native_id()
            try:
                run(ctx)
            finally:
                with self._lock:
                    self._threads.pop(key, None)
                    self._hurried.discard(key)

        return low

    def running(self) -> str | None:
        """The job key being computed ahead now, if any."""
        with self._lock:
            return None if self._running is None else self._running[2]

    def _next(self) -> tuple[str, RunRecord, CompressConfig] | None:
        with self._lock:
            self._hurried.clear()  # the last one has ended (or was never computed: stored, expensive)
            # a requester with nothing left is forgotten: the lists stay as many as the live page views
            self._wanted = {name: entry for name, entry in self._wanted.items() if entry[1] and entry[2] > 0}
            self._order = [name for name in self._order if name in self._wanted]
            for requester in self._order:
                run, settings, budget = self._wanted[requester]
                if settings and budget > 0:
                    cfg = settings.pop(0)
                    self._running = (requester, run.run_id, compression_key(run.run_id, cfg))
                    return requester, run, cfg
            self._running = None
            self._thread = None  # the next `want` starts a worker again
            return None

    def _spent(self, requester: str, run_id: str) -> None:
        """One computation of `requester`'s budget used (unless its list was replaced meanwhile)."""
        with self._lock:
            if requester not in self._wanted:
                return
            run, settings, budget = self._wanted[requester]
            if run.run_id == run_id:
                self._wanted[requester] = (run, settings, budget - 1)

    def _work(self) -> None:
        while (item := self._next()) is not None:
            requester, run, cfg = item
            try:
                if self._compute(run, cfg, requester):
                    self._spent(requester, run.run_id)
            except Exception:  # a setting that cannot be computed ahead is passed over
                continue

    def _compute(self, run: RunRecord, cfg: CompressConfig, requester: str) -> bool:
        """Compute one setting ahead if it is cheap; whether it was submitted."""
        plan = plan_compression(self.store, run, cfg)
        if plan.kind is not PlanKind.CHEAP:
            return False
        self.store.check_writable()
        local = _Local()
        spec = compression_spec(self.store, run, cfg, local=local, transient=True)
        spec = replace(
            spec, run=self._low_priority(spec.key, spec.run), requester=requester, label=f"ahead: {spec.label}"
        )
        manager = job_manager(self.store)
        final = manager.wait(manager.submit(spec, slot=False).key)
        if local.ran and final is not None and final.state is not JobState.DONE:
            # cancelled (the run changed) or failed, computed for no one who asked: no entry is left that
            # would tell the page of a failure it never saw (a press on it computes it, and says so)
            manager.cleanup(older_than_s=0, keys=lambda key: key == final.key)
        return True


_PRECOMPUTES: dict[str, Precompute] = {}


def hurry(store: RunStore, key: str) -> bool:
    """A page waits on the compression job `key`: if it is being computed ahead, at full priority now."""
    with _MANAGERS_LOCK:
        ahead = _PRECOMPUTES.get(str(Path(store.root).resolve()))
    return ahead is not None and ahead.hurry(key)


def precompute(store: RunStore) -> Precompute:
    """The one Precompute of this process for the store's root."""
    key = str(Path(store.root).resolve())
    with _MANAGERS_LOCK:
        if key not in _PRECOMPUTES:
            _PRECOMPUTES[key] = Precompute(store)
        return _PRECOMPUTES[key]


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


def compression_cost_features(
    run: RunRecord, cfg: CompressConfig, shapes: list[tuple[str, tuple[int, ...]]] | None = None
) -> dict[str, float]:
    """The work of a compression beside the method's own (the keys of COMPRESSION_COST_SECONDS): the
    evaluation of the rebuilt model on the test split, the survivors' retraining and the centroid
    fine-tuning (each step a forward and a backward pass of a mini-batch, and for the centroids a decode
    of every coded weight; a retraining step is priced as a fine-tuning step, not fitted apart).
    `shapes`: the coded weights' (`core.compress.coded_shapes`), when the caller has them."""
    from .compress import coded_shapes

    source = DATASET_SOURCES[run.config.dataset]
    macs = forward_macs(run.config.model, run.input_shape, run.n_classes, tuple(run.config.hidden))
    coded = sum(math.prod(shape) for _, shape in (shapes or coded_shapes(run, cfg.targets)))
    epoch_steps = math.ceil(source.n_train / run.config.batch_size)
    steps = (cfg.prune_finetune_epochs + cfg.finetune_epochs) * epoch_steps
    return {
        "fixed": 1.0,
        "evaluation": float(source.n_train * macs),  # the test split is never larger than the training one
        "finetune_steps": float(steps),
        "finetune_macs": float(steps * run.config.batch_size * macs),
        "finetune_decoded": float(cfg.finetune_epochs * epoch_steps * coded),  # the centroids' steps only
    }


def estimate_seconds(run: RunRecord, cfg: CompressConfig) -> float:
    """An estimate of a compression's time on this machine, from a model measured on it
    (bench/estimate.py): the method's quantization (it counts its own work), the evaluation and the
    centroid fine-tuning. It tells what the page computes at once from what it offers as a job."""
    from .compress import coded_shapes

    return _estimate(run, cfg, coded_shapes(run, cfg.targets))


def _estimate(run: RunRecord, cfg: CompressConfig, shapes: list[tuple[str, tuple[int, ...]]]) -> float:
    work = compression_cost_features(run, cfg, shapes)
    rest = sum(COMPRESSION_COST_SECONDS[kind] * amount for kind, amount in work.items())
    if not cfg.per_layer:
        return rest + cfg.method_spec.estimate_seconds(shapes, cfg)
    layer_cfgs = [cfg.for_layer(name) for name, _ in shapes]  # each weight priced by its own setting
    return rest + sum(c.method_spec.estimate_seconds([shape], c) for c, shape in zip(layer_cfgs, shapes, strict=True))
