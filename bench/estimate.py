"""Calibrate the cost model of a compression (core/methods/pq.py COST_SECONDS, core/pipeline.py
COMPRESSION_COST_SECONDS) on this machine.

Each point is one `compress_run` of a short-trained run (LeNet-300-100 and LeNet-5 on mnist-5k),
timed end to end in CPU seconds on one thread: what a quiet machine's wall clock shows, and what other
processes on a busy machine do not inflate (a page that waits on a compression has its own hard time
limit, core/pipeline.py INLINE_LIMIT_S, for the rest). Its work is counted by the model itself
(`Method.cost_features`, `pipeline.compression_cost_features`); the seconds a unit of each kind of
work takes come from a non-negative least-squares fit of the relative error, and are then scaled up
so that no point took longer than its estimate. Writes bench/results/estimate.json (coefficients,
every point) and estimate.md (the table), and prints the coefficients to paste into the two modules.

    python bench/estimate.py           # ~10 min on 2 busy cores
    python bench/estimate.py --smoke   # a few points, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import torch
from scipy.optimize import nnls

from core.compress import coded_shapes, compress_run
from core.config import CompressConfig, TrainConfig
from core.data import load_dataset
from core.methods.pq import COST_SECONDS
from core.pipeline import COMPRESSION_COST_SECONDS, compression_cost_features, get_or_train
from core.store import RunStore

RESULTS = ROOT / "bench" / "results"


def settings(smoke: bool) -> list[CompressConfig]:
    """A grid that puts each kind of work in front in some point (on 2 shared cores: minutes, not hours)."""
    if smoke:
        return [CompressConfig(method="kmeans", n_centroids=16), CompressConfig(subvector_size=8, n_centroids=64)]
    return [
        CompressConfig(method="float"),
        CompressConfig(method="binarize"),
        CompressConfig(method="kmeans", n_centroids=4),
        CompressConfig(method="kmeans", n_centroids=1024),
        CompressConfig(subvector_size=8, n_centroids=16),
        CompressConfig(subvector_size=8, n_centroids=256),
        CompressConfig(subvector_size=16, n_centroids=1024),
        CompressConfig(subvector_size=8, n_centroids=16, layout="per-chunk"),
        CompressConfig(subvector_size=8, n_centroids=16, weighting="activations"),
        CompressConfig(subvector_size=16, n_centroids=1024, weighting="activations"),
        CompressConfig(subvector_size=8, n_centroids=16, finetune_epochs=1),
        CompressConfig(method="binarize", finetune_epochs=2),
    ]


# The tests' tiny network (digits, 64-32-16-10): the fixed costs of small layers
TINY = [
    CompressConfig(method="kmeans", n_centroids=4),
    CompressConfig(subvector_size=2, n_centroids=16),
    CompressConfig(subvector_size=4, n_centroids=64, weighting="activations"),
    CompressConfig(subvector_size=2, n_centroids=4, finetune_epochs=1),
]
# LeNet-5 (its convs coded too): the conv work of the evaluation and of fine-tuning
LENET5 = [
    CompressConfig(subvector_size=8, n_centroids=16, targets="fc+conv"),
    CompressConfig(method="binarize", finetune_epochs=1, targets="fc+conv"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    kinds = [*COST_SECONDS, *COMPRESSION_COST_SECONDS]
    rows, times, points = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(folder)
        models = ("mlp",) if args.smoke else ("digits", "mlp", "lenet5")
        for model in models:
            if model == "digits":
                train_cfg = TrainConfig(dataset="digits", hidden=(32, 16), epochs=2, lr=3e-3)
            else:
                train_cfg = TrainConfig(dataset="mnist-5k", model=model, epochs=1)
            run_data = load_dataset(train_cfg.dataset)
            run, _ = get_or_train(store, train_cfg, data=run_data)
            for cfg in {"digits": TINY, "mlp": settings(args.smoke), "lenet5": LENET5}[model]:
                method = cfg.method_spec
                work = {**method.cost_features(coded_shapes(run, cfg.targets), cfg)}
                work.update(compression_cost_features(run, cfg))
                started = time.process_time()
                compress_run(run, cfg, data=run_data, device="cpu")
                seconds = time.process_time() - started
                rows.append([work.get(kind, 0.0) for kind in kinds])
                times.append(seconds)
                points.append({"model": model, "label": cfg.label(), "seconds": seconds})
                print(f"{model:6} {cfg.label():40} {seconds:8.3f} s", flush=True)
    features = np.array(rows)
    measured = np.array(times)
    scale = features.max(axis=0)
    scale[scale == 0] = 1.0
    # relative error: each row divided by its own time
    solution, _ = nnls(features / scale / measured[:, None], np.ones(len(measured)))
    coefficients = solution / scale
    estimate = features @ coefficients
    safety = float(np.max(measured / np.maximum(estimate, 1e-9)))
    coefficients *= max(1.0, safety)
    estimate = features @ coefficients
    for point, value in zip(points, estimate):
        point["estimate"] = float(value)
        point["ratio"] = point["seconds"] / float(value)
    result = {
        "coefficients": {kind: float(c) for kind, c in zip(kinds, coefficients)},
        "safety_scale": safety,
        "points": points,
    }
    ratios = [p["ratio"] for p in points]
    if not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "estimate.json").write_text(json.dumps(result, indent=1) + "\n")
        lines = [
            "# Cost model of a compression: measured against estimated (bench/estimate.py)",
            "",
            f"{len(points)} compressions of short runs (the tests' tiny MLP on digits; LeNet-300-100 and "
            f"LeNet-5 with its convs coded, on mnist-5k), CPU seconds on one thread of this machine. Fit: "
            f"non-negative least squares of the relative error, scaled by {safety:.2f} so that none took "
            f"longer than its estimate. "
            f"measured / estimate: median {np.median(ratios):.2f}, min {min(ratios):.2f}, max {max(ratios):.2f}.",
            "",
            "| model | setting | measured s | estimate s | measured / estimate |",
            "| --- | --- | --- | --- | --- |",
            *(
                f"| {p['model']} | {p['label']} | {p['seconds']:.3f} | {p['estimate']:.3f} | {p['ratio']:.2f} |"
                for p in points
            ),
            "",
            "Coefficients (seconds a unit of work):",
            "",
            *(f"- `{kind}`: {value:.4g}" for kind, value in result["coefficients"].items()),
            "",
        ]
        (RESULTS / "estimate.md").write_text("\n".join(lines))
    print(json.dumps(result["coefficients"], indent=1))
    print(f"measured / estimate: median {np.median(ratios):.2f}, min {min(ratios):.2f}, max {max(ratios):.2f}")


if __name__ == "__main__":
    main()
