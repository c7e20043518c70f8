"""Train: widgets -> TrainConfig -> RunStore.get_or_train -> curves and weight histograms.

A configuration trained before is shown at once from the store, without pressing Train.
"""

from __future__ import annotations

import streamlit as st

from core.charts import training_curves, weight_histogram
from core.config import DATASETS, MODELS, REGULARIZERS, TrainConfig
from core.data import DATASET_INFO, DatasetUnavailable
from core.train import TrainingDiverged
from ui.common import LAM_OPTIONS, fmt_lam, run_view, show_error, store

LR_OPTIONS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
QP = "query-params"

st.title("Train")
st.caption(
    "Train a network with the binarizing term on its FC layers (our reading of the paper's "
    "binarizing term), or with one of our generalizations. Every run is stored; the same "
    "configuration is never trained twice."
)

# ---------------------------------------------------------------------------------------- widgets
col1, col2, col3, col4 = st.columns(4)
with col1:
    dataset = st.selectbox("Dataset", DATASETS, index=DATASETS.index("mnist-5k"), key="dataset", bind=QP)
    model = st.selectbox(
        "Model",
        MODELS,
        key="model",
        bind=QP,
        help="mlp is LeNet-300-100 (hidden widths below); lenet5 and cifar-cnn have convs.",
    )
    hidden_text = st.text_input(
        "Hidden widths (mlp)",
        "300,100",
        key="hidden",
        bind=QP,
        disabled=model != "mlp",
        help="Comma-separated, e.g. 300,100",
    )
with col2:
    reg = st.selectbox(
        "Regularizer",
        REGULARIZERS,
        index=REGULARIZERS.index("binary"),
        key="reg",
        bind=QP,
        help="binary: the paper's term, our reading; levels / pq: our generalizations.",
    )
    lam = st.select_slider(
        "λ (weight of the regularizer)",
        LAM_OPTIONS,
        value=0.01,
        format_func=fmt_lam,
        key="lam",
        bind=QP,
        help="Log-spaced; 0 turns the regularizer off.",
    )
    warmup = st.number_input("Warm-up epochs (λ ramps from 0)", 0, 50, 0, key="warmup", bind=QP)
with col3:
    epochs = st.number_input("Epochs", 1, 100, 5, key="epochs", bind=QP)
    lr = st.select_slider("Learning rate (Adam)", LR_OPTIONS, value=1e-3, format_func=fmt_lam, key="lr", bind=QP)
    seed = st.number_input("Seed", 0, 10_000, 0, key="seed", bind=QP)
with col4:
    reg_levels = st.number_input(
        "levels: number of levels", 2, 16, 2, key="reg_levels", bind=QP, disabled=reg != "levels"
    )
    reg_d = st.select_slider(
        "pq: subvector size d", (1, 2, 4, 8, 16), value=8, key="reg_d", bind=QP, disabled=reg != "pq"
    )
    reg_k = st.select_slider(
        "pq: centroids k", (2, 4, 16, 64, 256, 1024), value=256, key="reg_k", bind=QP, disabled=reg != "pq"
    )
st.caption(DATASET_INFO[dataset])

try:
    hidden = tuple(int(part) for part in hidden_text.replace(" ", "").split(",") if part)
    cfg = TrainConfig(
        dataset=dataset,
        model=model,
        hidden=hidden or (300, 100),
        reg=reg,
        lam=float(lam),
        warmup_epochs=int(warmup),
        reg_levels=int(reg_levels),
        reg_subvector_size=int(reg_d),
        reg_centroids=int(reg_k),
        epochs=int(epochs),
        lr=float(lr),
        seed=int(seed),
    )
except ValueError as error:
    st.error(
        f"**This configuration is not valid:** {error}"
        if "invalid literal" not in str(error)
        else f"**Hidden widths must be whole numbers separated by commas**, e.g. 300,100 (got {hidden_text!r})."
    )
    st.stop()

run_id = cfg.run_id()
view = run_view(run_id)
pressed = st.button(
    "Train" if view is None else "Already trained (shown below)",
    type="primary",
    disabled=view is not None,
    key="train_button",
)

# ---------------------------------------------------------------------------------- live training
if pressed and view is None:
    progress = st.progress(0.0, text="Loading the dataset…")
    live_metrics = st.empty()
    live_chart = st.empty()
    state = {"epoch": 0, "history": []}

    def on_step(step: int, n_steps: int) -> None:
        done = (state["epoch"] + step / n_steps) / cfg.epochs
        progress.progress(min(done, 1.0), text=f"Epoch {state['epoch'] + 1} of {cfg.epochs}: step {step}/{n_steps}")

    def on_epoch(epoch: int, metrics: dict) -> None:
        state["epoch"] = epoch
        state["history"].append({k: v for k, v in metrics.items() if k != "histograms"})
        progress.progress(epoch / cfg.epochs, text=f"Epoch {epoch} of {cfg.epochs} done")
        with live_metrics.container():
            cols = st.columns(4)
            cols[0].metric("Epoch", f"{epoch} / {cfg.epochs}")
            cols[1].metric("Loss", f"{metrics['loss']:.4f}")
            cols[2].metric("Regularizer R(W)", f"{metrics['reg']:.4f}")
            cols[3].metric("Test accuracy", f"{metrics['test_accuracy']:.2%}")
        live_chart.plotly_chart(training_curves({"this run": state["history"]}), theme=None, key=f"live_curves_{epoch}")

    try:
        store().get_or_train(cfg, on_epoch=on_epoch, on_step=on_step)
    except (DatasetUnavailable, TrainingDiverged, ValueError) as error:
        progress.empty()
        show_error(error)
        st.stop()
    progress.progress(1.0, text="Done: stored.")
    live_metrics.empty()
    live_chart.empty()
    view = run_view(run_id)

# ---------------------------------------------------------------------------------- stored result
if view is None:
    st.info(
        f"This configuration has not been trained yet (run {run_id}). Press **Train**; the run is then "
        f"stored and shown here whenever these settings are picked again."
    )
    st.stop()

history = view["history"]
st.success(
    f"Run {run_id}: test accuracy {view['test_accuracy']:.2%} after {len(history)} epochs "
    f"({view['seconds']:.1f} s on {view['device']}); shown from the store."
)
cols = st.columns(4)
cols[0].metric("Test accuracy", f"{view['test_accuracy']:.2%}")
cols[1].metric("Final loss", f"{history[-1]['loss']:.4f}")
cols[2].metric("Final R(W)", f"{history[-1]['reg']:.4f}")
cols[3].metric("FC layers", len(view["fc_shapes"]))
st.plotly_chart(training_curves({view["label"]: history}), theme=None, key="chart_curves")

st.subheader("FC weight histograms: the weights collapse onto ±α")
layer_names = [f"{name} {shape[0]}×{shape[1]}" for name, shape in view["fc_shapes"]]
left, right = st.columns([1, 3])
with left:
    layer_index = st.radio("Layer", range(len(layer_names)), format_func=lambda i: layer_names[i], key="hist_layer")
    epoch = st.slider("Epoch (0 = at initialisation)", 0, len(history), len(history), key="hist_epoch")
with right:
    layer = view["histograms"][epoch][layer_index]
    st.plotly_chart(
        weight_histogram(layer, title=f"{layer_names[layer_index]}, epoch {epoch}: α = mean|W| = {layer['alpha']:.4g}"),
        theme=None,
        key="chart_hist",
    )
st.page_link("views/compress.py", label="Compress this run", icon=":material/compress:", query_params={"run": run_id})
with st.expander("Configuration"):
    st.json(view["config"])
