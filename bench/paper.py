"""The paper's experiment, and the anchors it is measured against.

For each dataset / network: a float baseline without regularizer, regularized runs over a lam grid
(binary = the paper's term in our reading, levels, pq), all with the same epochs and optimizer. Every
run is compressed over a grid of (method, d, k, layout), without and with centroid fine-tuning.

    Gong et al. 2014       binarize / kmeans / pq on the UNREGULARIZED run, no fine-tuning
    Deep Compression       kmeans + centroid fine-tuning on the unregularized run
    ours                   the same compressions of the REGULARIZED runs (+ fine-tuning)

Outputs under --out (default bench/results):
    points_<dataset>_<model>.csv   every (run, compression) point (CompressionRecord.row() + family)
    points.csv                     all of them
    budget.csv / budget.md         per accuracy-drop budget, the largest FC ratio each family reaches
    headline.csv / headline.md     the headline rows re-run over five seeds (mean, spread, worst)
    frontier.png                   accuracy vs FC ratio (log x), one panel per dataset / network

Runs and compressions go through core.experiments.run_sweep over a core.store.RunStore (default cache
bench/cache/, gitignored), so a second invocation only computes what is missing; the Pareto sets and
the budget table are core.experiments' too, the app's own rules.

    python bench/paper.py                 # the full run (~30 min on 2 shared CPU cores)
    python bench/paper.py --smoke --out /tmp/paper-smoke   # tiny, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd

from core.analysis import best_within_budget, pareto_mask
from core.config import CompressConfig, TrainConfig
from core.data import DatasetUnavailable, load_dataset
from core.experiments import SweepResult, fc_shapes, fits, run_sweep
from core.store import RunStore

BUDGETS = (0.5, 1.0, 2.0)  # accuracy-drop budgets, in points below the float unregularized baseline
HEADLINE_SEEDS = (0, 1, 2, 3, 4)


# ------------------------------------------------------------------------------------- settings


@dataclass
class Setting:
    """One (dataset, network) block of the experiment."""

    dataset: str
    model: str
    epochs: int
    regs: list[dict]  # regularized runs (TrainConfig fields beyond the shared ones)
    finetune_epochs: int  # centroid fine-tuning epochs of the "+ft" points
    hidden: tuple[int, ...] = (300, 100)
    batch_size: int = 128
    lr: float = 1e-3
    note: str = ""
    seeds: tuple[int, ...] = HEADLINE_SEEDS  # seeds of the headline rows (seed 0 also runs the grid)
    grid: list[CompressConfig] = field(default_factory=list)
    ft_grid: list[CompressConfig] = field(default_factory=list)
    long_ft_grid: list[CompressConfig] = field(default_factory=list)  # get 3 * finetune_epochs too

    def train_config(self, seed: int = 0, **reg) -> TrainConfig:
        return TrainConfig(
            dataset=self.dataset,
            model=self.model,
            hidden=self.hidden,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=seed,
            **reg,
        )


def pq(d: int, k: int, layout: str = "shared") -> CompressConfig:
    return CompressConfig(method="pq", subvector_size=d, n_centroids=k, layout=layout)


# The compression grid. FC ratios on LeNet-300-100 (core.size.size_report, float32 centroids):
# kmeans k=2/4/16: 32/16/8x; pq shared (4,16) 31x, (4,8) 42x, (8,256) 18x, (8,64) 34x, (8,32) 44x,
# (8,16) 58x, (8,8) 80x, (16,256) 16x, (16,64) 43x, (16,16) 93x; per-chunk (k <= 10: the last layer has
# 10 rows) (4,8) 17x, (8,8) 21x, (8,4) 39x, (16,4) 46x. High ratios need large d with small k: with
# k = 256 the float32 codebooks (k * d * 32 bits a layer) dominate the bits.
FULL_GRID = [
    CompressConfig(method="binarize"),
    *[CompressConfig(method="kmeans", subvector_size=1, n_centroids=k) for k in (2, 4, 16)],
    *[
        pq(d, k)
        for d, k in ((4, 16), (4, 8), (8, 256), (8, 64), (8, 32), (8, 16), (8, 8), (16, 256), (16, 64), (16, 16))
    ],
    *[pq(d, k, "per-chunk") for d, k in ((4, 8), (8, 8), (8, 4), (16, 4))],
]
# Fine-tuning costs epochs over the training set per point, so only this subset gets "+ft" points.
FT_GRID = [
    CompressConfig(method="binarize"),
    *[CompressConfig(method="kmeans", subvector_size=1, n_centroids=k) for k in (2, 4, 16)],
    *[pq(d, k) for d, k in ((4, 16), (4, 8), (8, 32), (8, 16), (8, 8), (16, 16))],
    pq(8, 4, "per-chunk"),
]
# Longer fine-tuning (3x the setting's epochs) on the grid points around 40x.
LONG_FT_GRID = [pq(4, 8), pq(8, 32), pq(8, 16), CompressConfig(method="kmeans", subvector_size=1, n_centroids=4)]
SMOKE_GRID = [
    CompressConfig(method="binarize"),
    CompressConfig(method="kmeans", subvector_size=1, n_centroids=2),
    pq(4, 8),
    pq(4, 4, "per-chunk"),
]


def full_settings() -> list[Setting]:
    def binary(lam: float) -> dict:
        return dict(reg="binary", lam=lam, warmup_epochs=2)

    def levels(lam: float, n: int) -> dict:
        return dict(reg="levels", lam=lam, warmup_epochs=2, reg_levels=n)

    def pqreg(lam: float, d: int, k: int) -> dict:
        return dict(reg="pq", lam=lam, warmup_epochs=2, reg_subvector_size=d, reg_centroids=k)

    return [
        Setting(
            "mnist-5k",
            "mlp",
            epochs=15,
            finetune_epochs=3,
            regs=[binary(0.02), binary(0.1), levels(0.5, 2), pqreg(1.0, 8, 16), pqreg(1.0, 4, 8)],
            grid=FULL_GRID,
            ft_grid=FT_GRID,
            long_ft_grid=LONG_FT_GRID,
        ),
        Setting(
            "fashion-mnist",
            "mlp",
            epochs=8,
            finetune_epochs=1,
            regs=[binary(0.02), binary(0.05), binary(0.1), levels(0.5, 2), pqreg(1.0, 8, 16), pqreg(1.0, 4, 8)],
            grid=FULL_GRID,
            ft_grid=FT_GRID,
            long_ft_grid=LONG_FT_GRID,
            note="fine-tuning 1 (and 3) epochs: 60k images an epoch",
        ),
        Setting(
            "mnist-5k",
            "lenet5",
            epochs=8,
            finetune_epochs=3,
            regs=[binary(0.05)],
            grid=FULL_GRID,
            ft_grid=FT_GRID,
            note="lenet5: one lam value (convs are slow on CPU); fashion-mnist/lenet5 not run",
        ),
        # The paper's datasets: only when their files are present (no download here).
        Setting(
            "mnist",
            "mlp",
            epochs=8,
            finetune_epochs=1,
            regs=[binary(0.02), binary(0.05)],
            grid=FULL_GRID,
            ft_grid=FT_GRID,
        ),
        Setting(
            "cifar10", "cifar-cnn", epochs=8, finetune_epochs=1, regs=[binary(0.02)], grid=FULL_GRID, ft_grid=FT_GRID
        ),
    ]


def smoke_settings() -> list[Setting]:
    return [
        Setting(
            "digits",
            "mlp",
            hidden=(32, 16),
            epochs=2,
            lr=3e-3,
            batch_size=64,
            finetune_epochs=1,
            regs=[
                dict(reg="binary", lam=0.05),
                dict(reg="levels", lam=0.5),
                dict(reg="pq", lam=0.5, reg_subvector_size=4, reg_centroids=8),
            ],
            grid=SMOKE_GRID,
            ft_grid=SMOKE_GRID[:3],
        )
    ]


# --------------------------------------------------------------------------------------- families


def family(reg: str, method: str, finetune_epochs: int) -> str:
    """The method family a point belongs to (the budget table's rows)."""
    ft = finetune_epochs > 0
    names = {"binarize": "binarize", "kmeans": "kmeans", "pq": "PQ"}
    if reg == "none":
        if not ft:
            return f"Gong {names[method]}"
        if method == "kmeans":
            return "Deep Compression (kmeans+ft)"
        return f"no reg, {names[method]}+ft (ablation)"
    lead = {"binary": "ours: binary reg", "levels": "levels reg", "pq": "pq reg"}[reg]
    tail = names[method] if method == "binarize" else "PQ/kmeans"
    return f"{lead} + {tail}" + (" + ft" if ft else "")


BASELINE_FAMILIES = ("Gong binarize", "Gong kmeans", "Gong PQ", "Deep Compression (kmeans+ft)")


def family_order(name: str) -> tuple[int, str]:
    """Baselines first, then the no-reg ablations, then the paper's term, levels, pq."""
    if name in BASELINE_FAMILIES:
        return (0, str(BASELINE_FAMILIES.index(name)))
    for rank, lead in enumerate(("no reg", "ours", "levels", "pq reg"), start=1):
        if name.startswith(lead):
            return (rank, name)
    return (9, name)


# ------------------------------------------------------------------------------------------ run


def compressions(setting: Setting) -> list[CompressConfig]:
    """Every compression of a run of `setting`: the grid, the "+ft" points and the longer fine-tuning."""
    ft = setting.finetune_epochs
    return [
        *setting.grid,
        *[replace(c, finetune_epochs=ft) for c in setting.ft_grid],
        *[replace(c, finetune_epochs=3 * ft) for c in setting.long_ft_grid],
    ]


def sweep_points(
    store: RunStore, train_cfgs: list[TrainConfig], compress_cfgs: list[CompressConfig]
) -> tuple[SweepResult, list[dict]]:
    """(sweep, rows): core.experiments.run_sweep on the CPU, and each point's row() with its family
    and run label. Settings that do not fit the network are skipped by the sweep."""
    sweep = run_sweep(store, train_cfgs, compress_cfgs, device="cpu")
    for run in sweep.runs:
        _TRAIN_CONFIGS[run.run_id] = run.config
    rows = []
    for result in sweep.points:
        row = result.row()
        row["family"] = family(row["reg"], row["method"], row["finetune_epochs"])
        row["run_label"] = run_label(_TRAIN_CONFIGS[row["run_id"]])
        rows.append(row)
    return sweep, rows


def run_label(cfg: TrainConfig) -> str:
    return cfg.label()


def budget_table(points: pd.DataFrame, float_acc: float) -> pd.DataFrame:
    """For each budget and family: the largest FC ratio among points within `budget` points of
    `float_acc` (the unregularized float accuracy), with its model ratio, accuracy and config
    (core.analysis.best_within_budget, families in alphabetical order)."""
    # Groups come in the order they first appear: sorted points give the families alphabetically.
    by_family = points.sort_values("family", kind="stable")
    best = best_within_budget(by_family, BUDGETS, float_acc, size_col="fc_ratio", group_col="family")
    found = best["found"].astype(bool)
    return pd.DataFrame(
        {
            "budget_pts": best["budget_pts"],
            "family": best["family"],
            "fc_ratio": best["fc_ratio"],  # NaN where no point is within the budget
            "model_ratio": best["model_ratio"],
            "accuracy": best["accuracy"],
            "run": best["run_label"].where(found, ""),
            "compression": best["label"].where(found, ""),
        }
    ).reset_index(drop=True)


def frontier_png(points: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = list(points.groupby(["dataset", "model"], sort=False))
    fig, axes = plt.subplots(1, len(blocks), figsize=(6.2 * len(blocks), 4.8), squeeze=False)
    for ax, ((dataset, model), part) in zip(axes[0], blocks):
        seed0 = part[(part["seed"] == 0) & (part["method"] != "float")]
        base = seed0[seed0["reg"] == "none"]
        float_acc = 100 * base["float_accuracy"].iloc[0] if not base.empty else None
        groups = [
            ("baselines: no reg (Gong, Deep Compression)", seed0["reg"] == "none", "#7f7f7f", "o"),
            ("binary reg (the paper, our reading)", seed0["reg"] == "binary", "#d62728", "s"),
            ("levels reg", seed0["reg"] == "levels", "#2ca02c", "^"),
            ("pq reg", seed0["reg"] == "pq", "#1f77b4", "D"),
        ]
        for name, mask, color, marker in groups:
            g = seed0[mask]
            if g.empty:
                continue
            ft = g["finetune_epochs"] > 0
            ax.scatter(
                g.loc[~ft, "fc_ratio"],
                100 * g.loc[~ft, "accuracy"],
                s=18,
                c=color,
                marker=marker,
                alpha=0.45,
                label=f"{name}",
            )
            ax.scatter(
                g.loc[ft, "fc_ratio"],
                100 * g.loc[ft, "accuracy"],
                s=26,
                facecolors="none",
                edgecolors=color,
                marker=marker,
                label=f"{name} + ft",
            )
            front = g[pareto_mask(g["fc_ratio"].tolist(), g["accuracy"].tolist(), larger_is_better=True)]
            front = front.sort_values("fc_ratio")
            ax.plot(front["fc_ratio"], 100 * front["accuracy"], color=color, lw=1.2)
        if float_acc is not None:
            ax.axhline(float_acc, color="black", lw=0.8, ls="--", label="float, no reg")
            ax.axhline(float_acc - 1, color="black", lw=0.6, ls=":", label="float - 1 point")
            ax.set_ylim(max(0, float_acc - 25), float_acc + 2)
        ax.set_xscale("log")
        ax.set_xlabel("FC compression ratio (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset} / {model} (seed 0)")
        ax.grid(True, which="both", alpha=0.25)
    axes[0][0].legend(fontsize=6.5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def to_markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if isinstance(v, float):
                cells.append("—" if v != v else (f"{v:.4f}" if c.startswith("acc") else f"{v:.1f}"))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny setting (digits, 2 epochs), seconds")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for CSV / MD / PNG")
    parser.add_argument("--cache-dir", help="run store (default bench/cache; with --smoke <out>/cache)")
    parser.add_argument("--only", nargs="*", help="dataset/model blocks to run, e.g. fashion-mnist/mlp")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=40.0,
        help="start no new block after this many minutes (what is done is written)",
    )
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir) if args.cache_dir else (out / "cache" if args.smoke else ROOT / "bench" / "cache")
    store = RunStore(cache)
    settings = smoke_settings() if args.smoke else full_settings()
    if args.only:
        settings = [s for s in settings if f"{s.dataset}/{s.model}" in args.only]
    started = time.perf_counter()
    all_points, budgets, headlines, skipped = [], [], [], []

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    for setting in settings:
        block = f"{setting.dataset}/{setting.model}"
        if (time.perf_counter() - started) / 60 > args.max_minutes:
            skipped.append(f"{block}: time budget --max-minutes={args.max_minutes} spent")
            log(f"SKIP {skipped[-1]}")
            continue
        try:
            data = load_dataset(setting.dataset)
        except DatasetUnavailable as err:
            skipped.append(f"{block}: dataset unavailable ({str(err).split(' Place ')[0]})")
            log(f"SKIP {skipped[-1]}")
            continue
        shapes = fc_shapes(setting.train_config(0), data)
        n_grid = sum(fits(c, shapes) is None for c in setting.grid)
        n_ft = sum(fits(c, shapes) is None for c in setting.ft_grid)
        log(f"{block}: {n_grid} + {n_ft} (+ft{setting.finetune_epochs}) compressions a run; {setting.note}")

        # 1. seed 0: the float baseline and every regularized run, over the whole grid.
        t0 = time.perf_counter()
        train_cfgs = [setting.train_config(0, **reg) for reg in [{}, *setting.regs]]
        sweep, points = sweep_points(store, train_cfgs, compressions(setting))
        for run in sweep.runs:
            log(f"  {run_label(run.config):28s} float {run.test_accuracy:.4f}")
        log(
            f"  {len(sweep.runs)} runs ({sweep.new_runs} trained), {len(sweep.points)} points "
            f"({sweep.new_points} computed), {len(sweep.skipped)} skipped, {time.perf_counter() - t0:.0f}s"
        )
        base_run = next(run for run in sweep.runs if run.run_id == train_cfgs[0].run_id())
        frame = pd.DataFrame(points)
        float_acc = frame.loc[frame["reg"] == "none", "float_accuracy"].iloc[0]
        table = budget_table(frame, float_acc)
        table.insert(0, "block", block)
        table.insert(1, "float_acc_noreg", float_acc)
        budgets.append(table)

        # 2. headline rows over five seeds: the float baseline, the best baseline and the best
        #    regularized point at the 1-point budget (at 2 points when none reaches 1), picked on seed 0.
        picks = headline_picks(frame, table)
        seeds = HEADLINE_SEEDS[:2] if args.smoke else setting.seeds
        for seed in seeds[1:]:
            run_cfgs = list(dict.fromkeys(p["train_config"] for p in picks))
            for run_cfg in run_cfgs:
                chosen = [
                    p["compress_config"]
                    for p in picks
                    if p["train_config"] == run_cfg and p["compress_config"] is not None
                ]
                seed_sweep, rows = sweep_points(store, [replace(run_cfg, seed=seed)], chosen)
                points += rows
                # the run's own float accuracy at this seed (no compression), for the float mean
                points.append(float_row(seed_sweep.runs[0], setting))
            log(f"  seed {seed}: {len(run_cfgs)} runs, {len(picks)} headline points")
        points.append(float_row(base_run, setting))
        frame = pd.DataFrame(points)
        headlines.append(headline_table(frame, picks, block))
        frame.to_csv(out / f"points_{setting.dataset}_{setting.model}.csv", index=False)
        all_points.append(frame)
        write_outputs(out, all_points, budgets, headlines, skipped)
    write_outputs(out, all_points, budgets, headlines, skipped)
    log(f"done; wrote {out}")
    return 0


