"""Compare: 2-4 stored runs side by side: config differences, curves, histograms, frontier points,
and each run's best compression within accuracy-drop budgets."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.charts import RUN_COLORS, frontier_figure, training_curves, weight_histogram
from ui.common import compressions_table, runs, runs_multiselect_ui

BUDGETS = (0.5, 1.0, 2.0)  # accuracy-drop budgets, in points, relative to each run's float accuracy

st.title("Compare")
views = runs()
if len(views) < 2:
    st.info(
        f"Compare needs at least two stored runs; the store has {len(views)}. Train another on the Train page "
        f"(e.g. the same settings with another λ)."
    )
    st.stop()

chosen = runs_multiselect_ui(views, "Runs to compare (2 to 4)")
if len(chosen) < 2:
    st.info("Pick at least two runs.")
    st.stop()
names = [f"{v['run_id'][:6]}" for v in chosen]

# ---------------------------------------------------------------------------------- differences
st.subheader("What differs")
fields = list(chosen[0]["config"])
differing = [f for f in fields if len({str(v["config"][f]) for v in chosen}) > 1]
if differing:
    diff = pd.DataFrame(
        {name: [str(v["config"][f]) for f in differing] for name, v in zip(names, chosen)}, index=differing
    )
    diff.loc["test accuracy"] = [f"{v['test_accuracy']:.2%}" for v in chosen]
    st.dataframe(diff, key="diff_table")
else:
    st.info("These runs have the same configuration.")

st.plotly_chart(
    training_curves({f"{n}: {v['label']}": v["history"] for n, v in zip(names, chosen)}), theme=None, key="chart_curves"
)

# ---------------------------------------------------------------------------------- histograms
st.subheader("FC weight histograms at the same epoch")
n_layers = min(len(v["fc_shapes"]) for v in chosen)
max_epoch = min(len(v["history"]) for v in chosen)
left, right = st.columns([1, 3])
with left:
    layer_index = st.selectbox(
        "Layer (by position)", range(n_layers), format_func=lambda i: f"FC layer {i + 1}", key="cmp_layer"
    )
with right:
    epoch = st.slider("Epoch (0 = at initialisation)", 0, max_epoch, max_epoch, key="cmp_epoch")
columns = st.columns(len(chosen))
for index, (column, name, view) in enumerate(zip(columns, names, chosen)):
    layer = view["histograms"][epoch][layer_index]
    with column:
        st.plotly_chart(
            weight_histogram(
                layer,
                title=f"{name}: {layer['layer']}, epoch {epoch}",
                color=RUN_COLORS[index % len(RUN_COLORS)],
                height=320,
            ),
            theme=None,
            key=f"chart_hist_{index}",
        )

# ---------------------------------------------------------------------------------- compressions
st.subheader("Their compressions")
table = compressions_table()
ids = [v["run_id"] for v in chosen]
rows = table[table["run_id"].isin(ids)] if not table.empty else table
if rows.empty:
    st.info("None of these runs has been compressed yet: use the Compress page or the sweep on the Frontier page.")
    st.stop()
st.plotly_chart(frontier_figure(rows, title="Frontier points of the chosen runs"), theme=None, key="chart_frontier")

reference = st.radio(
    "Accuracy-drop budgets measured from",
    ("the best float accuracy among these runs", "each run's own float accuracy"),
    key="cmp_reference",
    horizontal=True,
    help="The first is the paper's comparison (a regularized run pays for its own float accuracy loss); "
    "the second shows what quantization alone costs each run.",
)
baseline = max(v["test_accuracy"] for v in chosen)
best = []
for budget in BUDGETS:
    for name, view in zip(names, chosen):
        own = rows[(rows["run_id"] == view["run_id"]) & (rows["method"] != "float")]
        drop = own["accuracy_drop"] if reference.startswith("each") else baseline - own["accuracy"]
        candidates = own[100 * drop <= budget + 1e-9]
        if candidates.empty:
            best.append({"budget (points)": budget, "run": name, "best compression": "none within budget"})
            continue
        top = candidates.sort_values(["fc_ratio", "accuracy"], ascending=False).iloc[0]
        best.append(
            {
                "budget (points)": budget,
                "run": name,
                "best compression": top["label"],
                "FC ratio": round(float(top["fc_ratio"]), 2),
                "model ratio": round(float(top["model_ratio"]), 2),
                "accuracy": f"{top['accuracy']:.2%}",
                "drop (points)": round(100 * float(drop[top.name]), 2),
            }
        )
st.markdown(
    f"**Best compression (highest FC ratio) within an accuracy-drop budget**, the drop measured from "
    f"{reference} ({baseline:.2%} is the best float accuracy here):"
)
st.dataframe(pd.DataFrame(best), hide_index=True, key="best_table")
