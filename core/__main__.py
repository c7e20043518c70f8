"""The command line: python -m core {train, compress, evaluate, sweep, runs, rm, gc}.

Every command takes --json for machine-readable output on stdout; otherwise it shows tqdm bars
on stderr. Bad input exits with status 2 and one line on stderr that says what is wrong and what
is allowed, is caught before any expensive work (configs, device, store, output paths are all
checked first), and writes nothing.

The training and compression flags, their defaults, choices and help come from the config
dataclasses (core/config.py): one place for each.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .config import CompressConfig, TrainConfig, parse_hidden

if TYPE_CHECKING:
    from .experiments import CompressionGrid  # (imported where it is used: --help imports no torch)

PROG = "python -m core"


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's default prints the whole usage first
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


# ------------------------------------------------------------------------------------- arguments

# Flag names that differ from the field name (kept from earlier releases), and a compression's
# seed, which would collide with the run's.
TRAIN_FLAGS: dict[str, tuple[str, ...]] = {}
COMPRESS_FLAGS: dict[str, tuple[str, ...]] = {
    "subvector_size": ("--subvector-size", "-d"),
    "n_centroids": ("--centroids", "-k"),
    "seed": ("--kmeans-seed",),
    "prune_finetune_epochs": ("--prune-finetune", "--prune-finetune-epochs"),
}
# The fields a sweep takes several values of, and their sweep defaults.
TRAIN_SWEEP: dict[str, list[Any]] = {"reg": ["binary"], "lam": [0.0, 0.02], "seed": [0], "prune_sparsity": [0.0]}
COMPRESS_SWEEP: dict[str, list[Any]] = {
    "method": ["float", "binarize", "kmeans", "pq"],
    "subvector_size": [1, 4, 8],
    "n_centroids": [2, 16, 256],
    "layout": ["shared"],
    "finetune_epochs": [0],
    "stages": [1],
    "sparsity": [0.0],
    "prune_finetune_epochs": [0],
}


def _dest(prefix: str, name: str) -> str:
    return f"{prefix}_{name}"


def _add_config_args(
    parser: argparse.ArgumentParser,
    cls: type,
    prefix: str,
    renames: dict[str, tuple[str, ...]],
    many: dict[str, list[Any]] | None,
) -> None:
    """One flag per field of `cls`, with the field's default, choices and help."""
    for f in fields(cls):
        default: Any = f.default if f.default is not MISSING else None
        flags = renames.get(f.name, (f"--{f.name.replace('_', '-')}",))
        kind = type(default)
        kwargs: dict[str, Any] = {"dest": _dest(prefix, f.name), "help": f.metadata.get("help")}
        if f.name == "hidden":
            # '300 100', '300,100' and '300, 100' all work: the same format as the app's text box
            kwargs.update(nargs="+", default=list(default), type=str, metavar="WIDTH")
        elif f.name == "per_layer":  # a JSON list, as the stored config holds it
            kwargs.update(type=str, default=None, metavar="JSON")
            kwargs["help"] += ', as JSON, e.g. \'[{"name": "fcs.0.weight", "method": "kmeans", "n_centroids": 4}]\''
        else:
            kwargs["type"] = {bool: int, tuple: str}.get(kind, kind)
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            if many is not None and f.name in many:
                kwargs.update(nargs="+", default=many[f.name])
            else:
                kwargs["default"] = default
        if kwargs.get("help") and "default" in kwargs:
            kwargs["help"] += " (default: %(default)s)"
        parser.add_argument(*flags, **kwargs)


