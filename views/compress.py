"""Compress: a stored run + widgets -> CompressConfig -> the stored compression (or a new one) ->
size, accuracy, the centroids against the weights, and the file.

Results are kept by the run store, so moving a slider back to a setting seen before answers at
once, with no retraining ever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from functools import partial

import streamlit as st

from core.charts import bits_breakdown, centroid_histogram, nice_ratio, subvector_scatter
from core.config import ENTROPY_CODERS, LAYOUTS, METHODS, TARGETS, WEIGHTINGS, CompressConfig
from core.data import DatasetUnavailable
from core.jobs import JobState
from core.methods import METHOD_SPECS
from core.methods.base import SHARED_CONTROLS
from core.onnx_export import MissingDependency, onnx_bytes, require_onnx
from core.pipeline import (
    CompressionPlan,
    PlanKind,
    compress_within,
    compression_key,
    hurry,
    plan_compression,
    precompute,
    submit_compression,
)
from core.pq import DoesNotFit
from core.records import CompressionRecord, CorruptEntry, RunRecord
from ui.classroom import job_requester, send_to_board_ui
from ui.common import (
    D_OPTIONS,
    K_OPTIONS,
    SETTLE_S,
    compression_plot_data,
    file_bytes,
    fmt_bytes,
    fmt_k,
    fmt_pct,
    fmt_points,
    keep,
    plain,
    run_select_ui,
    runs,
    show_error,
    store,
    url_choice,
)
from ui.detail import download_name
from ui.jobs import ANSWER_POLL_S, job_progress_ui, last_failure_ui, manager
from ui.widgets import (
    ENTROPY_LABELS,
    TARGET_LABELS,
    WEIGHTING_LABELS,
    fmt_sparsity,
    number_input,
    radio,
    select_slider,
    selectbox,
)

SPARSITY_OPTIONS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98)
MAX_RETRAIN_UI = 20  # epochs of retraining the survivors (CompressConfig.prune_finetune_epochs) the page offers


def compress_config_ui(has_conv: bool) -> CompressConfig:
    """The compression widgets; ValueError when the combination is not valid. Which ones a method uses
    (the others are disabled) and the controls of its own (drawn only for it) are the method's to say."""
    col1, col2, col3 = st.columns(3)
    with col1:
        method = selectbox(
            "Method",
            METHODS,
            "pq",
            "method",
            True,
            help="; ".join(f"{spec.name}: {spec.summary}" for spec in METHOD_SPECS.values()) + ".",
        )
        spec = METHOD_SPECS[method]
        unused = {name: name not in spec.controls for name in SHARED_CONTROLS}
        layout = radio(
            "Codebook layout",
            LAYOUTS,
            "shared",
            "layout",
            True,
            horizontal=True,
            disabled=unused["layout"],
            help="shared: one codebook per layer; per-chunk: one per chunk position (needs k ≤ rows).",
        )
    with col2:
        subvector_size = select_slider("Subvector size d", D_OPTIONS, 8, "d", True, disabled=unused["subvector_size"])
        n_centroids = select_slider(
            "Centroids k",
            K_OPTIONS,
            256,
            "k",
            True,
            format_func=fmt_k,
            disabled=unused["n_centroids"],
            help="A code is log2(k) bits per subvector.",
        )
        sparsity = select_slider(
            "Prune first (sparsity)", SPARSITY_OPTIONS, 0.0, "sparsity", True, disabled=not spec.codes_weights,
            format_func=fmt_sparsity,
            help="Magnitude pruning: this share of each coded layer's smallest weights becomes exact zeros (the "
            "mask stored, 1 bit a weight, or entropy-coded); the method codes the survivors only.",
        )  # fmt: skip
        pruned = spec.codes_weights and sparsity > 0
        retrain = number_input(  # 0 to 20 as the fine-tuning: every stored record's value reopens from its link
            "Retrain the survivors (epochs)", 0, MAX_RETRAIN_UI, 0, "retrain", True, disabled=not pruned,
            help="Deep Compression's retraining: after pruning and before coding, the whole network trains this "
            "many epochs with the mask fixed (the run's learning rate and batch size); each epoch is a pass over "
            "the training set, so it runs as a job." + ("" if pruned else " Not used: nothing is pruned."),
        )  # fmt: skip
        own = {
            option.field: select_slider(option.label, option.options, option.default, option.field, True,
                                        help=option.help)
            for option in spec.options
        }  # fmt: skip
    with col3:
        centroid_bits = radio(
            "Centroid precision (bits)", (32, 16), 32, "bits", True, horizontal=True, disabled=unused["centroid_bits"]
        )
        finetune_epochs = number_input(
            "Centroid fine-tuning epochs (codes fixed)", 0, 20, 0, "ft", True, disabled=unused["finetune_epochs"]
        )
        weighting = radio(
            "k-means minimizes", WEIGHTINGS, "none", "weighting", True, horizontal=True,
            format_func=WEIGHTING_LABELS.__getitem__,
            disabled=unused["weighting"],
            help="output error: activation-aware k-means (Stock et al. 2019), weighted by each layer's input "
            "statistics on 2,048 training images; it lowers each layer's output error, not always the accuracy.",
        )  # fmt: skip
        targets = radio(
            "Layers to code", TARGETS, "fc", "targets", True, horizontal=True,
            format_func=TARGET_LABELS.__getitem__,
            disabled=unused["targets"] or not has_conv,
            help="The paper codes the FC layers only; coding the convolutions too takes the model ratio past "
            "the conv barrier (lenet5, cifar-cnn). A conv's filters are cut into subvectors along their "
            "in x kh x kw values.",
        )  # fmt: skip
        entropy = radio(
            "Codes stored", ENTROPY_CODERS, "none", "entropy", True, horizontal=True,
            format_func=ENTROPY_LABELS.__getitem__,
            disabled=not spec.codes_weights,
            help="entropy-coded: each layer's codes coded by rANS (constriction) under the frequencies of its own "
            "codes; the stream and the frequency table (32 bits a count) are counted in the size. A layer keeps "
            "packed codes where that is smaller.",
        )  # fmt: skip
    return CompressConfig(
        method=method,
        subvector_size=int(subvector_size),
        n_centroids=int(n_centroids),
        layout=layout,
        centroid_bits=int(centroid_bits),
        finetune_epochs=int(finetune_epochs),
        targets=targets if has_conv else "fc",
        weighting=weighting,
        entropy=entropy,
        sparsity=float(sparsity),
        prune_finetune_epochs=int(retrain),
        **{field: int(value) for field, value in own.items()},
    )


