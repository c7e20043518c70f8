"""What the peer methods (coreml.py, torchao_codebook.py) have in common: a weight palettized into
lookup tables (LUTs), the form Apple's coremltools and torchao's codebook quantization both produce.

A LUT of 2^n_bits entries of `cluster_dim` values is shared by a group of `group_size` output
channels (rows; the whole tensor when group_size is 0); a vector is `cluster_dim` consecutive output
channels at one input position, as coremltools' vector palettization cuts it. In our config:
n_centroids = 2^n_bits, subvector_size = cluster_dim, group_size = the rows a LUT serves.

The peer does the clustering through its own package; we read back its decoded weight and its LUT,
recover each weight's index (the LUT entry it equals, exactly: anything else is an error, never a
silent re-coding), and count the bits with our ledger: n_bits a code, each LUT at the centroid
precision, nothing else (no scales: per-channel scales are off).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..pq import DoesNotFit, QuantizedLayer, nearest, row_shape
from ..size import code_width
from .base import LayerCost, LayerFormat, Method, Shapes

if TYPE_CHECKING:
    from ..config import CompressConfig

LAYOUT = "row-groups"  # one LUT for each group of consecutive output channels
PEERS_REQUIREMENTS = "pip install -r requirements-peers.txt"


def require(package: str) -> Any:
    """The peer's package, imported now (lazily: the lab runs without it), or DoesNotFit naming it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise DoesNotFit(
            f"this peer needs the package {package}, which is not installed: {PEERS_REQUIREMENTS}"
        ) from None


def lut_groups(rows: tuple[int, int], group_size: int) -> int:
    """LUTs of a weight of `rows` (out, in): one per group of output channels."""
    return rows[0] // (group_size or rows[0])


@dataclass
class LookupTableLayer(QuantizedLayer):
    """A palettized weight: codebooks (G, 2^n_bits, cluster_dim), one per group of out / G rows;
    codes (G, N), N = (out / G / cluster_dim) * in, in the order (vector row block, input position)."""

    def decode(self, codebooks: torch.Tensor | None = None) -> torch.Tensor:
        books = self.codebooks if codebooks is None else codebooks
        n_groups, _, dim = books.shape
        out_features, in_features = self.rows
        index = self.codes.unsqueeze(-1).expand(-1, -1, dim)  # (G, N, cd)
        vectors = torch.gather(books, 1, index)  # (G, N, cd)
        blocks = vectors.reshape(n_groups, -1, in_features, dim)  # (G, rows / cd, in, cd)
        matrix = blocks.permute(0, 1, 3, 2).reshape(out_features, in_features)  # (out, in)
        return matrix.reshape(self.shape)


