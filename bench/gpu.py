"""The GPU run: one command that measures what a CUDA device changes, each figure beside the CPU's.

    python bench/gpu.py                 # on a machine with an NVIDIA GPU: about 8 minutes at most
    python bench/gpu.py --dry-run       # every step on tiny sizes, on the CPU (what the test runs)

Steps (each row of the results names the device it ran on):
    tests       the CUDA-related tests (`pytest -k cuda`: the --device checks of the CLI)
    epoch       one training epoch (core.train.train, epochs=1: with its test evaluation and histograms):
                LeNet-300-100 on mnist-5k and Fashion-MNIST, LeNet-5 on both
    regularizer the binary term's cost: an epoch with it (lam 0.02) over one without, per device
    pq          PQ of one 4096 x 4096 layer (d 8, k 256), against faiss's k-means at the same
                settings (faiss on the GPU too when it has one), with the MSE of each
    vgg11       PQ of torchvision's VGG-11 (random weights) FC layers, layer by layer on each device

`core.compress` itself quantizes on the CPU (it moves the weights there); the pq and vgg11 steps
call the k-means it uses (`core.pq.quantize_weight`) with the weights on each device, which is
what a GPU path would run. Results: gpu.json (every measurement) and gpu.md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

from core.config import CompressConfig, TrainConfig

BUDGET_S = 8 * 60


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def timed(device: str, work: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of `work`, the device's queue drained before and after."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = work()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


# ------------------------------------------------------------------------------------------- steps


def step_tests(devices: list[str], dry: bool) -> list[dict]:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "tests/test_cli.py"]
    if dry:
        argv.append("--collect-only")  # the plumbing only: the tests themselves need a tiny store trained
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return [
        {
            "step": "tests",
            "device": ", ".join(device_name(d) for d in devices),
            "seconds": time.perf_counter() - start,
            "passed": proc.returncode == 0,
            "summary": tail,
        }
    ]


def _epoch_seconds(cfg: TrainConfig, device: str, data: Any) -> float:
    """Seconds of one training epoch (the dataset already in memory; a first epoch, so with warm-up)."""
    from core.train import train

    seconds, _ = timed(device, lambda: train(cfg, device=device, data=data))
    return seconds


def step_epoch(devices: list[str], dry: bool) -> list[dict]:
    from core.data import load_dataset

    rows = []
    cases = [("digits", "mlp"), ("digits", "lenet5")] if dry else [
        ("mnist-5k", "mlp"), ("fashion-mnist", "mlp"), ("mnist-5k", "lenet5"), ("fashion-mnist", "lenet5")
    ]  # fmt: skip
    for dataset, model in cases:
        try:
            data = load_dataset(dataset)
        except ValueError as error:
            rows.append({"step": "epoch", "dataset": dataset, "model": model, "device": "-", "unavailable": str(error)})
            continue
        hidden = (32, 16) if dry else (300, 100)
        cfg = TrainConfig(dataset=dataset, model=model, hidden=hidden, epochs=1, seed=0)
        for device in devices:
            rows.append(
                {
                    "step": "epoch",
                    "dataset": dataset,
                    "model": model,
                    "device": device_name(device),
                    "seconds": _epoch_seconds(cfg, device, data),
                    "n_train": len(data.x_train),
                }
            )
    return rows


def step_regularizer(devices: list[str], dry: bool) -> list[dict]:
    from core.data import load_dataset

    dataset = "digits" if dry else "mnist-5k"
    data = load_dataset(dataset)
    hidden = (32, 16) if dry else (300, 100)
    plain = TrainConfig(dataset=dataset, hidden=hidden, epochs=1, seed=0)
    binary = TrainConfig(dataset=dataset, hidden=hidden, epochs=1, seed=0, reg="binary", lam=0.02)
    rows = []
    for device in devices:
        _epoch_seconds(plain, device, data)  # warm-up: the first epoch on a device pays its start-up
        without, with_term = _epoch_seconds(plain, device, data), _epoch_seconds(binary, device, data)
        rows.append(
            {
                "step": "regularizer",
                "dataset": dataset,
                "device": device_name(device),
                "seconds_without": without,
                "seconds_with": with_term,
                "ratio": with_term / without,
            }
        )
    return rows


def _faiss_kmeans(subvectors: torch.Tensor, k: int, n_iter: int, gpu: bool) -> tuple[float, float]:
    """(seconds, MSE) of faiss's k-means of (N, d) subvectors: k-means++-free random init, as faiss does."""
    import faiss
    import numpy as np

    x = np.ascontiguousarray(subvectors.cpu().numpy(), dtype=np.float32)
    start = time.perf_counter()
    kmeans = faiss.Kmeans(x.shape[1], k, niter=n_iter, seed=0, gpu=gpu, max_points_per_centroid=10**9)
    kmeans.train(x)
    distances, _ = kmeans.index.search(x, 1)
    seconds = time.perf_counter() - start
    return seconds, float(distances.sum() / x.size)


