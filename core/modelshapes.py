"""The state-dict shapes of the built-in networks (core/models.py), by arithmetic: what a stored
file is checked against without importing torch or building a model. tests/test_export.py holds
them equal to the networks' own state dicts, weight by weight, on every dataset's inputs."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

FC, CONV, OTHER = "fc", "conv", "other"  # what a state-dict entry is: nn.Linear / nn.Conv2d weight, or the rest


@dataclass(frozen=True)
class StateEntry:
    key: str  # state-dict key, e.g. 'fcs.0.weight'
    shape: tuple[int, ...]
    kind: str  # FC, CONV or OTHER (biases)


def _linear(name: str, n_in: int, n_out: int) -> list[StateEntry]:
    return [StateEntry(f"{name}.weight", (n_out, n_in), FC), StateEntry(f"{name}.bias", (n_out,), OTHER)]


def _conv(name: str, c_in: int, c_out: int, kernel: int) -> list[StateEntry]:
    return [
        StateEntry(f"{name}.weight", (c_out, c_in, kernel, kernel), CONV),
        StateEntry(f"{name}.bias", (c_out,), OTHER),
    ]


def _conv_side(side: int, kernel: int, pad: int) -> int:
    out = side + 2 * pad - kernel + 1
    if out < 1:  # as torch refuses it: the kernel is larger than the padded input
        raise ValueError(f"a {kernel}x{kernel} convolution does not fit a side of {side} (padding {pad})")
    return out


def _pool_side(side: int) -> int:
    if side < 2:  # as torch refuses it: a 2x2 max-pool of a side of 1 has no output
        raise ValueError(f"a 2x2 max-pool leaves nothing of a side of {side}")
    return side // 2


def _mlp(input_shape: tuple[int, int, int], n_classes: int, hidden: tuple[int, ...]) -> list[StateEntry]:
    widths = [math.prod(input_shape), *hidden, n_classes]
    return [entry for i, (a, b) in enumerate(itertools.pairwise(widths)) for entry in _linear(f"fcs.{i}", a, b)]


def _lenet5(input_shape: tuple[int, int, int], n_classes: int) -> list[StateEntry]:
    channels, height, width = input_shape
    pad = 0 if min(height, width) >= 16 else 2
    sides = [height, width]
    for _ in range(2):  # conv 5x5, then max-pool 2
        sides = [_pool_side(_conv_side(side, 5, pad)) for side in sides]
    n_flat = 50 * sides[0] * sides[1]
    entries = _conv("features.0", channels, 20, 5) + _conv("features.2", 20, 50, 5)
    return entries + _linear("fc1", n_flat, 500) + _linear("fc2", 500, n_classes)


def _cifar_cnn(input_shape: tuple[int, int, int], n_classes: int) -> list[StateEntry]:
    channels, height, width = input_shape
    sides = [height, width]
    entries: list[StateEntry] = []
    for block, (c_in, c_out) in enumerate([(channels, 32), (32, 64)]):  # conv 3x3, conv 3x3 (padded), pool 2
        entries += _conv(f"features.{block}.0", c_in, c_out, 3) + _conv(f"features.{block}.2", c_out, c_out, 3)
        sides = [_pool_side(_conv_side(_conv_side(side, 3, 1), 3, 1)) for side in sides]
    n_flat = 64 * sides[0] * sides[1]
    return entries + _linear("fc1", n_flat, 512) + _linear("fc2", 512, n_classes)


# by network name, as core.models.MODEL_BUILDERS (each takes input_shape, n_classes, hidden)
SHAPE_BUILDERS: dict[str, Callable[[tuple[int, int, int], int, tuple[int, ...]], list[StateEntry]]] = {
    "mlp": _mlp,
    "lenet5": lambda input_shape, n_classes, hidden: _lenet5(input_shape, n_classes),
    "cifar-cnn": lambda input_shape, n_classes, hidden: _cifar_cnn(input_shape, n_classes),
}


def state_entries(
    model: str, input_shape: tuple[int, int, int], n_classes: int, hidden: tuple[int, ...] = (300, 100)
) -> list[StateEntry]:
    """The state dict of `core.models.build_model(model, input_shape, n_classes, hidden)`, in its
    order, without building it; ValueError (one line) when the network cannot take such inputs."""
    if model not in SHAPE_BUILDERS:
        raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(SHAPE_BUILDERS)}")
    return SHAPE_BUILDERS[model](input_shape, n_classes, tuple(hidden))


def coded_weight_names(entries: list[StateEntry], targets: str = "fc") -> list[str]:
    """The weights a built-in compression codes, in forward order (as `core.models.coded_weights`):
    every FC weight ("fc"), or every FC and conv weight ("fc+conv")."""
    kinds = (FC,) if targets == "fc" else (FC, CONV)
    return [entry.key for entry in entries if entry.kind in kinds]
