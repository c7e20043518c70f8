"""Training with the regularizer, and evaluation.

`train(cfg)` is pure: it returns a `TrainResult` and writes nothing; the run store decides what
to keep. Long work reports through `on_epoch(epoch, metrics)` and `on_step(step, n_steps)`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .config import TrainConfig
from .data import Dataset, load_dataset
from .models import build_model, fc_layers
from .regularizers import Regularizer

HIST_BINS = 101  # weight-histogram bins per FC layer and epoch (odd: one bin centred on 0)
EVAL_BATCH = 2048

OnEpoch = Callable[[int, dict], None]
OnStep = Callable[[int, int], None]


# A cross-entropy this large means logits in the thousands: the run has blown up even if the
# loss is still finite (Adam keeps huge learning rates from reaching inf for a while).
CE_BLOWUP = 1e4


class TrainingDiverged(ValueError):
    """The loss became NaN, infinite or blew up; nothing is stored."""


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for, else CUDA when present, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


@torch.no_grad()
def histogram(weights: torch.Tensor, name: str, shape: list[int]) -> dict:
    """Histogram of `weights` (any shape) on [-max|W|, max|W|] in HIST_BINS bins, plus alpha: the
    plain data the app draws for one layer."""
    weights = weights.detach().float().cpu().flatten()
    limit = float(weights.abs().max()) or 1.0
    counts = torch.histc(weights, bins=HIST_BINS, min=-limit, max=limit)
    return {
        "layer": name,
        "shape": list(shape),
        "alpha": float(weights.abs().mean()),
        "std": float(weights.std()),
        "limit": limit,
        "counts": [int(c) for c in counts.tolist()],
    }


def weight_histograms(model: nn.Module) -> list[dict]:
    """Per FC layer: `histogram` of its weights."""
    return [histogram(layer.weight, name, list(layer.weight.shape)) for name, layer in fc_layers(model)]


@dataclass
class TrainResult:
    config: TrainConfig
    run_id: str
    state_dict: dict[str, torch.Tensor]  # float32, on the CPU
    input_shape: tuple[int, int, int]
    n_classes: int
    history: list[dict] = field(default_factory=list)  # one dict of metrics per epoch
    histograms: list[list[dict]] = field(default_factory=list)  # index 0: at init; i: after epoch i
    device: str = "cpu"
    seconds: float = 0.0

    @property
    def test_accuracy(self) -> float:
        return self.history[-1]["test_accuracy"]

    def model(self) -> nn.Module:
        """A fresh model with the trained weights (safe to modify)."""
        model = build_model(self.config.model, self.input_shape, self.n_classes, self.config.hidden)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def summary(self) -> dict:
        return {
            "run_id": self.run_id,
            "test_accuracy": self.test_accuracy,
            "epochs": self.history,
            "config": self.config.__dict__ | {"hidden": list(self.config.hidden)},
            "device": self.device,
            "seconds": self.seconds,
        }


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
    epoch: int,
    generator: torch.Generator,
    device: torch.device,
    on_step: OnStep | None = None,
) -> dict:
    """One pass over (x_train, y_train), already on `device`; returns the mean loss, cross-entropy
    and regularizer value."""
    cfg = reg.cfg
    model.train()
    n_train = len(x_train)
    order = torch.randperm(n_train, generator=generator).to(device)  # CPU generator: same order everywhere
    n_steps = math.ceil(n_train / cfg.batch_size)
    # Sums stay on the device: one sync per epoch, not one per step.
    sum_ce = torch.zeros((), device=device)
    sum_reg = torch.zeros((), device=device)
    sum_loss = torch.zeros((), device=device)
    report_every = max(1, n_steps // 20)
    for step in range(n_steps):
        index = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x, y = x_train[index], y_train[index]
        ce = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        ce.backward()
        loss = ce.detach()
        if reg.active:
            # lam * dR/dW joins the task gradient in place: the gradient of ce + lam * R
            lam = reg.lam_at(epoch, step, n_steps)
            penalty = reg.add_gradient_(model, lam)
            loss = loss + lam * penalty
            sum_reg += penalty
        optimizer.step()
        sum_ce += ce.detach()
        sum_loss += loss
        if on_step is not None and (step + 1) % report_every == 0:
            _check_finite(float(sum_loss), epoch, "loss", cfg)
            on_step(step + 1, n_steps)
    metrics = {"loss": float(sum_loss) / n_steps, "ce": float(sum_ce) / n_steps, "reg": float(sum_reg) / n_steps}
    _check_finite(metrics["loss"], epoch, "loss", cfg)
    _check_finite(metrics["ce"], epoch, "cross-entropy", cfg, limit=CE_BLOWUP)
    return metrics


def train(
    cfg: TrainConfig,
    device: str | torch.device | None = None,
    on_epoch: OnEpoch | None = None,
    on_step: OnStep | None = None,
    data: Dataset | None = None,
) -> TrainResult:
    """Train `cfg` from scratch; raises TrainingDiverged on a NaN / inf loss.

    The result carries the canonical config: (reg=binary, lam=0) is recorded as the run it is,
    reg=none."""
    cfg = cfg.canonical()
    device = pick_device(device)
    data = data or load_dataset(cfg.dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.input_shape, data.n_classes, cfg.hidden).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    reg = Regularizer(cfg)
    # The whole dataset moves to the device once (at most a few hundred MB here), not per batch.
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test = data.x_test.to(device)
    result = TrainResult(cfg, cfg.run_id(), {}, data.input_shape, data.n_classes, device=str(device))
    result.histograms.append(weight_histograms(model))
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        epoch_start = time.perf_counter()
        if reg.active:
            reg.refresh(model, epoch)
        metrics = train_epoch(model, x_train, y_train, optimizer, reg, epoch, generator, device, on_step)
        for name, layer in fc_layers(model):
            _check_finite(float(layer.weight.detach().abs().max()), epoch, f"weights of {name}", cfg)
        metrics["test_accuracy"] = evaluate(model, x_test, data.y_test, device)
        metrics["lam"] = reg.lam_at(epoch + 1, 0, 1) if reg.active else 0.0
        metrics["epoch"] = epoch + 1
        metrics["seconds"] = time.perf_counter() - epoch_start
        result.history.append(metrics)
        result.histograms.append(weight_histograms(model))
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics | {"histograms": result.histograms[-1]})
    result.seconds = time.perf_counter() - started
    result.state_dict = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    return result
