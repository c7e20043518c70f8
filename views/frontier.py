"""Frontier: every stored (run, compression) point, accuracy against size, the Pareto set; and a sweep.

Baselines need no special case: they are the binarize / kmeans / pq points of the lam = 0 run,
drawn in the same chart as the regularized runs' points.
"""

from __future__ import annotations

import streamlit as st

from core.analysis import pareto_mask
from core.charts import SIZE_AXES, frontier_figure
from core.config import LAYOUTS, METHODS, TrainConfig
from core.data import DATASET_SOURCES
from core.experiments import compression_grid, submit_sweep, train_grid
from core.jobs import JobState
from core.records import CompressionRecord
from ui.common import (
    D_OPTIONS,
    K_OPTIONS,
    LAM_OPTIONS,
    SETTLE_S,
    compressions,
    fmt_bytes,
    fmt_k,
    fmt_lam,
    fmt_pct,
    fmt_points,
    plain,
    show_error,
    store,
)
from ui.detail import point_detail_ui, point_id
from ui.jobs import job_progress_ui, last_failure_ui, manager
from ui.widgets import number_input, radio, selectbox, toggle, train_fields_ui


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
            methods = st.multiselect("Methods", METHODS, default=list(METHODS), key="sw_methods")
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
    try:
        status = submit_sweep(store(), train_cfgs, compress_cfgs)
    except ValueError as error:  # a read-only store, an unusable jobs folder: one line, nothing queued
        st.error(f"**The sweep could not start.** {plain(error)}")
        return
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


def multiselect_filter(label: str, options: list, key: str, format_func=str) -> list:
    """A filter over the values present (every one chosen by default), kept in the URL (?key=a,b).
    A value that appears while the page is open (a sweep's new λ, a new seed) is chosen too: the
    filter hides what its user took out, never what was not there yet."""
    raw = st.query_params.get(key)
    seen_key = f"_seen_{key}"
    seen = st.session_state.get(seen_key)
    if key not in st.session_state:
        wanted = [o for o in options if raw is not None and str(o) in raw.split(",")]
        if raw is not None and not wanted:
            st.warning(f"The link's {plain(key)}={plain(raw[:60])} matches none of these points; showing all.")
        st.session_state[key] = wanted or list(options)
    elif seen is not None:
        st.session_state[key] = list(st.session_state[key]) + [o for o in options if o not in seen]
    st.session_state[seen_key] = list(options)
    st.session_state[key] = [o for o in options if o in st.session_state[key]] or list(options)
    chosen = st.multiselect(label, options, key=key, format_func=format_func)
    if set(chosen) == set(options):
        st.query_params.pop(key, None)
    else:
        st.query_params[key] = ",".join(str(o) for o in chosen)
    return chosen


def filters(points: list[CompressionRecord]) -> tuple[list[CompressionRecord], str, bool]:
    """The chart's controls: dataset and model, filters by run configuration, an accuracy floor,
    the size axis; returns the points to draw, the axis and whether dominated points show."""
    datasets = sorted({p.train_config.dataset for p in points}, key=lambda d: -sum(
        p.train_config.dataset == d for p in points))  # fmt: skip
    col1, col2, col3 = st.columns([2, 3, 2])
    with col1:
        dataset = selectbox("Dataset", datasets, datasets[0], "dataset", True)
        models = sorted({p.train_config.model for p in points if p.train_config.dataset == dataset})
        model = selectbox("Model", models, models[0], "model", True)
    with col2:
        x_axis = radio(
            "Size axis (log scale)",
            [a for a in SIZE_AXES if not a.startswith("entropy_")],
            "fc_ratio",
            "x",
            True,
            format_func=lambda k: SIZE_AXES[k][0],
        )
    with col3:
        show_dominated = toggle("Show dominated points", True, "dominated", True)
        coded = toggle(
            "Entropy-coded sizes", False, "entropy_sizes", True,
            help="On: each point's size with its codes as its file stores them (entropy-coded for a compression "
            "with entropy coding: its stream and frequency table). Off: the bit-packed codes of every point.",
        )  # fmt: skip
    if coded:
        x_axis = f"entropy_{x_axis}"
    block = [p for p in points if p.train_config.dataset == dataset and p.train_config.model == model]
    n_classes = DATASET_SOURCES[dataset].n_classes if dataset in DATASET_SOURCES else 10
    with st.expander("Filter the runs and the points", expanded=False):
        f1, f2, f3, f4 = st.columns(4)
        with f1:
            regs = multiselect_filter("Regularizer and λ", sorted({p.train_config.label() for p in block}), "f_reg")
        with f2:
            epochs = multiselect_filter("Epochs", sorted({p.train_config.epochs for p in block}), "f_epochs")
        with f3:
            seeds = multiselect_filter("Seeds", sorted({p.train_config.seed for p in block}), "f_seed")
        with f4:
            methods = multiselect_filter("Methods", sorted({p.compress_config.family for p in block}), "f_method")
        floor = number_input(
            "Hide points below this accuracy (%)", 0, 100, 100 // n_classes + 5, "min_acc", True,
            help=f"Chance is {100 // n_classes}% here; points near it are failed compressions that only stretch "
            "the axis and sit on the front for no good reason. 0 shows every point.",
        )  # fmt: skip
    shown = [
        p
        for p in block
        if p.train_config.label() in regs
        and p.train_config.epochs in epochs
        and p.train_config.seed in seeds
        and p.compress_config.family in methods
        and 100 * p.accuracy >= floor
    ]
    hidden = len(block) - len(shown)
    if hidden:
        st.caption(f"{hidden} of {len(block)} points of {plain(dataset)} · {plain(model)} are filtered out.")
    return shown, x_axis, show_dominated


