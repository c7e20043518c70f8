"""Magnitude pruning of the coded weights (Han et al. 2015, Deep Compression's first stage): a stage
before any coding method. At sparsity s, the floor(s * n) weights of smallest magnitude of each coded
weight are pruned to exact zeros; the method then codes the survivors only, read row-major as one
sequence (a (1, n_kept) matrix: so only layouts with one codebook a layer combine with pruning), and
the file stores the mask (a bitmap, 1 bit a weight; entropy-coded with `entropy="ans"` when smaller).

Gradual pruning during training (Zhu & Gupta 2017, `TrainConfig.prune_sparsity`): `GradualPruner` raises
the sparsity of the regularized layers on the cubic schedule (`TrainConfig.prune_schedule`), re-computing
each mask by magnitude at every pruning step (a pruned weight stays pruned), and keeps it applied: the
masked gradients are zeroed before each optimizer step and the masked weights after it. The run's stored
weights hold the pruned zeros; its compression prunes at least as much (`core.compress.check_pruned_run`),
so the mask it stores is those zeros and the method codes only the survivors.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .config import TrainConfig

# Pruning steps an epoch: the mask is re-computed (a sort of each weight) this often, not at every step.
PRUNE_STEPS_PER_EPOCH = 10


def n_kept(n_weights: int, sparsity: float) -> int:
    """Weights a layer of n keeps at this sparsity: n - floor(s * n), and at least one."""
    return max(1, n_weights - math.floor(sparsity * n_weights))


def coded_rows(rows: tuple[int, int], sparsity: float) -> tuple[int, int]:
    """The matrix the method codes: the weight's rows, or with pruning its survivors as one row."""
    if sparsity == 0:
        return rows
    return (1, n_kept(rows[0] * rows[1], sparsity))


def magnitude_mask(weight: torch.Tensor, sparsity: float, previous: torch.Tensor | None = None) -> torch.Tensor:
    """A bool tensor of the weight's shape, True where a weight survives: all but the floor(s * n) of
    smallest |w| (ties broken by position, so the mask is the same on every machine). With `previous`
    (a mask of no higher sparsity), what it pruned is pruned again first, whatever its value now."""
    import torch  # here: the sizes above are counted without it

    flat = weight.detach().abs().flatten()
    if previous is not None:
        flat = torch.where(previous.flatten(), flat, torch.full_like(flat, -1.0))
    order = torch.argsort(flat, stable=True)
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[order[: flat.numel() - n_kept(flat.numel(), sparsity)]] = False
    return mask.reshape(weight.shape)


def pruning_interval(n_steps: int) -> int:
    """Optimizer steps between two pruning steps in an epoch of `n_steps`."""
    return max(1, n_steps // PRUNE_STEPS_PER_EPOCH)


class GradualPruner:
    """Gradual magnitude pruning of `weights` (a training's regularized layers) on `cfg`'s schedule.

    At a pruning step (`prune_at(t)`, t in epochs), each weight's mask is re-computed by magnitude at the
    schedule's sparsity, and the newly pruned weights are set to zero; between steps `mask_gradients_`
    (before the optimizer's step) and `apply_` (after it: Adam's moments would move a zero) keep it."""

    def __init__(self, cfg: TrainConfig, weights: list[torch.Tensor]):
        self.cfg = cfg
        self.weights = weights
        self.masks: list[torch.Tensor] | None = None
        self.sparsity = 0.0

    def prune_at(self, t: float) -> bool:
        """Prune to the schedule's sparsity at time `t`; True when the masks changed."""
        import torch

        sparsity = self.cfg.prune_schedule(t)
        if sparsity <= self.sparsity:
            return False
        previous: list[torch.Tensor | None] = list(self.masks) if self.masks else [None] * len(self.weights)
        with torch.no_grad():
            self.masks = [magnitude_mask(w, sparsity, prev) for w, prev in zip(self.weights, previous)]
            self.apply_()
        self.sparsity = sparsity
        return True

    def mask_gradients_(self) -> None:
        if self.masks is None:
            return
        for weight, mask in zip(self.weights, self.masks):
            if weight.grad is not None:
                weight.grad.mul_(mask)

    def apply_(self) -> None:
        if self.masks is None:
            return
        import torch

        with torch.no_grad():
            for weight, mask in zip(self.weights, self.masks):
                weight.mul_(mask)

    def masks_by_weight(self) -> dict[int, torch.Tensor]:
        """The masks by id of their weight (for `core.regularizers.Regularizer.set_masks`)."""
        return {} if self.masks is None else {id(w): m for w, m in zip(self.weights, self.masks)}
