"""Class board: for the projector. The class's points on one accuracy-size Frontier with each
student's name, the class's Pareto set, the challenge's best point, how many have submitted; it
redraws itself every few seconds. The session's own best point is starred.

The board of a class is opened by the session's class (joined or taught) or by ?class=CODE.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.classroom import Board, board_figure, check_code, link_code
from ui.classroom import classroom, membership, teacher
from ui.common import compressions, plain

REFRESH_S = 5.0
# Large type for a projector: the page's own fixed style (no user text in it).
LARGE_TYPE = """<style>
[data-testid="stMetricValue"] { font-size: 3rem; }
[data-testid="stMetricLabel"] p { font-size: 1.4rem; }
[data-testid="stMarkdownContainer"] p { font-size: 1.3rem; }
</style>"""


def point_table(board: Board, on_front_only: bool) -> pd.DataFrame:
    """The board's points as text columns (st.dataframe shows a name as the characters it is)."""
    rows = [
        {
            "student": p.name,
            "method": p.record.label(),
            "training": p.record.train_config.label(),
            "accuracy (%)": round(100 * p.record.accuracy, 2),
            "drop (points)": round(100 * p.record.accuracy_drop, 2),
            "FC ratio (x)": round(p.record.size.fc_ratio, 1),
        }
        for p, on in zip(board.points, board.pareto)
        if on or not on_front_only
    ]
    return pd.DataFrame(rows)


def board_ui(code: str) -> None:
    try:
        verified = {(r.run_id, r.key): r for r in compressions()}  # each entry verified once a version
        board = classroom().board(code, lookup=lambda run_id, key: verified.get((run_id, key)))
    except ValueError as error:
        st.error(plain(error))
        return
    member = membership()
    mine = None
    if member is not None and member.code == code:
        try:
            mine = classroom().student(member).student_id
        except ValueError:
            mine = None
    state = "" if board.state == "open" else " · closed"
    st.header(f"{plain(board.challenge.title)} · class {plain(code)}{state}")
    st.markdown(plain(board.challenge.describe()))
    col1, col2, col3 = st.columns(3)
    col1.metric("Submitted", f"{board.submitted} of {board.students}", help="students with a point on the board")
    col2.metric("Points", len(board.points))
    if board.best is None:
        col3.metric("Best", "none yet")
    else:
        col3.metric(
            "Best",
            f"{board.best.record.size.fc_ratio:.1f}x · {100 * board.best.record.accuracy:.2f}%",
            help="the challenge's best point",
        )
        st.markdown(
            f"**Best for the challenge:** {plain(board.best.name)} — {plain(board.best.record.label())} on "
            f"{plain(board.best.record.train_config.label())}"
        )
    if board.challenge.target == "accuracy_at_ratio" and board.best_by_reg:
        st.markdown(
            "**By regularizer:** "
            + " · ".join(
                f"{plain(reg)}: {100 * p.record.accuracy:.2f}% at {p.record.size.fc_ratio:.1f}x ({plain(p.name)})"
                for reg, p in board.best_by_reg.items()
            )
        )
    st.plotly_chart(board_figure(board, highlight=mine), key="board_chart")
    if board.points:
        st.subheader("The class's Pareto set")
        st.dataframe(point_table(board, on_front_only=True), hide_index=True)
    st.caption(f"Redrawn every {REFRESH_S:.0f} s.")


def board_code() -> str | None:
    """The class of this session (joined, or taught), else the link's ?class=CODE."""
    linked = link_code(st.query_params)
    if linked is not None:
        return linked
    member, taught = membership(), teacher()
    if member is not None:
        return member.code
    return check_code(taught[0]) if taught is not None else None


def page() -> None:
    st.markdown(LARGE_TYPE, unsafe_allow_html=True)
    try:
        code = board_code()
    except ValueError as error:
        st.error(f"**This link cannot be used.** {plain(error)}")
        return
    if code is None:
        st.title("Class board")
        st.info("No class here yet: join one (or open one) on the Class page, or open ?class=CODE.")
        st.page_link("views/classroom.py", label="Go to Class", icon=":material/groups:")
        return
    st.query_params["class"] = code
    st.fragment(lambda: board_ui(code), run_every=REFRESH_S)()


if __name__ == "__main__":
    page()
