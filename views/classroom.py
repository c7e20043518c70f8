"""Class: a student joins a class with a display name; a teacher opens one, sets the challenge, and
runs it (remove a point or a student, close, archive, export CSV) behind the teacher secret.

A student's link is ?class=CODE and nothing else: the session's token stays in the session, and a
link that carries a teacher parameter is refused. The teacher's secret is typed, never linked.
"""

from __future__ import annotations

import time

import streamlit as st

from core.classroom import PRESETS, TARGETS, Challenge, ClassState, link_code
from core.config import DATASETS, METHODS, MODELS
from ui.classroom import classroom, membership, set_membership, set_teacher, teacher
from ui.common import plain

KEEP = "current"  # the preset box's first choice: edit the current challenge
TARGET_LABELS = {
    "ratio_within_budget": "largest FC ratio within a budget of accuracy points",
    "accuracy_at_ratio": "best accuracy at a minimum FC ratio",
}


def student_ui(linked_code: str | None) -> None:
    st.header("Join a class")
    member = membership()
    if member is not None:
        try:
            me = classroom().student(member)
        except ValueError as error:
            st.warning(plain(error))
            set_membership(None)
        else:
            st.success(f"You are **{plain(me.name)}** in class **{plain(member.code)}**.")
            st.caption(
                "Compress a run on the Compress page and press 'Send to the class board' there. "
                "Your name stays with this browser tab: the link does not carry it."
            )
            st.page_link("views/board.py", label="Open the class board", icon=":material/leaderboard:")
            if st.button("Leave the class", key="leave"):
                set_membership(None)
                st.rerun()
            return
    with st.form("join"):
        code = st.text_input("Class code", value=linked_code or "", max_chars=6, key="join_code")
        name = st.text_input("Your display name (shown on the board)", max_chars=40, key="join_name")
        joined = st.form_submit_button("Join", type="primary", key="join_button")
    if joined:
        try:
            set_membership(classroom().join(code, name))
        except ValueError as error:
            st.error(f"**Not joined.** {plain(error)}")
        else:
            st.rerun()


def challenge_ui(current: Challenge) -> Challenge | None:
    """The challenge form; the new challenge when it is set (None otherwise)."""
    preset = st.selectbox(
        "Start from a preset",
        [KEEP, *PRESETS],
        format_func=lambda k: PRESETS[k].title if k in PRESETS else "(edit the current one)",
        key="challenge_preset",
    )
    base = PRESETS.get(preset, current)
    with st.form(f"challenge_{preset}"):
        title = st.text_input("Title", value=base.title, max_chars=120, key=f"ch_title_{preset}")
        col1, col2, col3 = st.columns(3)
        dataset = col1.selectbox("Dataset", DATASETS, index=DATASETS.index(base.dataset), key=f"ch_dataset_{preset}")
        model = col2.selectbox("Network", MODELS, index=MODELS.index(base.model), key=f"ch_model_{preset}")
        max_epochs = col3.number_input("Max training epochs", 1, 1000, base.max_epochs, key=f"ch_epochs_{preset}")
        methods = st.multiselect("Allowed methods", METHODS, default=list(base.methods), key=f"ch_methods_{preset}")
        target = st.radio(
            "Target",
            TARGETS,
            index=TARGETS.index(base.target),
            format_func=TARGET_LABELS.get,
            horizontal=True,
            key=f"ch_target_{preset}",
        )
        col4, col5 = st.columns(2)
        budget = col4.number_input(
            "Budget (accuracy points below float)", 0.0, 100.0, float(base.budget_pts), 0.5, key=f"ch_budget_{preset}"
        )
        min_ratio = col5.number_input(
            "Minimum FC ratio (x)", 1.0, 10_000.0, float(base.min_ratio), 1.0, key=f"ch_ratio_{preset}"
        )
        submitted = st.form_submit_button("Set the challenge", type="primary", key="challenge_button")
    if not submitted:
        return None
    try:
        return Challenge(
            title=title,
            dataset=dataset,
            model=model,
            max_epochs=int(max_epochs),
            methods=tuple(methods),
            target=target,
            budget_pts=float(budget),
            min_ratio=float(min_ratio),
        )
    except ValueError as error:
        st.error(f"**Challenge not set.** {plain(error)}")
        return None


