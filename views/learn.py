"""Learn: the loss, two toys that need no dataset, the size formula with its worked example, the three
stages (prune, quantize, entropy-code) on a toy and on a stored run's ledger, a path."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.charts import (
    code_usage_figure,
    nice_ratio,
    pruned_histogram,
    stage_ledger_figure,
    toy_pq_figure,
    toy_weights_figure,
)
from core.config import CompressConfig
from core.pq import n_chunks
from core.records import CompressionRecord
from core.size import code_width, size_report
from core.toy import double_well_descent, pq_toy
from core.toy_stages import (
    DISTRIBUTIONS,
    TOY_SHAPE,
    LedgerStage,
    StagesToy,
    kept_weights,
    stage_ledger,
    stages_toy,
    toy_subvectors,
)
from ui.common import D_OPTIONS, K_OPTIONS, compressions, fmt_k, plain, run_record, show_error
from ui.widgets import radio, select_slider

LENET_300_100 = [(300, 784), (100, 300), (10, 100)]  # (out, in) of each FC layer
LENET_BIASES = 300 + 100 + 10
STAGE_SPARSITIES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98)
STAGE_D = (1, 2, 4, 8)
STAGE_K = (2, 4, 8, 16, 32, 64, 128, 256)
# the Compress page's link for a pruned, entropy-coded compression (each control's value as it writes it)
PRUNED_ANS_LINK = {"method": "pq", "d": "1", "k": "16", "sparsity": "0.9", "entropy": "rANS"}


@st.cache_data(show_spinner=False, max_entries=64)
def _double_well(lam: float) -> dict:
    return double_well_descent(lam)


@st.cache_data(show_spinner=False, max_entries=64)
def _pq_toy(k: int) -> dict:
    return pq_toy(k)


@st.cache_data(show_spinner=False, max_entries=256)
def _stages_toy(sparsity: float, subvector_size: int, n_centroids: int, distribution: str) -> StagesToy:
    return stages_toy(sparsity, subvector_size, n_centroids, distribution)


def _ledger_table(stages: list[LedgerStage], with_model: bool) -> pd.DataFrame:
    """The stages as rows; a mask counted inside the codes' column (a stored ledger's entropy line) says so."""
    rows = []
    for stage in stages:
        row = {
            "after": stage.stage,
            "weights / codes (bits)": f"{stage.value_bits:,}"
            + (" (with the masks)" if stage.mask_bits is None else ""),
            "mask (bits)": "in the codes" if stage.mask_bits is None else f"{stage.mask_bits:,}",
            "codebooks + scales (bits)": f"{stage.table_bits:,}",
            "coded layers (bits)": f"{stage.fc_bits:,}",
            "FC ratio": nice_ratio(stage.fc_ratio),
        }
        if with_model:
            row["model ratio"] = nice_ratio(stage.model_ratio)
        rows.append(row)
    return pd.DataFrame(rows)


def _ledger_chart(stages: list[LedgerStage], key: str) -> None:
    st.plotly_chart(stage_ledger_figure([(s.stage, s.fc_bits, s.fc_ratio) for s in stages]), key=key)


def three_stages_toy_ui() -> None:
    """The toy: a 64 x 64 weight pruned, quantized and entropy-coded by the core's own code paths."""
    out_features, in_features = TOY_SHAPE
    n = out_features * in_features
    st.caption(
        f"A seeded {out_features} × {in_features} weight matrix ({n:,} weights), no dataset. Every number below "
        "comes from the code a real compression runs: `core.prune`'s mask, `core.methods`' k-means or PQ, the "
        "file writer of `core.export` (which entropy-codes the codes and the mask only where that is smaller), "
        "`core.size`'s ledger and `core.entropy`'s rANS coder (constriction)."
    )
    col1, col2 = st.columns(2)
    with col1:
        distribution = radio("Toy weights", DISTRIBUTIONS, "laplace", "stage_dist", True, horizontal=True)
    with col2:
        # the plain number as its label: the URL keeps the label, and the link check takes a number (not 90%)
        sparsity = float(select_slider("Sparsity (share pruned; 0: none)", STAGE_SPARSITIES, 0.9, "stage_s", True))

    st.subheader("Stage 1: prune")
    st.markdown(
        "The smallest |w| become exact zeros. The file then stores which weights survive: a **mask**, 1 bit a "
        "weight as a bitmap, or entropy-coded. Its entropy H(p), with p the kept share, is what an ideal coder "
        "needs; a bitmap is only that good at p = 50%."
    )
    stage1 = st.container()  # filled once the toy is computed, which needs stage 2's controls too
    st.subheader("Stage 2: quantize the survivors")
    col1, col2 = st.columns(2)
    with col1:
        subvector_size = int(select_slider("Subvector size d (1: scalar k-means)", STAGE_D, 1, "stage_d", True))
    # k past the survivors' subvectors buys nothing (each already is its own centroid)
    k_options = [k for k in STAGE_K if k <= toy_subvectors(sparsity, subvector_size)]
    with col2:
        n_centroids = int(select_slider("Centroids k", k_options, min(16, k_options[-1]), "stage_k", True))
    try:
        toy = _stages_toy(sparsity, subvector_size, n_centroids, distribution)
    except ValueError as error:
        show_error(error)
        return
    cols = stage1.columns(4)
    kept = len(toy.kept)
    cols[0].metric("Weights kept", f"{kept:,} of {n:,}")
    if toy.mask is None:
        cols[1].metric("Mask", "none (nothing pruned)")
    else:
        mask = toy.mask
        cols[1].metric("Mask as a bitmap", f"{mask.packed_bits:,} bits", help="1 bit a weight: the ledger's mask_bits")
        cols[2].metric(
            "Mask rANS-coded", f"{mask.ans_bits:,} bits",
            help=f"core.entropy's stream and its frequency table ({mask.table_bits} bits); the file keeps "
            f"{'this' if mask.stored == 'ans' else 'the bitmap'}, the smaller",
        )  # fmt: skip
        cols[3].metric("Entropy bound n·H(p)", f"{mask.entropy_bound_bits:,.0f} bits",
                       help=f"H(p) = {mask.bits_per_symbol:.3f} bits a weight")  # fmt: skip
    stage1.plotly_chart(pruned_histogram(toy.kept, toy.pruned), key="chart_stage_prune")

    method = toy.config.method
    st.markdown(
        f"The {kept:,} survivors, read row by row as one sequence, are coded by **{method}** "
        f"(d = {subvector_size}, k = {n_centroids}, one shared codebook): each subvector becomes the "
        f"{code_width(n_centroids)}-bit index of its nearest centroid. Codes used unevenly carry less "
        "information than their width: that is what the entropy coder takes back."
    )
    codes = toy.codes
    cols = st.columns(4)
    cols[0].metric("Codes bit-packed", f"{codes.packed_bits:,} bits",
                   help=f"{codes.n_symbols:,} codes × {code_width(n_centroids)} bits")  # fmt: skip
    cols[1].metric(
        "Codes rANS-coded", f"{codes.ans_bits:,} bits",
        help=f"stream + frequency table ({codes.table_bits:,} bits: 32 a code); the file keeps "
        f"{'this' if codes.stored == 'ans' else 'the packed codes'}, the smaller",
    )  # fmt: skip
    cols[2].metric(
        "Entropy bound n·H(p)", f"{codes.entropy_bound_bits:,.0f} bits",
        help=f"H = {codes.bits_per_symbol:.3f} bits a code against {code_width(n_centroids)} packed",
    )  # fmt: skip
    cols[3].metric("Mean squared error", f"{toy.mse:.2e}", help="of the decoded weight, pruned zeros included")
    col1, col2 = st.columns(2)
    with col1:
        st.plotly_chart(code_usage_figure(toy.code_counts, method), key="chart_stage_codes")
    with col2:
        if subvector_size == 1:
            centroids = [c[0] for c in toy.centroids]
            st.plotly_chart(pruned_histogram(toy.kept, (), centroids, method), key="chart_stage_centroids")
        else:
            st.caption(f"With d = {subvector_size} each centroid is a point in {subvector_size} dimensions: the "
                       "codes' use (left) is what the entropy coder sees.")  # fmt: skip

    st.subheader("Stage 3: entropy-code, and the ledger stage by stage")
    st.markdown(
        "Each stage's bits, as `core.size.size_report` counts them and the file writer stores them (the "
        "entropy-coded line: `entropy_code_bits`, measured on what was written). Ratio = float32 bits / bits."
    )
    st.dataframe(_ledger_table(toy.stages, with_model=False), hide_index=True, key="stage_table")
    _ledger_chart(toy.stages, "chart_stage_ledger")
    grown = [(a, b) for a, b in zip(toy.stages, toy.stages[1:]) if b.fc_bits > a.fc_bits]
    for before, after in grown:
        st.warning(
            f"Here the {after.stage} stage makes the weight bigger ({before.fc_bits:,} → {after.fc_bits:,} bits): "
            + ("the codebook outweighs what the codes save; try a smaller k or d."
               if after.stage == "quantized" else "the mask costs more than the pruned weights saved.")
        )  # fmt: skip


