"""The Learn page's three stages (core/toy_stages.py): the toy's bits are the core's own accounting
(the mask and the codes as core.entropy codes them, the ledger as core.size counts it, the entropy
line as the file writer stores it), and the ratio grows from stage to stage where it must."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from core import entropy
from core.config import CompressConfig, TrainConfig
from core.export import build_payload, stored_code_bits
from core.methods import quantize_model
from core.prune import n_kept
from core.size import FLOAT_BITS, code_width, size_report
from core.toy_stages import (
    DISTRIBUTIONS,
    TOY_LAYER,
    TOY_SHAPE,
    kept_weights,
    stage_ledger,
    stages_toy,
    toy_config,
    toy_subvectors,
    toy_weight,
)
from views.learn import STAGE_D, STAGE_K, STAGE_SPARSITIES

N_WEIGHTS = math.prod(TOY_SHAPE)
SETTINGS = [
    (0.0, 1, 8, "laplace"),
    (0.5, 1, 16, "gaussian"),
    (0.9, 1, 16, "laplace"),
    (0.9, 2, 32, "two wells"),
    (0.98, 8, 8, "laplace"),
    (0.25, 4, 256, "laplace"),
]


def _layer(sparsity: float, d: int, k: int, distribution: str):
    """The toy's layer coded independently of core.toy_stages: the same weight, the same config."""
    cfg = toy_config(sparsity, d, k)
    (layer,) = quantize_model(torch.nn.Module(), cfg, [(TOY_LAYER, toy_weight(distribution))])
    return cfg, layer


@pytest.mark.parametrize(("sparsity", "d", "k", "distribution"), SETTINGS)
def test_the_toys_bits_are_the_cores_own(sparsity, d, k, distribution):
    toy = stages_toy(sparsity, d, k, distribution)
    cfg, layer = _layer(sparsity, d, k, distribution)
    assert toy.config == cfg
    # the codes: packed at the code width, rANS-coded exactly as core.entropy codes them
    codes = layer.codes.numpy()
    assert toy.codes.ans_bits == entropy.encode(codes, k).bits
    assert toy.codes.packed_bits == codes.size * code_width(k)
    assert toy.codes.entropy_bound_bits == pytest.approx(codes.size * entropy.entropy_bits_per_code(codes, k))
    assert sum(toy.code_counts) == codes.size
    # the mask: the bitmap is one bit a weight (the ledger's mask_bits), its rANS form core.entropy's
    if sparsity == 0:
        assert toy.mask is None and toy.size.mask_bits == 0 and toy.pruned == []
    else:
        mask = layer.mask.flatten().long().numpy()
        assert toy.mask.packed_bits == N_WEIGHTS == toy.size.mask_bits
        assert toy.mask.ans_bits == entropy.encode(mask, 2).bits
        assert len(toy.kept) == n_kept(N_WEIGHTS, sparsity) == int(mask.sum())
        assert len(toy.pruned) == N_WEIGHTS - len(toy.kept)
        assert max(abs(v) for v in toy.pruned) <= min(abs(v) for v in toy.kept)  # the smallest |w| go
    # the ledger is size_report's, its entropy line what a real file of this layer holds
    assert toy.size == dataclasses.replace(
        size_report([TOY_SHAPE], 0, cfg), entropy_code_bits=toy.size.entropy_code_bits
    )
    tensors, meta = build_payload({}, [layer], TrainConfig(), cfg, (1, 8, 8), 10)
    assert toy.size.entropy_code_bits == stored_code_bits(tensors, meta)
    stored = toy.codes.stored_bits + (toy.mask.stored_bits if toy.mask is not None else 0)
    assert toy.size.entropy_code_bits == stored
    # the writer keeps the smaller form of each
    for cost in [toy.codes] + ([toy.mask] if toy.mask is not None else []):
        assert cost.stored_bits == min(cost.packed_bits, cost.ans_bits)
    # and the stages read that ledger
    by_stage = {stage.stage: stage for stage in toy.stages}
    assert by_stage["float32"].fc_bits == FLOAT_BITS * N_WEIGHTS == toy.size.fc_float_bits
    assert by_stage["quantized"].fc_bits == toy.size.fc_bits
    assert by_stage["entropy-coded"].fc_bits == toy.size.entropy_fc_bits
    if sparsity > 0:
        assert by_stage["pruned"].fc_bits == FLOAT_BITS * len(toy.kept) + N_WEIGHTS
    assert toy.mse == pytest.approx(float(((layer.decode() - toy_weight(distribution)) ** 2).mean()))


