"""Compression on the Fly Lab: navigation and the home page only (`streamlit run app.py`)."""

from __future__ import annotations

import streamlit as st

from core.charts import weight_histograms_overlay
from core.toy import double_well_descent, histogram_dict
from ui.common import runs

PAGES = {
    "train": ("views/train.py", "Train", ":material/model_training:"),
    "compress": ("views/compress.py", "Compress", ":material/compress:"),
    "frontier": ("views/frontier.py", "Frontier", ":material/scatter_plot:"),
    "compare": ("views/compare.py", "Compare", ":material/compare:"),
    "learn": ("views/learn.py", "Learn", ":material/school:"),
}


@st.cache_data(show_spinner=False)
def _toy_picture(lam: float) -> tuple[dict, dict]:
    toy = double_well_descent(lam)
    return histogram_dict(toy["initial"], "toy"), histogram_dict(toy["final"], "toy")


def home() -> None:
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
    views = sorted((v for v in runs() if v["config"]["reg"] == "binary"), key=lambda v: v["history"][-1]["reg"])
    left, right = st.columns([3, 2])
    with left:
        if views:
            view = views[0]
            before, after = view["histograms"][0][0], view["histograms"][-1][0]
            st.subheader("First FC layer, before and after training with the regularizer")
            st.caption(f"From the stored run {view['label']}.")
            fig = weight_histograms_overlay(
                {"at initialisation": before, f"after {len(view['history'])} epochs": after},
                colors=["#999999", "#CC79A7"],
            )
        else:
            before, after = _toy_picture(1.0)
            st.subheader("Illustration: a weight cloud under the binarizing term")
            st.caption(
                "ILLUSTRATION, not a trained network: 2,000 Gaussian weights after gradient descent on "
                "(distance to their start) + λ·R(W) with λ = 1, computed with the core's binary_penalty. "
                "Train a run with a regularizer and this picture shows its real weights instead."
            )
            fig = weight_histograms_overlay(
                {"initial weights": before, "after descent": after}, colors=["#999999", "#CC79A7"]
            )
        st.plotly_chart(fig, theme=None, key="home_hist")
    with right:
        st.subheader("Where to go")
        st.page_link(PAGES["learn"][0], label="Learn: the method, with toys", icon=PAGES["learn"][2])
        st.page_link(PAGES["train"][0], label="Train a network with the regularizer", icon=PAGES["train"][2])
        st.page_link(PAGES["compress"][0], label="Compress a trained run", icon=PAGES["compress"][2])
        st.page_link(
            PAGES["frontier"][0], label="Frontier: accuracy against size, and sweeps", icon=PAGES["frontier"][2]
        )
        st.page_link(PAGES["compare"][0], label="Compare runs side by side", icon=PAGES["compare"][2])


st.set_page_config(page_title="Compression on the Fly Lab", page_icon=":material/compress:", layout="wide")
navigation = st.navigation(
    [st.Page(home, title="Home", icon=":material/home:", default=True)]
    + [st.Page(path, title=title, icon=icon) for path, title, icon in PAGES.values()]
)
navigation.run()
