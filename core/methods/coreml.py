"""coreml: Apple's coremltools post-training palettization (`coremltools.optimize.torch.palettization.
PostTrainingPalettizer`), a peer users would pick instead of ours: k-means of each weight into a LUT
of 2^n_bits entries, per tensor or per group of output channels, of scalars or of vectors of
`cluster_dim` output channels (vector palettization). coremltools' own defaults otherwise (its fast
k-means mode: weights rounded to 4 decimals before the scalar clustering; no per-channel scales).

The clustering is coremltools' own, on a one-layer module holding the weight; lut.py reads back what
it stores (the palettized weight and its `_COREML_/weight/lut` buffer) and counts it with our ledger.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .base import MethodOption
from .lut import LookupTableMethod, require

if TYPE_CHECKING:
    from ..config import CompressConfig

LUT_BUFFER = "_COREML_/weight/lut"


def one_layer(weight: torch.Tensor) -> nn.Module:
    """An nn.Linear (out, in) or nn.Conv2d (out, in, kh, kw) without bias holding `weight`."""
    module: nn.Linear | nn.Conv2d
    if weight.dim() == 2:
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    else:
        module = nn.Conv2d(weight.shape[1], weight.shape[0], (weight.shape[2], weight.shape[3]), bias=False)
    with torch.no_grad():
        module.weight.copy_(weight)
    return module


def palettizer_config(cfg: CompressConfig) -> dict:
    """The `global_config` of coremltools' PostTrainingPalettizerConfig for `cfg`."""
    config: dict = {"n_bits": cfg.n_centroids.bit_length() - 1}
    if cfg.group_size:
        config.update(granularity="per_grouped_channel", group_size=cfg.group_size, channel_axis=0)
    if cfg.subvector_size > 1:
        config["cluster_dim"] = cfg.subvector_size
    return config


def coreml_palettized(module: nn.Module, cfg: CompressConfig) -> nn.Module:
    """coremltools' PostTrainingPalettizer on `module` (a Linear or a Conv2d; not modified): its palettized copy."""
    palettization = require("coremltools.optimize.torch.palettization")
    for logger in list(logging.root.manager.loggerDict):  # its per-layer INFO lines, each module's own logger
        if logger.startswith("coremltools"):
            logging.getLogger(logger).setLevel(logging.ERROR)
    config = palettization.PostTrainingPalettizerConfig.from_dict({"global_config": palettizer_config(cfg)})
    # its vector k-means++ draws from torch's and numpy's global generators: seeded here, then restored
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            np.random.seed(cfg.seed)
            return palettization.PostTrainingPalettizer(module, config).compress()
    finally:
        np.random.set_state(numpy_state)


def coreml_palettize(weight: torch.Tensor, cfg: CompressConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """coremltools' palettization of one weight: (its palettized weight, its LUTs (G, k, cd))."""
    palettized = coreml_palettized(one_layer(weight), cfg)
    buffers = dict(palettized.named_buffers())
    if LUT_BUFFER not in buffers:  # coremltools skips, with a warning, what it cannot palettize
        raise ValueError(f"coremltools did not palettize a weight of shape {tuple(weight.shape)} with {cfg.label()}")
    luts = buffers[LUT_BUFFER]  # (G, 1, ..., k, cd)
    palettized_weight: torch.Tensor = palettized.get_parameter("weight")
    return palettized_weight.detach(), luts.reshape(-1, cfg.n_centroids, luts.shape[-1])


class CoreMLPalettizer(LookupTableMethod):
    name = "coreml"
    summary = "coremltools post-training palettization: a LUT of 2^n_bits scalars or vectors (peer)"
    color = "#CC79A7"
    package = "coremltools"
    axes = ("n_centroids", "subvector_size")
    controls = frozenset({"n_centroids", "subvector_size", "centroid_bits", "targets"})
    options = (
        MethodOption(
            "group_size",
            "Output channels a LUT (coreml, torchao)",
            (0, 2, 5, 10, 50, 100),
            0,
            help="0: one lookup table for the whole tensor (per_tensor); g: one for each g output channels "
            "(per_grouped_channel). It must divide every coded layer's output channels.",
        ),
    )

    def palettize(self, weight: torch.Tensor, cfg: CompressConfig) -> tuple[torch.Tensor, torch.Tensor]:
        return coreml_palettize(weight, cfg)


COREML = CoreMLPalettizer()
