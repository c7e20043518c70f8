"""Which cases of a parametrized family run in the fast loop (`python -m pytest -m "not slow"`).

A family of page or file cases checks one rule many times; the fast loop keeps a case or two of it
and the whole suite (and `-m slow`) runs every case. tests/conftest.py applies the marks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Test = TypeVar("Test", bound=Callable)

FAST_CASES = "_fast_cases"


def fast_cases(*keep: int | str) -> Callable[[Test], Test]:
    """Keep these cases of the decorated parametrized test in the fast loop and mark the others slow.

    An int n keeps the first n cases (ordered by their parameter indices, so the choice does not
    depend on the collection order); a string keeps the case with that id, e.g. "compress-run"."""

    def mark(test: Test) -> Test:
        setattr(test, FAST_CASES, keep)
        return test

    return mark
