"""The reader refuses every file it did not write, with one line naming what is wrong, and before
allocating anything a crafted file's claims could make large.

Valid payloads are built with `build_payload` from a seeded, untrained tiny MLP (the digits
shapes: 64-32-16-10) so that the crafted cases below cost milliseconds each; test_export.py
covers files from real trained runs.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

import core.export as export
import core.fileformat as fileformat
from core.config import CompressConfig, TrainConfig
from core.export import (
    NotACompressedModel,
    build_payload,
    from_bytes,
    load_file,
    load_payload,
    model_from_payload,
    pack_codes,
    read_payload,
    save_file,
    to_bytes,
    unpack_codes,
)
from core.methods import quantize_model
from core.models import build_model
from tests.marks import fast_cases

SOURCE = "crafted.safetensors"
REFUSAL = "not a compressed model written by this tool"
ROOT = Path(__file__).resolve().parent.parent
TRAIN = TrainConfig(dataset="digits", model="mlp", hidden=(32, 16), epochs=1)
INPUT_SHAPE = (1, 8, 8)
VARIANTS = {
    "pq-shared": CompressConfig(method="pq", subvector_size=3, n_centroids=5),  # k not a power of 2; padded chunks
    "pq-per-chunk": CompressConfig(method="pq", subvector_size=4, n_centroids=8, layout="per-chunk"),
    "kmeans": CompressConfig(method="kmeans", n_centroids=16),
    "binarize": CompressConfig(method="binarize"),
    "pq-fp16": CompressConfig(method="pq", subvector_size=2, n_centroids=16, centroid_bits=16),
    "float": CompressConfig(method="float"),
}

Payload = tuple[dict[str, torch.Tensor], dict]


def make_payload(cfg: CompressConfig) -> Payload:
    torch.manual_seed(0)
    model = build_model(TRAIN.model, INPUT_SHAPE, 10, TRAIN.hidden)
    extra = {"run_id": TRAIN.run_id(), "accuracy": 0.5, "dataset": TRAIN.dataset}
    return build_payload(model.state_dict(), quantize_model(model, cfg), TRAIN, cfg, INPUT_SHAPE, 10, extra=extra)


@pytest.fixture(scope="module")
def payloads() -> dict[str, Payload]:
    return {name: make_payload(cfg) for name, cfg in VARIANTS.items()}


# ------------------------------------------------------------------------------ edit helpers


def edit(variant: str, meta_edit: Callable | None = None, tensor_edit: Callable | None = None) -> Callable:
    """A case: the variant's payload, metadata and/or tensors edited, re-serialized with `to_bytes`."""

    def build(payloads: dict[str, Payload]) -> bytes:
        tensors, meta = payloads[variant]
        tensors, meta = dict(tensors), copy.deepcopy(meta)
        if meta_edit is not None:
            meta_edit(meta)
        if tensor_edit is not None:
            tensor_edit(tensors)
        return to_bytes(tensors, meta)

    return build


def raw(variant: str, blob_edit: Callable[[bytes], bytes]) -> Callable:
    """A case: the variant's file bytes, edited directly."""
    return lambda payloads: blob_edit(to_bytes(*payloads[variant]))


def split(blob: bytes) -> tuple[str, bytes]:
    n = int.from_bytes(blob[:8], "little")
    return blob[8 : 8 + n].decode(), blob[8 + n :]


def join(header: str, data: bytes) -> bytes:
    encoded = header.encode()
    return len(encoded).to_bytes(8, "little") + encoded + data


def header_edit(variant: str, fn: Callable[[dict], None]) -> Callable:
    """A case: the safetensors header edited as JSON, the data section kept."""

    def blob_edit(blob: bytes) -> bytes:
        text, data = split(blob)
        header = json.loads(text)
        fn(header)
        return join(json.dumps(header), data)

    return raw(variant, blob_edit)


def header_text_edit(variant: str, fn: Callable[[str], str]) -> Callable:
    def blob_edit(blob: bytes) -> bytes:
        text, data = split(blob)
        return join(fn(text), data)

    return raw(variant, blob_edit)


