"""A class on one server (core/classroom.py): open, join, submit, the board, the teacher's controls,
and every bad input refused with one line and nothing stored."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from core.classroom import (
    PRESETS,
    Challenge,
    Classroom,
    ClassUnreadable,
    Membership,
    board_figure,
    chart_text,
    check_name,
    link_code,
)
from core.config import CompressConfig, TrainConfig
from core.pipeline import get_or_compress, get_or_train
from core.store import RunStore
from tests.marks import fast_cases

TINY = dict(dataset="digits", model="mlp", hidden=(32, 16), epochs=2, batch_size=64, seed=0)
PLAIN = TrainConfig(**TINY)
BINARY = TrainConfig(**TINY, reg="binary", lam=0.05)
DIGITS = Challenge(title="digits", dataset="digits", model="mlp", max_epochs=5, budget_pts=5.0)


@pytest.fixture
def room(lab_root) -> Classroom:
    """A classroom over this module's copy of the page tests' store (tests/conftest.py)."""
    classroom = Classroom(RunStore(lab_root))
    yield classroom
    # each test gets the store's points and classes of its own
    import shutil

    shutil.rmtree(classroom.root, ignore_errors=True)


def point(cfg: TrainConfig, ccfg: CompressConfig) -> tuple[str, str]:
    return cfg.run_id(), ccfg.key()


PQ = CompressConfig(method="pq", subvector_size=2, n_centroids=8)
KM = CompressConfig(method="kmeans", n_centroids=4)
BIN = CompressConfig(method="binarize")


def class_files(room: Classroom, code: str) -> dict[str, bytes]:
    folder = room.root / code
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


# --------------------------------------------------------------------------------------- the path


def test_open_join_submit_board(room):
    opened = room.open_class(DIGITS)
    assert len(opened.code) == 6 and len(opened.secret) >= 20
    stored = (room.root / opened.code / "class.json").read_text()
    assert opened.secret not in stored  # only its hash is kept
    ana = room.join(opened.code, "Ana")
    bo = room.join(opened.code, "  Bo   Li ")
    assert room.student(bo).name == "Bo Li"
    room.submit(ana, *point(PLAIN, PQ))
    room.submit(ana, *point(PLAIN, PQ))  # twice: once on the board
    room.submit(bo, *point(BINARY, BIN))
    room.submit(bo, *point(BINARY, KM))
    board = room.board(opened.code)
    assert [p.name for p in board.points] == ["Ana", "Bo Li", "Bo Li"]
    assert board.students == 2 and board.submitted == 2
    assert len(board.pareto) == 3 and any(board.pareto)
    assert board.best is not None
    # the best is the largest FC ratio within 5 points of the run's own float accuracy
    within = [p for p in board.points if 100 * (p.record.float_accuracy - p.record.accuracy) <= 5 + 1e-9]
    assert board.best.record.size.fc_ratio == max(p.record.size.fc_ratio for p in within)
    assert set(board.best_by_reg) <= {"none", "binary"}
    mine = board.student_best(room.student(bo).student_id)
    assert mine is not None and mine.name == "Bo Li"


def test_the_pareto_set_is_core_analysis_one(room):
    from core.analysis import pareto_mask

    opened = room.open_class(DIGITS)
    ana = room.join(opened.code, "Ana")
    for cfg in (PLAIN, BINARY):
        for ccfg in (PQ, KM, BIN):
            room.submit(ana, *point(cfg, ccfg))
    board = room.board(opened.code)
    expected = pareto_mask(
        [p.record.size.fc_ratio for p in board.points], [p.record.accuracy for p in board.points], True
    )
    assert list(board.pareto) == expected


def test_accuracy_at_ratio_challenge_picks_the_best_accuracy_above_the_ratio(room):
    challenge = Challenge(title="at 10x", dataset="digits", model="mlp", max_epochs=5, target="accuracy_at_ratio",
                          min_ratio=10.0)  # fmt: skip
    opened = room.open_class(challenge)
    ana = room.join(opened.code, "Ana")
    for cfg in (PLAIN, BINARY):
        for ccfg in (PQ, KM, BIN):
            room.submit(ana, *point(cfg, ccfg))
    board = room.board(opened.code)
    eligible = [p for p in board.points if p.record.size.fc_ratio >= 10]
    assert board.best is not None
    assert board.best.record.accuracy == max(p.record.accuracy for p in eligible)
    for reg, best in board.best_by_reg.items():
        assert best.record.train_config.reg == reg


def test_presets_ask_the_papers_questions():
    assert PRESETS["reg-vs-pq-32x"].min_ratio == 32 and PRESETS["reg-vs-pq-58x"].min_ratio == 58
    assert all(p.target == "accuracy_at_ratio" and p.methods == ("pq",) for k, p in PRESETS.items() if "vs" in k)
    assert PRESETS["ratio-1pt"].budget_pts == 1.0


def test_teacher_controls(room):
    opened = room.open_class(DIGITS)
    ana, bo = room.join(opened.code, "Ana"), room.join(opened.code, "Bo")
    room.submit(ana, *point(PLAIN, PQ))
    room.submit(ana, *point(PLAIN, KM))
    room.submit(bo, *point(BINARY, PQ))
    ana_id = room.student(ana).student_id
    room.remove_point(opened.code, opened.secret, ana_id, *point(PLAIN, KM))
    assert [p.record.key for p in room.board(opened.code).points] == [PQ.key(), PQ.key()]
    exported = list(csv.reader(io.StringIO(room.export_csv(opened.code, opened.secret).decode())))
    assert exported[0][:2] == ["name", "dataset"] and [row[0] for row in exported[1:]] == ["Ana", "Bo"]
    room.remove_student(opened.code, opened.secret, ana_id)
    assert [p.name for p in room.board(opened.code).points] == ["Bo"]
    with pytest.raises(ValueError, match="join again"):
        room.submit(ana, *point(PLAIN, PQ))  # a removed student's session can no longer act
    room.set_challenge(opened.code, opened.secret, PRESETS["reg-vs-pq-32x"])
    assert room.load(opened.code).challenge.min_ratio == 32
    room.set_challenge(opened.code, opened.secret, DIGITS)
    room.close(opened.code, opened.secret)
    with pytest.raises(ValueError, match="closed"):
        room.join(opened.code, "Cy")
    with pytest.raises(ValueError, match="closed"):
        room.submit(bo, *point(BINARY, KM))
    assert len(room.board(opened.code).points) == 1  # the board still shows the final state
    where = room.archive(opened.code, opened.secret)
    assert (where / "class.json").is_file()
    with pytest.raises(ValueError, match="no class"):
        room.load(opened.code)


@pytest.mark.parametrize(
    "operation",
    [
        lambda room, code, secret: room.close(code, secret),
        lambda room, code, secret: room.archive(code, secret),
        lambda room, code, secret: room.set_challenge(code, secret, Challenge()),
        lambda room, code, secret: room.export_csv(code, secret),
        lambda room, code, secret: room.remove_student(code, secret, "0" * 12),
    ],
)
def test_teacher_operations_need_the_secret(room, operation):
    opened = room.open_class(DIGITS)
    before = class_files(room, opened.code)
    for wrong in ("", "guess", opened.secret[:-1], opened.secret + "x"):
        with pytest.raises(ValueError, match="not the teacher secret"):
            operation(room, opened.code, wrong)
    assert class_files(room, opened.code) == before


def test_csv_names_are_never_formulas(room):
    opened = room.open_class(DIGITS)
    member = room.join(opened.code, "-Ann")
    room.submit(member, *point(PLAIN, PQ))
    rows = list(csv.reader(io.StringIO(room.export_csv(opened.code, opened.secret).decode())))
    assert rows[1][0] == "'-Ann"


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, says",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("<b>Ana</b>", "letters, digits"),
        ("[click](http://x.example)", "letters, digits"),
        ("**Ana**", "letters, digits"),
        ("Ana\x00", "control"),
        ("Ana\nBo", "control"),
        ("Ana\u202eoB", "control"),  # a right-to-left override
        ("A" * 33, "at most 32"),
        (None, "type a display name"),
    ],
)
def test_bad_names_are_refused_and_nothing_is_stored(room, name, says):
    opened = room.open_class(DIGITS)
    before = class_files(room, opened.code)
    with pytest.raises(ValueError, match=says) as error:
        room.join(opened.code, name)
    assert "\n" not in str(error.value)
    assert class_files(room, opened.code) == before


@pytest.mark.parametrize("name", ["Ana", "Zoë O'Brien", "Jean-Luc", "李雷", "A" * 32])
def test_names_people_have_are_taken(name):
    assert check_name(name) == name


@pytest.mark.parametrize("duplicate", ["Ana", "ana", " ANA ", "Ａｎａ"])
def test_a_duplicate_name_is_refused(room, duplicate):
    opened = room.open_class(DIGITS)
    room.join(opened.code, "Ana")
    before = class_files(room, opened.code)
    with pytest.raises(ValueError, match="is taken"):
        room.join(opened.code, duplicate)
    assert class_files(room, opened.code) == before


@pytest.mark.parametrize("code", ["ZZZZZZ", "AB", "../../etc", "ABCDE0", "", None])
def test_a_forged_class_code_is_refused(room, code):
    room.open_class(DIGITS)
    with pytest.raises(ValueError, match=r"class code|no class") as error:
        room.join(code, "Ana")
    assert "\n" not in str(error.value)
    assert not any(p.name == str(code).upper() for p in room.root.iterdir())


@pytest.mark.parametrize("param", ["secret", "teacher", "token", "admin"])
def test_a_students_link_carrying_teacher_parameters_is_refused(param):
    with pytest.raises(ValueError, match="teacher parameter"):
        link_code({"class": "K7PQ2M", param: "anything"})
    assert link_code({"class": "k7pq2m"}) == "K7PQ2M"
    assert link_code({}) is None


@pytest.mark.parametrize(
    "run_id, key, says",
    [
        ("0" * 16, "0" * 16, "not in this server's run store"),
        (PLAIN.run_id(), CompressConfig(method="pq", subvector_size=4, n_centroids=2).key(), "not in this server"),
        ("../../x", "y", "not in this server"),
        (PLAIN.run_id(), CompressConfig(method="float").key(), "not in this server"),
    ],
)
def test_a_point_not_in_the_store_is_refused(room, run_id, key, says):
    opened = room.open_class(DIGITS)
    member = room.join(opened.code, "Ana")
    before = class_files(room, opened.code)
    with pytest.raises(ValueError, match=says):
        room.submit(member, run_id, key)
    assert class_files(room, opened.code) == before


def test_a_point_outside_the_challenge_is_refused(room):
    opened = room.open_class(Challenge(title="pq only", dataset="digits", model="mlp", max_epochs=5, methods=("pq",)))
    member = room.join(opened.code, "Ana")
    before = class_files(room, opened.code)
    with pytest.raises(ValueError, match="allows the methods pq"):
        room.submit(member, *point(PLAIN, KM))
    room.set_challenge(opened.code, opened.secret, Challenge(title="1 epoch", dataset="digits", max_epochs=1))
    with pytest.raises(ValueError, match="at most 1 training epochs"):
        room.submit(member, *point(PLAIN, PQ))
    room.set_challenge(opened.code, opened.secret, Challenge(title="mnist"))
    with pytest.raises(ValueError, match="this challenge is on mnist-5k"):
        room.submit(member, *point(PLAIN, PQ))
    assert json.loads(class_files(room, opened.code)["points.json"]) == json.loads(before["points.json"])


def test_a_forged_token_acts_as_nobody(room):
    opened = room.open_class(DIGITS)
    real = room.join(opened.code, "Ana")
    before = class_files(room, opened.code)
    for token in ("", "x" * 32, real.token[:-1]):
        with pytest.raises(ValueError, match="not a student"):
            room.submit(Membership(opened.code, token), *point(PLAIN, PQ))
    assert class_files(room, opened.code) == before


@pytest.mark.parametrize(
    "file, content",
    [
        ("class.json", b"not json"),
        ("class.json", b"[]"),
        ("class.json", json.dumps({"format": "compression-lab-class/1", "code": "X"}).encode()),
        ("students.json", b'{"abc": 1}'),
        ("students.json", json.dumps({"a" * 12: {"name": "<b>x</b>", "token_sha256": "0" * 64, "joined": 1}}).encode()),
        ("points.json", b'[{"student": "nobody", "run_id": "0", "key": "0", "submitted": 0}]'),
        ("points.json", b"[" * 100_000),
        ("points.json", b'{"a": NaN}'),
    ],
)
def test_forged_or_bad_class_files_make_it_unreadable_never_a_crash(room, file, content):
    opened = room.open_class(DIGITS)
    (room.root / opened.code / file).write_bytes(content)
    for action in (
        lambda: room.board(opened.code),
        lambda: room.join(opened.code, "Ana"),
        lambda: room.check_teacher(opened.code, opened.secret),
    ):
        with pytest.raises(ClassUnreadable, match="damaged"):
            action()


def test_a_class_file_that_is_a_symlink_or_fifo_is_unreadable(room, tmp_path):
    import os

    opened = room.open_class(DIGITS)
    target = room.root / opened.code / "points.json"
    target.unlink()
    os.mkfifo(target)
    with pytest.raises(ClassUnreadable):
        room.board(opened.code)
    target.unlink()
    (tmp_path / "elsewhere.json").write_text("[]")
    target.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ClassUnreadable):
        room.board(opened.code)


@pytest.mark.parametrize(
    "changes, says",
    [
        (dict(dataset="nope"), "unknown dataset"),
        (dict(max_epochs=0), "max epochs"),
        (dict(methods=()), "allow at least one method"),
        (dict(methods=("zip",)), "allow at least one method"),
        (dict(budget_pts=float("nan")), "budget"),
        (dict(title=""), "title"),
        (dict(target="fastest"), "unknown target"),
    ],
)
def test_bad_challenges_are_refused(changes, says):
    with pytest.raises(ValueError, match=says):
        Challenge(**changes)


def test_board_text_is_escaped_for_plotly(room):
    assert chart_text("<b>&") == "&lt;b&gt;&amp;"
    opened = room.open_class(Challenge(title="any", dataset="digits", max_epochs=5, budget_pts=100.0))
    member = room.join(opened.code, "Ana")
    room.submit(member, *point(PLAIN, PQ))
    board = room.board(opened.code)
    fig = board_figure(board, highlight=room.student(member).student_id)
    names = [t.name for t in fig.data]
    assert "your best point" in names and "best for the challenge" in names
    assert any(t.text and "Ana" in t.text for t in fig.data)


def test_two_students_joining_at_once_both_land(room):
    from concurrent.futures import ThreadPoolExecutor

    opened = room.open_class(DIGITS)
    names = [f"Student {i}" for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda name: room.join(opened.code, name), names))
    assert sorted(s.name for s in room.load(opened.code).students.values()) == sorted(names)


# ---------------------------------------------------------------------------------------- the pages

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def app_room(room, monkeypatch) -> Classroom:
    monkeypatch.setenv("COMPRESSION_LAB_CACHE", str(room.store.root))
    return room


def open_page(page: str, query: dict | None = None, state: dict | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query or {})
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def texts(elements) -> str:
    return " ".join(str(e.value) for e in elements)


def has_button(at, key: str) -> bool:
    return any(b.key == key for b in at.button)


def test_page_student_joins_from_the_link(app_room):
    opened = app_room.open_class(DIGITS)
    at = open_page("classroom", {"class": opened.code})
    assert at.text_input(key="join_code").value == opened.code
    at.text_input(key="join_name").input("Ana")
    at.button(key="join_button").click().run()
    assert not at.exception and not at.error
    assert "Ana" in texts(at.success) and opened.code in texts(at.success)
    assert [s.name for s in app_room.load(opened.code).students.values()] == ["Ana"]
    assert "class" in at.query_params and "token" not in str(dict(at.query_params))  # the token stays in the session
    at.button(key="leave").click().run()
    assert has_button(at, "join_button")


@fast_cases(1)
@pytest.mark.parametrize("name, says", [("<b>x</b>", "letters, digits"), ("", "empty"), ("Ana", "is taken")])
def test_page_refuses_a_bad_or_taken_name_in_one_line(app_room, name, says):
    opened = app_room.open_class(DIGITS)
    app_room.join(opened.code, "Ana")
    at = open_page("classroom", {"class": opened.code})
    at.text_input(key="join_name").input(name)
    at.button(key="join_button").click().run()
    assert not at.exception
    assert len(at.error) == 1 and says in at.error[0].value and "Not joined" in at.error[0].value
    assert len(app_room.load(opened.code).students) == 1


@fast_cases(1)
@pytest.mark.parametrize(
    "query, says",
    [
        ({"class": "ZZZZ"}, "class code is 6"),
        ({"class": "K7PQ2M", "secret": "x"}, "teacher parameter"),
        ({"class": "K7PQ2M", "teacher": "1"}, "teacher parameter"),
    ],
)
@pytest.mark.parametrize("page", ["classroom", "board"])
def test_pages_refuse_a_forged_link_in_one_line(app_room, query, says, page):
    at = open_page(page, query)
    assert len(at.error) == 1 and says in at.error[0].value
    assert not has_button(at, "open_class") if page == "classroom" else not at.get("plotly_chart")


@pytest.mark.slow
def test_page_joining_an_unknown_class_says_so(app_room):
    at = open_page("classroom")
    at.text_input(key="join_code").input("ZZZZZZ")
    at.text_input(key="join_name").input("Ana")
    at.button(key="join_button").click().run()
    assert "no class ZZZZZZ" in at.error[0].value


def teacher_page(app_room) -> tuple:
    at = open_page("classroom")
    at.selectbox(key="open_preset").set_value("ratio-1pt")
    at.button(key="open_class").click().run()
    assert not at.exception
    (code,) = app_room.codes()
    secret = at.code[0].value  # shown once
    app_room.check_teacher(code, secret)
    return at, code, secret


def test_page_teacher_opens_a_class_and_sees_the_secret_once(app_room):
    at, code, secret = teacher_page(app_room)
    assert "not shown again" in texts(at.warning)
    assert any(f"/classroom?class={code}" in c.value for c in at.code)
    at.run()
    assert all(c.value != secret for c in at.code)  # not shown again
    assert at.button(key="close")  # the controls stay open for this session


@pytest.mark.slow
def test_page_teacher_sets_a_challenge_from_a_preset_and_by_hand(app_room):
    at, code, _ = teacher_page(app_room)
    at.selectbox(key="challenge_preset").set_value("reg-vs-pq-58x").run()
    at.button(key="challenge_button").click().run()
    assert app_room.load(code).challenge == PRESETS["reg-vs-pq-58x"]
    at.selectbox(key="challenge_preset").set_value("current").run()
    at.selectbox(key="ch_dataset_current").set_value("digits")
    at.number_input(key="ch_epochs_current").set_value(5)
    at.multiselect(key="ch_methods_current").set_value([])
    at.button(key="challenge_button").click().run()
    assert "allow at least one method" in at.error[0].value
    assert app_room.load(code).challenge == PRESETS["reg-vs-pq-58x"]  # nothing stored
    at.multiselect(key="ch_methods_current").set_value(["pq", "kmeans"])
    at.button(key="challenge_button").click().run()
    challenge = app_room.load(code).challenge
    assert (challenge.dataset, challenge.max_epochs, challenge.methods) == ("digits", 5, ("kmeans", "pq"))


@pytest.mark.slow
def test_page_teacher_removes_points_and_students_closes_exports_archives(app_room):
    at, code, secret = teacher_page(app_room)
    app_room.set_challenge(code, secret, DIGITS)
    ana, bo = app_room.join(code, "Ana"), app_room.join(code, "Bo")
    app_room.submit(ana, *point(PLAIN, PQ))
    app_room.submit(ana, *point(PLAIN, KM))
    app_room.submit(bo, *point(BINARY, PQ))
    at.run()
    assert "Ana · 2 point(s)" in texts(at.text)
    at.button(key="rm_point_1").click().run()
    assert len(app_room.board(code).points) == 2
    at.button(key=f"rm_student_{app_room.student(bo).student_id}").click().run()
    assert [s.name for s in app_room.load(code).students.values()] == ["Ana"]
    assert at.get("download_button")
    at.button(key="close").click().run()
    assert not app_room.load(code).is_open
    at.button(key="reopen").click().run()
    assert app_room.load(code).is_open
    assert at.button(key="archive").disabled
    at.checkbox(key="archive_sure").check().run()
    at.button(key="archive").click().run()
    assert not at.exception and "archived" in texts(at.info)
    assert app_room.codes() == []


@pytest.mark.slow
def test_page_teacher_signs_in_with_the_secret_only(app_room):
    opened = app_room.open_class(DIGITS)
    at = open_page("classroom")
    at.text_input(key="teacher_code").input(opened.code)
    at.text_input(key="teacher_secret").input("wrong")
    at.button(key="sign_in_button").click().run()
    assert "not the teacher secret" in at.error[0].value and not has_button(at, "close")
    at.text_input(key="teacher_secret").input(opened.secret)
    at.button(key="sign_in_button").click().run()
    assert has_button(at, "close")
    at.button(key="sign_out").click().run()
    assert not has_button(at, "close")


def test_page_compress_sends_a_point_to_the_board(app_room):
    opened = app_room.open_class(DIGITS)
    member = app_room.join(opened.code, "Ana")
    state = {"_class_member": (member.code, member.token)}
    at = open_page("compress", {"run": PLAIN.run_id(), "method": "binarize"}, state)
    at.button(key="send_to_board").click().run()
    assert not at.exception and "Sent to the board" in texts(at.success)
    assert [p.record.key for p in app_room.board(opened.code).points] == [BIN.key()]
    app_room.set_challenge(opened.code, opened.secret, Challenge(title="pq", dataset="digits", methods=("pq",)))
    at.button(key="send_to_board").click().run()
    assert "allows the methods pq" in at.error[0].value


@pytest.mark.slow
def test_page_compress_has_no_board_button_outside_a_class(app_room):
    at = open_page("compress", {"run": PLAIN.run_id(), "method": "binarize"})
    assert not at.exception and not has_button(at, "send_to_board")


def test_page_board_shows_the_class(app_room):
    opened = app_room.open_class(Challenge(title="<b>any</b>", dataset="digits", max_epochs=5, budget_pts=100.0))
    ana, bo = app_room.join(opened.code, "Ana"), app_room.join(opened.code, "Bo")
    app_room.submit(ana, *point(PLAIN, PQ))
    app_room.submit(bo, *point(BINARY, BIN))
    at = open_page("board", state={"_class_member": (ana.code, ana.token)})
    assert opened.code in texts(at.header) and "\\<b\\>" in texts(at.header)  # the title shown as text
    assert [m.value for m in at.metric if m.label == "Submitted"] == ["2 of 2"]
    assert at.get("plotly_chart") and at.dataframe
    at = open_page("board", {"class": opened.code.lower()})
    assert [m.value for m in at.metric if m.label == "Points"] == ["2"]


@pytest.mark.slow
def test_page_board_without_a_class_explains(app_room):
    at = open_page("board")
    assert at.info and not at.error


# -------------------------------------------------------------------------------------- in a browser


@pytest.mark.slow
def test_join_submit_board_in_a_browser(tmp_path):
    """A student joins from the class link, sends the Compress page's point to the board, and the
    board shows it (one session throughout: the sidebar navigates, the link never carries the name)."""
    from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, LONG, metric_value, no_exception, settle, streamlit_app

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    store = RunStore(tmp_path / "store")
    # hidden widths whose every FC layer takes the Compress page's default setting (pq d = 8, k = 256)
    run, _ = get_or_train(store, TrainConfig(dataset="digits", hidden=(256, 256), epochs=1))
    get_or_compress(store, run, CompressConfig())
    opened = Classroom(store).open_class(
        Challenge(title="Browser class", dataset="digits", max_epochs=5, budget_pts=100)
    )
    with streamlit_app(store.root, tmp_path / "streamlit.log") as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(LONG)
            expect = sync_api.expect
            page.goto(f"{url}/classroom?class={opened.code}")
            page.get_by_label("Your display name (shown on the board)").fill("Ana <b>")
            page.get_by_role("button", name="Join").click()
            expect(page.get_by_text("Not joined.", exact=False)).to_be_visible(timeout=LONG)  # markup refused
            page.get_by_label("Your display name (shown on the board)").fill("Ana")
            page.get_by_role("button", name="Join").click()
            expect(page.get_by_text("You are Ana in class", exact=False)).to_be_visible(timeout=LONG)
            nav = page.locator('[data-testid="stSidebarNav"]')
            nav.get_by_text("Compress", exact=True).click()
            page.get_by_role("button", name="Send to the class board").click()
            expect(page.get_by_text("Sent to the board of class", exact=False)).to_be_visible(timeout=LONG)
            settle(page)
            no_exception(page, "compress")
            nav.get_by_text("Class board", exact=True).click()
            expect(page.get_by_text("Browser class", exact=False).first).to_be_visible(timeout=LONG)
            page.locator(".js-plotly-plot").first.wait_for()
            settle(page)
            assert metric_value(page, "Submitted") == "1 of 1"
            assert page.locator(".js-plotly-plot text", has_text="Ana").count() >= 1  # the name beside the point
            assert page.locator(".js-plotly-plot", has_text="your best point").count() == 1
            no_exception(page, "board")
        finally:
            browser.close()
    board = Classroom(store).board(opened.code)
    assert [p.name for p in board.points] == ["Ana"]


# ------------------------------------------------------------------------------- fair turns in the queue


def fair_manager(root: Path, max_waiting: int = 50):
    from core.jobs import JobManager

    return JobManager(root, max_running=1, poll_s=0.02, max_waiting=max_waiting)


def requested(work, key: str, requester: str):
    from dataclasses import replace

    return replace(work.spec(key), requester=requester)


def test_the_queue_takes_students_in_turn(tmp_path):
    """One student pressing Train five times does not delay another's first job: round-robin."""
    import threading

    from tests.test_jobs import Tracker, Work, until

    tracker, hold = Tracker(), threading.Event()
    manager = fair_manager(tmp_path)
    manager.submit(requested(Work(hold=hold, tracker=tracker), "x0", "student:x"))
    until(lambda: manager.status("x0").state.value == "running")
    eager = [Work(tracker=tracker) for _ in range(5)]
    for i, work in enumerate(eager):
        manager.submit(requested(work, f"a{i}", "student:a"))
    manager.submit(requested(Work(tracker=tracker), "b0", "student:b"))
    # each waiting job refreshes its own position as it polls: wait until all have
    until(lambda: [manager.status(k).position for k in ("b0", "a0", "a1", "a2", "a3", "a4")] == [2, 1, 3, 4, 5, 6])
    hold.set()
    for key in ["x0", "b0", *(f"a{i}" for i in range(5))]:
        assert manager.wait(key).finished_ok
    assert tracker.started == ["x0", "a0", "b0", "a1", "a2", "a3", "a4"]
    assert tracker.peak == 1  # still one at a time


