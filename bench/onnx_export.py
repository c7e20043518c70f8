"""The ONNX export, measured (named onnx_export.py: a bench/onnx.py would shadow the onnx package): file size
against the bit accounting and against the float .onnx,
ONNX Runtime (CPU) latency of the coded graph against the float graph, and export time.

Models: LeNet-300-100 trained on mnist-5k (5 epochs) at PQ d=8 k=32 (the headline setting), its
outputs and accuracy in ONNX Runtime against our decoded PyTorch model on the test split; LeNet-5
(random weights) with FC and conv coded at PQ d=5 k=64; VGG-11 from torchvision (random weights,
224x224 inputs) with all 11 Linear and Conv2d weights coded at PQ d=8 k=16 through core.compress
(3 Lloyd iterations, k=16: the codes' quality does not change a size or a latency, and k-means over its
16 M subvectors is what a loaded 2-core machine can afford; 1 round of session creation and export).

Every comparison is interleaved (A B A B ..., the median of the per-pair ratios and their spread
printed). Latency is measured twice: with ONNX Runtime's default graph optimizations (the decode is
constant-folded once, when the session is created, so the session's creation time carries it) and
with all optimizations disabled (the decode runs on every call: its full cost). One ORT thread.

    python bench/onnx_export.py            # the LeNets ~7 min, VGG-11 ~16 min (2 CPU cores, load ~11-18)
    python bench/onnx_export.py --smoke    # no VGG-11, fewer rounds
    python bench/onnx_export.py --no-vgg   # the LeNets only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import onnx
import onnxruntime as ort
import torch

import core
from core.compress import compress_run
from core.config import CompressConfig, TrainConfig
from core.data import load_dataset
from core.export import build_payload, from_bytes, model_from_payload, to_bytes
from core.methods import quantize_model
from core.models import build_model
from core.onnx_export import export_onnx, onnx_bytes
from core.pipeline import get_or_train
from core.size import size_report
from core.store import RunStore

RESULTS = ROOT / "bench" / "results"


def interleaved(methods: dict, rounds: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds of each zero-argument callable, called A B A B ... (`rounds` timed rounds, after one
    untimed warm-up round unless `warmup` is False)."""
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for index in range(rounds + int(warmup)):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            if index >= int(warmup):
                seconds[name].append(time.perf_counter() - start)
    return seconds


def pair_ratio(seconds: dict[str, list[float]], a: str, b: str) -> dict:
    """median and spread (min, max) of a / b over neighbouring pairs."""
    ratios = [x / y for x, y in zip(seconds[a], seconds[b])]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "pairs": len(ratios)}


def session(blob: bytes, optimized: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])


def size_parts(blob: bytes, plain: bytes) -> dict:
    """Bytes of a coded ONNX file: the compressed file's own tensors (codes, codebooks or alphas, and
    the float rest: every initializer of the float graph), the decode's constants (unpack tables,
    shapes), and the rest of the file (graph structure: nodes, names, types)."""
    proto = onnx.load_from_string(blob)
    rest = {t.name for t in onnx.load_from_string(plain).graph.initializer}
    payload = constants = 0
    for tensor in proto.graph.initializer:
        size = onnx.numpy_helper.to_array(tensor).nbytes
        if tensor.name in rest or tensor.name.endswith((".codes", ".codebooks", ".alpha")):
            payload += size
        else:
            constants += size
    return {"file": len(blob), "payload": payload, "constants": constants, "structure": len(blob) - payload - constants}


def measure(
    name: str, coded: bytes, plain: bytes, accounted_bits: int, x: np.ndarray, rounds: int, export, slow_rounds: int = 2
) -> dict:
    sizes = size_parts(coded, plain)
    accounted = accounted_bits / 8
    row: dict = {
        "model": name,
        "accounted_bytes": accounted,
        "onnx_bytes": sizes["file"],
        "onnx_payload_bytes": sizes["payload"],
        "onnx_decode_constant_bytes": sizes["constants"],
        "onnx_structure_bytes": sizes["structure"],
        "fixed_overhead_bytes": sizes["constants"] + sizes["structure"],
        "onnx_over_accounted": sizes["file"] / accounted,
        "payload_over_accounted": sizes["payload"] / accounted,
        "float_onnx_bytes": len(plain),
        "float_over_coded_onnx": len(plain) / sizes["file"],
        "batch": int(x.shape[0]),
    }
    for optimized in (True, False):
        tag = "optimized" if optimized else "no_opt"
        made = interleaved(
            {"coded": lambda o=optimized: session(coded, o), "float": lambda o=optimized: session(plain, o)},
            slow_rounds,
            warmup=slow_rounds > 1,
        )
        row[f"session_create_s_{tag}"] = {k: statistics.median(v) for k, v in made.items()}
        coded_session, float_session = session(coded, optimized), session(plain, optimized)
        seconds = interleaved(
            {
                "coded": lambda s=coded_session: s.run(None, {"input": x}),
                "float": lambda s=float_session: s.run(None, {"input": x}),
            },
            rounds,
        )
        row[f"latency_s_{tag}"] = {k: statistics.median(v) for k, v in seconds.items()}
        row[f"latency_ratio_{tag}"] = pair_ratio(seconds, "coded", "float")
        same = np.abs(coded_session.run(None, {"input": x})[0] - float_session.run(None, {"input": x})[0]).max()
        row[f"max_abs_coded_vs_float_graph_{tag}"] = float(same)
    export_seconds = interleaved(export, slow_rounds if slow_rounds < 2 else 5, warmup=slow_rounds > 1)
    row["export_s"] = {k: statistics.median(v) for k, v in export_seconds.items()}
    row["export_ratio_coded_vs_float"] = pair_ratio(export_seconds, "coded", "float")
    print(json.dumps(row, default=float), flush=True)
    return row


