"""Store: what the run store holds and how much space it takes; delete a run (with its
compressions) or clean up what no one will be served. Deleting asks for a confirmation."""

from __future__ import annotations

import streamlit as st

from core.pipeline import delete_run
from core.records import RunRecord
from ui.common import compressions, fmt_bytes, fmt_pct, plain, runs, store
from ui.jobs import manager


def run_row(run: RunRecord, n_compressions: int) -> None:
    left, middle, right = st.columns([6, 2, 1])
    with left:
        st.markdown(plain(run.label()))
    with middle:
        st.caption(f"{n_compressions} compression(s) · test accuracy {fmt_pct(run.test_accuracy)}")
    with right, st.popover("Delete…"):
        st.write(f"Delete run {run.run_id} and its {n_compressions} compression(s)? This cannot be undone.")
        if st.button("Delete it", type="primary", key=f"delete_{run.run_id}"):
            freed = delete_run(store(), run.run_id)  # with its job entries
            st.toast(f"Deleted run {run.run_id[:6]}: {fmt_bytes(freed)} freed.")
            st.rerun()


def page() -> None:
    st.title("Store")
    the_store = store()
    records = runs()
    points = compressions()
    cols = st.columns(3)
    cols[0].metric("Runs", len(records))
    cols[1].metric("Compressions", len(points))
    cols[2].metric("Space on disk", fmt_bytes(the_store.size_bytes()))
    st.caption(f"The run store is the folder {plain(the_store.root)} (COMPRESSION_LAB_CACHE).")
    with st.popover("Clean up…"):
        st.write(
            "Remove what no one will ever be served: temporaries left by interrupted writes (older than an "
            "hour), entries that fail their checks (corrupt, edited, or from an older version), and "
            "compressions whose run is gone. Valid runs and compressions stay."
        )
        if st.button("Clean up", type="primary", key="gc_button"):
            try:
                report = the_store.gc()
                jobs = manager().cleanup()
            except ValueError as error:  # an unusable jobs folder: one line
                st.error(plain(error))
                return
            st.toast(
                f"Removed {len(report.removed)} item(s): {fmt_bytes(report.bytes_freed)} freed; {jobs} old job entries."
            )
            st.rerun()
    if not records:
        st.info("The store holds no runs yet.")
        return
    per_run: dict[str, int] = {}
    for point in points:
        per_run[point.run_id] = per_run.get(point.run_id, 0) + 1
    st.subheader("Runs")
    for run in records:
        run_row(run, per_run.get(run.run_id, 0))


if __name__ == "__main__":
    page()
