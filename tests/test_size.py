"""The size accounting against the worked example of docs/method.md and by hand."""

from __future__ import annotations

import pytest

from core.config import CompressConfig
from core.models import build_model, fc_layers, param_counts
from core.size import code_width, size_report

LENET_300_100 = [(300, 784), (100, 300), (10, 100)]


def test_worked_example_of_method_md():
    model = build_model("mlp", (1, 28, 28), 10)
    shapes = [tuple(layer.weight.shape) for _, layer in fc_layers(model)]
    assert shapes == LENET_300_100
    n_fc, n_rest = param_counts(model)
    assert n_fc == 266_200 and n_rest == 410  # 300 + 100 + 10 biases
    report = size_report(shapes, n_rest, CompressConfig(method="pq", subvector_size=8, n_centroids=256))
    assert report.code_bits == 33_330 * 8 == 266_640
    assert report.codebook_bits == 3 * 256 * 8 * 32 == 196_608
    assert report.fc_bits == 463_248
    assert round(report.fc_ratio, 2) == 18.39
    assert report.model_bits == 463_248 + 32 * 410
    assert report.model_ratio == pytest.approx(32 * (266_200 + 410) / (463_248 + 32 * 410))


def test_per_chunk_counts_one_codebook_per_chunk_position():
    report = size_report(
        [(300, 784), (100, 300)], 0, CompressConfig(method="pq", subvector_size=8, n_centroids=16, layout="per-chunk")
    )
    assert report.code_bits == (300 * 98 + 100 * 38) * 4
    assert report.codebook_bits == (98 + 38) * 16 * 8 * 32


def test_binarize_float_and_kmeans():
    binary = size_report(LENET_300_100, 410, CompressConfig(method="binarize"))
    assert binary.code_bits == 266_200 and binary.scale_bits == 3 * 32 and binary.codebook_bits == 0
    assert binary.fc_ratio == pytest.approx(32 * 266_200 / (266_200 + 96))
    flt = size_report(LENET_300_100, 410, CompressConfig(method="float"))
    assert flt.fc_ratio == 1 and flt.model_ratio == 1
    km = size_report(LENET_300_100, 0, CompressConfig(method="kmeans", subvector_size=8, n_centroids=16))
    assert km.code_bits == 266_200 * 4  # d is forced to 1 for scalar k-means
    assert km.codebook_bits == 3 * 16 * 32


def test_code_width_and_float16_centroids():
    for k, bits in [(2, 1), (3, 2), (256, 8), (257, 9), (65_536, 16)]:
        assert code_width(k) == bits
    half = size_report(LENET_300_100, 0, CompressConfig(method="pq", n_centroids=256, centroid_bits=16))
    assert half.codebook_bits == 196_608 // 2