def float_row(run, setting: Setting) -> dict:
    return {
        "run_id": run.run_id,
        "dataset": setting.dataset,
        "model": setting.model,
        "reg": run.config.reg,
        "lam": run.config.lam,
        "epochs": run.config.epochs,
        "seed": run.config.seed,
        "method": "float",
        "label": "float",
        "finetune_epochs": 0,
        "float_accuracy": run.test_accuracy,
        "accuracy": run.test_accuracy,
        "fc_ratio": 1.0,
        "model_ratio": 1.0,
        "family": "float",
        "run_label": run_label(run.config),
    }


def headline_picks(frame: pd.DataFrame, table: pd.DataFrame) -> list[dict]:
    """The (run config, compression config) pairs re-run over seeds: float unregularized, then per
    budget of 1 point (else 2) the best baseline family's point and the best regularized point."""
    picks = []
    base_run = frame[frame["reg"] == "none"].iloc[0]
    picks.append(
        {"what": "float, no reg", "family": "float", "train_config": config_of(base_run), "compress_config": None}
    )
    for what, fams in (
        ("best baseline", list(BASELINE_FAMILIES)),
        ("best no-reg + ft (ablation)", [f for f in frame["family"].unique() if "ablation" in f]),
        (
            "best regularized",
            [f for f in frame["family"].unique() if frame.loc[frame["family"] == f, "reg"].iloc[0] != "none"],
        ),
    ):
        for budget in (1.0, 2.0):
            cand = table[(table["budget_pts"] == budget) & table["family"].isin(fams) & table["fc_ratio"].notna()]
            if cand.empty:
                continue
            best = cand.sort_values("fc_ratio", ascending=False).iloc[0]
            match = frame[
                (frame["family"] == best["family"])
                & (frame["run_label"] == best["run"])
                & (frame["label"] == best["compression"])
            ].iloc[0]
            picks.append(
                {
                    "what": f"{what} (<= {budget:g} pt on seed 0)",
                    "family": best["family"],
                    "train_config": config_of(match),
                    "compress_config": compress_config_of(match),
                }
            )
            break
    return picks