def _add_budget_args(parser: argparse.ArgumentParser, many: bool = False) -> None:
    """The per-layer budget's flags (core/budget.py): the other compression flags give its shared fields."""
    from .config import HOLDOUT_EXAMPLES  # (not from core.budget: --help imports no torch)

    budget = "model size in KB (1,000 bytes): choose each coded weight's setting (float, kmeans, pq) to fit it"
    parser.add_argument(
        "--budget-kb",
        type=float,
        nargs="+" if many else None,
        help=budget
        + (
            " (several: one search each; its shared fields are the flags given one value, so a --sparsity or "
            "--prune-finetune given several values is 0 in the search)"
            if many
            else ""
        ),
    )
    parser.add_argument(
        "--floor",
        type=float,
        help="accuracy to keep, e.g. 0.95: the smallest per-layer allocation that holds it on a held-out slice "
        "of the training split (as a drop from the run's float test accuracy)",
    )
    parser.add_argument(
        "--holdout", type=int, default=HOLDOUT_EXAMPLES, help="examples of the training split the search measures on"
    )
    parser.add_argument(
        "--budget-sparsities", type=float, nargs="+", default=[0.0], metavar="S",
        help="pruning levels crossed with each coding candidate of the search, e.g. 0 0.5 0.9 (default: 0)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    common = OneLineParser(add_help=False)
    common.add_argument("--cache-dir", help="run store folder (default: $COMPRESSION_LAB_CACHE or ./cache)")
    common.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    parser = OneLineParser(prog=PROG, description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = sub.add_parser("train", parents=[common], help="train a run (cached)")
    _add_config_args(p, TrainConfig, "train", TRAIN_FLAGS, None)

    p = sub.add_parser("compress", parents=[common], help="compress a stored run")
    p.add_argument("run_id", help="a run id (or a unique prefix) from `python -m core runs`")
    _add_config_args(p, CompressConfig, "compress", COMPRESS_FLAGS, None)
    p.add_argument("--out", help="also write the compressed model file here")
    _add_budget_args(p)

    p = sub.add_parser("evaluate", parents=[common], help="evaluate an exported compressed model file")
    p.add_argument("file")
    p.add_argument("--dataset", help="default: the dataset the model was trained on")

    p = sub.add_parser("sweep", parents=[common], help="train a grid of runs and compress every combination")
    _add_config_args(p, TrainConfig, "train", TRAIN_FLAGS, TRAIN_SWEEP)
    _add_config_args(p, CompressConfig, "compress", COMPRESS_FLAGS, COMPRESS_SWEEP)
    p.add_argument("--csv", help="write one row per (run, compression) point here")
    _add_budget_args(p, many=True)
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="where the work runs: local (this process, the default) or ray (a cluster; "
        "default from $COMPRESSION_LAB_EXECUTOR)",
    )
    p.add_argument("--ray-address", help="the Ray cluster (default: $RAY_ADDRESS, else a new local instance)")
    p.add_argument("--ray-gpus", type=float, help="GPUs each Ray task asks for, e.g. 0.25 to share one GPU among four")
    p.add_argument(
        "--parallel", type=int, help="runs in flight at once (default: 1 locally, the cluster's CPUs with ray)"
    )

    p = sub.add_parser("export", parents=[common], help="write a compressed model file as ONNX, its weights kept coded")
    p.add_argument("file", help="a compressed model file from `compress --out`")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="onnx: runs in ONNX Runtime (default)")
    p.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")

    sub.add_parser("runs", parents=[common], help="list the stored runs")

    p = sub.add_parser("rm", parents=[common], help="delete runs (with their compressions) or one compression")
    p.add_argument("ids", nargs="+", help="run ids (or unique prefixes), or RUN_ID/COMPRESSION_KEY")

    p = sub.add_parser("gc", parents=[common], help="remove stale temporaries and entries that fail verification")
    p.add_argument("--older-than", type=float, default=3600.0, help="seconds; temporaries younger than this stay")
    return parser


# ------------------------------------------------------------------------------------- configs


def _values(args: argparse.Namespace, cls: type, prefix: str) -> dict[str, Any]:
    values = {f.name: getattr(args, _dest(prefix, f.name)) for f in fields(cls)}
    if "per_layer" in values:
        values["per_layer"] = _per_layer(values["per_layer"])
    return values


def _per_layer(text: str | None) -> list[Any]:
    if text is None:
        return []
    try:
        settings = json.loads(text)
    except json.JSONDecodeError:
        settings = None
    if not isinstance(settings, list):
        raise CliError('--per-layer must be a JSON list, e.g. \'[{"name": "fcs.0.weight", "method": "float"}]\'')
    return settings


def _budget_requests(args: argparse.Namespace) -> list[Any]:
    """The budget searches asked for (--budget-kb / --floor), checked now; [] for none."""
    budgets = args.budget_kb if isinstance(args.budget_kb, list) else [args.budget_kb]
    if args.floor is not None and any(b is not None for b in budgets):
        raise CliError("give --budget-kb or --floor, not both")
    if args.floor is None and all(b is None for b in budgets):
        return []  # no search: core.budget (and torch) stay unimported, for a cache hit
    from .budget import BudgetRequest

    common = {"holdout": args.holdout, "sparsities": tuple(args.budget_sparsities)}
    if args.floor is not None:
        return [BudgetRequest(floor=args.floor, **common)]
    return [BudgetRequest(budget_kb=b, **common) for b in budgets if b is not None]


