"""Train: widgets -> TrainConfig -> train (or the stored run) -> curves and weight histograms.

A configuration trained before is shown at once from the store, without pressing Train.
"""

from __future__ import annotations

import streamlit as st

from core.charts import training_curves, weight_histogram
from core.data import DatasetUnavailable
from core.records import EpochMetrics, RunRecord
from core.train import TrainingDiverged
from ui.common import keep, kept, plain, run_record, show_error, store
from ui.widgets import train_config_ui


def train_now(cfg) -> None:
    """Train in this script run with a live progress bar, metrics and curves."""
    from core.pipeline import get_or_train

    progress = st.progress(0.0, text="Loading the dataset…")
    live_metrics = st.empty()
    live_chart = st.empty()
    history: list[EpochMetrics] = []
    state = {"epoch": 0}

    def on_step(step: int, n_steps: int) -> None:
        done = (state["epoch"] + step / n_steps) / cfg.epochs
        progress.progress(min(done, 1.0), text=f"Epoch {state['epoch'] + 1} of {cfg.epochs}: step {step}/{n_steps}")

    def on_epoch(metrics: EpochMetrics, histograms) -> None:
        state["epoch"] = metrics.epoch
        history.append(metrics)
        progress.progress(metrics.epoch / cfg.epochs, text=f"Epoch {metrics.epoch} of {cfg.epochs} done")
        with live_metrics.container():
            cols = st.columns(4)
            cols[0].metric("Epoch", f"{metrics.epoch} / {cfg.epochs}")
            cols[1].metric("Loss", f"{metrics.loss:.4f}")
            cols[2].metric("Regularizer R(W)", f"{metrics.reg:.4f}")
            cols[3].metric("Test accuracy", f"{100 * metrics.test_accuracy:.2f}%")
        live_chart.plotly_chart(
            training_curves({"this run": tuple(history)}), theme=None, key=f"live_curves_{metrics.epoch}"
        )

    try:
        get_or_train(store(), cfg, on_epoch=on_epoch, on_step=on_step)
    except (DatasetUnavailable, TrainingDiverged, ValueError) as error:
        progress.empty()
        show_error(error)
        st.stop()
    progress.progress(1.0, text="Done: stored.")
    live_metrics.empty()
    live_chart.empty()


def show_run(run: RunRecord) -> None:
    """The stored run: metrics, curves, and the per-layer histogram at any epoch."""
    history = run.history
    st.success(
        f"Run {run.run_id}: test accuracy {100 * run.test_accuracy:.2f}% after {len(history)} epochs "
        f"({run.seconds:.1f} s on {plain(run.device)}); shown from the store."
    )
    cols = st.columns(4)
    cols[0].metric("Test accuracy", f"{100 * run.test_accuracy:.2f}%")
    cols[1].metric("Final loss", f"{history[-1].loss:.4f}")
    cols[2].metric("Final R(W)", f"{history[-1].reg:.4f}")
    cols[3].metric("FC layers", len(run.layers))
    st.plotly_chart(training_curves({run.label(): history}), theme=None, key="chart_curves")

    st.subheader("FC weight histograms: the weights collapse onto ±α")
    names = [layer.name for layer in run.layers]
    labels = {layer.name: layer.label() for layer in run.layers}
    # The layer and epoch widgets are keyed by run: a run with other layers or fewer epochs
    # starts from its own defaults instead of inheriting a stale choice.
    left, right = st.columns([1, 3])
    layer_key, epoch_key = f"hist_layer_{run.run_id}", f"hist_epoch_{run.run_id}"
    with left:
        if not kept(layer_key) or st.session_state[layer_key] not in names:
            st.session_state[layer_key] = names[0]
        layer_name = st.radio("Layer", names, format_func=labels.get, key=layer_key)
        if not kept(epoch_key):
            st.session_state[epoch_key] = len(history)
        epoch = st.slider("Epoch (0 = at initialisation)", 0, len(history), key=epoch_key)
        keep(layer_key, layer_name)
        keep(epoch_key, epoch)
    with right:
        layer = run.histograms[epoch][names.index(layer_name)]
        st.plotly_chart(
            weight_histogram(layer, title=f"{labels[layer_name]}, epoch {epoch}: α = mean|W| = {layer.alpha:.4g}"),
            theme=None,
            key="chart_hist",
        )
    st.page_link(
        "views/compress.py", label="Compress this run", icon=":material/compress:", query_params={"run": run.run_id}
    )
    with st.expander("Configuration"):
        st.json(run.config.to_json())


def page() -> None:
    st.title("Train")
    st.caption(
        "Train a network with the binarizing term on its FC layers (our reading of the paper's "
        "binarizing term), or with one of our generalizations. Every run is stored; the same "
        "configuration is never trained twice."
    )
    try:
        cfg = train_config_ui()
    except ValueError as error:
        st.error(f"**This configuration is not valid:** {plain(error)}")
        return

    run_id = cfg.run_id()
    run = run_record(run_id)
    pressed = st.button(
        "Train" if run is None else "Already trained (shown below)",
        type="primary",
        disabled=run is not None,
        key="train_button",
    )
    if pressed and run is None:
        train_now(cfg)
        run = run_record(run_id)
    if run is None:
        st.info(
            f"This configuration has not been trained yet (run {run_id}). Press **Train**; the run is then "
            f"stored and shown here whenever these settings are picked again."
        )
        return
    show_run(run)


if __name__ == "__main__":
    page()
