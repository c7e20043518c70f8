"""A class on one server: a teacher opens it, students join with a name and submit stored points.

    <store root>/classes/<CODE>/class.json      the challenge, the state, the teacher secret's hash
    <store root>/classes/<CODE>/students.json   {student id: {"name", "token_sha256", "joined"}}
    <store root>/classes/<CODE>/points.json     [{"student", "run_id", "key", "submitted"}]
    <store root>/classes/<CODE>/.lock           flock'ed around every read-modify-write
    <store root>/classes/archive/<CODE>-<time>/ a class the teacher archived (no longer opens)

No accounts. The teacher gets a short class code (to hand out) and a secret (`secrets.token_urlsafe`,
shown once, stored only as its sha256). A student who joins gets a per-session token, kept by the
server as its sha256 beside the student's name: a page holds the token in its session, never in a
link, so editing a link cannot act as another student, and a link that carries teacher parameters is
refused. A point is a (run id, compression key) the run store holds and verifies; the board re-reads
every point from the store each time, so a point whose entry went away or fails its check drops off.

Every file is parsed with its types checked; a file that is not what this module writes (forged,
truncated, edited) makes the class unreadable (`ClassUnreadable`, one line), never a crash. Writes go
through `core.fileio.write_atomic` under the class's lock, so two students joining at once both land.
Every refusal is a ValueError with one sentence that says what to do, raised before anything is stored.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import hmac
import io
import json
import math
import os
import re
import secrets
import stat
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from .analysis import best_within_budget, pareto_mask
from .charts import METHOD_COLORS, NEUTRAL, SIZE_AXES, chart_text, log_ticks, method_color
from .config import DATASETS, MAX_EPOCHS, METHODS, MODELS, REGULARIZERS
from .fileio import write_atomic
from .records import CompressionRecord
from .store import RunStore

CLASS_FORMAT = "compression-lab-class/1"
# No 0/O, 1/I/L: a code read aloud or from a projector is typed right the first time.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 6
CODE_PATTERN = re.compile(f"[{CODE_ALPHABET}]{{{CODE_LENGTH}}}")
MAX_NAME_CHARS = 32
MAX_STUDENTS = 200
MAX_POINTS_PER_STUDENT = 50
MAX_FILE_BYTES = 4 << 20  # a class of 200 students and their points is tens of kB
# Punctuation a person's name uses; anything else (markup, brackets, symbols) is refused.
NAME_PUNCTUATION = frozenset(".-'’ ")
# What a link to a class may carry: the code. Anything a teacher uses is typed, never linked.
TEACHER_PARAMS = ("secret", "teacher", "teacher_secret", "token", "admin")
OPEN, CLOSED = "open", "closed"
TARGETS = ("ratio_within_budget", "accuracy_at_ratio")


class ClassUnreadable(ValueError):
    """A class's files are not what this module writes (forged, edited, truncated)."""


# ------------------------------------------------------------------------------------ challenges


