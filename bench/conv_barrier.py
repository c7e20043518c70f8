"""Past the conv barrier: coding the convolutions too, on LeNet-5; and the public API on VGG-11.

1. LeNet-5 on mnist-5k (8 epochs, Adam): an unregularized run and binary-regularized runs (λ = 0.05
   on the FC layers, and on the FC and conv layers), each compressed over one grid with the FC
   layers coded (the paper) and with the FC and conv layers coded; the best model ratio within 1 point
   of the unregularized run's float accuracy, for each. Through the sweep engine and the run store.
2. VGG-11 from torchvision with random weights (no download), num_classes=10: the time to code every
   nn.Linear and nn.Conv2d weight with PQ d=8 k=256 (shared, 20 Lloyd iterations) through
   `core.compress`, on this CPU, and the resulting model ratio.

    python bench/conv_barrier.py             # ~15 min on 2 cores; writes bench/results/conv_barrier.{json,md}
    python bench/conv_barrier.py --smoke     # tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

import core
from core.config import CompressConfig, TrainConfig
from core.experiments import compression_grid, run_sweep
from core.store import RunStore

BUDGET_POINTS = 1.0


def lenet_block(store: RunStore, smoke: bool) -> dict:
    base = dict(dataset="digits" if smoke else "mnist-5k", model="lenet5", epochs=1 if smoke else 8, batch_size=64)
    runs = [
        TrainConfig(**base),
        TrainConfig(**base, reg="binary", lam=0.05, warmup_epochs=0 if smoke else 2),
        TrainConfig(**base, reg="binary", lam=0.05, warmup_epochs=0 if smoke else 2, reg_targets="fc+conv"),
    ]
    grid: list[CompressConfig] = []
    ks = [16] if smoke else [4, 16, 64, 256]
    dims = [5] if smoke else [4, 5, 8, 10, 25]
    for targets in ("fc", "fc+conv"):
        grid += compression_grid(["float", "binarize", "kmeans", "pq"], dims, ks, fixed={"targets": targets})
        if not smoke:  # centroid fine-tuning on the settings that code the most
            grid += compression_grid(["binarize", "pq"], [5, 10, 25], [16, 64], finetune_epochs=[3],
                                     fixed={"targets": targets})  # fmt: skip
    started = time.perf_counter()
    result = run_sweep(store, runs, grid, device="cpu")
    seconds = time.perf_counter() - started
    float_acc = next(r.test_accuracy for r in result.runs if r.config.reg == "none")
    best: dict[str, dict] = {}
    for point in result.points:
        if point.compress_config.method == "float":
            continue
        drop = 100 * (float_acc - point.accuracy)
        key = f"{point.compress_config.targets} coded, run {point.train_config.label()}"
        if drop <= BUDGET_POINTS + 1e-9 and point.size.model_ratio > best.get(key, {}).get("model_ratio", 0):
            best[key] = {"compression": point.label(), "model_ratio": round(point.size.model_ratio, 2),
                         "fc_ratio": round(point.size.fc_ratio, 2), "accuracy": round(point.accuracy, 4),
                         "drop_points": round(drop, 2)}  # fmt: skip
    return {
        "setting": base,
        "float_accuracy_unregularized": float_acc,
        "points": len(result.points),
        "skipped": len(result.skipped),
        "seconds": round(seconds, 1),
        "best_model_ratio_within_1_point": dict(sorted(best.items())),
    }


def vgg_block(smoke: bool) -> dict:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg11(num_classes=10).eval()
    cfg = CompressConfig(
        method="pq", subvector_size=8, n_centroids=16 if smoke else 256, kmeans_iters=1 if smoke else 20
    )
    layers = ["features.0"] if smoke else ["*"]
    started = time.perf_counter()
    packed = core.compress(model, cfg, layers=layers)
    seconds = time.perf_counter() - started
    return {
        "model": "torchvision vgg11(num_classes=10), random weights",
        "parameters": sum(p.numel() for p in model.parameters()),
        "compression": cfg.label(),
        "coded_layers": len(packed.layers),
        "seconds_cpu": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "model_ratio": round(packed.size.model_ratio, 2),
        "coded_ratio": round(packed.size.coded_ratio, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--cache-dir", default=str(ROOT / "bench" / "cache"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["lenet", "vgg"])
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU"}
    if "lenet" not in args.skip:
        result["lenet5"] = lenet_block(RunStore(args.cache_dir), args.smoke)
        print(json.dumps(result["lenet5"], indent=1), flush=True)
    if "vgg" not in args.skip:
        result["vgg11"] = vgg_block(args.smoke)
        print(json.dumps(result["vgg11"], indent=1), flush=True)
    (out / "conv_barrier.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Past the conv barrier ({result['machine']})", ""]
    if "lenet5" in result:
        block = result["lenet5"]
        lines += [
            f"LeNet-5 on {block['setting']['dataset']}, {block['setting']['epochs']} epochs; float accuracy of the "
            f"unregularized run {100 * block['float_accuracy_unregularized']:.2f}%; {block['points']} points "
            f"({block['seconds']} s). Best model ratio within {BUDGET_POINTS:g} point of that float accuracy:",
            "",
            "| coded layers, run | compression | model ratio | coded-layer ratio | accuracy | drop (points) |",
            "|---|---|---|---|---|---|",
            *[
                f"| {key} | {v['compression']} | {v['model_ratio']}x | {v['fc_ratio']}x | "
                f"{100 * v['accuracy']:.2f}% | {v['drop_points']} |"
                for key, v in block["best_model_ratio_within_1_point"].items()
            ],
            "",
        ]
    if "vgg11" in result:
        v = result["vgg11"]
        lines += [
            f"VGG-11 ({v['parameters']:,} parameters, random weights): {v['compression']} of all {v['coded_layers']} "
            f"coded layers in {v['seconds_cpu']} s on this CPU ({v['torch_threads']} torch threads); model ratio "
            f"{v['model_ratio']}x. No GPU was lent to this task: no GPU figure.",
        ]
    (out / "conv_barrier.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
