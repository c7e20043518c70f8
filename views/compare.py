"""Compare: 2-4 stored runs side by side: config differences, curves, histograms, frontier points,
and each run's best compression within accuracy-drop budgets."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import streamlit as st

from core.analysis import best_within_budget, pareto_mask
from core.charts import RUN_COLORS, frontier_figure, histogram_range, training_curves, weight_histogram
from core.methods import METHOD_SPECS
from core.records import RunRecord
from ui.common import compressions, keep, kept, runs, runs_multiselect_ui

BUDGETS = (0.5, 1.0, 2.0)  # accuracy-drop budgets, in points
REFERENCES = ("the best float accuracy among these runs", "each run's own float accuracy")


def differences(chosen: list[RunRecord], names: list[str]) -> None:
    st.subheader("What differs")
    configs = [asdict(r.config) for r in chosen]  # every field, also those the JSON leaves out at their default
    differing = [f for f in configs[0] if len({str(c[f]) for c in configs}) > 1]
    if differing:
        diff = pd.DataFrame({name: [str(c[f]) for f in differing] for name, c in zip(names, configs)}, index=differing)
        diff.loc["test accuracy"] = [f"{100 * r.test_accuracy:.2f}%" for r in chosen]
        st.dataframe(diff, key="diff_table")
    else:
        st.info("These runs have the same configuration.")


def histograms(chosen: list[RunRecord], names: list[str]) -> None:
    st.subheader("FC weight histograms at the same epoch")
    n_layers = min(len(r.layers) for r in chosen)
    max_epoch = min(r.epochs_trained for r in chosen)
    left, right = st.columns([1, 3])
    with left:
        if kept("cmp_layer") and not 0 <= st.session_state["cmp_layer"] < n_layers:
            del st.session_state["cmp_layer"]
        layer_index = st.selectbox(
            "Layer (by position)", range(n_layers), format_func=lambda i: f"FC layer {i + 1}", key="cmp_layer"
        )
        keep("cmp_layer", layer_index)
    with right:
        if not kept("cmp_epoch") or not 0 <= st.session_state["cmp_epoch"] <= max_epoch:
            st.session_state["cmp_epoch"] = max_epoch
        epoch = st.slider("Epoch (0 = at initialisation)", 0, max_epoch, key="cmp_epoch")
        keep("cmp_epoch", epoch)
    # one x range for every run and every epoch of this layer: the runs read side by side
    x_range = histogram_range([h[layer_index] for run in chosen for h in run.histograms])
    columns = st.columns(len(chosen))
    for index, (column, name, run) in enumerate(zip(columns, names, chosen)):
        layer = run.histograms[epoch][layer_index]
        with column:
            st.plotly_chart(
                weight_histogram(
                    layer, title=f"{name}: {layer.layer}, epoch {epoch}", color=RUN_COLORS[index % len(RUN_COLORS)],
                    height=340, x_range=x_range,
                ),
                key=f"chart_hist_{index}",
            )  # fmt: skip


def budgets(chosen: list[RunRecord], names: list[str]) -> None:
    st.subheader("Their compressions")
    ids = {r.run_id for r in chosen}
    points = [p for p in compressions() if p.run_id in ids and not p.transient]
    if not points:
        st.info("None of these runs has been compressed yet: use the Compress page or the sweep on the Frontier page.")
        return
    rows = [p.row() for p in points]
    mask = pareto_mask([r["fc_ratio"] for r in rows], [r["accuracy"] for r in rows], True)
    st.plotly_chart(frontier_figure(points, mask, title="Frontier points of the chosen runs"), key="chart_frontier")
    reference = st.radio(
        "Accuracy-drop budgets measured from",
        REFERENCES,
        key="cmp_reference",
        horizontal=True,
        help="The first is the paper's comparison (a regularized run pays for its own float accuracy loss); "
        "the second shows what quantization alone costs each run.",
    )
    baseline = max(r.test_accuracy for r in chosen)
    compressed = pd.DataFrame([r for r in rows if METHOD_SPECS[r["method"]].codes_weights])
    if compressed.empty:
        st.info("Only float points so far: compress these runs to see the budgets.")
        return
    own = {r.run_id: r.test_accuracy for r in chosen}
    table = best_within_budget(
        compressed, BUDGETS, own if reference == REFERENCES[1] else baseline, size_col="fc_ratio", group_col="run_id"
    )
    name_of = dict(zip((r.run_id for r in chosen), names))
    shown = [
        {
            "budget (points)": row["budget_pts"],
            "run": name_of[row["run_id"]],
            "best compression": row["label"],
            "FC ratio": round(float(row["fc_ratio"]), 2) if row["found"] else None,
            "model ratio": round(float(row["model_ratio"]), 2) if row["found"] else None,
            "accuracy (%)": round(100 * float(row["accuracy"]), 2) if row["found"] else None,
            "drop (points)": round(float(row["drop_pts"]), 2) if row["found"] else None,
        }
        for row in table.to_dict("records")
        if row["run_id"] in name_of
    ]
    st.markdown(
        f"**Best compression (highest FC ratio) within an accuracy-drop budget**, the drop measured from "
        f"{reference} ({100 * baseline:.2f}% is the best float accuracy here):"
    )
    st.dataframe(pd.DataFrame(shown), hide_index=True, key="best_table")


def page() -> None:
    st.title("Compare")
    records = runs()
    if len(records) < 2:
        st.info(
            f"Compare needs at least two stored runs; the store has {len(records)}. Train another on the Train page "
            f"(e.g. the same settings with another λ)."
        )
        return
    chosen = runs_multiselect_ui(records, "Runs to compare (2 to 4)")
    if len(chosen) < 2:
        st.info("Pick at least two runs.")
        return
    names = [r.run_id[:6] for r in chosen]
    differences(chosen, names)
    st.plotly_chart(
        training_curves({f"{n}: {r.label()}": r.history for n, r in zip(names, chosen)}),
        key="chart_curves",
    )
    histograms(chosen, names)
    budgets(chosen, names)


if __name__ == "__main__":
    page()
