"""float: nothing is quantized; the reference point of every comparison."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..size import FLOAT_BITS
from .base import LayerCost, Method

if TYPE_CHECKING:
    import torch

    from ..config import CompressConfig
    from ..pq import QuantizedLayer


class Float(Method):
    name = "float"
    summary = "no compression (the reference)"
    color = "#555555"
    codes_weights = False

    def quantize(
        self, name: str, weight: torch.Tensor, cfg: CompressConfig, moments: torch.Tensor | None = None
    ) -> QuantizedLayer | None:
        return None

    def layer_bits(self, rows: tuple[int, int], cfg: CompressConfig) -> LayerCost:
        return LayerCost(FLOAT_BITS * rows[0] * rows[1], 0, 0)


FLOAT = Float()
