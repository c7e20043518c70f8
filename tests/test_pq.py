"""PQ and k-means: exact decoding of encodable input, monotone error in k, agreement with sklearn."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
from sklearn.cluster import KMeans

from core.config import CompressConfig
from core.methods import binarize_weight, quantize_model
from core.models import build_model
from core.pq import (
    assign,
    check_fits,
    from_groups,
    from_subvectors,
    kmeans,
    quantize_weight,
    reconstruction_mse,
    to_groups,
    to_subvectors,
)


def encodable_weight(out_features: int, in_features: int, d: int, k: int, layout: str, seed: int = 0):
    """A weight whose subvectors are all drawn from k well-separated centroids (per group).
    Exactly encodable only when d divides in_features (padding would break the pattern)."""
    g = torch.Generator().manual_seed(seed)
    chunks = -(-in_features // d)
    n_groups = chunks if layout == "per-chunk" else 1
    centroids = torch.randn(n_groups, k, d, generator=g) * 10  # far apart compared with 0
    n_per_group = out_features if layout == "per-chunk" else out_features * chunks
    codes = torch.randint(k, (n_groups, n_per_group), generator=g)
    codes[:, :k] = torch.arange(k)  # every centroid used at least once
    grouped = torch.gather(centroids, 1, codes.unsqueeze(-1).expand(-1, -1, d))
    return from_subvectors(from_groups(grouped, layout, out_features), in_features)


@pytest.mark.parametrize("layout", ["shared", "per-chunk"])
@pytest.mark.parametrize("d,k", [(1, 4), (2, 8), (4, 16), (8, 4)])
def test_known_centroids_decode_exactly(layout, d, k):
    weight = encodable_weight(24, 16, d, k, layout)  # 16 % d == 0: no padding
    layer = quantize_weight(
        "w", weight, CompressConfig(method="pq", subvector_size=d, n_centroids=k, layout=layout, seed=1)
    )
    assert torch.allclose(layer.decode(), weight, atol=1e-4)
    assert layer.codebooks.shape == (16 // d if layout == "per-chunk" else 1, k, d)


def test_subvector_padding_round_trip():
    weight = torch.arange(3 * 10, dtype=torch.float32).reshape(3, 10)
    sub = to_subvectors(weight, 4)  # (3, 10) -> (3, 3, 4), two zeros of padding a row
    assert sub.shape == (3, 3, 4)
    assert torch.equal(sub[:, -1, 2:], torch.zeros(3, 2))
    assert torch.equal(from_subvectors(sub, 10), weight)
    for layout in ("shared", "per-chunk"):
        assert torch.equal(from_groups(to_groups(sub, layout), layout, 3), sub)


def test_fewer_distinct_subvectors_than_k_is_lossless():
    weight = torch.tensor([[1.0, -1.0] * 8] * 6)  # d=2: one distinct subvector, 48 of them
    layer = quantize_weight("w", weight, CompressConfig(method="pq", subvector_size=2, n_centroids=16))
    assert torch.equal(layer.decode(), weight)
    small = torch.randn(3, 4)  # 6 subvectors of d=2 < k=256: each its own centroid
    layer = quantize_weight("w", small, CompressConfig(method="pq", subvector_size=2, n_centroids=256))
    assert torch.equal(layer.decode(), small)
    assert layer.codebooks.shape == (1, 256, 2)


@pytest.mark.parametrize("method,d", [("kmeans", 1), pytest.param("pq", 4, marks=pytest.mark.slow)])
def test_error_never_grows_with_k(method, d):
    weight = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    errors = [
        reconstruction_mse(
            weight, quantize_weight("w", weight, CompressConfig(method=method, subvector_size=d, n_centroids=k, seed=0))
        )
        for k in (2, 4, 8, 16, 32, 64, 128)
    ]
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(errors)), errors


def test_scalar_kmeans_matches_sklearn_objective():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([-3.0, -1.0, 0.5, 2.0, 4.0])
    x = (centers[torch.randint(5, (2000,), generator=g)] + 0.2 * torch.randn(2000, generator=g)).reshape(-1, 1)
    centroids, codes = kmeans(x.unsqueeze(0), 5, n_iter=50, seed=0)
    ours = float(((x.squeeze(1) - centroids[0, codes[0], 0]) ** 2).sum())
    reference = KMeans(n_clusters=5, n_init=10, random_state=0).fit(x.numpy()).inertia_
    assert ours == pytest.approx(reference, rel=0.01)


def test_assign_agrees_with_brute_force():
    g = torch.Generator().manual_seed(3)
    for d in (1, 3):
        x = torch.randn(2, 500, d, generator=g)
        c = torch.randn(2, 37, d, generator=g)
        codes, errors = assign(x, c)
        dist = torch.cdist(x, c) ** 2
        assert torch.equal(codes, dist.argmin(-1))
        assert torch.allclose(errors, dist.min(-1).values, atol=1e-4)


@pytest.mark.parametrize("block", [64, 1000, 1 << 20])  # row blocks, group blocks, one block
def test_assign_in_blocks_agrees_with_brute_force(monkeypatch, block):
    import core.pq

    monkeypatch.setattr(core.pq, "_DIST_BLOCK", block)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 70, 4, generator=g)
    c = torch.randn(5, 9, 4, generator=g)
    codes, errors = assign(x, c)
    dist = torch.cdist(x, c) ** 2
    assert torch.equal(codes, dist.argmin(-1))
    assert torch.allclose(errors, dist.min(-1).values, atol=1e-4)


def test_kmeans_pp_seeds_every_distinct_point_before_repeating_one():
    g = torch.Generator().manual_seed(5)
    distinct = torch.randn(3, 6, 2, generator=g)  # 3 groups, exactly k = 6 distinct subvectors each
    x = torch.gather(distinct, 1, torch.randint(6, (3, 200, 1), generator=g).expand(-1, -1, 2))
    x[:, :6] = distinct
    centroids, codes = kmeans(x, 6, n_iter=0, seed=0)  # the seeding alone must already be lossless
    decoded = torch.gather(centroids, 1, codes.unsqueeze(-1).expand(-1, -1, 2))
    assert torch.equal(decoded, x)


def test_large_k_runs_and_is_exact_on_few_values():
    values = torch.linspace(-1, 1, 3000).reshape(30, 100)
    layer = quantize_weight("w", values, CompressConfig(method="kmeans", n_centroids=65_536))
    assert torch.equal(layer.decode(), values)  # 3,000 weights <= k: lossless
    assert layer.codebooks.shape == (1, 65_536, 1)


def test_kmeans_is_seeded():
    x = torch.randn(1, 400, 4, generator=torch.Generator().manual_seed(0))
    a = kmeans(x, 8, 10, seed=5)
    b = kmeans(x, 8, 10, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_binarize_is_sign_times_alpha():
    weight = torch.tensor([[0.5, -1.5], [0.0, 2.0]])
    layer = binarize_weight("w", weight)
    alpha = 1.0  # mean |W|
    assert torch.equal(layer.decode(), torch.tensor([[alpha, -alpha], [alpha, alpha]]))


def test_check_fits_errors_say_what_fits():
    shapes = [("fc1", (300, 784)), ("fc3", (10, 100))]
    with pytest.raises(ValueError, match="k <= 10 or the shared layout"):
        check_fits(shapes, CompressConfig(method="pq", n_centroids=16, layout="per-chunk"))
    with pytest.raises(ValueError, match="d <= 100"):
        check_fits(shapes, CompressConfig(method="pq", subvector_size=128))
    check_fits(shapes, CompressConfig(method="pq", n_centroids=8, layout="per-chunk"))


def test_quantize_model_does_not_touch_the_model():
    model = build_model("mlp", (1, 8, 8), 10, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = quantize_model(model, CompressConfig(method="pq", subvector_size=2, n_centroids=4))
    assert [q.name for q in layers] == ["fcs.0.weight", "fcs.1.weight"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert quantize_model(model, CompressConfig(method="float")) == []


def test_float16_codebooks_hold_float16_values():
    weight = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    layer = quantize_weight(
        "w", weight, CompressConfig(method="pq", subvector_size=4, n_centroids=16, centroid_bits=16)
    )
    assert torch.equal(layer.codebooks, layer.codebooks.half().float())


@pytest.mark.slow  # seconds: the whole suite's
def test_kmeans_stops_early_only_at_a_fixed_point():
    """Stopping when the codes no longer change gives exactly what running every iteration gives."""
    x = torch.randn(3, 500, 4, generator=torch.Generator().manual_seed(6))
    fast = kmeans(x, 8, n_iter=200, seed=2)
    equal = torch.equal
    try:  # never report convergence: all 200 iterations run
        torch.equal = lambda a, b: False
        slow = kmeans(x, 8, n_iter=200, seed=2)
    finally:
        torch.equal = equal
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


# ----------------------------------------------------------------------- activation-aware PQ


def _anisotropic_inputs(n: int, width: int, seed: int = 0) -> torch.Tensor:
    """Inputs whose scale differs 100x between features (and with a mean): the output error then
    weighs the weights of the loud features far more than plain k-means does."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 1, width)[torch.randperm(width, generator=generator)]
    return (torch.randn(n, width, generator=generator) + 0.5) * scales


