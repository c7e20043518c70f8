"""The app's side of the job layer: a live progress panel for one job, and the jobs list.

Heavy work never runs in a page's script thread: pages submit jobs (core/pipeline.py) that run in
background threads of the server process, and these fragments poll the job's status file, so the
progress survives navigating away, another tab, another browser, and shows to every session that
asks for the same key. When the job ends, the fragment reruns the whole page, which then draws
the result from the store.
"""

from __future__ import annotations

import time

import streamlit as st

from core.jobs import JobManager, JobState, JobStatus
from core.pipeline import job_manager
from ui.common import plain, store

POLL_S = 2.0  # seconds between two looks at a job: each look is a script run in every session
# A job the user is looking at right now, waiting for its answer (a compression a slider asked for):
# looked at more often, so its result shows within a fraction of a second of landing. A look is a
# rerun of the panel's fragment only, a status read, not the whole page.
ANSWER_POLL_S = 0.25


def manager() -> JobManager:
    return job_manager(store())


def describe(status: JobStatus) -> str:
    """One line: where the job is."""
    if status.state is JobState.QUEUED:
        return f"Waiting in the queue: position {status.position or '?'} (at most {manager().max_running} at once)."
    if status.state is JobState.RUNNING:
        return status.text or "Running…"
    return {"done": "Done.", "failed": "Failed: ", "cancelled": "Cancelled: "}[status.state.value] + status.message


def _panel(key: str, what: str) -> None:
    status = manager().status(key)
    if status is None:
        return
    if status.terminal:
        # the page outside this fragment draws the result (or the failure) from the store
        st.rerun(scope="app")
    label = f"{what}: {describe(status)}"
    st.progress(min(1.0, status.fraction), text=plain(label))
    metrics = status.metrics
    if metrics:
        cols = st.columns(len(metrics))
        for col, (name, value) in zip(cols, sorted(metrics.items())):
            label = plain(name.replace("_", " "))
            col.metric(label, f"{100 * value:.2f}%" if name.endswith("accuracy") else f"{value:.4f}")
    if st.button("Cancel", key=f"cancel_{key}", help="Stops the job at its next step; nothing is stored."):
        cancel_ui(key)


def cancel_ui(key: str) -> bool:
    """Ask the job to stop; a jobs folder that cannot take the request is one line, not a traceback."""
    try:
        manager().cancel(key)
    except ValueError as error:
        st.error(f"**The cancel request could not be written.** {plain(error)}")
        return False
    st.toast("Cancel requested.")
    return True


def job_progress_ui(key: str, what: str, poll_s: float = POLL_S) -> None:
    """A panel that follows the job `key` every `poll_s` seconds until it ends, then reruns the page
    (which draws the result from the store): no click needed."""
    st.fragment(_panel, run_every=poll_s)(key, what)


def last_failure_ui(key: str) -> None:
    """If the last attempt at `key` failed or was cancelled, say so (plain text)."""
    status = manager().status(key)
    if status is not None and status.state in (JobState.FAILED, JobState.CANCELLED) and status.finished:
        ago = time.time() - status.finished
        if ago < 3600:
            word = "failed" if status.state is JobState.FAILED else "was cancelled"
            st.error(f"**The last attempt {word}** ({ago:.0f} s ago): {plain(status.message)}")
