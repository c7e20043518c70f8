"""Regularizers on the weights a run trains toward codes: its FC weight matrices (the paper), plus its
conv weights with `TrainConfig.reg_targets == "fc+conv"` (biases are never regularized).

Total loss = cross-entropy + lam * R(W); see docs/method.md. Every per-layer scale (alpha, var) is
treated as a constant in the gradient (detached), as docs/method.md fixes for alpha.

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

With gradual pruning (`Regularizer.set_masks`) every term runs over each layer's survivors only: the
pruned zeros are not weights the term pulls (their gradient is 0), nor weights of its scale (alpha, the
variance) or of its mean; levels and pq fit their levels / codebook on the survivors at each epoch's
refresh (pq's subvectors of the survivors read row-major as one sequence, as a pruned compression codes
them), and a weight pruned later in the epoch leaves the targets (its target is 0) at once.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .config import (
    REGULARIZERS,
    TrainConfig,
    check_centroids,
    check_lam,
    check_levels,
    check_seed,
    check_subvector_size,
    check_warmup,
)
from .models import layer_patterns, select_weights
from .pq import QuantizedLayer, as_rows, assign, kmeans, to_groups, to_subvectors

_EPS = 1e-12


def binary_penalty(weights: list[torch.Tensor], masks: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
    """The paper's term (our reading): zero exactly when every weight of a layer is +/- alpha_l. With
    `masks` (gradual pruning), alpha and the mean run over each layer's survivors only: the pruned zeros
    are not weights the term pulls, nor weights that shrink alpha."""
    total = weights[0].new_zeros(())
    for index, weight in enumerate(weights):
        chosen = _survivors(weight, masks, index)
        alpha_sq = chosen.detach().abs().mean().pow(2).clamp_min(_EPS)
        total = total + ((chosen * chosen - alpha_sq) ** 2).mean() / alpha_sq**2
    return total


def _survivors(tensor: torch.Tensor, masks: Sequence[torch.Tensor | None] | None, index: int) -> torch.Tensor:
    """The whole tensor, or with a mask (gradual pruning) its survivors, as a flat vector."""
    mask = masks[index] if masks is not None else None
    return tensor if mask is None else tensor[mask]


def levels_penalty(
    weights: list[torch.Tensor], levels: list[torch.Tensor], masks: Sequence[torch.Tensor | None] | None = None
) -> torch.Tensor:
    """Squared distance of each weight to the nearest of its layer's levels, over the layer variance;
    with `masks`, the mean and the variance over each layer's survivors only (as `binary_penalty`)."""
    total = weights[0].new_zeros(())
    for index, (weight, layer_levels) in enumerate(zip(weights, levels)):
        chosen = _survivors(weight, masks, index)
        dist = (chosen.unsqueeze(-1) - layer_levels) ** 2  # (out, in, k); (n_kept, k) with masks
        total = total + dist.min(-1).values.mean() / chosen.detach().var().clamp_min(_EPS)
    return total


def target_penalty(
    weights: list[torch.Tensor], targets: list[torch.Tensor], masks: Sequence[torch.Tensor | None] | None = None
) -> torch.Tensor:
    """Squared distance to fixed per-weight targets over the layer variance (the `pq` term); with
    `masks`, the mean and the variance over each layer's survivors only."""
    total = weights[0].new_zeros(())
    for index, (weight, target) in enumerate(zip(weights, targets)):
        chosen = _survivors(weight, masks, index)
        diff = chosen - _survivors(target, masks, index)
        total = total + (diff**2).mean() / chosen.detach().var().clamp_min(_EPS)
    return total


