"""The networks. Each one's FC layers (its `nn.Linear` modules) are the compression targets;
everything else (conv weights, every bias) stays float32 and is counted as such."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import MODELS


class MLP(nn.Module):
    """LeNet-300-100 on 28x28 inputs (784-300-100-10); hidden widths configurable."""

    def __init__(self, input_shape: tuple[int, int, int], n_classes: int, hidden: tuple[int, ...] = (300, 100)):
        super().__init__()
        widths = [math.prod(input_shape), *hidden, n_classes]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, C, H, W) -> (B, C*H*W)
        for fc in self.fcs[:-1]:
            x = torch.relu(fc(x))
        return self.fcs[-1](x)


class LeNet5(nn.Module):
    """Caffe's LeNet: conv20(5x5)-pool-conv50(5x5)-pool, FC 500, FC 10.

    The convs are unpadded on 28x28 inputs (as in Caffe); on inputs smaller than 16 pixels
    (the 8x8 digits) they are padded so the feature map survives both poolings.
    """

    def __init__(self, input_shape: tuple[int, int, int], n_classes: int):
        super().__init__()
        channels, height, width = input_shape
        pad = 0 if min(height, width) >= 16 else 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 20, 5, padding=pad),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5, padding=pad),
            nn.MaxPool2d(2),
        )
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, *input_shape)).numel()
        self.fc1 = nn.Linear(n_flat, 500)
        self.fc2 = nn.Linear(500, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)  # (B, 50, h, w) -> (B, 50*h*w)
        return self.fc2(torch.relu(self.fc1(x)))


class CifarCNN(nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool (3x3, padded), FC 512, FC 10."""

    def __init__(self, input_shape: tuple[int, int, int], n_classes: int):
        super().__init__()
        channels = input_shape[0]

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(channels, 32), block(32, 64))
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, *input_shape)).numel()
        self.fc1 = nn.Linear(n_flat, 512)
        self.fc2 = nn.Linear(512, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)  # (B, 64, h, w) -> (B, 64*h*w)
        return self.fc2(torch.relu(self.fc1(x)))


def build_model(
    name: str, input_shape: tuple[int, int, int], n_classes: int, hidden: tuple[int, ...] = (300, 100)
) -> nn.Module:
    if name == "mlp":
        return MLP(input_shape, n_classes, hidden)
    if name == "lenet5":
        return LeNet5(input_shape, n_classes)
    if name == "cifar-cnn":
        return CifarCNN(input_shape, n_classes)
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")


def fc_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The compression targets, in forward order: (module name, layer)."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def fc_weight_names(model: nn.Module) -> list[str]:
    """State-dict keys of the FC weight matrices, e.g. ['fcs.0.weight', ...]."""
    return [f"{name}.weight" for name, _ in fc_layers(model)]


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(FC weights, everything else): N_fc and N_rest of the size accounting."""
    fc_names = set(fc_weight_names(model))
    n_fc = n_rest = 0
    for name, tensor in model.state_dict().items():
        if name in fc_names:
            n_fc += tensor.numel()
        else:
            n_rest += tensor.numel()
    return n_fc, n_rest
