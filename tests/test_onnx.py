"""The ONNX export: every method's graph, run in ONNX Runtime, gives what our own decode gives; the
codes stay coded in the file; decompress; the CLI; bad input is one line and writes nothing."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

import core
from core.__main__ import main
from core.compress import compress_run
from core.config import CompressConfig, TrainConfig
from core.data import load_dataset
from core.decoded import decompress
from core.export import build_payload, from_bytes, model_from_payload, pack_codes, to_bytes, unpack_codes
from core.methods import quantize_model
from core.models import build_model
from core.onnx_export import (
    MissingDependency,
    _Graph,
    decode_stage,
    decoded_weight,
    export_onnx,
    onnx_bytes,
    unpack_in_graph,
)
from core.pq import QuantizedLayer
from tests.marks import fast_cases

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

DIGITS = (1, 8, 8)
METHODS = [
    CompressConfig(method="binarize"),
    CompressConfig(method="kmeans", n_centroids=5),
    CompressConfig(method="pq", subvector_size=3, n_centroids=7),  # 3 does not divide 64: padded chunks
    CompressConfig(method="pq", subvector_size=4, n_centroids=8, layout="per-chunk"),
    CompressConfig(method="pq", subvector_size=2, n_centroids=16, centroid_bits=16),
    CompressConfig(method="pq", subvector_size=3, n_centroids=6, layout="per-chunk", centroid_bits=16),
    CompressConfig(method="pq", subvector_size=2, n_centroids=256),  # 8-bit codes: a plain cast
    CompressConfig(method="rq", subvector_size=4, n_centroids=8, stages=3),  # residual: three lookups summed
    CompressConfig(method="rq", subvector_size=3, n_centroids=4, stages=2, layout="per-chunk", centroid_bits=16),
    CompressConfig(method="float"),
]


def run_onnx(blob: bytes, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def builtin_file(model_name: str, cfg: CompressConfig, seed: int = 0) -> bytes:
    """A compressed file of a randomly initialized built-in network on 8x8 inputs (no training)."""
    torch.manual_seed(seed)
    train_cfg = TrainConfig(dataset="digits", model=model_name, hidden=(32, 16))
    model = build_model(model_name, DIGITS, 10, (32, 16))
    layers = quantize_model(model, cfg)
    tensors, meta = build_payload(model.state_dict(), layers, train_cfg, cfg, DIGITS, 10)
    return to_bytes(tensors, meta)


def initializer_names(blob: bytes) -> dict[str, int]:
    """name -> ONNX data type of every initializer of an ONNX file."""
    return {t.name: t.data_type for t in onnx.load_from_string(blob).graph.initializer}


# ------------------------------------------------------------------------------ in-graph decode


def _unpack_graph(packed: torch.Tensor, bits: int, count: int) -> bytes:
    g = _Graph(onnx, {"codes"})
    name = g.const(packed.numpy(), "packed")
    out = unpack_in_graph(g, name, packed.numel(), bits, count)
    g.nodes.append(onnx.helper.make_node("Identity", [out], ["codes"]))
    graph = onnx.helper.make_graph(
        g.nodes, "unpack", [], [onnx.helper.make_tensor_value_info("codes", onnx.TensorProto.INT64, [count])]
    )
    graph.initializer.extend(g.initializers.values())
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


@fast_cases(2)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 9, 11, 13, 15, 16])
@pytest.mark.parametrize("count", [1, 8, 37])
def test_unpack_in_graph_is_the_readers_unpack(bits, count):
    codes = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(bits * 100 + count))
    codes[0] = 2**bits - 1  # every bit of a code set, at the start of a row
    packed = pack_codes(codes, bits)
    session = ort.InferenceSession(_unpack_graph(packed, bits, count), providers=["CPUExecutionProvider"])
    (unpacked,) = session.run(None, {})
    assert np.array_equal(unpacked, unpack_codes(packed, bits, count).numpy())


def test_a_residual_weight_is_a_sum_of_stage_lookups():
    """The helper residual quantization will use: a weight decoded as the sum of M codebook lookups."""
    torch.manual_seed(0)
    shape, dim, k = (6, 10), 4, 5  # 10 inputs in chunks of 4: the last one padded
    stages = []
    for layout in ("shared", "per-chunk"):
        groups, count = (1, 6 * 3) if layout == "shared" else (3, 6)
        stages.append(
            QuantizedLayer("w", shape, dim, layout, torch.randn(groups, k, dim), torch.randint(0, k, (groups, count)))
        )
    g = _Graph(onnx, {"w"})
    lookups = []
    for index, stage in enumerate(stages):
        codes = g.const(stage.codes.flatten().numpy(), f"codes{index}")
        books = g.const(stage.codebooks.numpy(), f"books{index}")
        lookups.append(decode_stage(g, codes, books, stage.layout, shape, list(stage.codebooks.shape)))
    decoded_weight(g, lookups, shape, dim, "w")
    graph = onnx.helper.make_graph(
        g.nodes, "rq", [], [onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, list(shape))]
    )
    graph.initializer.extend(g.initializers.values())
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    onnx.checker.check_model(proto, full_check=True)
    (weight,) = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    assert np.array_equal(weight, (stages[0].decode() + stages[1].decode()).numpy())


# ------------------------------------------------------------------------ the built-in networks


@fast_cases(2)
@pytest.mark.parametrize("cfg", METHODS, ids=lambda c: c.label())
@pytest.mark.parametrize("model_name,targets", [("mlp", "fc"), ("lenet5", "fc+conv")])
def test_every_method_runs_in_onnx_runtime_as_our_decode(model_name, targets, cfg):
    cfg = CompressConfig(**{**cfg.to_json(), "targets": targets})
    blob = builtin_file(model_name, cfg)
    tensors, meta = from_bytes(blob)
    exported = onnx_bytes(blob)  # onnx.checker (full check) runs inside
    x = torch.randn(7, *DIGITS, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model_from_payload(tensors, meta)(x).numpy()
    assert np.abs(run_onnx(exported, x) - expected).max() <= 1e-5

    # The weights stay coded: each coded weight is its file's packed codes (byte for byte) and its
    # codebook (or alpha) in the file's dtype, never a float tensor of the weight's size.
    proto = onnx.load_from_string(exported)
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for info in meta["layers"]:
        name = info["name"]
        assert name not in initializers
        assert np.array_equal(initializers[f"{name}.codes"], tensors[f"{name}.codes"].numpy())
        part = "alpha" if info["layout"] == "sign" else "codebooks"
        assert initializers[f"{name}.{part}"].dtype == tensors[f"{name}.{part}"].numpy().dtype
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    held = sum(initializers[key].nbytes for key in tensors)
    assert held == stored  # every tensor of the file, nothing inflated


def test_a_trained_run_keeps_its_accuracy_in_onnx_runtime(tiny_store):
    run = tiny_store.list_runs()[0]
    record, blob = compress_run(run, CompressConfig(method="pq", subvector_size=4, n_centroids=32), device="cpu")
    data = load_dataset("digits")
    tensors, meta = from_bytes(blob)
    with torch.no_grad():
        expected = model_from_payload(tensors, meta)(data.x_test).numpy()
    outputs = run_onnx(onnx_bytes(blob), data.x_test)
    assert np.abs(outputs - expected).max() <= 1e-5
    correct = int((torch.from_numpy(outputs).argmax(1) == data.y_test).sum())
    assert correct / len(data.y_test) == pytest.approx(record.accuracy, abs=1e-9)  # float32 mean vs count


# ------------------------------------------------------------------------------ your own module


class OwnNet(nn.Module):
    """A user's network: a conv with BatchNorm, a residual add, two linears."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Sequential(nn.Linear(8 * 8 * 8, 20), nn.ReLU(), nn.Linear(20, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm(self.conv(x)))
        return self.head((y + x).flatten(1))


