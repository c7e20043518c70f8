"""Ours against the peers users would pick instead (issue 21), on the same runs, at equal size.

    python bench/peers.py --seeds 0 1 2 3 4          # every part, both blocks
    python bench/peers.py --seeds 0 --parts post     # a part of it
    python bench/peers.py --smoke --out /tmp/p       # digits, a minute

Blocks: Fashion-MNIST / LeNet-300-100 and mnist-5k / LeNet-5, 8 epochs of Adam (lr 1e-3, batch 128),
the unregularized run and the binary-regularized one (lam 0.02 / 0.05 ramped over 2 epochs: the
settings of bench/paper.py and bench/headline.py, so their stored runs in bench/cache are reused).

1. post-training at equal size (4, 2, 1 bits a weight; the 44.5x and 64x points): ours (kmeans /
   binarize / PQ, on the unregularized and the regularized run, with and without 3 epochs of centroid
   fine-tuning) against coremltools' PostTrainingPalettizer (scalar, per grouped channel, vector) and
   torchao's codebook quantization, both on the unregularized run (as their users would run them).
   NNCF is not here: its codebook modes refuse a PyTorch model (tests/test_peers.py checks it).
2. training-time at equal size and epochs: the paper's regularizer + compression + fine-tuning against
   coremltools' DKMPalettizer (differentiable k-means during training), trained here with the same
   data, epochs, batches, optimizer and seed as our runs (a bench-only path: DKM is not a run kind of
   the lab). DKM's fine-tuning IS its training; ours adds 3 epochs of centroid fine-tuning.
3. compression time: each peer's quantization of a run's FC layers against ours at about its size,
   interleaved (A B A B), the median of the per-pair ratios and their spread.

Every size is counted by our ledger (core.size) from what each method stores; every accuracy is measured
on the model rebuilt from our file (for a peer: from its own LUTs and codes, equal to its own module's
output: tests/test_peers.py). Writes peers.{csv,md} under --out (default bench/results).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd
import torch
from torch.nn import functional as F

from core.config import CompressConfig, TrainConfig
from core.data import Dataset, load_dataset
from core.export import build_payload, model_from_payload
from core.methods import quantize_model
from core.methods.lut import layer_from_lut, require
from core.models import build_model, coded_weights
from core.pipeline import get_or_compress, get_or_train
from core.pq import DoesNotFit, check_fits
from core.records import RunRecord
from core.size import size_report
from core.store import RunStore
from core.train import evaluate


@dataclass(frozen=True)
class Block:
    dataset: str
    model: str
    lam: float  # of the binary regularizer (bench/paper.py's value for this block)
    finetune_epochs: int  # of the "+ft" points: bench/paper.py's (1 epoch of 60k images, 3 of 4k)
    epochs: int = 8

    def train_config(self, seed: int, regularized: bool) -> TrainConfig:
        reg = dict(reg="binary", lam=self.lam, warmup_epochs=2) if regularized else {}
        return TrainConfig(
            dataset=self.dataset, model=self.model, hidden=(300, 100), epochs=self.epochs, batch_size=128,
            lr=1e-3, seed=seed, **reg,
        )  # fmt: skip

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.model}"


BLOCKS = {
    "fashion": Block("fashion-mnist", "mlp", 0.02, 1),
    "lenet5": Block("mnist-5k", "lenet5", 0.05, 3),
}
SMOKE = Block("digits", "mlp", 0.05, 1, epochs=3)


def ours(method: str, ft: int = 0, **fields: int) -> CompressConfig:
    return CompressConfig(method=method, finetune_epochs=ft, **fields)


def coreml(bits: int, dim: int = 1, group: int = 0) -> CompressConfig:
    return CompressConfig(method="coreml", n_centroids=2**bits, subvector_size=dim, group_size=group)


def torchao(bits: int) -> CompressConfig:
    return CompressConfig(method="torchao", n_centroids=2**bits)


# (size point, [(family, on the regularized run?, config)]): ours at the point, the peers at or near it
# (a peer's vectors must divide the output channels: 10 rows in the last layer, so cluster_dim 2, 5 or 10)
def post_training_rows(ft: int) -> list[tuple[str, list[tuple[str, bool, CompressConfig]]]]:
    def our_family(point: list[CompressConfig]) -> list[tuple[str, bool, CompressConfig]]:
        rows = []
        for cfg in point:
            for regularized in (False, True):
                for epochs in (0, ft):
                    family = ("ours: binary reg" if regularized else "ours: no reg") + (" + ft" if epochs else "")
                    rows.append((family, regularized, CompressConfig(**{**cfg.to_json(), "finetune_epochs": epochs})))
        return rows

    return [
        ("4 bits", [*our_family([ours("kmeans", n_centroids=16)]), ("coreml", False, coreml(4)),
                    ("torchao", False, torchao(4))]),
        ("2 bits", [*our_family([ours("kmeans", n_centroids=4)]), ("coreml", False, coreml(2)),
                    ("coreml", False, coreml(2, group=10)), ("torchao", False, torchao(2))]),
        ("1 bit", [*our_family([ours("binarize"), ours("kmeans", n_centroids=2)]), ("coreml", False, coreml(1)),
                   ("torchao", False, torchao(1))]),
        ("~44.5x", [*our_family([ours("pq", subvector_size=8, n_centroids=32)]),
                    ("coreml vector", False, coreml(4, dim=5)), ("coreml vector", False, coreml(5, dim=10))]),
        ("~64x", [*our_family([ours("pq", subvector_size=16, n_centroids=32)]),
                  ("coreml vector", False, coreml(1, dim=2)), ("coreml vector", False, coreml(4, dim=10))]),
    ]  # fmt: skip


# Training-time: DKM (n_bits, cluster_dim) against ours at about the same size, all + fine-tuning.
def dkm_points(ft: int) -> list[tuple[str, tuple[int, int], list[CompressConfig]]]:
    return [
        ("1 bit", (1, 1), [ours("binarize", ft), ours("kmeans", ft, n_centroids=2)]),
        ("2 bits", (2, 1), [ours("kmeans", ft, n_centroids=4)]),
        # vector DKM (4 bits a 5-vector: 0.8 bit a weight) against the paper's PQ d=8 k=32 (0.625)
        ("~44.5x", (4, 5), [ours("pq", ft, subvector_size=8, n_centroids=32)]),
    ]


def train_dkm(cfg: TrainConfig, n_bits: int, cluster_dim: int, data: Dataset) -> tuple[float, float, int]:
    """coremltools' DKMPalettizer on the FC layers, trained exactly as core.train trains `cfg` (same
    initial weights, batch order, Adam, epochs, cross-entropy; no regularizer), finalized, read back into
    our LUT layers and file: (accuracy of the rebuilt model, fc ratio, seconds)."""
    palettization = require("coremltools.optimize.torch.palettization")
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.input_shape, data.n_classes, cfg.hidden)
        keys = list(model.state_dict())
        fc = {"n_bits": n_bits, "cluster_dim": cluster_dim, "weight_threshold": 0}
        config = palettization.DKMPalettizerConfig.from_dict({"module_type_configs": {"Linear": fc}})
        palettizer = palettization.DKMPalettizer(model, config)
        prepared = palettizer.prepare()
        optimizer = torch.optim.Adam(prepared.parameters(), lr=cfg.lr)
        generator = torch.Generator().manual_seed(cfg.seed)
        n_train = len(data.x_train)
        for _ in range(cfg.epochs):
            prepared.train()
            order = torch.randperm(n_train, generator=generator)
            for step in range(math.ceil(n_train / cfg.batch_size)):
                index = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                loss = F.cross_entropy(prepared(data.x_train[index]), data.y_train[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                palettizer.step()
        final = palettizer.finalize()
    seconds = time.perf_counter() - started
    state = {key: value.detach().float() for key, value in final.state_dict().items() if key in keys}
    compress_cfg = coreml(n_bits, cluster_dim)  # the same LUT format: our ledger and file for it
    buffers = dict(final.named_buffers())
    layers = []
    for name, weight in coded_weights(final, "fc"):
        module = name.removesuffix(".weight")
        luts = buffers[f"{module}._COREML_/weight/lut"]
        layers.append(
            layer_from_lut(name, tuple(weight.shape), weight, luts.reshape(-1, 2**n_bits, luts.shape[-1]), 32)
        )
    tensors, meta = build_payload(state, layers, cfg, compress_cfg, data.input_shape, data.n_classes)
    accuracy = 100 * evaluate(model_from_payload(tensors, meta), data.x_test, data.y_test)
    shapes = [layer.shape for layer in layers]
    n_rest = sum(v.numel() for v in state.values()) - sum(math.prod(s) for s in shapes)
    return accuracy, size_report(shapes, n_rest, compress_cfg).fc_ratio, round(seconds)


def post_training(store: RunStore, block: Block, seed: int, data: Dataset, log) -> list[dict]:
    rows: list[dict] = []
    reference = 0.0
    for regularized in (False, True):  # every point of the unregularized run first: it is trained first
        run = get_or_train(store, block.train_config(seed, regularized), data=data)[0]
        if not regularized:
            reference = 100 * run.test_accuracy
        for point, entries in post_training_rows(block.finetune_epochs):
            for family, on_regularized, cfg in entries:
                if on_regularized == regularized:
                    rows.append(
                        _compress_row(store, run, cfg, data, block, seed, "post", point, family, reference, log)
                    )
    return rows


def _compress_row(store, run: RunRecord, cfg, data, block, seed, part, point, family, reference, log) -> dict:
    base = dict(block=block.name, seed=seed, part=part, point=point, family=family, compression=cfg.label(),
                reference=reference)  # fmt: skip
    try:
        record, _ = get_or_compress(store, run, cfg, data=data)
    except DoesNotFit as error:
        log(f"  {point:7s} {family:22s} {cfg.label():28s} does not fit: {error}")
        return {**base, "skipped": str(error)}
    accuracy = 100 * record.accuracy  # percent, as the reports print it
    log(f"  {point:7s} {family:22s} {cfg.label():28s} {record.size.fc_ratio:6.1f}x {accuracy:6.2f}%")
    return {**base, "fc_ratio": record.size.fc_ratio, "model_ratio": record.size.model_ratio,
            "accuracy": accuracy, "drop": reference - accuracy, "seconds": record.seconds}  # fmt: skip


def training_time(store: RunStore, block: Block, seed: int, data: Dataset, log) -> list[dict]:
    reference = 100 * get_or_train(store, block.train_config(seed, False), data=data)[0].test_accuracy
    regularized = get_or_train(store, block.train_config(seed, True), data=data)[0]
    rows = []
    for point, (n_bits, dim), our_cfgs in dkm_points(block.finetune_epochs):
        for cfg in our_cfgs:
            rows.append(_compress_row(store, regularized, cfg, data, block, seed, "train", point,
                                      "ours: binary reg + ft", reference, log))  # fmt: skip
        label = coreml(n_bits, dim).label().replace("coreml", "dkm")
        accuracy, ratio, seconds = train_dkm(block.train_config(seed, False), n_bits, dim, data)
        log(f"  {point:7s} {'DKM (coremltools)':22s} {label:28s} {ratio:6.1f}x {accuracy:6.2f}% ({seconds} s)")
        rows.append(dict(block=block.name, seed=seed, part="train", point=point, family="DKM (coremltools)",
                         compression=label, reference=reference, fc_ratio=ratio, accuracy=accuracy,
                         drop=reference - accuracy, seconds=seconds))  # fmt: skip
    return rows


# Part 3: (peer, ours at about its size)
TIMED = [
    (coreml(4), ours("kmeans", n_centroids=16)),
    (torchao(4), ours("kmeans", n_centroids=16)),
    (coreml(5, dim=10), ours("pq", subvector_size=8, n_centroids=32)),
]


def compression_time(store: RunStore, block: Block, data: Dataset, pairs: int, log) -> list[dict]:
    run = get_or_train(store, block.train_config(0, False), data=data)[0]
    model = run.model()
    weights = coded_weights(model, "fc")
    rows = []
    for peer, our in TIMED:
        shapes = [(name, tuple(w.shape)) for name, w in weights]
        try:
            check_fits(shapes, peer)
        except DoesNotFit as error:
            log(f"  time {peer.label()}: does not fit: {error}")
            continue
        ratios, peer_s, our_s = [], [], []
        for _ in range(pairs):  # A B A B: the machine's load moves both alike
            started = time.perf_counter()
            quantize_model(model, peer, weights)
            peer_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            quantize_model(model, our, weights)
            our_s.append(time.perf_counter() - started)
            ratios.append(peer_s[-1] / our_s[-1])
        row = dict(block=block.name, peer=peer.label(), ours=our.label(), pairs=pairs,
                   peer_seconds=statistics.median(peer_s), our_seconds=statistics.median(our_s),
                   ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))  # fmt: skip
        log(f"  time {peer.label()} / {our.label()}: {row['ratio_median']:.1f}x ({min(ratios):.1f}-{max(ratios):.1f})")
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ report


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (block, part, point, family, compression): per-seed accuracies, mean ± sd, worst drop."""
    done = rows[rows["accuracy"].notna()]
    out = []
    for key, group in done.groupby(["block", "part", "point", "family", "compression"], sort=False):
        group = group.sort_values("seed")
        drops, accuracy = group["drop"], group["accuracy"]
        spread = accuracy.std(ddof=1) if len(group) > 1 else 0.0
        drop_spread = drops.std(ddof=1) if len(group) > 1 else 0.0
        out.append(
            dict(zip(["block", "part", "point", "family", "compression"], key))
            | dict(
                fc_ratio=round(float(group["fc_ratio"].iloc[0]), 1),
                seeds=len(group),
                per_seed=" / ".join(f"{a:.2f}" for a in group["accuracy"]),
                accuracy=f"{accuracy.mean():.2f} ± {spread:.2f}",
                drop=f"{drops.mean():.2f} ± {drop_spread:.2f}",
                worst=round(float(drops.max()), 2),
            )
        )
    return pd.DataFrame(out)