# the page's sliders a press moves, nearest first: their neighbouring values are computed ahead
SLIDER_AXES = (("n_centroids", K_OPTIONS), ("subvector_size", D_OPTIONS))


def neighbours(cfg: CompressConfig, method: str) -> list[CompressConfig]:
    """The settings one press of a slider away from `cfg` (the page's `method` chosen, whose sliders
    they are), then two: what the page has computed ahead (core.pipeline.Precompute), nearest first."""
    spec = METHOD_SPECS[method]
    axes = [(field, options) for field, options in SLIDER_AXES if field in spec.controls]
    found: list[CompressConfig] = []
    for step in (1, 2):
        for field, options in axes:
            value = getattr(cfg, field)
            if value not in options:
                continue
            at = options.index(value)
            for other in (at - step, at + step):
                if 0 <= other < len(options):
                    with contextlib.suppress(ValueError):  # a combination the config refuses is no neighbour
                        found.append(dataclasses.replace(cfg, method=method, **{field: options[other]}))
    return [other for other in found if other.key() != cfg.key()]


def compute_ahead(run: RunRecord, cfg: CompressConfig, method: str) -> None:
    """Have the neighbouring settings computed in the background at low priority, so that the next
    press finds its numbers stored; never in the way of the page (it returns at once)."""
    with contextlib.suppress(Exception):
        precompute(store()).want(run, neighbours(cfg, method), requester=job_requester())


