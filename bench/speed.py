"""Speed of the core against references: every ratio measured interleaved (A B A B ..., the ratio
of each pair of neighbouring calls, the median of the pairs and their spread printed beside it).

1. PQ: our fit + encode (core.pq.quantize_weight) against faiss.ProductQuantizer (per-chunk layout,
   same d, k = 2^nbits, at most the same Lloyd iterations (ours and scikit-learn stop at a fixed point,
   faiss runs them all), random init like faiss, subsampling disabled) and scikit-learn KMeans per
   chunk (n_init=1, same iterations, random init); time and reconstruction MSE.
   Also the shared layout (one codebook a layer) against faiss.Kmeans on the same subvectors.
2. Regularizer cost: epoch time with binary / pq against none (LeNet-300-100 on mnist-5k and fashion-mnist).
3. Training throughput: core.train.train_epoch against a minimal plain PyTorch loop.
4. App recompute: recompress a stored run with a new k (cold) and the cached lookup (warm); frontier
   data from a store of 200 points (list + DataFrame + core.analysis.pareto_mask, the app's own
   Pareto set, and core.charts.frontier_figure).

faiss is a bench dependency only; core never imports it.

    python bench/speed.py            # ~5 min on 2 shared CPU cores
    python bench/speed.py --smoke    # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from core import pq as core_pq
from core.analysis import pareto_mask, point_rows
from core.config import CompressConfig, TrainConfig
from core.data import DatasetUnavailable, load_dataset
from core.models import build_model
from core.pipeline import get_or_compress, get_or_train
from core.regularizers import Regularizer
from core.store import RunStore
from core.train import train_epoch

DEVICE = f"cpu ({os.cpu_count()} cores)"


def median_time(fn, repeats: int) -> tuple[float, object]:
    """(median seconds over `repeats` calls, result of the last call): for absolute times only
    (the app's < 1 s targets); every comparison goes through `interleaved`."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


@dataclass
class Timings:
    """Seconds of each method in each round, and what its last call returned."""

    seconds: dict[str, list[float]]
    results: dict[str, object]

    def ratio(self, method: str, reference: str) -> tuple[float, float, float, int]:
        """(median, min, max, pairs) of the per-round ratios method / reference: each ratio pairs two
        calls made one right after the other, so a load change hits both alike."""
        pairs = [m / r for m, r in zip(self.seconds[method], self.seconds[reference])]
        return statistics.median(pairs), min(pairs), max(pairs), len(pairs)

    def median(self, method: str) -> float:
        return statistics.median(self.seconds[method])


def interleaved(
    methods: dict[str, object], rounds: int, warmup: bool = True, only_first: dict | None = None
) -> Timings:
    """Time `methods` (name -> zero-argument callable) A B C A B C ...: `rounds` rounds, each
    calling every method once in turn, so that every ratio is taken between neighbours in time.
    `only_first`: name -> n, methods too slow to repeat, timed in the first n rounds only (their
    ratios then pair with the reference's calls of the same rounds). A first untimed round warms
    caches and allocators."""
    only_first = only_first or {}
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    results: dict[str, object] = {}
    for index in range(rounds + int(warmup)):
        timed = index >= int(warmup)
        for name, fn in methods.items():
            limit = only_first.get(name)
            if limit is not None and (not timed or index - int(warmup) >= limit):
                continue
            start = time.perf_counter()
            results[name] = fn()  # type: ignore[operator]
            if timed:
                seconds[name].append(time.perf_counter() - start)
    return Timings(seconds, results)


# ------------------------------------------------------------------------------------------ 1. PQ


def pad_columns(weight: np.ndarray, d: int) -> np.ndarray:
    """(out, in) -> (out, ceil(in / d) * d), zero-padded like core.pq.to_subvectors."""
    pad = math.ceil(weight.shape[1] / d) * d - weight.shape[1]
    return np.pad(weight, ((0, 0), (0, pad)))


def ours_pq(weight: torch.Tensor, d: int, k: int, iters: int, layout: str, init: str) -> float:
    cfg = CompressConfig(method="pq", subvector_size=d, n_centroids=k, layout=layout, kmeans_iters=iters, init=init)
    layer = core_pq.quantize_weight("w", weight, cfg)
    return core_pq.reconstruction_mse(weight, layer)


def faiss_pq(weight: np.ndarray, d: int, k: int, iters: int) -> float:
    import faiss

    x = np.ascontiguousarray(pad_columns(weight, d), dtype=np.float32)  # (out, in_padded)
    n_sub = x.shape[1] // d
    quantizer = faiss.ProductQuantizer(x.shape[1], n_sub, int(math.log2(k)))
    quantizer.cp.niter = iters
    # faiss subsamples to max_points_per_centroid * k training points (default 256); disabled so
    # that every method sees every subvector (it never triggers here anyway: out <= 256 * k).
    quantizer.cp.max_points_per_centroid = 1 << 30
    quantizer.cp.min_points_per_centroid = 1  # silences the "please provide at least" warning
    quantizer.train(x)
    codes = quantizer.compute_codes(x)
    recon = quantizer.decode(codes)[:, : weight.shape[1]]
    return float(((weight - recon) ** 2).mean())


def faiss_shared(weight: np.ndarray, d: int, k: int, iters: int) -> float:
    import faiss

    x = np.ascontiguousarray(pad_columns(weight, d).reshape(-1, d), dtype=np.float32)  # (n_sub, d)
    km = faiss.Kmeans(d, k, niter=iters, seed=0, max_points_per_centroid=1 << 30, min_points_per_centroid=1)
    km.train(x)
    _, codes = km.index.search(x, 1)
    recon = km.centroids[codes[:, 0]].reshape(weight.shape[0], -1)[:, : weight.shape[1]]
    return float(((weight - recon) ** 2).mean())


def sklearn_pq(weight: np.ndarray, d: int, k: int, iters: int) -> float:
    from sklearn.cluster import KMeans

    x = pad_columns(weight, d).astype(np.float32)
    recon = np.empty_like(x)
    for j in range(x.shape[1] // d):
        chunk = x[:, j * d : (j + 1) * d]  # (out, d): the subvectors at chunk position j
        km = KMeans(
            n_clusters=k, n_init=1, max_iter=iters, tol=0.0, init="random", random_state=j, algorithm="lloyd"
        ).fit(chunk)
        recon[:, j * d : (j + 1) * d] = km.cluster_centers_[km.predict(chunk)]
    return float(((weight - recon[:, : weight.shape[1]]) ** 2).mean())


def bench_pq(cases: list[tuple[str, np.ndarray, int, int]], iters: int, rounds: int, sklearn_rounds: int) -> list[dict]:
    rows = []
    reference = "faiss ProductQuantizer"
    for name, weight, d, k in cases:
        tensor = torch.from_numpy(weight)
        # The 4096 x 4096 case costs tens of seconds a fit on 2 cores: no k-means++ row (its
        # sequential init is the slow part; see RESULTS.md).
        big = weight.size > 4_000_000
        methods = {
            reference: partial(faiss_pq, weight, d, k, iters),
            "ours (random init)": partial(ours_pq, tensor, d, k, iters, "per-chunk", "random"),
        }
        if not big:
            methods["ours (kmeans++ init, the default)"] = partial(
                ours_pq, tensor, d, k, iters, "per-chunk", "kmeans++"
            )
        methods["scikit-learn KMeans per chunk"] = partial(sklearn_pq, weight, d, k, iters)
        timings = interleaved(
            methods, rounds, warmup=not big, only_first={"scikit-learn KMeans per chunk": sklearn_rounds}
        )
        for method in methods:
            rows.append(pq_row("per-chunk", name, weight, d, k, method, timings, reference))
        print_rows(rows[-len(methods) :])
    return rows


def bench_shared(cases: list[tuple[str, np.ndarray, int, int]], iters: int, rounds: int) -> list[dict]:
    rows = []
    reference = "faiss Kmeans"
    for name, weight, d, k in cases:
        tensor = torch.from_numpy(weight)
        methods = {
            reference: partial(faiss_shared, weight, d, k, iters),
            "ours (random init)": partial(ours_pq, tensor, d, k, iters, "shared", "random"),
            "ours (kmeans++ init, the default)": partial(ours_pq, tensor, d, k, iters, "shared", "kmeans++"),
        }
        timings = interleaved(methods, rounds)
        for method in methods:
            rows.append(pq_row("shared", name, weight, d, k, method, timings, reference))
        print_rows(rows[-len(methods) :])
    return rows


def pq_row(layout, name, weight, d, k, method, timings: Timings, reference: str) -> dict:
    ratio, low, high, pairs = timings.ratio(method, reference)
    mse, ref_mse = timings.results[method], timings.results[reference]
    return {
        "section": "pq",
        "case": f"{name} {weight.shape[0]}x{weight.shape[1]} d={d} k={k} {layout}",
        "method": method,
        "seconds": timings.median(method),
        "mse": mse,
        "time_ratio_vs_faiss": ratio,
        "ratio_min": low,
        "ratio_max": high,
        "pairs": pairs,
        "mse_rel_vs_faiss": (mse / ref_mse - 1) if ref_mse > 0 else (0.0 if mse == 0 else math.inf),
        "device": DEVICE,
    }


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        extra = "  ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r.items()
            if k not in ("section", "device")
        )
        print(f"  {extra}", flush=True)


# ----------------------------------------------------------------------------- 2.-3. training


# One round of epochs: each ratio pairs two epochs run one right after the other.
EPOCH_ROUND = ("plain PyTorch loop", "core train_epoch, reg none", "core train_epoch, reg binary",
               "core train_epoch, reg none (2)", "core train_epoch, reg pq (d=8 k=16)")  # fmt: skip
EPOCH_RATIOS = {  # method -> (reference, target)
    "core train_epoch, reg none": ("plain PyTorch loop", "<= 1.10 (vs plain)"),
    "core train_epoch, reg binary": ("core train_epoch, reg none", "<= 1.10 (vs reg none)"),
    "core train_epoch, reg pq (d=8 k=16)": ("core train_epoch, reg none (2)", "<= 1.25 (vs reg none)"),
}


def timed_epochs(cfg: TrainConfig, data, rounds: int) -> Timings:
    """Epoch seconds of a minimal plain PyTorch loop and of core train_epoch with reg none / binary /
    pq (refresh included, as in core.train.train), interleaved epoch by epoch: plain, none, binary,
    none, pq, plain, none, ... Each model trains on from epoch to epoch, as in a real run."""
    variants = {
        EPOCH_ROUND[0]: None,
        EPOCH_ROUND[1]: replace(cfg, reg="none", lam=0.0),
        EPOCH_ROUND[2]: replace(cfg, reg="binary", lam=0.02),
        EPOCH_ROUND[3]: replace(cfg, reg="none", lam=0.0),
        EPOCH_ROUND[4]: replace(cfg, reg="pq", lam=1.0, reg_subvector_size=8, reg_centroids=16),
    }
    device = torch.device("cpu")

    def epoch_runner(vcfg: TrainConfig | None):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.input_shape, data.n_classes, cfg.hidden)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        generator = torch.Generator().manual_seed(cfg.seed)
        reg = Regularizer.from_config(vcfg) if vcfg else None
        epoch = [0]

        def run() -> None:
            if reg is None:
                plain_epoch(model, data.x_train, data.y_train, optimizer, cfg.batch_size, generator)
            else:
                if reg.active:
                    reg.refresh(model, epoch[0])
                train_epoch(model, data.x_train, data.y_train, optimizer, reg, vcfg, epoch[0], generator, device)
            epoch[0] += 1

        return run

    return interleaved({name: epoch_runner(vcfg) for name, vcfg in variants.items()}, rounds)