@pytest.mark.parametrize(("sparsity", "d", "k", "distribution"), SETTINGS)
def test_the_coded_stream_is_no_shorter_than_the_entropy_bound(sparsity, d, k, distribution):
    """An ANS stream under the codes' own frequencies cannot beat n * H(p) by more than its state's
    rounding (a word or two): the bound is a bound."""
    toy = stages_toy(sparsity, d, k, distribution)
    for cost in [toy.codes] + ([toy.mask] if toy.mask is not None else []):
        assert cost.ans_bits - cost.table_bits >= cost.entropy_bound_bits - 2 * entropy.WORD_BITS
        assert cost.bits_per_symbol <= math.log2(cost.alphabet) + 1e-9


def _page_settings(distribution: str):
    """The page's sparsities and d with its smallest and largest k (on the Laplace toy, every d; on the
    others, d = 1): the corners of what the page offers."""
    for sparsity in STAGE_SPARSITIES:
        for d in STAGE_D if distribution == "laplace" else (1,):
            ks = [k for k in STAGE_K if k <= toy_subvectors(sparsity, d)]
            for k in sorted({ks[0], ks[-1]}):
                yield sparsity, d, k


@pytest.mark.slow
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_the_ratio_grows_from_stage_to_stage_where_it_must(distribution):
    """Pruning at any sparsity the page offers saves more float bits than its bitmap costs; entropy
    coding never grows the ledger (the writer keeps packed codes or a bitmap where they are smaller);
    quantizing shrinks it whenever k is at most a quarter of the subvectors (codes of at most 8 bits
    and a codebook of at most 8 float bits a survivor, against 32): past that the codebook can outweigh
    what the codes save (the page then says so)."""
    for sparsity, d, k in _page_settings(distribution):
        toy = stages_toy(sparsity, d, k, distribution)
        by_stage = {stage.stage: stage for stage in toy.stages}
        assert toy.stages[0].fc_ratio == 1.0
        assert by_stage["entropy-coded"].fc_ratio >= by_stage["quantized"].fc_ratio
        before_coding = by_stage["float32"]
        if sparsity > 0:
            assert by_stage["pruned"].fc_ratio > 1.0
            before_coding = by_stage["pruned"]
        else:
            assert "pruned" not in by_stage
        if 4 * k <= toy_subvectors(sparsity, d):
            assert by_stage["quantized"].fc_ratio > before_coding.fc_ratio


def test_stage_ledger_of_a_stored_ledger_without_its_shapes():
    """A record's ledger holds no survivors count: without the shapes the line after pruning is left
    out, and the entropy line keeps its codes and masks in one column (one field of the record)."""
    shapes = [(300, 784), (100, 300), (10, 100)]
    cfg = CompressConfig(method="kmeans", n_centroids=16, sparsity=0.9, entropy="ans")
    size = size_report(shapes, 410, cfg)
    size = dataclasses.replace(size, entropy_code_bits=size.code_bits + size.mask_bits // 2)
    stages = stage_ledger(size)
    assert [s.stage for s in stages] == ["float32", "quantized", "entropy-coded"]
    assert stages[-1].mask_bits is None and stages[-1].fc_bits == size.entropy_fc_bits
    assert stages[-1].model_ratio == pytest.approx(size.entropy_model_ratio)
    assert stages[1].model_ratio == pytest.approx(size.model_ratio)
    kept = kept_weights(shapes, 0.9)
    assert kept == sum(n_kept(out * inp, 0.9) for out, inp in shapes)
    with_shapes = stage_ledger(size, kept)
    assert with_shapes[1].stage == "pruned" and with_shapes[1].fc_bits == FLOAT_BITS * kept + size.mask_bits
    plain = size_report(shapes, 410, CompressConfig(method="kmeans", n_centroids=16))
    assert [s.stage for s in stage_ledger(plain, 0)] == ["float32", "quantized"]


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        (dict(sparsity=1.0, subvector_size=1, n_centroids=4), "sparsity"),
        (dict(sparsity=-0.1, subvector_size=1, n_centroids=4), "sparsity"),
        (dict(sparsity=0.0, subvector_size=128, n_centroids=4), "subvector size"),
        (dict(sparsity=0.5, subvector_size=1, n_centroids=4, distribution="cauchy"), "distribution"),
    ],
)
def test_a_toy_setting_that_cannot_be_run_is_one_line(kwargs, says):
    with pytest.raises(ValueError, match=says):
        stages_toy(**kwargs)


def test_the_toy_weights_are_seeded_and_shaped():
    for distribution in DISTRIBUTIONS:
        weight = toy_weight(distribution, seed=3)
        assert weight.shape == TOY_SHAPE and torch.equal(weight, toy_weight(distribution, seed=3))
        assert np.isfinite(weight.numpy()).all()
    assert not torch.equal(toy_weight("laplace", 0), toy_weight("laplace", 1))
