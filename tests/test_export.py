"""The exported file: its bytes match the accounting (and are those written before export.py was split),
loading it gives the reported accuracy, the reader's model is the network's, and the store checks a
file once on its way to the page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from core.compress import compress_run
from core.config import MODELS, CompressConfig, TrainConfig
from core.data import DATASET_SOURCES, load_dataset
from core.export import (
    HEADER_BOUND,
    NotACompressedModel,
    build_module_payload,
    build_payload,
    from_bytes,
    header_bytes,
    layers_from_payload,
    load_file,
    module_from_bytes,
    pack_codes,
    save_file,
    to_bytes,
    unpack_codes,
)
from core.methods import quantize_model
from core.models import MODEL_BUILDERS, build_model, coded_weights
from core.modelshapes import SHAPE_BUILDERS, coded_weight_names, state_entries
from core.pipeline import get_or_compress
from core.records import sha256
from core.store import RunStore
from core.train import evaluate
from tests.marks import fast_cases

CONFIGS = [
    CompressConfig(method="float"),
    CompressConfig(method="binarize"),
    CompressConfig(method="kmeans", n_centroids=16),
    CompressConfig(method="pq", subvector_size=4, n_centroids=32),
    CompressConfig(method="pq", subvector_size=3, n_centroids=5, layout="per-chunk", centroid_bits=16),
    CompressConfig(method="pq", subvector_size=2, n_centroids=8, finetune_epochs=1),
]


@pytest.mark.parametrize("bits", [1, 3, 8, 11, 16])
def test_pack_unpack_round_trip(bits):
    codes = torch.randint(0, 2**bits, (3, 37), generator=torch.Generator().manual_seed(bits))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-3 * 37 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, 3 * 37).reshape(3, 37), codes)


@fast_cases(3)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.label())
def test_export_round_trip(tiny_store, tmp_path, cfg):
    run = tiny_store.list_runs()[0]
    result, blob = compress_run(run, cfg, device="cpu")
    path = tmp_path / "model.safetensors"
    save_file(path, blob)
    assert path.stat().st_size == result.file_bytes == len(blob)

    # Bytes on disk = accounted bits / 8 + under a byte of padding per FC layer + the header.
    n_layers = len(run.config.hidden) + 1
    overhead = result.file_bytes - result.size.model_bits / 8
    assert 0 <= overhead - header_bytes(blob) < n_layers
    assert header_bytes(blob) <= HEADER_BOUND

    model, meta = load_file(path)
    data = load_dataset("digits")
    assert evaluate(model, data.x_test, data.y_test, torch.device("cpu")) == result.accuracy == meta["accuracy"]
    if cfg.method in ("kmeans", "pq"):
        layers = layers_from_payload(*from_bytes(blob))
        assert layers[0].codebooks.shape[1] == cfg.n_centroids


def test_float_export_is_the_trained_model(tiny_store):
    run = tiny_store.list_runs()[0]
    result, _ = compress_run(run, CompressConfig(method="float"), device="cpu")
    assert result.accuracy == run.test_accuracy and result.size.fc_ratio == 1


def test_a_compression_reads_the_runs_weights_once(tiny_store):
    """The run's weights are read (and their sha256 checked) once a compression; the file is the same."""
    run = tiny_store.list_runs()[0]
    reads = []

    class CountingWeights:
        def load(self):
            reads.append(1)
            return run.state_dict()

    cfg = CompressConfig(method="pq", subvector_size=2, n_centroids=4)
    record, blob = compress_run(run.with_weights(CountingWeights()), cfg, device="cpu")
    assert len(reads) == 1
    assert blob == compress_run(run, cfg, device="cpu")[1] and record.accuracy == meta_accuracy(blob)


def meta_accuracy(blob: bytes) -> float:
    return from_bytes(blob)[1]["accuracy"]