@fast_cases(1)
@pytest.mark.parametrize("cfg", METHODS[:-1], ids=lambda c: c.label())
def test_own_module_from_compress_and_from_save(tmp_path, cfg):
    torch.manual_seed(0)
    model = OwnNet().eval()
    model.norm.running_mean.uniform_(-0.5, 0.5)  # not the identity, so the float rest matters
    before = {key: value.clone() for key, value in model.state_dict().items()}
    packed = core.compress(model, cfg, layers=["conv", "head.*"])
    x = torch.randn(4, *DIGITS)
    fresh = OwnNet().eval()
    fresh.load_state_dict(packed.state_dict())
    with torch.no_grad():
        expected = fresh(x).numpy()

    out = tmp_path / "own.onnx"
    written = export_onnx(packed, out, model=model, example_input=x)
    assert out.stat().st_size == written
    assert np.abs(run_onnx(out.read_bytes(), x) - expected).max() <= 1e-5
    assert "conv.weight" not in initializer_names(out.read_bytes())

    saved = tmp_path / "own.safetensors"
    core.save(packed, saved)
    from_file = onnx_bytes(saved, model=OwnNet(), example_input=x)
    assert np.abs(run_onnx(from_file, x) - expected).max() <= 1e-5
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())  # not modified


@pytest.mark.slow  # seconds: the whole suite's
def test_decompress_gives_a_state_dict_any_module_loads(tmp_path):
    cfg = CompressConfig(method="pq", subvector_size=4, n_centroids=8, targets="fc+conv")
    path = tmp_path / "lenet.safetensors"
    path.write_bytes(builtin_file("lenet5", cfg))
    state = decompress(path)
    assert all(value.dtype == torch.float32 for value in state.values())
    fresh = build_model("lenet5", DIGITS, 10)
    fresh.load_state_dict(state, strict=True)
    reference = model_from_payload(*from_bytes(path.read_bytes()))
    x = torch.randn(3, *DIGITS)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), reference(x))

    torch.manual_seed(0)
    model = OwnNet()
    packed = core.compress(model, CompressConfig(method="kmeans", n_centroids=4))
    saved = tmp_path / "own.safetensors"
    core.save(packed, saved)
    own_state = decompress(saved, model=OwnNet())
    assert set(own_state) == set(packed.state_dict())
    assert all(torch.equal(own_state[key], value) for key, value in packed.state_dict().items())
    with pytest.raises(ValueError, match=r"written by core\.save"):
        decompress(saved)


