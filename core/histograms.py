"""Histogram data: what the charts draw for a layer's weights, from training and from the toys.

Plain data (a `LayerHistogram` record), no plotting here: `core/charts.py` turns it into figures.
"""

from __future__ import annotations

import torch
from torch import nn

from .models import fc_layers
from .records import LayerHistogram

HIST_BINS = 101  # bins per layer and epoch (odd: one bin centred on 0)


@torch.no_grad()
def histogram(weights: torch.Tensor, name: str) -> LayerHistogram:
    """`weights` (any shape) in HIST_BINS equal bins on [-max|W|, max|W|], with alpha = mean |W|."""
    weights = weights.detach().float().cpu().flatten()
    limit = float(weights.abs().max()) or 1.0
    counts = torch.histc(weights, bins=HIST_BINS, min=-limit, max=limit)
    return LayerHistogram(
        layer=name,
        alpha=float(weights.abs().mean()),
        std=float(weights.std()),
        limit=limit,
        counts=tuple(int(c) for c in counts.tolist()),
    )


def weight_histograms(model: nn.Module) -> tuple[LayerHistogram, ...]:
    """One `histogram` per FC weight of `model`, named by its state-dict key."""
    return tuple(histogram(layer.weight, f"{name}.weight") for name, layer in fc_layers(model))
