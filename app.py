"""Compression on the Fly Lab: the navigation, nothing else (`streamlit run app.py`).

Every page, home included, lives in views/ as a function `page()`; the file runs it when
Streamlit executes the file as the page.
"""

from __future__ import annotations

import streamlit as st

PAGES = (
    st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/train.py", title="Train", icon=":material/model_training:"),
    st.Page("views/compress.py", title="Compress", icon=":material/compress:"),
    st.Page("views/frontier.py", title="Frontier", icon=":material/scatter_plot:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("views/learn.py", title="Learn", icon=":material/school:"),
    st.Page("views/jobs.py", title="Jobs", icon=":material/pending_actions:"),
)

st.set_page_config(page_title="Compression on the Fly Lab", page_icon=":material/compress:", layout="wide")
st.navigation(list(PAGES)).run()
