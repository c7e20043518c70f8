"""torchao: PyTorch's torchao codebook quantization (`quantize_(model, CodebookWeightOnlyConfig(dtype,
block_size))` from `torchao.prototype.quantization.codebook_coreml`), a peer: each linear weight
replaced by n_bits codes into a LUT of 2^n_bits scalars, one LUT per tensor or per group of output
channels (block_size [group, -1]). Scalar only (torchao asserts cluster_dim == 1) and linear layers
only (rank-2 weights), so those are what it fits.

torchao keeps each code in a uint8 in memory; our ledger counts the code at its n_bits, as a packed
file holds it (the file this lab writes).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..pq import DoesNotFit
from .base import Shapes
from .coreml import CoreMLPalettizer
from .lut import LookupTableMethod, require

if TYPE_CHECKING:
    from ..config import CompressConfig


def torchao_palettize(weight: torch.Tensor, cfg: CompressConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's codebook quantization of one linear weight: (its dequantized weight, its LUTs (G, k, 1))."""
    quantization = require("torchao.quantization")
    codebook = require("torchao.prototype.quantization.codebook_coreml")
    n_bits = cfg.n_centroids.bit_length() - 1
    module = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        module.weight.copy_(weight)
    config = codebook.CodebookWeightOnlyConfig(
        dtype=getattr(torch, f"uint{n_bits}"), block_size=[cfg.group_size or -1, -1]
    )
    quantization.quantize_(module, config)
    quantized: Any = module.weight  # a CodebookQuantizedTensor: codes (out, in) uint8, codebook (G, 1, k, 1)
    return quantized.dequantize().detach(), quantized.codebook.detach().reshape(-1, cfg.n_centroids, 1)


class TorchAOCodebook(LookupTableMethod):
    name = "torchao"
    summary = "torchao CodebookWeightOnlyConfig: n_bits codes into a LUT of scalars (peer)"
    color = "#F0E442"
    package = "torchao"
    options = CoreMLPalettizer.options  # the same group_size control
    reads: tuple[str, ...] = tuple(f for f in LookupTableMethod.reads if f not in ("subvector_size", "seed"))
    fixed: Mapping[str, Any] = MappingProxyType({"subvector_size": 1})  # scalars only
    seconds_per_weight = 9e-6  # scikit-learn's k-means, one start (2.0 s on the 300x784 layer at 2 bits)

    def check_fits(self, shapes: Shapes, cfg: CompressConfig) -> None:
        super().check_fits(shapes, cfg)
        require("coremltools")  # torchao's codebook clusters with coremltools' k-means
        if any(len(shape) != 2 for _, shape in shapes):
            raise DoesNotFit("torchao's codebook quantization codes linear layers only: use targets fc")

    def palettize(self, weight: torch.Tensor, cfg: CompressConfig) -> tuple[torch.Tensor, torch.Tensor]:
        return torchao_palettize(weight, cfg)


TORCHAO = TorchAOCodebook()