def _check_choice(what: str, value: object, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


@dataclass(frozen=True)
class Challenge:
    """What the class is asked to find, and the limits of a submission."""

    title: str = "Largest FC ratio within 1 point of float"
    dataset: str = "mnist-5k"  # a submission's run must be trained on it
    model: str = "mlp"  # ... with this network
    max_epochs: int = 20  # a submission's run trained at most this many epochs
    methods: tuple[str, ...] = ("binarize", "kmeans", "pq")  # compression methods allowed
    # ratio_within_budget: the largest FC ratio within `budget_pts` of the run's own float accuracy;
    # accuracy_at_ratio: the best accuracy among points of at least `min_ratio` FC compression
    target: str = "ratio_within_budget"
    budget_pts: float = 1.0
    min_ratio: float = 32.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        if not isinstance(self.title, str) or not self.title.strip() or len(self.title) > 120:
            raise ValueError("give the challenge a title of 1 to 120 characters")
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("network", self.model, MODELS)
        if isinstance(self.max_epochs, bool) or not isinstance(self.max_epochs, int):
            raise ValueError("max epochs must be a whole number, e.g. 20")
        if not 1 <= self.max_epochs <= MAX_EPOCHS:
            raise ValueError(f"max epochs must be 1 to {MAX_EPOCHS}, e.g. 20")
        if not self.methods or any(not isinstance(m, str) or m not in METHODS for m in self.methods):
            raise ValueError(f"allow at least one method among: {', '.join(METHODS)}")
        object.__setattr__(self, "methods", tuple(m for m in METHODS if m in self.methods))  # one order, once each
        _check_choice("target", self.target, TARGETS)
        for name, value, low in (("budget", self.budget_pts, 0.0), ("minimum ratio", self.min_ratio, 1.0)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"the {name} must be a number, e.g. 1")
            if not low <= value <= 1e6:
                raise ValueError(f"the {name} must be at least {low:g}")

    def describe(self) -> str:
        """One line for the board: what to find, and the limits."""
        if self.target == "ratio_within_budget":
            aim = f"the largest FC ratio within {self.budget_pts:g} points of the run's float accuracy"
        else:
            aim = f"the best accuracy at an FC ratio of at least {self.min_ratio:g}x"
        return (
            f"{aim}; {self.dataset}, {self.model}, at most {self.max_epochs} epochs, methods: {', '.join(self.methods)}"
        )

    def to_json(self) -> dict:
        return {
            "title": self.title,
            "dataset": self.dataset,
            "model": self.model,
            "max_epochs": self.max_epochs,
            "methods": list(self.methods),
            "target": self.target,
            "budget_pts": self.budget_pts,
            "min_ratio": self.min_ratio,
        }

    @classmethod
    def from_json(cls, data: Any) -> Challenge:
        if not isinstance(data, dict) or set(data) != set(cls().to_json()):
            raise ValueError("not a challenge")
        if not isinstance(data["methods"], list):
            raise ValueError("methods must be a list")
        return cls(**{**data, "methods": tuple(data["methods"])})

    def refusal(self, point: CompressionRecord) -> str | None:
        """Why `point` does not answer this challenge (one sentence), or None when it does."""
        t, c = point.train_config, point.compress_config
        if t.dataset != self.dataset or t.model != self.model:
            return f"this challenge is on {self.dataset} with {self.model}; the point is {t.dataset} with {t.model}"
        if t.epochs > self.max_epochs:
            return f"this challenge allows at most {self.max_epochs} training epochs; the run trained {t.epochs}"
        if c.method not in self.methods:
            return f"this challenge allows the methods {', '.join(self.methods)}; the point uses {c.method}"
        return None


# The paper's own questions, ready to set.
PRESETS: dict[str, Challenge] = {
    "ratio-1pt": Challenge(),
    "reg-vs-pq-32x": Challenge(
        title="Does the regularizer beat plain PQ at 32x?",
        methods=("pq",),
        target="accuracy_at_ratio",
        min_ratio=32.0,
    ),
    "reg-vs-pq-58x": Challenge(
        title="Does the regularizer beat plain PQ at 58x?",
        methods=("pq",),
        target="accuracy_at_ratio",
        min_ratio=58.0,
    ),
}


# ------------------------------------------------------------------------------------ the records


@dataclass(frozen=True)
class Student:
    student_id: str
    name: str
    token_sha256: str = field(repr=False)
    joined: float


@dataclass(frozen=True)
class Submission:
    student_id: str
    run_id: str
    key: str
    submitted: float


@dataclass(frozen=True)
class ClassState:
    """One class as read from its files (types checked)."""

    code: str
    challenge: Challenge
    state: str  # open | closed
    created: float
    secret_sha256: str = field(repr=False)
    students: dict[str, Student]
    submissions: tuple[Submission, ...]

    @property
    def is_open(self) -> bool:
        return self.state == OPEN


@dataclass(frozen=True)
class OpenedClass:
    code: str
    secret: str  # shown once to the teacher; only its hash is stored


@dataclass(frozen=True)
class Membership:
    """What a student's session holds: the class code and the token (never put in a link)."""

    code: str
    token: str


@dataclass(frozen=True)
class BoardPoint:
    name: str
    student_id: str
    record: CompressionRecord
    submitted: float


@dataclass(frozen=True)
class Board:
    """What the class board draws: every settled point, the Pareto set, the best within the budget."""

    code: str
    challenge: Challenge
    state: str
    points: tuple[BoardPoint, ...]
    pareto: tuple[bool, ...]  # one a point (core.experiments.pareto_mask on FC ratio, accuracy)
    best: BoardPoint | None  # the challenge's best point
    best_by_reg: dict[str, BoardPoint]  # the best point of each regularizer (the paper's questions)
    students: int  # students in the class
    submitted: int  # students with at least one point on the board

    def student_best(self, student_id: str) -> BoardPoint | None:
        """The student's best point for the challenge; where none meets it, their most accurate one."""
        mine = [p for p in self.points if p.student_id == student_id]
        best = _best(mine, self.challenge)
        return best if best is not None or not mine else max(mine, key=lambda p: p.record.accuracy)


# ---------------------------------------------------------------------------------------- checks


def check_code(code: object) -> str:
    """The class code, upper-cased; ValueError (one line) when it cannot be one."""
    text = code.strip().upper() if isinstance(code, str) else ""
    if not CODE_PATTERN.fullmatch(text):
        raise ValueError(
            f"a class code is {CODE_LENGTH} letters and digits, e.g. K7PQ2M; check the code you were given"
        )
    return text


def check_name(name: object) -> str:
    """A display name: 1 to MAX_NAME_CHARS letters, digits, spaces and . - ' (spaces collapsed)."""
    if not isinstance(name, str):
        raise ValueError("type a display name")
    text = " ".join(name.split())
    if not text:
        raise ValueError("type a display name (it is empty)")
    if len(text) > MAX_NAME_CHARS:
        raise ValueError(f"a display name has at most {MAX_NAME_CHARS} characters; shorten it")
    for char in name:
        category = unicodedata.category(char)
        if category[0] == "C" or category in ("Zl", "Zp"):
            raise ValueError("a display name cannot hold control or invisible characters; type it again")
    bad = sorted({c for c in text if not (unicodedata.category(c)[0] in "LMN" or c in NAME_PUNCTUATION)})
    if bad:
        shown = " ".join(bad[:5])
        raise ValueError(f"a display name has letters, digits, spaces and . - ' only (not {shown}); type it again")
    return text


def _name_key(name: str) -> str:
    """Names that read the same are the same name: 'Ana', 'ANA', 'Ａｎａ'."""
    return unicodedata.normalize("NFKC", name).casefold()


def link_code(params: Mapping[str, str]) -> str | None:
    """The class code of a student's link (?class=CODE), or None without one. ValueError when the link
    carries a teacher parameter: teacher controls open only with the secret typed on the page."""
    carried = [name for name in TEACHER_PARAMS if name in params]
    if carried:
        raise ValueError(
            f"this link carries a teacher parameter ({', '.join(carried)}); the teacher's controls open only "
            "with the secret typed on the Class page, and a student's link holds only ?class=CODE"
        )
    raw = params.get("class")
    return None if raw is None else check_code(raw)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------------- parsing


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} is not a number")
    return float(value)