def compress_now(run: RunRecord, cfg: CompressConfig, plan: CompressionPlan) -> CompressionRecord | None:
    """A cheap setting: computed as a job this script run waits on for at most INLINE_LIMIT_S (one job
    per key: a second session asking for it at the same moment waits for the same one), in the
    interactive slot beside other sessions' trainings. Past the limit it goes on in the background,
    its live panel (with Cancel) shows the result the moment it lands; None then. After a failure or a
    cancel it is offered as a job again, never restarted by itself."""
    key = compression_key(run.run_id, cfg)
    status = manager().status(key)
    if status is not None and status.state in (JobState.FAILED, JobState.CANCELLED):
        offer_job(run, cfg, plan)
        return None
    record = None
    if status is not None and status.live:
        hurry(store(), key)  # computed ahead at low priority: someone waits on it now
    if status is None or not status.live:  # one already running past the limit is not waited on again
        with st.spinner(f"Compressing: {cfg.label()} (k-means, then accuracy of the rebuilt model)…"):
            record = compress_within(store(), run, cfg, requester=job_requester(), plan=plan)
    if record is None:
        st.info(
            f"Still computing {plain(cfg.label())}: its numbers and charts appear here as soon as it is done "
            "(it runs as a job in the background: you can cancel it, or leave the page and come back)."
        )
        job_progress_ui(key, f"Compressing {cfg.label()}", poll_s=ANSWER_POLL_S)
    return record


def settle_ui(record: CompressionRecord) -> None:
    """Keep a setting the user stays on. Computed while a slider passed over it, it is stored but kept
    off the Frontier; shown for SETTLE_S seconds without a new setting, it is kept. Arrow keys from
    k = 256 down to 16 store 128, 64 and 32 for a quick way back, but only 16 reaches the Frontier."""
    if not record.transient:
        return

    # the clock starts anew each time the page draws this setting: passing over it again later
    # does not count the time spent elsewhere
    if st.session_state.get("_settle", (None, 0.0))[0] != record.key or not st.session_state.get("_settle_live"):
        st.session_state["_settle"] = (record.key, time.monotonic())
    st.session_state["_settle_live"] = False  # set again by the fragment while it runs

    def later() -> None:
        st.session_state["_settle_live"] = True
        key, first = st.session_state.get("_settle", (None, 0.0))
        if key == record.key and time.monotonic() - first >= SETTLE_S:
            store().settle_compression(record.run_id, record.key)

    st.fragment(later, run_every=SETTLE_S)()


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:,.0f} s"


def offer_job(run: RunRecord, cfg: CompressConfig, plan: CompressionPlan) -> None:
    """An expensive setting: only after a click, as a cancellable job; a link never starts it."""
    seconds = plan.seconds
    key = compression_key(run.run_id, cfg)
    status = manager().status(key)
    if status is not None and status.live:
        job_progress_ui(key, f"Compressing {cfg.label()}")
        return
    last_failure_ui(key)
    epochs = cfg.prune_finetune_epochs
    retrain = f"{epochs} epoch{'s' if epochs > 1 else ''} of retraining the survivors, then " if epochs else ""
    st.info(
        f"{cfg.label()} on this run is not stored yet, and takes about {fmt_seconds(seconds)} on this "
        f"machine ({retrain}k-means over every subvector, k centroids, {cfg.kmeans_iters} iterations"
        f"{', then centroid fine-tuning' if cfg.finetune_epochs else ''}). It runs in the background: "
        f"you can leave the page and come back."
    )
    if st.button(f"Compute (about {fmt_seconds(seconds)})", type="primary", key="compute_button"):
        try:
            submit_compression(store(), run, cfg, requester=job_requester(), plan=plan)
        except ValueError as error:  # a read-only store, too many jobs waiting: one line, nothing queued
            st.error(f"**The compression could not start.** {plain(error)}")
            return
        st.rerun()


