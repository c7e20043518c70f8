"""A per-layer budget: each coded weight's own setting (method, d, k, sparsity), chosen from measured
sensitivity to fit a size budget, or to hold an accuracy floor, with the search's cost known before it
starts.

    candidates     per weight: float, kmeans k in {2, ..., 256}, pq (d, k) pairs, each optionally
                   pruned first; the exact bits of each from its method's own accounting (core/size.py)
    sensitivity    the accuracy (and cross-entropy) on a fixed, seeded slice of the TRAINING split when
                   only that weight is coded by that candidate and every other weight stays float; the
                   test split is never looked at before the result is measured
    greedy path    start with each weight at its most accurate candidate, then take, step by step, the
                   move of one weight to a cheaper candidate that loses the least held-out accuracy per
                   bit saved (cross-entropy per bit breaks ties), until every weight is at its cheapest
    budget         of the path's states and each of them with one weight's setting changed (the bits a
                   big step leaves unused go back to a weight), the one of the highest predicted held-
                   out accuracy (float + the sum of the weights' drops) within the budget, then measured;
                   the options do not depend on the budget, so a bigger budget never gives a smaller model
    floor          the smallest state of the path whose measured held-out accuracy keeps the floor's
                   drop: held-out >= float held-out - (float test accuracy - floor)

The number of evaluations is known before any: 1 (float) + one per (weight, coding candidate) + the
path's states measured (1 for a budget; every state, at most sum(candidates - 1) + 1, for a floor).
`plan_run` counts them and prices them with the measured cost model (core/pipeline.py). The result is
a `CompressConfig` with `per_layer` settings: a normal compression whose record and file carry them.

The slice is of the training split the run was trained on: it keeps the test split out of the search,
but its accuracy is the training accuracy (higher than the test's); only differences of it are used.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from .compress import compress_run

# HOLDOUT_EXAMPLES: the slice of the training split the sensitivities are measured on
from .config import HOLDOUT_EXAMPLES, MAX_HOLDOUT, CompressConfig, LayerSetting, _float, _int, config_hash
from .jobs import JobContext, JobSpec, JobStatus
from .methods import quantize_model
from .pq import DoesNotFit, check_fits
from .size import FLOAT_BITS, layer_bits

if TYPE_CHECKING:
    from .data import Dataset
    from .records import CompressionRecord, RunRecord
    from .store import RunStore

KB_BITS = 8_000  # 1 KB = 1,000 bytes
MAX_EVALUATIONS = 5_000  # one request's search: refused above it, before any work
EVAL_BATCH = 1_024

# The candidates of each weight, before pruning: (method, d, k). float is every weight's reference.
KMEANS_CENTROIDS = (2, 4, 8, 16, 32, 256)
# (8, 32), (16, 16 to 64), (32, 32 or 64): the records' settings (44.5x to 100x): past ~50x a k of 256 costs
# more in its codebook than in its codes (256 x 16 float32 centroids are 1/65 of LeNet-300-100's first layer);
# d = 32 fits LeNet-5's 800-input fc1, whose 400,000 weights are 93% of the network
PQ_SETTINGS = (
    (2, 16), (2, 256), (4, 16), (4, 256), (8, 16), (8, 32), (8, 256), (16, 16), (16, 32), (16, 64), (16, 256),
    (32, 32), (32, 64),
)  # fmt: skip
SPARSITIES = (0.0,)  # pass e.g. (0.0, 0.5, 0.75, 0.9) to let each coding candidate prune first

OnProgress = Callable[[int, int, str], None]  # (evaluations done, planned, what is happening)


def default_candidates(sparsities: Sequence[float] = SPARSITIES) -> tuple[LayerSetting, ...]:
    """The grid: float, then kmeans and pq settings, each at every sparsity (name left empty)."""
    coding = [("kmeans", 1, k) for k in KMEANS_CENTROIDS] + [("pq", d, k) for d, k in PQ_SETTINGS]
    grid = [LayerSetting("", "float")]
    grid += [LayerSetting("", method, d, k, float(s)) for s in sparsities for method, d, k in coding]
    return tuple(grid)


@dataclass(frozen=True)
class BudgetRequest:
    """What to fit: a size budget or an accuracy floor (exactly one), the held-out slice, the grid."""

    budget_kb: float | None = None  # model size, ledger bits / 8,000 (the file adds its header)
    floor: float | None = None  # test-style accuracy in [0, 1] to keep (as a drop from float)
    holdout: int = HOLDOUT_EXAMPLES  # examples of the training split the search measures on
    seed: int = 0  # which examples
    sparsities: tuple[float, ...] = SPARSITIES  # pruning levels crossed with each coding candidate

    def __post_init__(self) -> None:
        if (self.budget_kb is None) == (self.floor is None):
            raise ValueError("give a size budget (budget_kb) or an accuracy floor (floor), one of the two")
        if self.budget_kb is not None:
            _float("budget_kb", self.budget_kb, 0.0, 1e9, low_open=True, hint=" (kilobytes of 1,000 bytes)")
        if self.floor is not None:
            _float("floor", self.floor, 0.0, 1.0, hint=" (an accuracy, e.g. 0.95)")
        _int("holdout", self.holdout, 1, MAX_HOLDOUT, " (examples of the training split)")
        _int("seed", self.seed, 0, 2**32 - 1)
        object.__setattr__(self, "sparsities", tuple(float(s) for s in self.sparsities))
        if not self.sparsities or len(self.sparsities) > 16:
            raise ValueError("give 1 to 16 sparsities, e.g. 0 0.5 0.9")
        for s in self.sparsities:
            if not (math.isfinite(s) and 0 <= s < 1):
                raise ValueError(f"sparsity {s!r} must be from 0 up to but not including 1, e.g. 0.9")

    @property
    def budget_bits(self) -> int | None:
        return None if self.budget_kb is None else math.floor(self.budget_kb * KB_BITS)

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"sparsities": list(self.sparsities)}

    def describe(self) -> str:
        if self.budget_kb is not None:
            return f"budget {self.budget_kb:g} KB"
        return f"floor {100 * (self.floor or 0.0):.2f}%"


@dataclass(frozen=True)
class Candidate:
    """One weight's candidate: its setting, the plain config that codes it, its exact bits."""

    setting: LayerSetting  # named
    config: CompressConfig  # the weight's own plain config
    bits: int