def _hex(value: Any, length: int, what: str) -> str:
    if not isinstance(value, str) or len(value) != length or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"{what} is malformed")
    return value


def _parse_class(code: str, data: Any) -> tuple[Challenge, str, float, str]:
    if not isinstance(data, dict) or data.get("format") != CLASS_FORMAT or data.get("code") != code:
        raise ValueError("not a class file")
    state = data.get("state")
    if state not in (OPEN, CLOSED):
        raise ValueError("bad state")
    return (
        Challenge.from_json(data.get("challenge")),
        state,
        _number(data.get("created"), "created"),
        _hex(data.get("secret_sha256"), 64, "secret"),
    )


def _parse_students(data: Any) -> dict[str, Student]:
    if not isinstance(data, dict) or len(data) > MAX_STUDENTS:
        raise ValueError("not a students file")
    students = {}
    for student_id, entry in data.items():
        _hex(student_id, 12, "student id")
        if not isinstance(entry, dict) or set(entry) != {"name", "token_sha256", "joined"}:
            raise ValueError("malformed student")
        name = check_name(entry["name"])
        if name != entry["name"]:
            raise ValueError("malformed name")
        students[student_id] = Student(
            student_id, name, _hex(entry["token_sha256"], 64, "token"), _number(entry["joined"], "joined")
        )
    if len({_name_key(s.name) for s in students.values()}) != len(students):
        raise ValueError("duplicate names")
    return students


