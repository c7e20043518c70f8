"""Sweeps, the Pareto set and the best point within an accuracy budget: the one home of each.

One rule for each, for the CLI, the pages, the charts and the bench scripts alike:

    compression_grid / train_grid   the settings of a sweep, canonical and each once
    fits                            whether a compression setting fits a network (else why not)
    run_sweep                       train what is missing, compress each run with every fitting setting
    pareto_mask                     the points no other point dominates (ties kept)
    best_within_budget              per budget and group, the most compressed point within the budget
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from .config import METHODS, CompressConfig, TrainConfig
from .data import Dataset, load_dataset
from .executors import Executor
from .methods import METHOD_SPECS
from .models import build_model, fc_layers
from .pipeline import get_or_compress, get_or_train
from .pq import DoesNotFit, check_fits
from .records import CompressionRecord, RunRecord
from .train import TrainingDiverged

if TYPE_CHECKING:
    from .store import RunStore

OnProgress = Callable[[int, int, str], None]  # (steps done, steps in all, what is happening)
ShouldStop = Callable[[], bool]

# Budgets are compared in points (100 * accuracy): 100 * (0.95 - 0.94) is 1.0000000000000009, which
# must count as within a budget of 1 point.
BUDGET_TOLERANCE = 1e-9
NONE_WITHIN_BUDGET = "none within budget"

# ------------------------------------------------------------------------------------- the grids


def compression_grid(
    methods: Iterable[str],
    subvector_sizes: Iterable[int],
    centroids: Iterable[int],
    layouts: Iterable[str] = ("shared",),
    finetune_epochs: Iterable[int] = (0,),
    fixed: Mapping[str, Any] | None = None,
    stages: Iterable[int] = (1,),
) -> list[CompressConfig]:
    """Every compression setting of the grid, canonical and each once (by `cfg.key()`), in the order
    methods x d x k x layout x fine-tuning epochs x stages. A method only spans the axes it reads
    (`Method.axes`): float is one setting, binarize one per fine-tuning value, kmeans one per k; so
    float needs no k and pq needs d and k.
    The other fields (centroid_bits, kmeans_iters, init, seed, finetune_lr) come from `fixed`, plain
    field values: not a CompressConfig, which would already have reset what its own method ignores
    (a base with finetune_epochs=0 forgets its finetune_lr).
    Raises ValueError (from the config's validation) for an unknown method or an out-of-range d or k."""
    fixed = dict(fixed or {})
    axes: dict[str, list[Any]] = {
        "subvector_size": list(subvector_sizes),
        "n_centroids": list(centroids),
        "layout": list(layouts),
        "finetune_epochs": list(finetune_epochs),
        "stages": list(stages),
    }
    grid: dict[str, CompressConfig] = {}
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
        spanned = [name for name in axes if name in METHOD_SPECS[method].axes]  # the config resets the rest
        for combo in itertools.product(*(axes[name] for name in spanned)):
            cfg = CompressConfig(**{**fixed, "method": method, **dict(zip(spanned, combo))})
            grid.setdefault(cfg.key(), cfg)
    return list(grid.values())


def train_grid(
    fixed: Mapping[str, Any], regs: Iterable[str], lams: Iterable[float], seeds: Iterable[int]
) -> list[TrainConfig]:
    """Every (regularizer, lam, seed) run with the other fields from `fixed` (plain field values,
    not a TrainConfig, which would have reset the regularizer's settings if its own lam were 0),
    canonical and each once (by run id), in the order regs x lams x seeds; (reg, lam=0) and
    (none, lam) both collapse to the one unregularized run."""
    runs: dict[str, TrainConfig] = {}
    for reg, lam, seed in itertools.product(list(regs), list(lams), list(seeds)):
        cfg = TrainConfig(**{**fixed, "reg": reg, "lam": float(lam), "seed": int(seed)})
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
    The result lists points in sweep order whatever the parallelism.
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


def point_rows(points: Iterable[CompressionRecord]) -> pd.DataFrame:
    """One row per compression result (its `.row()`): the frontier's and the budget table's input."""
    return pd.DataFrame([point.row() for point in points])


# ---------------------------------------------------------------------------------------- pareto


def pareto_mask(sizes: Sequence[float], accuracies: Sequence[float], larger_is_better: bool) -> list[bool]:
    """True for the points no other point dominates: none is at least as good on both size and accuracy
    and strictly better on one. Exact duplicates are both kept. A point with a NaN is never on the set
    and dominates nothing. `larger_is_better` says how to read the size (a ratio: True; bits: False).

    O(n log n): sorted best size first, a point survives when it has the best accuracy of its size and
    beats every accuracy of the strictly better sizes before it."""
    if len(sizes) != len(accuracies):
        raise ValueError(f"sizes and accuracies differ in length ({len(sizes)} and {len(accuracies)})")
    sign = 1.0 if larger_is_better else -1.0
    # (goodness of size, accuracy, index): larger is better on both axes once the size is signed.
    ranked = [
        (sign * float(size), float(accuracy), index)
        for index, (size, accuracy) in enumerate(zip(sizes, accuracies))
        if not (math.isnan(size) or math.isnan(accuracy))
    ]
    ranked.sort(key=lambda point: (-point[0], -point[1]))
    mask = [False] * len(sizes)
    best_of_better_sizes: float | None = None  # best accuracy among strictly better sizes
    start = 0
    while start < len(ranked):
        size, top_accuracy, _ = ranked[start]  # sorted: the first of a size has its best accuracy
        end = start
        while end < len(ranked) and ranked[end][0] == size:
            _, accuracy, index = ranked[end]
            if accuracy == top_accuracy and (best_of_better_sizes is None or accuracy > best_of_better_sizes):
                mask[index] = True
            end += 1
        if best_of_better_sizes is None or top_accuracy > best_of_better_sizes:
            best_of_better_sizes = top_accuracy
        start = end
    return mask


# ---------------------------------------------------------------------------------------- budget


def best_within_budget(
    points: pd.DataFrame,
    budgets: Sequence[float],
    reference: float | Mapping[str, float],
    size_col: str = "fc_ratio",
    group_col: str | None = None,
) -> pd.DataFrame:
    """For each budget (an accuracy drop in points, i.e. percentage points) and each group, the point
    with the largest `size_col` ratio whose accuracy is at most `budget` points below the reference;
    ties go to the higher accuracy, then to the label, then to the run id (alphabetical).

    `reference` is one accuracy in [0, 1] for every point (e.g. the best float accuracy), or a mapping
    run_id -> accuracy (each run measured from its own float accuracy). `points` needs the columns
    accuracy, `size_col`, label and run_id (and `group_col`); points with a NaN accuracy or size never
    qualify. Groups come in the order they first appear; no group_col means one group of all points.

    One row per (budget, group), budgets in the order given: budget_pts, the group column, the chosen
    point's columns, reference, drop_pts (its drop in points) and found. Where no point is within the
    budget, label is "none within budget", found is False and the point's columns are empty (NaN)."""
    needed = ["accuracy", size_col, "label", "run_id", *([group_col] if group_col else [])]
    missing = [column for column in needed if column not in points.columns]
    if missing:
        raise ValueError(f"the points lack the column(s) {', '.join(missing)}; they need {', '.join(needed)}")
    for budget in budgets:
        if not math.isfinite(budget):
            raise ValueError(f"budget {budget!r} must be a finite number of accuracy points, e.g. 1.0")
    frame = points.reset_index(drop=True)
    if isinstance(reference, Mapping):
        for run_id, accuracy in reference.items():
            _check_accuracy(accuracy, f"reference accuracy of run {run_id}")
        unknown = sorted(set(frame["run_id"]) - set(reference))
        if unknown:
            raise ValueError(f"no reference accuracy for run(s) {', '.join(map(str, unknown))}")
        ref = frame["run_id"].map(reference).astype(float)
    else:
        _check_accuracy(reference, "the reference accuracy")
        ref = pd.Series(float(reference), index=frame.index)
    drop_pts = 100.0 * (ref - frame["accuracy"].astype(float))
    valid = frame["accuracy"].notna() & frame[size_col].notna()
    ranked = frame.assign(reference=ref, drop_pts=drop_pts)[valid].sort_values(
        [size_col, "accuracy", "label", "run_id"], ascending=[False, False, True, True], kind="stable"
    )
    groups = list(dict.fromkeys(frame[group_col])) if group_col else [None]
    added = {"budget_pts", "reference", "drop_pts", "found"}
    point_columns = [column for column in frame.columns if column != group_col and column not in added]
    columns = ["budget_pts", *([group_col] if group_col else []), *point_columns, "reference", "drop_pts", "found"]

    rows = []
    for budget in budgets:
        within = ranked[ranked["drop_pts"] <= budget + BUDGET_TOLERANCE]
        best = within.drop_duplicates(group_col) if group_col else within.head(1)
        chosen = {row[group_col] if group_col else None: row for row in best.to_dict("records")}
        for group in groups:
            row = chosen.get(group)
            if row is None:
                row = dict.fromkeys(point_columns, math.nan) | {
                    "label": NONE_WITHIN_BUDGET,
                    "reference": _group_reference(reference, group_col, group),
                    "drop_pts": math.nan,
                    "found": False,
                }
            else:
                row = row | {"found": True}
            rows.append(row | {"budget_pts": float(budget), **({group_col: group} if group_col else {})})
    return pd.DataFrame(rows, columns=columns)


def _check_accuracy(value: float, what: str) -> None:
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise ValueError(f"{what} is {value!r}; give an accuracy in [0, 1] (0.95, not 95)")


def _group_reference(reference: float | Mapping[str, float], group_col: str | None, group: object) -> float:
    """The reference of a group that has no point within the budget, where there is a single one."""
    if not isinstance(reference, Mapping):
        return float(reference)
    if group_col == "run_id" and isinstance(group, str) and group in reference:
        return float(reference[group])
    return math.nan
