"""Compress: stored run + widgets -> CompressConfig -> RunStore.get_or_compress -> size, accuracy, pictures.

Results are cached on disk by the store and in memory by st.cache_data (run_id + the config),
so moving a slider back to a setting seen before answers at once, with no retraining ever.
"""

from __future__ import annotations

import re

import streamlit as st

from core.charts import bits_breakdown, centroid_histogram, nice_ratio, subvector_scatter
from core.config import LAYOUTS, METHODS, CompressConfig
from core.data import DatasetUnavailable
from core.pq import check_fits
from ui.common import (
    D_OPTIONS,
    K_OPTIONS,
    compression,
    compression_plot_data,
    file_bytes,
    fmt_k,
    is_compressed,
    run_select_ui,
    runs,
    show_error,
    store_root,
)

QP = "query-params"

st.title("Compress")
st.caption(
    "Quantize the FC layers of a trained run: sign binarization, scalar k-means (d = 1), or product "
    "quantization (subvectors of d weights, k centroids). Every bit of the result is counted."
)

views = runs()
if not views:
    st.info("The run store is empty: there is no trained network to compress yet. Train one first.")
    st.page_link("views/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

view = run_select_ui(views)
col1, col2, col3 = st.columns(3)
with col1:
    method = st.selectbox(
        "Method",
        METHODS,
        index=METHODS.index("pq"),
        key="method",
        bind=QP,
        help="float: no compression (reference); binarize: sign(W)·α, 1 bit a weight; "
        "kmeans: scalar k-means (d = 1); pq: product quantization.",
    )
    layout = st.radio(
        "Codebook layout",
        LAYOUTS,
        key="layout",
        bind=QP,
        horizontal=True,
        disabled=method != "pq",
        help="shared: one codebook per layer; per-chunk: one per chunk position (needs k ≤ rows).",
    )
with col2:
    subvector_size = st.select_slider(
        "Subvector size d (pq)", D_OPTIONS, value=8, key="d", bind=QP, disabled=method != "pq"
    )
    n_centroids = st.select_slider(
        "Centroids k",
        K_OPTIONS,
        value=256,
        format_func=fmt_k,
        key="k",
        bind=QP,
        disabled=method not in ("pq", "kmeans"),
        help="Code width is log2(k) bits per subvector.",
    )
with col3:
    centroid_bits = st.radio(
        "Centroid precision (bits)", (32, 16), key="bits", bind=QP, horizontal=True, disabled=method == "float"
    )
    finetune_epochs = st.number_input(
        "Centroid fine-tuning epochs (codes fixed)", 0, 20, 0, key="ft", bind=QP, disabled=method == "float"
    )

try:
    ccfg = CompressConfig(
        method=method,
        subvector_size=int(subvector_size),
        n_centroids=int(n_centroids),
        layout=layout,
        centroid_bits=int(centroid_bits),
        finetune_epochs=int(finetune_epochs),
    )
    check_fits(view["fc_shapes"], ccfg)
except ValueError as error:
    smallest_rows = min(shape[0] for _, shape in view["fc_shapes"])
    st.error(
        f"**This setting does not fit the run.** {error}.\n\nWhat to do: lower k to at most "
        f"{smallest_rows} (the fewest rows of any FC layer), or pick the shared layout, or a smaller d."
    )
    st.stop()

run_id = view["run_id"]
try:
    if is_compressed(run_id, ccfg):
        result = compression(run_id, ccfg)
    else:
        progress = st.progress(0.0, text=f"Compressing: {ccfg.label()}…")

        def on_step(step: int, n_steps: int) -> None:
            progress.progress(step / n_steps, text=f"Fine-tuning centroids: step {step}/{n_steps}")

        with st.spinner(f"Compressing: {ccfg.label()} (k-means, then accuracy of the rebuilt model)…"):
            result = compression(run_id, ccfg, on_step=on_step)
        progress.empty()
except (DatasetUnavailable, ValueError) as error:
    show_error(error)
    st.stop()

row, size = result["row"], result["size"]
st.subheader(f"{result['label']} on run {run_id[:6]}")
cols = st.columns(5)
cols[0].metric("Float accuracy", f"{row['float_accuracy']:.2%}")
cols[1].metric(
    "Accuracy after", f"{row['accuracy']:.2%}", delta=f"{100 * (row['accuracy'] - row['float_accuracy']):+.2f} points"
)
cols[2].metric("FC ratio", nice_ratio(row["fc_ratio"]), help="32·N_fc / (code + codebook + scale bits)")
cols[3].metric("Model ratio", nice_ratio(row["model_ratio"]), help="whole model, float rest included")
cols[4].metric("Exported file", f"{row['file_bytes']:,} bytes")
st.plotly_chart(bits_breakdown(size, title="Where the bits go"), theme=None, key="chart_bits")

st.subheader("The weights and the centroids that replace them")
layer_names = [f"{name} {shape[0]}×{shape[1]}" for name, shape in view["fc_shapes"]]
layer_index = st.radio(
    "Layer", range(len(layer_names)), format_func=lambda i: layer_names[i], key="layer", horizontal=True
)
picture = compression_plot_data(result["file_path"], run_id, store_root(), layer_index)
title = layer_names[layer_index]
if picture["kind"] == "hist":
    st.plotly_chart(
        centroid_histogram(
            picture["weights"],
            picture["centroids"],
            method=method,
            title=f"{title}: float weights and the {len(picture['centroids'])} distinct centroids",
        ),
        theme=None,
        key="chart_centroids",
    )
elif picture["kind"] == "scatter":
    st.plotly_chart(
        subvector_scatter(
            picture["points"],
            picture["centroids"],
            method=method,
            title=f"{title}: 2-D subvectors of {picture['group_note']}",
        ),
        theme=None,
        key="chart_scatter",
    )
elif picture["kind"] == "none":
    st.info("Method float keeps the weights as they are: no centroids to draw.")
else:
    st.info(
        f"With d = {picture['subvector_size']} the subvectors live in {picture['subvector_size']} dimensions; "
        f"pick d = 1 (a histogram with the centroids) or d = 2 (a scatter of the subvectors) to see them."
    )
if result["layer_mse"]:
    st.caption("Reconstruction MSE per layer: " + ", ".join(f"{k}: {v:.3g}" for k, v in result["layer_mse"].items()))

safe_label = re.sub(r"[^A-Za-z0-9=+.-]+", "_", result["label"])
st.download_button(
    "Download the compressed model (.safetensors)",
    file_bytes(result["file_path"]),
    file_name=f"{run_id[:8]}-{safe_label}.safetensors",
    mime="application/octet-stream",
    key="download",
    on_click="ignore",
)
st.caption(
    "Load it with `python -m core evaluate FILE` or `core.export.load_file(path)`: the accuracy above is "
    "measured on the model rebuilt from this very file."
)