def _hidden(values: list[str]) -> tuple[int, ...]:
    return parse_hidden(" ".join(str(v) for v in values))


def _train_configs(args: argparse.Namespace, many: bool) -> list[TrainConfig]:
    values = _values(args, TrainConfig, "train")
    values["hidden"] = _hidden(values["hidden"])
    if not many:
        return [TrainConfig(**values)]
    from .experiments import train_grid

    fixed = {k: v for k, v in values.items() if k not in TRAIN_SWEEP}
    return train_grid(fixed, values["reg"], values["lam"], values["seed"], values["prune_sparsity"])


def _compress_configs(args: argparse.Namespace) -> list[CompressConfig]:
    return [CompressConfig(**_values(args, CompressConfig, "compress"))]


def _compress_grid(args: argparse.Namespace) -> CompressionGrid:
    """The sweep's compression settings and the combinations of its values that are no compression
    (core.experiments.CompressionGrid); ValueError for a value out of range, before any work."""
    from .experiments import compression_settings

    values = _values(args, CompressConfig, "compress")
    fixed = {k: v for k, v in values.items() if k not in COMPRESS_SWEEP}
    return compression_settings(
        values["method"],
        values["subvector_size"],
        values["n_centroids"],
        values["layout"],
        values["finetune_epochs"],
        fixed=fixed,
        stages=values["stages"],
        sparsities=values["sparsity"],
        prune_finetune_epochs=values["prune_finetune_epochs"],
    )


# ------------------------------------------------------------------------------------- helpers


def _store(args: argparse.Namespace, writable: bool = True) -> Any:
    from .store import RunStore

    store = RunStore(args.cache_dir)
    if writable:
        store.check_writable()
    elif store.root.exists() and not store.root.is_dir():
        raise CliError(f"the run store {store.root} is a file, not a folder; choose another --cache-dir")
    return store


def _device(args: argparse.Namespace) -> Any:
    from .train import pick_device

    return pick_device(args.device)


def _asked_device(args: argparse.Namespace) -> Any:
    """The --device asked for, checked now (bad input before any work), or None: the default is
    picked by whatever computes, so a result found in the store never imports torch."""
    return _device(args) if args.device is not None else None


@contextlib.contextmanager
def _progress(enabled: bool, total: int, desc: str) -> Iterator[Callable[..., None]]:
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


def _write_out(path: str, data: bytes) -> None:
    """Write a file the user asked for (--out, --csv) atomically; a failed write (a full disk, a
    folder gone read-only since the check) is one line, and leaves nothing at `path`."""
    from .fileio import write_atomic

    try:
        write_atomic(path, data)
    except OSError as error:
        reason = error.strerror or str(error)
        raise CliError(
            f"could not write {path} ({reason}); nothing was written there: free space or give another path"
        ) from None


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


# ------------------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> dict:
    from .pipeline import get_or_train, stored_run

    (cfg,) = _train_configs(args, many=False)
    device = _asked_device(args)
    store = _store(args)
    run = stored_run(store, cfg)  # look before loading: a stored run needs no dataset, no model
    cached = run is not None
    if run is None:
        from .data import check_available

        # before the bar and before any job: an unavailable dataset is one clean line. The dataset
        # itself is loaded by the job's owner: a process that waits for another's training loads none.
        check_available(cfg.dataset)
        with _progress(not args.json, cfg.epochs, "train epochs") as update:
            run, cached = get_or_train(store, cfg, device=device, on_epoch=lambda m, h: update(m.epoch))
    if not args.json:
        print(f"run {run.run_id} ({'from the store' if cached else f'trained in {run.seconds:.1f} s'})")
        for m in run.history:
            print(
                f"  epoch {m.epoch:3d}  loss {m.loss:.4f}  ce {m.ce:.4f}  reg {m.reg:.4f}  "
                f"test acc {_pct(m.test_accuracy)}"
            )
        print(f"test accuracy {_pct(run.test_accuracy)}")
    summary = run.to_json()
    summary.pop("histograms")
    return summary | {"test_accuracy": run.test_accuracy, "cached": cached}


