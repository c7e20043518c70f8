"""Residual quantization (core/methods/rq.py): one stage is pq to the bit, exact input is coded
exactly, each stage lowers the error, the file is what the ledger counts, and the CLI runs it."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
import torch

from core.__main__ import main
from core.compress import compress_run
from core.config import CompressConfig
from core.data import load_dataset
from core.export import (
    HEADER_BOUND,
    NotACompressedModel,
    from_bytes,
    header_bytes,
    layers_from_payload,
    load_file,
    to_bytes,
)
from core.methods.rq import residual_quantize
from core.pq import QuantizedLayer, check_fits, quantize_weight, reconstruction_mse
from core.size import code_width, layer_bits
from core.train import evaluate
from tests.marks import fast_cases


def rq(**fields) -> CompressConfig:
    return CompressConfig(method="rq", **fields)


def gaussian(out: int = 48, inp: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "fields",
    [
        dict(subvector_size=4, n_centroids=16),
        dict(subvector_size=3, n_centroids=8, layout="per-chunk", centroid_bits=16),
        dict(subvector_size=1, n_centroids=4, layout="per-chunk", init="random", seed=7),
    ],
)
def test_one_stage_is_pq_bit_for_bit(fields):
    weight = gaussian()
    pq_cfg = CompressConfig(method="pq", **fields)
    assert rq(stages=1, **fields) == pq_cfg  # one stage IS pq: one cache key
    pq_layer = quantize_weight("w", weight, pq_cfg)
    one = residual_quantize("w", weight, pq_cfg)  # pq_cfg.stages == 1
    assert torch.equal(one.codebooks, pq_layer.codebooks) and torch.equal(one.codes, pq_layer.codes)
    assert torch.equal(one.decode(), pq_layer.decode())
    # and the first stage of several is that same k-means
    three = residual_quantize("w", weight, rq(stages=3, **fields))
    groups = pq_layer.codes.shape[0]
    assert torch.equal(three.codebooks[:groups], pq_layer.codebooks)
    assert torch.equal(three.codes[:groups], pq_layer.codes)


def test_exactly_encodable_input_is_coded_exactly():
    # every weight is a coarse value (0, 100, 200, 300) plus a fine one (-1 or +1), each row holding
    # all eight sums: stage 1 (k = 4) finds the coarse values (the mean of each balanced pair),
    # stage 2 (k = 2) the fine ones, and their sums are the weights, to the bit
    values = torch.tensor([c + f for c in (0.0, 100.0, 200.0, 300.0) for f in (-1.0, 1.0)])
    generator = torch.Generator().manual_seed(1)
    weight = torch.stack([values[torch.randperm(8, generator=generator)] for _ in range(40)])
    layer = residual_quantize("w", weight, rq(subvector_size=1, n_centroids=4, stages=2))
    assert torch.equal(layer.decode(), weight)
    one_stage = residual_quantize("w", weight, rq(subvector_size=1, n_centroids=4, stages=2, kmeans_iters=20))
    assert (
        reconstruction_mse(
            weight, QuantizedLayer("w", (40, 8), 1, "shared", one_stage.codebooks[:1], one_stage.codes[:1])
        )
        == 1.0
    )  # stage 1 alone: off by 1
    three = residual_quantize("w", weight, rq(subvector_size=1, n_centroids=4, stages=3))
    assert torch.equal(three.decode(), weight)  # a third stage codes a zero residual as zero


@pytest.mark.parametrize("layout", ["shared", "per-chunk"])
def test_each_stage_lowers_the_error(layout):
    weight = gaussian(64, 32, seed=2)
    errors = [
        reconstruction_mse(weight, residual_quantize("w", weight, rq(subvector_size=4, n_centroids=16, layout=layout,
                                                                       stages=stages)))
        for stages in (1, 2, 3, 4)
    ]  # fmt: skip
    assert all(later < earlier for earlier, later in itertools.pairwise(errors)), errors


def test_bits_are_m_codes_and_m_codebooks_a_subvector():
    shape = (30, 50)  # 50 inputs cut into 13 chunks of 4 (the last one padded)
    for layout, books in (("shared", 1), ("per-chunk", 13)):
        cfg = rq(subvector_size=4, n_centroids=12, layout=layout, stages=3, centroid_bits=16)
        bits = layer_bits("w", shape, cfg)
        assert bits.code_bits == 3 * 30 * 13 * code_width(12) == 3 * 30 * 13 * 4
        assert bits.codebook_bits == 3 * books * 12 * 4 * 16
        assert bits.scale_bits == 0


def test_config_keys_and_labels():
    assert rq(stages=3).label() == "rq M=3 d=8 k=256 shared"
    assert rq(stages=2, subvector_size=1).method == "rq"  # d = 1 with two stages is not kmeans
    assert rq(stages=2, weighting="activations").weighting == "none"  # rq reads no weighting
    # stages is read by rq alone: every other method keeps the key it had
    for method in ("float", "binarize", "kmeans", "pq"):
        assert CompressConfig(method=method, stages=4) == CompressConfig(method=method)
        assert "stages" not in CompressConfig(method=method).to_json()
    with pytest.raises(ValueError, match="stages"):
        rq(stages=0)


RQ_CONFIGS = [
    rq(subvector_size=4, n_centroids=16, stages=2),
    rq(subvector_size=2, n_centroids=8, layout="per-chunk", stages=3, centroid_bits=16),
    rq(subvector_size=4, n_centroids=8, stages=2, finetune_epochs=1),
]


@fast_cases(1)
@pytest.mark.parametrize("cfg", RQ_CONFIGS, ids=lambda c: c.label())
def test_file_size_is_the_accounting_and_loads_back(tiny_store, tmp_path, cfg):
    run = tiny_store.list_runs()[0]
    result, blob = compress_run(run, cfg, device="cpu")
    n_layers = len(run.config.hidden) + 1
    overhead = len(blob) - result.size.model_bits / 8
    assert 0 <= overhead - header_bytes(blob) < n_layers
    assert header_bytes(blob) <= HEADER_BOUND
    path = tmp_path / "model.safetensors"
    path.write_bytes(blob)
    model, _ = load_file(path)
    data = load_dataset("digits")
    assert evaluate(model, data.x_test, data.y_test, torch.device("cpu")) == result.accuracy
    layers = layers_from_payload(*from_bytes(blob))
    assert [layer.stages for layer in layers] == [cfg.stages] * n_layers
    assert all(layer.codes.shape[0] == layer.codebooks.shape[0] for layer in layers)


def test_reader_refuses_a_file_whose_stages_disagree(tiny_store):
    run = tiny_store.list_runs()[0]
    _, blob = compress_run(run, RQ_CONFIGS[0], device="cpu")
    tensors, meta = from_bytes(blob)
    for bad in (3, True, "2"):
        edited = json.loads(json.dumps(meta))
        edited["layers"][0]["stages"] = bad
        with pytest.raises(NotACompressedModel, match="stages"):
            from_bytes(to_bytes(tensors, edited))
    edited = json.loads(json.dumps(meta))
    del edited["layers"][0]["stages"]
    with pytest.raises(NotACompressedModel, match="exactly the keys"):
        from_bytes(to_bytes(tensors, edited))


def test_per_chunk_needs_k_rows_in_every_stage():
    with pytest.raises(ValueError, match="per-chunk"):
        check_fits([("w", (10, 40))], rq(subvector_size=4, n_centroids=16, layout="per-chunk", stages=2))
    assert isinstance(residual_quantize("w", gaussian(10, 40), rq(n_centroids=8, stages=2)), QuantizedLayer)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out, _ = capsys.readouterr()
    return code, out


@pytest.mark.slow
def test_cli_compresses_and_sweeps_rq(capsys, tmp_path):
    cache = str(tmp_path / "cache")
    train = ["--dataset", "digits", "--hidden", "32", "16", "--epochs", "1", "--lr", "3e-3"]
    code, out = run_cli(capsys, "train", *train, "--cache-dir", cache, "--json")
    assert code == 0
    run_id = json.loads(out)["run_id"]
    model_file = tmp_path / "rq.safetensors"
    code, out = run_cli(
        capsys, "compress", run_id, "--method", "rq", "--stages", "2", "-d", "4", "-k", "16",
        "--out", str(model_file), "--cache-dir", cache, "--json",
    )  # fmt: skip
    assert code == 0
    compressed = json.loads(out)
    assert compressed["file_bytes"] == model_file.stat().st_size
    assert load_file(model_file)[1]["compress_config"]["stages"] == 2
    code, out = run_cli(capsys, "evaluate", str(model_file), "--json")
    assert code == 0 and json.loads(out)["accuracy"] == compressed["accuracy"]

    table = tmp_path / "sweep.csv"
    code, _ = run_cli(
        capsys, "sweep", *train, "--reg", "none", "--lam", "0", "--method", "pq", "rq", "-d", "4", "-k", "16",
        "--stages", "1", "2", "3", "--cache-dir", cache, "--csv", str(table),
    )  # fmt: skip
    assert code == 0
    with table.open() as file:
        labels = [row["label"] for row in csv.DictReader(file)]
    # pq, and rq at 1 stage (which is pq: one point), 2 and 3 stages
    assert labels == ["pq d=4 k=16 shared", "rq M=2 d=4 k=16 shared", "rq M=3 d=4 k=16 shared"]


@pytest.mark.slow
def test_compress_page_draws_the_stages_control_for_rq_only(tiny_store, monkeypatch):
    app_test = pytest.importorskip("streamlit.testing.v1").AppTest
    monkeypatch.setenv("COMPRESSION_LAB_CACHE", str(tiny_store.root))
    run_id = tiny_store.list_runs()[0].run_id

    def page(query: dict) -> object:
        at = app_test.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60)
        at.query_params.update(query)
        at.run()
        at.switch_page("views/compress.py")
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        return at

    at = page({"run": run_id, "method": "rq", "stages": "3", "d": "2", "k": "4"})
    assert at.select_slider(key="stages").value == 3
    assert any("rq M=3 d=2 k=4 shared" in str(h.value) for h in at.subheader)
    at.select_slider(key="stages").set_value(2).run()
    assert any("rq M=2 d=2 k=4 shared" in str(h.value) for h in at.subheader)
    at = page({"run": run_id, "method": "pq", "d": "2", "k": "4"})
    assert "stages" not in [slider.key for slider in at.select_slider]
