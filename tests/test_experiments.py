"""core.experiments: the Pareto set and the budget table against brute-force references, the grids'
canonical dedupe, and a sweep on a tiny store (a stop, a full run, a second run that computes nothing)."""

from __future__ import annotations

import hashlib
import math
import random

import pandas as pd
import pytest

from core.analysis import NONE_WITHIN_BUDGET, best_within_budget, pareto_mask, point_rows
from core.config import CompressConfig, TrainConfig
from core.experiments import compression_grid, compression_settings, fits, run_sweep, train_grid
from core.store import RunStore
from tests.marks import fast_cases

# ---------------------------------------------------------------------------------------- pareto


def brute_pareto(sizes, accuracies, larger_is_better) -> list[bool]:
    """The definition, O(n^2): not dominated by any other point."""
    sign = 1 if larger_is_better else -1
    mask = []
    for i, (s_i, a_i) in enumerate(zip(sizes, accuracies)):
        dominated = any(
            sign * s_j >= sign * s_i and a_j >= a_i and (sign * s_j > sign * s_i or a_j > a_i)
            for j, (s_j, a_j) in enumerate(zip(sizes, accuracies))
            if j != i
        )
        mask.append(not dominated)
    return mask


@pytest.mark.parametrize("larger_is_better", [True, False])
def test_pareto_matches_brute_force_with_many_ties(larger_is_better):
    rng = random.Random(0)
    for _case in range(200):
        n = rng.randint(0, 60)
        grid = rng.choice([3, 5, 10])  # small integer grids: many equal sizes, accuracies and duplicates
        sizes = [rng.randint(0, grid) * rng.choice([1, 1.5]) for _ in range(n)]
        accuracies = [rng.randint(0, grid) / grid for _ in range(n)]
        assert pareto_mask(sizes, accuracies, larger_is_better) == brute_pareto(sizes, accuracies, larger_is_better)


def test_pareto_small_cases():
    assert pareto_mask([], [], True) == []
    assert pareto_mask([2, 2], [0.9, 0.9], True) == [True, True]  # exact duplicates are both kept
    assert pareto_mask([2, 2], [0.9, 0.8], True) == [True, False]  # same size, less accurate
    assert pareto_mask([1, 2], [0.9, 0.9], True) == [False, True]  # same accuracy, smaller ratio
    assert pareto_mask([1, 2], [0.9, 0.9], False) == [True, False]  # bits: fewer is better
    assert pareto_mask([1, 2, 3], [0.9, math.nan, 0.5], True) == [True, False, True]  # NaN: never on the set
    assert pareto_mask([5, 1], [-math.inf, 0.2], True) == [True, True]
    with pytest.raises(ValueError, match="differ in length"):
        pareto_mask([1, 2], [0.5], True)


# ---------------------------------------------------------------------------------------- budget


def brute_budget(rows: list[dict], budgets, reference, size_col, group_col) -> list[tuple]:
    """(budget, group, label, run_id) of the chosen point, by the definition."""
    groups = list(dict.fromkeys(r[group_col] for r in rows)) if group_col else [None]
    out = []
    for budget in budgets:
        for group in groups:
            candidates = [
                r
                for r in rows
                if (not group_col or r[group_col] == group)
                and 100.0 * ((reference[r["run_id"]] if isinstance(reference, dict) else reference) - r["accuracy"])
                <= budget + 1e-9
            ]
            candidates.sort(key=lambda r: (-r[size_col], -r["accuracy"], r["label"], r["run_id"]))
            if candidates:
                out.append((budget, group, candidates[0]["label"], candidates[0]["run_id"]))
            else:
                out.append((budget, group, NONE_WITHIN_BUDGET, None))
    return out


