"""Jobs: what is queued, running and recently finished on this server, from every session, with
progress and cancel. A job is one training, compression or sweep, keyed by its content hash."""

from __future__ import annotations

import time

import streamlit as st

from core.jobs import JobState, JobStatus
from ui.common import plain
from ui.jobs import cancel_ui, describe, manager

ICONS = {"queued": "⏳", "running": "▶️", "done": "✅", "failed": "❌", "cancelled": "⏹️"}


def job_row(status: JobStatus) -> None:
    col1, col2, col3 = st.columns([5, 3, 1])
    with col1:
        st.markdown(f"{ICONS[status.state.value]} **{plain(status.kind)}** · {plain(status.label)}")
        st.caption(f"{plain(status.key)} · submitted {time.time() - status.submitted:,.0f} s ago")
    with col2:
        if status.live:
            st.progress(min(1.0, status.fraction), text=plain(describe(status)))
        else:
            st.write(plain(describe(status)))
    with col3:
        if status.live and st.button("Cancel", key=f"cancel_{status.key}") and cancel_ui(status.key):
            st.rerun()


def jobs_list() -> None:
    jobs = manager().jobs(finished_within_s=3600)
    live = [j for j in jobs if j.live]
    recent = [j for j in jobs if not j.live]
    running = sum(j.state is JobState.RUNNING for j in live)
    st.caption(
        f"{running} running, {len(live) - running} queued (at most {manager().max_running} at once on this "
        f"server; set COMPRESSION_LAB_MAX_JOBS to change it). Updated every 2 s."
    )
    if not jobs:
        st.info("No jobs in the last hour. Train a run or start a sweep and it shows here.")
    for status in live:
        job_row(status)
    if recent:
        st.subheader("Finished in the last hour")
        for status in recent:
            job_row(status)


def page() -> None:
    st.title("Jobs")
    st.fragment(jobs_list, run_every=2.0)()


if __name__ == "__main__":
    page()
