"""binarize: sign(W) * alpha_l, alpha_l = mean |W_l|: 1 bit a weight plus one float a layer
(Gong et al. 2014's binarization baseline; on a binary-regularized run, the paper's method)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .base import LayerCost, LayerFormat, Method

if TYPE_CHECKING:  # torch where a weight is coded or read back: checking a file's format needs none
    import torch

    from ..config import CompressConfig
    from ..pq import QuantizedLayer


def binarize_weight(name: str, weight: torch.Tensor, centroid_bits: int = 32) -> QuantizedLayer:
    """(out, in) or (out, in, kh, kw) -> sign codes (1, numel) and the codebook [-alpha, +alpha] (1, 2, 1)."""
    import torch

    from ..pq import QuantizedLayer

    weight = weight.detach().float()
    if weight.numel() == 0 or not bool(torch.isfinite(weight).all()):
        raise ValueError(f"weight {name} is empty or holds NaN or infinite values: binarize needs finite weights")
    alpha = weight.abs().mean()
    if centroid_bits == 16:
        alpha = alpha.half().float()
    codes = (weight >= 0).long().reshape(1, -1)  # sign(0) is coded as +1: one bit, no third value
    codebooks = torch.stack([-alpha, alpha]).reshape(1, 2, 1)
    return QuantizedLayer(name, tuple(weight.shape), 1, "sign", codebooks, codes)


class Binarize(Method):
    name = "binarize"
    summary = "sign(W)·α, 1 bit a weight"
    color = "#D55E00"
    reads = ("finetune_epochs", "finetune_lr", "targets")
    # one sign bit a weight: d = 1, k = 2, by definition
    fixed: Mapping[str, Any] = MappingProxyType({"subvector_size": 1, "n_centroids": 2})
    controls = frozenset({"finetune_epochs", "targets"})
    axes = ("finetune_epochs",)
    tensor_names = ("alpha",)

    def quantize(
        self, name: str, weight: torch.Tensor, cfg: CompressConfig, moments: torch.Tensor | None = None
    ) -> QuantizedLayer:
        return binarize_weight(name, weight, cfg.centroid_bits)

    def layer_bits(self, rows: tuple[int, int], cfg: CompressConfig) -> LayerCost:
        return LayerCost(rows[0] * rows[1], 0, cfg.centroid_bits)  # a sign bit each; alpha

    def code_bits(self, layer: QuantizedLayer) -> int:
        return 1

    def layer_tensors(self, layer: QuantizedLayer) -> dict[str, torch.Tensor]:
        return {"alpha": layer.codebooks[0, 1].detach().reshape(1)}  # the codebook is [-alpha, +alpha]

    def layer_format(self, rows: tuple[int, int], cfg: CompressConfig) -> LayerFormat:
        return LayerFormat("sign", 1, 2, 1, 1, rows[0] * rows[1], {"alpha": (1,)}, {})

    def read_layer(
        self, name: str, info: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], codes: torch.Tensor
    ) -> QuantizedLayer:
        import torch

        from ..pq import QuantizedLayer

        alpha = tensors[f"{name}.alpha"].float().reshape(())
        codebooks = torch.stack([-alpha, alpha]).reshape(1, 2, 1)
        return QuantizedLayer(name, tuple(info["shape"]), 1, "sign", codebooks, codes)


BINARIZE = Binarize()