def show_compression(run: RunRecord, record: CompressionRecord) -> None:
    row, size = record, record.size
    st.subheader(f"{record.label()} on run {run.run_id[:6]}")
    cols = st.columns(5)
    cols[0].metric("Float accuracy", fmt_pct(row.float_accuracy))
    cols[1].metric("Accuracy after", fmt_pct(row.accuracy), delta=fmt_points(-row.accuracy_drop))
    cols[2].metric("FC ratio", nice_ratio(size.fc_ratio), help="32·N_fc / (code + codebook + scale bits)")
    cols[3].metric("Model ratio", nice_ratio(size.model_ratio), help="whole model, float rest included")
    cols[4].metric("Exported file", fmt_bytes(row.file_bytes), help=f"{row.file_bytes:,} bytes on disk")
    if size.entropy_code_bits is not None:
        cols = st.columns(5)
        cols[2].metric(
            "FC ratio, entropy-coded", nice_ratio(size.entropy_fc_ratio),
            help=f"codes as stored: {size.entropy_code_bits:,} bits (ANS streams and frequency tables) in place "
            f"of {size.code_bits:,} bit-packed",
        )  # fmt: skip
        cols[3].metric("Model ratio, entropy-coded", nice_ratio(size.entropy_model_ratio))
    st.plotly_chart(bits_breakdown(size, title="Where the bits go"), key="chart_bits")

    st.subheader("The weights and the centroids that replace them")
    names = [layer.name for layer in run.layers]
    labels = {layer.name: layer.label() for layer in run.layers}
    layer_key = f"layer_{run.run_id}"
    url_choice(layer_key, "layer", names, names[0])
    layer_name = st.radio("Layer", names, format_func=lambda name: plain(labels[name]), key=layer_key, horizontal=True)
    keep(layer_key, layer_name)
    st.query_params["layer"] = layer_name
    assert record.file_path is not None
    picture = compression_plot_data(record.file_path, record.file_bytes, run.run_id, str(store().root), layer_name)
    title = labels[layer_name]
    method = record.compress_config.method
    if picture["kind"] == "hist":
        st.plotly_chart(
            centroid_histogram(
                picture["weights"],
                picture["centroids"],
                method=method,
                title=f"{title}: float weights and the {len(picture['centroids'])} distinct centroids",
                pruned=picture.get("pruned"),
            ),
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
            key="chart_scatter",
        )
    elif picture["kind"] == "none":
        st.info(f"Method {plain(method)} keeps the weights as they are: no centroids to draw.")
    else:
        st.info(
            f"With d = {picture['subvector_size']} the subvectors live in {picture['subvector_size']} dimensions; "
            f"pick d = 1 (a histogram with the centroids) or d = 2 (a scatter of the subvectors) to see them."
        )
    if record.layer_mse:
        st.caption("Reconstruction MSE per layer: " + ", ".join(f"{plain(k)}: {v:.3g}" for k, v in record.layer_mse))

    st.download_button(
        "Download the compressed model (.safetensors)",
        file_bytes(record.file_path),
        file_name=download_name(record),
        mime="application/octet-stream",
        key="download",
        on_click="ignore",
    )
    try:  # the same model as ONNX, its weights kept coded: built only when the button is clicked
        require_onnx()
    except MissingDependency as exc:
        st.caption(plain(str(exc)))
    else:
        st.download_button(
            "Download for ONNX Runtime (.onnx, weights kept coded)",
            partial(onnx_bytes, record.file_path),
            file_name=download_name(record).removesuffix(".safetensors") + ".onnx",
            mime="application/octet-stream",
            key="download_onnx",
            on_click="ignore",
        )
    st.caption(
        "Load it with `python -m core evaluate FILE` or `core.export.load_file(path)`: the accuracy above is "
        "measured on the model rebuilt from this very file."
    )