def config_of(row) -> TrainConfig:
    return _TRAIN_CONFIGS[row["run_id"]]


def compress_config_of(row) -> CompressConfig:
    return CompressConfig(
        method=row["method"],
        subvector_size=int(row["subvector_size"]),
        n_centroids=int(row["n_centroids"]),
        layout=row["layout"],
        centroid_bits=int(row["centroid_bits"]),
        finetune_epochs=int(row["finetune_epochs"]),
    )


_TRAIN_CONFIGS: dict[str, TrainConfig] = {}


def headline_table(frame: pd.DataFrame, picks: list[dict], block: str) -> pd.DataFrame:
    rows = []
    for p in picks:
        seedless = replace(p["train_config"], seed=0)
        ids = {replace(seedless, seed=s).run_id() for s in range(10)}
        if p["compress_config"] is None:
            part = frame[frame["run_id"].isin(ids) & (frame["method"] == "float")].drop_duplicates("run_id")
            label = "float"
        else:
            label = p["compress_config"].label()
            part = frame[frame["run_id"].isin(ids) & (frame["label"] == label)].drop_duplicates("run_id")
        acc = 100 * part["accuracy"]
        rows.append(
            {
                "block": block,
                "row": p["what"],
                "family": p["family"],
                "run": run_label(seedless),
                "compression": label,
                "seeds": len(part),
                "acc_mean": acc.mean(),
                "acc_std": acc.std(ddof=0) if len(part) > 1 else 0.0,
                "acc_min": acc.min(),
                "acc_max": acc.max(),
                "fc_ratio": part["fc_ratio"].iloc[0],
                "model_ratio": part["model_ratio"].iloc[0],
            }
        )
    return pd.DataFrame(rows)