def _parse_points(data: Any, students: Mapping[str, Student]) -> tuple[Submission, ...]:
    if not isinstance(data, list) or len(data) > MAX_STUDENTS * MAX_POINTS_PER_STUDENT:
        raise ValueError("not a points file")
    points = []
    for entry in data:
        if not isinstance(entry, dict) or set(entry) != {"student", "run_id", "key", "submitted"}:
            raise ValueError("malformed point")
        if entry["student"] not in students:
            raise ValueError("a point of no student")
        points.append(
            Submission(
                entry["student"],
                _hex(entry["run_id"], 16, "run id"),
                _hex(entry["key"], 16, "key"),
                _number(entry["submitted"], "submitted"),
            )
        )
    return tuple(points)


def _dump(data: Any) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False).encode()


# ------------------------------------------------------------------------------------- the class


class ClassFiles:
    """The files of the classes of one run store (under `<store root>/classes/`): read with their types
    checked, written atomically, each class's read-modify-write under its lock. Knows no rules of a class."""

    def __init__(self, root: Path):
        self.root = root

    def folder(self, code: str) -> Path:
        return self.root / check_code(code)

    def new_folder(self) -> str | None:
        """A fresh class code with its empty folder made, or None when 20 tries found no free code."""
        self.root.mkdir(parents=True, exist_ok=True)
        for _attempt in range(20):
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            try:
                (self.root / code).mkdir()
            except FileExistsError:
                continue
            return code
        return None

    def _read_json(self, path: Path) -> Any:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO does not block the page
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError("not a regular file")
            blob = handle.read(MAX_FILE_BYTES + 1)
        if len(blob) > MAX_FILE_BYTES:
            raise ValueError("too large")
        return json.loads(blob)

    def load(self, code: str) -> ClassState:
        """The class as its files say; ValueError when there is no such class, ClassUnreadable when
        its files are not what this module writes."""
        code = check_code(code)
        folder = self.root / code
        if not (folder / "class.json").is_file() or folder.is_symlink():
            raise ValueError(f"there is no class {code} on this server; check the code the teacher gave you")
        try:
            challenge, state, created, secret_sha = _parse_class(code, self._read_json(folder / "class.json"))
            students = _parse_students(self._read_json(folder / "students.json"))
            submissions = _parse_points(self._read_json(folder / "points.json"), students)
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            raise ClassUnreadable(
                f"class {code}'s files are damaged or were edited, so it cannot be used; "
                "the teacher can open a new class"
            ) from None
        return ClassState(code, challenge, state, created, secret_sha, students, submissions)

    @contextmanager
    def locked(self, code: str) -> Iterator[ClassState]:
        """The class's state read under its lock, for a read-modify-write (`write` before leaving)."""
        folder = self.folder(code)
        self.load(code)  # no such class / unreadable: refused before the lock file is made
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.load(code)
        finally:
            os.close(fd)

    def write(self, state: ClassState) -> None:
        folder = self.root / state.code
        write_atomic(
            folder / "students.json",
            _dump(
                {
                    s.student_id: {"name": s.name, "token_sha256": s.token_sha256, "joined": s.joined}
                    for s in state.students.values()
                }
            ),
        )
        write_atomic(
            folder / "points.json",
            _dump(
                [
                    {"student": p.student_id, "run_id": p.run_id, "key": p.key, "submitted": p.submitted}
                    for p in state.submissions
                ]
            ),
        )
        write_atomic(
            folder / "class.json",
            _dump(
                {
                    "format": CLASS_FORMAT,
                    "code": state.code,
                    "challenge": state.challenge.to_json(),
                    "state": state.state,
                    "created": state.created,
                    "secret_sha256": state.secret_sha256,
                }
            ),
        )

    def codes(self) -> list[str]:
        """The codes of the classes under this store (not verified: `load` verifies)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if CODE_PATTERN.fullmatch(p.name) and p.is_dir())


class Classroom:
    """The classes of one run store: the teacher's and the students' actions and the board, each
    checked against the class's rules before its files (`ClassFiles`) change."""

    def __init__(self, store: RunStore):
        self.store = store
        self.files = ClassFiles(store.root / "classes")
        self.root = self.files.root

    def load(self, code: str) -> ClassState:
        """The class as its files say (`ClassFiles.load`)."""
        return self.files.load(code)

    def codes(self) -> list[str]:
        """The codes of the classes under this store (not verified: `load` verifies)."""
        return self.files.codes()

    # ---------------------------------------------------------------------------- teacher
    def open_class(self, challenge: Challenge | None = None) -> OpenedClass:
        """A new class with a fresh code and teacher secret (the secret is returned once, never stored)."""
        challenge = challenge or Challenge()
        code = self.files.new_folder()
        if code is None:
            raise ValueError("could not find a free class code; archive old classes and try again")
        secret = secrets.token_urlsafe(16)
        self.files.write(ClassState(code, challenge, OPEN, time.time(), _sha(secret), {}, ()))
        return OpenedClass(code, secret)

    def check_teacher(self, code: str, secret: str) -> ClassState:
        """The class when `secret` is its teacher's; ValueError otherwise."""
        state = self.load(code)
        if not isinstance(secret, str) or not hmac.compare_digest(_sha(secret), state.secret_sha256):
            raise ValueError(f"that is not the teacher secret of class {state.code}; type the one shown when it opened")
        return state

    def set_challenge(self, code: str, secret: str, challenge: Challenge) -> None:
        self.check_teacher(code, secret)
        with self.files.locked(code) as state:
            self.files.write(replace(state, challenge=challenge))

    def close(self, code: str, secret: str) -> None:
        """No more joins or submissions; the board shows the final state."""
        self.check_teacher(code, secret)
        with self.files.locked(code) as state:
            self.files.write(replace(state, state=CLOSED))

    def reopen(self, code: str, secret: str) -> None:
        self.check_teacher(code, secret)
        with self.files.locked(code) as state:
            self.files.write(replace(state, state=OPEN))

    def archive(self, code: str, secret: str) -> Path:
        """Close the class and move it to classes/archive/ (its code no longer opens); returns where."""
        state = self.check_teacher(code, secret)
        if state.is_open:
            self.close(code, secret)
        target = self.root / "archive" / f"{state.code}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.root / state.code, target)
        return target

    def remove_student(self, code: str, secret: str, student_id: str) -> None:
        """The student and their points leave the class; their session can no longer submit."""
        self.check_teacher(code, secret)
        with self.files.locked(code) as state:
            if student_id not in state.students:
                raise ValueError("that student is not in the class (already removed?)")
            students = {k: v for k, v in state.students.items() if k != student_id}
            points = tuple(p for p in state.submissions if p.student_id != student_id)
            self.files.write(replace(state, students=students, submissions=points))

    def remove_point(self, code: str, secret: str, student_id: str, run_id: str, key: str) -> None:
        self.check_teacher(code, secret)
        with self.files.locked(code) as state:
            kept = tuple(p for p in state.submissions if (p.student_id, p.run_id, p.key) != (student_id, run_id, key))
            if len(kept) == len(state.submissions):
                raise ValueError("that point is not on the board (already removed?)")
            self.files.write(replace(state, submissions=kept))

    # ---------------------------------------------------------------------------- students
    def join(self, code: str, name: str) -> Membership:
        """Join with a display name; returns the session's membership (its token is never shown)."""
        name = check_name(name)
        code = check_code(code)
        with self.files.locked(code) as state:
            if not state.is_open:
                raise ValueError(f"class {code} is closed; ask the teacher")
            if any(_name_key(s.name) == _name_key(name) for s in state.students.values()):
                raise ValueError(f"the name {name!r} is taken in this class; choose another")
            if len(state.students) >= MAX_STUDENTS:
                raise ValueError(f"class {code} is full ({MAX_STUDENTS} students)")
            token = secrets.token_urlsafe(24)
            student_id = secrets.token_hex(6)
            student = Student(student_id, name, _sha(token), time.time())
            self.files.write(replace(state, students={**state.students, student_id: student}))
        return Membership(code, token)

    def student(self, membership: Membership) -> Student:
        """The student a session's membership names; ValueError when it names none (removed, forged)."""
        state = self.load(membership.code)
        digest = _sha(membership.token) if isinstance(membership.token, str) else ""
        for student in state.students.values():
            if hmac.compare_digest(student.token_sha256, digest):
                return student
        raise ValueError(f"this session is not a student of class {state.code} (removed?); join again")

    def submit(self, membership: Membership, run_id: str, key: str) -> CompressionRecord:
        """Put a stored point on the class board; ValueError (one line, nothing stored) when the point
        is not in the store, fails its check, or does not answer the challenge."""
        student = self.student(membership)
        state = self.load(membership.code)
        if not state.is_open:
            raise ValueError(f"class {state.code} is closed; the board no longer takes points")
        try:
            record = self.store.load_compression_entry(run_id, key)
        except (KeyError, TypeError):
            record = None
        if record is None:
            raise ValueError(
                "that point is not in this server's run store (or fails its check); "
                "compress it on the Compress page first"
            )
        why = state.challenge.refusal(record)
        if why:
            raise ValueError(f"{why}; pick a point that fits the challenge")
        with self.files.locked(membership.code) as state:
            if student.student_id not in state.students:
                raise ValueError("this session was removed from the class; join again")
            mine = [p for p in state.submissions if p.student_id == student.student_id]
            if any((p.run_id, p.key) == (run_id, key) for p in mine):
                return record  # already on the board
            if len(mine) >= MAX_POINTS_PER_STUDENT:
                raise ValueError(
                    f"you have {MAX_POINTS_PER_STUDENT} points on the board; ask the teacher to remove one"
                )
            point = Submission(student.student_id, run_id, key, time.time())
            self.files.write(replace(state, submissions=(*state.submissions, point)))
        self.store.settle_compression(run_id, key)  # a point sent to the board is one the student stayed on
        return record

    # ---------------------------------------------------------------------------- the board
    def board(self, code: str, lookup: Callable[[str, str], CompressionRecord | None] | None = None) -> Board:
        """The class's board. `lookup(run_id, key)` gives a point's verified record (default: the store
        verifies it now; a page passes its cache of verified records, so a redraw re-reads no file)."""
        state = self.load(code)
        find = lookup or self.store.load_compression_entry
        points = []
        for sub in state.submissions:
            record = find(sub.run_id, sub.key)
            if record is not None and state.challenge.refusal(record) is None:
                points.append(BoardPoint(state.students[sub.student_id].name, sub.student_id, record, sub.submitted))
        mask = pareto_mask([p.record.size.fc_ratio for p in points], [p.record.accuracy for p in points], True)
        best_by_reg: dict[str, BoardPoint] = {}
        for reg in REGULARIZERS:
            best = _best([p for p in points if p.record.train_config.reg == reg], state.challenge)
            if best is not None:
                best_by_reg[reg] = best
        return Board(
            state.code,
            state.challenge,
            state.state,
            tuple(points),
            tuple(mask),
            _best(points, state.challenge),
            best_by_reg,
            len(state.students),
            len({p.student_id for p in points}),
        )

    def export_csv(self, code: str, secret: str) -> bytes:
        """The class's points, one row each: the student's name and the point's numbers."""
        self.check_teacher(code, secret)
        board = self.board(code)
        out = io.StringIO()
        writer = csv.writer(out)
        columns = ["dataset", "model", "reg_label", "epochs", "seed", "label", "float_accuracy", "accuracy",
                   "accuracy_drop", "fc_ratio", "model_ratio", "fc_bits", "file_bytes", "run_id", "key"]  # fmt: skip
        writer.writerow(["name", *columns, "pareto", "best", "submitted"])
        for point, on_front in zip(board.points, board.pareto):
            row = point.record.row()
            writer.writerow(
                [
                    _csv_text(point.name),
                    *[row[c] for c in columns],
                    on_front,
                    point is board.best,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(point.submitted)),
                ]
            )
        return out.getvalue().encode()