def plain_epoch(model, x_train, y_train, optimizer, batch_size, generator) -> None:
    """The reference: pytorch/examples-style loop over in-memory tensors."""
    model.train()
    order = torch.randperm(len(x_train), generator=generator)
    for start in range(0, len(x_train), batch_size):
        index = order[start : start + batch_size]
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


# ---------------------------------------------------------------------------------- 4. the app


def bench_app(run_cfg: TrainConfig, n_points: int, repeats: int, source: RunStore) -> list[dict]:
    rows = []
    data = load_dataset(run_cfg.dataset)  # the app holds it in st.cache_resource
    run, _ = get_or_train(source, run_cfg, device="cpu", data=data)
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        store.save_run(run)
        cold, warm = [], []
        ks = [16, 32, 64, 128, 256, 8, 4, 512][: max(repeats, 3)]
        for k in ks:  # a slider move to a k never computed: cold
            cfg = CompressConfig(method="pq", subvector_size=8, n_centroids=k)
            start = time.perf_counter()
            get_or_compress(store, run, cfg, device="cpu", data=data)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            _, cached = get_or_compress(store, run, cfg, device="cpu", data=data)  # moved back: warm
            warm.append(time.perf_counter() - start)
            assert cached
        rows.append(app_row("recompress a stored run, new k (cold, computed + stored)", cold, run_cfg))
        rows.append(app_row("recompress a stored run, k seen before (warm, store lookup)", warm, run_cfg))

        # A store of n_points real compressions (the store verifies every entry it lists, so
        # relabelled copies would not count): cheap settings, one k-means iteration, varied seeds.
        i = 0
        while len(store.list_compressions()) < n_points:
            cfg = CompressConfig(method="pq", subvector_size=8, n_centroids=8, kmeans_iters=1, seed=1000 + i)
            get_or_compress(store, run, cfg, device="cpu", data=data)
            i += 1
        from core import charts

        def frontier_data():
            points = store.list_compressions()
            frame = point_rows(points)
            mask = pareto_mask(frame["fc_ratio"].tolist(), frame["accuracy"].tolist(), larger_is_better=True)
            return points, frame, mask

        t_data, (points, frame, mask) = median_time(frontier_data, repeats)
        rows.append(
            app_row(
                f"frontier data from a store of {len(frame)} points (list_compressions + DataFrame + Pareto)",
                [t_data],
                run_cfg,
            )
        )
        t_fig, _ = median_time(lambda: charts.frontier_figure(points, mask), repeats)
        rows.append(app_row(f"core.charts.frontier_figure of {len(frame)} points", [t_fig], run_cfg))
        t_all, _ = median_time(lambda: charts.frontier_figure(*frontier_data()[::2]), repeats)
        rows.append(app_row(f"both: store -> frontier figure ({len(frame)} points)", [t_all], run_cfg))
    return rows