@fast_cases(1)
@pytest.mark.parametrize("group_col", [None, "family", "run_id"])
@pytest.mark.parametrize("per_run", [False, True])
def test_budget_matches_brute_force(group_col, per_run):
    rng = random.Random(1)
    run_ids = ["r0", "r1", "r2"]
    for _case in range(100):
        n = rng.randint(0, 25)
        rows = [
            {
                "run_id": rng.choice(run_ids),
                "family": rng.choice(["Gong PQ", "ours", "levels"]),
                "label": rng.choice(["pq d=8 k=16 shared", "kmeans k=2", "binarize"]),
                "accuracy": rng.randint(80, 95) / 100,
                "fc_ratio": float(rng.choice([8, 16, 32, 32, 58])),
                "model_ratio": float(rng.choice([4, 8])),
            }
            for _ in range(n)
        ]
        reference = {r: rng.randint(88, 96) / 100 for r in run_ids} if per_run else rng.randint(88, 96) / 100
        budgets = (0.5, 1.0, 2.0, 5.0)
        frame = pd.DataFrame(rows, columns=["run_id", "family", "label", "accuracy", "fc_ratio", "model_ratio"])
        table = best_within_budget(frame, budgets, reference, group_col=group_col)
        got = [
            (b, g if group_col else None, label, run_id if found else None)
            for b, g, label, run_id, found in zip(
                table["budget_pts"],
                table[group_col] if group_col else [None] * len(table),
                table["label"],
                table["run_id"],
                table["found"],
            )
        ]
        assert got == brute_budget(rows, budgets, reference, "fc_ratio", group_col)
        for row in table[table["found"]].to_dict("records"):
            assert row["drop_pts"] <= row["budget_pts"] + 1e-9
            assert row["drop_pts"] == pytest.approx(100 * (row["reference"] - row["accuracy"]))


def test_budget_edges():
    frame = pd.DataFrame(
        {
            "run_id": ["a", "a", "b"],
            "label": ["kmeans k=2", "pq d=8 k=16 shared", "binarize"],
            "accuracy": [0.94, 0.94, 0.90],
            "fc_ratio": [32.0, 32.0, 32.0],
            "model_ratio": [30.0, 29.0, 31.0],
        }
    )
    # 0.95 - 0.94 is 1.0000000000000009 points: still within a budget of 1
    table = best_within_budget(frame, [1.0, 0.5], 0.95)
    assert list(table["label"]) == ["kmeans k=2", NONE_WITHIN_BUDGET]  # equal ratio and accuracy: by label
    assert list(table["found"]) == [True, False]
    by_model = best_within_budget(frame, [10.0], 0.95, size_col="model_ratio")
    assert by_model["label"].iloc[0] == "binarize"
    per_run = best_within_budget(frame, [0.0], {"a": 0.94, "b": 0.99}, group_col="run_id")
    assert list(per_run["label"]) == ["kmeans k=2", NONE_WITHIN_BUDGET]
    assert list(per_run["reference"]) == [0.94, 0.99]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        best_within_budget(frame, [1.0], 95.0)
    with pytest.raises(ValueError, match="no reference accuracy for run"):
        best_within_budget(frame, [1.0], {"a": 0.9})
    with pytest.raises(ValueError, match="lack the column"):
        best_within_budget(frame.drop(columns="label"), [1.0], 0.9)


# ----------------------------------------------------------------------------------------- grids


def test_compression_grid_canonical_and_deduplicated():
    grid = compression_grid(["float", "binarize", "kmeans", "pq", "pq"], [1, 4, 8], [2, 16], ["shared", "per-chunk"])
    keys = [cfg.key() for cfg in grid]
    assert len(keys) == len(set(keys))
    labels = [cfg.label() for cfg in grid]
    assert labels.count("float") == 1 and labels.count("binarize") == 1  # d, k, layout ignored
    assert [cfg.n_centroids for cfg in grid if cfg.method == "kmeans"] == [2, 16]  # once per k
    # pq with d = 1 and the shared layout IS kmeans: one setting, one key
    for k in (2, 16):
        assert CompressConfig(method="pq", subvector_size=1, n_centroids=k).key() in keys
        assert CompressConfig(method="kmeans", subvector_size=4, n_centroids=k, layout="per-chunk").key() in keys
    assert len(grid) == 1 + 1 + 2 + 3 * 2 * 2 - 2
    # the order is stable: methods first, then d, k, layout
    assert labels[:4] == ["float", "binarize", "kmeans k=2", "kmeans k=16"]
    assert labels[4:6] == ["pq d=1 k=2 per-chunk", "pq d=1 k=16 per-chunk"]
    assert compression_grid(["float", "binarize", "kmeans", "pq"], [1, 4, 8], [2, 16], ["shared", "per-chunk"]) == grid