def _best(points: Sequence[BoardPoint], challenge: Challenge) -> BoardPoint | None:
    """The challenge's best point: the largest FC ratio within the budget (core.experiments'
    best_within_budget, each run from its own float accuracy), or the best accuracy at the ratio."""
    if not points:
        return None
    if challenge.target == "accuracy_at_ratio":
        eligible = [p for p in points if p.record.size.fc_ratio >= challenge.min_ratio]
        if not eligible:
            return None
        return max(eligible, key=lambda p: (p.record.accuracy, p.record.size.fc_ratio, -p.submitted))
    frame = pd.DataFrame([p.record.row() | {"index": i} for i, p in enumerate(points)])
    reference = {p.record.run_id: p.record.float_accuracy for p in points}
    chosen = best_within_budget(frame, [challenge.budget_pts], reference)
    if not bool(chosen["found"].iloc[0]):
        return None
    return points[int(chosen["index"].iloc[0])]


def _csv_text(text: str) -> str:
    """A name a spreadsheet shows as text, not a formula (names are checked, but a CSV outlives rules)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def board_figure(board: Board, highlight: str | None = None, height: int = 700) -> go.Figure:
    """The class's points on one accuracy-size Frontier, each labelled with its student's name; the
    Pareto set joined by a line, the challenge's best ringed, `highlight` (a student id) starred."""
    axis_title, _ = SIZE_AXES["fc_ratio"]
    fig = go.Figure()
    if not board.points:
        fig.add_annotation(text="no points yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    methods = [m for m in METHOD_COLORS if any(p.record.compress_config.method == m for p in board.points)]
    for method in methods:
        part = [p for p in board.points if p.record.compress_config.method == method]
        fig.add_trace(
            go.Scatter(
                x=[p.record.size.fc_ratio for p in part],
                y=[100 * p.record.accuracy for p in part],
                mode="markers+text",
                name=method,
                text=[chart_text(p.name) for p in part],
                textposition="top center",
                textfont=dict(size=18),
                marker=dict(color=method_color(method), size=16),
                customdata=[[chart_text(p.name), p.record.label(), p.record.train_config.label()] for p in part],
                hovertemplate="<b>%{customdata[0]}</b><br>%{customdata[1]} · %{customdata[2]}<br>"
                "accuracy %{y:.2f}% · FC ratio %{x:.1f}x<extra></extra>",
            )
        )
    front = sorted((p for p, on in zip(board.points, board.pareto) if on), key=lambda p: p.record.size.fc_ratio)
    if front:
        fig.add_trace(
            go.Scatter(
                x=[p.record.size.fc_ratio for p in front],
                y=[100 * p.record.accuracy for p in front],
                mode="lines",
                name="Pareto front of the class",
                line=dict(color=NEUTRAL, width=2, dash="dot"),
                hoverinfo="skip",
            )
        )
    if board.best is not None:
        fig.add_trace(
            go.Scatter(
                x=[board.best.record.size.fc_ratio],
                y=[100 * board.best.record.accuracy],
                mode="markers",
                name="best for the challenge",
                marker=dict(size=30, color="rgba(0,0,0,0)", line=dict(width=4, color="#009E73")),
                hoverinfo="skip",
            )
        )
    mine = board.student_best(highlight) if highlight else None
    if mine is not None:
        fig.add_trace(
            go.Scatter(
                x=[mine.record.size.fc_ratio],
                y=[100 * mine.record.accuracy],
                mode="markers",
                name="your best point",
                marker=dict(size=26, symbol="star", color="#CC79A7", line=dict(width=2, color=NEUTRAL)),
                hoverinfo="skip",
            )
        )
    if board.points:
        ratios = [p.record.size.fc_ratio for p in board.points]
        tickvals, ticktext = log_ticks(min(ratios), max(ratios), "x")
        fig.update_xaxes(type="log", tickvals=tickvals, ticktext=ticktext)
    fig.update_xaxes(title_text=axis_title)
    fig.update_yaxes(title_text="test accuracy (%)")
    fig.update_layout(height=height, font=dict(size=20), legend=dict(orientation="h", y=-0.2))
    return fig