@dataclass(frozen=True)
class Measured:
    """A candidate's sensitivity: held-out accuracy and cross-entropy with only it coded."""

    name: str
    label: str
    bits: int
    accuracy: float
    cross_entropy: float


@dataclass(frozen=True)
class PathState:
    """One state of the greedy path: each weight's candidate index, the model bits, and its held-out
    accuracy as the sensitivities predict it (and as measured, when it was)."""

    choice: tuple[int, ...]
    model_bits: int
    predicted_accuracy: float
    measured_accuracy: float | None = None


@dataclass(frozen=True)
class BudgetPlan:
    """The search's cost, known before it starts."""

    candidates: dict[str, tuple[Candidate, ...]]  # per weight, the settings that fit it
    rest_bits: int
    smallest_bits: int  # every weight at its cheapest candidate
    largest_bits: int
    quantizations: int  # (weight, coding candidate) pairs
    evaluations: int  # at most, all included
    seconds: float | None  # estimated, when the network's cost is known (a built-in run)


@dataclass(frozen=True)
class Allocation:
    """What the search found: the config to compress with, and how it was found."""

    config: CompressConfig  # the base config with each weight's own setting (per_layer)
    request: BudgetRequest
    model_bits: int  # the ledger's model bits of `config`
    heldout_accuracy: float  # measured, the chosen config on the slice
    float_heldout_accuracy: float
    evaluations: int  # done
    plan: BudgetPlan
    sensitivity: tuple[Measured, ...]
    path: tuple[PathState, ...]
    holdout_indices: tuple[int, ...]  # into the training split
    chosen: PathState  # the state of `config`, its held-out accuracy measured
    options: tuple[PathState, ...] = ()  # what a budget chooses from: the path and its one-layer changes

    def config_at(self, state: PathState) -> CompressConfig:
        """The config of a state of the path (the chosen one is `config`)."""
        return settings_config(self.plan, dataclasses.replace(self.config, per_layer=()), state.choice)

    def within(self, budget_bits: int) -> PathState:
        """The state a budget of `budget_bits` chooses (the options do not depend on the budget: one
        search answers every budget at least its smallest model)."""
        return best_within(self.options, budget_bits)

    def layer_rows(self) -> list[dict]:
        """One row a coded weight: its chosen setting and bits (the page's and the CLI's table)."""
        rows = []
        for name, candidates in self.plan.candidates.items():
            own = self.config.for_layer(name)
            bits = next(c.bits for c in candidates if c.config.key() == own.key())
            rows.append({"layer": name, "setting": own.label(), "bits": bits})
        return rows


