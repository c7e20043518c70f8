"""kmeans: scalar k-means (Gong et al. 2014), i.e. product quantization with d = 1 and one shared
codebook: every weight coded as the nearest of k values."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .base import SHARED_CONTROLS, Method
from .pq import ProductQuantization

if TYPE_CHECKING:
    from ..config import CompressConfig


class ScalarKMeans(ProductQuantization):
    name = "kmeans"
    summary = "scalar k-means (d = 1)"
    color = "#E69F00"
    fixed: Mapping[str, Any] = MappingProxyType({"subvector_size": 1, "layout": "shared"})
    controls = frozenset(SHARED_CONTROLS) - {"layout", "subvector_size"}
    axes = ("n_centroids", "finetune_epochs")

    def canonical(self, values: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
        return Method.canonical(self, values, defaults)

    def label(self, cfg: CompressConfig) -> str:
        return f"{self.name} k={cfg.n_centroids}"


KMEANS = ScalarKMeans()