@pytest.mark.slow  # seconds: the whole suite's
@pytest.mark.parametrize("layout", ["shared", "per-chunk"])
def test_activation_aware_pq_lowers_the_output_error_it_optimizes(layout):
    from core.calibration import input_moments
    from core.pq import output_error

    torch.manual_seed(0)
    layer = torch.nn.Linear(36, 24)
    inputs, held_out = _anisotropic_inputs(8192, 36).split(4096)
    plain_cfg = CompressConfig(method="pq", subvector_size=4, n_centroids=8, layout=layout)
    aware_cfg = CompressConfig(method="pq", subvector_size=4, n_centroids=8, layout=layout, weighting="activations")
    moments = input_moments(torch.nn.Sequential(layer), ["0.weight"], [inputs], 4)["0.weight"]
    assert moments.shape == (9, 4, 4)
    plain = quantize_weight("w", layer.weight, plain_cfg)
    aware = quantize_weight("w", layer.weight, aware_cfg, moments)
    weight = layer.weight.detach()
    plain_out, aware_out = (output_error(weight, q.decode(), inputs) for q in (plain, aware))
    assert aware_out < 0.8 * plain_out, (aware_out, plain_out)
    # ... on held-out inputs of the same distribution too, and at the price of the weights' own MSE
    assert output_error(weight, aware.decode(), held_out) < output_error(weight, plain.decode(), held_out)
    assert reconstruction_mse(weight, aware) >= reconstruction_mse(weight, plain)
    # the fp16 variant re-assigns under the same metric: still better than plain
    half = quantize_weight("w", layer.weight, replace(aware_cfg, centroid_bits=16), moments)
    assert output_error(weight, half.decode(), inputs) < plain_out


