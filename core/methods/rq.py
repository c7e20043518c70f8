"""rq: residual quantization (Chen et al. 2010, the paper's reference 16; Gong et al. 2014): M stages
of k centroids on subvectors of d weights, each stage a k-means of what the stages before left (the
residual), so a subvector is the sum of one centroid a stage. Shared or per-chunk codebooks, as pq.

One stage is pq exactly (the config says so: rq with M = 1 is pq, one cache key). The k-means is
core/pq.py's; the output-error weighting is pq's alone (rq minimizes the weights' own error).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .base import SHARED_CONTROLS, LayerCost, LayerFormat, Method, MethodOption, Shapes
from .pq import CODEBOOK_FIELDS, ProductQuantization

if TYPE_CHECKING:  # torch where a weight is coded: checking a file's format needs none
    import torch

    from ..config import CompressConfig
    from ..pq import QuantizedLayer


def residual_quantize(name: str, weight: torch.Tensor, cfg: CompressConfig) -> QuantizedLayer:
    """`cfg.stages` stages of k-means on the residual of one weight ((out, in), or a conv's rows).
    Stage s is seeded with cfg.seed + s; its first stage is `core.pq.quantize_weight`'s k-means, to
    the bit. With centroid_bits 16 each stage's centroids are rounded before its codes are chosen and
    before the next stage sees the residual, so the residual is that of what the file holds."""
    import torch

    from ..pq import QuantizedLayer, as_rows, kmeans, nearest, to_groups, to_subvectors

    dim, k = cfg.subvector_size, cfg.n_centroids
    grouped = to_groups(to_subvectors(as_rows(weight.detach().float()), dim), cfg.layout)  # (G, N, d)
    residual = grouped
    books, codes = [], []
    for stage in range(cfg.stages):
        centroids, stage_codes = kmeans(residual, k, cfg.kmeans_iters, cfg.seed + stage, cfg.init)
        if cfg.centroid_bits == 16:
            centroids = centroids.half().float()
            stage_codes = nearest(residual, centroids)
        books.append(centroids)
        codes.append(stage_codes)
        chosen = torch.gather(centroids, 1, stage_codes.unsqueeze(-1).expand(-1, -1, dim))
        residual = residual - chosen
    return QuantizedLayer(
        name, tuple(weight.shape), dim, cfg.layout, torch.cat(books), torch.cat(codes), stages=cfg.stages
    )


class ResidualQuantization(ProductQuantization):
    name = "rq"
    summary = "residual quantization: M stages of k centroids, each coding what the stages before left"
    color = "#009E73"
    reads: tuple[str, ...] = (*(f for f in CODEBOOK_FIELDS if f != "weighting"), "stages")
    controls = frozenset(SHARED_CONTROLS) - {"weighting"}
    options = (
        MethodOption(
            "stages",
            "Residual stages M (rq)",
            (1, 2, 3, 4, 6, 8),
            2,
            help="Each stage adds a codebook of k centroids that codes what the stages before left; "
            "a subvector costs M·log2(k) bits. One stage is pq.",
        ),
    )
    axes = ("subvector_size", "n_centroids", "layout", "finetune_epochs", "stages")
    layer_keys = ("stages",)
    uses_calibration = False

    def canonical(self, values: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
        out = Method.canonical(self, values, defaults)
        if out["stages"] == 1:
            out["method"] = "pq"  # one stage is product quantization: the same compression
        return out

    def label(self, cfg: CompressConfig) -> str:
        return f"{self.name} M={cfg.stages} d={cfg.subvector_size} k={cfg.n_centroids} {cfg.layout}"

    def quantize(
        self, name: str, weight: torch.Tensor, cfg: CompressConfig, moments: torch.Tensor | None = None
    ) -> QuantizedLayer:
        return residual_quantize(name, weight, cfg)

    def layer_bits(self, rows: tuple[int, int], cfg: CompressConfig) -> LayerCost:
        one = super().layer_bits(rows, cfg)  # one stage: codes and codebooks of pq
        return LayerCost(cfg.stages * one.code_bits, cfg.stages * one.codebook_bits, 0)

    def cost_features(self, shapes: Shapes, cfg: CompressConfig) -> dict[str, float]:
        one = super().cost_features(shapes, cfg)  # a pq k-means a stage
        return {kind: cfg.stages * amount for kind, amount in one.items()}

    def layer_extra(self, layer: QuantizedLayer) -> dict[str, int]:
        return {"stages": layer.stages}

    def layer_format(self, rows: tuple[int, int], cfg: CompressConfig) -> LayerFormat:
        one = super().layer_format(rows, cfg)
        books, k, dim = one.tensors["codebooks"]
        return replace(
            one,
            groups=cfg.stages * one.groups,
            tensors={"codebooks": (cfg.stages * books, k, dim)},
            extra={"stages": cfg.stages},
        )

    def read_layer(
        self, name: str, info: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], codes: torch.Tensor
    ) -> QuantizedLayer:
        return replace(super().read_layer(name, info, tensors, codes), stages=info["stages"])


RQ = ResidualQuantization()