def step_pq(devices: list[str], dry: bool) -> list[dict]:
    from core.pq import quantize_weight, reconstruction_mse, to_subvectors

    side, d, k, iters = (64, 4, 16, 2) if dry else (4096, 8, 256, 10)
    cfg = CompressConfig(method="pq", subvector_size=d, n_centroids=k, kmeans_iters=iters)
    weight = torch.randn(side, side, generator=torch.Generator().manual_seed(0)) / side**0.5
    rows = []
    for device in devices:
        on_device = weight.to(device)
        seconds, layer = timed(device, lambda w=on_device: quantize_weight("layer.weight", w, cfg))
        mse = reconstruction_mse(on_device, layer)
        rows.append(
            {"step": "pq", "impl": "core", "device": device_name(device), "shape": [side, side], "d": d, "k": k,
             "iters": iters, "init": cfg.init, "seconds": seconds, "mse": float(mse)}
        )  # fmt: skip
    try:
        import faiss
    except ImportError:
        rows.append({"step": "pq", "impl": "faiss", "device": "-", "unavailable": "faiss is not installed"})
        return rows
    subvectors = to_subvectors(weight, d).reshape(-1, d)  # (out, C, d) -> (out * C, d): one shared codebook
    gpus = [False] + ([True] if not dry and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0 else [])
    for gpu in gpus:
        seconds, mse = _faiss_kmeans(subvectors, k, iters, gpu)
        rows.append(
            {"step": "pq", "impl": "faiss", "device": "cuda (faiss)" if gpu else device_name("cpu"),
             "shape": [side, side], "d": d, "k": k, "iters": iters, "init": "random", "seconds": seconds, "mse": mse}
        )  # fmt: skip
    return rows


def step_vgg11(devices: list[str], dry: bool) -> list[dict]:
    from torchvision.models import vgg11

    from core.models import select_weights
    from core.pq import quantize_weight, reconstruction_mse

    torch.manual_seed(0)
    model = vgg11(weights=None)  # random weights: what is timed is the coding, not what it codes
    layers = select_weights(model)  # its three nn.Linear weights, 25088x4096, 4096x4096, 4096x1000
    if dry:
        layers = layers[-1:]  # the last one only (4096 x 1000)
    d, k, iters = (4, 16, 1) if dry else (8, 256, 5)
    cfg = CompressConfig(method="pq", subvector_size=d, n_centroids=k, kmeans_iters=iters)
    rows = []
    for device in devices:
        total, errors = 0.0, []
        for name, weight in layers:
            on_device = weight.detach().to(device)
            seconds, layer = timed(device, lambda n=name, w=on_device: quantize_weight(n, w, cfg))
            total += seconds
            errors.append(float(reconstruction_mse(on_device, layer)))
            del on_device, layer
        rows.append(
            {"step": "vgg11", "device": device_name(device), "layers": [name for name, _ in layers], "d": d, "k": k,
             "iters": iters, "seconds": total, "mse_per_layer": errors}
        )  # fmt: skip
    return rows


STEPS: dict[str, Callable[[list[str], bool], list[dict]]] = {
    "tests": step_tests,
    "epoch": step_epoch,
    "regularizer": step_regularizer,
    "pq": step_pq,
    "vgg11": step_vgg11,
}


# ----------------------------------------------------------------------------------------- report


def _figure(row: dict) -> str:
    if "unavailable" in row:
        return f"unavailable: {row['unavailable']}"
    if row["step"] == "regularizer":
        return f"{row['seconds_with']:.2f} s with / {row['seconds_without']:.2f} s without = {row['ratio']:.2f}x"
    text = f"{row['seconds']:.2f} s"
    if "mse" in row:
        text += f", MSE {row['mse']:.3g}"
    if row["step"] == "tests":
        text += f", {'passed' if row['passed'] else 'FAILED'}: {row['summary']}"
    return text


def _what(row: dict) -> str:
    if row["step"] == "epoch":
        return f"{row['model']} on {row['dataset']}"
    if row["step"] == "pq":
        shape = "x".join(map(str, row.get("shape", [])))
        return f"{row['impl']} {shape} d={row.get('d')} k={row.get('k')} {row.get('iters')} iters"
    if row["step"] == "vgg11":
        return f"{len(row['layers'])} FC layers, d={row['d']} k={row['k']} {row['iters']} iters"
    return row.get("dataset", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on tiny sizes, on the CPU only")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for gpu.json and gpu.md")
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --dry-run to check the steps on the CPU", file=sys.stderr)
        return 2
    devices = ["cpu"] if args.dry_run else ["cpu", "cuda"]
    started = time.perf_counter()
    rows: list[dict] = []
    for name in args.steps:
        step_start = time.perf_counter()
        rows += STEPS[name](devices, args.dry_run)
        print(f"{name}: {time.perf_counter() - step_start:.1f} s", file=sys.stderr)
    elapsed = time.perf_counter() - started
    env = {
        "dry_run": args.dry_run,
        "devices": [device_name(d) for d in devices],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seconds": elapsed,
        "within_budget": elapsed <= BUDGET_S,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    lines = [
        "# GPU run" + (" (dry run: tiny sizes, CPU only; no figure here is a GPU figure)" if args.dry_run else ""),
        "",
        f"`python bench/gpu.py{' --dry-run' if args.dry_run else ''}`: {elapsed:.0f} s in all "
        f"(budget {BUDGET_S} s); torch {env['torch']}, CUDA {env['cuda']}; devices: {'; '.join(env['devices'])}.",
        "",
        "| step | what | device | figure |",
        "|---|---|---|---|",
    ]
    lines += [f"| {row['step']} | {_what(row)} | {row['device']} | {_figure(row)} |" for row in rows]
    (out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