def test_activation_statistics_of_a_conv_are_its_patches_second_moments():
    from core.calibration import input_moments

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1, stride=2)
    x = torch.randn(6, 3, 9, 9)
    got = input_moments(torch.nn.Sequential(conv), ["0.weight"], [x[:4], x[4:]], 9)["0.weight"]  # (3, 9, 9)
    patches = torch.nn.functional.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 27)
    want = torch.stack([patches[:, 9 * c : 9 * c + 9].T @ patches[:, 9 * c : 9 * c + 9] for c in range(3)])
    assert torch.allclose(got, want / len(patches), atol=1e-5)


def test_activation_weighting_needs_calibration_inputs_and_is_a_later_field():
    from core import api

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    cfg = CompressConfig(method="pq", subvector_size=4, n_centroids=4, weighting="activations")
    with pytest.raises(ValueError, match="calibration"):
        api.compress(model, cfg)
    compressed = api.compress(model, cfg, calibration=torch.randn(64, 16))
    assert [layer.name for layer in compressed.layers] == ["1.weight", "3.weight"]
    assert cfg.label() == "pq d=4 k=4 shared act"
    assert "weighting" not in CompressConfig().to_json()  # every key from before stays what it was
    assert CompressConfig(method="binarize", weighting="activations").weighting == "none"  # signs: no k-means
    with pytest.raises(ValueError, match="weighting"):
        CompressConfig(weighting="outputs")


def test_kmeans_pp_from_pairwise_distances_picks_what_the_streaming_one_picks(monkeypatch):
    import core.pq as pq_module

    x = torch.randn(6, 120, 4, generator=torch.Generator().manual_seed(3))
    small = pq_module._init_kmeans_pp(x, 16, torch.Generator().manual_seed(0))
    monkeypatch.setattr(pq_module, "_PAIRWISE_MAX", 0)
    streaming = pq_module._init_kmeans_pp(x, 16, torch.Generator().manual_seed(0))
    assert torch.equal(small, streaming)


@pytest.mark.parametrize("k", [3, 256, 300])
def test_vectorized_argmin_is_argmin_with_ties_to_the_first(k):
    from core.pq import _first_argmin

    generator = torch.Generator().manual_seed(k)
    values = torch.randn(5, 7000, k, generator=generator)
    values[:, ::3, k // 2] = values[:, ::3, 0]  # exact ties at the minimum and elsewhere
    values[:, ::5] = values[:, ::5].amin(-1, keepdim=True)  # whole rows tied
    values[0, 0, :] = 0.0
    expected = values.argmin(-1)
    index = torch.arange(k, dtype=values.dtype)
    assert torch.equal(_first_argmin(values.clone(), index), expected)