def app_row(what: str, times: list[float], cfg: TrainConfig) -> dict:
    row = {
        "section": "app",
        "case": f"{what}; {cfg.dataset} {cfg.model}",
        "method": "core",
        "seconds": statistics.median(times),
        "max_seconds": max(times),
        "n": len(times),
        "target": "< 1 s",
        "met": statistics.median(times) < 1.0,
        "device": DEVICE,
    }
    print_rows([row])
    return row


def speed_markdown(frame: pd.DataFrame, env: dict) -> str:
    """The speed table for RESULTS.md: one line a measurement, the ratio its target is about."""
    lines = [
        f"device: {env['device']}, torch {env['torch']} ({env['torch_threads']} threads), "
        f"faiss {env.get('faiss', '-')} ({env.get('faiss_threads', '-')} threads), "
        f"k-means iterations {env['kmeans_iters']}; ratios: median of {env['rounds']} interleaved pairs "
        f"({env['epoch_rounds']} for Fashion-MNIST epochs), [min, max] of the pairs beside it\n",
        "| section | case | method | seconds (median) | ratio [min, max] | MSE vs faiss | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in frame.to_dict("records"):
        if r["section"] == "pq":
            ratio = f"{r['time_ratio_vs_faiss']:.2f}x faiss [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}]"
            mse = f"{100 * r['mse_rel_vs_faiss']:+.2f}%"
            target = "time <= 1.5x faiss, MSE <= faiss + 1%"
            met = (
                "reference"
                if r["method"].startswith("faiss")
                else ("yes" if r["time_ratio_vs_faiss"] <= 1.5 and r["mse_rel_vs_faiss"] <= 0.01 else "no")
            )
        elif r["section"] == "train":
            ratio, mse, target = f"{r['ratio']:.2f}x [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}]", "", r["target"]
            met = "yes" if r["met"] else "no"
        else:
            ratio, mse, target, met = "", "", r["target"], "yes" if r["met"] else "no"
        lines.append(
            f"| {r['section']} | {r['case']} | {r['method']} | {r['seconds']:.4f} | {ratio} | {mse} | "
            f"{target} | {met} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat, seconds")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--cache-dir", help="run store for the trained runs (default bench/cache)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (pairs) per comparison")
    parser.add_argument("--epoch-rounds", type=int, default=9, help="interleaved rounds of epochs")
    parser.add_argument("--skip", nargs="*", default=[], choices=["pq", "train", "app"])
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repeats = 1 if args.smoke else args.rounds
    iters = 5 if args.smoke else 20
    tmp = tempfile.TemporaryDirectory()
    source = RunStore(args.cache_dir or (tmp.name if args.smoke else ROOT / "bench" / "cache"))
    if args.smoke:
        run_cfg = TrainConfig(dataset="digits", model="mlp", hidden=(32, 16), epochs=2, lr=3e-3, batch_size=64)
    else:
        run_cfg = TrainConfig(dataset="mnist-5k", model="mlp", epochs=15, batch_size=128)
    env = {
        "device": DEVICE,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "kmeans_iters": iters,
        "rounds": repeats,
        "epoch_rounds": 1 if args.smoke else args.epoch_rounds,
    }
    try:
        import faiss

        env["faiss"] = faiss.__version__
        env["faiss_threads"] = faiss.omp_get_max_threads()
    except ImportError:
        faiss = None
    print(json.dumps(env), flush=True)
    rows: list[dict] = []

    if "pq" not in args.skip and faiss is not None:
        print("1. PQ fit + encode: ours vs faiss vs scikit-learn", flush=True)
        data = load_dataset(run_cfg.dataset)
        run, _ = get_or_train(source, run_cfg, device="cpu", data=data)
        state = run.state_dict()
        fc = [(layer.name, state[layer.name].numpy()) for layer in run.layers]
        cases = []
        for name, weight in fc[:1] if args.smoke else fc:
            # per-chunk learns each codebook from the `out` rows: k <= out (the 10-row layer: k = 8)
            k = min(256, 2 ** int(math.log2(weight.shape[0])))
            if args.smoke:
                k = max(2, k // 4)  # fewer centroids than rows, so the tiny case is not lossless
            cases.append((f"{run_cfg.model} {name}", weight, 8 if weight.shape[1] >= 8 else 4, k))
        size = 128 if args.smoke else 4096
        rng = np.random.default_rng(0)
        big = (rng.standard_normal((size, size)) * 0.02).astype(np.float32)
        rows += bench_pq(cases, iters, repeats, sklearn_rounds=min(3, repeats))
        shared = [(f"{run_cfg.model} {fc[0][0]}", fc[0][1], 8, 16 if args.smoke else 256)]
        rows += bench_shared(shared, iters, repeats)
        big_rounds = 1 if args.smoke else 3
        rows += bench_pq([("random", big, 8, 16 if args.smoke else 256)], iters, big_rounds, sklearn_rounds=1)
    elif faiss is None:
        print("faiss not installed: PQ comparison skipped (pip install faiss-cpu)")

    if "train" not in args.skip:
        print("2.-3. epoch time: regularizers and core loop vs plain PyTorch", flush=True)
        # mnist-5k: 4,000 images an epoch, so the per-epoch refresh of the pq term weighs heavily;
        # fashion-mnist: 60,000 images an epoch, where it is amortized as in a real run.
        epoch_rounds = env["epoch_rounds"]
        train_cfgs = [(replace(run_cfg, dataset="fashion-mnist"), epoch_rounds)] if not args.smoke else []
        train_cfgs.append((run_cfg, 1 if args.smoke else 2 * epoch_rounds))
        for cfg, epoch_repeats in train_cfgs:
            try:
                data = load_dataset(cfg.dataset)
            except DatasetUnavailable as error:
                print(f"  skipped {cfg.dataset}: {error}", flush=True)
                continue
            timings = timed_epochs(cfg, data, epoch_repeats)
            for name, (reference, target) in EPOCH_RATIOS.items():
                ratio, low, high, pairs = timings.ratio(name, reference)
                rows.append(
                    {
                        "section": "train",
                        "case": f"{cfg.dataset} {cfg.model}, batch {cfg.batch_size}, "
                        f"{len(data.x_train)} images an epoch",
                        "method": f"{name} / {reference}",
                        "seconds": timings.median(name),
                        "ratio": ratio,
                        "ratio_min": low,
                        "ratio_max": high,
                        "pairs": pairs,
                        "target": target,
                        "met": ratio <= float(target.split()[1]),
                        "device": DEVICE,
                    }
                )
                print_rows(rows[-1:])

    if "app" not in args.skip:
        print("4. app recompute", flush=True)
        rows += bench_app(run_cfg, 20 if args.smoke else 200, repeats, source)

    frame = pd.DataFrame(rows)
    name = "speed_smoke" if args.smoke else "speed"
    frame.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1, default=float))
    (out / f"{name}.md").write_text(speed_markdown(frame, env))
    print(f"wrote {out / name}.csv, .json and .md")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