def _allocate(args: argparse.Namespace, store: Any, run: Any, base: CompressConfig, request: Any) -> tuple:
    """(allocation, record, cached): the budget search on `run` (its plan and bad input first), as a job."""
    from .budget import get_or_allocate, plan_run

    plan = plan_run(run, base, request)  # one line for a bad budget or floor, before any loading
    if not args.json:
        estimate = f", about {plan.seconds:.0f} s" if plan.seconds is not None else ""
        print(
            f"{request.describe()}: {plan.quantizations} candidate codings, at most {plan.evaluations} "
            f"held-out evaluations{estimate}",
            file=sys.stderr,
        )
    from .data import check_available

    check_available(run.config.dataset)
    with _progress(not args.json, plan.evaluations, "budget search") as update:
        allocation, record = get_or_allocate(store, run, base, request, on_status=lambda s: update(s.done, s.total))
    return allocation, record, allocation is None


def cmd_compress(args: argparse.Namespace) -> dict:
    from .fileio import check_output_path
    from .pipeline import get_or_compress, stored_compression

    (cfg,) = _compress_configs(args)
    requests = _budget_requests(args)
    device = _asked_device(args)
    if args.out:
        check_output_path(args.out)
    store = _store(args)
    run = store.resolve_run(args.run_id)
    found = None if requests else stored_compression(store, run, cfg)  # look before loading
    allocation = None
    if requests:
        allocation, record, cached = _allocate(args, store, run, cfg, requests[0])
        cfg = record.compress_config
    elif found is not None:
        record, cached = found, True
    else:
        with _progress(not args.json and cfg.finetune_epochs > 0, 1, "fine-tune steps") as update:
            record, cached = get_or_compress(store, run, cfg, device=device, on_step=update)
    out = record.row() | {"cached": cached}
    if allocation is not None:
        from .budget import to_json as budget_json

        out["budget"] = json.loads(budget_json(allocation))
    if args.out:
        assert record.file_path is not None  # a stored record always has its file
        _write_out(args.out, Path(record.file_path).read_bytes())
        out["file"] = str(args.out)
    if not args.json:
        s = record.size
        if allocation is not None:
            from .budget import describe

            print(describe(allocation))
            for row in allocation.layer_rows():
                print(f"  {row['layer']:24} {row['setting']:28} {row['bits']:>12,} bits")
        print(f"run {run.run_id}  {cfg.label()}")
        print(
            f"accuracy {_pct(record.accuracy)} (float {_pct(record.float_accuracy)}, "
            f"drop {100 * record.accuracy_drop:.2f} points)"
        )
        print(
            f"FC    {s.fc_bits:,} bits  ratio {s.fc_ratio:.2f}x  (codes {s.code_bits:,}, "
            f"codebooks {s.codebook_bits:,}, scales {s.scale_bits:,})"
        )
        print(f"model {s.model_bits:,} bits  ratio {s.model_ratio:.2f}x  (float rest {s.rest_bits:,})")
        if s.entropy_code_bits is not None:
            print(
                f"entropy-coded: codes {s.entropy_code_bits:,} bits (streams and tables)  "
                f"FC ratio {s.entropy_fc_ratio:.2f}x  model ratio {s.entropy_model_ratio:.2f}x"
            )
        if args.out:
            print(f"wrote {args.out}: {record.file_bytes:,} bytes")
    return out


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from .config import DATASETS
    from .data import load_dataset
    from .export import load_file
    from .train import evaluate

    if args.dataset is not None and args.dataset not in DATASETS:
        raise CliError(f"unknown dataset {args.dataset!r}; choose one of: {', '.join(DATASETS)}")
    device = _device(args)
    model, meta = load_file(args.file)
    trained_on = meta["train_config"]["dataset"]
    dataset = args.dataset or trained_on
    data = load_dataset(dataset)
    if tuple(data.input_shape) != tuple(meta["input_shape"]):
        raise CliError(
            f"{args.file} expects inputs of shape {tuple(meta['input_shape'])}, but {dataset} has "
            f"{data.input_shape}; use --dataset {trained_on}"
        )
    warning = None
    if dataset != trained_on:
        warning = (
            f"this model was trained on {trained_on}, not {dataset}: its accuracy on {dataset} says little "
            f"about the compression"
        )
        print(f"warning: {warning}", file=sys.stderr)
    accuracy = evaluate(model.to(device), data.x_test, data.y_test, device)
    out = {
        "file": args.file,
        "dataset": dataset,
        "trained_on": trained_on,
        "accuracy": accuracy,
        "reported_accuracy": meta.get("accuracy"),
        "compress_config": meta["compress_config"],
        "run_id": meta.get("run_id"),
        "warning": warning,
    }
    if not args.json:
        print(f"{args.file}: accuracy {_pct(accuracy)} on {dataset} test set")
    return out


