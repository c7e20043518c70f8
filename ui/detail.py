"""One compression in full: its configs, its numbers, its file, a link to it on Compress, and its
deletion (with a confirmation). Opened from a Frontier point, a Pareto row or a link (?point=...)."""

from __future__ import annotations

import re

import streamlit as st

from core.charts import nice_ratio
from core.records import CompressionRecord
from ui.common import file_bytes, fmt_bytes, fmt_k, fmt_pct, fmt_points, plain, store
from ui.widgets import ENTROPY_LABELS, TARGET_LABELS, WEIGHTING_LABELS, fmt_sparsity


def point_id(record: CompressionRecord) -> str:
    return f"{record.run_id}-{record.key}"


def compress_link(record: CompressionRecord) -> dict[str, str]:
    """The Compress page's URL parameters that show this very compression: every control's value as
    the control writes it in the URL (a radio's label, a slider's number)."""
    c = record.compress_config
    return {
        "run": record.run_id,
        "method": c.method,
        "d": str(c.subvector_size),
        "k": fmt_k(c.n_centroids),
        "layout": c.layout,
        "bits": str(c.centroid_bits),
        "ft": str(c.finetune_epochs),
        "targets": TARGET_LABELS[c.targets],
        "weighting": WEIGHTING_LABELS[c.weighting],
        "sparsity": fmt_sparsity(c.sparsity),
        "retrain": str(c.prune_finetune_epochs),
        "entropy": ENTROPY_LABELS[c.entropy],
        # the method's own controls (rq's stages...): sliders without labels of their own
        **{option.field: str(getattr(c, option.field)) for option in c.method_spec.options},
    }


def download_name(record: CompressionRecord) -> str:
    safe_label = re.sub(r"[^A-Za-z0-9=+.-]+", "_", record.label())
    return f"{record.run_id[:8]}-{safe_label}.safetensors"


def point_detail_ui(record: CompressionRecord, key: str = "detail") -> None:
    st.subheader(f"{record.label()} of run {record.run_id[:6]}")
    st.caption(f"{plain(record.train_config.dataset)} · {plain(record.train_config.model)} · "
               f"{plain(record.train_config.label())} · {record.train_config.epochs} epochs · "
               f"seed {record.train_config.seed}")  # fmt: skip
    cols = st.columns(5)
    cols[0].metric("Accuracy", fmt_pct(record.accuracy))
    cols[1].metric("Drop", fmt_points(record.accuracy_drop), help="float accuracy − accuracy after")
    cols[2].metric("FC ratio", nice_ratio(record.size.fc_ratio))
    cols[3].metric("Model ratio", nice_ratio(record.size.model_ratio))
    cols[4].metric("File", fmt_bytes(record.file_bytes), help=f"{record.file_bytes:,} bytes on disk")
    left, right = st.columns(2)
    with left:
        st.markdown("**Training**")
        st.json(record.train_config.to_json(), expanded=False)
    with right:
        st.markdown("**Compression**")
        st.json(record.compress_config.to_json(), expanded=False)
    buttons = st.columns(3)
    with buttons[0]:
        if record.file_path:
            st.download_button(
                "Download the file", file_bytes(record.file_path), file_name=download_name(record),
                mime="application/octet-stream", key=f"{key}_download", on_click="ignore",
            )  # fmt: skip
    with buttons[1]:
        st.page_link("views/compress.py", label="Open on Compress", icon=":material/compress:",
                     query_params=compress_link(record))  # fmt: skip
    with buttons[2], st.popover("Delete…"):
        st.write("Delete this compression (its file and its entry)? The run stays.")
        if st.button("Delete it", type="primary", key=f"{key}_delete"):
            store().delete_compression(record.run_id, record.key)
            st.query_params.pop("point", None)
            st.rerun()
