"""What the class pages share: the classroom over the app's store, the session's membership (a
student's token, kept in the session only, never in a link), the teacher's session, and the Compress
page's "send to the class board" button."""

from __future__ import annotations

import secrets

import streamlit as st

from core.classroom import Classroom, Membership
from core.records import CompressionRecord
from ui.common import plain, store

MEMBER_KEY = "_class_member"  # (code, token) of the class this session joined
TEACHER_KEY = "_class_teacher"  # (code, secret) of the class this session teaches


def classroom() -> Classroom:
    return Classroom(store())


def membership() -> Membership | None:
    held = st.session_state.get(MEMBER_KEY)
    return Membership(*held) if held else None


def set_membership(member: Membership | None) -> None:
    if member is None:
        st.session_state.pop(MEMBER_KEY, None)
    else:
        st.session_state[MEMBER_KEY] = (member.code, member.token)


def teacher() -> tuple[str, str] | None:
    held = st.session_state.get(TEACHER_KEY)
    return (held[0], held[1]) if held else None


def set_teacher(code: str | None, secret: str = "") -> None:
    if code is None:
        st.session_state.pop(TEACHER_KEY, None)
    else:
        st.session_state[TEACHER_KEY] = (code, secret)


def job_requester() -> str:
    """Who asks for a job from this session, for the queue's turns: the class's student when the
    session joined one (the same student across their tabs' jobs), else this browser session."""
    member = membership()
    if member is not None:
        try:
            return f"student:{member.code}:{classroom().student(member).student_id}"
        except ValueError:
            pass
    return "session:" + st.session_state.setdefault("_job_requester", secrets.token_hex(8))


def send_to_board_ui(record: CompressionRecord) -> None:
    """A button that puts this point on the board of the class the session joined (nothing without one)."""
    member = membership()
    if member is None:
        return
    if st.button("Send to the class board", key="send_to_board", icon=":material/co_present:"):
        try:
            classroom().submit(member, record.run_id, record.key)
        except ValueError as error:
            st.error(f"**Not sent.** {plain(error)}")
        else:
            st.success(f"Sent to the board of class {plain(member.code)}.")
