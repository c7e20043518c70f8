"""Frontier: every stored (run, compression) point, accuracy against size, the Pareto set; and a sweep.

Baselines need no special case: they are the binarize / kmeans / pq points of the lam = 0 run,
drawn in the same chart as the regularized runs' points.
"""

from __future__ import annotations

import streamlit as st

from core.charts import SIZE_AXES, frontier_figure, reg_label
from core.config import DATASETS, LAYOUTS, MODELS, REGULARIZERS, CompressConfig, TrainConfig
from core.data import DatasetUnavailable
from core.experiments import pareto_mask
from core.pq import check_fits
from core.train import TrainingDiverged
from ui.common import D_OPTIONS, K_OPTIONS, LAM_OPTIONS, compressions_table, fmt_k, fmt_lam, show_error, store

QP = "query-params"

st.title("Frontier")
st.caption(
    "Accuracy against size for every compression in the store. The baselines (Gong et al. 2014: "
    "binarize, k-means, PQ) are the points of the unregularized (λ = 0) runs."
)


def sweep_grid(methods, dims, ks, layout) -> list[CompressConfig]:
    """The compression settings of a sweep, each once (canonical keys)."""
    configs = {}
    for method in methods:
        if method in ("float", "binarize"):
            grid = [CompressConfig(method=method)]
        elif method == "kmeans":
            grid = [CompressConfig(method="kmeans", subvector_size=1, n_centroids=k) for k in ks]
        else:
            grid = [
                CompressConfig(method="pq", subvector_size=d, n_centroids=k, layout=layout) for d in dims for k in ks
            ]
        for cfg in grid:
            configs.setdefault(cfg.key(), cfg)
    return list(configs.values())


# ------------------------------------------------------------------------------------------ sweep
with st.expander("Run a sweep: train the missing runs, compress each with every setting", expanded=False):
    with st.form("sweep"):
        col1, col2, col3 = st.columns(3)
        with col1:
            sw_dataset = st.selectbox("Dataset", DATASETS, index=DATASETS.index("mnist-5k"), key="sw_dataset")
            sw_model = st.selectbox("Model", MODELS, key="sw_model")
            sw_hidden = st.text_input("Hidden widths (mlp)", "300,100", key="sw_hidden")
            sw_epochs = st.number_input("Epochs", 1, 100, 5, key="sw_epochs")
        with col2:
            sw_reg = st.selectbox("Regularizer for λ > 0", [r for r in REGULARIZERS if r != "none"], key="sw_reg")
            sw_lams = st.multiselect(
                "λ values (0 = the unregularized baseline run)",
                LAM_OPTIONS,
                default=[0.0, 0.01],
                format_func=fmt_lam,
                key="sw_lams",
            )
            sw_seed = st.number_input("Seed", 0, 10_000, 0, key="sw_seed")
        with col3:
            sw_methods = st.multiselect(
                "Methods",
                ["float", "binarize", "kmeans", "pq"],
                default=["float", "binarize", "kmeans", "pq"],
                key="sw_methods",
            )
            sw_dims = st.multiselect("Subvector sizes d (pq)", D_OPTIONS, default=[4, 8], key="sw_dims")
            sw_ks = st.multiselect(
                "Centroids k (pq, kmeans)", K_OPTIONS, default=[16, 256], format_func=fmt_k, key="sw_ks"
            )
            sw_layout = st.selectbox("Layout (pq)", LAYOUTS, key="sw_layout")
        submitted = st.form_submit_button("Run the sweep", type="primary")

    if submitted:
        try:
            hidden = tuple(int(p) for p in sw_hidden.replace(" ", "").split(",") if p) or (300, 100)
            train_configs = [
                TrainConfig(
                    dataset=sw_dataset,
                    model=sw_model,
                    hidden=hidden,
                    reg=sw_reg if lam > 0 else "none",
                    lam=float(lam),
                    epochs=int(sw_epochs),
                    seed=int(sw_seed),
                )
                for lam in sorted(set(sw_lams))
            ]
            compress_configs = sweep_grid(sw_methods, sw_dims, sw_ks, sw_layout)
        except ValueError as error:
            show_error(error)
            train_configs, compress_configs = [], []
        if not train_configs or not compress_configs:
            st.warning("Pick at least one λ and one method (with d and k for pq / kmeans).")
        else:
            n_total = len(train_configs) * (1 + len(compress_configs))
            progress = st.progress(0.0, text="Starting the sweep…")
            done, skipped, failed = 0, 0, 0
            for cfg in train_configs:
                progress.progress(done / n_total, text=f"Training λ={cfg.lam:g} ({cfg.reg})…")
                try:
                    run, _ = store().get_or_train(
                        cfg,
                        on_step=lambda step, n_steps, cfg=cfg, done=done: progress.progress(
                            done / n_total, text=f"Training λ={cfg.lam:g} ({cfg.reg}): step {step}/{n_steps}…"
                        ),
                    )
                except (DatasetUnavailable, TrainingDiverged, ValueError) as error:
                    show_error(error)
                    failed += 1
                    done += 1 + len(compress_configs)
                    continue
                done += 1
                shapes = [(layer["layer"], tuple(layer["shape"])) for layer in run.histograms[0]]
                for ccfg in compress_configs:
                    progress.progress(done / n_total, text=f"λ={cfg.lam:g}: {ccfg.label()}…")
                    try:
                        check_fits(shapes, ccfg)
                    except ValueError as error:
                        st.warning(f"Skipped {ccfg.label()} on λ={cfg.lam:g}: {error}")
                        skipped += 1
                        done += 1
                        continue
                    try:
                        store().get_or_compress(run, ccfg)
                    except (DatasetUnavailable, ValueError) as error:
                        show_error(error)
                        failed += 1
                    done += 1
            progress.progress(1.0, text="Sweep done.")
            st.success(
                f"Sweep done: {len(train_configs)} runs × {len(compress_configs)} settings; "
                f"{skipped} skipped (did not fit), {failed} failed."
            )

