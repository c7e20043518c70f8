"""The command line: python -m core {train, compress, evaluate, sweep, runs}.

Every command takes --json for machine-readable output on stdout; otherwise it shows tqdm bars
on stderr. Bad input exits non-zero with one line on stderr that says what is wrong and what is
allowed, and writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from .config import DATASETS, INITS, LAYOUTS, METHODS, MODELS, REGULARIZERS, CompressConfig, TrainConfig


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints the whole usage first
        self.exit(
            2,
            f"error: {message} (see `python -m core {self.prog.split()[-1]} --help`)\n"
            if " " in self.prog
            else f"error: {message} (see `python -m core --help`)\n",
        )


# ------------------------------------------------------------------------------------- arguments


def _train_args(parser: argparse.ArgumentParser, many: bool) -> None:
    nargs = "+" if many else None
    parser.add_argument("--dataset", default="mnist-5k", choices=DATASETS, help="default: mnist-5k (offline)")
    parser.add_argument("--model", default="mlp", choices=MODELS, help="default: mlp (LeNet-300-100)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[300, 100], help="hidden widths of mlp")
    parser.add_argument(
        "--reg",
        nargs=nargs,
        default=["binary"] if many else "none",
        choices=REGULARIZERS,
        help="regularizer on the FC weights",
    )
    parser.add_argument(
        "--lam", type=float, nargs=nargs, default=[0.0, 0.02] if many else 0.0, help="regularizer weight (0 = none)"
    )
    parser.add_argument("--warmup-epochs", type=int, default=0, help="epochs over which lam ramps up from 0")
    parser.add_argument("--reg-levels", type=int, default=2, help="levels regularizer: number of levels")
    parser.add_argument("--reg-subvector-size", type=int, default=8, help="pq regularizer: subvector size d")
    parser.add_argument("--reg-centroids", type=int, default=256, help="pq regularizer: centroids k")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, nargs=nargs, default=[0] if many else 0)


def _compress_args(parser: argparse.ArgumentParser, many: bool) -> None:
    nargs = "+" if many else None
    parser.add_argument(
        "--method", nargs=nargs, choices=METHODS, default=list(METHODS) if many else "pq", help="compression method"
    )
    parser.add_argument(
        "--subvector-size",
        "-d",
        type=int,
        nargs=nargs,
        default=[1, 4, 8] if many else 8,
        help="PQ subvector size d (kmeans uses 1)",
    )
    parser.add_argument(
        "--centroids",
        "-k",
        type=int,
        nargs=nargs,
        default=[2, 16, 256] if many else 256,
        help="number of centroids k, 2..65536",
    )
    parser.add_argument("--layout", nargs=nargs, choices=LAYOUTS, default=["shared"] if many else "shared")
    parser.add_argument("--centroid-bits", type=int, choices=(16, 32), default=32)
    parser.add_argument("--kmeans-iters", type=int, default=20)
    parser.add_argument("--init", choices=INITS, default="kmeans++")
    parser.add_argument("--kmeans-seed", type=int, default=0)
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        nargs=nargs,
        default=[0] if many else 0,
        help="epochs of centroid fine-tuning (codes fixed)",
    )
    parser.add_argument("--finetune-lr", type=float, default=1e-4)


def build_parser() -> argparse.ArgumentParser:
    common = OneLineParser(add_help=False)
    common.add_argument("--cache-dir", help="run store folder (default: $COMPRESSION_LAB_CACHE or ./cache)")
    common.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    parser = OneLineParser(prog="python -m core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = sub.add_parser("train", parents=[common], help="train a run (cached)")
    _train_args(p, many=False)

    p = sub.add_parser("compress", parents=[common], help="compress a stored run")
    p.add_argument("run_id", help="a run id (or a unique prefix) from `python -m core runs`")
    _compress_args(p, many=False)
    p.add_argument("--out", help="write the compressed model file here")

    p = sub.add_parser("evaluate", parents=[common], help="evaluate an exported compressed model file")
    p.add_argument("file")
    p.add_argument("--dataset", choices=DATASETS, help="default: the dataset the model was trained on")

    p = sub.add_parser("sweep", parents=[common], help="train a grid of runs and compress every combination")
    _train_args(p, many=True)
    _compress_args(p, many=True)
    p.add_argument("--csv", help="write one row per (run, compression) point here")

    sub.add_parser("runs", parents=[common], help="list the stored runs")
    return parser


# ------------------------------------------------------------------------------------- helpers


def _train_config(args, reg: str, lam: float, seed: int) -> TrainConfig:
    return TrainConfig(
        dataset=args.dataset,
        model=args.model,
        hidden=tuple(args.hidden),
        reg=reg,
        lam=lam,
        warmup_epochs=args.warmup_epochs,
        reg_levels=args.reg_levels,
        reg_subvector_size=args.reg_subvector_size,
        reg_centroids=args.reg_centroids,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=seed,
    )


def _compress_config(args, method: str, d: int, k: int, layout: str, finetune: int) -> CompressConfig:
    return CompressConfig(
        method=method,
        subvector_size=d,
        n_centroids=k,
        layout=layout,
        centroid_bits=args.centroid_bits,
        kmeans_iters=args.kmeans_iters,
        init=args.init,
        seed=args.kmeans_seed,
        finetune_epochs=finetune,
        finetune_lr=args.finetune_lr,
    ).canonical()


def _store(args):
    from .store import RunStore

    return RunStore(args.cache_dir)


def _resolve_run(store, run_id: str):
    run = store.load_run(run_id) if len(run_id) == 16 else None
    if run is None:
        matches = [r for r in store.list_runs() if r.run_id.startswith(run_id)] if run_id else []
        if len(matches) != 1:
            what = "matches several runs" if matches else "is not a stored run"
            raise CliError(f"run id {run_id!r} {what} in {store.root}; list them with `python -m core runs`")
        run = matches[0]
    return run


@contextmanager
def _progress(enabled: bool, total: int, desc: str):
    """A tqdm bar on stderr (or nothing with --json); yields an update(done, total) callback."""
    if not enabled:
        yield lambda done, total=None: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)

    def update(done: int, new_total: int | None = None) -> None:
        if new_total is not None and bar.total != new_total:
            bar.total = new_total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _train_run(store, cfg: TrainConfig, args, label: str = "train"):
    cached = store.load_run(cfg.run_id())
    if cached is not None:
        return cached, True
    from .data import load_dataset

    data = load_dataset(cfg.dataset)  # before the bar, so an unavailable dataset is one clean line
    with _progress(not args.json, cfg.epochs, f"{label} epochs") as update:
        return store.get_or_train(cfg, device=args.device, on_epoch=lambda e, m: update(e), data=data)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


# ------------------------------------------------------------------------------------- commands


def cmd_train(args) -> dict:
    cfg = _train_config(args, args.reg, args.lam, args.seed)
    store = _store(args)
    run, cached = _train_run(store, cfg, args)
    out = run.summary() | {"cached": cached}
    if not args.json:
        print(f"run {run.run_id} ({'from the store' if cached else f'trained in {run.seconds:.1f} s'})")
        for m in run.history:
            print(
                f"  epoch {m['epoch']:3d}  loss {m['loss']:.4f}  ce {m['ce']:.4f}  reg {m['reg']:.4f}  "
                f"test acc {_pct(m['test_accuracy'])}"
            )
        print(f"test accuracy {_pct(run.test_accuracy)}")
    return out


def cmd_compress(args) -> dict:
    cfg = _compress_config(args, args.method, args.subvector_size, args.centroids, args.layout, args.finetune_epochs)
    store = _store(args)
    run = _resolve_run(store, args.run_id)
    from .models import fc_layers
    from .pq import check_fits

    check_fits([(f"{n}.weight", tuple(l.weight.shape)) for n, l in fc_layers(run.model())], cfg)
    with _progress(not args.json and cfg.finetune_epochs > 0, 1, "fine-tune steps") as update:
        result, path, cached = store.get_or_compress(run, cfg, device=args.device, on_step=update)
    out = result.row() | {"cached": cached}
    if args.out:
        from .export import save_file

        save_file(args.out, path.read_bytes())
        out["file"] = str(args.out)
    else:
        out.pop("file_bytes")
    if not args.json:
        s = result.size
        print(f"run {run.run_id}  {cfg.label()}")
        print(
            f"accuracy {_pct(result.accuracy)} (float {_pct(result.float_accuracy)}, "
            f"drop {100 * (result.float_accuracy - result.accuracy):.2f} points)"
        )
        print(
            f"FC    {s.fc_bits:,} bits  ratio {s.fc_ratio:.2f}x  (codes {s.code_bits:,}, "
            f"codebooks {s.codebook_bits:,}, scales {s.scale_bits:,})"
        )
        print(f"model {s.model_bits:,} bits  ratio {s.model_ratio:.2f}x  (float rest {s.rest_bits:,})")
        if args.out:
            print(f"wrote {args.out}: {result.file_bytes:,} bytes")
    return out


def cmd_evaluate(args) -> dict:
    from .data import load_dataset
    from .export import load_file
    from .train import evaluate, pick_device

    model, meta = load_file(args.file)
    dataset = args.dataset or meta["train_config"]["dataset"]
    data = load_dataset(dataset)
    if tuple(data.input_shape) != tuple(meta["input_shape"]):
        raise CliError(
            f"{args.file} expects inputs of shape {tuple(meta['input_shape'])}, but {dataset} has "
            f"{data.input_shape}; use --dataset {meta['train_config']['dataset']}"
        )
    device = pick_device(args.device)
    accuracy = evaluate(model.to(device), data.x_test, data.y_test, device)
    out = {
        "file": args.file,
        "dataset": dataset,
        "accuracy": accuracy,
        "reported_accuracy": meta.get("accuracy"),
        "compress_config": meta["compress_config"],
        "run_id": meta.get("run_id"),
    }
    if not args.json:
        print(f"{args.file}: accuracy {_pct(accuracy)} on {dataset} test set")
    return out


def cmd_sweep(args) -> dict:
    store = _store(args)
    train_cfgs = list(
        dict.fromkeys(
            _train_config(args, reg, lam, seed).canonical()
            for reg, lam, seed in itertools.product(args.reg, args.lam, args.seed)
        )
    )
    compress_cfgs = list(
        dict.fromkeys(
            _compress_config(args, *combo)
            for combo in itertools.product(
                args.method, args.subvector_size, args.centroids, args.layout, args.finetune_epochs
            )
        )
    )
    rows, skipped = [], []
    from .models import fc_layers
    from .pq import check_fits

    for i, cfg in enumerate(train_cfgs):
        run, _ = _train_run(store, cfg, args, label=f"run {i + 1}/{len(train_cfgs)}")
        shapes = [(f"{n}.weight", tuple(l.weight.shape)) for n, l in fc_layers(run.model())]
        with _progress(not args.json, len(compress_cfgs), f"compress run {i + 1}") as update:
            for j, ccfg in enumerate(compress_cfgs):
                try:
                    check_fits(shapes, ccfg)
                except ValueError as err:
                    skipped.append({"run_id": run.run_id, "compression": ccfg.label(), "reason": str(err)})
                    continue
                result, _, _ = store.get_or_compress(run, ccfg, device=args.device)
                rows.append(result.row())
                update(j + 1)
    if args.csv and rows:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if not args.json:
        print(f"{'run':16}  {'reg':7} {'lam':>7}  {'compression':28} {'acc':>7}  {'FC ratio':>9}  {'model':>7}")
        for r in rows:
            print(
                f"{r['run_id']:16}  {r['reg']:7} {r['lam']:7.3g}  {r['label']:28} {_pct(r['accuracy']):>7}  "
                f"{r['fc_ratio']:8.2f}x  {r['model_ratio']:6.2f}x"
            )
        for s in skipped:
            print(f"skipped {s['compression']} on {s['run_id']}: {s['reason']}", file=sys.stderr)
        if args.csv:
            print(f"wrote {len(rows)} rows to {args.csv}")
    return {"rows": rows, "skipped": skipped, "csv": args.csv}


def cmd_runs(args) -> dict:
    runs = _store(args).list_runs()
    out = {"runs": [{"run_id": r.run_id, "test_accuracy": r.test_accuracy, "config": asdict(r.config)} for r in runs]}
    if not args.json:
        if not runs:
            print(f"no runs stored in {_store(args).root}; train one with `python -m core train`")
        for r in runs:
            c = r.config
            print(
                f"{r.run_id}  {c.dataset:13} {c.model:9} reg={c.reg:6} lam={c.lam:<8g} epochs={c.epochs:<3} "
                f"seed={c.seed:<3} acc={_pct(r.test_accuracy)}"
            )
    return out


COMMANDS = {
    "train": cmd_train,
    "compress": cmd_compress,
    "evaluate": cmd_evaluate,
    "sweep": cmd_sweep,
    "runs": cmd_runs,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = COMMANDS[args.command](args)
    except (CliError, ValueError) as err:  # config validation, unavailable data, bad files, divergence
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was stored for the unfinished work", file=sys.stderr)
        return 130
    if args.json:
        json.dump(out, sys.stdout, default=str)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
