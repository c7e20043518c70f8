"""The networks. Their FC layers (the `nn.Linear` modules) are the compression targets of the paper;
with `targets="fc+conv"` the conv weights are coded too (`coded_weights`). Everything not coded (every
bias, and the conv weights unless they are coded) stays float32 and is counted as such."""

from __future__ import annotations

import fnmatch
import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """LeNet-300-100 on 28x28 inputs (784-300-100-10); hidden widths configurable."""

    def __init__(self, input_shape: tuple[int, int, int], n_classes: int, hidden: tuple[int, ...] = (300, 100)):
        super().__init__()
        widths = [math.prod(input_shape), *hidden, n_classes]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))

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


# The one registry of networks; `core.config.MODELS` (the names) is derived from it. Each builder
# takes (input_shape, n_classes, hidden); only `mlp` uses the hidden widths.
MODEL_BUILDERS: dict[str, Callable[[tuple[int, int, int], int, tuple[int, ...]], nn.Module]] = {
    "mlp": MLP,
    "lenet5": lambda input_shape, n_classes, hidden: LeNet5(input_shape, n_classes),
    "cifar-cnn": lambda input_shape, n_classes, hidden: CifarCNN(input_shape, n_classes),
}


def build_model(
    name: str, input_shape: tuple[int, int, int], n_classes: int, hidden: tuple[int, ...] = (300, 100)
) -> nn.Module:
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[name](input_shape, n_classes, tuple(hidden))


def count_parameters(name: str, input_shape: tuple[int, int, int], n_classes: int, hidden: tuple[int, ...]) -> int:
    """Parameters of a network, counted on the meta device: nothing is allocated, so a config can be
    bounded before any memory is spent on it."""
    with torch.device("meta"):
        model = build_model(name, input_shape, n_classes, hidden)
    return sum(p.numel() for p in model.parameters())


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


def coded_weights(model: nn.Module, targets: str = "fc") -> list[tuple[str, torch.Tensor]]:
    """The weights a built-in compression codes, in forward order, by state-dict key: every
    nn.Linear weight ("fc", the paper), or every nn.Linear and nn.Conv2d weight ("fc+conv")."""
    kinds: tuple[type[nn.Module], ...] = (nn.Linear,) if targets == "fc" else (nn.Linear, nn.Conv2d)
    return [(f"{name}.weight", _weight(module)) for name, module in model.named_modules() if isinstance(module, kinds)]


def layer_patterns(layers: object) -> list[str] | None:
    """`layers` as given to core.compress or core.Regularizer: None (the default), one glob, or a
    sequence of globs; ValueError (one line) for anything else, e.g. 5 or [None]."""
    if layers is None:
        return None
    if isinstance(layers, str):
        return [layers]  # one pattern given bare: not a sequence of one-letter patterns
    if isinstance(layers, Sequence) and all(isinstance(pattern, str) for pattern in layers):
        return list(layers)
    raise ValueError(
        f"layers={layers!r} must be None (every nn.Linear), a module-name glob or a list of them, e.g. ['features.*']"
    )


def select_weights(
    model: nn.Module, patterns: Sequence[str] | None = None, kinds: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
) -> list[tuple[str, torch.Tensor]]:
    """(state-dict key, weight) of the modules of `kinds` whose names match one of `patterns` (fnmatch
    globs over module names, e.g. "features.*", "classifier.0"); no patterns: every nn.Linear."""
    chosen = []
    for name, module in model.named_modules():
        if patterns is None:
            if isinstance(module, nn.Linear):
                chosen.append((weight_key(name), _weight(module)))
        elif isinstance(module, kinds) and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            chosen.append((weight_key(name), _weight(module)))
    return chosen


def weight_key(module_name: str) -> str:
    """The state-dict key of a module's weight: 'weight' for the root module itself (a bare nn.Linear)."""
    return f"{module_name}.weight" if module_name else "weight"


def module_name(weight_key: str) -> str:
    """The module whose weight `weight_key` is: 'features.0.weight' -> 'features.0', 'weight' -> ''."""
    return weight_key.rpartition(".")[0]


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight
