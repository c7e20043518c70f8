"""Frontier: every stored (run, compression) point, accuracy against size, the Pareto set; and a sweep.

Baselines need no special case: they are the binarize / kmeans / pq points of the lam = 0 run,
drawn in the same chart as the regularized runs' points.
"""

from __future__ import annotations

import streamlit as st

from core.charts import SIZE_AXES, frontier_figure
from core.config import LAYOUTS, TrainConfig
from core.experiments import compression_grid, pareto_mask, train_grid
from core.jobs import JobState
from core.pipeline import submit_sweep
from core.records import CompressionRecord
from ui.common import D_OPTIONS, K_OPTIONS, LAM_OPTIONS, compressions, fmt_k, fmt_lam, plain, show_error, store
from ui.jobs import job_progress_ui, last_failure_ui, manager
from ui.widgets import radio, selectbox, toggle, train_fields_ui


def sweep_form() -> None:
    """Train the missing runs of a grid and compress each with every setting that fits."""
    with st.form("sweep"):
        try:
            fixed: dict | None = train_fields_ui(prefix="sw_", bind=False, sweep=True)
        except ValueError as error:
            fixed = None
            st.error(f"**This configuration is not valid:** {plain(error)}")
        col1, col2 = st.columns(2)
        with col1:
            lams = st.multiselect(
                "λ values (0 = the unregularized baseline run)",
                LAM_OPTIONS,
                default=[0.0, 0.01],
                format_func=fmt_lam,
                key="sw_lams",
            )
            methods = st.multiselect(
                "Methods", ["float", "binarize", "kmeans", "pq"], default=["float", "binarize", "kmeans", "pq"],
                key="sw_methods",
            )  # fmt: skip
        with col2:
            dims = st.multiselect("Subvector sizes d (pq)", D_OPTIONS, default=[4, 8], key="sw_dims")
            ks = st.multiselect(
                "Centroids k (pq, kmeans)", K_OPTIONS, default=[16, 256], format_func=fmt_k, key="sw_ks"
            )
            layout = st.selectbox("Layout (pq)", LAYOUTS, key="sw_layout")
        submitted = st.form_submit_button("Run the sweep", type="primary")
    if not submitted or fixed is None:
        return
    try:
        train_cfgs: list[TrainConfig] = train_grid(fixed, [fixed["reg"]], [float(lam) for lam in lams], [fixed["seed"]])
        compress_cfgs = compression_grid(methods, dims, ks, [layout])
    except ValueError as error:
        show_error(error)
        return
    if not train_cfgs or not compress_cfgs:
        st.warning("Pick at least one λ and one method (with d and k for pq / kmeans).")
        return
    status = submit_sweep(store(), train_cfgs, compress_cfgs)
    st.session_state["sweep_key"] = status.key
    st.rerun()


def sweep_status() -> None:
    """The sweep this session started: its live panel, or how it ended."""
    key = st.session_state.get("sweep_key")
    if not key:
        return
    status = manager().status(key)
    if status is None:
        return
    if status.live:
        job_progress_ui(key, "Sweep")
    elif status.state is JobState.DONE:
        st.success(f"Sweep done ({plain(status.label)}): {plain(status.text)} Its points are in the chart below.")
    else:
        last_failure_ui(key)


def frontier(points: list[CompressionRecord]) -> None:
    datasets = sorted({p.train_config.dataset for p in points}, key=lambda d: -sum(
        p.train_config.dataset == d for p in points))  # fmt: skip
    col1, col2, col3 = st.columns([2, 3, 2])
    with col1:
        dataset = selectbox("Dataset", datasets, datasets[0], "dataset", True)
        models = sorted({p.train_config.model for p in points if p.train_config.dataset == dataset})
        model = selectbox("Model", models, models[0], "model", True)
    with col2:
        x_axis = radio(
            "Size axis (log scale)", list(SIZE_AXES), "fc_ratio", "x", True, format_func=lambda k: SIZE_AXES[k][0]
        )
    with col3:
        show_dominated = toggle("Show dominated points", True, "dominated", True)

    shown = [p for p in points if p.train_config.dataset == dataset and p.train_config.model == model]
    rows = [p.row() for p in shown]
    mask = pareto_mask([r[x_axis] for r in rows], [r["accuracy"] for r in rows], SIZE_AXES[x_axis][1])
    st.plotly_chart(
        frontier_figure(
            shown,
            mask,
            x=x_axis,
            show_dominated=show_dominated,
            title=f"{dataset} · {model}: accuracy against size ({len(shown)} points)",
        ),
        theme=None,
        key="chart_frontier",
    )
    st.caption(
        "Colour: method (same on every page). Symbol: regularizer and λ. Black outline and dotted line: "
        "the Pareto-optimal set (no other point is both smaller and more accurate). Hover for the full config."
    )
    front = sorted((r for r, on in zip(rows, mask) if on), key=lambda r: r[x_axis])
    st.subheader(f"Pareto-optimal points ({len(front)})")
    st.dataframe(
        [
            {
                "compression": r["label"],
                "regularizer": r["reg_label"],
                "accuracy (%)": round(100 * r["accuracy"], 2),
                "float accuracy (%)": round(100 * r["float_accuracy"], 2),
                "drop (points)": round(100 * r["accuracy_drop"], 2),
                "FC ratio": round(r["fc_ratio"], 2),
                "model ratio": round(r["model_ratio"], 2),
                "FC bits": r["fc_bits"],
                "file bytes": r["file_bytes"],
                "run": r["run_id"],
            }
            for r in front
        ],
        hide_index=True,
        key="pareto_table",
    )


def page() -> None:
    st.title("Frontier")
    st.caption(
        "Accuracy against size for every compression in the store. The baselines (Gong et al. 2014: "
        "binarize, k-means, PQ) are the points of the unregularized (λ = 0) runs."
    )
    with st.expander("Run a sweep: train the missing runs, compress each with every setting", expanded=False):
        sweep_form()
    sweep_status()
    sweeping = any(j.live and j.kind == "sweep" for j in manager().jobs(finished_within_s=0))
    # while a sweep runs (from any session) the chart reloads every few seconds: points land as they are stored
    st.fragment(frontier_section, run_every=3.0 if sweeping else None)()


def frontier_section() -> None:
    points = compressions()
    if not points:
        st.info("No compressions are stored yet. Compress a run on the Compress page, or run a sweep above.")
        return
    frontier(points)


if __name__ == "__main__":
    page()
