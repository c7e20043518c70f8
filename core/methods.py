"""The compression methods, and `quantize_model`, the one entry of every one of them.

- float: nothing is quantized (the reference point).
- binarize: sign(W) * alpha_l, alpha_l = mean |W_l|: 1 bit a weight plus one float a layer.
- kmeans: scalar k-means, i.e. PQ with d = 1 and one shared codebook.
- pq: product quantization (`shared` or `per-chunk` codebooks), in core/pq.py.
Applied to an unregularized run, binarize / kmeans / pq are Gong et al. 2014's baselines; applied
to a regularized run, they are the paper's method. The code is the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from .calibration import input_moments
from .config import METHODS, CompressConfig
from .models import coded_weights
from .pq import QuantizedLayer, quantize_weight


def binarize_weight(name: str, weight: torch.Tensor, centroid_bits: int = 32) -> QuantizedLayer:
    """(out, in) or (out, in, kh, kw) -> sign codes (1, numel) and the codebook [-alpha, +alpha] (1, 2, 1)."""
    weight = weight.detach().float()
    if weight.numel() == 0 or not bool(torch.isfinite(weight).all()):
        raise ValueError(f"weight {name} is empty or holds NaN or infinite values: binarize needs finite weights")
    alpha = weight.abs().mean()
    if centroid_bits == 16:
        alpha = alpha.half().float()
    codes = (weight >= 0).long().reshape(1, -1)  # sign(0) is coded as +1: one bit, no third value
    codebooks = torch.stack([-alpha, alpha]).reshape(1, 2, 1)
    return QuantizedLayer(name, tuple(weight.shape), 1, "sign", codebooks, codes)


_QuantizeOne = Callable[[str, torch.Tensor, CompressConfig], QuantizedLayer]

# The one registry of methods; config.METHODS names exactly these. None: the weight stays float.
METHOD_IMPLEMENTATIONS: dict[str, _QuantizeOne | None] = {
    "float": None,
    "binarize": lambda name, weight, cfg: binarize_weight(name, weight, cfg.centroid_bits),
    "kmeans": quantize_weight,
    "pq": quantize_weight,
}
if tuple(METHOD_IMPLEMENTATIONS) != METHODS:
    raise ImportError("core.config.METHODS and core.methods.METHOD_IMPLEMENTATIONS disagree")


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
    quantize_one = METHOD_IMPLEMENTATIONS[cfg.method]
    if quantize_one is None:
        return []
    chosen = weights if weights is not None else coded_weights(model, cfg.targets)
    if cfg.weighting == "activations" and cfg.method in ("kmeans", "pq"):
        if calibration is None:
            raise ValueError("weighting='activations' needs calibration inputs (batches of the model's inputs)")
        moments = input_moments(model, [name for name, _ in chosen], calibration, cfg.subvector_size)
        return [quantize_weight(name, weight, cfg, moments[name]) for name, weight in chosen]
    return [quantize_one(name, weight, cfg) for name, weight in chosen]