# ------------------------------------------------------------------------------------------- CLI


def test_cli_export_writes_a_graph_onnx_runtime_runs(capsys, tmp_path):
    cfg = CompressConfig(method="pq", subvector_size=4, n_centroids=16)
    source = tmp_path / "mlp.safetensors"
    source.write_bytes(builtin_file("mlp", cfg))
    out = tmp_path / "mlp.onnx"
    assert main(["export", str(source), "--format", "onnx", "--out", str(out), "--json"]) == 0
    report = capsys.readouterr().out
    assert f'"bytes": {out.stat().st_size}' in report
    x = torch.randn(2, *DIGITS)
    with torch.no_grad():
        expected = model_from_payload(*from_bytes(source.read_bytes()))(x).numpy()
    assert np.abs(run_onnx(out.read_bytes(), x) - expected).max() <= 1e-5


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    return err


@fast_cases(1)
@pytest.mark.parametrize(
    "case,message",
    [
        ("not-a-model", "is not a compressed model"),
        ("missing", "there is no file"),
        ("truncated", "is not a compressed model"),
        ("out-folder-missing", "does not exist"),
        ("out-is-a-folder", "is a folder"),
        ("module-file", "written by core.save"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, case, message):
    good = builtin_file("mlp", CompressConfig(method="kmeans", n_centroids=4))
    source, out = tmp_path / "model.safetensors", tmp_path / "model.onnx"
    source.write_bytes(good)
    if case == "not-a-model":
        source.write_bytes(b"not a model at all")
    elif case == "missing":
        source.unlink()
    elif case == "truncated":
        source.write_bytes(good[:-10])
    elif case == "out-folder-missing":
        out = tmp_path / "nowhere" / "model.onnx"
    elif case == "out-is-a-folder":
        out = tmp_path / "folder"
        out.mkdir()
    elif case == "module-file":
        core.save(core.compress(OwnNet(), CompressConfig(method="binarize")), source)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    err = _one_line_error(capsys, ["export", str(source), "--format", "onnx", "--out", str(out)])
    assert message in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no temporary left


def test_a_layer_torch_cannot_export_is_one_line_and_writes_nothing(tmp_path):
    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft(self.fc(x)).real  # no ONNX operator for an FFT of this kind

    model = Spectral()
    packed = core.compress(model, CompressConfig(method="kmeans", n_centroids=4))
    out = tmp_path / "spectral.onnx"
    with pytest.raises(ValueError, match=r"torch\.onnx cannot export this model") as caught:
        export_onnx(packed, out, model=model, example_input=torch.randn(2, 4))
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_compressed_weight_the_model_lacks_is_refused_before_export(tmp_path):
    packed = core.compress(OwnNet(), CompressConfig(method="binarize"), layers=["head.*"])
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"head\.0\.weight is not the weight of an nn\.Linear or nn\.Conv2d"):
        export_onnx(packed, tmp_path / "x.onnx", model=other, example_input=torch.randn(1, *DIGITS))
    with pytest.raises(ValueError, match="needs model="):
        export_onnx(packed, tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_without_onnx_the_missing_package_is_named(capsys, tmp_path, monkeypatch):
    real_import = importlib.import_module

    def no_onnx(name: str, *args):
        if name == "onnx":
            raise ModuleNotFoundError("No module named 'onnx'")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_onnx)
    source, out = tmp_path / "model.safetensors", tmp_path / "model.onnx"
    source.write_bytes(builtin_file("mlp", CompressConfig(method="binarize")))
    with pytest.raises(MissingDependency, match="needs the package onnx"):
        onnx_bytes(source)
    err = _one_line_error(capsys, ["export", str(source), "--out", str(out)])
    assert "pip install -r requirements-onnx.txt" in err and not out.exists()


@pytest.mark.parametrize(
    "cfg",
    [
        CompressConfig(method="pq", subvector_size=4, n_centroids=8, sparsity=0.5),
        CompressConfig(method="kmeans", n_centroids=4, entropy="ans"),
    ],
    ids=["pruned", "entropy-coded"],
)
def test_a_pruned_or_entropy_coded_file_is_refused_in_one_line(tmp_path, capsys, cfg):
    """Found at merge: such a file once exported a graph that failed in ONNX Runtime (its codes are a
    stream or its survivors only); now one line before any export, and nothing written."""
    torch.manual_seed(0)
    model = build_model("mlp", DIGITS, 10, (32, 16))
    with torch.no_grad():  # codes of very unequal frequencies: the rANS stream beats packed codes
        weight = model.fcs[0].weight
        weight.copy_((torch.rand_like(weight) > 0.97).float() * torch.randn_like(weight))
    layers = quantize_model(model, cfg)
    train_cfg = TrainConfig(dataset="digits", model="mlp", hidden=(32, 16))
    tensors, meta = build_payload(model.state_dict(), layers, train_cfg, cfg, DIGITS, 10)
    assert any(info.get("entropy", "none") != "none" or info.get("mask") for info in meta["layers"])
    blob = to_bytes(tensors, meta)
    with pytest.raises(ValueError, match="pruned or entropy-coded"):
        onnx_bytes(blob)
    source, out = tmp_path / "m.safetensors", tmp_path / "m.onnx"
    source.write_bytes(blob)
    assert main(["export", str(source), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pruned or entropy-coded" in err[0] and not out.exists()
