"""Gong et al. 2014's baselines, on the same code paths as PQ.

- binarize: sign(W) * alpha_l, alpha_l = mean |W_l|: 1 bit a weight plus one float a layer.
- kmeans: scalar k-means, i.e. PQ with d = 1 and one shared codebook.
- pq: product quantization (`shared` or `per-chunk` codebooks).
Applied to an unregularized run these are the paper's baselines; applied to a regularized run,
they are the paper's method.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import CompressConfig
from .models import fc_layers
from .pq import QuantizedLayer, check_fits, quantize_weight


def binarize_weight(name: str, weight: torch.Tensor, centroid_bits: int = 32) -> QuantizedLayer:
    """(out, in) -> sign codes (1, out * in) and the codebook [-alpha, +alpha] of shape (1, 2, 1)."""
    weight = weight.detach().float()
    alpha = weight.abs().mean()
    if centroid_bits == 16:
        alpha = alpha.half().float()
    codes = (weight >= 0).long().reshape(1, -1)  # sign(0) is coded as +1: one bit, no third value
    codebooks = torch.stack([-alpha, alpha]).reshape(1, 2, 1)
    return QuantizedLayer(name, tuple(weight.shape), 1, "sign", codebooks, codes)


def quantize_model(model: nn.Module, cfg: CompressConfig) -> list[QuantizedLayer]:
    """Quantize every FC weight of `model` (not modified) as `cfg` says; [] for method float."""
    cfg = cfg.canonical()
    layers = [(f"{name}.weight", layer.weight) for name, layer in fc_layers(model)]
    if cfg.method == "float":
        return []
    if cfg.method == "binarize":
        return [binarize_weight(name, weight, cfg.centroid_bits) for name, weight in layers]
    check_fits([(name, tuple(w.shape)) for name, w in layers], cfg)
    return [quantize_weight(name, weight, cfg) for name, weight in layers]