def test_a_student_with_a_running_job_waits_behind_anothers_first(tmp_path):
    import threading

    from tests.test_jobs import Tracker, Work, until

    tracker, hold = Tracker(), threading.Event()
    manager = fair_manager(tmp_path)
    manager.submit(requested(Work(hold=hold, tracker=tracker), "a0", "student:a"))
    until(lambda: manager.status("a0").state.value == "running")
    manager.submit(requested(Work(tracker=tracker), "a1", "student:a"))
    manager.submit(requested(Work(tracker=tracker), "b0", "student:b"))
    until(lambda: (manager.status("b0").position, manager.status("a1").position) == (1, 2))  # b's first goes next
    hold.set()
    assert all(manager.wait(k).finished_ok for k in ("a0", "a1", "b0"))
    assert tracker.started == ["a0", "b0", "a1"]


def test_a_cap_on_waiting_jobs_per_student_with_a_clear_line(tmp_path):
    import threading

    from core.jobs import QueueFull
    from tests.test_jobs import Work, until

    hold = threading.Event()
    manager = fair_manager(tmp_path, max_waiting=2)
    manager.submit(requested(Work(hold=hold), "a0", "student:a"))
    until(lambda: manager.status("a0").state.value == "running")
    manager.submit(requested(Work(), "a1", "student:a"))
    manager.submit(requested(Work(), "a2", "student:a"))
    with pytest.raises(QueueFull, match="already have 2 jobs waiting") as error:
        manager.submit(requested(Work(), "a3", "student:a"))
    assert "\n" not in str(error.value) and isinstance(error.value, ValueError)
    assert manager.status("a3") is None and not (tmp_path / "jobs" / "a3.json").exists()  # nothing queued
    # pressing again on a job already waiting attaches to it, and another student is not capped by a's
    assert manager.submit(requested(Work(), "a1", "student:a")).state.value == "queued"
    assert manager.submit(requested(Work(), "b0", "student:b")).state.value == "queued"
    # single flight: b asking for a's key joins a's job (computed once)
    shared = Work()
    assert manager.submit(requested(shared, "a2", "student:b")).requester == "student:a"
    hold.set()
    assert all(manager.wait(k).finished_ok for k in ("a0", "a1", "a2", "b0"))
    assert shared.calls == 0
    manager.submit(requested(Work(), "a3", "student:a"))  # room again once a's jobs ran
    assert manager.wait("a3").finished_ok


def test_a_jobs_requester_is_stored_and_checked():
    from core.jobs import JobSpec, JobState, JobStatus

    status = JobStatus("k", "train", "l", JobState.QUEUED, submitted=1.0, requester="student:a")
    assert JobStatus.from_json(status.to_json()) == status
    with pytest.raises(ValueError, match="requester"):
        JobStatus.from_json(json.dumps({**json.loads(status.to_json()), "requester": 7}))
    assert JobStatus.from_json(json.dumps({k: v for k, v in json.loads(status.to_json()).items() if k != "requester"}))
    with pytest.raises(ValueError, match="requester"):
        JobSpec("k", "train", "l", run=lambda ctx: None, is_done=lambda: False, requester="x" * 101)


@pytest.mark.slow
def test_page_train_says_when_the_students_turn_is_full(app_room, monkeypatch):
    from core.jobs import QueueFull

    def full(*args, **kwargs):
        raise QueueFull("you already have 3 jobs waiting in the queue; wait for one to start")

    monkeypatch.setattr("core.pipeline.submit_training", full)
    at = open_page("train", {"dataset": "digits", "epochs": "3", "hidden": "8"})
    at.button(key="train_button").click().run()
    assert not at.exception and "already have 3 jobs waiting" in at.error[0].value