def frontier(points: list[CompressionRecord]) -> None:
    shown, x_axis, show_dominated = filters(points)
    if not shown:
        st.info("No point passes these filters: widen them above.")
        return
    chart(shown, x_axis, show_dominated)


def chart(shown: list[CompressionRecord], x_axis: str, show_dominated: bool) -> None:
    rows = [p.row() for p in shown]
    mask = pareto_mask([r[x_axis] for r in rows], [r["accuracy"] for r in rows], SIZE_AXES[x_axis][1])
    event = st.plotly_chart(
        frontier_figure(shown, mask, x=x_axis, show_dominated=show_dominated,
                        title=f"Accuracy against size ({len(shown)} points)"),
        key="chart_frontier", on_select="rerun", selection_mode="points",
    )  # fmt: skip
    st.caption(
        "Colour: method (the same on every page). Symbol: the run (regularizer and λ; epochs and seed where "
        "they differ). Ringed and joined by the dotted line: the Pareto-optimal set (no other point is both "
        "smaller and more accurate). Click a point, or a row below, to open it."
    )
    picked = [p["customdata"][0] for p in (event.selection.points if event else []) if p.get("customdata")]
    front = sorted((i for i, on in enumerate(mask) if on), key=lambda i: rows[i][x_axis])
    stored = "entropy_" if x_axis.startswith("entropy_") else ""  # the sizes the switch chose
    st.subheader(f"Pareto-optimal points ({len(front)})")
    table = st.dataframe(
        [
            {
                "compression": rows[i]["label"],
                "run": rows[i]["reg_label"],
                "accuracy": fmt_pct(rows[i]["accuracy"]),
                "drop": fmt_points(rows[i]["accuracy_drop"]),
                "FC ratio": f"{rows[i][stored + 'fc_ratio']:.2f}x",
                "model ratio": f"{rows[i][stored + 'model_ratio']:.2f}x",
                "file": fmt_bytes(rows[i]["file_bytes"]),
                "run id": rows[i]["run_id"][:6],
            }
            for i in front
        ],
        hide_index=True, key="pareto_table", on_select="rerun", selection_mode="single-row",
    )  # fmt: skip
    picked += [front[r] for r in (table.selection.rows if table else [])]
    if picked:
        st.query_params["point"] = point_id(shown[int(picked[-1])])


def detail(points: list[CompressionRecord]) -> None:
    """The point the URL names (?point=RUN-KEY), whatever the filters: a link always opens it."""
    wanted = st.query_params.get("point")
    if not wanted:
        return
    match = [p for p in points if point_id(p) == wanted]
    if match:
        point_detail_ui(match[0])
    else:
        st.warning(f"The link's point={plain(wanted[:60])} is not a stored compression; pick a point above.")


def page() -> None:
    st.title("Frontier")
    st.caption(
        "Accuracy against size for every compression in the store that someone settled on (not those a "
        "slider only passed over: see below the chart). The baselines (Gong et al. 2014: "
        "binarize, k-means, PQ) are the points of the unregularized (λ = 0) runs."
    )
    with st.expander("Run a sweep: train the missing runs, compress each with every setting", expanded=False):
        sweep_form()
    sweep_status()
    sweeping = any(j.live and j.kind == "sweep" for j in manager().jobs(finished_within_s=0))
    # while a sweep runs (from any session) the chart reloads every few seconds: points land as they are stored
    st.fragment(frontier_section, run_every=3.0 if sweeping else None)()


def frontier_section() -> None:
    stored = compressions()
    points = [p for p in stored if not p.transient]  # settings a slider only passed over stay off
    if not points:
        st.info("No compressions are stored yet. Compress a run on the Compress page, or run a sweep above.")
    else:
        frontier(points)
    left_out = len(stored) - len(points)
    if left_out:
        st.caption(
            f"Left out: {left_out} compression(s) a slider on the Compress page only passed over (kept in the "
            f"store so that moving back is instant). To include one, open it on Compress and stay on it for "
            f"{SETTLE_S:g} s, or ask for it in a sweep above (or with `python -m core compress`)."
        )
    detail(stored)


if __name__ == "__main__":
    page()