def to_lut_vectors(matrix: torch.Tensor, n_groups: int, dim: int) -> torch.Tensor:
    """(out, in) -> (G, N, cd): the vectors of `dim` consecutive rows at each input, group by group."""
    out_features, in_features = matrix.shape
    blocks = matrix.reshape(n_groups, out_features // n_groups // dim, dim, in_features)  # (G, r, cd, in)
    return blocks.permute(0, 1, 3, 2).reshape(n_groups, -1, dim)


def layer_from_lut(
    name: str, shape: tuple[int, ...], decoded: torch.Tensor, luts: torch.Tensor, centroid_bits: int
) -> LookupTableLayer:
    """The layer a peer produced: its decoded weight (`shape`) and its LUTs (G, k, cd). Each weight's
    code is the index of the LUT entry it equals; ValueError when one equals none (the peer's output
    would not be what its LUTs code). With centroid_bits 16 the LUTs are then rounded to float16, as
    a float16 Core ML model stores them (the codes stay the peer's)."""
    n_groups, _, dim = luts.shape
    matrix = decoded.detach().float().reshape(shape[0], -1)  # (out, in * kh * kw)
    vectors = to_lut_vectors(matrix, n_groups, dim)  # (G, N, cd)
    luts = luts.detach().float()
    codes = nearest(vectors, luts)
    layer = LookupTableLayer(name, tuple(shape), dim, LAYOUT, luts, codes)
    if not torch.equal(layer.decode(), decoded.detach().float().reshape(shape)):
        raise ValueError(f"the peer's weight {name} is not made of its lookup-table entries")
    if centroid_bits == 16:
        layer.codebooks = luts.half().float()
    return layer


class LookupTableMethod(Method):
    """A peer that palettizes each coded weight into LUTs (subclasses: its package and its limits)."""

    package = ""  # the module the peer imports
    reads: tuple[str, ...] = ("n_centroids", "subvector_size", "group_size", "centroid_bits", "seed", "targets")
    axes: tuple[str, ...] = ("n_centroids",)
    controls = frozenset({"n_centroids", "centroid_bits", "targets"})
    tensor_names = ("luts",)
    max_bits = 8  # widest code the peer takes
    # Its cost on this machine (2 cores; single runs on LeNet-300-100's 300x784 layer): seconds a weight
    # of scalar clustering, a LUT, and a (vector x centroid x value) of vector k-means (coreml: 0.4 s
    # per tensor at 2 bits, 2.1 s with 30 LUTs at 4 bits, 11.6 s for vectors of 10 at 5 bits).
    seconds_per_weight = 2e-6
    seconds_per_lut = 0.07
    seconds_per_vector_step = 1.5e-6

    def label(self, cfg: CompressConfig) -> str:
        text = f"{self.name} {code_width(cfg.n_centroids)}-bit"
        if cfg.subvector_size > 1:
            text += f" vec{cfg.subvector_size}"
        if cfg.group_size:
            text += f" g{cfg.group_size}"
        return text

    def palettize(self, weight: torch.Tensor, cfg: CompressConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """The peer's own decoded weight and its LUTs (G, k, cd) for one weight."""
        raise NotImplementedError

    def quantize(
        self, name: str, weight: torch.Tensor, cfg: CompressConfig, moments: torch.Tensor | None = None
    ) -> QuantizedLayer:
        decoded, luts = self.palettize(weight.detach().float(), cfg)
        return layer_from_lut(name, tuple(weight.shape), decoded, luts, cfg.centroid_bits)

    def layer_bits(self, rows: tuple[int, int], cfg: CompressConfig) -> LayerCost:
        out_features, in_features = rows
        n_codes = out_features * in_features // cfg.subvector_size
        n_luts = lut_groups(rows, cfg.group_size)
        return LayerCost(
            n_codes * code_width(cfg.n_centroids), n_luts * cfg.n_centroids * cfg.subvector_size * cfg.centroid_bits, 0
        )

    def check_fits(self, shapes: Shapes, cfg: CompressConfig) -> None:
        """The package is there; k = 2^n_bits; every layer's output channels split into the groups
        and the vectors (the peer would skip such a layer, or fail, rather than code it)."""
        require(self.package)
        k, dim, group = cfg.n_centroids, cfg.subvector_size, cfg.group_size
        if k & (k - 1) or k > 1 << self.max_bits:
            raise DoesNotFit(
                f"{self.name} palettizes with 2^n_bits entries, n_bits 1 to {self.max_bits}: k={k} is not one of "
                f"2, 4, ..., {1 << self.max_bits}"
            )
        for name, shape in shapes:
            out_features, in_features = row_shape(shape)
            rows = group or out_features
            if out_features % rows:
                raise DoesNotFit(
                    f"{self.name}: a LUT for each {group} output channels does not divide layer {name}, which has "
                    f"{out_features}; use a group size that divides it, or 0 (one LUT a tensor)"
                )
            if rows % dim:
                raise DoesNotFit(
                    f"{self.name}: vectors of cluster_dim={dim} output channels do not divide layer {name}'s "
                    f"{rows} channels a LUT; use a d that divides {rows}"
                )
            points = rows // dim * in_features  # what one LUT's k-means clusters
            if k > points:  # the peer's k-means refuses more clusters than points
                raise DoesNotFit(
                    f"{self.name}: k={k} entries is more than the {points} values a LUT of layer {name} clusters; "
                    f"use k up to {1 << (points.bit_length() - 1)}, or a larger group size"
                )

    def estimate_seconds(self, shapes: Shapes, cfg: CompressConfig) -> float:
        seconds = 0.0
        for _, shape in shapes:
            rows = row_shape(shape)
            n_weights = rows[0] * rows[1]
            seconds += self.seconds_per_weight * n_weights + self.seconds_per_lut * lut_groups(rows, cfg.group_size)
            if cfg.subvector_size > 1:
                seconds += self.seconds_per_vector_step * n_weights * cfg.n_centroids
        return seconds

    def code_bits(self, layer: QuantizedLayer) -> int:
        return code_width(layer.n_centroids)

    def layer_tensors(self, layer: QuantizedLayer) -> dict[str, torch.Tensor]:
        return {"luts": layer.codebooks.detach()}

    def layer_format(self, rows: tuple[int, int], cfg: CompressConfig) -> LayerFormat:
        n_luts = lut_groups(rows, cfg.group_size)
        per_lut = rows[0] * rows[1] // cfg.subvector_size // n_luts
        k, dim = cfg.n_centroids, cfg.subvector_size
        return LayerFormat(LAYOUT, dim, k, code_width(k), n_luts, per_lut, {"luts": (n_luts, k, dim)}, {})

    def read_layer(
        self, name: str, info: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], codes: torch.Tensor
    ) -> QuantizedLayer:
        luts = tensors[f"{name}.luts"].float()
        return LookupTableLayer(name, tuple(info["shape"]), info["subvector_size"], LAYOUT, luts, codes)
