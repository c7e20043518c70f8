"""Train: widgets -> TrainConfig -> train (or the stored run) -> curves and weight histograms.

A configuration trained before is shown at once from the store, without pressing Train.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.charts import histogram_animation, training_curves
from core.config import TrainConfig
from core.pipeline import submit_training
from core.records import RunRecord
from ui.classroom import job_requester
from ui.common import keep, plain, run_record, store, url_choice
from ui.jobs import job_progress_ui, last_failure_ui, manager
from ui.widgets import default, number_input, select_slider, toggle, train_fields_ui

PRUNE_OPTIONS = (0.5, 0.75, 0.8, 0.9, 0.95, 0.98)  # final sparsities the page offers


def prune_fields_ui() -> dict[str, Any]:
    """Gradual pruning's controls (off by default; its settings are off while it is); returns its
    TrainConfig fields. The config checks them (a schedule that ends after training is one line)."""
    on = toggle(
        "Prune during training (gradual magnitude pruning, Zhu & Gupta 2017)",
        False,
        "prune",
        True,
        help="The smallest weights of each regularized layer are set to zero, more and more on a cubic "
        "schedule, and kept at zero to the end: the compression then codes only the survivors.",
    )
    unused = " Not used: pruning is off." if not on else ""
    col1, col2, col3 = st.columns(3)
    with col1:
        sparsity = select_slider(
            "Final sparsity", PRUNE_OPTIONS, 0.9, "prune_sparsity", True, disabled=not on,
            help="The fraction of each layer's weights pruned by the end of the schedule." + unused,
        )  # fmt: skip
    with col2:
        start = number_input(
            "Pruning starts at epoch", 0, 100, default("prune_start_epoch"), "prune_start", True, disabled=not on,
            help="Sparsity 0 before this epoch: the network learns first." + unused,
        )  # fmt: skip
    with col3:
        ramp = number_input(
            "Pruning ramps over epochs", 1, 100, default("prune_epochs"), "prune_epochs", True, disabled=not on,
            help="The sparsity rises to its final value over this many epochs, fast at first, then held; "
            "start + ramp must be at most the epochs." + unused,
        )  # fmt: skip
    return {"prune_sparsity": float(sparsity) if on else 0.0, "prune_start_epoch": start, "prune_epochs": ramp}


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
    st.plotly_chart(training_curves({run.label(): history}), key="chart_curves")
    if run.config.prune_sparsity:
        c = run.config
        st.caption(
            f"Pruned during training: {c.prune_sparsity:.0%} of each regularized layer's weights are exact zeros, "
            f"reached on the cubic schedule from epoch {c.prune_start_epoch} over {c.prune_epochs} epoch(s). "
            f"Compress it with a sparsity of at least {c.prune_sparsity:g}: the coding then keeps those zeros "
            "as its mask and codes only the survivors (the histograms below include the zeros)."
        )

    st.subheader("FC weight histograms: the weights collapse onto ±α")
    names = [layer.name for layer in run.layers]
    labels = {layer.name: layer.label() for layer in run.layers}
    # The layer and epoch widgets are keyed by run: a run with other layers or fewer epochs
    # starts from its own defaults instead of inheriting a stale choice.
    left, right = st.columns([1, 3])
    layer_key, epoch_key = f"hist_layer_{run.run_id}", f"hist_epoch_{run.run_id}"
    with left:
        url_choice(layer_key, "layer", names, names[0])
        layer_name = st.radio("Layer", names, format_func=lambda name: plain(labels[name]), key=layer_key)
        url_choice(epoch_key, "epoch", list(range(len(history) + 1)), len(history), parse=int)
        epoch = st.slider("Epoch (0 = at initialisation)", 0, len(history), key=epoch_key)
        keep(layer_key, layer_name)
        keep(epoch_key, epoch)
        st.query_params["layer"], st.query_params["epoch"] = layer_name, str(epoch)
        st.caption("Press ▶ play under the chart to watch the weights collapse epoch by epoch.")
    with right:
        index = names.index(layer_name)
        frames = [epoch_histograms[index] for epoch_histograms in run.histograms]
        st.plotly_chart(
            histogram_animation(
                frames,
                [str(e) for e in range(len(frames))],
                title=f"{labels[layer_name]}: the weights at each epoch",
                start=epoch,
            ),
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
        fields = train_fields_ui()
        fields.update(prune_fields_ui())
        cfg = TrainConfig(**fields)
    except ValueError as error:
        st.error(f"**This configuration is not valid:** {plain(error)}")
        return

    run_id = cfg.run_id()
    run = run_record(run_id)
    if run is not None:
        st.button("Already trained (shown below)", type="primary", disabled=True, key="train_button")
        show_run(run)
        return
    status = manager().status(run_id)
    if status is not None and status.live:
        # running or queued, from this session or any other: follow it
        job_progress_ui(run_id, f"Training run {run_id}")
        return
    last_failure_ui(run_id)
    if st.button("Train", type="primary", key="train_button"):
        try:
            submit_training(store(), cfg, requester=job_requester())
        except ValueError as error:  # a read-only store, an unusable jobs folder, a full turn: nothing queued
            st.error(f"**The training could not start.** {plain(error)}")
            return
        st.rerun()
    st.info(
        f"This configuration has not been trained yet (run {run_id}). Press **Train**: it trains in the "
        f"background (you can leave the page and come back), and is then stored and shown here whenever "
        f"these settings are picked again, by anyone."
    )


if __name__ == "__main__":
    page()