def lenet300(store: RunStore, rounds: int) -> tuple[dict, dict]:
    """The headline: trained, PQ d=8 k=32; accuracy in ONNX Runtime on the test split."""
    run, _ = get_or_train(store, TrainConfig(dataset="mnist-5k", model="mlp", epochs=5, seed=0), device="cpu")
    cfg = CompressConfig(method="pq", subvector_size=8, n_centroids=32)
    record, blob = compress_run(run, cfg, device="cpu")
    data = load_dataset("mnist-5k")
    coded, plain = onnx_bytes(blob), onnx_bytes(blob, coded=False)
    tensors, meta = from_bytes(blob)
    with torch.no_grad():
        ours = model_from_payload(tensors, meta)(data.x_test).numpy()
    outputs = session(coded, True).run(None, {"input": data.x_test.numpy()})[0]
    correct = int((torch.from_numpy(outputs).argmax(1) == data.y_test).sum())
    check = {
        "test_samples": len(data.y_test),
        "max_abs_ort_vs_pytorch": float(np.abs(outputs - ours).max()),
        "accuracy_ort": correct / len(data.y_test),
        "accuracy_pytorch_record": record.accuracy,
        "model_ratio": record.size.model_ratio,
        "safetensors_bytes": record.file_bytes,
        "checker": "onnx.checker.check_model(full_check=True) passed (inside onnx_bytes)",
    }
    x = data.x_test[:256].numpy()
    export = {"coded": lambda: onnx_bytes(blob), "float": lambda: onnx_bytes(blob, coded=False)}
    return measure("LeNet-300-100 pq d=8 k=32", coded, plain, record.size.model_bits, x, rounds, export), check


def lenet5(rounds: int) -> dict:
    torch.manual_seed(0)
    shape = (1, 28, 28)
    train_cfg = TrainConfig(dataset="mnist-5k", model="lenet5")
    cfg = CompressConfig(method="pq", subvector_size=5, n_centroids=64, targets="fc+conv")
    model = build_model("lenet5", shape, 10)
    layers = quantize_model(model, cfg)
    tensors, meta = build_payload(model.state_dict(), layers, train_cfg, cfg, shape, 10)
    blob = to_bytes(tensors, meta)
    coded_names = {layer.name for layer in layers}
    n_rest = sum(v.numel() for k, v in model.state_dict().items() if k not in coded_names)
    bits = size_report([layer.shape for layer in layers], n_rest, cfg).model_bits
    x = torch.randn(256, *shape).numpy()
    export = {"coded": lambda: onnx_bytes(blob), "float": lambda: onnx_bytes(blob, coded=False)}
    return measure(
        "LeNet-5 pq d=5 k=64 +conv", onnx_bytes(blob), onnx_bytes(blob, coded=False), bits, x, rounds, export
    )


