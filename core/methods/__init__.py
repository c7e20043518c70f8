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

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..calibration import input_moments
from ..models import coded_weights
from ..pq import QuantizedLayer
from .base import LayerCost, LayerFormat, Method, MethodOption
from .binarize import BINARIZE, binarize_weight
from .coreml import COREML
from .float import FLOAT
from .kmeans import KMEANS
from .pq import PQ
from .rq import RQ
from .torchao_codebook import TORCHAO

if TYPE_CHECKING:
    from ..config import CompressConfig

# The one registry of methods, in the order they are offered; config.METHODS is its names.
METHOD_SPECS: dict[str, Method] = {method.name: method for method in (FLOAT, BINARIZE, KMEANS, PQ, RQ, COREML, TORCHAO)}


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
    method = METHOD_SPECS[cfg.method]
    chosen = weights if weights is not None else coded_weights(model, cfg.targets)
    moments: dict[str, torch.Tensor] = {}
    if method.uses_calibration and cfg.weighting == "activations":
        if calibration is None:
            raise ValueError("weighting='activations' needs calibration inputs (batches of the model's inputs)")
        moments = input_moments(model, [name for name, _ in chosen], calibration, cfg.subvector_size)
    coded = (method.quantize(name, weight, cfg, moments.get(name)) for name, weight in chosen)
    return [layer for layer in coded if layer is not None]


__all__ = [
    "METHOD_SPECS",
    "LayerCost",
    "LayerFormat",
    "Method",
    "MethodOption",
    "binarize_weight",
    "quantize_model",
]