# ----------------------------------------------------------------------------------- the plan


def layer_candidates(
    name: str, shape: tuple[int, ...], base: CompressConfig, grid: Sequence[LayerSetting]
) -> tuple[Candidate, ...]:
    """The grid's settings that fit this weight, each once (canonical), with their exact bits."""
    found: dict[str, Candidate] = {}
    for setting in grid:
        named = dataclasses.replace(setting, name=name)
        try:
            cfg = base.for_layer_fields(named)
            check_fits([(name, shape)], cfg)
        except (DoesNotFit, ValueError):
            continue  # d wider than the layer, or pruning with a per-chunk layout: not a candidate here
        canonical = LayerSetting(name, cfg.method, cfg.subvector_size, cfg.n_centroids, cfg.sparsity)
        found.setdefault(cfg.key(), Candidate(canonical, cfg, layer_bits(name, shape, cfg).bits))
    return tuple(found.values())


def check_base(base: CompressConfig) -> CompressConfig:
    """The config whose shared fields (layout, centroid bits, k-means, fine-tuning, entropy, targets)
    every weight's setting takes: a kmeans or pq config, weighting none, no settings of its own yet."""
    if not isinstance(base, CompressConfig):
        raise ValueError(f"the base must be a core.CompressConfig, not a {type(base).__name__}")
    if base.method not in ("kmeans", "pq"):
        raise ValueError(f"a budget's base config must be method kmeans or pq (its shared fields), not {base.method}")
    if base.weighting != "none":
        raise ValueError("a budget takes weighting none (each candidate's d would need its own statistics)")
    return dataclasses.replace(base, per_layer=())


def plan(
    shapes: Sequence[tuple[str, tuple[int, ...]]],
    rest_bits: int,
    base: CompressConfig,
    request: BudgetRequest,
    float_accuracy: float | None = None,
    eval_seconds: float | None = None,
) -> BudgetPlan:
    """The candidates and the search's cost, and one ValueError line, before any work, for a budget
    below the smallest model the grid makes or a floor above the float accuracy."""
    base = check_base(base)
    if not shapes:
        raise ValueError("there is no weight to code: nothing to allocate")
    grid = default_candidates(request.sparsities)
    candidates = {name: layer_candidates(name, shape, base, grid) for name, shape in shapes}
    smallest = rest_bits + sum(min(c.bits for c in cands) for cands in candidates.values())
    largest = rest_bits + sum(max(c.bits for c in cands) for cands in candidates.values())
    budget = request.budget_bits
    if budget is not None and budget < smallest:
        raise ValueError(
            f"a budget of {request.budget_kb:g} KB is below the smallest model these settings make "
            f"({smallest / KB_BITS:,.3f} KB: every weight at its cheapest, the float rest "
            f"{rest_bits / KB_BITS:,.3f} KB); "
            f"give at least {math.ceil(smallest / KB_BITS * 1000) / 1000:g} KB"
        )
    if request.floor is not None and float_accuracy is not None and request.floor > float_accuracy:
        raise ValueError(
            f"a floor of {100 * request.floor:.2f}% is above the float model's own accuracy "
            f"({100 * float_accuracy:.2f}%): no compression can keep it; give at most {100 * float_accuracy:.2f}%"
        )
    quantizations = sum(1 for cands in candidates.values() for c in cands if c.config.method != "float")
    path_bound = 1 + sum(len(cands) - 1 for cands in candidates.values())
    evaluations = 1 + quantizations + (1 if budget is not None else path_bound + 1)
    if evaluations > MAX_EVALUATIONS:
        raise ValueError(
            f"this search needs up to {evaluations:,} evaluations, more than the {MAX_EVALUATIONS:,} one request "
            "may take: code fewer layers or give fewer sparsities"
        )
    seconds = None
    if eval_seconds is not None:
        seconds = evaluations * eval_seconds + sum(
            c.config.method_spec.estimate_seconds([(name, shape)], c.config)
            for name, shape in shapes
            for c in candidates[name]
        )
    return BudgetPlan(candidates, rest_bits, smallest, largest, quantizations, evaluations, seconds)


# ------------------------------------------------------------------------------------ measuring


