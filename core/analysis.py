"""The analysis of compression points: pure functions of the records, below the sweep, the pipeline
and the charts (which import it), and the one home of each rule:

    point_rows                      one row per compression: the frontier's and the budget table's input
    pareto_mask                     the points no other point dominates (ties kept)
    best_within_budget              per budget and group, the most compressed point within the budget
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from .records import CompressionRecord

# Budgets are compared in points (100 * accuracy): 100 * (0.95 - 0.94) is 1.0000000000000009, which
# must count as within a budget of 1 point.
BUDGET_TOLERANCE = 1e-9
NONE_WITHIN_BUDGET = "none within budget"


def point_rows(points: Iterable[CompressionRecord]) -> pd.DataFrame:
    """One row per compression result (its `.row()`): the frontier's and the budget table's input."""
    return pd.DataFrame([point.row() for point in points])


# ---------------------------------------------------------------------------------------- pareto


def pareto_mask(sizes: Sequence[float], accuracies: Sequence[float], larger_is_better: bool) -> list[bool]:
    """True for the points no other point dominates: none is at least as good on both size and accuracy
    and strictly better on one. Exact duplicates are both kept. A point with a NaN is never on the set
    and dominates nothing. `larger_is_better` says how to read the size (a ratio: True; bits: False).

    O(n log n): sorted best size first, a point survives when it has the best accuracy of its size and
    beats every accuracy of the strictly better sizes before it."""
    if len(sizes) != len(accuracies):
        raise ValueError(f"sizes and accuracies differ in length ({len(sizes)} and {len(accuracies)})")
    sign = 1.0 if larger_is_better else -1.0
    # (goodness of size, accuracy, index): larger is better on both axes once the size is signed.
    ranked = [
        (sign * float(size), float(accuracy), index)
        for index, (size, accuracy) in enumerate(zip(sizes, accuracies))
        if not (math.isnan(size) or math.isnan(accuracy))
    ]
    ranked.sort(key=lambda point: (-point[0], -point[1]))
    mask = [False] * len(sizes)
    best_of_better_sizes: float | None = None  # best accuracy among strictly better sizes
    start = 0
    while start < len(ranked):
        size, top_accuracy, _ = ranked[start]  # sorted: the first of a size has its best accuracy
        end = start
        while end < len(ranked) and ranked[end][0] == size:
            _, accuracy, index = ranked[end]
            if accuracy == top_accuracy and (best_of_better_sizes is None or accuracy > best_of_better_sizes):
                mask[index] = True
            end += 1
        if best_of_better_sizes is None or top_accuracy > best_of_better_sizes:
            best_of_better_sizes = top_accuracy
        start = end
    return mask


# ---------------------------------------------------------------------------------------- budget


def best_within_budget(
    points: pd.DataFrame,
    budgets: Sequence[float],
    reference: float | Mapping[str, float],
    size_col: str = "fc_ratio",
    group_col: str | None = None,
) -> pd.DataFrame:
    """For each budget (an accuracy drop in points, i.e. percentage points) and each group, the point
    with the largest `size_col` ratio whose accuracy is at most `budget` points below the reference;
    ties go to the higher accuracy, then to the label, then to the run id (alphabetical).

    `reference` is one accuracy in [0, 1] for every point (e.g. the best float accuracy), or a mapping
    run_id -> accuracy (each run measured from its own float accuracy). `points` needs the columns
    accuracy, `size_col`, label and run_id (and `group_col`); points with a NaN accuracy or size never
    qualify. Groups come in the order they first appear; no group_col means one group of all points.

    One row per (budget, group), budgets in the order given: budget_pts, the group column, the chosen
    point's columns, reference, drop_pts (its drop in points) and found. Where no point is within the
    budget, label is "none within budget", found is False and the point's columns are empty (NaN)."""
    needed = ["accuracy", size_col, "label", "run_id", *([group_col] if group_col else [])]
    missing = [column for column in needed if column not in points.columns]
    if missing:
        raise ValueError(f"the points lack the column(s) {', '.join(missing)}; they need {', '.join(needed)}")
    for budget in budgets:
        if not math.isfinite(budget):
            raise ValueError(f"budget {budget!r} must be a finite number of accuracy points, e.g. 1.0")
    frame = points.reset_index(drop=True)
    if isinstance(reference, Mapping):
        for run_id, accuracy in reference.items():
            _check_accuracy(accuracy, f"reference accuracy of run {run_id}")
        unknown = sorted(set(frame["run_id"]) - set(reference))
        if unknown:
            raise ValueError(f"no reference accuracy for run(s) {', '.join(map(str, unknown))}")
        ref = frame["run_id"].map(reference).astype(float)
    else:
        _check_accuracy(reference, "the reference accuracy")
        ref = pd.Series(float(reference), index=frame.index)
    drop_pts = 100.0 * (ref - frame["accuracy"].astype(float))
    valid = frame["accuracy"].notna() & frame[size_col].notna()
    ranked = frame.assign(reference=ref, drop_pts=drop_pts)[valid].sort_values(
        [size_col, "accuracy", "label", "run_id"], ascending=[False, False, True, True], kind="stable"
    )
    groups = list(dict.fromkeys(frame[group_col])) if group_col else [None]
    added = {"budget_pts", "reference", "drop_pts", "found"}
    point_columns = [column for column in frame.columns if column != group_col and column not in added]
    columns = ["budget_pts", *([group_col] if group_col else []), *point_columns, "reference", "drop_pts", "found"]

    rows = []
    for budget in budgets:
        within = ranked[ranked["drop_pts"] <= budget + BUDGET_TOLERANCE]
        best = within.drop_duplicates(group_col) if group_col else within.head(1)
        chosen = {row[group_col] if group_col else None: row for row in best.to_dict("records")}
        for group in groups:
            row = chosen.get(group)
            if row is None:
                row = dict.fromkeys(point_columns, math.nan) | {
                    "label": NONE_WITHIN_BUDGET,
                    "reference": _group_reference(reference, group_col, group),
                    "drop_pts": math.nan,
                    "found": False,
                }
            else:
                row = row | {"found": True}
            rows.append(row | {"budget_pts": float(budget), **({group_col: group} if group_col else {})})
    return pd.DataFrame(rows, columns=columns)


def _check_accuracy(value: float, what: str) -> None:
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise ValueError(f"{what} is {value!r}; give an accuracy in [0, 1] (0.95, not 95)")


def _group_reference(reference: float | Mapping[str, float], group_col: str | None, group: object) -> float:
    """The reference of a group that has no point within the budget, where there is a single one."""
    if not isinstance(reference, Mapping):
        return float(reference)
    if group_col == "run_id" and isinstance(group, str) and group in reference:
        return float(reference[group])
    return math.nan