def test_not_a_compressed_model(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"hello, not a model")
    with pytest.raises(NotACompressedModel, match="not a compressed model"):
        load_file(bad)
    with pytest.raises(NotACompressedModel, match="no file"):
        load_file(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file as st_save_file

    st_save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(NotACompressedModel):
        load_file(tmp_path / "plain.safetensors")


# ------------------------------------------------------------------- the split changed no byte

# sha256 of the file of a seeded, untrained 64-32-16-10 MLP (the digits shapes) coded by each
# setting, computed on main before export.py was split into fileformat / filewriter / filereader /
# filemodel (commit b907dbf): the writer must write the same bytes, byte for byte.
TINY_TRAIN = TrainConfig(dataset="digits", model="mlp", hidden=(32, 16), epochs=1)
TINY_INPUT = (1, 8, 8)
WRITTEN_BEFORE = {
    "float": ("e678926b870fc93a5d700d55b2279aec6f0901d96d3211f7638c82d02bda000e", {"method": "float"}),
    "binarize": ("ea1f7d66407cd0a714e77b38caecb236cda71471f89f552e21b1b84712a3af76", {"method": "binarize"}),
    "kmeans": (
        "28abed68717a5b9de621c31a157ef154626d68b7c9a37fca4d4f387506741173",
        {"method": "kmeans", "n_centroids": 16},
    ),
    "pq-shared": (
        "87be9f590d42eccf256129c1fd3dd5f0027a841f35a3f476823f95ecba93e9cd",
        {"method": "pq", "subvector_size": 3, "n_centroids": 5},
    ),
    "pq-per-chunk-fp16": (
        "d84cd7756909cc69578206a354a3f39860d2544e7c4536965a7b6eab36c7cb7e",
        {"method": "pq", "subvector_size": 4, "n_centroids": 8, "layout": "per-chunk", "centroid_bits": 16},
    ),
    "rq": (
        "aae874d485feebcb2f5aec7707ab5b30b1e613ab96938ed8adf0319f46dc87fb",
        {"method": "rq", "subvector_size": 2, "n_centroids": 4, "stages": 2},
    ),
    "pq-ans-pruned": (
        "6340f5c04f668a9b64b48ac82d4cb0e33e637dd7c62a3e661589040cdd7dde95",
        {"method": "pq", "subvector_size": 2, "n_centroids": 16, "entropy": "ans", "sparsity": 0.5},
    ),
    "kmeans-bitmap": (
        "6f7304ebbe66e21d00abf93e87b3374e9f7318ea1ca6bea41879b5526df9964d",
        {"method": "kmeans", "n_centroids": 4, "sparsity": 0.25},
    ),
}
MODULE_WRITTEN_BEFORE = "bd26e38366de5d84b90443a9716c76e52abd6b4742febea4c74daa54174ba374"


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY_TRAIN.model, TINY_INPUT, 10, TINY_TRAIN.hidden)


@pytest.mark.parametrize("name", list(WRITTEN_BEFORE))
def test_the_file_is_byte_identical_to_what_was_written_before_the_split(name):
    digest, settings = WRITTEN_BEFORE[name]
    cfg = CompressConfig(**settings)
    model = tiny_model()
    extra = {"run_id": TINY_TRAIN.run_id(), "accuracy": 0.5, "dataset": TINY_TRAIN.dataset}
    payload = build_payload(model.state_dict(), quantize_model(model, cfg), TINY_TRAIN, cfg, TINY_INPUT, 10, extra)
    blob = to_bytes(*payload)
    assert sha256(blob) == digest
    tensors, meta = from_bytes(blob)  # and the reader takes it back, tensor for tensor
    assert meta == json.loads(json.dumps(payload[1]))
    assert set(tensors) == set(payload[0])
    assert all(torch.equal(tensors[key], value) for key, value in payload[0].items())


def test_a_module_file_is_byte_identical_to_what_was_written_before_the_split():
    model = tiny_model()
    cfg = CompressConfig(method="pq", subvector_size=2, n_centroids=8, entropy="ans")
    layers = quantize_model(model, cfg)
    coded = {layer.name for layer in layers}
    rest = {key: value for key, value in model.state_dict().items() if key not in coded}
    assert sha256(to_bytes(*build_module_payload(rest, layers, cfg))) == MODULE_WRITTEN_BEFORE