def real_ledger_ui() -> None:
    """A stored compression that prunes or entropy-codes, its ledger stage by stage from its record."""
    staged = [c for c in compressions() if c.compress_config.sparsity > 0 or c.compress_config.entropy == "ans"]
    if not staged:
        st.markdown(
            "No stored compression is pruned or entropy-coded yet: make one on the Compress page (prune slider, "
            "codes stored as rANS), or run `python -m core compress RUN_ID --method pq --sparsity 0.9 --entropy ans`."
        )
        st.page_link("views/compress.py", label="Compress: pruned 90%, k-means k = 16, rANS",
                     icon=":material/compress:", query_params=PRUNED_ANS_LINK)  # fmt: skip
        return
    by_key = {f"{c.run_id}-{c.key}": c for c in staged}
    chosen = st.selectbox(
        "Stored compression", list(by_key), key="stage_record",
        format_func=lambda key: f"{by_key[key].label()} of run {by_key[key].run_id[:6]}",
    )  # fmt: skip
    record: CompressionRecord = by_key[chosen]
    cfg, train = record.compress_config, record.train_config
    st.caption(
        f"{plain(train.dataset)} · {plain(train.model)} · {plain(train.label())} · accuracy "
        f"{record.accuracy:.2%} (float {record.float_accuracy:.2%}) · file {record.file_bytes:,} bytes"
    )
    n_kept = None
    if cfg.sparsity > 0:
        run = run_record(record.run_id)
        if run is not None:  # the survivors: each coded layer's shape (the record keeps the mask bits only)
            from core.compress import coded_shapes  # here: it imports torch, which only this line needs

            n_kept = kept_weights([shape for _, shape in coded_shapes(run, cfg.targets)], cfg.sparsity)
    stages = stage_ledger(record.size, n_kept)
    st.dataframe(_ledger_table(stages, with_model=True), hide_index=True, key="stage_record_table")
    _ledger_chart(stages, "chart_stage_record")
    notes = ["From the record's size ledger: code_bits, codebook_bits, scale_bits, mask_bits"]
    if record.size.entropy_code_bits is not None:
        notes.append("entropy_code_bits (the codes and masks as the file stores them)")
    if cfg.sparsity > 0 and n_kept is None:
        notes.append("the line after pruning needs the run's layer shapes, and the run is not in the store")
    elif n_kept is not None:
        notes.append(f"the line after pruning counts the {n_kept:,} survivors from the run's layer shapes")
    st.caption("; ".join(notes) + ".")


