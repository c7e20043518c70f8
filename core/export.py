"""The compressed model file (safetensors): bit-packed codes, codebooks, the float rest, and the
configs in the metadata. Loading needs nothing but the file.

Tensors in the file, for each FC weight `W` (state-dict key, e.g. `fcs.0.weight`):
  `W.codes`      uint8, the layer's codes bit-packed (b = ceil(log2 k) bits each, MSB first)
  `W.codebooks`  float32 / float16, (G, k, d)          (kmeans, pq; rq: (stages * G, k, d))
  `W.alpha`      float32 / float16, (1,)               (binarize: the codebook is [-alpha, +alpha])
(each method says what it writes and what the reader expects: `Method.layer_tensors`, `layer_format`),
and every other state-dict entry (biases, convs; FC weights too for method float) in float32.
With `entropy="ans"` (core/entropy.py), a layer entry says how its codes are stored (`"entropy"`:
"ans" or "none"), and an "ans" layer's `W.codes` holds the ANS stream beside `W.code_counts`
(int32, (k,)), its frequency table; the ledger's `entropy_code_bits` is what these tensors hold.
With `sparsity > 0` (core/prune.py), a layer entry says how its mask is stored (`"mask"`: "bitmap" or
"ans"): `W.mask` holds the survivors' bitmap (1 bit a weight, row-major, MSB first), or its ANS stream
beside `W.mask_counts` (int32, (2,)); the codes then code the survivors only, as one (1, n_kept) row.

Size on disk = model bits / 8 (the accounting of size.py) + under one byte of padding per FC
layer (each layer's codes are packed to whole bytes) + the safetensors header (8 bytes of length
plus the JSON header, which holds the tensor index and the metadata; `HEADER_BOUND` bounds it for
the models here).

Reading is the other half of the format, and it trusts nothing: `from_bytes` parses the
safetensors header itself, checks the metadata against the model it describes (built on the
meta device, so nothing is allocated), and checks every tensor's dtype, shape and byte count
against what that model needs, all before a single tensor is loaded. Only then are the tensors
loaded (memory: a copy of the file) and their values checked (finite, codes below k). Anything
else is refused with one `NotACompressedModel` line saying what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from . import entropy
from .config import DATASETS, LATER_FIELDS, MAX_CENTROIDS, CompressConfig, TrainConfig
from .fileio import write_atomic
from .models import build_model, coded_weights, select_weights
from .pq import QuantizedLayer, check_fits, row_shape
from .prune import coded_rows, n_kept

FORMAT = "compression-lab/1"
HEADER_BOUND = 8 * 1024  # bytes: safetensors header of every model here, metadata included

# Reader bounds. They are far above anything `export` writes, and exist so that a crafted file
# cannot make the reader do unbounded work before its claims are checked against its bytes.
MAX_FILE_BYTES = 2 * 1024**3  # a file above this is refused before it is read
MAX_HEADER_BYTES = 1024 * 1024  # safetensors JSON header, tensor index and metadata included
MAX_INPUT_SIDE = 4096  # each of (channels, height, width)
MAX_CLASSES = 100_000
MAX_HIDDEN_WIDTH = 1 << 24  # one hidden layer of `mlp`
MAX_TENSOR_DIMS = 8
METADATA_KEY = "compression_lab"  # the one key of the safetensors `__metadata__`
LAYOUTS = ("shared", "per-chunk", "sign", "row-groups")  # row-groups: the peers' LUTs (methods/lut.py)
# safetensors dtype -> (torch dtype, bytes an element): only the dtypes `export` writes.
_DTYPES = {
    "U8": (torch.uint8, 1),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F32": (torch.float32, 4),
    "I32": (torch.int32, 4),  # an entropy-coded layer's code counts
    "F64": (torch.float64, 8),
    "I64": (torch.int64, 8),  # a module's integer buffers (BatchNorm's num_batches_tracked)
}
_DTYPE_NAMES = {dtype: name for name, (dtype, _) in _DTYPES.items()}
MODULE_FORMAT = "compression-lab-module/1"  # `core.save` of any nn.Module: no training config inside
_CENTROID_DTYPES = {32: "F32", 16: "F16"}
_LAYER_KEYS = ("name", "shape", "layout", "subvector_size", "n_centroids", "code_bits", "groups", "codes_per_group")
_REQUIRED_META = ("format", "train_config", "compress_config", "input_shape", "n_classes", "layers")
_OPTIONAL_META = ("run_id", "accuracy", "dataset")  # added by compress_run after the payload is built
# Codes unpacked at a time: bounds the (codes, bits) temporaries of unpacking to a few MB.
# A multiple of 8, so that every step starts on a byte boundary whatever the code width.
_UNPACK_CHUNK = 1 << 18


class NotACompressedModel(ValueError):
    """The file is missing, unreadable, or not written by `export`."""


class _Invalid(Exception):
    """What is wrong with the bytes; `from_bytes` turns it into a NotACompressedModel naming the source."""


def _invalid(what: str) -> NoReturn:
    raise _Invalid(what)


def _one_line(text: str) -> str:
    # The message is one line whatever a crafted file or a path puts into it.
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _refusal(source: str, what: str) -> NotACompressedModel:
    return NotACompressedModel(_one_line(f"{source} is not a compressed model written by this tool: {what}"))


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(G, N) int codes -> (ceil(G * N * bits / 8),) uint8, each code MSB first."""
    flat = codes.flatten().cpu().numpy().astype(np.int64)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    bit_matrix = ((flat[:, None] >> shifts) & 1).astype(np.uint8)  # (G * N, bits)
    return torch.from_numpy(np.packbits(bit_matrix.reshape(-1)))