# ---------------------------------------------------------------------------------------- frontier
table = compressions_table()
if table.empty:
    st.info("No compressions are stored yet. Compress a run on the Compress page, or run a sweep above.")
    st.stop()

datasets = sorted(table["dataset"].unique(), key=lambda d: -int((table["dataset"] == d).sum()))
col1, col2, col3 = st.columns([2, 3, 2])
with col1:
    dataset = st.selectbox("Dataset", datasets, key="dataset", bind=QP)
    models = sorted(table[table["dataset"] == dataset]["model"].unique())
    model = st.selectbox("Model", models, key="model", bind=QP)
with col2:
    x_axis = st.radio("Size axis (log scale)", list(SIZE_AXES), format_func=lambda k: SIZE_AXES[k][0], key="x", bind=QP)
with col3:
    show_dominated = st.toggle("Show dominated points", value=True, key="dominated", bind=QP)

rows = table[(table["dataset"] == dataset) & (table["model"] == model)].reset_index(drop=True)
st.plotly_chart(
    frontier_figure(
        rows,
        x=x_axis,
        show_dominated=show_dominated,
        title=f"{dataset} · {model}: accuracy against size ({len(rows)} points)",
    ),
    theme=None,
    key="chart_frontier",
)
st.caption(
    "Colour: method (same on every page). Symbol: regularizer and λ. Black outline and dotted line: "
    "the Pareto-optimal set (no other point is both smaller and more accurate). Hover for the full config."
)

rows["pareto"] = pareto_mask(rows[x_axis].tolist(), rows["accuracy"].tolist(), SIZE_AXES[x_axis][1])
rows["regularizer"] = [reg_label(reg, lam) for reg, lam in zip(rows["reg"], rows["lam"])]
front = rows[rows["pareto"]].sort_values(x_axis)
st.subheader(f"Pareto-optimal points ({len(front)})")
st.dataframe(
    front[
        [
            "label",
            "regularizer",
            "accuracy",
            "float_accuracy",
            "accuracy_drop",
            "fc_ratio",
            "model_ratio",
            "fc_bits",
            "file_bytes",
            "run_id",
        ]
    ],
    hide_index=True,
    key="pareto_table",
    column_config={
        "accuracy": st.column_config.NumberColumn(format="percent"),
        "float_accuracy": st.column_config.NumberColumn(format="percent"),
        "accuracy_drop": st.column_config.NumberColumn(format="percent"),
        "fc_ratio": st.column_config.NumberColumn(format="%.2fx"),
        "model_ratio": st.column_config.NumberColumn(format="%.2fx"),
    },
)