def cmd_export(args: argparse.Namespace) -> dict:
    from .fileio import check_output_path
    from .onnx_export import OPSET, MissingDependency, export_onnx, require_onnx

    check_output_path(args.out)  # the output, the package and the input file, all before the export
    try:
        require_onnx()
        written = export_onnx(args.file, args.out)
    except MissingDependency as exc:
        raise CliError(str(exc)) from None
    if not args.json:
        print(f"wrote {args.out}: {written:,} bytes, ONNX opset {OPSET}, the weights kept coded")
    return {"file": args.file, "format": args.format, "out": args.out, "bytes": written, "opset": OPSET}


def _check_csv_path(path: str | None) -> None:
    if path:
        from .fileio import check_output_path

        check_output_path(path)


def _executor(args: argparse.Namespace) -> Any:
    from .executors import ENV_EXECUTOR, RayExecutor, get_executor

    name = args.executor or os.environ.get(ENV_EXECUTOR) or "local"
    if args.parallel is not None and not 1 <= args.parallel <= 1024:
        raise CliError(f"--parallel {args.parallel} must be from 1 to 1,024")
    if name == "ray" and args.ray_gpus is not None:
        return RayExecutor(address=args.ray_address, num_gpus=args.ray_gpus)
    if name != "ray" and (args.ray_address or args.ray_gpus is not None):
        raise CliError("--ray-address and --ray-gpus need --executor ray")
    return get_executor(name, address=args.ray_address)


def cmd_sweep(args: argparse.Namespace) -> dict:
    from .experiments import run_sweep

    train_cfgs = _train_configs(args, many=True)
    grid = _compress_grid(args)
    compress_cfgs = grid.settings
    requests = _budget_requests(args)
    # a budget's shared fields: the flags the sweep does not span (method pq, d and k its defaults), and
    # the pruning stage's when given one value (as before the sweep spanned them)
    values = _values(args, CompressConfig, "compress")
    once = {k: v[0] for k, v in values.items() if k in ("sparsity", "prune_finetune_epochs") and len(v) == 1}
    budget_base = CompressConfig(**{k: v for k, v in values.items() if k not in COMPRESS_SWEEP} | once)
    # on a cluster the device is the workers' (a CPU driver may send work to GPUs): checked there
    from .executors import ENV_EXECUTOR

    device = args.device if (args.executor or os.environ.get(ENV_EXECUTOR)) == "ray" else _device(args)
    _check_csv_path(args.csv)
    store = _store(args)
    from .data import check_available

    check_available(train_cfgs[0].dataset)  # fail on an unavailable dataset before any work
    executor = _executor(args)
    parallel = args.parallel or (executor.parallel_tasks() if executor.name == "ray" else 1)
    total = len(train_cfgs) * (1 + len(compress_cfgs))
    with _progress(not args.json, total, "sweep") as update:
        result = run_sweep(
            store,
            train_cfgs,
            compress_cfgs,
            device=device,
            on_progress=lambda d, t, _: update(d, t),
            executor=executor,
            parallel=parallel,
            impossible=grid.impossible,
        )
    points = list(result.points)
    for run in result.runs if not result.stopped else ():  # each budget on each run: one search each
        for request in requests:
            points.append(_allocate(args, store, run, budget_base, request)[1])
    rows = [point.row() for point in points]
    skipped = [{"run_id": s.run_id, "compression": s.label, "reason": s.reason} for s in result.skipped]
    if args.csv and rows:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        _write_out(args.csv, buffer.getvalue().encode())
    if not args.json:
        print(f"{'run':16}  {'regularizer':16} {'compression':28} {'acc':>7}  {'FC ratio':>9}  {'model':>7}")
        for r in rows:
            print(
                f"{r['run_id']:16}  {r['reg_label']:16} {r['label']:28} {_pct(r['accuracy']):>7}  "
                f"{r['fc_ratio']:8.2f}x  {r['model_ratio']:6.2f}x"
            )
        for s in skipped:
            print(f"skipped {s['compression']} on {s['run_id']}: {s['reason']}", file=sys.stderr)
        if args.csv:
            print(f"wrote {len(rows)} rows to {args.csv}")
    return {"rows": rows, "skipped": skipped, "csv": args.csv}


