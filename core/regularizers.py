"""Regularizers on the FC weight matrices (conv layers and biases are never regularized).

Total loss = cross-entropy + lam * R(W); see METHOD.md. Every per-layer scale (alpha, var) is
treated as a constant in the gradient (detached), as METHOD.md fixes for alpha.

Each term exists twice: `*_penalty` builds R with autograd (the definition, used by the tests and
the Learn page's toy), and `Regularizer.add_gradient_` adds lam * dR/dW to the weights' gradients
in place with the closed-form derivative, in a few fused passes over each layer. Training uses the
second: it is the same gradient (tested against autograd) at a third of the cost on the CPU.

- binary (the paper, our reading of its binarizing term): a scale-free double well,
  R = sum_l mean_ij (W_ij^2 - alpha_l^2)^2 / alpha_l^4, alpha_l = mean |W_l|.
- levels (ours): toward k scalar levels of each layer (k-means of its weights, refreshed each epoch),
  R = sum_l mean_ij min_j (W_ij - c_j)^2 / var(W_l).
- pq (ours): toward the PQ centroid of each subvector (codebook and assignment refreshed each
  epoch), R = sum_l mean over subvectors ||v - c(v)||^2 / (d * var(W_l)). Padding is not a weight,
  so the mean runs over the real weights of the decoded target.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import CompressConfig, TrainConfig
from .models import fc_layers
from .pq import assign, kmeans, quantize_weight

_EPS = 1e-12


def binary_penalty(weights: list[torch.Tensor]) -> torch.Tensor:
    """The paper's term (our reading): zero exactly when every weight of a layer is +/- alpha_l."""
    total = weights[0].new_zeros(())
    for weight in weights:
        alpha_sq = weight.detach().abs().mean().pow(2).clamp_min(_EPS)
        total = total + ((weight * weight - alpha_sq) ** 2).mean() / alpha_sq**2
    return total


def levels_penalty(weights: list[torch.Tensor], levels: list[torch.Tensor]) -> torch.Tensor:
    """Squared distance of each weight to the nearest of its layer's levels, over the layer variance."""
    total = weights[0].new_zeros(())
    for weight, layer_levels in zip(weights, levels):
        dist = (weight.unsqueeze(-1) - layer_levels) ** 2  # (out, in, k)
        total = total + dist.min(-1).values.mean() / weight.detach().var().clamp_min(_EPS)
    return total


def target_penalty(weights: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Squared distance to fixed per-weight targets over the layer variance (the `pq` term)."""
    total = weights[0].new_zeros(())
    for weight, target in zip(weights, targets):
        total = total + ((weight - target) ** 2).mean() / weight.detach().var().clamp_min(_EPS)
    return total


def _grad(weight: torch.Tensor) -> torch.Tensor:
    """The flat gradient buffer of `weight`, created when backward left none."""
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    return weight.grad.view(-1)


@torch.no_grad()
def binary_gradient_(weights: list[torch.Tensor], lam: float) -> torch.Tensor:
    """Adds lam * d(binary_penalty)/dW to each weight's .grad; returns the penalty (detached).

    d/dw mean((w^2 - a^2)^2) / a^4 = 4 w (w^2 - a^2) / (n a^4), alpha held constant.
    """
    total = weights[0].new_zeros(())
    for weight in weights:
        flat = weight.detach().reshape(-1)
        n = flat.numel()
        gap = flat.abs()  # one buffer for |w|, then w^2 - alpha^2 (abs + sum beats vector_norm(1) 2x)
        alpha_sq = (gap.sum() / n).square().clamp_min(_EPS)
        torch.addcmul(-alpha_sq, flat, flat, out=gap)
        scale = alpha_sq * alpha_sq * n
        total += torch.dot(gap, gap) / scale
        _grad(weight).addcmul_(gap.mul_(4 * lam / scale), flat)
    return total


@torch.no_grad()
def target_gradient_(weights: list[torch.Tensor], targets: list[torch.Tensor], lam: float) -> torch.Tensor:
    """Adds lam * d(target_penalty)/dW to each weight's .grad; returns the penalty (detached).

    d/dw mean((w - t)^2) / var = 2 (w - t) / (n var). The `levels` term is this one with each
    weight's nearest level as its target (the min picks one level; its derivative is that one's).
    """
    total = weights[0].new_zeros(())
    for weight, target in zip(weights, targets):
        flat = weight.detach().reshape(-1)
        n = flat.numel()
        diff = flat - target.reshape(-1)
        scale = flat.var().clamp_min(_EPS) * n
        total += torch.dot(diff, diff) / scale
        _grad(weight).add_(diff.mul_(2 * lam / scale))
    return total


@torch.no_grad()
def nearest_levels(weight: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Each weight replaced by the nearest of `levels` (k,): scalar k-means' own assignment."""
    codes, _ = assign(weight.detach().reshape(1, -1, 1), levels.reshape(1, -1, 1))  # (1, n)
    return levels[codes[0]].view_as(weight)