def holdout_indices(n_train: int, size: int, seed: int) -> torch.Tensor:
    """A fixed, seeded slice of the training split: `size` distinct indices in [0, n_train)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_train, generator=generator)[: min(size, n_train)]


@torch.no_grad()
def heldout_metrics(
    model: nn.Module, weights: Mapping[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` with `weights` in place of its own, on the slice (in
    eval mode; the module's own mode is given back)."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(inputs), EVAL_BATCH):
        x, y = inputs[start : start + EVAL_BATCH], targets[start : start + EVAL_BATCH]
        logits = torch.func.functional_call(model, dict(weights), (x,))
        correct += int((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    model.train(was_training)
    return correct / len(inputs), loss / len(inputs)


def budget_options(
    plan_: BudgetPlan,
    names: Sequence[str],
    path: Sequence[PathState],
    measured: Mapping[tuple[str, int], tuple[float, float]],
) -> tuple[PathState, ...]:
    """What a budget chooses from: the path's states and each one with one weight's setting changed
    (so the bits a big step of the path leaves unused can go back to a weight), each once."""
    seen: dict[tuple[int, ...], PathState] = {}
    for state in path:
        seen.setdefault(state.choice, state)
        for i, name in enumerate(names):
            for j in range(len(plan_.candidates[name])):
                choice = (*state.choice[:i], j, *state.choice[i + 1 :])
                if choice not in seen:
                    seen[choice] = _state(plan_, names, choice, measured)
    return tuple(seen.values())


def best_within(options: Sequence[PathState], budget_bits: int) -> PathState:
    """The option of the highest predicted held-out accuracy within the budget (then the most bits,
    then the first): the options do not depend on the budget, so a bigger budget never gives a
    smaller model (a smaller one would have been chosen under the smaller budget already)."""
    fits = [state for state in options if state.model_bits <= budget_bits]
    if not fits:
        smallest = min(state.model_bits for state in options)
        raise ValueError(f"no allocation fits {budget_bits:,} bits; the smallest is {smallest:,}")
    return max(fits, key=lambda state: (state.predicted_accuracy, state.model_bits))


def settings_config(plan_: BudgetPlan, base: CompressConfig, choice: Sequence[int]) -> CompressConfig:
    """`base` with each weight's chosen candidate as its own setting."""
    settings = [plan_.candidates[name][j].setting for name, j in zip(plan_.candidates, choice)]
    return dataclasses.replace(base, per_layer=tuple(settings))


def _state(
    plan_: BudgetPlan,
    names: Sequence[str],
    choice: tuple[int, ...],
    measured: Mapping[tuple[str, int], tuple[float, float]],
) -> PathState:
    """A path state: its model bits, and its accuracy as the sensitivities add up (float + each drop)."""
    bits = plan_.rest_bits + sum(plan_.candidates[n][j].bits for n, j in zip(names, choice))
    float_accuracy = measured[("", -1)][0]
    predicted = float_accuracy + sum(measured[(n, j)][0] - float_accuracy for n, j in zip(names, choice))
    return PathState(choice, bits, predicted)


def _greedy_path(
    plan_: BudgetPlan, names: Sequence[str], measured: Mapping[tuple[str, int], tuple[float, float]]
) -> list[PathState]:
    """The path from each weight's most accurate candidate to every weight at its cheapest: at each
    step the move of one weight to a cheaper candidate with the least accuracy lost per bit saved."""
    cands = [plan_.candidates[name] for name in names]

    def most_accurate(name: str, candidates: tuple[Candidate, ...]) -> int:
        def rank(j: int) -> tuple[float, float, int]:
            return (-measured[(name, j)][0], measured[(name, j)][1], candidates[j].bits)

        return min(range(len(candidates)), key=rank)

    start = tuple(most_accurate(name, c) for name, c in zip(names, cands))

    path = [_state(plan_, names, start, measured)]
    choice = list(start)
    while True:
        best: tuple[tuple[float, float, int], int, int] | None = None
        for i, (name, c) in enumerate(zip(names, cands)):
            now_acc, now_ce = measured[(name, choice[i])]
            for j, candidate in enumerate(c):
                saved = c[choice[i]].bits - candidate.bits
                if saved <= 0:
                    continue
                acc, ce = measured[(name, j)]
                key = ((now_acc - acc) / saved, (ce - now_ce) / saved, -saved)
                if best is None or key < best[0]:
                    best = (key, i, j)
        if best is None:
            return path
        _, i, j = best
        choice[i] = j
        path.append(_state(plan_, names, tuple(choice), measured))