def vgg11(rounds: int) -> dict:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None).eval()
    cfg = CompressConfig(method="pq", subvector_size=8, n_centroids=16, kmeans_iters=3, init="random")
    started = time.perf_counter()
    packed = core.compress(model, cfg, layers=["features.*", "classifier.*"])
    compress_s = time.perf_counter() - started
    example = torch.randn(1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as folder:  # the file API, once
        written = export_onnx(packed, Path(folder) / "vgg11.onnx", model=model, example_input=example)
        coded = (Path(folder) / "vgg11.onnx").read_bytes()
    assert written == len(coded)
    plain = onnx_bytes(packed, model=model, example_input=example, coded=False)
    export = {
        "coded": lambda: onnx_bytes(packed, model=model, example_input=example),
        "float": lambda: onnx_bytes(packed, model=model, example_input=example, coded=False),
    }
    row = measure(
        "VGG-11 pq d=8 k=16 (all 11 layers)", coded, plain, packed.size.model_bits, example.numpy(), rounds, export, 1
    )
    row["compress_s"] = compress_s
    return row


def report(rows: list[dict], check: dict, smoke: bool) -> str:
    lines = [
        "# ONNX export: size, ONNX Runtime latency, export time (`python bench/onnx_export.py`)",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), onnx {onnx.__version__}, "
        f"onnxruntime {ort.__version__}, torch {torch.__version__}; ORT CPU, 1 thread.{' SMOKE run.' if smoke else ''}",
        "",
        "## Checked in ONNX Runtime (LeNet-300-100, mnist-5k, 5 epochs, PQ d=8 k=32)",
        "",
        "- onnx.checker (full check) passes; ORT outputs vs our decoded PyTorch model on the "
        f"{check['test_samples']:,} test images: max |diff| = {check['max_abs_ort_vs_pytorch']:.2e}",
        f"- accuracy: ORT {check['accuracy_ort']:.4%}, PyTorch (the record) {check['accuracy_pytorch_record']:.4%}; "
        f"model ratio {check['model_ratio']:.2f}x; our .safetensors {check['safetensors_bytes']:,} bytes",
        "",
        "## Size",
        "",
        "The coded .onnx = the compressed file's tensors (codes, codebooks, float rest; their bytes against the "
        "accounted bits / 8 in the 4th column: the difference is each layer's codes padded to whole bytes) + a "
        "fixed overhead: the decode's constants (unpack tables, shapes) and the graph structure (nodes, names, types).",
        "",
        "| model | accounted bits / 8 | .onnx coded (/ accounted) | its tensors / accounted | fixed overhead: "
        "constants + structure | .onnx float | float / coded |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['accounted_bytes']:,.0f} | {r['onnx_bytes']:,} ({r['onnx_over_accounted']:.3f}x) | "
            f"{r['payload_over_accounted']:.5f} | "
            f"{r['onnx_decode_constant_bytes']:,} + {r['onnx_structure_bytes']:,} B | "
            f"{r['float_onnx_bytes']:,} | "
            f"{r['float_over_coded_onnx']:.1f}x |"
        )
    lines += [
        "",
        "## ONNX Runtime latency per batch, coded graph / float graph (interleaved, median [min, max] of pairs)",
        "",
        "| model | batch | default optimizations (decode folded) | session creation coded / float | "
        "no optimizations (decode every call) | coded, float per batch (no opt) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["latency_ratio_optimized"], r["latency_ratio_no_opt"]
        made, slow = r["session_create_s_optimized"], r["latency_s_no_opt"]
        lines.append(
            f"| {r['model']} | {r['batch']} | "
            f"{a['median']:.3f} [{a['min']:.3f}, {a['max']:.3f}] ({a['pairs']} pairs) | "
            f"{made['coded']:.3f} s / {made['float']:.3f} s | {b['median']:.2f} [{b['min']:.2f}, {b['max']:.2f}] | "
            f"{slow['coded'] * 1e3:.1f} ms, {slow['float'] * 1e3:.1f} ms |"
        )
    lines += ["", "## Export time (torch export + rewrite + onnx.checker), coded / float graph (interleaved)", ""]
    lines += ["| model | coded | float | ratio median [min, max] |", "|---|---|---|---|"]
    for r in rows:
        e, q = r["export_s"], r["export_ratio_coded_vs_float"]
        lines.append(
            f"| {r['model']} | {e['coded']:.2f} s | {e['float']:.2f} s | "
            f"{q['median']:.2f} [{q['min']:.2f}, {q['max']:.2f}] |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--no-vgg", action="store_true", help="the two LeNets only")
    parser.add_argument("--vgg-only", action="store_true", help="VGG-11 only, added to the stored results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    scale = 0.1 if args.smoke else 1.0  # rounds: enough pairs for a stable median of millisecond calls
    store = RunStore(ROOT / "bench" / "cache" / "onnx")
    RESULTS.mkdir(exist_ok=True)
    suffix = "_smoke" if args.smoke else ""

    def publish(rows: list[dict], check: dict) -> None:  # after each model: a long run keeps what it measured
        (RESULTS / f"onnx{suffix}.json").write_text(json.dumps({"check": check, "rows": rows}, indent=1, default=float))
        (RESULTS / f"onnx{suffix}.md").write_text(report(rows, check, args.smoke))

    if args.vgg_only:
        stored = json.loads((RESULTS / f"onnx{suffix}.json").read_text())
        rows, check = [r for r in stored["rows"] if not r["model"].startswith("VGG")], stored["check"]
    else:
        row, check = lenet300(store, int(200 * scale))
        rows = [row, lenet5(int(40 * scale))]
        publish(rows, check)
    if not (args.smoke or args.no_vgg):
        rows.append(vgg11(3))
        publish(rows, check)
    print(report(rows, check, args.smoke))


if __name__ == "__main__":
    main()