def fit_levels(weight: torch.Tensor, n_levels: int, seed: int = 0) -> torch.Tensor:
    """k scalar levels of a layer: (out, in) -> (k,), by k-means of its weights."""
    values = weight.detach().float().reshape(1, -1, 1)  # (1, out * in, 1)
    centroids, _ = kmeans(values, n_levels, n_iter=10, seed=seed)
    return centroids.reshape(-1).to(weight.dtype)


def pq_targets(weight: torch.Tensor, subvector_size: int, n_centroids: int, seed: int = 0) -> torch.Tensor:
    """The PQ reconstruction of a layer with a shared codebook: (out, in) -> (out, in)."""
    cfg = CompressConfig(
        method="pq",
        subvector_size=min(subvector_size, weight.shape[1]),
        n_centroids=n_centroids,
        kmeans_iters=10,
        seed=seed,
    )
    return quantize_weight("w", weight, cfg).decode().to(weight.dtype)


class Regularizer:
    """The configured term for one training run: `refresh(model)` at the start of each epoch
    (levels / pq fit their targets there), then `add_gradient_(model, lam)` at each step
    (`penalty(model)` is the same term for autograd)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self._targets: list[torch.Tensor] = []

    @property
    def active(self) -> bool:
        return self.cfg.reg != "none" and self.cfg.lam > 0

    def lam_at(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """lam, ramped linearly from 0 over `warmup_epochs` (epoch counts from 0)."""
        if self.cfg.warmup_epochs == 0:
            return self.cfg.lam
        progress = (epoch + step / steps_per_epoch) / self.cfg.warmup_epochs
        return self.cfg.lam * min(1.0, progress)

    @torch.no_grad()
    def refresh(self, model: nn.Module, epoch: int) -> None:
        weights = [layer.weight for _, layer in fc_layers(model)]
        seed = self.cfg.seed + epoch
        if self.cfg.reg == "levels":
            self._targets = [fit_levels(w, self.cfg.reg_levels, seed) for w in weights]
        elif self.cfg.reg == "pq":
            self._targets = [pq_targets(w, self.cfg.reg_subvector_size, self.cfg.reg_centroids, seed) for w in weights]

    def add_gradient_(self, model: nn.Module, lam: float) -> torch.Tensor:
        """After backward of the task loss: adds lam * dR/dW to the FC weights' gradients in place
        and returns R (detached). The same gradients as backpropagating lam * penalty(model)."""
        weights = [layer.weight for _, layer in fc_layers(model)]
        if self.cfg.reg == "binary":
            return binary_gradient_(weights, lam)
        if self.cfg.reg == "levels":
            targets = [nearest_levels(w, levels) for w, levels in zip(weights, self._targets)]
            return target_gradient_(weights, targets, lam)
        if self.cfg.reg == "pq":
            return target_gradient_(weights, self._targets, lam)
        return weights[0].new_zeros(())

    def penalty(self, model: nn.Module) -> torch.Tensor:
        weights = [layer.weight for _, layer in fc_layers(model)]
        if self.cfg.reg == "binary":
            return binary_penalty(weights)
        if self.cfg.reg == "levels":
            return levels_penalty(weights, self._targets)
        if self.cfg.reg == "pq":
            return target_penalty(weights, self._targets)
        return weights[0].new_zeros(())