def test_compression_grid_takes_the_rest_from_fixed_and_spans_finetuning():
    fixed = dict(centroid_bits=16, kmeans_iters=5, init="random", seed=3, finetune_lr=1e-3)
    grid = compression_grid(["float", "binarize", "kmeans"], [4], [4], finetune_epochs=[0, 2], fixed=fixed)
    assert [cfg.label() for cfg in grid] == [
        "float",
        "binarize",
        "binarize +ft2",
        "kmeans k=4 fp16",
        "kmeans k=4 fp16 +ft2",
    ]
    tuned = grid[-1]
    assert (tuned.kmeans_iters, tuned.init, tuned.seed, tuned.finetune_lr) == (5, "random", 3, 1e-3)
    assert grid[-2].finetune_lr == CompressConfig().finetune_lr  # no fine-tuning: its lr is reset
    assert compression_grid(["float"], [], []) == [CompressConfig(method="float")]  # float needs no d or k
    assert compression_grid(["pq"], [], [16]) == []
    with pytest.raises(ValueError, match="unknown method"):
        compression_grid(["zip"], [4], [4])
    with pytest.raises(ValueError, match="centroids"):
        compression_grid(["kmeans"], [1], [1])


def test_train_grid_collapses_unregularized_runs():
    fixed = dict(dataset="digits", hidden=(32, 16), epochs=1, warmup_epochs=2, reg_levels=3)
    grid = train_grid(fixed, ["binary", "levels", "none"], [0.0, 0.05, 0], [0, 1])
    ids = [cfg.run_id() for cfg in grid]
    assert len(ids) == len(set(ids))
    assert [(cfg.reg, cfg.lam, cfg.seed) for cfg in grid] == [
        ("none", 0.0, 0),
        ("none", 0.0, 1),
        ("binary", 0.05, 0),
        ("binary", 0.05, 1),
        ("levels", 0.05, 0),
        ("levels", 0.05, 1),
    ]
    assert grid[0].warmup_epochs == 0 and grid[2].warmup_epochs == 2
    assert grid[4].reg_levels == 3  # the regularizer's own settings survive (they would not in a base config)


def test_the_default_sweep_is_the_one_before_its_grid_spanned_pruning():
    """The sweep's grid spans gradual pruning (training) and pruning with retraining (compression): at their
    defaults ([0]) the same runs and the same compressions as before, in the same order (pinned from the
    commit before the axes existed), and nothing skipped."""
    from core.__main__ import _compress_grid, _train_configs, build_parser

    args = build_parser().parse_args(["sweep"])
    assert [cfg.run_id() for cfg in _train_configs(args, many=True)] == ["72e2f0ea83e22432", "25414de1c0da29e7"]
    grid = _compress_grid(args)
    assert grid.impossible == []
    assert [cfg.key() for cfg in grid.settings] == [
        "69756a0bb1858202", "babefcab100df4d6", "d794585abba414b8", "f2e682df1725d22b", "b0a85face365df6b",
        "d73367a1cdc07bea", "f8130876f0086026", "5450a229a72ea0cf", "22603fec0cbcd234", "13b4bf034d59c43f",
        "be4e19cb276bed27",
    ]  # fmt: skip
    wide = [
        "sweep", "--dataset", "digits", "--hidden", "32", "16", "--epochs", "2", "--reg", "binary", "levels",
        "--lam", "0", "0.05", "--method", "float", "binarize", "kmeans", "pq", "rq", "-d", "2", "4", "-k", "4",
        "32", "--layout", "shared", "per-chunk", "--finetune-epochs", "0", "1", "--stages", "1", "2",
    ]  # fmt: skip
    args = build_parser().parse_args(wide)
    assert [cfg.run_id() for cfg in _train_configs(args, many=True)] == [
        "b9205321d8ddd30c", "2ccd085a9056679b", "c039708955451bb5"
    ]  # fmt: skip
    keys = ",".join(cfg.key() for cfg in _compress_grid(args).settings)
    assert len(_compress_grid(args).settings) == 39
    assert hashlib.sha256(keys.encode()).hexdigest()[:16] == "650d36f7fdb8005b"