def allocate(
    model: nn.Module,
    weights: Sequence[tuple[str, torch.Tensor]],
    rest_bits: int,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    base: CompressConfig,
    request: BudgetRequest,
    float_accuracy: float | None = None,
    holdout: torch.Tensor | None = None,
    on_progress: OnProgress | None = None,
    eval_seconds: float | None = None,
) -> Allocation:
    """The per-layer settings of `weights` (state-dict key, tensor) of `model` (not modified) that fit
    `request`, measured on `inputs`, `targets` (the held-out slice; `holdout`: its indices, recorded).
    `float_accuracy`: the accuracy the floor is a drop from (a run's test accuracy; default: the float
    held-out accuracy). `rest_bits`: the bits of everything not coded. All checks, before any work."""
    shapes = [(name, tuple(weight.shape)) for name, weight in weights]
    plan_ = plan(shapes, rest_bits, base, request, float_accuracy, eval_seconds)
    base = check_base(base)
    names = [name for name, _ in shapes]
    done = [0]

    def evaluate(overrides: Mapping[str, torch.Tensor], text: str) -> tuple[float, float]:
        result = heldout_metrics(model, overrides, inputs, targets)
        done[0] += 1
        if on_progress is not None:
            on_progress(done[0], plan_.evaluations, text)
        return result

    measured: dict[tuple[str, int], tuple[float, float]] = {}
    measured[("", -1)] = float_metrics = evaluate({}, "the float model on the held-out slice")
    if request.floor is not None and float_accuracy is None and request.floor > float_metrics[0]:
        raise ValueError(
            f"a floor of {100 * request.floor:.2f}% is above the float model's own accuracy on these examples "
            f"({100 * float_metrics[0]:.2f}%): no compression can keep it; give at most {100 * float_metrics[0]:.2f}%"
        )
    decoded: dict[tuple[str, int], torch.Tensor] = {}
    weight_of = dict(weights)
    for name in names:
        for j, candidate in enumerate(plan_.candidates[name]):
            if candidate.config.method == "float":
                measured[(name, j)] = float_metrics
                continue
            (layer,) = quantize_model(model, candidate.config, [(name, weight_of[name])])
            decoded[(name, j)] = layer.decode()
            measured[(name, j)] = evaluate({name: decoded[(name, j)]}, f"{name}: {candidate.config.label()}")

    def combined(choice: tuple[int, ...]) -> dict[str, torch.Tensor]:
        return {n: decoded[(n, j)] for n, j in zip(names, choice) if (n, j) in decoded}

    path = _greedy_path(plan_, names, measured)
    options = budget_options(plan_, names, path, measured)
    budget = request.budget_bits
    if budget is not None:
        best = best_within(options, budget)  # the path's last state (every weight at its cheapest) fits
        accuracy = evaluate(combined(best.choice), "the chosen settings together")[0]
        chosen = dataclasses.replace(best, measured_accuracy=accuracy)
    else:
        assert request.floor is not None
        reference = float_metrics[0] if float_accuracy is None else float_accuracy
        target = float_metrics[0] - (reference - request.floor)
        floats = tuple(next(j for j, c in enumerate(plan_.candidates[n]) if c.config.method == "float") for n in names)
        if path[0].choice != floats:  # every weight float keeps any floor at most the float accuracy
            path.insert(0, _state(plan_, names, floats, measured))
        for i, s in enumerate(path):
            path[i] = dataclasses.replace(s, measured_accuracy=evaluate(combined(s.choice), f"path state {i + 1}")[0])
        keeping = [i for i, s in enumerate(path) if s.measured_accuracy is not None and s.measured_accuracy >= target]
        index = min(keeping, key=lambda i: (path[i].model_bits, i)) if keeping else 0
        chosen = path[index]
        accuracy = chosen.measured_accuracy  # type: ignore[assignment]
    config = settings_config(plan_, base, chosen.choice)
    return Allocation(
        config=config,
        request=request,
        model_bits=chosen.model_bits,
        heldout_accuracy=float(accuracy),
        float_heldout_accuracy=float_metrics[0],
        evaluations=done[0],
        plan=plan_,
        sensitivity=tuple(
            Measured(n, c.config.label(), c.bits, *measured[(n, j)])
            for n in names
            for j, c in enumerate(plan_.candidates[n])
        ),
        path=tuple(path),
        chosen=chosen,
        options=options,
        holdout_indices=tuple(int(i) for i in (holdout if holdout is not None else torch.arange(len(inputs)))),
    )