def largest_within(rows: pd.DataFrame, points: float = 1.0) -> pd.DataFrame:
    """Per (block, family): the largest FC ratio whose drop is within `points` of float on every seed run."""
    done = rows[rows["accuracy"].notna()]
    out = []
    for (block, family), group in done.groupby(["block", "family"], sort=False):
        per_cfg = group.groupby("compression").agg(
            ratio=("fc_ratio", "first"), worst=("drop", "max"), seeds=("seed", "nunique")
        )
        held = per_cfg[per_cfg["worst"] <= points]
        best = held.sort_values("ratio").iloc[-1] if len(held) else None
        out.append(dict(block=block, family=family,
                        largest_fc_ratio=round(float(best["ratio"]), 1) if best is not None else None,
                        compression=best.name if best is not None else "none within",
                        worst_drop=round(float(best["worst"]), 2) if best is not None else None,
                        seeds=int(best["seeds"]) if best is not None else int(per_cfg["seeds"].max())))  # fmt: skip
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += [
        "| " + " | ".join("—" if pd.isna(v) else str(v) for v in row) + " |" for row in table.itertuples(index=False)
    ]
    return "\n".join(lines)


def write(rows: list[dict], timing: list[dict], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "peers.csv", index=False)
    parts = [f"# Ours against the peers (bench/peers.py)\n\n`{command}`\n"]
    if "accuracy" in table:
        parts += ["## Per setting (accuracy % per seed; drop = unregularized float of the same seed - accuracy)\n",
                  to_markdown(summarize(table)),
                  "\n## Largest FC ratio within 1 point of float on every seed run\n",
                  to_markdown(largest_within(table))]  # fmt: skip
    skipped = table[table["accuracy"].isna()] if "accuracy" in table else table
    if len(skipped):
        parts += ["\n## Settings a peer cannot express (its one line)\n",
                  to_markdown(skipped[["block", "point", "compression", "skipped"]].drop_duplicates())]  # fmt: skip
    if timing:
        parts += ["\n## Compression time (interleaved, peer / ours)\n", to_markdown(pd.DataFrame(timing))]
        pd.DataFrame(timing).to_csv(out / "peers_time.csv", index=False)
    (out / "peers.md").write_text("\n".join(parts) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--blocks", nargs="+", default=list(BLOCKS), choices=list(BLOCKS))
    parser.add_argument("--parts", nargs="+", default=["post", "train", "time"], choices=["post", "train", "time"])
    parser.add_argument("--dkm-blocks", nargs="+", default=list(BLOCKS), choices=list(BLOCKS),
                        help="blocks of part 2 (DKM trains a network a point)")  # fmt: skip
    parser.add_argument("--pairs", type=int, default=3, help="interleaved pairs of part 3")
    parser.add_argument("--cache-dir", default=str(ROOT / "bench" / "cache"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--smoke", action="store_true", help="digits / mlp, 3 epochs: checks the script")
    parser.add_argument(
        "--report-from", nargs="+", metavar="DIR", default=[],
        help="write the report from the peers.csv / peers_time.csv of earlier (partial) runs",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.report_from:
        # a folder of one part only has an empty file for the other (e.g. --parts time writes no rows)
        frames = [pd.read_csv(f) for d in args.report_from if (f := Path(d) / "peers.csv").stat().st_size > 1]
        times = [pd.read_csv(f) for d in args.report_from if (f := Path(d) / "peers_time.csv").is_file()
                 and f.stat().st_size > 1]  # fmt: skip
        merged = pd.concat(frames).drop_duplicates(["block", "seed", "part", "point", "family", "compression"])
        timing_rows = pd.concat(times).to_dict("records") if times else []
        write(merged.to_dict("records"), timing_rows, Path(args.out), "python bench/peers.py " + " ".join(sys.argv[1:]))
        return 0
    torch.set_num_threads(max(1, torch.get_num_threads()))
    store = RunStore(args.cache_dir)
    blocks = [SMOKE] if args.smoke else [BLOCKS[name] for name in args.blocks]
    dkm_blocks = [SMOKE] if args.smoke else [BLOCKS[name] for name in args.dkm_blocks]
    command = "python bench/peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[dict] = []
    timing: list[dict] = []

    def log(text: str) -> None:
        print(text, flush=True)

    for seed in args.seeds:
        for block in blocks:
            data = load_dataset(block.dataset)
            if "post" in args.parts:
                log(f"{block.name} seed {seed}: post-training")
                rows += post_training(store, block, seed, data, log)
                write(rows, timing, Path(args.out), command)
            if "train" in args.parts and block in dkm_blocks:
                log(f"{block.name} seed {seed}: training-time (DKM)")
                rows += training_time(store, block, seed, data, log)
                write(rows, timing, Path(args.out), command)
    if "time" in args.parts:
        for block in blocks:
            log(f"{block.name}: compression time")
            timing += compression_time(store, block, load_dataset(block.dataset), args.pairs, log)
    write(rows, timing, Path(args.out), command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
