"""The compression methods, one file each, in one registry; and `quantize_model`, the one entry of
every one of them.

- float (float.py): nothing is quantized (the reference point).
- binarize (binarize.py): sign(W) * alpha_l, 1 bit a weight plus one float a layer.
- kmeans (kmeans.py): scalar k-means, i.e. PQ with d = 1 and one shared codebook.
- pq (pq.py): product quantization (`shared` or `per-chunk` codebooks).
- rq (rq.py): residual quantization, M stages of pq codebooks that add up.
- coreml, torchao (coreml.py, torchao_codebook.py; lut.py): the peers users would pick instead,
  Apple's coremltools palettization and torchao's codebook quantization, through their own packages
  (requirements-peers.txt); without them, checking a setting says which package is missing.
Applied to an unregularized run, binarize / kmeans / pq are Gong et al. 2014's baselines; applied
to a regularized run, they are the paper's method. The code is the same.

Each method is a `Method` (base.py): the config, the size ledger, the file, the pipeline, the sweep,
the charts and the pages ask it (`cfg.method_spec`, or `METHOD_SPECS[name]`). To add one: write its
file, then add its line below (docs/architecture.md, "Adding a method").
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .base import LayerCost, LayerFormat, Method, MethodOption

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..config import CompressConfig
    from ..pq import QuantizedLayer

# The one registry of methods, in the order they are offered: name -> (its file, its Method there).
# config.METHODS is its names.
_REGISTRY = {
    "float": ("float", "FLOAT"),
    "binarize": ("binarize", "BINARIZE"),
    "kmeans": ("kmeans", "KMEANS"),
    "pq": ("pq", "PQ"),
    "rq": ("rq", "RQ"),
    "coreml": ("coreml", "COREML"),
    "torchao": ("torchao_codebook", "TORCHAO"),
}


class _Methods(Mapping[str, Method]):
    """The registry as a mapping: its names need no import (a config is made and checked, and the
    store listed, without torch); a method's file, which computes with torch, is imported when the
    method is first asked for."""

    def __getitem__(self, name: str) -> Method:
        module, attribute = _REGISTRY[name]
        method = getattr(importlib.import_module(f".{module}", __name__), attribute)
        assert isinstance(method, Method) and method.name == name
        return method

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)


METHOD_SPECS: Mapping[str, Method] = _Methods()


def quantize_model(
    model: nn.Module,
    cfg: CompressConfig,
    weights: Sequence[tuple[str, torch.Tensor]] | None = None,
    calibration: Iterable[torch.Tensor] | None = None,
) -> list[QuantizedLayer]:
    """Quantize `weights` ((state-dict key, tensor); default: the weights `cfg.targets` names, the FC
    layers or the FC and conv layers) of `model` (not modified) as `cfg` says; [] for method float.
    `calibration`: batches of the model's inputs, needed by `cfg.weighting == "activations"` (the
    k-means then minimizes each layer's output error on them). Whether the setting fits the layers
    is checked once, by the caller (`core.pq.check_fits`)."""
    from ..calibration import input_moments
    from ..models import coded_weights

    method = METHOD_SPECS[cfg.method]
    chosen = weights if weights is not None else coded_weights(model, cfg.targets)
    if cfg.per_layer:  # each weight as its own setting says (weighting none: the config checks)
        cfg.check_layer_names([name for name, _ in chosen])
        layers = [quantize_model(model, cfg.for_layer(name), [(name, weight)]) for name, weight in chosen]
        return [layer for part in layers for layer in part]
    moments: dict[str, torch.Tensor] = {}
    if method.uses_calibration and cfg.weighting == "activations":
        if calibration is None:
            raise ValueError("weighting='activations' needs calibration inputs (batches of the model's inputs)")
        moments = input_moments(model, [name for name, _ in chosen], calibration, cfg.subvector_size)
    if cfg.sparsity > 0:  # prune, then code the survivors as one row (core/prune.py)
        return [_pruned(method, name, weight, cfg) for name, weight in chosen]
    coded = (method.quantize(name, weight, cfg, moments.get(name)) for name, weight in chosen)
    return [layer for layer in coded if layer is not None]


def __getattr__(name: str) -> Any:
    if name == "binarize_weight":  # the binarize file computes with torch: imported when asked for
        from .binarize import binarize_weight

        return binarize_weight
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _pruned(method: Method, name: str, weight: torch.Tensor, cfg: CompressConfig) -> QuantizedLayer:
    from ..prune import magnitude_mask

    mask = magnitude_mask(weight, cfg.sparsity)
    survivors = weight.detach().float()[mask].reshape(1, -1)  # (1, n_kept), row-major
    layer = method.quantize(name, survivors, cfg)
    assert layer is not None  # a method that codes no weight has no sparsity (config resets it)
    return dataclasses.replace(layer, shape=tuple(weight.shape), mask=mask)


__all__ = [
    "METHOD_SPECS",
    "LayerCost",
    "LayerFormat",
    "Method",
    "MethodOption",
    "binarize_weight",
    "quantize_model",
]