def write_outputs(out: Path, all_points, budgets, headlines, skipped) -> None:
    if not all_points:
        (out / "skipped.txt").write_text("\n".join(skipped) + "\n")
        return
    points = pd.concat(all_points, ignore_index=True)
    points.to_csv(out / "points.csv", index=False)
    budget = pd.concat(budgets, ignore_index=True)
    budget.to_csv(out / "budget.csv", index=False)
    head = pd.concat(headlines, ignore_index=True)
    head.to_csv(out / "headline.csv", index=False)
    md = []
    for block, part in budget.groupby("block", sort=False):
        md.append(f"### {block} (float, no reg: {100 * part['float_acc_noreg'].iloc[0]:.2f}%)\n")
        wide = pd.DataFrame({"family": sorted(dict.fromkeys(part["family"]), key=family_order)})
        for what in ("fc_ratio", "model_ratio"):
            for budget in BUDGETS:
                sel = part[part["budget_pts"] == budget].set_index("family")[what]
                wide[f"{what.replace('_', ' ')} @ -{budget:g} pt"] = [sel.get(f, float("nan")) for f in wide["family"]]
        one = part[part["budget_pts"] == 1.0].set_index("family")
        wide["point @ -1 pt (run / compression)"] = [
            f"{one.at[f, 'run']} / {one.at[f, 'compression']}" if one.at[f, "run"] else "—" for f in wide["family"]
        ]
        md.append(to_markdown(wide))
    (out / "budget.md").write_text("\n".join(md))
    head_md = head.copy()
    head_md["accuracy (%)"] = [
        f"{m:.2f} ± {s:.2f} (n={n})" for m, s, n in zip(head_md["acc_mean"], head_md["acc_std"], head_md["seeds"])
    ]
    head_md["worst (%)"] = [f"{v:.2f}" for v in head_md["acc_min"]]
    (out / "headline.md").write_text(
        to_markdown(
            head_md[["block", "row", "run", "compression", "accuracy (%)", "worst (%)", "fc_ratio", "model_ratio"]]
        )
    )
    (out / "skipped.txt").write_text("\n".join(skipped) + "\n")
    frontier_png(points, out / "frontier.png")


if __name__ == "__main__":
    raise SystemExit(main())
