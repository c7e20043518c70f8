"""pq: product quantization (Jegou et al. 2011; Gong et al. 2014): each weight's rows cut into
subvectors of d values, each coded as the nearest of k centroids, with one codebook per layer
(`shared`) or one per chunk position (`per-chunk`). The k-means itself lives in core/pq.py."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..fits import check_codebooks_fit, n_chunks, row_shape
from ..size import code_width
from .base import SHARED_CONTROLS, LayerCost, LayerFormat, Method, Shapes

if TYPE_CHECKING:  # the k-means (core/pq.py) computes with torch: imported where a weight is coded
    import torch

    from ..config import CompressConfig
    from ..pq import QuantizedLayer

# Seconds a unit of each kind of work takes on this machine (2 shared CPU cores), fitted by
# bench/estimate.py to measured quantizations of LeNet-300-100's and LeNet-5's layers (its results:
# bench/results/estimate.md), then scaled so that no calibration point took longer than its estimate.
COST_SECONDS = {
    "layers": 0.134,  # per coded weight (the fixed cost of coding one)
    "points": 1.79e-07,  # per (subvector x d) of one pass over the points (sums, counts, gathers)
    "distances": 2.94e-09,  # per (subvector x centroid x d) of one Lloyd assignment
    "scalar": 0.0,  # per (weight x log2 k) of one scalar (d = 1) assignment
    "seeding": 0.0,  # per (seed point x centroid x d) of k-means++
    "passes": 0.00121,  # per pass over a block of distances, or step of k-means++ (the op overhead)
    "weighted": 6.47e-11,  # per flop of an activation-aware iteration
    # per (centroid system x (10 + d^2)) solved at an activation-aware iteration: measured apart
    # (torch.linalg.solve of 65,536 systems, one thread: 1.9e-7 s each at d = 2, 8.5e-7 at 8, 3.8e-6 at 16),
    # after the tests found pq d=8 k=65,536 with output weighting taking 3x its estimate without it
    "systems": 1.5e-8,
    "calibration": 0.0,  # per flop of the calibration pass
}

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
        from ..pq import quantize_weight

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

    def cost_features(self, shapes: Shapes, cfg: CompressConfig) -> dict[str, float]:
        """The work of quantizing these weights, by kind (the keys of COST_SECONDS), counted as the
        k-means of core/pq.py does it: k-means++ seeding on at most 16 k points, then at most
        kmeans_iters + 1 assignments; nothing to iterate when a codebook has no more points than k.
        The activation-aware k-means runs its iterations whatever the plain one did."""
        from ..calibration import CALIBRATION_SAMPLES
        from ..pq import DIST_BLOCK, KMEANS_PP_MAX_K, KMEANS_PP_SAMPLE_PER_CENTROID

        work = dict.fromkeys(COST_SECONDS, 0.0)
        dim, k, iters = cfg.subvector_size, cfg.n_centroids, cfg.kmeans_iters
        for _, shape in shapes:
            rows = row_shape(shape)
            n_books, per_book = codebook_groups(rows, dim, cfg.layout)
            chunks = n_chunks(rows[1], dim)
            points = n_books * per_book
            work["layers"] += 1
            if per_book > k:
                work["points"] += (iters + 1) * points * dim
                if dim == 1:
                    work["scalar"] += (iters + 1) * points * max(1, k.bit_length())
                    work["passes"] += iters + 1
                else:
                    work["distances"] += (iters + 1) * points * k * dim
                    work["passes"] += (iters + 1) * (1 + points * k // DIST_BLOCK)
                if cfg.init == "kmeans++" and k <= KMEANS_PP_MAX_K:
                    sample = min(per_book, KMEANS_PP_SAMPLE_PER_CENTROID * k)
                    work["seeding"] += n_books * sample * k * dim
                    work["passes"] += k
            if cfg.weighting == "activations":
                # per iteration: the assignment, each codebook's quadratic terms, the centroid systems
                per_iteration = 2 * points * k * dim + chunks * k * dim * dim + n_books * k * dim**3
                per_iteration += n_books * k * chunks * dim * dim
                work["weighted"] += iters * per_iteration
                work["points"] += iters * points * dim * dim
                work["systems"] += iters * n_books * k * (10 + dim * dim)
                work["passes"] += iters * (4 + points * k // DIST_BLOCK)
                work["calibration"] += 2.0 * math.prod(shape) * CALIBRATION_SAMPLES * (1 + dim)
        return work

    def estimate_seconds(self, shapes: Shapes, cfg: CompressConfig) -> float:
        work = self.cost_features(shapes, cfg)
        return sum(COST_SECONDS[kind] * amount for kind, amount in work.items())

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
        from ..pq import QuantizedLayer

        codebooks = tensors[f"{name}.codebooks"].float()
        return QuantizedLayer(name, tuple(info["shape"]), info["subvector_size"], info["layout"], codebooks, codes)


PQ = ProductQuantization()