def _packed_bytes(count: int, bits: int) -> int:
    return -(-count * bits // 8)


def _code_chunks(packed: np.ndarray, bits: int, count: int) -> Iterator[np.ndarray]:
    """(bytes,) uint8 -> successive (n,) int64 codes, at most `_UNPACK_CHUNK` at a time."""
    weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
    for start in range(0, count, _UNPACK_CHUNK):
        n = min(_UNPACK_CHUNK, count - start)
        first = start * bits // 8  # exact: start is a multiple of 8
        part = packed[first : first + _packed_bytes(n, bits)]
        bit_array = np.unpackbits(part, count=n * bits).reshape(n, bits)  # (n, bits)
        yield bit_array.astype(np.int64) @ weights


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """(bytes,) uint8 -> (count,) int64 codes; the inverse of `pack_codes`."""
    if bits < 1 or packed.numel() < _packed_bytes(count, bits):
        # np.unpackbits would pad a short array with zeros: silently wrong codes, never that.
        raise ValueError(f"{packed.numel()} bytes cannot hold {count:,} codes of {bits} bits")
    codes = np.empty(count, dtype=np.int64)
    array = packed.numpy()
    for start, chunk in zip(range(0, count, _UNPACK_CHUNK), _code_chunks(array, bits, count)):
        codes[start : start + len(chunk)] = chunk
    return torch.from_numpy(codes)


def _store_symbols(
    tensors: dict[str, torch.Tensor], key: str, symbols: torch.Tensor, k: int, bits: int, coder: str
) -> str:
    """Put symbols in [0, k) (a layer's codes, or its mask with k = 2) under `key`: bit-packed, or with
    coder "ans" their ANS stream and `<key minus the part after the dot>_counts` when that is smaller (a
    small layer's table can outweigh what it saves). Returns how they are stored: "ans" or "none"."""
    tensors[key] = pack_codes(symbols, bits)
    if coder != "ans":
        return "none"
    coded = entropy.encode(symbols.cpu().numpy(), k)
    if coded.bits >= symbols.numel() * bits:
        return "none"
    tensors[key] = torch.from_numpy(coded.stream.astype("<u4").view(np.uint8).copy())
    tensors[_counts_key(key)] = torch.from_numpy(coded.counts.astype(np.int32))
    return "ans"


def _counts_key(key: str) -> str:
    """W.codes -> W.code_counts, W.mask -> W.mask_counts: the frequency table beside a stream."""
    base, part = key.rsplit(".", 1)
    return f"{base}.{'code' if part == 'codes' else part}_counts"


def _add_coded(tensors: dict[str, torch.Tensor], layers: Sequence[QuantizedLayer], cfg: CompressConfig) -> list[dict]:
    """Put each coded layer's tensors into `tensors` (packed codes, and what its method writes beside
    them, in float32 or float16) and return its entries of the metadata's layer list: both file kinds
    share it."""
    store_dtype = torch.float16 if cfg.centroid_bits == 16 else torch.float32
    layer_info = []
    for layer in layers:
        layer_cfg = cfg.for_layer(layer.name)  # its own setting, in a per-layer compression
        method = layer_cfg.method_spec
        bits = method.code_bits(layer)
        stored: dict[str, str] = {}
        how = _store_symbols(tensors, f"{layer.name}.codes", layer.codes, layer.n_centroids, bits, cfg.entropy)
        if cfg.entropy != "none":
            stored["entropy"] = how
        if layer_cfg.sparsity > 0:
            assert layer.mask is not None  # quantize_model prunes every coded weight
            how = _store_symbols(tensors, f"{layer.name}.mask", layer.mask.flatten().long(), 2, 1, cfg.entropy)
            stored["mask"] = "ans" if how == "ans" else "bitmap"
        for suffix, tensor in method.layer_tensors(layer).items():
            tensors[f"{layer.name}.{suffix}"] = tensor.detach().cpu().to(store_dtype).contiguous()
        groups, count = layer.codes.shape
        layer_info.append(
            {
                "name": layer.name,
                "shape": list(layer.shape),
                "layout": layer.layout,
                "subvector_size": layer.subvector_size,
                "n_centroids": layer.n_centroids,
                "code_bits": bits,
                "groups": groups,
                "codes_per_group": count,
                **method.layer_extra(layer),
                **stored,
            }
        )
    return layer_info


def build_payload(
    state_dict: dict[str, torch.Tensor],
    layers: list[QuantizedLayer],
    train_cfg: TrainConfig,
    compress_cfg: CompressConfig,
    input_shape: tuple[int, int, int],
    n_classes: int,
    extra: dict | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and metadata of the file. `state_dict` gives the float rest."""
    coded = {layer.name for layer in layers}
    tensors = {key: value.detach().float().cpu().contiguous() for key, value in state_dict.items() if key not in coded}
    layer_info = _add_coded(tensors, layers, compress_cfg)
    meta = {
        "format": FORMAT,
        "train_config": train_cfg.to_json(),
        "compress_config": compress_cfg.to_json(),
        "input_shape": list(input_shape),
        "n_classes": n_classes,
        "layers": layer_info,
        **(extra or {}),
    }
    return tensors, meta


def stored_code_bits(tensors: dict[str, torch.Tensor], meta: dict) -> int:
    """Bits the file holds for the coded layers' codes: an entropy-coded layer's stream and table, a
    packed layer's codes exactly (without the padding to a whole byte). The ledger's entropy line."""
    total = 0
    for info in meta["layers"]:
        name = info["name"]
        if info.get("entropy") == "ans":
            total += 8 * tensors[f"{name}.codes"].numel() + entropy.COUNT_BITS * tensors[f"{name}.code_counts"].numel()
        else:
            total += info["groups"] * info["codes_per_group"] * info["code_bits"]
        if info.get("mask") == "ans":
            total += 8 * tensors[f"{name}.mask"].numel() + entropy.COUNT_BITS * 2
        elif info.get("mask") == "bitmap":
            total += math.prod(info["shape"])
    return total


def _layer_mask(tensors: dict[str, torch.Tensor], info: dict) -> torch.Tensor:
    """The bool survivors' mask of a pruned layer entry, in the weight's shape."""
    name, n = info["name"], math.prod(info["shape"])
    if info["mask"] == "ans":
        stream = tensors[f"{name}.mask"].numpy().view("<u4")
        flat = torch.from_numpy(entropy.decode(stream, tensors[f"{name}.mask_counts"].numpy().astype(np.int64)))
    else:
        flat = unpack_codes(tensors[f"{name}.mask"], 1, n)
    return flat.bool().reshape(info["shape"])


def _layer_codes(tensors: dict[str, torch.Tensor], info: dict) -> torch.Tensor:
    """(groups * codes_per_group,) int64 codes of a layer entry, however they are stored."""
    name, count = info["name"], info["groups"] * info["codes_per_group"]
    if info.get("entropy") == "ans":
        stream = tensors[f"{name}.codes"].numpy().view("<u4")
        counts = tensors[f"{name}.code_counts"].numpy().astype(np.int64)
        return torch.from_numpy(entropy.decode(stream, counts))
    return unpack_codes(tensors[f"{name}.codes"], info["code_bits"], count)


def layers_from_payload(tensors: dict[str, torch.Tensor], meta: dict) -> list[QuantizedLayer]:
    """The coded FC layers of a payload from `from_bytes` (or `build_payload`), decoded to QuantizedLayers
    by the method its compress_config names."""
    cfg = CompressConfig.from_dict(meta["compress_config"])
    layers = []
    for info in meta["layers"]:
        name, groups, count = info["name"], info["groups"], info["codes_per_group"]
        method = cfg.for_layer(name).method_spec
        codes = _layer_codes(tensors, info).reshape(groups, count)
        layer = method.read_layer(name, info, tensors, codes)
        if "mask" in info:
            layer = dataclasses.replace(layer, mask=_layer_mask(tensors, info))
        layers.append(layer)
    return layers


def _coded_tensor_names(layers: Sequence[QuantizedLayer], meta: dict) -> set[str]:
    """The file's tensors that hold the coded layers (codes, and what their method writes beside them)."""
    cfg = CompressConfig.from_dict(meta["compress_config"])
    names = {
        f"{layer.name}.{part}"
        for layer in layers
        for part in ("codes", *cfg.for_layer(layer.name).method_spec.tensor_names)
    }
    names |= {f"{info['name']}.code_counts" for info in meta["layers"] if info.get("entropy") == "ans"}
    names |= {f"{info['name']}.mask" for info in meta["layers"] if "mask" in info}
    return names | {f"{info['name']}.mask_counts" for info in meta["layers"] if info.get("mask") == "ans"}


def model_from_payload(tensors: dict[str, torch.Tensor], meta: dict) -> nn.Module:
    """Rebuild the runnable model: float rest as stored, FC weights decoded from their codes.

    Only for payloads that `from_bytes` validated (or that `build_payload` just built): then every
    key and shape below is known to match, the codes index inside their codebooks, and the model's
    memory is that of the model the file describes. Loading is strict, so a payload that slipped
    past validation fails loudly instead of leaving weights at their random init.
    """
    cfg = TrainConfig.from_dict(meta["train_config"])
    model = build_model(cfg.model, tuple(meta["input_shape"]), meta["n_classes"], cfg.hidden)
    layers = layers_from_payload(tensors, meta)
    state = {layer.name: layer.decode() for layer in layers}
    coded = _coded_tensor_names(layers, meta)
    state.update({key: value.float() for key, value in tensors.items() if key not in coded})
    model.load_state_dict(state, strict=True)
    return model.eval()


def to_bytes(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    return st_save(tensors, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})


# ----------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class _Entry:
    """One tensor of the safetensors header, as declared (nothing loaded)."""

    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data section
    end: int


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, what: str, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:
        _invalid(f"{what} is {_show(value)}; expected an integer from {low:,} to {high:,}")
    return value


def _show(value: Any) -> str:
    """A value from the file, quoted and cut short for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _strict_json(text: bytes | str, what: str) -> Any:
    """json.loads that refuses what `json.dumps` never writes: duplicate keys, NaN, Infinity."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            _invalid(f"{what} repeats a key")
        return dict(pairs)

    def no_constants(name: str) -> NoReturn:
        _invalid(f"{what} holds {name}, which JSON does not allow")

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        _invalid(f"{what} is not valid JSON")


def _parse_header(blob: bytes) -> tuple[dict[str, _Entry], str]:
    """The tensor index and our metadata string, from the bytes alone.

    Checks what safetensors would, and more: every byte of the data section belongs to exactly one
    tensor, and each tensor's bytes are exactly what its dtype and shape need. After this, a shape
    in the index is a promise the file's bytes keep, so nothing sized by one can exceed the file.
    """
    if len(blob) < 8:
        _invalid(f"it is {len(blob)} bytes long, shorter than a safetensors header")
    header_len = int.from_bytes(blob[:8], "little")
    if header_len > min(MAX_HEADER_BYTES, len(blob) - 8):
        _invalid(
            f"its header claims {header_len:,} bytes but the file has {len(blob) - 8:,} after the length "
            f"(at most {MAX_HEADER_BYTES:,} are read)"
        )
    header = _strict_json(blob[8 : 8 + header_len], "the safetensors header")
    if not isinstance(header, dict):
        _invalid("the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or set(metadata) != {METADATA_KEY} or not isinstance(metadata[METADATA_KEY], str):
        _invalid(f'the safetensors metadata is not {{"{METADATA_KEY}": "<JSON>"}}')
    data_len = len(blob) - 8 - header_len
    entries = {}
    for key, raw in header.items():
        # a name from the file: quoted when it is long or odd, so that the message stays one short line
        name = key if len(key) <= 60 and key.isprintable() else _show(key)
        if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
            _invalid(f"tensor {_show(key)} in the header is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
        if dtype not in _DTYPES:
            _invalid(f"tensor {name} has dtype {_show(dtype)}; this tool writes only {', '.join(_DTYPES)}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_TENSOR_DIMS
            or not all(_is_int(dim) and 0 <= dim <= MAX_FILE_BYTES for dim in shape)
        ):
            _invalid(f"tensor {name} has shape {_show(shape)}; expected a short list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(x) for x in offsets)):
            _invalid(f"tensor {name} has data_offsets {_show(offsets)}; expected [begin, end]")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            _invalid(f"tensor {name} has data_offsets [{begin:,}, {end:,}] outside the {data_len:,}-byte data section")
        need = math.prod(shape) * _DTYPES[dtype][1]
        if end - begin != need:
            _invalid(f"tensor {name} of shape {shape} and dtype {dtype} needs {need:,} bytes but has {end - begin:,}")
        entries[key] = _Entry(dtype, tuple(shape), begin, end)
    position = 0  # the tensors, in file order, must tile the data section: no overlap, no gap
    for key, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            _invalid(f"tensor {_show(key)} starts at byte {entry.begin:,} of the data section, expected {position:,}")
        position = entry.end
    if position != data_len:
        _invalid(f"the tensors cover {position:,} bytes of the {data_len:,}-byte data section")
    return entries, metadata[METADATA_KEY]


def _config(cls: type[TrainConfig] | type[CompressConfig], data: Any, what: str) -> Any:
    """A TrainConfig / CompressConfig from its metadata dict: every field present, typed, valid."""
    if not isinstance(data, dict):
        _invalid(f"{what} is not a JSON object")
    names = [f.name for f in fields(cls)]
    # a field added later is left out of the JSON while it holds its default (config.LATER_FIELDS)
    if missing := [name for name in names if name not in data and name not in LATER_FIELDS]:
        _invalid(f"{what} lacks {', '.join(missing)}")
    if unknown := [key for key in data if key not in names]:
        _invalid(f"{what} has unknown field {_show(unknown[0])}")
    for f in fields(cls):
        if f.name not in data:
            continue
        value, default = data[f.name], f.default
        if f.name == "per_layer":  # each setting's fields are checked by the config (LayerSetting)
            ok = isinstance(value, list) and all(isinstance(v, dict) for v in value)
        elif isinstance(default, tuple):  # hidden widths
            ok = isinstance(value, list) and all(_is_int(v) for v in value)
        elif isinstance(default, float):
            ok = isinstance(value, float) or _is_int(value)
        else:
            ok = isinstance(value, type(default)) and not isinstance(value, bool)
        if not ok:
            _invalid(f"{what}.{f.name} is {_show(value)}, not of the type this tool writes")
    try:
        return cls(**data)
    except (ValueError, TypeError) as exc:
        _invalid(f"{what}: {exc}")


@dataclass(frozen=True)
class _Expected:
    """What the metadata says the file must hold."""

    compress_cfg: CompressConfig
    shapes: dict[str, tuple[int, ...]]  # state-dict key -> shape, of the model the metadata describes
    fc_names: list[str]  # the weights that may be coded (a built-in: exactly those its targets name)
    model_label: str  # the model, for messages
    every_one: bool = True  # a built-in compression codes every weight of fc_names
    rest_dtypes: dict[str, str] | None = None  # dtype of each uncoded tensor; None: all F32


def _check_meta(meta: Any, n_tensors: int) -> _Expected:
    """The metadata's own fields, and the model they describe (built on the meta device)."""
    if not isinstance(meta, dict):
        _invalid("its metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        _invalid(f"format is {_show(meta.get('format'))}; this tool reads {FORMAT!r}")
    if missing := [key for key in _REQUIRED_META if key not in meta]:
        _invalid(f"its metadata lacks {', '.join(missing)}")
    if unknown := [key for key in meta if key not in _REQUIRED_META + _OPTIONAL_META]:
        _invalid(f"its metadata has unknown key {_show(unknown[0])}")
    train_data = meta["train_config"]
    if isinstance(train_data, dict) and train_data.get("model") == "mlp" and isinstance(train_data.get("hidden"), list):
        hidden = train_data["hidden"]
        # mlp has one FC weight a width plus one; each is a tensor in the file, so a longer list is a lie
        # that would only cost time in building the model below.
        if len(hidden) >= n_tensors:
            _invalid(f"train_config.hidden lists {len(hidden):,} layers but the file holds {n_tensors} tensors")
        for width in hidden:
            _int(width, "a width in train_config.hidden", 1, MAX_HIDDEN_WIDTH)
    train_cfg = _config(TrainConfig, train_data, "train_config")
    compress_cfg = _config(CompressConfig, meta["compress_config"], "compress_config")
    if compress_cfg.to_json() != meta["compress_config"]:
        _invalid(f"compress_config is not in the canonical form this tool writes ({compress_cfg.label()})")
    input_shape = meta["input_shape"]
    if not isinstance(input_shape, list) or len(input_shape) != 3:
        _invalid(f"input_shape is {_show(input_shape)}; expected [channels, height, width]")
    for value in input_shape:
        _int(value, "a side of input_shape", 1, MAX_INPUT_SIDE)
    n_classes = _int(meta["n_classes"], "n_classes", 2, MAX_CLASSES)
    if "run_id" in meta and not (isinstance(meta["run_id"], str) and re.fullmatch("[0-9a-f]{16}", meta["run_id"])):
        _invalid(f"run_id is {_show(meta['run_id'])}; expected the 16 hex digits of a run id")
    if "accuracy" in meta:
        accuracy = meta["accuracy"]
        if not (isinstance(accuracy, float) or _is_int(accuracy)) or not 0 <= accuracy <= 1:
            _invalid(f"accuracy is {_show(accuracy)}; expected a number from 0 to 1")
    if "dataset" in meta and (meta["dataset"] not in DATASETS or meta["dataset"] != train_cfg.dataset):
        _invalid(f"dataset is {_show(meta['dataset'])}, but the run was trained on {train_cfg.dataset!r}")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated, whatever the sizes claimed
            model = build_model(train_cfg.model, tuple(input_shape), n_classes, train_cfg.hidden)
    except (RuntimeError, ValueError) as exc:
        _invalid(f"model {train_cfg.model} cannot take inputs of shape {tuple(input_shape)} ({exc})")
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    coded = [name for name, _ in coded_weights(model, compress_cfg.targets)]
    return _Expected(compress_cfg, shapes, coded, _model_label(train_cfg))


def _check_layers(meta: dict, entries: dict[str, _Entry], expected: _Expected) -> None:
    """Every layer entry against the model and the config, every tensor against the layers: header only."""
    cfg = expected.compress_cfg
    layers = meta["layers"]
    if not isinstance(layers, list):
        _invalid("layers is not a list")
    listed = {info.get("name") for info in layers if isinstance(info, dict)}
    fc_shapes = [(name, expected.shapes[name]) for name in expected.fc_names if expected.every_one or name in listed]
    try:
        for name, shape in fc_shapes if cfg.per_layer else ():  # each weight by its own setting
            check_fits([(name, shape)], cfg.for_layer(name))
        cfg.check_layer_names(list(expected.fc_names))
        if not cfg.per_layer:
            check_fits(fc_shapes, cfg)
    except ValueError as exc:
        _invalid(f"compress_config does not fit the model: {exc}")
    centroid_dtype = _CENTROID_DTYPES[cfg.centroid_bits]
    wanted: dict[str, tuple[str, tuple[int, ...]]] = {}  # tensor -> (dtype, shape) it must have
    coded: list[str] = []
    for index, info in enumerate(layers):
        listed_name = info.get("name") if isinstance(info, dict) else None
        # its own setting, in a per-layer compression
        layer_cfg = cfg.for_layer(listed_name) if isinstance(listed_name, str) else cfg
        method = layer_cfg.method_spec
        stage_keys = (*(("entropy",) if cfg.entropy != "none" else ()), *(("mask",) if layer_cfg.sparsity > 0 else ()))
        layer_keys = (*_LAYER_KEYS, *method.layer_keys, *stage_keys)
        if not isinstance(info, dict) or set(info) != set(layer_keys):
            _invalid(f"layers[{index}] does not have exactly the keys {', '.join(layer_keys)}")
        name = info["name"]
        if name not in expected.fc_names:
            what = "an FC weight" if cfg.targets == "fc" and expected.every_one else "an FC or conv weight"
            _invalid(f"layers[{index}] names {_show(name)}, which is not {what} of the {expected.model_label}")
        if name in coded:
            _invalid(f"layer {name} is listed twice")
        coded.append(name)
        model_shape = list(expected.shapes[name])
        out_features, in_features = row_shape(model_shape)  # a conv: its rows of in * kh * kw values
        shape = info["shape"]
        # type checks too: 32.0 == 32 and True == 1 in Python, and neither is what this tool writes
        if not (isinstance(shape, list) and all(map(_is_int, shape)) and shape == model_shape):
            _invalid(f"layer {name} declares shape {_show(info['shape'])} but the model's is {model_shape}")
        layout = info["layout"]
        if layout not in LAYOUTS:
            _invalid(f"layer {name} has layout {_show(layout)}; expected one of {', '.join(LAYOUTS)}")
        dim = _int(info["subvector_size"], f"layer {name}'s subvector_size", 1, in_features)
        k = _int(info["n_centroids"], f"layer {name}'s n_centroids", 2, MAX_CENTROIDS)
        form = method.layer_format(coded_rows((out_features, in_features), layer_cfg.sparsity), layer_cfg)
        if form is None:
            _invalid(f"layer {name} is coded but method {layer_cfg.method} codes no layer")
        declared = (layout, dim, k, *(info[key] for key in method.layer_keys))
        writes = (form.layout, form.subvector_size, form.n_centroids, *form.extra.values())
        if not all(_is_int(info[key]) for key in method.layer_keys) or declared != writes:
            extra = "".join(f" {key}={_show(info[key])}" for key in method.layer_keys)
            wants = "".join(f" {key}={value}" for key, value in form.extra.items())
            _invalid(
                f"layer {name} is {layout} d={dim} k={k}{extra} but compress_config says method {layer_cfg.method} "
                f"writes {form.layout} d={form.subvector_size} k={form.n_centroids}{wants}"
            )
        bits = form.code_bits
        if not _is_int(info["code_bits"]) or info["code_bits"] != bits:
            _invalid(f"layer {name} declares code_bits {_show(info['code_bits'])}; k={k} needs {bits}")
        groups = _int(info["groups"], f"layer {name}'s groups", 1, MAX_FILE_BYTES)
        count = _int(info["codes_per_group"], f"layer {name}'s codes_per_group", 1, 8 * MAX_FILE_BYTES)
        codes_entry = entries.get(f"{name}.codes")
        if codes_entry is None:
            _invalid(f"layer {name} has no {name}.codes tensor")
        if codes_entry.dtype != "U8" or len(codes_entry.shape) != 1:
            _invalid(f"tensor {name}.codes is {codes_entry.dtype} {list(codes_entry.shape)}; expected 1-D U8")
        held = codes_entry.end - codes_entry.begin
        stored = info.get("entropy", "none")
        if stored not in ("none", cfg.entropy):
            _invalid(f"layer {name} stores its codes as {_show(stored)}; expected none or {cfg.entropy}")
        if stored == "ans":
            if held == 0 or held % 4 or held > _packed_bytes(groups * count, bits):
                _invalid(
                    f"layer {name}'s ANS stream is {held:,} bytes; expected whole 32-bit words, at most the "
                    f"{_packed_bytes(groups * count, bits):,} bytes of its packed codes"
                )
            wanted[f"{name}.code_counts"] = ("I32", (k,))
        elif _packed_bytes(groups * count, bits) != held:
            _invalid(
                f"layer {name} declares {groups * count:,} codes but its .codes tensor holds {held:,} bytes "
                f"({_packed_bytes(groups * count, bits):,} needed at {bits} bits a code)"
            )
        if layer_cfg.sparsity > 0:
            _check_mask_entry(info, entries, wanted, out_features * in_features)
        implied = (form.groups, form.codes_per_group)
        if (groups, count) != implied:
            _invalid(
                f"layer {name} declares groups={groups:,}, codes_per_group={count:,} but layout {layout} with "
                f"d={dim} implies groups={implied[0]:,}, codes_per_group={implied[1]:,}"
            )
        wanted[f"{name}.codes"] = ("U8", (held,))
        for suffix, tensor_shape in form.tensors.items():
            wanted[f"{name}.{suffix}"] = (centroid_dtype, tensor_shape)
    uncoded = [name for name in expected.fc_names if name not in coded]
    for name in uncoded if expected.every_one else ():
        own = cfg.for_layer(name)
        if own.method_spec.layer_format(row_shape(expected.shapes[name]), own):
            _invalid(f"method {own.method} codes every weight it targets, but {name} has no layer entry")
    for key, shape in expected.shapes.items():
        if key in coded:
            if key in entries:
                _invalid(f"layer {key} is coded and also stored in float")
        else:
            wanted[key] = ((expected.rest_dtypes or {}).get(key, "F32"), shape)
    for key, (dtype, shape) in wanted.items():
        entry = entries.get(key)
        if entry is None:
            _invalid(f"tensor {key} is missing")
        if entry.dtype != dtype or entry.shape != shape:
            _invalid(f"tensor {key} is {entry.dtype} {list(entry.shape)}; expected {dtype} {list(shape)}")
    if unexpected := sorted(set(entries) - set(wanted)):
        _invalid(f"tensor {_show(unexpected[0])} is not part of the model")


def _check_mask_entry(
    info: dict, entries: dict[str, _Entry], wanted: dict[str, tuple[str, tuple[int, ...]]], n: int
) -> None:
    """A pruned layer's mask tensor (and its counts) against the layer's n weights: header only."""
    name, how = info["name"], info["mask"]
    if how not in ("bitmap", "ans"):
        _invalid(f"layer {name} stores its mask as {_show(how)}; expected bitmap or ans")
    entry = entries.get(f"{name}.mask")
    if entry is None or entry.dtype != "U8" or len(entry.shape) != 1:
        _invalid(f"layer {name} is pruned but has no 1-D U8 {name}.mask tensor")
    held = entry.end - entry.begin
    if how == "bitmap" and held != _packed_bytes(n, 1):
        _invalid(f"layer {name}'s mask is {held:,} bytes; its {n:,} weights need {_packed_bytes(n, 1):,}")
    if how == "ans" and (held == 0 or held % 4 or held > _packed_bytes(n, 1)):
        _invalid(f"layer {name}'s ANS mask is {held:,} bytes; expected whole 32-bit words, fewer than a bitmap")
    wanted[f"{name}.mask"] = ("U8", (held,))
    if how == "ans":
        wanted[f"{name}.mask_counts"] = ("I32", (2,))


def _check_mask_values(tensors: dict[str, torch.Tensor], info: dict, kept: int) -> None:
    """A pruned layer's mask: exactly `kept` survivors (what the sparsity leaves), every bit accounted."""
    name, n = info["name"], math.prod(info["shape"])
    if info["mask"] == "bitmap":
        packed = tensors[f"{name}.mask"].numpy()
        padding = 8 * len(packed) - n
        if padding and int(packed[-1]) & ((1 << padding) - 1):
            _invalid(f"layer {name}'s mask has non-zero padding bits after its last weight")
    else:
        counts = tensors[f"{name}.mask_counts"].numpy().astype(np.int64)
        if int(counts.min()) < 0 or int(counts.sum()) != n:
            _invalid(f"layer {name}'s mask counts do not sum to its {n:,} weights")
    try:
        survivors = int(_layer_mask(tensors, info).sum())
    except ValueError as exc:
        _invalid(f"layer {name}'s ANS mask is not valid: {exc}")
    if survivors != kept:
        _invalid(f"layer {name}'s mask keeps {survivors:,} weights; the sparsity leaves {kept:,}")


def _model_label(cfg: TrainConfig) -> str:
    return f"model {cfg.model}" + (f" with hidden {list(cfg.hidden)}" if cfg.model == "mlp" else "")


def _check_values(tensors: dict[str, torch.Tensor], meta: dict, entries: dict[str, _Entry]) -> None:
    """The loaded tensors: as the header said, finite, and every code inside its codebook."""
    if set(tensors) != set(entries):
        _invalid("safetensors loaded other tensors than its header lists")
    for key, tensor in tensors.items():
        entry = entries[key]
        if tensor.dtype != _DTYPES[entry.dtype][0] or tuple(tensor.shape) != entry.shape:
            _invalid(f"tensor {key} loaded as {tensor.dtype} {list(tensor.shape)}, not as its header says")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            _invalid(f"tensor {key} holds NaN or infinite values")
    for info in meta["layers"]:
        name, bits, k = info["name"], info["code_bits"], info["n_centroids"]
        count = info["groups"] * info["codes_per_group"]
        if "mask" in info:
            sparsity = CompressConfig.from_dict(meta["compress_config"]).for_layer(name).sparsity
            _check_mask_values(tensors, info, n_kept(math.prod(info["shape"]), sparsity))
        if info.get("entropy") == "ans":
            counts = tensors[f"{name}.code_counts"].numpy().astype(np.int64)
            if int(counts.min()) < 0 or int(counts.sum()) != count:
                _invalid(f"layer {name}'s code counts do not sum to its {count:,} codes")
            try:  # every code is then below k: the model has k symbols
                _layer_codes(tensors, info)
            except ValueError as exc:
                _invalid(f"layer {name}'s ANS stream is not valid: {exc}")
            continue
        packed = tensors[f"{name}.codes"].numpy()
        padding = 8 * len(packed) - count * bits
        if padding and int(packed[-1]) & ((1 << padding) - 1):
            _invalid(f"layer {name}'s .codes tensor has non-zero padding bits after its last code")
        if k == 1 << bits:
            continue  # every b-bit value is a valid code
        for chunk in _code_chunks(packed, bits, count):
            if len(chunk) and int(chunk.max()) >= k:
                _invalid(f"layer {name} has code {int(chunk.max())}, but its codebooks hold {k} centroids")


def from_bytes(blob: bytes, source: str = "the data") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a compressed model file's bytes, or NotACompressedModel.

    Everything is checked before any tensor is allocated (header, metadata, and each tensor's
    dtype, shape and byte count against the model the metadata describes); then the tensors are
    loaded (a copy of the file) and their values checked. The result is safe for
    `layers_from_payload` and `model_from_payload`.
    """
    try:
        if not isinstance(blob, bytes):
            _invalid(f"it is a {type(blob).__name__}, not bytes")
        if len(blob) > MAX_FILE_BYTES:
            _invalid(f"it is {len(blob):,} bytes, above the {MAX_FILE_BYTES:,} this tool reads")
        entries, meta_text = _parse_header(blob)
        meta = _strict_json(meta_text, "its metadata")
        expected = _check_meta(meta, len(entries))
        return _load_checked(blob, meta, entries, expected)
    except _Invalid as exc:
        raise _refusal(source, str(exc)) from None
    except _LAST_NET as exc:
        raise _refusal(source, _unchecked(exc)) from None


# A last net: the checks are meant to leave nothing for it, and the tests hold them to that.
_LAST_NET = (ValueError, TypeError, KeyError, IndexError, RuntimeError, OverflowError)


def _unchecked(exc: BaseException) -> str:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return f"it could not be checked ({type(exc).__name__}: {first_line})"


def _load_checked(
    blob: bytes, meta: dict, entries: dict[str, _Entry], expected: _Expected
) -> tuple[dict[str, torch.Tensor], dict]:
    """Both file kinds, once the metadata says what to expect: layers against the header, then the
    tensors loaded (a copy of the file) and their values checked."""
    _check_layers(meta, entries, expected)
    try:
        tensors = st_load(blob)
    except SafetensorError as exc:
        _invalid(f"safetensors cannot read it ({str(exc).splitlines()[0] if str(exc) else 'no reason given'})")
    _check_values(tensors, meta, entries)
    return tensors, meta


def read_payload(blob: bytes, source: str = "the data") -> tuple[dict[str, torch.Tensor], dict]:
    """The run store's check of a stored compressed file: `from_bytes`, under the name it is called by there."""
    return from_bytes(blob, source)


def header_bytes(blob: bytes) -> int:
    """Bytes of the safetensors header: its 8-byte length plus the JSON itself."""
    return 8 + int.from_bytes(blob[:8], "little")


def save_file(path: str | Path, blob: bytes) -> None:
    write_atomic(path, blob)


def read_file_bytes(path: str | Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES; NotACompressedModel otherwise.

    The size and type are checked on the opened descriptor, so the file that is read is the one
    that was checked; a FIFO or device is opened non-blocking, so it is refused rather than waited on.
    """
    source = str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise _refusal(source, "there is no file at this path; give a file written by `compress --out`") from None
    except OSError as exc:
        raise _refusal(source, f"it cannot be opened ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refusal(source, "it is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise _refusal(source, f"it is {info.st_size:,} bytes, above the {MAX_FILE_BYTES:,} this tool reads")
        with os.fdopen(fd, "rb", closefd=False) as file:
            blob = file.read(MAX_FILE_BYTES + 1)  # + 1: a file that grew since fstat is still caught
    finally:
        os.close(fd)
    if len(blob) > MAX_FILE_BYTES:
        raise _refusal(source, f"it grew past the {MAX_FILE_BYTES:,} bytes this tool reads")
    return blob


def load_payload(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a compressed model file, validated as `from_bytes` does."""
    return from_bytes(read_file_bytes(path), source=str(path))


def load_file(path: str | Path) -> tuple[nn.Module, dict]:
    """(runnable model, metadata) from a compressed model file."""
    tensors, meta = load_payload(path)
    return model_from_payload(tensors, meta), meta


# ------------------------------------------------------------------------- any nn.Module (core.save)


def build_module_payload(
    rest: dict[str, torch.Tensor], layers: Sequence[QuantizedLayer], cfg: CompressConfig
) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and metadata of a file of any module: its coded weights (as `build_payload`
    writes them) and its uncoded tensors in their own dtypes. No training config: `load_module`
    fills a freshly built instance of the module, which says what every tensor must be."""
    tensors = {key: value.detach().cpu().contiguous() for key, value in rest.items()}
    layer_info = _add_coded(tensors, layers, cfg)
    meta = {"format": MODULE_FORMAT, "compress_config": cfg.to_json(), "layers": layer_info}
    return tensors, meta


def module_from_bytes(
    blob: bytes, into: nn.Module, source: str = "the data", aliases: Mapping[str, str] | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a file written by `core.save`, checked against the module `into`
    before any tensor is allocated (every coded weight names an nn.Linear or nn.Conv2d weight of
    `into` with its shape; every other tensor of `into` is there, in its dtype and shape; nothing
    else is), then loaded and its values checked. NotACompressedModel (one line) otherwise.
    `aliases`: keys of `into` that share their tensor with another key (which alone the file holds)."""
    aliases = aliases or {}
    try:
        if len(blob) > MAX_FILE_BYTES:
            _invalid(f"it is {len(blob):,} bytes, above the {MAX_FILE_BYTES:,} this tool reads")
        entries, meta_text = _parse_header(blob)
        meta = _strict_json(meta_text, "its metadata")
        if not isinstance(meta, dict):
            _invalid("its metadata is not a JSON object")
        if meta.get("format") != MODULE_FORMAT:
            hint = (
                " (a built-in run's file: load it with core.export.load_file)" if meta.get("format") == FORMAT else ""
            )
            _invalid(f"format is {_show(meta.get('format'))}; core.load reads {MODULE_FORMAT!r}{hint}")
        if set(meta) != {"format", "compress_config", "layers"}:
            _invalid("its metadata does not hold exactly format, compress_config and layers")
        cfg = _config(CompressConfig, meta["compress_config"], "compress_config")
        if cfg.to_json() != meta["compress_config"]:
            _invalid(f"compress_config is not in the canonical form this tool writes ({cfg.label()})")
        state = {key: value for key, value in into.state_dict().items() if key not in aliases}
        expected = _Expected(
            compress_cfg=cfg,
            shapes={key: tuple(value.shape) for key, value in state.items()},
            fc_names=[name for name, _ in select_weights(into, ["*"]) if name in state],
            model_label=f"module {type(into).__name__}",
            every_one=False,
            rest_dtypes={key: _DTYPE_NAMES.get(value.dtype, str(value.dtype)) for key, value in state.items()},
        )
        return _load_checked(blob, meta, entries, expected)
    except _Invalid as exc:
        raise _refusal(source, str(exc)) from None
    except _LAST_NET as exc:
        raise _refusal(source, _unchecked(exc)) from None


def fill_module(
    into: nn.Module, tensors: dict[str, torch.Tensor], meta: dict, aliases: Mapping[str, str] | None = None
) -> nn.Module:
    """Load a checked module payload into `into`: coded weights decoded, the rest as stored, and each
    of `aliases` (key -> the key holding its shared tensor) from the tensor it shares."""
    layers = layers_from_payload(tensors, meta)
    state = {layer.name: layer.decode() for layer in layers}
    coded = _coded_tensor_names(layers, meta)
    state.update({key: value for key, value in tensors.items() if key not in coded})
    state.update({key: state[kept] for key, kept in (aliases or {}).items()})
    into.load_state_dict(state, strict=True)
    return into