def test_a_bfloat16_tensor_of_a_module_file_comes_back_as_it_was():
    """numpy has no bfloat16: the reader holds one as its raw bits, and it comes back to torch intact."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    model.register_buffer("scale", torch.tensor([0.5, -2.0, 3.25], dtype=torch.bfloat16))
    cfg = CompressConfig(method="pq", subvector_size=2, n_centroids=4)
    layers = quantize_model(model, cfg, [("0.weight", model[0].weight)])
    rest = {key: value for key, value in model.state_dict().items() if key != "0.weight"}
    tensors, _ = module_from_bytes(to_bytes(*build_module_payload(rest, layers, cfg)), model)
    assert tensors["scale"].dtype == torch.bfloat16 and torch.equal(tensors["scale"], model.scale)
    bad = dict(rest, scale=torch.tensor([float("nan"), 1.0, 2.0], dtype=torch.bfloat16))
    with pytest.raises(NotACompressedModel, match="tensor scale holds NaN or infinite values"):
        module_from_bytes(to_bytes(*build_module_payload(bad, layers, cfg)), model)


# ---------------------------------------------------------- the reader's model, without torch

ODD_INPUTS = [(1, 1, 1), (1, 3, 3), (1, 4, 4), (1, 5, 9), (1, 8, 8), (2, 12, 12), (1, 15, 16), (1, 16, 16)]
ODD_INPUTS += [(3, 17, 19), (1, 28, 28), (3, 32, 32), (1, 2, 40)]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("input_shape", [*{s.input_shape for s in DATASET_SOURCES.values()}, *ODD_INPUTS])
def test_the_shapes_the_reader_counts_are_the_networks_own(model, input_shape):
    """The reader checks a file against the state dict counted by arithmetic (core/modelshapes.py):
    key for key, shape for shape, in order, the networks' own; and it refuses the inputs the
    networks refuse."""
    try:
        with torch.device("meta"):
            net = build_model(model, input_shape, 10, (7, 5))
    except RuntimeError:
        with pytest.raises(ValueError):
            state_entries(model, input_shape, 10, (7, 5))
        return
    entries = state_entries(model, input_shape, 10, (7, 5))
    assert [(e.key, e.shape) for e in entries] == [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    for targets in ("fc", "fc+conv"):
        assert coded_weight_names(entries, targets) == [name for name, _ in coded_weights(net, targets)]


def test_the_shape_builders_are_the_networks():
    assert tuple(SHAPE_BUILDERS) == tuple(MODEL_BUILDERS) == MODELS


# ----------------------------------------------------------------- verified once on its way


def test_a_stored_file_is_checked_once_on_its_way_to_the_page(tiny_store, tmp_path, monkeypatch):
    """The store's look after a job, the pages' listing and the page that draws the layers each
    served the file after checking it again (three checks of one file); now the reader's checks run
    once for each content of the file, and a file whose bytes changed is checked again."""
    import core.filereader
    import core.store
    from ui.common import compression_plot_data

    root = tmp_path / "store"
    shutil.copytree(tiny_store.root / "runs", root / "runs")
    store = RunStore(root)
    run = store.list_runs()[0]
    cfg = CompressConfig(method="pq", subvector_size=2, n_centroids=4)
    get_or_compress(store, run, cfg)
    core.store._VERIFIED_FILES.clear()
    checks = []
    real_check = core.filereader.check_bytes
    monkeypatch.setattr(core.filereader, "check_bytes", lambda *a, **k: checks.append(1) or real_check(*a, **k))

    record, cached = get_or_compress(store, run, cfg)  # the pipeline's look
    assert cached and store.load_compression_entry(run.run_id, record.key) == record  # the pages' listing
    assert record.file_path is not None
    picture = compression_plot_data(record.file_path, record.file_bytes, run.run_id, str(root), run.layers[0].name)
    assert picture["kind"] == "scatter" and len(picture["centroids"]) == 4  # the page's drawing
    assert len(checks) == 1

    path = Path(record.file_path)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF  # another content: not the bytes that were checked
    path.write_bytes(bytes(blob))
    assert store.load_compression(run.run_id, cfg) is None  # the envelope's sha256 no longer matches
    assert store.load_compression_payload(run.run_id, record.key) is None
    assert len(checks) == 1


def test_bytes_the_store_vouches_for_but_the_reader_refuses_are_refused_every_time(tiny_store, tmp_path):
    """A file that fails the reader's checks is never remembered: it is refused at every look."""
    import core.store
    from core.store import _envelope

    root = tmp_path / "store"
    shutil.copytree(tiny_store.root / "runs", root / "runs")
    store = RunStore(root)
    run = store.list_runs()[0]
    cfg = CompressConfig(method="binarize")
    record, _ = get_or_compress(store, run, cfg)
    json_path, file_path = store.compression_paths(run.run_id, record.key)
    tensors, meta = from_bytes(file_path.read_bytes())
    meta["n_classes"] = 1  # below what a classifier has: the reader refuses it
    bad = to_bytes(tensors, meta)
    file_path.write_bytes(bad)
    envelope = json.loads(json_path.read_text())
    json_path.write_bytes(_envelope(envelope["record"] | {"file_bytes": len(bad)}, sha256(bad), "file_sha256"))
    for _ in range(2):
        assert store.load_compression(run.run_id, cfg) is None
        assert sha256(bad) not in core.store._VERIFIED_FILES
