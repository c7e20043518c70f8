"""Training with the regularizer, and evaluation.

`train(cfg)` is pure: it returns a `RunRecord` (weights in memory) and writes nothing; the run store
decides what to keep. Long work reports through `on_epoch(metrics, histograms)` and `on_step(step, n_steps)`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .config import TrainConfig
from .data import Dataset, load_dataset
from .histograms import weight_histograms
from .models import build_model, coded_weights, fc_layers
from .prune import GradualPruner, pruning_interval
from .records import EpochMetrics, LayerHistogram, LayerShape, MemoryWeights, RunRecord
from .regularizers import Regularizer

EVAL_BATCH = 2048

OnEpoch = Callable[[EpochMetrics, tuple[LayerHistogram, ...]], None]  # after each epoch
OnStep = Callable[[int, int], None]  # (step, n_steps) within an epoch


# A cross-entropy this large means logits in the thousands: the run has blown up even if the
# loss is still finite (Adam keeps huge learning rates from reaching inf for a while).
CE_BLOWUP = 1e4


class TrainingDiverged(ValueError):
    """The loss became NaN, infinite or blew up; nothing is stored."""


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for, else CUDA when present, else the CPU. ValueError (one line) when the
    device asked for does not exist here, before any work is done on it."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here; use --device cpu")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif chosen.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported; use cpu, cuda or cuda:N")
    return chosen


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | None = None) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of `model` on (x, y), in batches."""
    device = device or next(model.parameters()).device
    model.eval()
    correct = 0
    for start in range(0, len(x), EVAL_BATCH):
        logits = model(x[start : start + EVAL_BATCH].to(device))
        correct += int((logits.argmax(1).cpu() == y[start : start + EVAL_BATCH]).sum())
    return correct / len(x)


def _check_finite(value: float, epoch: int, what: str, cfg: TrainConfig, limit: float = math.inf) -> None:
    if not math.isfinite(value) or value > limit:
        raise TrainingDiverged(
            f"training diverged in epoch {epoch + 1}: the {what} became {value}; "
            f"lower lam (now {cfg.lam}) or the learning rate (now {cfg.lr}). Nothing was stored."
        )


def train_epoch(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    reg: Regularizer,
    cfg: TrainConfig,
    epoch: int,
    generator: torch.Generator,
    device: torch.device,
    on_step: OnStep | None = None,
    pruner: GradualPruner | None = None,
) -> dict[str, float]:
    """One pass over (x_train, y_train), already on `device`; returns the mean loss, cross-entropy
    and regularizer value. With a `pruner`, its pruning steps fall every `pruning_interval` steps, and
    its masks hold at every step (before the regularizer reads the weights, and after the optimizer)."""
    model.train()
    n_train = len(x_train)
    order = torch.randperm(n_train, generator=generator).to(device)  # CPU generator: same order everywhere
    n_steps = math.ceil(n_train / cfg.batch_size)
    # Sums stay on the device: one sync per epoch, not one per step.
    sum_ce = torch.zeros((), device=device)
    # R and lam * R, summed: Python floats on the CPU (the terms read them back anyway), tensors elsewhere
    sum_reg: float | torch.Tensor = 0.0
    sum_lam_reg: float | torch.Tensor = 0.0
    start = reg.starter(model) if reg.active else None
    report_every = max(1, n_steps // 20)
    prune_every = pruning_interval(n_steps)
    for step in range(n_steps):
        index = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x, y = x_train[index], y_train[index]
        if pruner is not None and step % prune_every == 0 and pruner.prune_at(epoch + step / n_steps):
            reg.set_masks(model, pruner.masks_by_weight())
        if start is not None:
            # the gradients start at lam * dR/dW; backward adds the task's: the gradient of ce + lam * R
            lam = reg.lam_at(epoch, step, n_steps)
            penalty = start(lam)
            sum_reg += penalty
            sum_lam_reg += lam * penalty
        else:
            optimizer.zero_grad(set_to_none=True)
        ce = F.cross_entropy(model(x), y)
        ce.backward()
        if pruner is not None:
            pruner.mask_gradients_()
        optimizer.step()
        if pruner is not None:
            pruner.apply_()
        sum_ce += ce.detach()
        if on_step is not None and (step + 1) % report_every == 0:
            _check_finite(float(sum_ce) + float(sum_lam_reg), epoch, "loss", cfg)
            on_step(step + 1, n_steps)
    ce_sum, reg_sum, lam_reg_sum = float(sum_ce), float(sum_reg), float(sum_lam_reg)
    metrics = {"loss": (ce_sum + lam_reg_sum) / n_steps, "ce": ce_sum / n_steps, "reg": reg_sum / n_steps}
    _check_finite(metrics["loss"], epoch, "loss", cfg)
    _check_finite(metrics["ce"], epoch, "cross-entropy", cfg, limit=CE_BLOWUP)
    return metrics


def train(
    cfg: TrainConfig,
    device: str | torch.device | None = None,
    on_epoch: OnEpoch | None = None,
    on_step: OnStep | None = None,
    data: Dataset | None = None,
) -> RunRecord:
    """Train `cfg` from scratch; raises TrainingDiverged on a NaN / inf loss. The record holds
    the weights in memory; the run store decides what to keep."""
    device = pick_device(device)
    data = data or load_dataset(cfg.dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.input_shape, data.n_classes, cfg.hidden).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    reg = Regularizer.from_config(cfg)
    # gradual pruning acts on the regularizer's layers (FC, plus conv with reg_targets fc+conv)
    pruner = GradualPruner(cfg, [w for _, w in coded_weights(model, cfg.reg_targets)]) if cfg.prune_sparsity else None
    # The whole dataset moves to the device once (at most a few hundred MB here), not per batch.
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test = data.x_test.to(device)
    histograms = [weight_histograms(model)]
    history: list[EpochMetrics] = []
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        epoch_start = time.perf_counter()
        if reg.active:
            reg.refresh(model, epoch)
        sums = train_epoch(model, x_train, y_train, optimizer, reg, cfg, epoch, generator, device, on_step, pruner)
        if pruner is not None and epoch + 1 == cfg.epochs and pruner.prune_at(cfg.epochs):
            # the schedule ends with training: its last step lands after the last optimizer step
            reg.set_masks(model, pruner.masks_by_weight())
        for name, layer in fc_layers(model):
            _check_finite(float(layer.weight.detach().abs().max()), epoch, f"weights of {name}", cfg)
        metrics = EpochMetrics(
            epoch=epoch + 1,
            **sums,
            test_accuracy=evaluate(model, x_test, data.y_test, device),
            lam=reg.lam_at(epoch + 1, 0, 1) if reg.active else 0.0,
            seconds=time.perf_counter() - epoch_start,
        )
        history.append(metrics)
        histograms.append(weight_histograms(model))
        if on_epoch is not None:
            on_epoch(metrics, histograms[-1])
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    return RunRecord(
        run_id=cfg.run_id(),
        config=cfg,
        input_shape=data.input_shape,
        n_classes=data.n_classes,
        layers=tuple(LayerShape(f"{name}.weight", tuple(layer.weight.shape)) for name, layer in fc_layers(model)),
        history=tuple(history),
        histograms=tuple(histograms),
        device=str(device),
        seconds=time.perf_counter() - started,
        weights=MemoryWeights(state),
    )
