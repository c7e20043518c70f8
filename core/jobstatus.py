"""What a job is and where it stands: the records every process of a store shares.

A job is a key (a content hash: a run id, a run id plus a compression key, a sweep hash), a kind, a
label and two callables (`JobSpec`): `run(ctx)` computes the result and publishes it into the store,
`is_done()` says whether the store already holds it. `JobStatus` is where the job stands; its owner
writes it to the jobs folder as JSON (`to_json`) and every process reads it back through
`JobStatus.from_json`, which checks each field's type and refuses impossible times, so a damaged or
edited file is never a status. A running job sees a `JobContext`: where to report progress, and
whether it should stop.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

# A key becomes file names: plain characters only, so a key can never point outside jobs/.
KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")

# Hosts sharing a store may disagree on the time by this much; a time further ahead is a bad file.
CLOCK_SKEW_S = 300.0

MAX_REQUESTER_CHARS = 100

CANCELLED_MESSAGE = "cancelled on request; submit it again to start over"
INTERRUPTED_MESSAGE = "interrupted (the process running it stopped); submit it again to start over"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands, as every process sees it; `to_json` is its one stored form."""

    key: str  # the job's content hash
    kind: str  # "train" | "compress" | "sweep" (free text, for display and filtering)
    label: str  # human description of the job
    state: JobState
    message: str = ""  # why it failed or was cancelled: one line a user can act on, never a traceback
    done: int = 0  # progress: `done` of `total` units (epochs, configs...)
    total: int = 0  # 0 while the job has not said how much work there is
    text: str = ""  # progress in words, e.g. "epoch 3: step 40/63"
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each reported metric
    position: int | None = None  # place in the queue while queued (1 = next), else None
    submitted: float = 0.0  # time.time() when its owner took it
    started: float | None = None  # when it began to compute (None while queued, or if it never ran)
    finished: float | None = None  # when it reached a terminal state
    pid: int = 0  # the owner's process id
    host: str = ""  # the owner's host name
    requester: str = ""  # who asked for it (JobSpec.requester): the queue takes requesters in turn

    @property
    def terminal(self) -> bool:
        """True once nothing more will happen to this job."""
        return self.state in TERMINAL_STATES

    @property
    def live(self) -> bool:
        """True while queued or running (for a status read from disk: its owner holds the lock)."""
        return not self.terminal

    @property
    def finished_ok(self) -> bool:
        """True when the result is in the store."""
        return self.state is JobState.DONE

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]; 0 while the total is unknown."""
        return min(1.0, max(0.0, self.done / self.total)) if self.total > 0 else 0.0

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "state": self.state.value})

    @classmethod
    def from_json(cls, text: str | bytes, now: float | None = None) -> JobStatus:
        """Parse `to_json`'s output, every field checked for its type; ValueError (one line) otherwise.

        Fields unknown to this version are ignored (a newer writer). A time that is not finite or is
        ahead of `now` (default: the clock) by more than CLOCK_SKEW_S is refused: such a status would
        sort, age and list wrongly forever. Whoever reads a status file reads it through here.
        """
        try:
            data = json.loads(text)
        except (UnicodeDecodeError, RecursionError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON ({one_line(exc)})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        latest = (time.time() if now is None else now) + CLOCK_SKEW_S
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name in _REQUIRED_FIELDS:
                    raise ValueError(f"no {f.name!r}")
                continue
            kwargs[f.name] = _FIELD_PARSERS[f.name](f.name, data[f.name], latest)
        check_key(kwargs["key"])
        return cls(**kwargs)


def _text(name: str, value: Any, latest: float) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name!r} is not text")
    return value


def _count(name: str, value: Any, latest: float) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name!r} is not a whole number >= 0")
    return value


def _position(name: str, value: Any, latest: float) -> int | None:
    return None if value is None else _count(name, value, latest)


def _time(name: str, value: Any, latest: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name!r} is not a finite time")
    if not 0 <= value <= latest:
        raise ValueError(f"{name!r} = {value!r} is not a time between 1970 and now")
    return float(value)


def _time_or_none(name: str, value: Any, latest: float) -> float | None:
    return None if value is None else _time(name, value, latest)


def _state(name: str, value: Any, latest: float) -> JobState:
    if not isinstance(value, str) or value not in JobState.__members__.values():
        raise ValueError(f"{name!r} = {str(value)[:40]!r} is not a job state")
    return JobState(value)


def _metrics(name: str, value: Any, latest: float) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
    ):
        raise ValueError(f"{name!r} is not a mapping of names to numbers")
    return {str(k): float(v) for k, v in value.items()}


_FIELD_PARSERS: dict[str, Callable[[str, Any, float], Any]] = {
    "requester": _text,
    "key": _text,
    "kind": _text,
    "label": _text,
    "state": _state,
    "message": _text,
    "done": _count,
    "total": _count,
    "text": _text,
    "metrics": _metrics,
    "position": _position,
    "submitted": _time,
    "started": _time_or_none,
    "finished": _time_or_none,
    "pid": _count,
    "host": _text,
}
_REQUIRED_FIELDS = frozenset({"key", "kind", "label", "state", "submitted"})


class Cancelled(Exception):
    """Raised inside a job by `ctx.report()` once a cancel was requested for its key."""


class JobContext:
    """What a running job sees: where to report progress, and whether it should stop.

    `JobContext(key)` alone reports nowhere and is never cancelled: a job's `run` can be called
    outside a manager (a notebook, a test, a Ray worker that relays progress its own way).
    """

    def __init__(
        self,
        key: str,
        on_report: Callable[[int, int, str, dict[str, float]], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ):
        self.key = key
        self._on_report = on_report
        self._is_cancelled = is_cancelled

    def report(self, done: int, total: int, text: str = "", **metrics: float) -> None:
        """Record progress (`done` of `total`, a line of text, the latest metrics); raise Cancelled
        when a cancel was requested, so a job that reports often stops promptly."""
        if self._on_report is not None:
            self._on_report(int(done), int(total), str(text), {name: float(v) for name, v in metrics.items()})
        if self.cancelled():
            raise Cancelled(CANCELLED_MESSAGE)

    def cancelled(self) -> bool:
        """True once a cancel was requested (for a job that wants to stop between reports)."""
        return self._is_cancelled is not None and self._is_cancelled()


@dataclass(frozen=True)
class JobSpec:
    key: str  # content hash: a run id, a run id + compression key, or a sweep hash
    kind: str  # "train" | "compress" | "sweep" (free text)
    label: str  # human description
    run: Callable[[JobContext], None]  # computes AND publishes the result; if it raises, it published nothing
    is_done: Callable[[], bool]  # True when the result is already in the store
    # who asked (a student, a browser session; "" for nobody in particular): the queue serves
    # requesters in turn, and caps how many jobs one may have waiting (core/jobrunner.py)
    requester: str = ""

    def __post_init__(self) -> None:
        check_key(self.key)
        if not isinstance(self.requester, str) or len(self.requester) > MAX_REQUESTER_CHARS:
            raise ValueError(f"a job's requester is text of at most {MAX_REQUESTER_CHARS} characters")


def check_key(key: str) -> None:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ValueError(
            f"job key {key!r} is not usable as a file name; use 1 to 200 letters, digits, '_', '-' or '.' "
            "(not starting with '.')"
        )


def one_line(exc: BaseException) -> str:
    """The exception's own message, first line only (a user reads it; tracebacks are for logs)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:500] if lines else type(exc).__name__