def page() -> None:
    st.title("Learn")

    st.header("1. The loss")
    st.markdown(
        "Training adds one term to the cross-entropy, on the FC weight matrices only. This is **our reading of "
        "the paper's binarizing term** (Soulié, Gripon, Robert 2016; inspired by Murray & Ng 2010): "
        "a scale-free double well per layer, zero exactly when every weight is +α or −α."
    )
    st.latex(
        r"\mathcal{L}(W) = \mathrm{CE}(W) + \lambda \sum_{l \in \mathrm{FC}} \frac{1}{n_l}\sum_{i,j}"
        r"\frac{\left(W_{l,ij}^2 - \alpha_l^2\right)^2}{\alpha_l^4},\qquad \alpha_l = \frac{1}{n_l}\sum_{i,j}"
        r"\left|W_{l,ij}\right|\ \text{(held constant in the gradient)}"
    )
    st.markdown(
        "λ may ramp linearly from 0 over a few warm-up epochs. Biases are never regularized; the convolutions "
        "are not either, as in the paper, unless you ask for it on the Train page."
    )

    st.subheader("Toy: a cloud of weights under the double well")
    st.caption(
        "2,000 Gaussian weights, 300 steps of Adam on (squared distance to where they started, standing in for "
        "the task loss) + λ·R(W), with R the core's own binary_penalty. No dataset involved."
    )
    toy_lam = select_slider(
        "λ", (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0), 0.3, "toy_lam", True, format_func=lambda v: f"{v:g}"
    )
    toy = _double_well(float(toy_lam))
    cols = st.columns(3)
    cols[0].metric("R(W) at the start", f"{toy['initial_penalty']:.3f}")
    cols[1].metric("R(W) after descent", f"{toy['penalty']:.3f}")
    cols[2].metric("α = mean |W|", f"{toy['alpha']:.4f}")
    st.plotly_chart(
        toy_weights_figure(toy["initial"], toy["final"], toy["alpha"], float(toy_lam)), key="chart_toy_well"
    )

    st.header("2. Product quantization")
    st.markdown(
        "Each FC row is cut into chunks of d consecutive weights (the last one zero-padded). k-means learns k "
        "centroids; each chunk is stored as the log₂ k-bit index of its nearest centroid. Binarized weights "
        "need few centroids, which is why the regularizer helps."
    )
    toy_k = select_slider("k (centroids) for 600 points in 2-D", (2, 3, 4, 6, 8, 16, 32, 64), 6, "toy_k", True)
    pq = _pq_toy(int(toy_k))
    cols = st.columns(3)
    cols[0].metric("Bits per point", f"{code_width(int(toy_k))} (vs 64 in float32)")
    cols[1].metric("Mean squared error", f"{pq['mse']:.4f}")
    cols[2].metric("Error / variance", f"{pq['mse'] / pq['variance']:.1%}")
    st.plotly_chart(toy_pq_figure(pq["points"], pq["centroids"], pq["codes"]), key="chart_toy_pq")

    st.header("3. Counting the bits")
    st.latex(
        r"\text{FC ratio} = \frac{32\,N_{fc}}{\text{code bits} + \text{codebook bits} + \text{scale bits}},\quad"
        r"\text{code bits} = \sum_l \text{out}_l \left\lceil \tfrac{\text{in}_l}{d} \right\rceil \lceil\log_2 k\rceil,"
        r"\quad \text{codebook bits} = G\,k\,d\,c"
    )
    st.markdown(
        "G is the number of codebooks (1 per layer when shared, one per chunk position when per-chunk); "
        "c is 32 (float32 centroids) or 16. The model ratio adds the float rest (biases, convs) on both sides."
    )
    st.subheader("Worked example: LeNet-300-100 (784-300-100-10)")
    col1, col2 = st.columns(2)
    with col1:
        ex_d = select_slider("d", D_OPTIONS, 8, "ex_d", True)
    chunks = [n_chunks(inp, int(ex_d)) for _, inp in LENET_300_100]
    n_sub = sum(out * c for (out, _), c in zip(LENET_300_100, chunks))
    with col2:
        # k beyond the number of subvectors buys nothing: every subvector is already its own centroid
        k_options = [k for k in K_OPTIONS if k <= n_sub]
        ex_k = select_slider("k", k_options, min(256, k_options[-1]), "ex_k", True, format_func=fmt_k)
    example = CompressConfig(method="pq", subvector_size=int(ex_d), n_centroids=int(ex_k), layout="shared")
    report = size_report(LENET_300_100, LENET_BIASES, example)
    st.markdown(
        f"Shared layout, d = {ex_d}, k = {fmt_k(int(ex_k))}, float32 centroids (computed by `core.size.size_report`):\n"
        f"- chunks per row: {', '.join(str(c) for c in chunks)}; subvectors: "
        f"{' + '.join(f'{out}·{c}' for (out, _), c in zip(LENET_300_100, chunks))} = {n_sub:,}\n"
        f"- codes: {n_sub:,} × {code_width(example.n_centroids)} bits = **{report.code_bits:,} bits**\n"
        f"- codebooks: 3 × {fmt_k(int(ex_k))} × {ex_d} × 32 = **{report.codebook_bits:,} bits**\n"
        f"- total FC: **{report.fc_bits:,} bits** against {report.fc_float_bits:,} float bits: "
        f"**FC ratio {report.fc_ratio:.2f}** (model ratio {nice_ratio(report.model_ratio)})"
    )
    if report.fc_ratio < 1:
        st.warning(
            f"With k = {fmt_k(int(ex_k))} the codebooks ({report.codebook_bits:,} bits) outweigh what the codes "
            f"save: the layer is bigger than in float32. k is only worth it well below the {n_sub:,} subvectors."
        )
    st.dataframe(
        pd.DataFrame(
            [
                {"part": "codes", "bits": report.code_bits},
                {"part": "codebooks", "bits": report.codebook_bits},
                {"part": "FC total", "bits": report.fc_bits},
                {"part": "FC float32", "bits": report.fc_float_bits},
            ]
        ),
        hide_index=True,
        key="ex_table",
    )

    st.header("4. Three stages: prune, quantize, entropy-code")
    st.markdown(
        "Deep Compression (Han et al. 2016) stacks three stages: **prune** the smallest weights, **quantize** "
        "the survivors to shared centroids, **entropy-code** what is stored. Here each stage on a toy, then on "
        "a run of yours."
    )
    three_stages_toy_ui()
    st.subheader("The real ledger of a run")
    real_ledger_ui()

    st.header("5. A guided path")
    st.markdown("1. **Train** the default (mnist-5k, LeNet-300-100) twice: λ = 0 and λ = 0.01 (binary).")
    st.page_link("views/train.py", label="Train", icon=":material/model_training:")
    st.markdown("2. **Compress** each with binarize, then PQ d = 8, k = 256: compare the accuracy drops.")
    st.page_link("views/compress.py", label="Compress", icon=":material/compress:")
    st.markdown(
        "3. **Frontier**: run a small sweep over λ and k; find where the regularized points beat the baselines."
    )
    st.page_link("views/frontier.py", label="Frontier", icon=":material/scatter_plot:")
    st.markdown("4. **Compare** the two runs: their histograms at the last epoch show why.")
    st.page_link("views/compare.py", label="Compare", icon=":material/compare:")


if __name__ == "__main__":
    page()