def _grad(weight: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """The flat gradient buffer of `weight`, created when there is none (uninitialized when it is
    about to be overwritten)."""
    if weight.grad is None:
        weight.grad = torch.empty_like(weight) if overwrite else torch.zeros_like(weight)
    return weight.grad.view(-1)


class Workspace:
    """One scratch vector per weight, kept from step to step: the closed-form gradients write into it
    instead of allocating a fresh one each step (with the scalars on the host, 0.84x the time of the
    allocating version in a one-off probe on the LeNet-300-100 weights)."""

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []

    def get(self, index: int, like: torch.Tensor) -> torch.Tensor:
        while len(self._buffers) <= index:
            self._buffers.append(like.new_empty(0))
        buffer = self._buffers[index]
        if buffer.numel() != like.numel() or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self._buffers[index] = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
        return buffer


Penalty = float | torch.Tensor  # a Python float on the CPU, a 0-d tensor on a GPU (no sync)


def _host_scalars(tensor: torch.Tensor) -> bool:
    """Whether the per-layer scalars of the terms are read back as Python floats: on the CPU, where
    that is free. Elsewhere they stay on the device (the tests run that path on the CPU too)."""
    return tensor.device.type == "cpu"


def _as_tensor(weights: list[torch.Tensor], value: Penalty) -> torch.Tensor:
    return weights[0].new_tensor(value) if isinstance(value, float) else value


@torch.no_grad()
def binary_gradient_(
    weights: list[torch.Tensor],
    lam: float,
    workspace: Workspace | None = None,
    overwrite: bool = False,
    kept: Sequence[int] | None = None,
) -> torch.Tensor:
    """`binary_step_` with the penalty as a tensor."""
    return _as_tensor(weights, binary_step_(weights, lam, workspace, overwrite, kept))


@torch.no_grad()
def binary_step_(
    weights: list[torch.Tensor],
    lam: float,
    workspace: Workspace | None = None,
    overwrite: bool = False,
    kept: Sequence[int] | None = None,
) -> Penalty:
    """Adds lam * d(binary_penalty)/dW to each weight's .grad (or, with `overwrite`, sets .grad to it,
    for a backward pass to accumulate into); returns the penalty (detached).

    d/dw mean((w^2 - a^2)^2) / a^4 = 4 w (w^2 - a^2) / (n a^4), alpha held constant. Four passes over
    each weight, none allocating: sum |w| (alpha), gap = w^2 - alpha^2, sum gap^2 (the penalty), and
    grad (+)= c * gap * w. On the CPU the per-layer scalars are Python floats (reading one is free
    there, and a `value=` argument fuses the multiply into the last pass); on a GPU they stay on the
    device, where reading one would wait for it at every step.

    `kept` (gradual pruning): the survivors of each weight, whose pruned entries are exact zeros: alpha
    and the mean run over the survivors (as `binary_penalty` with masks). A zero's gradient is 0 here
    (4 w (w^2 - a^2) at w = 0), and its share (0 - a^2)^2 of the sum is taken out of the penalty.
    """
    workspace = workspace or Workspace()
    if _host_scalars(weights[0]):
        total = 0.0
        zero = weights[0].new_zeros((), dtype=weights[0].dtype)
        for index, weight in enumerate(weights):
            flat = weight.detach().reshape(-1)
            n = flat.numel()
            m = kept[index] if kept is not None else n
            gap = workspace.get(index, flat)
            alpha_sq = max((float(torch.abs(flat, out=gap).sum()) / m) ** 2, _EPS)
            torch.addcmul(zero - alpha_sq, flat, flat, out=gap)
            scale = alpha_sq * alpha_sq * m
            total += max(0.0, float(torch.dot(gap, gap)) - (n - m) * alpha_sq * alpha_sq) / scale
            grad = _grad(weight, overwrite)
            torch.addcmul(zero if overwrite else grad, gap, flat, value=4 * lam / scale, out=grad)
        return total
    total_t = weights[0].new_zeros(())
    for index, weight in enumerate(weights):
        flat = weight.detach().reshape(-1)
        n = flat.numel()
        m = kept[index] if kept is not None else n
        gap = workspace.get(index, flat)
        alpha_sq_t = (torch.abs(flat, out=gap).sum() / m).square().clamp_min(_EPS)
        torch.mul(flat, flat, out=gap).sub_(alpha_sq_t)
        scale_t = alpha_sq_t * alpha_sq_t * m
        total_t += (torch.dot(gap, gap) - (n - m) * alpha_sq_t * alpha_sq_t).clamp_min(0) / scale_t
        grad = _grad(weight, overwrite)
        if overwrite:
            torch.mul(gap.mul_(4 * lam / scale_t), flat, out=grad)
        else:
            grad.addcmul_(gap.mul_(4 * lam / scale_t), flat)
    return total_t


@torch.no_grad()
def target_step_(
    weights: list[torch.Tensor],
    targets: list[torch.Tensor],
    lam: float,
    workspace: Workspace | None = None,
    overwrite: bool = False,
    kept: Sequence[int] | None = None,
) -> Penalty:
    """Adds lam * d(target_penalty)/dW to each weight's .grad (or sets .grad to it, with `overwrite`);
    returns the penalty (detached).

    d/dw mean((w - t)^2) / var = 2 (w - t) / (n var). The `levels` term is this one with each
    weight's nearest level as its target (the min picks one level; its derivative is that one's).
    The variance comes from sum w and sum w^2 (two cheap reductions; torch.var's one pass is 5x
    slower here). Scalars as in `binary_gradient_`: Python floats on the CPU, tensors elsewhere.

    `kept` (gradual pruning): the survivors of each weight, whose pruned entries are exact zeros with a
    target of 0 (the caller's to make so): the mean and the variance run over the survivors (n = kept,
    as `target_penalty` with masks); a zero's w - t is 0, so its gradient and its share of R are 0.
    """
    workspace = workspace or Workspace()
    on_cpu = _host_scalars(weights[0])
    total: float | torch.Tensor = 0.0 if on_cpu else weights[0].new_zeros(())
    for index, (weight, target) in enumerate(zip(weights, targets)):
        flat = weight.detach().reshape(-1)
        n = flat.numel() if kept is None else kept[index]  # the zeros add nothing to sum w, sum w^2
        diff = torch.sub(flat, target.reshape(-1), out=workspace.get(index, flat))
        if on_cpu:
            mean = float(flat.sum()) / n
            scale = max((float(torch.dot(flat, flat)) - n * mean * mean) / max(n - 1, 1), _EPS) * n
            total += float(torch.dot(diff, diff)) / scale
            grad = _grad(weight, overwrite)
            if overwrite:
                torch.mul(diff, 2 * lam / scale, out=grad)
            else:
                grad.add_(diff, alpha=2 * lam / scale)
        else:
            if kept is None:
                var_t = flat.var()
            else:  # the survivors' variance, from the sums (the zeros add nothing to them)
                mean_t = flat.sum() / n
                var_t = (torch.dot(flat, flat) - n * mean_t * mean_t) / max(n - 1, 1)
            scale_t = var_t.clamp_min(_EPS) * n
            total += torch.dot(diff, diff) / scale_t
            grad = _grad(weight, overwrite)
            if overwrite:
                torch.mul(diff, 2 * lam / scale_t, out=grad)
            else:
                grad.add_(diff.mul_(2 * lam / scale_t))
    return total


@torch.no_grad()
def nearest_levels(weight: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Each weight replaced by the nearest of `levels` (k,): scalar k-means' own assignment."""
    codes, _ = assign(weight.detach().reshape(1, -1, 1), levels.reshape(1, -1, 1))  # (1, n)
    return levels[codes[0]].view_as(weight)


def fit_levels(weight: torch.Tensor, n_levels: int, seed: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """k scalar levels of a layer: (out, in) -> (k,), by k-means of its weights (with `mask`, of its
    survivors only)."""
    values = weight.detach().float()
    values = (values if mask is None else values[mask]).reshape(1, -1, 1)  # (1, out * in or n_kept, 1)
    centroids, _ = kmeans(values, n_levels, n_iter=10, seed=seed)
    return centroids.reshape(-1).to(weight.dtype)


def pq_targets(
    weight: torch.Tensor, subvector_size: int, n_centroids: int, seed: int = 0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The PQ reconstruction of a weight with one shared codebook, in the weight's own shape (a conv's
    filters as their rows of in * kh * kw values). With `mask` (gradual pruning), of its survivors
    only, read row-major as one sequence (a (1, n_kept) matrix, as a pruned compression codes them),
    and 0 at each pruned place."""
    if mask is None:
        matrix = as_rows(weight.detach().float())  # (out, in * kh * kw)
    else:
        matrix = weight.detach().float()[mask].reshape(1, -1)  # (1, n_kept), row-major
    dim = min(subvector_size, matrix.shape[1])
    grouped = to_groups(to_subvectors(matrix, dim), "shared")  # (1, out * chunks, d)
    centroids, codes = kmeans(grouped, n_centroids, n_iter=10, seed=seed)
    shape = tuple(weight.shape) if mask is None else tuple(matrix.shape)
    decoded = QuantizedLayer("target", shape, dim, "shared", centroids, codes).decode()
    if mask is None:
        return decoded.to(weight.dtype)
    target = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device)
    target[mask] = decoded.reshape(-1).to(weight.dtype)
    return target


class Term:
    """One regularizer: `refresh` once an epoch (fits targets), then at every step either
    `add_gradient_` (closed form, in place) or `penalty` (autograd); both the same term.

    `masks`, `kept`: with gradual pruning, each weight's survivors and their count (`set_masks`): every
    term runs over the survivors only (its scale, its mean, and for levels and pq the fit of its
    targets), and a pruned zero's gradient is 0. None (no pruning): every weight, as before pruning."""

    kept: list[int] | None = None
    masks: list[torch.Tensor] | None = None

    def set_masks(self, masks: list[torch.Tensor]) -> None:
        self.masks = masks
        self.kept = [int(m.sum()) for m in masks]

    def refresh(self, weights: list[torch.Tensor], seed: int) -> None:
        pass

    def _mask(self, index: int) -> torch.Tensor | None:
        return self.masks[index] if self.masks is not None else None

    def step_(self, weights: list[torch.Tensor], lam: float, overwrite: bool = False) -> Penalty:
        """Adds (or, with `overwrite`, writes) lam * dR/dW into the weights' gradients; returns R."""
        raise NotImplementedError

    def add_gradient_(self, weights: list[torch.Tensor], lam: float) -> torch.Tensor:
        return _as_tensor(weights, self.step_(weights, lam))

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class BinaryTerm(Term):
    def __init__(self) -> None:
        self.workspace = Workspace()

    def step_(self, weights: list[torch.Tensor], lam: float, overwrite: bool = False) -> Penalty:
        return binary_step_(weights, lam, self.workspace, overwrite, self.kept)

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        return binary_penalty(weights, self.masks)


class LevelsTerm(Term):
    def __init__(self, n_levels: int):
        self.n_levels = n_levels
        self.levels: list[torch.Tensor] = []
        self.workspace = Workspace()

    def refresh(self, weights: list[torch.Tensor], seed: int) -> None:
        self.levels = [fit_levels(w, self.n_levels, seed, self._mask(i)) for i, w in enumerate(weights)]

    def step_(self, weights: list[torch.Tensor], lam: float, overwrite: bool = False) -> Penalty:
        targets = [nearest_levels(w, levels) for w, levels in zip(weights, self.levels)]
        if self.masks is not None:  # a pruned zero's target is itself: no pull, no share of R
            for target, mask in zip(targets, self.masks):
                target.mul_(mask)
        return target_step_(weights, targets, lam, self.workspace, overwrite, self.kept)

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        return levels_penalty(weights, self.levels, self.masks)


class PQTerm(Term):
    def __init__(self, subvector_size: int, n_centroids: int):
        self.subvector_size, self.n_centroids = subvector_size, n_centroids
        self.targets: list[torch.Tensor] = []
        self.workspace = Workspace()

    def refresh(self, weights: list[torch.Tensor], seed: int) -> None:
        d, k = self.subvector_size, self.n_centroids
        self.targets = [pq_targets(w, d, k, seed, self._mask(i)) for i, w in enumerate(weights)]

    def set_masks(self, masks: list[torch.Tensor]) -> None:
        """The codebook stays the epoch's (fitted at refresh); a weight pruned since leaves its targets."""
        super().set_masks(masks)
        for target, mask in zip(self.targets, masks):
            target.mul_(mask)

    def step_(self, weights: list[torch.Tensor], lam: float, overwrite: bool = False) -> Penalty:
        return target_step_(weights, self.targets, lam, self.workspace, overwrite, self.kept)

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        return target_penalty(weights, self.targets, self.masks)


# The one registry of terms: config.REGULARIZERS names exactly these, plus "none" (no term).
TERMS: dict[str, Callable[[Regularizer], Term]] = {
    "binary": lambda reg: BinaryTerm(),
    "levels": lambda reg: LevelsTerm(reg.levels),
    "pq": lambda reg: PQTerm(reg.subvector_size, reg.n_centroids),
}
if set(TERMS) | {"none"} != set(REGULARIZERS):
    raise ImportError("core.config.REGULARIZERS and core.regularizers.TERMS disagree")


def _whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class Regularizer:
    """A regularizer for any training loop on any nn.Module (the built-in training uses it too).

        reg = Regularizer("binary", lam=0.02, layers=["classifier.*"], warmup_epochs=2)
        for epoch in range(epochs):
            reg.refresh(model, epoch)          # levels / pq fit their targets once an epoch
            for step, (x, y) in enumerate(batches):
                loss = loss_fn(model(x), y)
                loss.backward()
                reg.add_gradient_(model, reg.lam_at(epoch, step, len(batches)))  # the fast path
                optimizer.step(); optimizer.zero_grad()
        # or, with autograd: (loss + reg.lam_at(...) * reg.penalty(model)).backward()
        # or, fastest: start = reg.starter(model) once an epoch, then each step, in place of
        # optimizer.zero_grad(): start(lam); loss_fn(model(x), y).backward(); optimizer.step()

    `kind`: binary (our reading of the paper's term), levels or pq; `layers`: fnmatch globs over
    module names (nn.Linear and nn.Conv2d modules that match); default: every nn.Linear, as the
    paper. A conv weight is regularized as its rows of in * kh * kw values.
    """

    def __init__(
        self,
        kind: str,
        lam: float,
        layers: Sequence[str] | None = None,
        warmup_epochs: int = 0,
        warmup_start: int = 0,
        levels: int = 2,
        subvector_size: int = 8,
        n_centroids: int = 256,
        seed: int = 0,
    ):
        # the checks of TrainConfig's fields (one validation for both), under this class's names
        if kind not in REGULARIZERS:
            raise ValueError(f"unknown regularizer {kind!r}; choose one of: {', '.join(REGULARIZERS)}")
        check_lam(lam)
        check_warmup("warmup_epochs", warmup_epochs)
        check_warmup("warmup_start", warmup_start)
        check_levels(levels, "levels")
        check_subvector_size(subvector_size)
        check_centroids(n_centroids)
        check_seed(seed)
        self.kind: str = kind
        self.lam: float = float(lam)
        self.layers: list[str] | None = layer_patterns(layers)
        self.warmup_epochs: int = warmup_epochs
        self.warmup_start: int = warmup_start
        self.levels: int = levels
        self.seed: int = seed
        self.subvector_size: int = subvector_size
        self.n_centroids: int = n_centroids
        self.term: Term | None = TERMS[kind](self) if kind != "none" and self.lam > 0 else None

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Regularizer:
        """The built-in training's regularizer: the FC layers, or the FC and conv layers."""
        return cls(
            cfg.reg,
            cfg.lam,
            layers=None if cfg.reg_targets == "fc" else ["*"],
            warmup_epochs=cfg.warmup_epochs,
            warmup_start=cfg.warmup_start,
            levels=cfg.reg_levels,
            subvector_size=cfg.reg_subvector_size,
            n_centroids=cfg.reg_centroids,
            seed=cfg.seed,
        )

    @property
    def active(self) -> bool:
        return self.term is not None

    def lam_at(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """lam: 0 before epoch `warmup_start`, then ramped linearly from 0 over `warmup_epochs`
        (epochs count from 0). ValueError for a step outside an epoch of `steps_per_epoch` >= 1 steps."""
        if not _whole(steps_per_epoch) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={steps_per_epoch!r} must be a whole number >= 1 (batches an epoch)")
        if not (_whole(epoch) and _whole(step) and epoch >= 0 and 0 <= step < steps_per_epoch):
            raise ValueError(
                f"epoch={epoch!r}, step={step!r} must be whole numbers, epoch >= 0 and 0 <= step < steps_per_epoch"
            )
        elapsed = epoch + step / steps_per_epoch - self.warmup_start
        if elapsed < 0:
            return 0.0
        if self.warmup_epochs == 0:
            return self.lam
        return self.lam * min(1.0, elapsed / self.warmup_epochs)

    def weights(self, model: nn.Module) -> list[torch.Tensor]:
        """The weights the term acts on (state-dict order), each once: a Parameter shared by two layers
        is one weight (its gradient would otherwise get the term twice)."""
        chosen = list({id(weight): weight for _, weight in select_weights(model, self.layers)}.values())
        if not chosen:
            raise ValueError(f"the layer patterns {self.layers} match no nn.Linear or nn.Conv2d of this model")
        return chosen

    def set_masks(self, model: nn.Module, masks: dict[int, torch.Tensor]) -> None:
        """Gradual pruning: the survivors' masks (by id of the weight; True = kept), read by the term at
        each step until set again. A weight without a mask is whole."""
        if self.term is None:
            return
        weights = self.weights(model)
        chosen = [masks.get(id(weight)) for weight in weights]
        full = [torch.ones_like(w, dtype=torch.bool) if m is None else m for w, m in zip(weights, chosen)]
        self.term.set_masks(full)

    @torch.no_grad()
    def refresh(self, model: nn.Module, epoch: int) -> None:
        if self.term is not None:
            self.term.refresh(self.weights(model), self.seed + epoch)

    def add_gradient_(self, model: nn.Module, lam: float) -> torch.Tensor:
        """After backward of the task loss: adds lam * dR/dW to the weights' gradients in place and
        returns R (detached). The same gradients as backpropagating lam * penalty(model)."""
        weights = self.weights(model)
        return weights[0].new_zeros(()) if self.term is None else self.term.add_gradient_(weights, lam)

    def starter(self, model: nn.Module) -> Callable[[float], Penalty]:
        """For a training loop, in place of zeroing the gradients before each backward: returns
        `start(lam)`, which sets every other parameter's gradient to None and the weights' to
        lam * dR/dW, so that backward accumulates the task gradient on top, and returns R (a float on
        the CPU). The same gradients as `add_gradient_` after backward, and cheaper: the weights are
        read right after the optimizer wrote them, and no gradient is read back. The weights are
        looked up once, here: call it again if the model's modules change."""
        weights = self.weights(model)
        chosen = {id(weight) for weight in weights}
        others = [parameter for parameter in model.parameters() if id(parameter) not in chosen]
        term = self.term

        def start(lam: float) -> Penalty:
            for parameter in others:
                parameter.grad = None
            if term is None:
                for weight in weights:
                    weight.grad = None
                return 0.0
            return term.step_(weights, lam, overwrite=True)

        return start

    def penalty(self, model: nn.Module) -> torch.Tensor:
        weights = self.weights(model)
        return weights[0].new_zeros(()) if self.term is None else self.term.penalty(weights)