def set_meta(key: str, value) -> Callable[[dict], None]:
    return lambda meta: meta.__setitem__(key, value)


def set_cfg(section: str, key: str, value) -> Callable[[dict], None]:
    return lambda meta: meta[section].__setitem__(key, value)


def set_layer(index: int, key: str, value) -> Callable[[dict], None]:
    return lambda meta: meta["layers"][index].__setitem__(key, value)


def set_tensor(key: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], None]:
    return lambda tensors: tensors.__setitem__(key, fn(tensors[key]))


def drop(key: str) -> Callable[[dict], None]:
    return lambda tensors: tensors.pop(key)


def first_code(name: str, bits: int, count: int, code: int) -> Callable[[dict], None]:
    """Re-pack one layer's codes with its first code replaced, at the same width."""

    def tensor_edit(tensors: dict) -> None:
        codes = unpack_codes(tensors[f"{name}.codes"], bits, count)
        codes[0] = code
        tensors[f"{name}.codes"] = pack_codes(codes, bits)

    return tensor_edit


def set_padding_bits(tensors: dict) -> None:
    # fcs.2.weight of pq-shared: 10 rows x 6 chunks x 3 bits = 180 bits, 4 bits of padding
    packed = tensors["fcs.2.weight.codes"].clone()
    packed[-1] |= 1
    tensors["fcs.2.weight.codes"] = packed


def offsets_past_end(header: dict) -> None:
    data_len = max(e["data_offsets"][1] for k, e in header.items() if k != "__metadata__")
    header["fcs.0.bias"]["data_offsets"] = [data_len - 128 + 4, data_len + 4]  # 32 float32: 128 bytes


def overlap_offsets(header: dict) -> None:
    # kmeans k=16: fcs.1.weight.codebooks and fcs.0.weight.codebooks are both 64 bytes; put them on the same bytes
    header["fcs.1.weight.codebooks"]["data_offsets"] = list(header["fcs.0.weight.codebooks"]["data_offsets"])


def consistent_big_hidden(meta: dict) -> None:
    """A 10,000,000-wide hidden layer, every layer entry agreeing with it: only the bytes disagree."""
    meta["train_config"]["hidden"] = [10_000_000, 16]
    meta["layers"][0].update(shape=[10_000_000, 64], codes_per_group=10_000_000 * 22)  # d=3: 22 chunks of 64
    meta["layers"][1].update(shape=[16, 10_000_000], codes_per_group=16 * 3_333_334)


def duplicate_key(text: str) -> str:
    entry = json.dumps(json.loads(text)["fcs.0.bias"])
    return text.replace("{", '{"fcs.0.bias":' + entry + ",", 1)


