"""Learn: the loss, two toys that need no dataset, the size formula with its worked example, a path."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.charts import nice_ratio, toy_pq_figure, toy_weights_figure
from core.config import CompressConfig
from core.pq import n_chunks
from core.size import code_width, size_report
from core.toy import double_well_descent, pq_toy
from ui.common import D_OPTIONS, K_OPTIONS, fmt_k
from ui.widgets import select_slider

LENET_300_100 = [(300, 784), (100, 300), (10, 100)]  # (out, in) of each FC layer
LENET_BIASES = 300 + 100 + 10


@st.cache_data(show_spinner=False, max_entries=64)
def _double_well(lam: float) -> dict:
    return double_well_descent(lam)


@st.cache_data(show_spinner=False, max_entries=64)
def _pq_toy(k: int) -> dict:
    return pq_toy(k)


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

    st.header("4. A guided path")
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
