"""Magnitude pruning of the coded weights (Han et al. 2015, Deep Compression's first stage): a stage
before any coding method. At sparsity s, the floor(s * n) weights of smallest magnitude of each coded
weight are pruned to exact zeros; the method then codes the survivors only, read row-major as one
sequence (a (1, n_kept) matrix: so only layouts with one codebook a layer combine with pruning), and
the file stores the mask (a bitmap, 1 bit a weight; entropy-coded with `entropy="ans"` when smaller).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def n_kept(n_weights: int, sparsity: float) -> int:
    """Weights a layer of n keeps at this sparsity: n - floor(s * n), and at least one."""
    return max(1, n_weights - math.floor(sparsity * n_weights))


def coded_rows(rows: tuple[int, int], sparsity: float) -> tuple[int, int]:
    """The matrix the method codes: the weight's rows, or with pruning its survivors as one row."""
    if sparsity == 0:
        return rows
    return (1, n_kept(rows[0] * rows[1], sparsity))


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A bool tensor of the weight's shape, True where a weight survives: all but the floor(s * n) of
    smallest |w| (ties broken by position, so the mask is the same on every machine)."""
    import torch  # here: the sizes above are counted without it

    flat = weight.detach().abs().flatten()
    order = torch.argsort(flat, stable=True)
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[order[: flat.numel() - n_kept(flat.numel(), sparsity)]] = False
    return mask.reshape(weight.shape)