def fit_budget_ui(run: RunRecord, cfg: CompressConfig) -> None:
    """ "Fit a budget": a KB slider -> the per-layer search (core/budget.py) as a job -> the allocation it
    found, a layer a row, and its compression (on the Frontier as the family "budget"). The page's
    setting gives the shared fields when it can (kmeans or pq, weighting none), else the defaults."""
    from core.budget import (
        HOLDOUT_EXAMPLES,
        KB_BITS,
        BudgetRequest,
        budget_key,
        budget_record,
        check_base,
        plan_run,
        submit_budget,
    )
    from core.compress import coded_shapes
    from core.size import layer_bits

    with st.expander("Fit a budget: each layer its own setting"):
        try:
            base = check_base(cfg)
        except ValueError:
            base = CompressConfig(targets=cfg.targets)
        try:
            bounds = plan_run(run, base, BudgetRequest(budget_kb=1e9))
        except ValueError as error:
            st.error(f"**No budget can be fitted here.** {plain(error)}")
            return
        low = math.ceil(bounds.smallest_bits / KB_BITS * 10) / 10
        high = max(low + 0.1, math.floor(bounds.largest_bits / KB_BITS * 10) / 10)
        st.caption(
            f"Each coded layer gets its own setting (float, kmeans k, pq d and k; shared fields from "
            f"{plain(base.label())}), chosen from its measured sensitivity on {HOLDOUT_EXAMPLES} examples of the "
            "training split (never the test split): the least accuracy lost per bit saved, until the model fits."
        )
        kb = st.slider(
            "Model size budget (KB)",
            low,
            high,
            value=min(high, max(low, round((low * high) ** 0.5, 1))),
            step=0.1,
            key="budget_kb",
        )
        request = BudgetRequest(budget_kb=kb)
        try:
            plan = plan_run(run, base, request)
        except ValueError as error:
            st.error(f"**This budget cannot be fitted.** {plain(error)}")
            return
        key = budget_key(run.run_id, base, request)
        status = manager().status(key)
        if status is not None and status.live:
            job_progress_ui(key, f"Fitting {kb:g} KB")
            return
        record = budget_record(store(), run, status)
        if record is None:
            last_failure_ui(key)
            seconds = plan.seconds or 0.0
            st.info(
                f"The search codes {plan.quantizations} candidate settings and makes at most {plan.evaluations} "
                f"held-out evaluations: about {fmt_seconds(seconds)} on this machine, as a job."
            )
            if st.button(f"Fit {kb:g} KB (about {fmt_seconds(seconds)})", key="budget_button"):
                try:
                    submit_budget(store(), run, base, request, requester=job_requester())
                except ValueError as error:
                    st.error(f"**The search could not start.** {plain(error)}")
                    return
                st.rerun()
            return
        found = record.compress_config
        rows = []
        for name, shape in coded_shapes(run, found.targets):
            bits = layer_bits(name, shape, found)
            rows.append({"layer": name, "setting": found.for_layer(name).label(), "bits": bits.bits,
                         "ratio": f"{bits.ratio:.1f}x"})  # fmt: skip
        cols = st.columns(3)
        cols[0].metric(
            "Model size", f"{record.size.model_bits / KB_BITS:,.2f} KB", help=f"{record.size.model_bits:,} bits"
        )
        cols[1].metric("Accuracy after", fmt_pct(record.accuracy), delta=fmt_points(-record.accuracy_drop))
        cols[2].metric("Model ratio", nice_ratio(record.size.model_ratio))
        st.dataframe(rows, hide_index=True)
        st.caption(plain(status.text if status is not None else ""))


def page() -> None:
    st.title("Compress")
    st.caption(
        "Quantize the FC layers of a trained run (and its convolutions too, for a conv model, if you ask): "
        "sign binarization, scalar k-means (d = 1), or product quantization (subvectors of d weights, k "
        "centroids). Every bit of the result is counted."
    )
    records = runs()
    if not records:
        st.info("The run store is empty: there is no trained network to compress yet. Train one first.")
        st.page_link("views/train.py", label="Go to Train", icon=":material/model_training:")
        return
    run = run_select_ui(records)
    try:
        cfg = compress_config_ui(has_conv=run.config.model != "mlp")
    except ValueError as error:
        st.error(f"**This setting is not valid.** {plain(error)}")
        return
    fit_budget_ui(run, cfg)
    try:
        plan = plan_compression(store(), run, cfg)  # stored, cheap, expensive or does not fit: one call
        compute_ahead(run, cfg, st.session_state.get("method", cfg.method))
        if plan.kind is PlanKind.DOES_NOT_FIT:
            st.error(f"**This setting does not fit the run.** {plain(plan.reason)}")
            return
        if plan.kind is PlanKind.EXPENSIVE:
            offer_job(run, cfg, plan)
            return
        record = plan.record if plan.kind is PlanKind.STORED else compress_now(run, cfg, plan)
        if record is None:
            return  # still running: its job panel is shown
    except DoesNotFit as error:  # a job of another session that found it does not fit
        st.error(f"**This setting does not fit the run.** {plain(error)}")
        return
    except (DatasetUnavailable, CorruptEntry, ValueError) as error:
        show_error(error)
        return
    try:
        show_compression(run, record)
    except CorruptEntry as error:  # the run's weights (drawn beside the centroids) fail their check
        show_error(error)
        return
    send_to_board_ui(record)
    settle_ui(record)


if __name__ == "__main__":
    page()
