"""A per-layer budget (core/budget.py) against one setting for every layer, at equal size (issue 22).

    python bench/budget.py                       # digits, LeNet-300-100 shape, seeds 0 1 2
    python bench/budget.py --seeds 0 --smoke     # one seed, a short run

Per seed: an unregularized MLP (300-100) trained on the 8x8 digits; each uniform setting of the grid
(kmeans k, pq (d, k), every coded layer the same) compressed; then, for the same run, one budget search
(sensitivity on a seeded slice of 500 training examples, the greedy path) and, for each uniform
setting's model bits as the budget, the search's choice within it, compressed. Both accuracies are on the
test split, both sizes are the ledger's model bits (the allocation's never above the uniform's).
Writes per_layer_budget.{csv,md} under --out (default bench/results).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd

from core import budget
from core.compress import compress_run
from core.config import CompressConfig, TrainConfig
from core.data import load_dataset
from core.pipeline import get_or_train
from core.store import RunStore

UNIFORM = [
    CompressConfig(method="kmeans", n_centroids=2),
    CompressConfig(method="kmeans", n_centroids=4),
    CompressConfig(method="kmeans", n_centroids=16),
    CompressConfig(method="pq", subvector_size=2, n_centroids=16),
    CompressConfig(method="pq", subvector_size=4, n_centroids=16),
    CompressConfig(method="pq", subvector_size=4, n_centroids=256),
    CompressConfig(method="pq", subvector_size=8, n_centroids=256),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="2 epochs, 3 uniform settings")
    parser.add_argument("--cache-dir", default=None, help="a run store (default: a temporary one)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    epochs = 2 if args.smoke else args.epochs
    uniform = UNIFORM[:3] if args.smoke else UNIFORM
    store = RunStore(args.cache_dir or tempfile.mkdtemp(prefix="budget-bench-"))
    data = load_dataset("digits")
    rows = []
    for seed in args.seeds:
        cfg = TrainConfig(dataset="digits", model="mlp", hidden=(300, 100), epochs=epochs, batch_size=64, seed=seed)
        run, _ = get_or_train(store, cfg, data=data)
        started = time.perf_counter()
        search = budget.allocate_run(run, CompressConfig(), budget.BudgetRequest(budget_kb=1e6), data=data)
        search_s = time.perf_counter() - started
        print(f"seed {seed}: float {run.test_accuracy:.4f}; search {search_s:.0f} s, {search.evaluations} evaluations")
        for setting in uniform:
            flat, _ = compress_run(run, setting, data=data)
            state = search.within(flat.size.model_bits)
            chosen, _ = compress_run(run, search.config_at(state), data=data)
            assert chosen.size.model_bits == state.model_bits <= flat.size.model_bits
            rows.append(
                {
                    "seed": seed,
                    "float_accuracy": run.test_accuracy,
                    "uniform": setting.label(),
                    "uniform_bits": flat.size.model_bits,
                    "uniform_accuracy": flat.accuracy,
                    "budget_bits": chosen.size.model_bits,
                    "budget_accuracy": chosen.accuracy,
                    "budget_predicted_heldout": state.predicted_accuracy,
                    "gain_points": 100 * (chosen.accuracy - flat.accuracy),
                    "allocation": chosen.compress_config.label(),
                    "search_s": search_s,
                    "search_evaluations": search.evaluations,
                }
            )
            print(
                f"  {setting.label():24} {flat.size.model_bits:>9,} bits {flat.accuracy:.4f} | budget "
                f"{chosen.size.model_bits:>9,} bits {chosen.accuracy:.4f}  ({rows[-1]['gain_points']:+.2f} points)"
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "per_layer_budget.csv", index=False)
    lines = [
        "# A per-layer budget against one setting for every layer, at equal size",
        "",
        f"`python bench/budget.py --seeds {' '.join(map(str, args.seeds))}"
        f"{' --smoke' if args.smoke else f' --epochs {epochs}'}`: digits (8x8), MLP 64-300-100-10, "
        f"{epochs} epochs of Adam, no regularizer. Accuracies on the test split; the search measured on 500 "
        "examples of the training split. The budget of each row is the uniform setting's model bits; "
        "the allocation is the search's choice within it (the highest predicted held-out accuracy among "
        "the greedy path's states and their one-layer changes), one search a seed.",
        "",
        "| uniform setting | seeds | uniform bits | uniform acc (mean) | budget bits (mean) | budget acc (mean) "
        "| gain, points: median [min, max] |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, part in table.groupby("uniform", sort=False):
        gains = list(part["gain_points"])
        lines.append(
            f"| {label} | {len(part)} | {int(part['uniform_bits'].mean()):,} "
            f"| {100 * part['uniform_accuracy'].mean():.2f}% "
            f"| {int(part['budget_bits'].mean()):,} | {100 * part['budget_accuracy'].mean():.2f}% "
            f"| {statistics.median(gains):+.2f} [{min(gains):+.2f}, {max(gains):+.2f}] |"
        )
    per_seed = table.groupby("seed").first()
    lines += [
        "",
        "Search cost per seed: "
        + ", ".join(
            f"seed {seed}: {row.search_evaluations} evaluations, {row.search_s:.0f} s"
            for seed, row in per_seed.iterrows()
        )
        + " (2 shared CPU cores, other work beside it).",
    ]
    (out / "per_layer_budget.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'per_layer_budget.md'}")


if __name__ == "__main__":
    main()