def cmd_runs(args: argparse.Namespace) -> dict:
    store = _store(args, writable=False)
    runs = store.list_runs()
    if not args.json:
        if not runs:
            print(f"no runs stored in {store.root}; train one with `python -m core train`")
        for r in runs:
            c = r.config
            print(
                f"{r.run_id}  {c.dataset:13} {c.model:9} reg={c.reg:6} lam={c.lam:<8g} epochs={c.epochs:<3} "
                f"seed={c.seed:<3} acc={_pct(r.test_accuracy)}"
            )
    return {
        "runs": [
            {"run_id": r.run_id, "test_accuracy": r.test_accuracy, "config": r.config.to_json(), "label": r.label()}
            for r in runs
        ]
    }


def cmd_rm(args: argparse.Namespace) -> dict:
    store = _store(args)
    # Resolve everything first: one bad id deletes nothing.
    targets: list[tuple[str, str | None]] = []
    for text in args.ids:
        run_part, _, key = text.partition("/")
        run = store.resolve_run(run_part)
        if key:
            matches = [c.key for c in store.list_compressions(run.run_id) if c.key.startswith(key)]
            if len(matches) != 1:
                what = "matches several compressions" if matches else "is not a stored compression"
                raise CliError(f"compression key {key!r} {what} of run {run.run_id}")
            targets.append((run.run_id, matches[0]))
        else:
            targets.append((run.run_id, None))
    from .pipeline import delete_compression, delete_run

    freed = 0
    for run_id, key in targets:  # the job entries go too: the Jobs page lists no job of a deleted run
        freed += delete_run(store, run_id) if key is None else delete_compression(store, run_id, key)
    if not args.json:
        for run_id, key in targets:
            print(f"deleted {run_id}{'/' + key if key else ' and its compressions'}")
        print(f"freed {freed:,} bytes")
    return {"deleted": [f"{r}/{k}" if k else r for r, k in targets], "bytes_freed": freed}


def cmd_gc(args: argparse.Namespace) -> dict:
    if not args.older_than >= 0:
        raise CliError(f"--older-than {args.older_than} must be a number of seconds >= 0")
    store = _store(args)
    report = store.gc(older_than_s=args.older_than)
    from .jobs import JobManager

    old_jobs = JobManager(store.root).cleanup(older_than_s=max(args.older_than, 60.0))
    if not args.json:
        for path in report.removed:
            print(f"removed {path}")
        print(f"freed {report.bytes_freed:,} bytes in {store.root}; {old_jobs} finished job entries removed")
    return {"removed": list(report.removed), "bytes_freed": report.bytes_freed, "job_entries_removed": old_jobs}


COMMANDS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "train": cmd_train,
    "compress": cmd_compress,
    "evaluate": cmd_evaluate,
    "sweep": cmd_sweep,
    "export": cmd_export,
    "runs": cmd_runs,
    "rm": cmd_rm,
    "gc": cmd_gc,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = COMMANDS[args.command](args)
        if args.json:
            json.dump(out, sys.stdout, default=str)
            sys.stdout.write("\n")
        sys.stdout.flush()  # here, so that a reader gone (`| head`) is met in this try
    except BrokenPipeError:
        # The reader of our output left (`python -m core runs --json | head`): what was computed
        # is stored; stdout goes nowhere from now on, so the interpreter's own flush at exit is quiet.
        with contextlib.suppress(OSError, ValueError):  # (a stdout with no file descriptor: nothing to quiet)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        with contextlib.suppress(OSError):  # stderr may go to the same closed pipe
            print("error: the output's reader closed the pipe before the end; nothing else was lost", file=sys.stderr)
        return 2
    except (CliError, ValueError) as err:  # config validation, unavailable data, bad files, divergence
        message = " ".join(str(err).split())  # one line, whatever the exception held
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was stored for the unfinished work", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