def teacher_controls_ui(state: ClassState, secret: str) -> None:
    room, code = classroom(), state.code
    st.subheader(f"Class {code} · {'open' if state.is_open else 'closed'}")
    base = st.context.url.split("?")[0].rsplit("/", 1)[0] if st.context.url else ""
    st.markdown("Hand out this link (students need nothing else):")
    st.code(f"{base}/classroom?class={code}", language=None)
    st.caption(f"The board, for the projector: {base}/board?class={code}")
    st.markdown(f"**Challenge:** {plain(state.challenge.title)} — {plain(state.challenge.describe())}")
    new = challenge_ui(state.challenge)
    if new is not None:
        room.set_challenge(code, secret, new)
        st.rerun()

    board = room.board(code)
    st.subheader(f"Students ({len(state.students)}) and their points ({len(board.points)} on the board)")
    for student in state.students.values():
        col1, col2 = st.columns([6, 1])
        count = sum(p.student_id == student.student_id for p in board.points)
        col1.text(f"{student.name} · {count} point(s)")
        if col2.button("Remove", key=f"rm_student_{student.student_id}"):
            room.remove_student(code, secret, student.student_id)
            st.rerun()
    for index, point in enumerate(board.points):
        col1, col2 = st.columns([6, 1])
        row = point.record
        col1.text(f"{point.name}: {row.label()} on {row.train_config.label()} · {100 * row.accuracy:.2f}% · "
                  f"{row.size.fc_ratio:.1f}x")  # fmt: skip
        if col2.button("Remove", key=f"rm_point_{index}"):
            room.remove_point(code, secret, point.student_id, row.run_id, row.key)
            st.rerun()

    st.subheader("The lesson")
    col1, col2, col3 = st.columns(3)
    col1.download_button(
        "Export the results (CSV)",
        room.export_csv(code, secret),
        file_name=f"class-{code}-{time.strftime('%Y%m%d')}.csv",
        mime="text/csv",
        key="export",
        on_click="ignore",
    )
    if state.is_open:
        if col2.button("Close the class", key="close"):
            room.close(code, secret)
            st.rerun()
    elif col2.button("Reopen the class", key="reopen"):
        room.reopen(code, secret)
        st.rerun()
    sure = col3.checkbox("I have exported the results", key="archive_sure")
    if col3.button("Close and archive", key="archive", disabled=not sure):
        where = room.archive(code, secret)
        set_teacher(None)
        st.session_state["_archived"] = f"Class {code} is archived under {where}."
        st.rerun()
    if st.button("Sign out of the teacher's controls", key="sign_out"):
        set_teacher(None)
        st.rerun()


def teacher_ui() -> None:
    st.header("Teach a class")
    if "_archived" in st.session_state:
        st.info(plain(st.session_state.pop("_archived")))
    opened = st.session_state.pop("_opened_secret", None)
    if opened:  # shown once, right after the class opened
        st.warning("The teacher secret of your new class: write it down now, it is not shown again.")
        st.code(opened, language=None)
    held = teacher()
    if held is not None:
        try:
            state = classroom().check_teacher(*held)
        except ValueError as error:
            st.error(plain(error))
            set_teacher(None)
        else:
            try:
                teacher_controls_ui(state, held[1])
            except ValueError as error:  # the class changed under this page (archived in another tab)
                st.error(plain(error))
            return
    col1, col2 = st.columns(2)
    with col1:
        preset = st.selectbox("Challenge", list(PRESETS), format_func=lambda k: PRESETS[k].title, key="open_preset")
        if st.button("Open a new class", type="primary", key="open_class"):
            new = classroom().open_class(PRESETS[preset])
            set_teacher(new.code, new.secret)
            st.session_state["_opened_secret"] = new.secret
            st.rerun()
    with col2:
        with st.form("teacher_sign_in"):
            code = st.text_input("Class code", max_chars=6, key="teacher_code")
            secret = st.text_input("Teacher secret", type="password", key="teacher_secret")
            signed = st.form_submit_button("Open the teacher's controls", key="sign_in_button")
        if signed:
            try:
                state = classroom().check_teacher(code, secret)
            except ValueError as error:
                st.error(f"**Not signed in.** {plain(error)}")
            else:
                set_teacher(state.code, secret)
                st.rerun()


def page() -> None:
    st.title("Class")
    try:
        linked = link_code(st.query_params)
    except ValueError as error:
        st.error(f"**This link cannot be used.** {plain(error)}")
        return
    if linked is not None:
        st.query_params["class"] = linked
    student_tab, teacher_tab = st.tabs(["Student", "Teacher"])
    with student_tab:
        student_ui(linked)
    with teacher_tab:
        teacher_ui()


if __name__ == "__main__":
    page()
