"""Entropy coding of the codes (core/entropy.py): exact round trips, the ledger's entropy line equal to
what the file holds, the reader's checks, and the config key kept for every setting without it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import core
from core import entropy
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
from core.size import SizeReport
from tests.marks import fast_cases


def _skewed(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.3))
    return rng.choice(k, size=n, p=p)


@pytest.mark.parametrize("k", [2, 5, 32, 257])
def test_encode_decode_round_trip_near_the_entropy(k):
    codes = _skewed(5_000, k, seed=k)
    coded = entropy.encode(codes, k)
    assert coded.counts.sum() == len(codes) and len(coded.counts) == k
    assert np.array_equal(entropy.decode(coded.stream, coded.counts), codes)
    # the stream is within a word or two (and the leaky model's tiny cost) of n x H
    bound = len(codes) * entropy.entropy_bits_per_code(codes, k)
    assert 32 * len(coded.stream) <= bound * 1.01 + 64
    assert coded.bits == 32 * len(coded.stream) + 32 * k


def test_a_single_code_repeated_costs_almost_nothing():
    codes = np.full(10_000, 3)
    coded = entropy.encode(codes, 8)
    assert np.array_equal(entropy.decode(coded.stream, coded.counts), codes)
    assert len(coded.stream) <= 2


def test_decode_refuses_what_the_counts_do_not_describe():
    codes = _skewed(1_000, 8, seed=1)
    coded = entropy.encode(codes, 8)
    with pytest.raises(ValueError, match=r"more than|distributed"):  # another model: another decoding
        wrong = coded.counts.copy()
        wrong[0] += 1
        wrong[1] -= 1
        entropy.decode(coded.stream, wrong)
    with pytest.raises(ValueError, match="more than"):
        entropy.decode(np.concatenate([coded.stream, coded.stream]), coded.counts)
    with pytest.raises(ValueError, match="non-negative"):
        entropy.decode(coded.stream, np.zeros(8, dtype=np.int64))


# ------------------------------------------------------------------------------------ the config


def test_default_keys_are_unchanged_and_the_stage_survives_every_coding_method():
    assert CompressConfig().to_json() == {k: v for k, v in CompressConfig().to_json().items() if k != "entropy"}
    assert "entropy" not in CompressConfig(method="kmeans").to_json()
    assert CompressConfig(entropy="ans").key() != CompressConfig().key()
    for method in ("binarize", "kmeans", "pq", "rq"):
        cfg = CompressConfig(method=method, entropy="ans")
        assert cfg.entropy == "ans" and cfg.label().endswith("+ans")
        assert CompressConfig.from_dict(cfg.to_json()) == cfg
    assert CompressConfig(method="float", entropy="ans") == CompressConfig(method="float")
    # pq d=1 shared is kmeans, with the stage kept
    assert CompressConfig(method="pq", subvector_size=1, entropy="ans") == CompressConfig(
        method="kmeans", entropy="ans"
    )


def test_an_unknown_coder_is_one_line():
    with pytest.raises(ValueError, match=r"unknown entropy coder 'huffman'; choose one of: none, ans"):
        CompressConfig(entropy="huffman")


# ---------------------------------------------------------------------------------- the file


ENTROPY_CONFIGS = [
    CompressConfig(method="binarize", entropy="ans"),
    CompressConfig(method="kmeans", n_centroids=16, entropy="ans"),
    CompressConfig(method="pq", subvector_size=2, n_centroids=16, entropy="ans"),
    CompressConfig(method="pq", subvector_size=2, n_centroids=4, layout="per-chunk", entropy="ans"),
    CompressConfig(method="rq", subvector_size=2, n_centroids=8, stages=2, entropy="ans"),
]


@fast_cases(2)
@pytest.mark.parametrize("cfg", ENTROPY_CONFIGS, ids=lambda c: c.label())
def test_entropy_coded_file_decodes_to_the_raw_codes_and_its_bytes_are_the_ledger(tiny_store, cfg):
    run = tiny_store.list_runs()[0]
    record, blob = compress_run(run, cfg, device="cpu")
    raw_cfg = dataclasses.replace(cfg, entropy="none")
    raw_record, raw_blob = compress_run(run, raw_cfg, device="cpu")

    # the same tensors: every code, every codebook, and so the same accuracy
    coded = layers_from_payload(*from_bytes(blob))
    raw = layers_from_payload(*from_bytes(raw_blob))
    assert [layer.name for layer in coded] == [layer.name for layer in raw]
    for a, b in zip(coded, raw):
        assert torch.equal(a.codes, b.codes) and torch.equal(a.codebooks, b.codebooks)
    assert record.accuracy == raw_record.accuracy

    # the ledger: the shape-only lines unchanged, the entropy line at most the packed codes
    assert record.size.fc_bits == raw_record.size.fc_bits
    assert record.size.entropy_code_bits is not None and raw_record.size.entropy_code_bits is None
    assert record.size.entropy_code_bits <= record.size.code_bits
    assert record.size.entropy_fc_ratio >= record.size.fc_ratio

    # bytes on disk = entropy-coded model bits / 8 + under a byte of padding per packed layer + the header
    _, meta = from_bytes(blob)
    n_packed = sum(info["entropy"] == "none" for info in meta["layers"])
    overhead = len(blob) - record.size.entropy_model_bits / 8 - header_bytes(blob)
    assert 0 <= overhead < max(1, n_packed)
    assert header_bytes(blob) <= HEADER_BOUND
    assert record.file_bytes == len(blob)


@pytest.mark.parametrize("k", [4, 16])
def test_a_layer_is_entropy_coded_exactly_when_that_is_smaller(tiny_store, k):
    run = tiny_store.list_runs()[0]
    cfg = CompressConfig(method="kmeans", n_centroids=k, entropy="ans")
    record, blob = compress_run(run, cfg, device="cpu")
    tensors, meta = from_bytes(blob)
    for info, layer in zip(meta["layers"], layers_from_payload(tensors, meta)):
        packed = layer.codes.numel() * info["code_bits"]
        smaller = entropy.encode(layer.codes.numpy(), k).bits < packed
        assert info["entropy"] == ("ans" if smaller else "none")
    assert stored_code_bits(tensors, meta) == record.size.entropy_code_bits


def _tampered(run, cfg, change) -> bytes:
    model = run.model()
    from core.methods import quantize_model

    # skewed codes (a valid file, other codes): the first layer's stream is then surely entropy-coded
    layers = [
        dataclasses.replace(layer, codes=torch.where(layer.codes < 12, 0, layer.codes))
        for layer in quantize_model(model, cfg)
    ]
    tensors, meta = build_payload(run.state_dict(), layers, run.config, cfg, run.input_shape, run.n_classes)
    change(tensors, meta)
    return to_bytes(tensors, meta)


def _first_ans(meta: dict) -> str:
    return next(info["name"] for info in meta["layers"] if info["entropy"] == "ans")


@fast_cases(2)
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, m: t[f"{_first_ans(m)}.code_counts"].__setitem__(0, t[f"{_first_ans(m)}.code_counts"][0] + 1),
         "code counts do not sum"),
        (lambda t, m: t.__setitem__(f"{_first_ans(m)}.codes", t[f"{_first_ans(m)}.codes"][:-4].clone()),
         "ANS stream is not valid"),
        (lambda t, m: t.__setitem__(f"{_first_ans(m)}.codes", t[f"{_first_ans(m)}.codes"][:-1].clone()),
         "whole 32-bit words"),
        (lambda t, m: t.pop(f"{_first_ans(m)}.code_counts"), "code_counts is missing"),
        (lambda t, m: m["layers"][0].__setitem__("entropy", "huffman"), "stores its codes as 'huffman'"),
        (lambda t, m: m["layers"][0].pop("entropy"), "does not have exactly the keys"),
    ],
)  # fmt: skip
def test_the_reader_refuses_a_tampered_stream(tiny_store, change, message):
    run = tiny_store.list_runs()[0]
    blob = _tampered(run, CompressConfig(method="kmeans", n_centroids=16, entropy="ans"), change)
    with pytest.raises(NotACompressedModel, match=message):
        from_bytes(blob)


def test_size_report_json_keeps_the_entropy_line_and_old_reports_read():
    report = SizeReport(10, 5, 0, 15, 320, 64, 79, 384, 320 / 15, 384 / 79, entropy_code_bits=7)
    data = report.to_json()
    assert SizeReport.from_json(data) == report
    assert report.entropy_fc_bits == 12 and report.entropy_model_bits == 76
    old = dataclasses.replace(report, entropy_code_bits=None)
    assert "entropy_code_bits" not in old.to_json() and SizeReport.from_json(old.to_json()) == old
    assert old.entropy_fc_ratio == old.fc_ratio
    with pytest.raises(ValueError, match="entropy_code_bits"):
        SizeReport.from_json(data | {"entropy_code_bits": -3})


def test_api_compress_save_load_with_entropy_coding(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    with torch.no_grad():  # heavy-tailed weights: k-means then uses its codes unevenly
        model[0].weight.copy_(torch.randn(48, 64) ** 3)
    cfg = CompressConfig(method="kmeans", n_centroids=8, entropy="ans")
    packed = core.compress(model, cfg)
    path = tmp_path / "m.safetensors"
    written = core.save(packed, path)
    totals = packed.size.totals
    assert totals.entropy_code_bits is not None and totals.entropy_code_bits < totals.code_bits
    blob = path.read_bytes()
    assert 0 <= written - totals.entropy_model_bits / 8 - header_bytes(blob) < 2
    into = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    loaded = core.load(path, into)
    for key, value in packed.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    tensors, meta = core.export.module_from_bytes(blob, into)
    assert stored_code_bits(tensors, meta) == totals.entropy_code_bits


@pytest.mark.slow
def test_cli_entropy_flag_writes_the_file_the_ledger_counts(capsys, tmp_path):
    from tests.test_cli import TRAIN, run_cli

    cache = str(tmp_path / "cache")
    code, out, _ = run_cli(capsys, *TRAIN, "--cache-dir", cache, "--json")
    run_id = json.loads(out)["run_id"]
    model_file = tmp_path / "m.safetensors"
    args = ("compress", run_id, "--method", "kmeans", "-k", "4", "--entropy", "ans", "--cache-dir", cache)
    code, out, _ = run_cli(capsys, *args, "--out", str(model_file), "--json")
    assert code == 0
    row = json.loads(out)
    assert row["entropy"] == "ans" and row["entropy_fc_bits"] <= row["fc_bits"]
    blob = model_file.read_bytes()
    assert row["file_bytes"] == len(blob)
    assert 0 <= len(blob) - row["entropy_model_bits"] / 8 - header_bytes(blob) < 3
    code, _, err = run_cli(capsys, *args[:-2], "--entropy", "huffman", "--cache-dir", cache)
    assert code == 2 and "huffman" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_compress_page_entropy_control_and_frontier_switch(lab_store):
    from tests.test_app import PLAIN, assert_clean, metric, open_page

    at = open_page("compress", {"run": PLAIN.run_id(), "method": "kmeans", "k": "4"})
    assert_clean(at)
    at.radio(key="entropy").set_value("ans").run()
    assert_clean(at)
    coded = float(metric(at, "FC ratio, entropy-coded").rstrip("x").replace(",", ""))
    raw = float(metric(at, "FC ratio").rstrip("x").replace(",", ""))
    assert coded >= raw
    at = open_page("frontier")
    assert_clean(at)
    at.toggle(key="entropy_sizes").set_value(True).run()
    assert_clean(at)
    assert at.get("plotly_chart")