# ----------------------------------------------------------------------------------- a stored run


def run_rest_bits(run: RunRecord, targets: str) -> tuple[list[tuple[str, tuple[int, ...]]], int]:
    """The coded weights' shapes of a run and the float rest's bits, from the shapes alone."""
    from .compress import coded_shapes

    shapes = coded_shapes(run, targets)
    n_coded = sum(math.prod(shape) for _, shape in shapes)
    return shapes, FLOAT_BITS * (_n_parameters(run) - n_coded)


def _n_parameters(run: RunRecord) -> int:
    from .models import build_model

    with torch.device("meta"):
        model = build_model(run.config.model, run.input_shape, run.n_classes, run.config.hidden)
    return sum(t.numel() for t in model.state_dict().values())


def eval_seconds_of(run: RunRecord, holdout: int) -> float:
    """The measured cost model's price of one held-out evaluation of the run's network."""
    from .pipeline import COMPRESSION_COST_SECONDS, forward_macs

    macs = forward_macs(run.config.model, run.input_shape, run.n_classes, tuple(run.config.hidden))
    return COMPRESSION_COST_SECONDS["evaluation"] * holdout * macs


def plan_run(run: RunRecord, base: CompressConfig, request: BudgetRequest) -> BudgetPlan:
    """`plan` for a stored run: its shapes, its float rest, its test accuracy; no weights read. A run
    pruned during training takes only sparsities at least its own (each candidate then keeps its zeros
    as the stored mask, as `compress.check_pruned_run` asks): one line otherwise, before any work."""
    pruned = run.config.prune_sparsity
    if pruned > 0 and min(request.sparsities) < pruned:
        low = ", ".join(f"{s:g}" for s in request.sparsities if s < pruned)
        raise ValueError(
            f"run {run.run_id} was pruned to sparsity {pruned:g} during training, so each layer is coded at "
            f"sparsity >= {pruned:g}; the search's sparsities {low} are below it: give --budget-sparsities "
            f"{pruned:g} (or higher ones)"
        )
    shapes, rest_bits = run_rest_bits(run, base.targets)
    return plan(shapes, rest_bits, base, request, run.test_accuracy, eval_seconds_of(run, request.holdout))


def allocate_run(
    run: RunRecord,
    base: CompressConfig,
    request: BudgetRequest,
    data: Dataset | None = None,
    on_progress: OnProgress | None = None,
) -> Allocation:
    """`allocate` on a stored run: the held-out slice of its training split (never its test split),
    the floor a drop from its test accuracy. Every check (`plan_run`) before the dataset is loaded."""
    from .data import load_dataset
    from .models import coded_weights

    plan_run(run, base, request)  # bad input: one line, before any loading
    data = data or load_dataset(run.config.dataset)
    index = holdout_indices(len(data.x_train), request.holdout, request.seed)
    model = run.model()
    weights = [(name, weight.detach().float()) for name, weight in coded_weights(model, base.targets)]
    _, rest_bits = run_rest_bits(run, base.targets)
    return allocate(
        model, weights, rest_bits, data.x_train[index], data.y_train[index], base, request,
        float_accuracy=run.test_accuracy, holdout=index, on_progress=on_progress,
        eval_seconds=eval_seconds_of(run, request.holdout),
    )  # fmt: skip


def budget_key(run_id: str, base: CompressConfig, request: BudgetRequest) -> str:
    """The job key of a budget search: its run, its base config, its request, and the candidates' grid
    (a search stored under another grid is not this one)."""
    grid = [[s.method, s.subvector_size, s.n_centroids, s.sparsity] for s in default_candidates(request.sparsities)]
    return "budget-" + config_hash({"run": run_id, "base": base.key(), "request": request.to_json(), "grid": grid})


def describe(allocation: Allocation) -> str:
    """One line: what was found, at what size and held-out accuracy, at what search cost."""
    return (
        f"{allocation.request.describe()}: {allocation.model_bits / KB_BITS:,.3f} KB, held-out accuracy "
        f"{100 * allocation.heldout_accuracy:.2f}% (float {100 * allocation.float_heldout_accuracy:.2f}%), "
        f"{allocation.evaluations} of at most {allocation.plan.evaluations} evaluations"
    )


