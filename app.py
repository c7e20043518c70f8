"""Compression on the Fly Lab: the navigation, nothing else (`streamlit run app.py`).

Every page, home included, lives in views/ as a function `page()`; the file runs it when
Streamlit executes the file as the page.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES = (
    st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/train.py", title="Train", icon=":material/model_training:"),
    st.Page("views/compress.py", title="Compress", icon=":material/compress:"),
    st.Page("views/frontier.py", title="Frontier", icon=":material/scatter_plot:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("views/learn.py", title="Learn", icon=":material/school:"),
    st.Page("views/classroom.py", title="Class", icon=":material/groups:"),
    st.Page("views/board.py", title="Class board", icon=":material/leaderboard:"),
    st.Page("views/jobs.py", title="Jobs", icon=":material/pending_actions:"),
    st.Page("views/store.py", title="Store", icon=":material/inventory_2:"),
)

# A local icon: nothing is fetched from outside to draw the tab (the app works offline).
ICON = Path(__file__).resolve().parent / "static" / "favicon.png"
st.set_page_config(page_title="Compression on the Fly Lab", page_icon=str(ICON), layout="wide")
st.navigation(list(PAGES)).run()
