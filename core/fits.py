"""The geometry PQ cuts a weight into, and whether a setting fits a network's layers: arithmetic on
shapes only, so that checking a setting or a stored file imports no torch (core/pq.py, which
computes, re-exports these names)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .prune import coded_rows

if TYPE_CHECKING:
    from .config import CompressConfig  # config imports the methods, which import this module


def row_shape(shape: tuple[int, ...] | list[int]) -> tuple[int, int]:
    """(out, ...) -> (out, product of the rest): a conv's filters as the rows PQ cuts."""
    return int(shape[0]), int(math.prod(shape[1:]))


def n_chunks(in_features: int, subvector_size: int) -> int:
    return math.ceil(in_features / subvector_size)


class DoesNotFit(ValueError):
    """A compression setting that the network's layers cannot take (d too wide, k too many)."""


def check_fits(fc_shapes: Sequence[tuple[str, tuple[int, ...]]], cfg: CompressConfig) -> None:
    """Raise DoesNotFit when `cfg` does not fit every layer (a conv counts as its rows of in * kh * kw
    values): the method says, and its message names the layer whose limit it states and what would fit.
    A per-layer compression (`cfg.per_layer`) asks each weight's own setting, and refuses a setting
    that names no weight here."""
    if cfg.per_layer:
        cfg.check_layer_names([name for name, _ in fc_shapes])
        for name, shape in fc_shapes:
            check_fits([(name, shape)], cfg.for_layer(name))
        return
    if fc_shapes and cfg.sparsity > 0:  # the method codes each layer's survivors, as one row
        fc_shapes = [(name, coded_rows(row_shape(shape), cfg.sparsity)) for name, shape in fc_shapes]
    if fc_shapes:
        cfg.method_spec.check_fits(list(fc_shapes), cfg)


def check_codebooks_fit(fc_shapes: Sequence[tuple[str, tuple[int, ...]]], dim: int, k: int, layout: str) -> None:
    """DoesNotFit unless subvectors of `dim` fit every layer and, per-chunk, k centroids fit its rows."""
    rows = [(name, row_shape(shape)) for name, shape in fc_shapes]
    narrowest, (_, narrowest_in) = min(rows, key=lambda entry: entry[1][1])
    if dim > narrowest_in:
        raise DoesNotFit(
            f"subvector size d={dim} is wider than layer {narrowest}, which has {narrowest_in} "
            f"inputs; use d <= {narrowest_in}"
        )
    fewest, (fewest_out, _) = min(rows, key=lambda entry: entry[1][0])
    if layout == "per-chunk" and k > fewest_out:
        raise DoesNotFit(
            f"the per-chunk layout learns each codebook from the rows of a layer, and layer {fewest} has "
            f"{fewest_out} rows, so k={k} is too many; use k <= {fewest_out} or the shared layout"
        )