def test_the_compression_grid_spans_pruning_and_lists_what_cannot_be():
    grid = compression_settings(
        ["float", "binarize", "pq"],
        [4],
        [16],
        ["shared", "per-chunk"],
        sparsities=[0, 0.5],
        prune_finetune_epochs=[0, 2],
    )
    assert [cfg.label() for cfg in grid.settings] == [
        "float",  # codes nothing: no stage to span
        "binarize",
        "prune 0.5 + binarize",
        "prune 0.5 +rt2 + binarize",
        "pq d=4 k=16 shared",
        "prune 0.5 + pq d=4 k=16 shared",
        "prune 0.5 +rt2 + pq d=4 k=16 shared",
        "pq d=4 k=16 per-chunk",
    ]
    with pytest.raises(ValueError) as refused:  # the config's own sentence for pruning a per-chunk layout
        CompressConfig(method="pq", layout="per-chunk", sparsity=0.5)
    assert [s.label for s in grid.impossible] == [
        "prune 0 +rt2 + binarize",
        "prune 0 +rt2 + pq d=4 k=16 shared",
        "prune 0 +rt2 + pq d=4 k=16 per-chunk",
        "prune 0.5 + pq d=4 k=16 per-chunk",
        "prune 0.5 +rt2 + pq d=4 k=16 per-chunk",
    ]
    retrain = "retraining the survivors (prune_finetune_epochs=2) needs a sparsity > 0"
    assert all(s.reason.startswith(retrain) for s in grid.impossible[:3])
    assert [s.reason for s in grid.impossible[3:]] == [str(refused.value)] * 2
    assert all("\n" not in s.reason for s in grid.impossible)
    # the strict grid (the Frontier's, the bench scripts') refuses such a combination with that reason
    with pytest.raises(ValueError, match="use layout shared"):
        compression_grid(["pq"], [4], [16], ["per-chunk"], sparsities=[0.5])
    # pruning with activation-aware k-means, from the fixed fields: skipped, with the config's sentence
    act = compression_settings(["kmeans"], [1], [4], sparsities=[0.0, 0.9], fixed={"weighting": "activations"})
    assert [cfg.label() for cfg in act.settings] == ["kmeans k=4 act"]
    assert [s.label for s in act.impossible] == ["prune 0.9 + kmeans k=4 act"]


@pytest.mark.parametrize(
    "axis, value, message",
    [
        ("sparsities", 1.0, r"sparsity=1\.0 must be a number from 0"),
        ("sparsities", -0.1, "sparsity=-0.1 must be a number from 0"),
        ("sparsities", float("nan"), "sparsity=nan must be a number from 0"),
        ("prune_finetune_epochs", -1, "prune_finetune_epochs=-1 must be a whole number from 0"),
    ],
)
def test_a_pruning_value_out_of_range_is_bad_input_not_a_skip(axis, value, message):
    """A value no combination can take is the caller's error (one line), whatever the method: even with
    float alone (which spans no pruning), and with layout per-chunk (which would skip it otherwise)."""
    for methods, layouts in ((["pq"], ["per-chunk"]), (["float"], ["shared"])):
        with pytest.raises(ValueError, match=message) as error:
            compression_settings(methods, [4], [16], layouts, **{axis: [0, value]})
        assert "\n" not in str(error.value)


def test_the_training_grid_spans_gradual_pruning():
    fixed = dict(dataset="digits", hidden=(32, 16), epochs=2, prune_epochs=2)
    grid = train_grid(fixed, ["binary"], [0.0, 0.05], [0], [0, 0.5])
    assert [(cfg.reg, cfg.lam, cfg.prune_sparsity) for cfg in grid] == [
        ("none", 0.0, 0.0),
        ("none", 0.0, 0.5),
        ("binary", 0.05, 0.0),
        ("binary", 0.05, 0.5),
    ]
    assert grid[0].prune_epochs == 1 and grid[1].prune_epochs == 2  # unpruned: the schedule reset
    assert grid[0].run_id() == train_grid(fixed, ["binary"], [0.0], [0])[0].run_id()
    for bad, message in ((1.0, "prune_sparsity=1.0 must be"), (float("nan"), "prune_sparsity=nan must be")):
        with pytest.raises(ValueError, match=message):
            train_grid(fixed, ["binary"], [0.0], [0], [0, bad])
    with pytest.raises(ValueError, match="is more than epochs"):  # the schedule is the grid's, for every pruned run
        train_grid(dict(fixed, epochs=1), ["binary"], [0.0], [0], [0, 0.5])


def test_fits_says_why_not():
    shapes = [("fcs.0.weight", (32, 64)), ("fcs.1.weight", (16, 32)), ("fcs.2.weight", (10, 16))]
    assert fits(CompressConfig(method="pq", subvector_size=4, n_centroids=16), shapes) is None
    assert fits(CompressConfig(method="binarize"), shapes) is None
    per_chunk = fits(CompressConfig(method="pq", subvector_size=4, n_centroids=16, layout="per-chunk"), shapes)
    assert per_chunk is not None and "per-chunk" in per_chunk and "k <= 10" in per_chunk
    too_wide = fits(CompressConfig(method="pq", subvector_size=32, n_centroids=4), shapes)
    assert too_wide is not None and "wider than layer" in too_wide


