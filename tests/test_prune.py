"""Magnitude pruning before coding (core/prune.py): exact zeros, survivors coded, the mask stored and
counted exactly (bitmap, or entropy-coded), and the file's bytes equal to the ledger."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from core.compress import compress_run
from core.config import CompressConfig
from core.export import (
    HEADER_BOUND,
    NotACompressedModel,
    build_payload,
    from_bytes,
    header_bytes,
    layers_from_payload,
    stored_code_bits,
    to_bytes,
)
from core.methods import quantize_model
from core.prune import magnitude_mask, n_kept
from core.size import size_report
from tests.marks import fast_cases


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.999])
def test_magnitude_mask_prunes_the_smallest(sparsity):
    weight = torch.randn(30, 17, generator=torch.Generator().manual_seed(1))
    mask = magnitude_mask(weight, sparsity)
    assert mask.shape == weight.shape and int(mask.sum()) == n_kept(weight.numel(), sparsity)
    if 0 < mask.sum() < weight.numel():
        assert weight[mask].abs().min() >= weight[~mask].abs().max()


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.01, float("nan"), float("inf"), "0.5", True])
def test_a_bad_sparsity_is_one_line(bad):
    with pytest.raises(ValueError, match=r"must be a number from 0 \(no pruning\) up to but not including 1"):
        CompressConfig(sparsity=bad)


def test_pruning_needs_one_codebook_a_layer():
    with pytest.raises(ValueError, match="use layout shared"):
        CompressConfig(method="pq", subvector_size=2, n_centroids=4, layout="per-chunk", sparsity=0.5)


def test_default_keys_unchanged_and_float_ignores_pruning():
    assert "sparsity" not in CompressConfig().to_json()
    assert CompressConfig(sparsity=0).key() == CompressConfig().key()
    assert CompressConfig(method="float", sparsity=0.5) == CompressConfig(method="float")
    cfg = CompressConfig(method="kmeans", n_centroids=4, sparsity=0.8)
    assert cfg.label() == "prune 0.8 + kmeans k=4" and CompressConfig.from_dict(cfg.to_json()) == cfg


PRUNED = [
    CompressConfig(method="kmeans", n_centroids=8, sparsity=0.7),
    CompressConfig(method="kmeans", n_centroids=8, sparsity=0.7, entropy="ans"),
    CompressConfig(method="pq", subvector_size=2, n_centroids=16, sparsity=0.5),
    CompressConfig(method="binarize", sparsity=0.9, entropy="ans"),
    CompressConfig(method="rq", subvector_size=2, n_centroids=4, stages=2, sparsity=0.6),
    CompressConfig(method="kmeans", n_centroids=4, sparsity=0.8, finetune_epochs=1),
]


@fast_cases(2)
@pytest.mark.parametrize("cfg", PRUNED, ids=lambda c: c.label())
def test_pruned_file_holds_exact_zeros_and_its_bytes_are_the_ledger(tiny_store, cfg):
    run = tiny_store.list_runs()[0]
    record, blob = compress_run(run, cfg, device="cpu")
    tensors, meta = from_bytes(blob)
    state = run.state_dict()
    for info, layer in zip(meta["layers"], layers_from_payload(tensors, meta)):
        weight = state[layer.name]
        expected = magnitude_mask(weight, cfg.sparsity)
        assert layer.mask is not None and torch.equal(layer.mask, expected)
        decoded = layer.decode()
        assert bool((decoded[~expected] == 0).all())  # pruned weights: exact zeros, through fine-tuning too
        kept = n_kept(weight.numel(), cfg.sparsity)
        # the method coded the survivors only: (1, kept) of them
        assert layer.rows == (1, kept)
        assert info["mask"] in ("bitmap", "ans")
    # the shape-only ledger counts the survivors' codes and a bitmap of every weight
    shapes = [tuple(state[info["name"]].shape) for info in meta["layers"]]
    assert record.size.mask_bits == sum(math.prod(s) for s in shapes)
    assert record.size == dataclasses.replace(
        size_report(shapes, record.size.rest_bits // 32, cfg), entropy_code_bits=record.size.entropy_code_bits
    )
    # bytes on disk = the model bits as stored / 8 + under a byte of padding per packed stream + the header
    model_bits = record.size.entropy_model_bits
    if cfg.entropy == "none":
        assert stored_code_bits(tensors, meta) + record.size.codebook_bits + record.size.scale_bits == (
            record.size.fc_bits
        )
    overhead = len(blob) - model_bits / 8 - header_bytes(blob)
    assert 0 <= overhead < 2 * len(meta["layers"])
    assert header_bytes(blob) <= HEADER_BOUND and record.file_bytes == len(blob)


def test_pruning_then_coding_is_smaller_and_keeps_the_float_survivors_close(tiny_store):
    run = tiny_store.list_runs()[0]
    plain, _ = compress_run(run, CompressConfig(method="kmeans", n_centroids=16), device="cpu")
    pruned, _ = compress_run(run, CompressConfig(method="kmeans", n_centroids=16, sparsity=0.5), device="cpu")
    coded, _ = compress_run(
        run, CompressConfig(method="kmeans", n_centroids=16, sparsity=0.5, entropy="ans"), device="cpu"
    )
    assert pruned.size.fc_bits < plain.size.fc_bits  # half the codes, plus 1 bit a weight
    assert coded.size.entropy_fc_bits <= pruned.size.fc_bits


def _payload(run, cfg):
    layers = quantize_model(run.model(), cfg)
    return build_payload(run.state_dict(), layers, run.config, cfg, run.input_shape, run.n_classes)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, m: t.__setitem__("fcs.0.weight.mask", t["fcs.0.weight.mask"] ^ 1), "mask keeps"),
        (lambda t, m: t.__setitem__("fcs.0.weight.mask", t["fcs.0.weight.mask"][:-1].clone()), "its 2,048 weights"),
        (lambda t, m: m["layers"][0].__setitem__("mask", "rle"), "stores its mask as 'rle'"),
        (lambda t, m: t.pop("fcs.0.weight.mask"), "no 1-D U8 fcs.0.weight.mask"),
    ],
)  # fmt: skip
def test_the_reader_refuses_a_bad_mask(tiny_store, change, message):
    run = tiny_store.list_runs()[0]
    tensors, meta = _payload(run, CompressConfig(method="kmeans", n_centroids=4, sparsity=0.6))
    assert meta["layers"][0]["name"] == "fcs.0.weight"
    change(tensors, meta)
    with pytest.raises(NotACompressedModel, match=message):
        from_bytes(to_bytes(tensors, meta))


def test_a_too_narrow_survivor_row_does_not_fit(tiny_store):
    from core.pipeline import get_or_compress
    from core.pq import DoesNotFit

    run = tiny_store.list_runs()[0]
    # the 16 x 10 output layer keeps 2 of 160 weights at s = 0.99: d = 4 is wider than its survivors
    with pytest.raises(DoesNotFit, match="d=4"):
        get_or_compress(tiny_store, run, CompressConfig(method="pq", subvector_size=4, n_centroids=4, sparsity=0.99))


def test_compress_page_prunes_and_draws_the_pruned_weights_apart(lab_store):
    from tests.test_app import PLAIN, assert_clean, open_page

    at = open_page("compress", {"run": PLAIN.run_id(), "method": "kmeans", "k": "4"})
    assert_clean(at)
    at.select_slider(key="sparsity").set_value(0.8).run()
    assert_clean(at)
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    names = [trace.get("name", "") for spec in specs for trace in spec["data"]]
    assert any(name.startswith("pruned weights") for name in names)


def test_the_sweep_grid_carries_both_stages_to_every_coding_method():
    from core.experiments import compression_grid

    cfgs = compression_grid(["float", "kmeans", "pq"], [2], [4], fixed={"entropy": "ans", "sparsity": 0.5})
    by_method = {cfg.method: cfg for cfg in cfgs}
    assert by_method["float"] == CompressConfig(method="float")
    for method in ("kmeans", "pq"):
        assert by_method[method].entropy == "ans" and by_method[method].sparsity == 0.5