def to_json(allocation: Allocation) -> str:
    """The search's log as JSON text (the CLI's --json)."""
    return json.dumps(
        {
            "config": allocation.config.to_json(),
            "request": allocation.request.to_json(),
            "model_bits": allocation.model_bits,
            "heldout_accuracy": allocation.heldout_accuracy,
            "float_heldout_accuracy": allocation.float_heldout_accuracy,
            "evaluations": allocation.evaluations,
            "planned_evaluations": allocation.plan.evaluations,
            "layers": allocation.layer_rows(),
        }
    )


# ------------------------------------------------------------------------------------- the job

RESULT_PATTERN = re.compile(r"\bkey ([0-9a-f]{16})\b")  # the compression key in a finished job's text


@dataclass
class BudgetOutcome:
    """What a budget job run by this process found (the page reads the record from the store)."""

    allocation: Allocation | None = None
    record: CompressionRecord | None = None


def budget_spec(
    store: RunStore,
    run: RunRecord,
    base: CompressConfig,
    request: BudgetRequest,
    outcome: BudgetOutcome | None = None,
    data: Dataset | None = None,
) -> JobSpec:
    """One job: the search (its evaluations reported as its progress, where a cancel lands), then the
    chosen config compressed, measured on the test split and published as a normal compression
    (transient: no; it is a result someone asked for). Its last text names the compression's key."""
    finished = threading.Event()
    outcome = outcome if outcome is not None else BudgetOutcome()

    def body(ctx: JobContext) -> None:
        ctx.report(0, 1, f"{request.describe()}: loading the run")
        allocation = allocate_run(
            run, base, request, data=data, on_progress=lambda done, total, text: ctx.report(done, total + 1, text)
        )
        cfg = allocation.config
        ctx.report(allocation.evaluations, allocation.evaluations + 1, f"compressing {cfg.label()}")
        record = store.load_compression(run.run_id, cfg)
        if record is None:
            compressed, blob = compress_run(run, cfg, data=data)
            record = store.save_compression(compressed, blob)
        outcome.allocation, outcome.record = allocation, record
        ctx.report(
            allocation.evaluations + 1,
            allocation.evaluations + 1,
            f"{describe(allocation)}; test accuracy {100 * record.accuracy:.2f}%; key {record.key}",
        )
        finished.set()

    return JobSpec(
        key=budget_key(run.run_id, base, request),
        kind="budget",
        label=f"{request.describe()} on run {run.run_id[:6]} ({base.label()} shared fields)",
        run=body,
        is_done=finished.is_set,
    )


def get_or_allocate(
    store: RunStore,
    run: RunRecord,
    base: CompressConfig,
    request: BudgetRequest,
    data: Dataset | None = None,
    on_status: Callable[[JobStatus], None] | None = None,
) -> tuple[Allocation | None, CompressionRecord]:
    """Run the search as a job (or join the one running) and return (allocation, its stored
    compression); the allocation is None when another process ran the job. Bad input: one line first."""
    from .pipeline import _outcome, job_manager

    plan_run(run, base, request)
    store.check_writable()
    outcome = BudgetOutcome()
    status = job_manager(store).run(budget_spec(store, run, base, request, outcome, data), on_status=on_status)
    _outcome(status, [], f"the {request.describe()} search")
    record = outcome.record or budget_record(store, run, status)
    if record is None:
        raise ValueError(f"the {request.describe()} search finished but its compression is not in the store")
    return outcome.allocation, record


def submit_budget(
    store: RunStore, run: RunRecord, base: CompressConfig, request: BudgetRequest, requester: str = ""
) -> JobStatus:
    """Start (or join) the search in a background thread (the app); bad input is one line first."""
    from .pipeline import job_manager

    plan_run(run, base, request)
    store.check_writable()
    spec = dataclasses.replace(budget_spec(store, run, base, request), requester=requester)
    return job_manager(store).submit(spec)


def budget_record(store: RunStore, run: RunRecord, status: JobStatus | None) -> CompressionRecord | None:
    """The compression a finished budget job published (its key is in the job's last text), verified."""
    if status is None or not status.finished_ok:
        return None
    found = RESULT_PATTERN.search(status.text)
    return store.load_compression_entry(run.run_id, found.group(1)) if found else None