# ----------------------------------------------------------------------------------------- sweep

TINY = dict(dataset="digits", model="mlp", hidden=(32, 16), epochs=1, lr=3e-3)
SETTINGS = [
    CompressConfig(method="binarize"),
    CompressConfig(method="pq", subvector_size=4, n_centroids=8),
    CompressConfig(method="pq", subvector_size=4, n_centroids=16, layout="per-chunk"),  # the last layer has 10 rows
]


def _files(root) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_run_sweep_stops_skips_and_caches(tmp_path):
    store = RunStore(tmp_path / "store")
    runs = train_grid(TINY, ["binary"], [0.0, 0.05], [0])
    assert len(runs) == 2

    # 1. stopped after the first step: that run is stored, nothing else is started
    progress: list[tuple[int, int, str]] = []
    stopped = run_sweep(
        store,
        runs,
        SETTINGS,
        device="cpu",
        on_progress=lambda done, total, text: progress.append((done, total, text)),
        should_stop=lambda: any(done == 1 for done, _, _ in progress),
    )
    assert stopped.stopped and stopped.new_runs == 1 and stopped.points == [] and stopped.skipped == []
    assert [run.run_id for run in stopped.runs] == [runs[0].run_id()]
    assert store.load_run(runs[0].run_id()) is not None and store.load_run(runs[1].run_id()) is None

    # 2. the whole sweep: the stored run is reused, the other trained; the per-chunk k=16 setting is skipped
    progress.clear()
    result = run_sweep(
        store, runs, SETTINGS, device="cpu", on_progress=lambda done, total, text: progress.append((done, total, text))
    )
    assert not result.stopped and result.new_runs == 1 and result.new_points == 4
    assert [(p.run_id, p.compress_config.label()) for p in result.points] == [
        (run.run_id(), cfg.label()) for run in runs for cfg in SETTINGS[:2]
    ]
    assert [(s.run_id, s.label) for s in result.skipped] == [(run.run_id(), SETTINGS[2].label()) for run in runs]
    assert all("per-chunk" in s.reason and "k=16" in s.reason for s in result.skipped)
    dones = [done for done, _, _ in progress]
    assert dones == sorted(dones) and dones[-1] == 8 and {total for _, total, _ in progress} == {8}
    assert any("step" in text for _, _, text in progress)  # training reports its steps
    rows = point_rows(result.points)
    assert len(rows) == 4 and {"accuracy", "fc_ratio", "model_ratio", "label", "run_id"} <= set(rows.columns)

    # 3. again: everything comes from the store, nothing is written
    before = _files(store.root)
    again = run_sweep(store, runs, SETTINGS, device="cpu")
    assert again.new_runs == 0 and again.new_points == 0 and not again.stopped
    assert [p.row() for p in again.points] == [p.row() for p in result.points]
    assert again.skipped == result.skipped
    assert _files(store.root) == before


def test_run_sweep_skips_a_diverged_run(tmp_path, monkeypatch):
    from core.train import TrainingDiverged

    store = RunStore(tmp_path / "store")

    def diverge_pipeline(store, cfg, **kwargs):
        raise TrainingDiverged("training diverged in epoch 1: lower lam")

    monkeypatch.setattr("core.experiments.get_or_train", diverge_pipeline)
    result = run_sweep(store, [TrainConfig(**TINY, reg="binary", lam=1e5)], SETTINGS[:1], device="cpu")
    assert result.points == [] and result.runs == []
    assert [(s.label, s.reason) for s in result.skipped] == [("training", "training diverged in epoch 1: lower lam")]


def test_core_has_no_import_circle():
    """The modules of core/ import each other as a tree: the analysis below the sweep, the sweep above
    the pipeline, the config above the methods (imports only for type checking left out)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    graph: dict[str, set[str]] = {}
    for path in (root / "core").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module.split(".") if parts[-1] == "__init__" else module.split(".")[:-1]
        tree = ast.parse(path.read_text())
        typing_only = {
            id(node)
            for branch in ast.walk(tree)
            if isinstance(branch, ast.If) and getattr(branch.test, "id", "") == "TYPE_CHECKING"
            for node in ast.walk(branch)
        }
        graph[module] = {
            ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level and id(node) not in typing_only
        }
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, "import circle: " + " -> ".join([*path[path.index(module) :], module])
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert "core.experiments" not in graph["core.charts"] | graph["core.pipeline"]
