"""The exported file: its bytes match the accounting, and loading it gives the reported accuracy."""

from __future__ import annotations

import pytest
import torch

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
    pack_codes,
    save_file,
    unpack_codes,
)
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
