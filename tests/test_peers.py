"""The peers (core/methods/coreml.py, torchao_codebook.py): through their real packages on a tiny run,
the size our ledger counts equals what the peer stores, every decoded weight is one of its LUT entries,
and our evaluation of the file equals the peer's own module's output. CI installs requirements-peers.txt,
so these run there; they skip only where a package is absent."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch

from core.compress import compress_run
from core.config import CompressConfig, TrainConfig
from core.data import load_dataset
from core.export import model_from_payload, read_payload
from core.methods import lut
from core.methods.coreml import LUT_BUFFER, coreml_palettized
from core.models import coded_weights
from core.pq import DoesNotFit, check_fits
from core.size import code_width
from core.train import evaluate
from tests.marks import fast_cases
from tests.tiny import TINY

# The tiny run's FC weights are (32, 64), (16, 32), (10, 16): a group of 2 rows, vectors of 2 fit all.
COREML_SETTINGS = [
    dict(n_centroids=4, subvector_size=1),  # 2-bit, one LUT a tensor
    dict(n_centroids=16, subvector_size=1, group_size=2),  # 4-bit, per grouped channel
    dict(n_centroids=8, subvector_size=2),  # 3-bit vectors of 2 output channels
]
TORCHAO_SETTINGS = [dict(n_centroids=4), dict(n_centroids=2, group_size=2)]


@pytest.fixture(scope="module")
def tiny_run(tiny_store):
    return tiny_store.load_run(TrainConfig(**TINY).run_id())


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _coreml_reference(model: torch.nn.Module, cfg: CompressConfig) -> torch.nn.Module:
    """coremltools' PostTrainingPalettizer on each FC layer of the model (with its bias), seeded as the
    adapter seeds it."""
    pytest.importorskip("coremltools")
    for index, layer in enumerate(model.fcs):
        model.fcs[index] = coreml_palettized(layer, cfg)
    return model


def _torchao_reference(model: torch.nn.Module, cfg: CompressConfig) -> torch.nn.Module:
    quantization = pytest.importorskip("torchao.quantization")
    codebook = pytest.importorskip("torchao.prototype.quantization.codebook_coreml")
    n_bits = cfg.n_centroids.bit_length() - 1
    config = codebook.CodebookWeightOnlyConfig(
        dtype=getattr(torch, f"uint{n_bits}"), block_size=[cfg.group_size or -1, -1]
    )
    model = copy.deepcopy(model)
    quantization.quantize_(model, config)
    return model


def _stored_bits_coreml(palettized: torch.nn.Module, cfg: CompressConfig) -> int:
    """What coremltools stores: its LUT buffers (at the centroid precision) and an n_bits index for
    each vector of cluster_dim weights."""
    total = 0
    for module in palettized.modules():
        buffers = dict(module.named_buffers(recurse=False))
        if LUT_BUFFER in buffers:
            total += buffers[LUT_BUFFER].numel() * cfg.centroid_bits
            total += module.weight.numel() // cfg.subvector_size * code_width(cfg.n_centroids)
    return total


def _stored_bits_torchao(quantized: torch.nn.Module, cfg: CompressConfig) -> int:
    """What torchao stores: its codebooks and its codes (one a weight, each of the code dtype's bits)."""
    total = 0
    for module in quantized.modules():
        weight = getattr(module, "weight", None)
        if weight is not None and hasattr(weight, "codebook"):
            total += weight.codebook.numel() * cfg.centroid_bits
            total += weight.codes.numel() * int(str(weight.code_dtype).removeprefix("torch.uint"))
    return total


def _check_against_peer(run, digits, cfg, reference, stored_bits):
    record, blob = compress_run(run, cfg, data=digits)
    peer = reference(run.model(), cfg).eval()
    # size: our ledger counts exactly what the peer stores
    assert record.size.fc_bits == stored_bits(peer, cfg)
    tensors, meta = read_payload(blob)
    ours = model_from_payload(tensors, meta).eval()
    # every decoded weight is one of its LUT's 2^n_bits entries (rows of cluster_dim values)
    for name, weight in coded_weights(ours, "fc"):
        luts = tensors[f"{name}.luts"].float()
        n_groups, k, dim = luts.shape
        assert k == cfg.n_centroids
        vectors = lut.to_lut_vectors(weight.detach().reshape(weight.shape[0], -1), n_groups, dim)
        for group in range(n_groups):
            distinct = torch.unique(vectors[group], dim=0)
            assert len(distinct) <= k
            assert all((luts[group] == row).all(-1).any() for row in distinct)
        peer_weight = dict(peer.named_parameters())[name].detach()
        if hasattr(peer_weight, "codebook"):  # torchao's CodebookQuantizedTensor
            peer_weight = peer_weight.dequantize()
        assert torch.equal(weight, peer_weight)
    # our evaluation of the file is the peer's own module's output
    x = digits.x_test[:200]
    with torch.no_grad():
        assert torch.equal(ours(x), peer(x))
    assert record.accuracy == evaluate(peer, digits.x_test, digits.y_test)


@fast_cases(1)
@pytest.mark.parametrize("setting", COREML_SETTINGS, ids=lambda s: CompressConfig(method="coreml", **s).label())
def test_coreml_size_and_output_are_the_peers(tiny_run, digits, setting):
    pytest.importorskip("coremltools")
    cfg = CompressConfig(method="coreml", **setting)
    _check_against_peer(tiny_run, digits, cfg, _coreml_reference, _stored_bits_coreml)


@fast_cases(1)
@pytest.mark.parametrize("setting", TORCHAO_SETTINGS, ids=lambda s: CompressConfig(method="torchao", **s).label())
def test_torchao_size_and_output_are_the_peers(tiny_run, digits, setting):
    pytest.importorskip("torchao")
    pytest.importorskip("coremltools")
    cfg = CompressConfig(method="torchao", **setting)
    _check_against_peer(tiny_run, digits, cfg, _torchao_reference, _stored_bits_torchao)


def test_float16_luts_are_counted_and_stored_at_16_bits(tiny_run, digits):
    pytest.importorskip("coremltools")
    cfg32 = CompressConfig(method="coreml", n_centroids=4, subvector_size=1)
    cfg16 = CompressConfig(method="coreml", n_centroids=4, subvector_size=1, centroid_bits=16)
    record32, _ = compress_run(tiny_run, cfg32, data=digits)
    record16, blob = compress_run(tiny_run, cfg16, data=digits)
    assert record32.size.codebook_bits == 2 * record16.size.codebook_bits == 3 * 4 * 32
    tensors, _ = read_payload(blob)
    assert tensors["fcs.0.weight.luts"].dtype == torch.float16


@pytest.mark.parametrize(
    ("method", "setting", "says"),
    [
        ("coreml", dict(n_centroids=8, subvector_size=4), "cluster_dim=4"),  # 4 does not divide 10 rows
        ("coreml", dict(n_centroids=8, subvector_size=1, group_size=3), "each 3 output channels"),
        ("coreml", dict(n_centroids=12, subvector_size=1), "k=12 is not one of"),
        ("torchao", dict(n_centroids=512), "k=512 is not one of"),
    ],
)
def test_a_setting_the_peer_cannot_express_is_one_line(tiny_run, method, setting, says):
    pytest.importorskip("coremltools")
    if method == "torchao":
        pytest.importorskip("torchao")
    cfg = CompressConfig(method=method, **setting)
    shapes = [(layer.name, layer.shape) for layer in tiny_run.layers]
    with pytest.raises(DoesNotFit, match=says) as error:
        check_fits(shapes, cfg)
    assert "\n" not in str(error.value)


def test_torchao_codes_linear_layers_only():
    pytest.importorskip("torchao")
    pytest.importorskip("coremltools")
    with pytest.raises(DoesNotFit, match="linear layers only"):
        check_fits([("conv.weight", (20, 1, 5, 5))], CompressConfig(method="torchao", n_centroids=4, targets="fc+conv"))


@pytest.mark.parametrize(("method", "package"), [("coreml", "coremltools"), ("torchao", "torchao")])
def test_a_missing_package_is_one_line_naming_it(monkeypatch, method, package):
    real = importlib.import_module

    def without(name, *args, **kwargs):
        if name.split(".")[0] == package:
            raise ImportError(f"No module named {package!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without)
    with pytest.raises(DoesNotFit, match=f"needs the package {package}, which is not installed") as error:
        check_fits([("fcs.0.weight", (32, 64))], CompressConfig(method=method, n_centroids=4, subvector_size=1))
    assert "requirements-peers.txt" in str(error.value)


@pytest.mark.slow
def test_nncf_codebook_compression_does_not_apply_to_a_pytorch_model():
    """Why no NNCF method is registered: its codebook modes run on OpenVINO models only; on a torch
    model compress_weights refuses them (nncf 3.4)."""
    nncf = pytest.importorskip("nncf")
    model = torch.nn.Sequential(torch.nn.Linear(16, 8))
    with pytest.raises(nncf.ParameterNotSupportedError, match="does not support"):
        nncf.compress_weights(model, mode=nncf.CompressWeightsMode.CODEBOOK, dataset=nncf.Dataset([torch.zeros(1, 16)]))