# (builder, a fragment the message must contain: the check that should have fired)
CASES: dict[str, tuple[Callable, str]] = {
    # ---- not safetensors at all
    "empty-file": (lambda p: b"", "shorter than a safetensors header"),
    "random-bytes": (lambda p: np.random.default_rng(0).bytes(4096), "header claims"),
    "text-file": (lambda p: b"hello, not a model\n" * 20, "header claims"),
    "non-safetensors-json": (lambda p: join('{"hello": "world"}', b""), "safetensors metadata"),
    "plain-safetensors": (lambda p: st_save({"w": torch.zeros(2)}), "safetensors metadata"),
    "truncated-in-header": (raw("pq-shared", lambda b: b[: export.header_bytes(b) // 2]), "header claims"),
    "truncated-in-data": (
        raw("pq-shared", lambda b: b[: (export.header_bytes(b) + len(b)) // 2]),
        "data section",
    ),
    "truncated-last-byte": (raw("pq-shared", lambda b: b[:-1]), "data section"),
    "trailing-byte": (raw("pq-shared", lambda b: b + b"\0"), "data section"),
    # ---- raw header edits
    "header-length-past-end": (raw("pq-shared", lambda b: len(b).to_bytes(8, "little") + b[8:]), "header claims"),
    "header-length-huge": (raw("pq-shared", lambda b: (2**63).to_bytes(8, "little") + b[8:]), "header claims"),
    "header-not-json": (raw("pq-shared", lambda b: b[:8] + b"x" * (len(b) - 8)), "not valid JSON"),
    "header-not-object": (header_text_edit("pq-shared", lambda t: "[1, 2]"), "not a JSON object"),
    "header-duplicate-key": (header_text_edit("pq-shared", duplicate_key), "repeats a key"),
    "header-extra-metadata": (
        header_edit("pq-shared", lambda h: h["__metadata__"].__setitem__("x", "y")),
        "safetensors metadata",
    ),
    "header-unknown-dtype": (header_edit("pq-shared", lambda h: h["fcs.0.bias"].__setitem__("dtype", "F64")), "F64"),
    "header-negative-dim": (header_edit("pq-shared", lambda h: h["fcs.0.bias"].__setitem__("shape", [-32])), "shape"),
    "header-shape-vs-bytes": (
        header_edit("pq-shared", lambda h: h["fcs.0.bias"].__setitem__("shape", [50_000_000])),
        "needs 200,000,000 bytes",
    ),
    "header-offsets-past-end": (header_edit("pq-shared", offsets_past_end), "outside the"),
    "header-offsets-overlap": (header_edit("kmeans", overlap_offsets), "starts at byte"),
    "header-missing-offsets": (header_edit("pq-shared", lambda h: h["fcs.0.bias"].pop("data_offsets")), "not {"),
    "metadata-not-json": (
        header_edit("pq-shared", lambda h: h["__metadata__"].__setitem__("compression_lab", "{")),
        "not valid JSON",
    ),
    "metadata-not-object": (
        header_edit("pq-shared", lambda h: h["__metadata__"].__setitem__("compression_lab", "[1]")),
        "not a JSON object",
    ),
    "metadata-nan": (edit("pq-shared", set_meta("accuracy", float("nan"))), "NaN"),
    # ---- metadata fields
    "format-wrong": (edit("pq-shared", set_meta("format", "compression-lab/0")), "format is"),
    "metadata-unknown-key": (edit("pq-shared", set_meta("extra", 1)), "unknown key"),
    "metadata-missing-layers": (edit("pq-shared", lambda m: m.pop("layers")), "lacks layers"),
    "train-config-invalid": (edit("pq-shared", set_cfg("train_config", "epochs", 0)), "epochs=0"),
    "train-config-unknown-field": (edit("pq-shared", set_cfg("train_config", "bogus", 1)), "unknown field"),
    "train-config-missing-field": (edit("pq-shared", lambda m: m["train_config"].pop("lr")), "lacks lr"),
    "train-config-wrong-type": (edit("pq-shared", set_cfg("train_config", "lr", "fast")), "train_config.lr"),
    "train-config-hidden-huge": (
        edit("pq-shared", set_cfg("train_config", "hidden", [10**12, 16])),
        "train_config.hidden",
    ),
    "hidden-10M-consistent": (edit("pq-shared", consistent_big_hidden), "the limit is 20,000,000"),
    "compress-config-invalid": (edit("pq-shared", set_cfg("compress_config", "method", "zip")), "unknown method"),
    "compress-config-not-canonical": (
        edit("kmeans", set_cfg("compress_config", "subvector_size", 8)),
        "canonical",
    ),
    "input-shape-two-ints": (edit("pq-shared", set_meta("input_shape", [8, 8])), "input_shape"),
    "input-shape-huge": (edit("pq-shared", set_meta("input_shape", [1, 10**9, 8])), "input_shape"),
    "n-classes-bool": (edit("pq-shared", set_meta("n_classes", True)), "n_classes"),
    "n-classes-wrong": (edit("pq-shared", set_meta("n_classes", 12)), "fcs.2.weight"),
    "dataset-unknown": (edit("pq-shared", set_meta("dataset", "imagenet")), "dataset is"),
    "dataset-differs": (edit("pq-shared", set_meta("dataset", "mnist")), "dataset is"),
    "run-id-not-hex": (edit("pq-shared", set_meta("run_id", "../../etc")), "run_id"),
    "accuracy-out-of-range": (edit("pq-shared", set_meta("accuracy", 1.5)), "accuracy"),
    "model-swapped-to-lenet5": (edit("pq-shared", set_cfg("train_config", "model", "lenet5")), "lenet5"),
    "hidden-changed": (edit("pq-shared", set_cfg("train_config", "hidden", [32, 17])), "fcs.1.weight"),
    # ---- layer entries
    "layers-not-list": (edit("pq-shared", set_meta("layers", {})), "not a list"),
    "layer-extra-key": (edit("pq-shared", set_layer(0, "extra", 1)), "exactly the keys"),
    "layer-missing": (edit("pq-shared", lambda m: m["layers"].pop()), "has no layer entry"),
    "layer-duplicate": (edit("pq-shared", lambda m: m["layers"].append(m["layers"][0])), "listed twice"),
    "layer-names-bias": (edit("pq-shared", set_layer(0, "name", "fcs.0.bias")), "not an FC weight"),
    "layer-names-missing-weight": (edit("pq-shared", set_layer(0, "name", "fcs.9.weight")), "not an FC weight"),
    "layer-shape-wrong": (edit("pq-shared", set_layer(0, "shape", [64, 32])), "declares shape"),
    "layer-shape-floats": (edit("pq-shared", set_layer(0, "shape", [32.0, 64.0])), "declares shape"),
    "layer-unknown-layout": (edit("pq-shared", set_layer(0, "layout", "rows")), "layout 'rows'"),
    "layer-sign-under-pq": (edit("pq-shared", set_layer(0, "layout", "sign")), "compress_config says"),
    "layer-d-differs": (edit("pq-shared", set_layer(0, "subvector_size", 2)), "compress_config says"),
    "layer-d-zero": (edit("pq-shared", set_layer(0, "subvector_size", 0)), "subvector_size"),
    "layer-k-too-big": (edit("pq-shared", set_layer(0, "n_centroids", 70_000)), "n_centroids"),
    "binarize-k-4": (edit("binarize", set_layer(0, "n_centroids", 4)), "method binarize"),
    "float-with-layer": (
        lambda p: to_bytes(p["float"][0], {**p["float"][1], "layers": p["pq-shared"][1]["layers"]}),
        "codes no layer",
    ),
    "code-bits-0": (edit("pq-shared", set_layer(0, "code_bits", 0)), "code_bits 0"),
    "code-bits-float": (edit("pq-shared", set_layer(0, "code_bits", 3.0)), "code_bits 3.0"),
    "code-bits-too-many": (edit("kmeans", set_layer(0, "code_bits", 5)), "code_bits 5"),
    "codes-50M": (
        edit("pq-shared", lambda m: m["layers"][0].update(groups=1, codes_per_group=50_000_000)),
        "declares 50,000,000 codes but its .codes tensor holds 264 bytes",
    ),
    "per-chunk-groups-wrong": (
        edit("pq-per-chunk", lambda m: m["layers"][0].update(groups=1, codes_per_group=32 * 16)),
        "implies groups=16, codes_per_group=32",
    ),
    "shared-groups-swapped": (
        edit("kmeans", lambda m: m["layers"][0].update(groups=32, codes_per_group=64)),
        "implies groups=1, codes_per_group=2,048",
    ),
    # ---- tensors
    "missing-codebooks": (edit("pq-shared", tensor_edit=drop("fcs.0.weight.codebooks")), "missing"),
    "missing-codes": (edit("pq-shared", tensor_edit=drop("fcs.1.weight.codes")), "no fcs.1.weight.codes"),
    "missing-bias": (edit("pq-shared", tensor_edit=drop("fcs.2.bias")), "fcs.2.bias is missing"),
    "missing-alpha": (edit("binarize", tensor_edit=drop("fcs.0.weight.alpha")), "alpha is missing"),
    "extra-tensor": (
        edit("pq-shared", tensor_edit=lambda t: t.__setitem__("extra", torch.zeros(3))),
        "not part of the model",
    ),
    "coded-layer-also-float": (
        edit("pq-shared", tensor_edit=lambda t: t.__setitem__("fcs.0.weight", torch.zeros(32, 64))),
        "also stored in float",
    ),
    "float-weight-missing": (edit("float", tensor_edit=drop("fcs.0.weight")), "fcs.0.weight is missing"),
    "codes-out-of-range": (
        edit("pq-shared", tensor_edit=first_code("fcs.0.weight", 3, 704, 7)),
        "has code 7",
    ),
    "codes-padding-bits": (edit("pq-shared", tensor_edit=set_padding_bits), "padding bits"),
    "codes-truncated": (
        edit("pq-shared", tensor_edit=set_tensor("fcs.0.weight.codes", lambda t: t[:-1].clone())),
        "holds 263 bytes",
    ),
    "codes-as-float32": (
        edit("pq-shared", tensor_edit=set_tensor("fcs.0.weight.codes", lambda t: t.float())),
        "is F32 [264]; expected 1-D U8",
    ),
    "codebook-nan": (
        edit("pq-shared", tensor_edit=set_tensor("fcs.1.weight.codebooks", lambda t: t.clone().fill_(float("nan")))),
        "NaN or infinite",
    ),
    "codebook-fp16-with-centroid-bits-32": (
        edit("pq-shared", tensor_edit=set_tensor("fcs.0.weight.codebooks", lambda t: t.half())),
        "expected F32",
    ),
    "codebook-fp32-with-centroid-bits-16": (
        edit("pq-fp16", tensor_edit=set_tensor("fcs.0.weight.codebooks", lambda t: t.float())),
        "expected F16",
    ),
    "codebook-wrong-shape": (
        edit("pq-per-chunk", tensor_edit=set_tensor("fcs.0.weight.codebooks", lambda t: t[:1].clone())),
        "expected F32 [16, 8, 4]",
    ),
    "alpha-nan": (
        edit("binarize", tensor_edit=set_tensor("fcs.1.weight.alpha", lambda t: t.clone().fill_(float("inf")))),
        "NaN or infinite",
    ),
    "alpha-two-values": (
        edit("binarize", tensor_edit=set_tensor("fcs.1.weight.alpha", lambda t: t.repeat(2))),
        "expected F32 [1]",
    ),
    "bias-nan": (
        edit("kmeans", tensor_edit=set_tensor("fcs.0.bias", lambda t: t.clone().fill_(float("nan")))),
        "NaN or infinite",
    ),
    "bias-float16": (edit("kmeans", tensor_edit=set_tensor("fcs.0.bias", lambda t: t.half())), "expected F32 [32]"),
    "bias-wrong-shape": (edit("kmeans", tensor_edit=set_tensor("fcs.0.bias", lambda t: t[:31])), "expected F32 [32]"),
}


def assert_refused(blob: bytes, fragment: str = "") -> str:
    with pytest.raises(NotACompressedModel) as caught:
        from_bytes(blob, source=SOURCE)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{SOURCE} is {REFUSAL}: "), message
    assert "could not be checked" not in message, f"only the last-resort net caught it: {message}"
    assert fragment in message, message
    return message


def test_enough_cases():
    assert len(CASES) >= 20


@fast_cases(8)
@pytest.mark.parametrize("case", list(CASES))
def test_crafted_file_is_refused(payloads, case):
    build, fragment = CASES[case]
    assert_refused(build(payloads), fragment)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_is_accepted(payloads, tmp_path, variant):
    tensors, meta = payloads[variant]
    blob = to_bytes(tensors, meta)
    read_tensors, read_meta = read_payload(blob, SOURCE)
    assert read_meta == json.loads(json.dumps(meta)) and set(read_tensors) == set(tensors)
    for key, value in tensors.items():
        assert torch.equal(read_tensors[key], value), key
    path = tmp_path / "model.safetensors"
    save_file(path, blob)
    model, _ = load_file(path)
    x = torch.randn(5, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model(x), model_from_payload(tensors, meta)(x))
    assert load_payload(path)[1] == read_meta


def test_unpack_refuses_too_few_bytes():
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_codes(torch.zeros(2, dtype=torch.uint8), 8, 3)


def test_unpack_in_chunks_matches_one_pass(monkeypatch):
    codes = torch.randint(0, 2**11, (1, 1000), generator=torch.Generator().manual_seed(0))
    packed = pack_codes(codes, 11)
    monkeypatch.setattr(fileformat, "_UNPACK_CHUNK", 64)
    assert torch.equal(unpack_codes(packed, 11, 1000), codes.flatten())


def test_load_file_refuses_what_is_not_a_regular_file(tmp_path, monkeypatch, payloads):
    def refused(path: Path, fragment: str) -> None:
        with pytest.raises(NotACompressedModel, match=fragment) as caught:
            load_file(path)
        assert str(caught.value).startswith(f"{path} is {REFUSAL}: ")

    refused(tmp_path / "missing.safetensors", "no file")
    refused(tmp_path, "not a regular file")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.safetensors"
        os.mkfifo(fifo)
        refused(fifo, "not a regular file")  # and does not block waiting for a writer
    big = tmp_path / "big.safetensors"
    save_file(big, to_bytes(*payloads["kmeans"]))
    monkeypatch.setattr(fileformat, "MAX_FILE_BYTES", big.stat().st_size - 1)
    refused(big, "above the")


# ------------------------------------------------------------------------------- memory bound

MEMORY_PROBE = r"""
import sys, tracemalloc
from pathlib import Path
import numpy as np
from core.export import NotACompressedModel, from_bytes

def peak_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("no VmHWM")

def reset_peak():
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size

try:
    reset_peak(); peak_kib()
except OSError:
    print("SKIP no resettable peak RSS on this system"); sys.exit(0)

from_bytes(Path(sys.argv[1]).read_bytes())  # warm: lazy imports and first-call caches
reset_peak(); before = peak_kib()
probe = np.ones(100 * 2**20, dtype=np.uint8)  # the measure must see 100 MB that is allocated
calibration = peak_kib() - before
del probe
if calibration < 90 * 1024:
    print(f"SKIP peak RSS did not see a 100 MB allocation ({calibration} KiB)"); sys.exit(0)
for path in sys.argv[2:]:
    blob = Path(path).read_bytes()
    reset_peak(); before = peak_kib()
    tracemalloc.start()
    try:
        from_bytes(blob, source=path)
        print("ACCEPTED", path); sys.exit(1)
    except NotACompressedModel as exc:
        message = str(exc)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{Path(path).name} rss_kib={peak_kib() - before} traced_kib={traced // 1024} {message}")
"""


@pytest.mark.slow
def test_huge_declarations_are_refused_in_bounded_memory(payloads, tmp_path):
    """A few KB declaring 50,000,000 codes (or a 200 MB tensor) is refused, with peak memory
    growth far below what the declaration would cost (the old reader took 2.7 GB)."""
    tensors, meta = payloads["pq-shared"]
    valid = tmp_path / "valid.safetensors"
    valid.write_bytes(to_bytes(tensors, meta))
    crafted = {
        "codes-50M": CASES["codes-50M"][0](payloads),
        "header-50M": CASES["header-shape-vs-bytes"][0](payloads),
        "model-10M": CASES["hidden-10M-consistent"][0](payloads),
    }
    paths = []
    for name, blob in crafted.items():
        assert len(blob) < 64 * 1024
        paths.append(tmp_path / f"{name}.safetensors")
        paths[-1].write_bytes(blob)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(valid), *map(str, paths)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if result.stdout.startswith("SKIP"):
        pytest.skip(result.stdout.strip())
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(crafted), result.stdout
    for line in lines:
        name, rss, traced = line.split()[:3]
        rss_kib, traced_kib = int(rss.split("=")[1]), int(traced.split("=")[1])
        assert rss_kib < 50 * 1024 and traced_kib < 50 * 1024, line
        assert REFUSAL in line
    print(result.stdout)
