"""pq: product quantization (Jegou et al. 2011; Gong et al. 2014): each weight's rows cut into
subvectors of d values, each coded as the nearest of k centroids, with one codebook per layer
(`shared`) or one per chunk position (`per-chunk`). The k-means itself lives in core/pq.py."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..calibration import CALIBRATION_SAMPLES
from ..pq import QuantizedLayer, check_codebooks_fit, n_chunks, quantize_weight, row_shape
from ..size import code_width
from .base import SHARED_CONTROLS, LayerCost, LayerFormat, Method, Shapes

if TYPE_CHECKING:
    from ..config import CompressConfig

# Work this machine does in a second (2 CPU cores; measured on LeNet-300-100 / mnist-5k: pq d=8 k=256
# in 0.27 s, i.e. ~17 GFLOP/s of distances; pq d=2 k=4096 in 8.2 s, ~9 GFLOP/s), rounded down.
KMEANS_FLOPS_PER_S = 8e9

CODEBOOK_FIELDS = (
    "subvector_size",
    "n_centroids",
    "layout",
    "centroid_bits",
    "kmeans_iters",
    "init",
    "seed",
    "finetune_epochs",
    "finetune_lr",
    "targets",
    "weighting",
)


def codebook_groups(rows: tuple[int, int], dim: int, layout: str) -> tuple[int, int]:
    """(codebooks, subvectors a codebook codes) of a weight of `rows` cut into subvectors of `dim`."""
    out_features, in_features = rows
    chunks = n_chunks(in_features, dim)
    return (1, out_features * chunks) if layout == "shared" else (chunks, out_features)


class ProductQuantization(Method):
    name = "pq"
    summary = "product quantization: subvectors of d weights, k centroids a codebook"
    color = "#0072B2"
    reads: tuple[str, ...] = CODEBOOK_FIELDS
    controls = frozenset(SHARED_CONTROLS)
    axes: tuple[str, ...] = ("subvector_size", "n_centroids", "layout", "finetune_epochs")
    tensor_names = ("codebooks",)
    uses_calibration = True

    def canonical(self, values: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
        out = super().canonical(values, defaults)
        if out["subvector_size"] == 1 and out["layout"] == "shared":
            out["method"] = "kmeans"  # scalar k-means with one shared codebook: the same compression
        return out

    def label(self, cfg: CompressConfig) -> str:
        return f"{self.name} d={cfg.subvector_size} k={cfg.n_centroids} {cfg.layout}"

    def quantize(
        self, name: str, weight: torch.Tensor, cfg: CompressConfig, moments: torch.Tensor | None = None
    ) -> QuantizedLayer:
        return quantize_weight(name, weight, cfg, moments)

    def layer_bits(self, rows: tuple[int, int], cfg: CompressConfig) -> LayerCost:
        n_books, per_book = codebook_groups(rows, cfg.subvector_size, cfg.layout)
        return LayerCost(
            n_books * per_book * code_width(cfg.n_centroids),
            n_books * cfg.n_centroids * cfg.subvector_size * cfg.centroid_bits,
            0,
        )

    def check_fits(self, shapes: Shapes, cfg: CompressConfig) -> None:
        check_codebooks_fit(shapes, cfg.subvector_size, cfg.n_centroids, cfg.layout)

    def estimate_seconds(self, shapes: Shapes, cfg: CompressConfig) -> float:
        """k-means distance work (subvectors x k x d x iterations); with weighting, twice that plus the
        calibration pass."""
        flops = 0.0
        for _, shape in shapes:
            out_features, in_features = row_shape(shape)
            n_sub = out_features * -(-in_features // cfg.subvector_size)
            if n_sub <= cfg.n_centroids:
                continue  # every subvector is its own centroid: nothing to iterate
            if cfg.subvector_size == 1:  # scalar: a binary search per weight, not k distances
                per_point = 30.0 * max(1, cfg.n_centroids.bit_length())
            else:
                per_point = 3.0 * cfg.n_centroids * cfg.subvector_size
            flops += n_sub * per_point * (cfg.kmeans_iters + 2)
        if cfg.weighting == "activations":
            # plain k-means first, then as many weighted iterations (each about as costly), after a
            # forward pass over the calibration inputs with each layer's chunked second moments
            flops *= 2
            flops += sum(2.0 * math.prod(shape) * CALIBRATION_SAMPLES * (1 + cfg.subvector_size) for _, shape in shapes)
        return flops / KMEANS_FLOPS_PER_S

    def code_bits(self, layer: QuantizedLayer) -> int:
        return code_width(layer.n_centroids)

    def layer_tensors(self, layer: QuantizedLayer) -> dict[str, torch.Tensor]:
        return {"codebooks": layer.codebooks.detach()}

    def layer_format(self, rows: tuple[int, int], cfg: CompressConfig) -> LayerFormat:
        dim, k = cfg.subvector_size, cfg.n_centroids
        n_books, per_book = codebook_groups(rows, dim, cfg.layout)
        codebooks = (n_books if cfg.layout == "per-chunk" else 1, k, dim)
        return LayerFormat(cfg.layout, dim, k, code_width(k), n_books, per_book, {"codebooks": codebooks}, {})

    def read_layer(
        self, name: str, info: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], codes: torch.Tensor
    ) -> QuantizedLayer:
        codebooks = tensors[f"{name}.codebooks"].float()
        return QuantizedLayer(name, tuple(info["shape"]), info["subvector_size"], info["layout"], codebooks, codes)


PQ = ProductQuantization()
