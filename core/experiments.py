"""Sweeps: the one home of each rule, for the CLI, the pages and the bench scripts alike:

    compression_grid / train_grid   the settings of a sweep, canonical and each once
    compression_settings            the same grid, with the combinations that cannot be and why
    fits                            whether a compression setting fits a network (else why not)
    run_sweep                       train what is missing, compress each run with every fitting setting
    submit_sweep                    the same as one job the app polls

It sits above core/pipeline.py (whose get_or_* each step calls). The analysis of the points (the
Pareto set, best within a budget) is core/analysis.py's, below both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .config import METHODS, CompressConfig, TrainConfig, pruning_label
from .data import Dataset, load_dataset
from .executors import Executor
from .jobs import Cancelled, JobContext, JobSpec, JobStatus
from .methods import METHOD_SPECS
from .models import build_model, fc_layers
from .pipeline import get_or_compress, get_or_train, job_manager
from .pq import DoesNotFit, check_fits
from .records import CompressionRecord, RunRecord
from .train import TrainingDiverged

if TYPE_CHECKING:
    from .store import RunStore

OnProgress = Callable[[int, int, str], None]  # (steps done, steps in all, what is happening)
ShouldStop = Callable[[], bool]

# ------------------------------------------------------------------------------------- the grids


# The stages any coding method takes (config.STAGE_FIELDS): every such method spans them, after its own axes.
STAGE_AXES = ("sparsity", "prune_finetune_epochs")


@dataclass(frozen=True)
class ImpossibleSetting:
    """A combination of a grid's values that is no compression (pruning with a per-chunk layout, a
    retraining of survivors with nothing pruned), and why: a sweep skips it on every run."""

    label: str  # as CompressConfig.label() would have said it
    reason: str  # one line: the config's own sentence


@dataclass(frozen=True)
class CompressionGrid:
    settings: list[CompressConfig]  # canonical, each once, in grid order
    impossible: list[ImpossibleSetting]  # each once, in grid order


def compression_grid(
    methods: Iterable[str],
    subvector_sizes: Iterable[int],
    centroids: Iterable[int],
    layouts: Iterable[str] = ("shared",),
    finetune_epochs: Iterable[int] = (0,),
    fixed: Mapping[str, Any] | None = None,
    stages: Iterable[int] = (1,),
    sparsities: Iterable[float] | None = None,
    prune_finetune_epochs: Iterable[int] | None = None,
) -> list[CompressConfig]:
    """Every compression setting of the grid, canonical and each once (by `cfg.key()`), in the order
    methods x d x k x layout x fine-tuning epochs x stages x sparsity x retraining epochs. A method only
    spans the axes it reads (`Method.axes`, and the pruning stage for a method that codes weights):
    float is one setting, binarize one per fine-tuning value (and sparsity), kmeans one per k; so float
    needs no k and pq needs d and k.
    The other fields (centroid_bits, kmeans_iters, init, seed, finetune_lr) come from `fixed`, plain
    field values: not a CompressConfig, which would already have reset what its own method ignores
    (a base with finetune_epochs=0 forgets its finetune_lr).
    Raises ValueError (from the config's validation) for an unknown method or an out-of-range value,
    and for a combination that is no compression (`compression_settings` lists those instead)."""
    grid = compression_settings(
        methods, subvector_sizes, centroids, layouts, finetune_epochs, fixed, stages, sparsities, prune_finetune_epochs
    )
    if grid.impossible:
        raise ValueError(grid.impossible[0].reason)
    return grid.settings


def compression_settings(
    methods: Iterable[str],
    subvector_sizes: Iterable[int],
    centroids: Iterable[int],
    layouts: Iterable[str] = ("shared",),
    finetune_epochs: Iterable[int] = (0,),
    fixed: Mapping[str, Any] | None = None,
    stages: Iterable[int] = (1,),
    sparsities: Iterable[float] | None = None,
    prune_finetune_epochs: Iterable[int] | None = None,
) -> CompressionGrid:
    """`compression_grid`'s settings, and the combinations of its values that are no compression, each
    with the config's one-line reason (pruning with layout per-chunk or weighting activations; a
    retraining of the survivors, prune_finetune_epochs > 0, at sparsity 0, where there is none), for a
    sweep to skip. A value out of range on its own (sparsity 1, k = 1, an unknown method) is the caller's
    bad input: ValueError, before any combination, as is a bad `fixed` field. `sparsities` and
    `prune_finetune_epochs` default to `fixed`'s value (else the field's default): one each."""
    fixed = dict(fixed or {})
    if sparsities is None:
        sparsities = [fixed.pop("sparsity", 0.0)]
    if prune_finetune_epochs is None:
        prune_finetune_epochs = [fixed.pop("prune_finetune_epochs", 0)]
    axes: dict[str, list[Any]] = {
        "subvector_size": list(subvector_sizes),
        "n_centroids": list(centroids),
        "layout": list(layouts),
        "finetune_epochs": list(finetune_epochs),
        "stages": list(stages),
        "sparsity": [float(s) if isinstance(s, int) and not isinstance(s, bool) else s for s in sparsities],
        "prune_finetune_epochs": list(prune_finetune_epochs),
    }
    methods = list(methods)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    CompressConfig(**fixed)  # a bad fixed field
    for name, options in axes.items():  # a bad value alone, whatever it is combined with
        for value in options:
            CompressConfig(**{name: value})
    grid: dict[str, CompressConfig] = {}
    impossible: dict[str, ImpossibleSetting] = {}
    for method in methods:
        spec = METHOD_SPECS[method]
        own = [name for name in axes if name in spec.axes]  # the config resets the rest
        spanned = own + [name for name in STAGE_AXES if spec.codes_weights]
        made, refused = len(grid), len(impossible)
        for combo in itertools.product(*(axes[name] for name in spanned)):
            values = {**fixed, "method": method, **dict(zip(spanned, combo))}
            try:
                cfg = CompressConfig(**values)
            except ValueError as error:
                label = _label(values)
                impossible.setdefault(label, ImpossibleSetting(label, str(error)))
                continue
            asked = values.get("prune_finetune_epochs", 0)
            if asked and not cfg.prune_finetune_epochs:  # the config reset it: nothing pruned to retrain
                label = _label(values)
                reason = (
                    f"retraining the survivors (prune_finetune_epochs={asked}) needs a sparsity > 0: at sparsity 0 "
                    "nothing is pruned, so there is nothing to retrain"
                )
                impossible.setdefault(label, ImpossibleSetting(label, reason))
                continue
            grid.setdefault(cfg.key(), cfg)
        if len(grid) == made and len(impossible) > refused:  # every combination of a method asked for refused
            first = list(impossible.values())[refused]
            raise ValueError(f"no {method} setting of this grid is a compression: {first.reason}")
    return CompressionGrid(list(grid.values()), list(impossible.values()))


def _label(values: Mapping[str, Any]) -> str:
    """The label a combination the config refuses would have had (CompressConfig.label's words)."""
    stages = {"sparsity": 0.0, "prune_finetune_epochs": 0}
    try:
        text = CompressConfig(**{**values, **stages}).label()
    except ValueError:  # refused for another reason than its pruning: its fields that are not defaults
        defaults = {f.name: f.default for f in dataclasses.fields(CompressConfig)}
        return " ".join(
            f"{name}={value}" for name, value in values.items() if name != "per_layer" and value != defaults.get(name)
        )
    sparsity, retrain = values.get("sparsity", 0.0), values.get("prune_finetune_epochs", 0)
    return pruning_label(sparsity, retrain) + text if sparsity or retrain else text


def train_grid(
    fixed: Mapping[str, Any],
    regs: Iterable[str],
    lams: Iterable[float],
    seeds: Iterable[int],
    prune_sparsities: Iterable[float] = (0.0,),
) -> list[TrainConfig]:
    """Every (regularizer, lam, gradual pruning's sparsity, seed) run with the other fields from `fixed`
    (plain field values, not a TrainConfig, which would have reset the regularizer's settings if its own
    lam were 0), canonical and each once (by run id), in the order regs x lams x prune sparsities x seeds;
    (reg, lam=0) and (none, lam) both collapse to the one unregularized run. A value the config refuses
    (a sparsity of 1, a pruning schedule longer than the training) raises its ValueError: the schedule is
    `fixed`'s, shared by every pruned run of the grid."""
    runs: dict[str, TrainConfig] = {}
    for reg, lam, sparsity, seed in itertools.product(list(regs), list(lams), list(prune_sparsities), list(seeds)):
        if isinstance(sparsity, int) and not isinstance(sparsity, bool):
            sparsity = float(sparsity)
        cfg = TrainConfig(**{**fixed, "reg": reg, "lam": float(lam), "prune_sparsity": sparsity, "seed": int(seed)})
        runs.setdefault(cfg.run_id(), cfg)
    return list(runs.values())


def fc_shapes(cfg: TrainConfig, data: Dataset) -> list[tuple[str, tuple[int, int]]]:
    """(weight name, (out, in)) of each FC layer of the network `cfg` trains on `data`, in forward order;
    from a fresh model, so it needs no trained run."""
    model = build_model(cfg.model, data.input_shape, data.n_classes, cfg.hidden)
    return [(f"{name}.weight", (layer.out_features, layer.in_features)) for name, layer in fc_layers(model)]


def fits(cfg: CompressConfig, fc_shapes: Sequence[tuple[str, tuple[int, ...]]]) -> str | None:
    """None when `cfg` can compress FC layers of these shapes, else the reason it cannot (a sentence
    from core.pq.check_fits that says what would fit)."""
    try:
        check_fits(list(fc_shapes), cfg)
    except ValueError as error:
        return str(error)
    return None


# ----------------------------------------------------------------------------------------- sweep


@dataclass(frozen=True)
class SkippedPoint:
    """A (run, compression) pair the sweep did not compute, and why."""

    run_id: str
    label: str  # the compression's label, or "training" when the run itself could not be trained
    reason: str


@dataclass(frozen=True)
class SweepResult:
    points: list[CompressionRecord]  # one per (run, fitting compression), in sweep order
    skipped: list[SkippedPoint]  # settings that did not fit, and runs whose training diverged
    runs: list[RunRecord] = field(default_factory=list)  # the sweep's runs, trained or loaded, in order
    new_runs: int = 0  # runs this call trained (the rest came from the store)
    new_points: int = 0  # compressions this call computed (the rest came from the store)
    stopped: bool = False  # should_stop() ended the sweep early; what was done is stored


def _run_text(cfg: TrainConfig) -> str:
    return f"{cfg.dataset} {cfg.model}, {cfg.label()}, seed {cfg.seed}"


def _training_steps(report: OnProgress, done: int, total: int, text: str) -> Callable[[int, int], None]:
    """Training's on_step(step, n_steps) as progress text; `done` stays put until the run is stored."""
    return lambda step, n_steps: report(done, total, f"training {text}: step {step}/{n_steps}")


def run_sweep(
    store: RunStore,
    train_cfgs: Sequence[TrainConfig],
    compress_cfgs: Sequence[CompressConfig],
    *,
    device: str | torch.device | None = None,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
    executor: Executor | None = None,
    parallel: int = 1,
    impossible: Sequence[ImpossibleSetting] = (),
) -> SweepResult:
    """Train every missing run of `train_cfgs`, then compress each run with every setting of
    `compress_cfgs` that fits its network (the others are skipped with the reason); all through `store`,
    so a second call computes only what is missing.

    One step is one run or one (run, compression) pair: on_progress(done, total, text) is called after
    each step (and with the same `done` during a training, step by step); should_stop() is asked before
    each step, and a stop leaves what is done stored and nothing half-done. A run whose training diverges
    is skipped with its reason (nothing of it is stored). Every dataset is loaded once, before any work,
    so an unavailable dataset raises DatasetUnavailable before anything is computed. Each training and
    compression is a job of its own key (core/pipeline.py), which queues for a slot like any other.

    `executor` says where the work runs (core/executors.py; default: $COMPRESSION_LAB_EXECUTOR, else
    this process). `parallel` runs that many runs' pipelines (train, then compress) at once: for a
    cluster, where the driver only waits; on one machine keep 1 (concurrent torch work thrashes).
    The result lists points in sweep order whatever the parallelism. `impossible`: the grid's combinations
    that are no compression (`compression_settings`), skipped on every run with their reason.
    """
    runs_by_id = {cfg.run_id(): cfg for cfg in train_cfgs}
    settings = list({cfg.key(): cfg for cfg in compress_cfgs}.values())
    datasets = {name: load_dataset(name) for name in dict.fromkeys(cfg.dataset for cfg in runs_by_id.values())}
    total = len(runs_by_id) * (1 + len(settings))
    report: OnProgress = on_progress or (lambda done, total, text: None)
    stop: ShouldStop = should_stop or (lambda: False)
    lock = threading.Lock()
    counter = [0]
    stopped = threading.Event()

    def advance(steps: int, text: str) -> None:
        with lock:
            counter[0] += steps
            done = counter[0]
        report(done, total, text)

    def one_run(index: int, run_id: str, cfg: TrainConfig) -> _RunOutcome:
        outcome = _RunOutcome()
        data = datasets[cfg.dataset]
        text = f"run {index}/{len(runs_by_id)} ({_run_text(cfg)})"
        if stopped.is_set() or stop():
            stopped.set()
            return outcome
        report(counter[0], total, f"training {text}")
        try:
            run, cached = get_or_train(
                store,
                cfg,
                device=device,
                on_step=_training_steps(report, counter[0], total, text),
                data=data,
                executor=executor,
            )
        except TrainingDiverged as error:
            outcome.skipped.append(SkippedPoint(run_id, "training", str(error)))
            advance(1 + len(settings), f"skipped {text}: training diverged")
            return outcome
        outcome.run, outcome.new_runs = run, int(not cached)
        advance(1, f"{'loaded' if cached else 'trained'} {text}")
        outcome.skipped.extend(SkippedPoint(run_id, setting.label, setting.reason) for setting in impossible)
        for setting in settings:
            if stopped.is_set() or stop():
                stopped.set()
                return outcome
            try:  # the one check that the setting fits is get_or_compress's, before any work
                result, cached = get_or_compress(store, run, setting, device=device, data=data, executor=executor)
            except DoesNotFit as error:
                outcome.skipped.append(SkippedPoint(run_id, setting.label(), str(error)))
                advance(1, f"skipped {setting.label()} on {text}: does not fit")
                continue
            outcome.points.append(result)
            outcome.new_points += not cached
            advance(1, f"{'loaded' if cached else 'compressed'} {setting.label()} on {text}")
        return outcome

    jobs = [(index, run_id, cfg) for index, (run_id, cfg) in enumerate(runs_by_id.items(), start=1)]
    if parallel <= 1 or len(jobs) <= 1:
        outcomes = []
        for job in jobs:
            outcomes.append(one_run(*job))
            if stopped.is_set():
                break
    else:
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sweep") as pool:
            outcomes = list(pool.map(lambda job: one_run(*job), jobs))
    return SweepResult(
        points=[p for o in outcomes for p in o.points],
        skipped=[s for o in outcomes for s in o.skipped],
        runs=[o.run for o in outcomes if o.run is not None],
        new_runs=sum(o.new_runs for o in outcomes),
        new_points=sum(o.new_points for o in outcomes),
        stopped=stopped.is_set(),
    )


@dataclass
class _RunOutcome:
    """What one run's pipeline of a sweep produced."""

    run: RunRecord | None = None
    points: list[CompressionRecord] = field(default_factory=list)
    skipped: list[SkippedPoint] = field(default_factory=list)
    new_runs: int = 0
    new_points: int = 0


def sweep_key(train_cfgs: Sequence[TrainConfig], compress_cfgs: Sequence[CompressConfig]) -> str:
    text = ",".join(cfg.run_id() for cfg in train_cfgs) + "|" + ",".join(cfg.key() for cfg in compress_cfgs)
    return "sweep-" + hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------- sweep job


def sweep_spec(store: RunStore, train_cfgs: Sequence[TrainConfig], compress_cfgs: Sequence[CompressConfig]) -> JobSpec:
    """One job for a whole sweep. It holds no slot itself: each of its trainings and compressions is a
    job of its own key that queues for a slot like any other (so a sweep never waits on a job that
    waits on the sweep's slot), and each point is in the store (and on the Frontier) as it lands.
    A sweep is never "already done" before it runs: run_sweep itself skips what is stored, cheaply."""
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
