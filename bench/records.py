"""Past the paper: pruning, PQ / k-means, centroid fine-tuning and entropy coding, stage by stage, and
what the binarizing regularizer does to the entropy of the codes.

For each seed, an unregularized run and a binary-regularized run of the same length (and, with
--gradual, the same two pruned gradually during training to each sparsity given, Zhu & Gupta's cubic
schedule); every compression setting of the grid (sparsity x survivors' retraining x method x
fine-tuning) on each (a gradually pruned run at its own sparsity or more), each stored entropy-coded (`entropy="ans"`),
so that one record holds both sizes: the raw FC ratio (bit-packed codes, bitmap masks) and the
entropy-coded one (ANS streams and their frequency tables), of the same decoded weights. Each accuracy
is compared with the float accuracy of the unregularized run of the same seed; "within 1 point on
every seed" takes the worst seed.

    python bench/records.py --dataset fashion-mnist --seeds 0 1 2 3 4        # the issue's setting
    python bench/records.py --dataset digits --epochs 20 --seeds 0 1 --bases "kmeans k=4" "pq d=8 k=32" \
        --sparsities 0 0.8 0.9                                               # the first round, 2 busy cores
    python bench/records.py --dataset fashion-mnist --batch-size 128 --lam 0.02 --seeds 0 1 \
        --bases "kmeans k=4" "pq d=8 k=32" --sparsities 0 0.9 --finetune 0 1   # the second: peers.py's runs
    python bench/records.py --gradual 0.9 --prune-start 1 --prune-epochs 4 --retrain 0 2   # + both pruning forms

Writes records_<dataset>.{csv,md} (the points and the tables) and records_entropy_<dataset>.csv (bits a
code, per run and setting) under --out (default bench/results). Runs and compressions are cached in
--cache-dir (default bench/cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd
import torch

from core import budget
from core.config import CompressConfig, TrainConfig
from core.entropy import entropy_bits_per_code
from core.methods import quantize_model
from core.pipeline import get_or_compress, get_or_train
from core.size import FLOAT_BITS
from core.store import RunStore

BASES = {  # the coding step: method settings, one codebook a layer (pruning needs it)
    "kmeans k=4": dict(method="kmeans", n_centroids=4),
    "kmeans k=16": dict(method="kmeans", n_centroids=16),
    "pq d=4 k=16": dict(method="pq", subvector_size=4, n_centroids=16),
    "pq d=8 k=32": dict(method="pq", subvector_size=8, n_centroids=32),
    "pq d=16 k=32": dict(method="pq", subvector_size=16, n_centroids=32),
}
SPARSITIES = (0.0, 0.5, 0.8, 0.9)
FINETUNE = (0, 3)


def grid(
    bases: list[str],
    sparsities: list[float],
    finetune: list[int],
    retrain: list[int],
    pruned: float = 0.0,
    shared: dict | None = None,
) -> list[CompressConfig]:
    """The settings of the grid, each once (a setting that cannot retrain is one, whatever --retrain says);
    for a run pruned to `pruned` during training, the sparsities below it are coded at it instead."""
    chosen = sorted({max(s, pruned) for s in sparsities})
    settings = [
        CompressConfig(
            **BASES[base], **(shared or {}), sparsity=s, prune_finetune_epochs=rt, finetune_epochs=ft, entropy="ans"
        )
        for base in bases
        for s in chosen
        for rt in retrain
        for ft in finetune
    ]
    return list(dict.fromkeys(settings))


def code_entropy_rows(run, variant: str) -> list[dict]:
    """Bits a code (the codes' empirical entropy, over all coded layers) of each base setting, no pruning."""
    rows = []
    for name, base in BASES.items():
        cfg = CompressConfig(**base)
        layers = quantize_model(run.model(), cfg)
        n = sum(layer.codes.numel() for layer in layers)
        bits = sum(
            layer.codes.numel() * entropy_bits_per_code(layer.codes.numpy(), layer.n_centroids) for layer in layers
        )
        width = max(1, (cfg.n_centroids - 1).bit_length())
        rows.append(dict(seed=run.config.seed, variant=variant, setting=name, codes=n, code_width=width,
                         bits_per_code=bits / n))  # fmt: skip
    return rows


def best_within(df: pd.DataFrame, size_col: str, budget_pts: float = 1.0) -> pd.DataFrame:
    """Per (variant, stages): the setting of the largest `size_col` whose worst-seed drop is within the budget."""
    per_setting = df.groupby(["variant", "stages", "label"]).agg(
        worst_drop=("drop_pts", "max"), mean_drop=("drop_pts", "mean"), sd_drop=("drop_pts", "std"),
        n_seeds=("seed", "nunique"), ratio=(size_col, "mean"),
    ).reset_index()  # fmt: skip
    ok = per_setting[per_setting["worst_drop"] <= budget_pts + 1e-9]
    best = ok.sort_values("ratio", ascending=False).groupby(["variant", "stages"]).head(1)
    return best.sort_values(["stages", "variant"]).reset_index(drop=True)


def allocations(run, args: argparse.Namespace, shared: dict) -> list[tuple[str, CompressConfig]]:
    """The per-layer budget's configs: one search on the run (its held-out slice of the training split,
    never the test split), and, for each ratio, the allocation it chooses within that size, with every
    fine-tuning of the grid (the search measures without fine-tuning). A ratio below what the grid can
    make is left out, with its one line."""
    if not args.ratios:
        return []
    base = CompressConfig(method="pq", **shared, entropy="ans")
    pruned = run.config.prune_sparsity  # a run pruned in training: every candidate at its sparsity
    request = budget.BudgetRequest(budget_kb=1e9, seed=run.config.seed, sparsities=(pruned,))
    shapes, rest_bits = budget.run_rest_bits(run, base.targets)
    coded_float = sum(FLOAT_BITS * math.prod(shape) for _, shape in shapes)
    search = budget.allocate_run(run, base, request)  # its checks (plan_run) before any work
    configs = []
    for ratio in args.ratios:  # targets fc: the coded layers' ratio; fc+conv: the whole model's
        bits = rest_bits + coded_float / ratio if args.targets == "fc" else (rest_bits + coded_float) / ratio
        try:
            state = search.within(math.floor(bits))
        except ValueError as error:
            print(f"  seed {run.config.seed}: no allocation at {ratio:g}x: {error}", flush=True)
            continue
        chosen = search.config_at(state)
        what = "FC" if args.targets == "fc" else "model"
        configs += [
            (f"budget {ratio:g}x {what}" + (f" +ft{ft}" if ft else ""), dataclasses.replace(chosen, finetune_epochs=ft))
            for ft in args.finetune
        ]
        print(f"  seed {run.config.seed}: {ratio:g}x -> {chosen.label()}", flush=True)
    return configs


def stages_of(cfg: CompressConfig, run_sparsity: float = 0.0) -> str:
    parts = []
    if cfg.per_layer:
        parts.append("allocate")
    if run_sparsity:
        parts.append("gradual prune")
    if cfg.sparsity > run_sparsity:
        parts.append("prune")
    if cfg.prune_finetune_epochs:
        parts.append("retrain")
    parts.append("quantize")
    if cfg.finetune_epochs:
        parts.append("ft")
    return " + ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--hidden", type=int, nargs="+", default=[300, 100])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--batch-size", type=int, default=64,
        help="of both runs; 128 with --lam 0.02 are bench/peers.py's Fashion-MNIST runs (shared in the cache)",
    )  # fmt: skip
    parser.add_argument("--lam", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--bases", nargs="+", default=list(BASES), choices=list(BASES))
    parser.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    parser.add_argument("--finetune", type=int, nargs="+", default=list(FINETUNE))
    parser.add_argument("--retrain", type=int, nargs="+", default=[0], help="epochs of the survivors' retraining")
    parser.add_argument("--gradual", type=float, nargs="*", default=[], help="final sparsities pruned in training")
    parser.add_argument("--prune-start", type=int, default=1, help="epoch gradual pruning starts at")
    parser.add_argument("--prune-epochs", type=int, default=4, help="epochs its sparsity ramps over")
    parser.add_argument("--model", default="mlp", choices=("mlp", "lenet5"))
    parser.add_argument("--targets", default="fc", choices=("fc", "fc+conv"), help="the layers coded")
    parser.add_argument("--centroid-bits", type=int, default=32, choices=(32, 16), help="of every codebook")
    parser.add_argument(
        "--ratios", type=float, nargs="*", default=[],
        help="per-layer budgets (core/budget.py), one search a run: the FC ratios (targets fc) or model ratios "
        "(fc+conv) to fit, each compressed with every --finetune",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--cache-dir", default=str(ROOT / "bench" / "cache"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--report-from", nargs="+", metavar="DIR", default=[],
        help="write the report from the records_<dataset>.csv files of earlier (per-seed) runs; measures nothing",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.report_from:
        frames = [pd.read_csv(Path(d) / f"records_{args.dataset}.csv") for d in args.report_from]
        ents = [pd.read_csv(Path(d) / f"records_entropy_{args.dataset}.csv") for d in args.report_from]
        run_files = [Path(d) / f"records_runs_{args.dataset}.csv" for d in args.report_from]
        trained = [pd.read_csv(f) for f in run_files if f.is_file()]
        points = pd.concat(frames).drop_duplicates(["seed", "variant", "label"]).to_dict("records")
        entropies = pd.concat(ents).drop_duplicates(["seed", "variant", "setting"]).to_dict("records")
        runs = pd.concat(trained).drop_duplicates(["seed", "variant"]).to_dict("records") if trained else []
        write_report(points, entropies, runs, args)
        return
    store = RunStore(args.cache_dir)
    base = dict(
        dataset=args.dataset, model=args.model, hidden=tuple(args.hidden), epochs=args.epochs,
        batch_size=args.batch_size,
    )  # fmt: skip
    shared = dict(targets=args.targets, centroid_bits=args.centroid_bits)
    points, entropies, runs = [], [], []
    for seed in args.seeds:
        ref, _ = get_or_train(store, TrainConfig(**base, seed=seed), device="cpu")
        binary = dict(reg="binary", lam=args.lam, warmup_epochs=2)
        variants = [("no reg", {}), (f"binary λ={args.lam:g}", binary)]
        for s in args.gradual:
            schedule = dict(prune_sparsity=s, prune_start_epoch=args.prune_start, prune_epochs=args.prune_epochs)
            variants += [(f"gradual {s:g}", schedule), (f"binary λ={args.lam:g} + gradual {s:g}", binary | schedule)]
        for variant, fields in variants:
            run = ref if not fields else get_or_train(store, TrainConfig(**base, seed=seed, **fields), device="cpu")[0]
            pruned = run.config.prune_sparsity
            if not pruned:  # the codes' entropy of the unpruned runs (a pruned run's zeros are one value)
                entropies += code_entropy_rows(run, variant)
            runs.append(dict(seed=seed, variant=variant, run_id=run.run_id, test_accuracy=run.test_accuracy,
                             drop_pts=100 * (ref.test_accuracy - run.test_accuracy), seconds=run.seconds))  # fmt: skip
            settings = grid(args.bases, args.sparsities, args.finetune, args.retrain, pruned, shared)
            for name, cfg in [(c.label(), c) for c in settings] + allocations(run, args, shared):
                record, _ = get_or_compress(store, run, cfg, device="cpu")
                row = record.row()
                row.update(variant=variant, stages=stages_of(cfg, pruned), ref_float=ref.test_accuracy,
                           drop_pts=100 * (ref.test_accuracy - record.accuracy), label=name,
                           allocation=cfg.label() if cfg.per_layer else "")  # fmt: skip
                points.append(row)
                print(f"  seed {seed} {variant:16s} {cfg.label():32s} {record.size.fc_ratio:6.2f}x raw "
                      f"{row['entropy_fc_ratio']:6.2f}x coded {100 * record.accuracy:6.2f}%", flush=True)  # fmt: skip
            print(f"seed {seed} {variant}: {len(points)} points", flush=True)
        write_report(points, entropies, runs, args)  # after every seed: a stopped bench keeps what it measured


def per_setting_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every setting: its ratios, its drop on each seed, mean ± sd and the worst seed."""
    rows = []
    for (variant, label), group in df.groupby(["variant", "label"], sort=False):
        group = group.sort_values("seed")
        drops = group["drop_pts"]
        rows.append(dict(variant=variant, compression=label, raw_fc_ratio=group["fc_ratio"].mean(),
                         model_ratio=group["model_ratio"].mean(),
                         coded_fc_ratio=group["entropy_fc_ratio"].mean(), seeds=len(group),
                         drop_per_seed=" / ".join(f"{d:.2f}" for d in drops),
                         drop=f"{drops.mean():.2f} ± {drops.std(ddof=1) if len(group) > 1 else 0.0:.2f}",
                         worst=drops.max()))  # fmt: skip
    return pd.DataFrame(rows)


def term_share_table(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's term's own share, setting by setting: the same compression of the unregularized and
    the binary-regularized run of each seed, the drop of each and their difference paired by seed (no reg
    minus binary: positive where the term helps)."""
    binary = [v for v in df["variant"].unique() if v.startswith("binary") and "gradual" not in v]  # one λ a bench
    if "no reg" not in set(df["variant"]) or not binary:
        return pd.DataFrame()
    plain = df[df["variant"] == "no reg"].set_index(["label", "seed"])["drop_pts"]
    term = df[df["variant"] == binary[0]].set_index(["label", "seed"])["drop_pts"]
    rows = []
    for label in dict.fromkeys(df.loc[df["variant"] == "no reg", "label"]):
        if label not in term.index.get_level_values(0):
            continue
        a, b = plain.loc[label], term.loc[label]
        share = (a - b).dropna()
        if share.empty:
            continue
        sd = share.std(ddof=1) if len(share) > 1 else 0.0
        ratio = df[(df["label"] == label) & df["variant"].isin(["no reg", binary[0]])]
        rows.append(dict(compression=label, raw_fc_ratio=ratio["fc_ratio"].mean(),
                         coded_fc_ratio=ratio["entropy_fc_ratio"].mean(), seeds=len(share),
                         no_reg=f"{a.mean():.2f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.2f}",
                         binary=f"{b.mean():.2f} ± {b.std(ddof=1) if len(b) > 1 else 0.0:.2f}",
                         term_share=f"{share.mean():+.2f} ± {sd:.2f}", share_min=share.min(),
                         share_max=share.max()))  # fmt: skip
    return pd.DataFrame(rows)


def write_report(points: list[dict], entropies: list[dict], runs: list[dict], args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(points)
    df.to_csv(out / f"records_{args.dataset}.csv", index=False)
    ent = pd.DataFrame(entropies)
    ent.to_csv(out / f"records_entropy_{args.dataset}.csv", index=False)
    trained = pd.DataFrame(runs)
    if runs:
        trained.to_csv(out / f"records_runs_{args.dataset}.csv", index=False)
    seeds = sorted(df["seed"].unique().tolist())
    lines = [
        f"# {args.dataset} {args.model if args.model != 'mlp' else 'mlp ' + '-'.join(map(str, args.hidden))}, "
        f"{args.epochs} epochs, batch {args.batch_size}, "
        f"seeds {seeds}",
        "",
        "`python bench/records.py " + " ".join(sys.argv[1:]) + "`",
        "",
    ]
    lines += ["Largest FC ratio within 1 point of the unregularized float run of the same seed, on every seed:", ""]
    sizes = [("fc_ratio", "raw (bit-packed codes, bitmap masks)"), ("entropy_fc_ratio", "entropy-coded")]
    if getattr(args, "targets", "fc") != "fc":  # conv coded too: the whole model's ratio is the one asked
        sizes += [("model_ratio", "model, raw"), ("entropy_model_ratio", "model, entropy-coded")]
    for size_col, what in sizes:
        lines += [f"## {what}", "", best_within(df, size_col).to_markdown(index=False, floatfmt=".2f"), ""]
    lines += ["## Every setting (drop in points against the unregularized float run of the same seed)", ""]
    lines += [per_setting_table(df).to_markdown(index=False, floatfmt=".2f"), ""]
    share = term_share_table(df)
    if not share.empty:
        lines += ["## The term's own share (drop without it minus drop with it, paired by seed; points)", ""]
        lines += [share.to_markdown(index=False, floatfmt=".2f"), ""]
    summary = ent.groupby(["setting", "variant"]).agg(
        code_width=("code_width", "first"), bits_per_code=("bits_per_code", "mean"),
        sd=("bits_per_code", "std"), n_seeds=("seed", "nunique"),
    ).reset_index()  # fmt: skip
    if runs:
        lines += ["## The trained runs (float accuracy, drop against the unregularized run of the same seed)", ""]
        per_run = trained.groupby("variant").agg(
            accuracy=("test_accuracy", "mean"), mean_drop=("drop_pts", "mean"), worst_drop=("drop_pts", "max"),
            n_seeds=("seed", "nunique"),
        ).reset_index()  # fmt: skip
        lines += [per_run.to_markdown(index=False, floatfmt=".4f"), ""]
    lines += ["## Bits a code (empirical entropy of the codes, no pruning)", ""]
    lines += [summary.to_markdown(index=False, floatfmt=".3f"), ""]
    per_seed = ent.pivot_table(index=["setting", "seed"], columns="variant", values="bits_per_code")
    lines += ["per seed:", "", per_seed.to_markdown(floatfmt=".3f"), ""]
    (out / f"records_{args.dataset}.md").write_text("\n".join(lines))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
