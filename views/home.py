"""Home: the method in five sentences, the collapse of the weights, and where to go."""

from __future__ import annotations

import streamlit as st

from core.charts import weight_histograms_overlay
from core.records import LayerHistogram
from core.toy import double_well_descent, toy_histogram
from ui.common import plain, runs

LINKS = (
    ("views/learn.py", "Learn: the method, with toys", ":material/school:"),
    ("views/train.py", "Train a network with the regularizer", ":material/model_training:"),
    ("views/compress.py", "Compress a trained run", ":material/compress:"),
    ("views/frontier.py", "Frontier: accuracy against size, and sweeps", ":material/scatter_plot:"),
    ("views/compare.py", "Compare runs side by side", ":material/compare:"),
)


@st.cache_data(show_spinner=False)
def toy_picture(lam: float) -> tuple[LayerHistogram, LayerHistogram]:
    toy = double_well_descent(lam)
    return toy_histogram(toy["initial"]), toy_histogram(toy["final"])


def page() -> None:
    st.title("Compression on the Fly Lab")
    st.markdown(
        "1. Train a small network with an extra term in its loss that pulls every fully-connected (FC) weight "
        "toward one of two values, ±α (our reading of the paper's binarizing term, Soulié et al. 2016).\n"
        "2. The weight λ of that term trades a little float accuracy for weights that are already almost binary.\n"
        "3. After training, each FC layer is cut into subvectors of d weights and every subvector is replaced by "
        "the index of its nearest centroid among k (product quantization).\n"
        "4. The size counts every bit: the codes, the codebooks, any scale, and the float rest of the model.\n"
        "5. Because the regularized weights sit near ±α, quantization loses far less accuracy at the same size "
        "than on a network trained without the term; the Frontier page shows that trade-off."
    )
    # the most binarized stored run (lowest final value of the binary term) tells the story best
    binary = sorted((r for r in runs() if r.config.reg == "binary"), key=lambda r: r.history[-1].reg)
    left, right = st.columns([3, 2])
    with left:
        if binary:
            run = binary[0]
            before, after = run.histograms[0][0], run.histograms[-1][0]
            st.subheader("First FC layer, before and after training with the regularizer")
            st.caption(f"From the stored run {plain(run.label())}.")
            fig = weight_histograms_overlay(
                {"at initialisation": before, f"after {run.epochs_trained} epochs": after},
                colors=["#999999", "#CC79A7"],
            )
        else:
            before, after = toy_picture(1.0)
            st.subheader("Illustration: a weight cloud under the binarizing term")
            st.caption(
                "ILLUSTRATION, not a trained network: 2,000 Gaussian weights after gradient descent on "
                "(distance to their start) + λ·R(W) with λ = 1, computed with the core's binary_penalty. "
                "Train a run with a regularizer and this picture shows its real weights instead."
            )
            fig = weight_histograms_overlay(
                {"initial weights": before, "after descent": after}, colors=["#999999", "#CC79A7"]
            )
        st.plotly_chart(fig, key="home_hist")
    with right:
        st.subheader("Where to go")
        for path, label, icon in LINKS:
            st.page_link(path, label=label, icon=icon)


if __name__ == "__main__":
    page()
