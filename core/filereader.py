"""The untrusting reader of the compressed model file (the format: core/fileformat.py).

Reading trusts nothing: `check_bytes` parses the safetensors header itself, checks the metadata
against the model it describes (its state-dict shapes counted by arithmetic, core/modelshapes.py,
so nothing is built or allocated), and checks every tensor's dtype, shape and byte count against
what that model needs, all before a single tensor is loaded. Only then are the tensors loaded
(memory: a copy of the file) and their values checked (finite, codes below k). Anything else is
refused with one `NotACompressedModel` line saying what is wrong.

Every check runs on numpy arrays: verifying a stored file imports no torch (the run store verifies
each compression it serves this way). core/filemodel.py turns a checked payload into torch tensors
and a runnable model.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from safetensors import SafetensorError, deserialize

from . import fileformat as ff
from .config import DATASETS, LATER_FIELDS, MAX_CENTROIDS, CompressConfig, TrainConfig
from .fileformat import Invalid, NotACompressedModel, invalid, packed_bytes, refusal
from .fits import check_fits, row_shape
from .modelshapes import coded_weight_names, state_entries
from .prune import coded_rows, n_kept

if TYPE_CHECKING:
    from torch import nn

    from .methods.base import LayerFormat

Arrays = dict[str, np.ndarray]  # the file's tensors, by name, as the reader holds them


@dataclass(frozen=True)
class Entry:
    """One tensor of the safetensors header, as declared (nothing loaded)."""

    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data section
    end: int


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, what: str, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:
        invalid(f"{what} is {_show(value)}; expected an integer from {low:,} to {high:,}")
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
            invalid(f"{what} repeats a key")
        return dict(pairs)

    def no_constants(name: str) -> NoReturn:
        invalid(f"{what} holds {name}, which JSON does not allow")

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        invalid(f"{what} is not valid JSON")


# ------------------------------------------------------------------------------------ the header


def parse_header(blob: bytes) -> tuple[dict[str, Entry], str]:
    """The tensor index and our metadata string, from the bytes alone.

    Checks what safetensors would, and more: every byte of the data section belongs to exactly one
    tensor, and each tensor's bytes are exactly what its dtype and shape need. After this, a shape
    in the index is a promise the file's bytes keep, so nothing sized by one can exceed the file.
    """
    if len(blob) < 8:
        invalid(f"it is {len(blob)} bytes long, shorter than a safetensors header")
    header_len = int.from_bytes(blob[:8], "little")
    if header_len > min(ff.MAX_HEADER_BYTES, len(blob) - 8):
        invalid(
            f"its header claims {header_len:,} bytes but the file has {len(blob) - 8:,} after the length "
            f"(at most {ff.MAX_HEADER_BYTES:,} are read)"
        )
    header = _strict_json(blob[8 : 8 + header_len], "the safetensors header")
    if not isinstance(header, dict):
        invalid("the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    key = ff.METADATA_KEY
    if not isinstance(metadata, dict) or set(metadata) != {key} or not isinstance(metadata[key], str):
        invalid(f'the safetensors metadata is not {{"{key}": "<JSON>"}}')
    data_len = len(blob) - 8 - header_len
    entries = {name: _header_entry(name, raw, data_len) for name, raw in header.items()}
    position = 0  # the tensors, in file order, must tile the data section: no overlap, no gap
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            invalid(f"tensor {_show(name)} starts at byte {entry.begin:,} of the data section, expected {position:,}")
        position = entry.end
    if position != data_len:
        invalid(f"the tensors cover {position:,} bytes of the {data_len:,}-byte data section")
    return entries, metadata[key]


def _header_entry(key: str, raw: Any, data_len: int) -> Entry:
    """One tensor's entry of the header: its dtype one the writer writes, its shape a short list, its
    bytes inside the data section and exactly what dtype and shape need."""
    # a name from the file: quoted when it is long or odd, so that the message stays one short line
    name = key if len(key) <= 60 and key.isprintable() else _show(key)
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        invalid(f"tensor {_show(key)} in the header is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if dtype not in ff.DTYPES:
        invalid(f"tensor {name} has dtype {_show(dtype)}; this tool writes only {', '.join(ff.DTYPES)}")
    if (
        not isinstance(shape, list)
        or len(shape) > ff.MAX_TENSOR_DIMS
        or not all(_is_int(dim) and 0 <= dim <= ff.MAX_FILE_BYTES for dim in shape)
    ):
        invalid(f"tensor {name} has shape {_show(shape)}; expected a short list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(x) for x in offsets)):
        invalid(f"tensor {name} has data_offsets {_show(offsets)}; expected [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        invalid(f"tensor {name} has data_offsets [{begin:,}, {end:,}] outside the {data_len:,}-byte data section")
    need = math.prod(shape) * ff.DTYPES[dtype][1]
    if end - begin != need:
        invalid(f"tensor {name} of shape {shape} and dtype {dtype} needs {need:,} bytes but has {end - begin:,}")
    return Entry(dtype, tuple(shape), begin, end)


# ---------------------------------------------------------------------------------- the metadata


def _config(cls: type[TrainConfig] | type[CompressConfig], data: Any, what: str) -> Any:
    """A TrainConfig / CompressConfig from its metadata dict: every field present, typed, valid."""
    if not isinstance(data, dict):
        invalid(f"{what} is not a JSON object")
    names = [f.name for f in fields(cls)]
    # a field added later is left out of the JSON while it holds its default (config.LATER_FIELDS)
    if missing := [name for name in names if name not in data and name not in LATER_FIELDS]:
        invalid(f"{what} lacks {', '.join(missing)}")
    if unknown := [key for key in data if key not in names]:
        invalid(f"{what} has unknown field {_show(unknown[0])}")
    for f in fields(cls):
        if f.name not in data:
            continue
        value, default = data[f.name], f.default
        if f.name == "per_layer":  # a list of settings, each typed here, then checked by the config
            ok = isinstance(value, list) and all(_is_layer_setting(v) for v in value)
        elif isinstance(default, tuple):  # hidden widths
            ok = isinstance(value, list) and all(_is_int(v) for v in value)
        elif isinstance(default, float):
            ok = isinstance(value, float) or _is_int(value)
        else:
            ok = isinstance(value, type(default)) and not isinstance(value, bool)
        if not ok:
            invalid(f"{what}.{f.name} is {_show(value)}, not of the type this tool writes")
    try:
        return cls(**data)
    except (ValueError, TypeError) as exc:
        invalid(f"{what}: {exc}")


def _is_layer_setting(value: Any) -> bool:
    """A per-layer setting's JSON object with its fields of the types this tool writes (its keys and
    ranges are the config's to check, `LayerSetting.from_value`)."""
    if not isinstance(value, dict):
        return False
    types = {"name": str, "method": str, "subvector_size": int, "n_centroids": int}
    if not all(isinstance(value.get(key, 0 if kind is int else ""), kind) for key, kind in types.items()):
        return False
    if any(isinstance(value.get(key), bool) for key in ("subvector_size", "n_centroids", "sparsity")):
        return False
    sparsity = value.get("sparsity", 0.0)
    return isinstance(sparsity, float) or _is_int(sparsity)


@dataclass(frozen=True)
class Expected:
    """What the metadata says the file must hold."""

    compress_cfg: CompressConfig
    shapes: dict[str, tuple[int, ...]]  # state-dict key -> shape, of the model the metadata describes
    fc_names: list[str]  # the weights that may be coded (a built-in: exactly those its targets name)
    model_label: str  # the model, for messages
    every_one: bool = True  # a built-in compression codes every weight of fc_names
    rest_dtypes: dict[str, str] | None = None  # dtype of each uncoded tensor; None: all F32


def _model_label(cfg: TrainConfig) -> str:
    return f"model {cfg.model}" + (f" with hidden {list(cfg.hidden)}" if cfg.model == "mlp" else "")


def _check_meta(meta: Any, n_tensors: int) -> Expected:
    """The metadata's own fields, and the model they describe (its shapes counted, nothing built)."""
    if not isinstance(meta, dict):
        invalid("its metadata is not a JSON object")
    if meta.get("format") != ff.FORMAT:
        invalid(f"format is {_show(meta.get('format'))}; this tool reads {ff.FORMAT!r}")
    if missing := [key for key in ff.REQUIRED_META if key not in meta]:
        invalid(f"its metadata lacks {', '.join(missing)}")
    if unknown := [key for key in meta if key not in ff.REQUIRED_META + ff.OPTIONAL_META]:
        invalid(f"its metadata has unknown key {_show(unknown[0])}")
    train_data = meta["train_config"]
    if isinstance(train_data, dict) and train_data.get("model") == "mlp" and isinstance(train_data.get("hidden"), list):
        hidden = train_data["hidden"]
        # mlp has one FC weight a width plus one; each is a tensor in the file, so a longer list is a lie
        # that would only cost time in counting the model below.
        if len(hidden) >= n_tensors:
            invalid(f"train_config.hidden lists {len(hidden):,} layers but the file holds {n_tensors} tensors")
        for width in hidden:
            _int(width, "a width in train_config.hidden", 1, ff.MAX_HIDDEN_WIDTH)
    train_cfg = _config(TrainConfig, train_data, "train_config")
    compress_cfg = _config(CompressConfig, meta["compress_config"], "compress_config")
    if compress_cfg.to_json() != meta["compress_config"]:
        invalid(f"compress_config is not in the canonical form this tool writes ({compress_cfg.label()})")
    input_shape = meta["input_shape"]
    if not isinstance(input_shape, list) or len(input_shape) != 3:
        invalid(f"input_shape is {_show(input_shape)}; expected [channels, height, width]")
    for value in input_shape:
        _int(value, "a side of input_shape", 1, ff.MAX_INPUT_SIDE)
    n_classes = _int(meta["n_classes"], "n_classes", 2, ff.MAX_CLASSES)
    if "run_id" in meta and not (isinstance(meta["run_id"], str) and re.fullmatch("[0-9a-f]{16}", meta["run_id"])):
        invalid(f"run_id is {_show(meta['run_id'])}; expected the 16 hex digits of a run id")
    if "accuracy" in meta:
        accuracy = meta["accuracy"]
        if not (isinstance(accuracy, float) or _is_int(accuracy)) or not 0 <= accuracy <= 1:
            invalid(f"accuracy is {_show(accuracy)}; expected a number from 0 to 1")
    if "dataset" in meta and (meta["dataset"] not in DATASETS or meta["dataset"] != train_cfg.dataset):
        invalid(f"dataset is {_show(meta['dataset'])}, but the run was trained on {train_cfg.dataset!r}")
    try:  # shapes only: nothing is allocated, whatever the sizes claimed
        model = state_entries(train_cfg.model, tuple(input_shape), n_classes, train_cfg.hidden)
    except ValueError as exc:
        invalid(f"model {train_cfg.model} cannot take inputs of shape {tuple(input_shape)} ({exc})")
    shapes = {entry.key: entry.shape for entry in model}
    coded = coded_weight_names(model, compress_cfg.targets)
    return Expected(compress_cfg, shapes, coded, _model_label(train_cfg))


# ------------------------------------------------------------------------------------ the layers

Wanted = dict[str, tuple[str, tuple[int, ...]]]  # tensor -> (dtype, shape) it must have


def _check_layers(meta: dict, entries: dict[str, Entry], expected: Expected) -> None:
    """Every layer entry against the model and the config, every tensor against the layers: header only."""
    cfg = expected.compress_cfg
    layers = meta["layers"]
    if not isinstance(layers, list):
        invalid("layers is not a list")
    listed = {info.get("name") for info in layers if isinstance(info, dict)}
    fc_shapes = [(name, expected.shapes[name]) for name in expected.fc_names if expected.every_one or name in listed]
    try:
        if cfg.per_layer:  # each weight by its own setting; a setting may name a weight kept float
            cfg.check_layer_names(list(expected.fc_names))
            for name, shape in fc_shapes:
                check_fits([(name, shape)], cfg.for_layer(name))
        else:
            check_fits(fc_shapes, cfg)
    except ValueError as exc:
        invalid(f"compress_config does not fit the model: {exc}")
    wanted: Wanted = {}
    coded: list[str] = []
    for index, info in enumerate(layers):
        listed_name = info.get("name") if isinstance(info, dict) else None
        # its own setting, in a per-layer compression
        layer_cfg = cfg.for_layer(listed_name) if isinstance(listed_name, str) else cfg
        stage_keys = (
            *(("entropy",) if cfg.entropy != "none" else ()),
            *(("mask",) if layer_cfg.sparsity > 0 else ()),
        )
        layer_keys = (*ff.LAYER_KEYS, *layer_cfg.method_spec.layer_keys, *stage_keys)
        if not isinstance(info, dict) or set(info) != set(layer_keys):
            invalid(f"layers[{index}] does not have exactly the keys {', '.join(layer_keys)}")
        name = info["name"]
        if name not in expected.fc_names:
            what = "an FC weight" if cfg.targets == "fc" and expected.every_one else "an FC or conv weight"
            invalid(f"layers[{index}] names {_show(name)}, which is not {what} of the {expected.model_label}")
        if name in coded:
            invalid(f"layer {name} is listed twice")
        coded.append(name)
        _check_layer(info, entries, expected, wanted)
    uncoded = [name for name in expected.fc_names if name not in coded]
    for name in uncoded if expected.every_one else ():
        own = cfg.for_layer(name)  # its own setting, in a per-layer compression
        if own.method_spec.layer_format(row_shape(expected.shapes[name]), own):
            invalid(f"method {own.method} codes every weight it targets, but {name} has no layer entry")
    for key, shape in expected.shapes.items():
        if key in coded:
            if key in entries:
                invalid(f"layer {key} is coded and also stored in float")
        else:
            wanted[key] = ((expected.rest_dtypes or {}).get(key, "F32"), shape)
    for key, (dtype, shape) in wanted.items():
        entry = entries.get(key)
        if entry is None:
            invalid(f"tensor {key} is missing")
        if entry.dtype != dtype or entry.shape != shape:
            invalid(f"tensor {key} is {entry.dtype} {list(entry.shape)}; expected {dtype} {list(shape)}")
    if unexpected := sorted(set(entries) - set(wanted)):
        invalid(f"tensor {_show(unexpected[0])} is not part of the model")


def _layer_format(info: dict, expected: Expected) -> tuple[LayerFormat, int]:
    """The format the config's method writes for the layer entry's weight (its values checked against
    what the entry declares), and the weight's number of values."""
    name = info["name"]
    cfg = expected.compress_cfg.for_layer(name)  # its own setting, in a per-layer compression
    method = cfg.method_spec
    model_shape = list(expected.shapes[name])
    out_features, in_features = row_shape(model_shape)  # a conv: its rows of in * kh * kw values
    shape = info["shape"]
    # type checks too: 32.0 == 32 and True == 1 in Python, and neither is what this tool writes
    if not (isinstance(shape, list) and all(map(_is_int, shape)) and shape == model_shape):
        invalid(f"layer {name} declares shape {_show(info['shape'])} but the model's is {model_shape}")
    layout = info["layout"]
    if layout not in ff.LAYOUTS:
        invalid(f"layer {name} has layout {_show(layout)}; expected one of {', '.join(ff.LAYOUTS)}")
    dim = _int(info["subvector_size"], f"layer {name}'s subvector_size", 1, in_features)
    k = _int(info["n_centroids"], f"layer {name}'s n_centroids", 2, MAX_CENTROIDS)
    form = method.layer_format(coded_rows((out_features, in_features), cfg.sparsity), cfg)
    if form is None:
        invalid(f"layer {name} is coded but method {cfg.method} codes no layer")
    declared = (layout, dim, k, *(info[key] for key in method.layer_keys))
    writes = (form.layout, form.subvector_size, form.n_centroids, *form.extra.values())
    if not all(_is_int(info[key]) for key in method.layer_keys) or declared != writes:
        extra = "".join(f" {key}={_show(info[key])}" for key in method.layer_keys)
        wants = "".join(f" {key}={value}" for key, value in form.extra.items())
        invalid(
            f"layer {name} is {layout} d={dim} k={k}{extra} but compress_config says method {cfg.method} "
            f"writes {form.layout} d={form.subvector_size} k={form.n_centroids}{wants}"
        )
    if not _is_int(info["code_bits"]) or info["code_bits"] != form.code_bits:
        invalid(f"layer {name} declares code_bits {_show(info['code_bits'])}; k={k} needs {form.code_bits}")
    return form, out_features * in_features


def _check_layer(info: dict, entries: dict[str, Entry], expected: Expected, wanted: Wanted) -> None:
    """One layer entry against the model and the config, and its tensors (added to `wanted`)."""
    cfg, name = expected.compress_cfg, info["name"]
    form, n_weights = _layer_format(info, expected)
    bits, k = form.code_bits, form.n_centroids
    groups = _int(info["groups"], f"layer {name}'s groups", 1, ff.MAX_FILE_BYTES)
    count = _int(info["codes_per_group"], f"layer {name}'s codes_per_group", 1, 8 * ff.MAX_FILE_BYTES)
    codes_entry = entries.get(f"{name}.codes")
    if codes_entry is None:
        invalid(f"layer {name} has no {name}.codes tensor")
    if codes_entry.dtype != "U8" or len(codes_entry.shape) != 1:
        invalid(f"tensor {name}.codes is {codes_entry.dtype} {list(codes_entry.shape)}; expected 1-D U8")
    held = codes_entry.end - codes_entry.begin
    stored = info.get("entropy", "none")
    if stored not in ("none", cfg.entropy):
        invalid(f"layer {name} stores its codes as {_show(stored)}; expected none or {cfg.entropy}")
    if stored == "ans":
        if held == 0 or held % 4 or held > packed_bytes(groups * count, bits):
            invalid(
                f"layer {name}'s ANS stream is {held:,} bytes; expected whole 32-bit words, at most the "
                f"{packed_bytes(groups * count, bits):,} bytes of its packed codes"
            )
        wanted[f"{name}.code_counts"] = ("I32", (k,))
    elif packed_bytes(groups * count, bits) != held:
        invalid(
            f"layer {name} declares {groups * count:,} codes but its .codes tensor holds {held:,} bytes "
            f"({packed_bytes(groups * count, bits):,} needed at {bits} bits a code)"
        )
    if cfg.for_layer(name).sparsity > 0:
        _check_mask_entry(info, entries, wanted, n_weights)
    implied = (form.groups, form.codes_per_group)
    if (groups, count) != implied:
        invalid(
            f"layer {name} declares groups={groups:,}, codes_per_group={count:,} but layout {info['layout']} "
            f"with d={form.subvector_size} implies groups={implied[0]:,}, codes_per_group={implied[1]:,}"
        )
    wanted[f"{name}.codes"] = ("U8", (held,))
    for suffix, tensor_shape in form.tensors.items():
        wanted[f"{name}.{suffix}"] = (ff.CENTROID_DTYPES[cfg.centroid_bits], tensor_shape)


def _check_mask_entry(info: dict, entries: dict[str, Entry], wanted: Wanted, n: int) -> None:
    """A pruned layer's mask tensor (and its counts) against the layer's n weights: header only."""
    name, how = info["name"], info["mask"]
    if how not in ("bitmap", "ans"):
        invalid(f"layer {name} stores its mask as {_show(how)}; expected bitmap or ans")
    entry = entries.get(f"{name}.mask")
    if entry is None or entry.dtype != "U8" or len(entry.shape) != 1:
        invalid(f"layer {name} is pruned but has no 1-D U8 {name}.mask tensor")
    held = entry.end - entry.begin
    if how == "bitmap" and held != packed_bytes(n, 1):
        invalid(f"layer {name}'s mask is {held:,} bytes; its {n:,} weights need {packed_bytes(n, 1):,}")
    if how == "ans" and (held == 0 or held % 4 or held > packed_bytes(n, 1)):
        invalid(f"layer {name}'s ANS mask is {held:,} bytes; expected whole 32-bit words, fewer than a bitmap")
    wanted[f"{name}.mask"] = ("U8", (held,))
    if how == "ans":
        wanted[f"{name}.mask_counts"] = ("I32", (2,))


# ------------------------------------------------------------------------------------ the values


def _is_finite(array: np.ndarray, dtype: str) -> bool:
    if dtype == "BF16":  # raw 16-bit patterns: NaN and infinity are those with every exponent bit set
        return not bool(np.any((array & 0x7F80) == 0x7F80))
    if array.dtype.kind != "f":
        return True
    return bool(np.isfinite(array).all())


def _check_mask_values(arrays: Arrays, info: dict, kept: int) -> None:
    """A pruned layer's mask: exactly `kept` survivors (what the sparsity leaves), every bit accounted."""
    name, n = info["name"], math.prod(info["shape"])
    if info["mask"] == "bitmap":
        packed = arrays[f"{name}.mask"]
        padding = 8 * len(packed) - n
        if padding and int(packed[-1]) & ((1 << padding) - 1):
            invalid(f"layer {name}'s mask has non-zero padding bits after its last weight")
    else:
        counts = arrays[f"{name}.mask_counts"].astype(np.int64)
        if int(counts.min()) < 0 or int(counts.sum()) != n:
            invalid(f"layer {name}'s mask counts do not sum to its {n:,} weights")
    try:
        survivors = int(ff.layer_mask(arrays, info).sum())
    except ValueError as exc:
        invalid(f"layer {name}'s ANS mask is not valid: {exc}")
    if survivors != kept:
        invalid(f"layer {name}'s mask keeps {survivors:,} weights; the sparsity leaves {kept:,}")


def _check_codes(arrays: Arrays, info: dict) -> None:
    """A layer's codes: every one inside its codebook, every bit accounted for."""
    name, bits, k = info["name"], info["code_bits"], info["n_centroids"]
    count = info["groups"] * info["codes_per_group"]
    if info.get("entropy") == "ans":
        counts = arrays[f"{name}.code_counts"].astype(np.int64)
        if int(counts.min()) < 0 or int(counts.sum()) != count:
            invalid(f"layer {name}'s code counts do not sum to its {count:,} codes")
        try:  # every code is then below k: the model has k symbols
            ff.layer_codes(arrays, info)
        except ValueError as exc:
            invalid(f"layer {name}'s ANS stream is not valid: {exc}")
        return
    packed = arrays[f"{name}.codes"]
    padding = 8 * len(packed) - count * bits
    if padding and int(packed[-1]) & ((1 << padding) - 1):
        invalid(f"layer {name}'s .codes tensor has non-zero padding bits after its last code")
    if k == 1 << bits:
        return  # every b-bit value is a valid code
    for chunk in ff.code_chunks(packed, bits, count):
        if len(chunk) and int(chunk.max()) >= k:
            invalid(f"layer {name} has code {int(chunk.max())}, but its codebooks hold {k} centroids")


def _check_values(arrays: Arrays, meta: dict, entries: dict[str, Entry]) -> None:
    """The loaded tensors: as the header said, finite, and every code inside its codebook."""
    if set(arrays) != set(entries):
        invalid("safetensors loaded other tensors than its header lists")
    for key, array in arrays.items():
        entry = entries[key]
        if array.dtype != ff.DTYPES[entry.dtype][0] or tuple(array.shape) != entry.shape:
            invalid(f"tensor {key} loaded as {array.dtype} {list(array.shape)}, not as its header says")
        if not _is_finite(array, entry.dtype):
            invalid(f"tensor {key} holds NaN or infinite values")
    for info in meta["layers"]:
        if "mask" in info:
            sparsity = CompressConfig.from_dict(meta["compress_config"]).for_layer(info["name"]).sparsity
            _check_mask_values(arrays, info, n_kept(math.prod(info["shape"]), sparsity))
        _check_codes(arrays, info)


def _load_arrays(blob: bytes) -> Arrays:
    """The file's tensors as numpy arrays (views of safetensors' copy of the data: no further copy),
    as safetensors itself reads them; SafetensorError if it cannot."""
    arrays = {}
    for name, view in deserialize(blob):
        if view["dtype"] not in ff.DTYPES:
            invalid(f"safetensors read tensor {_show(name)} as {_show(view['dtype'])}, not as its header says")
        arrays[name] = np.frombuffer(view["data"], dtype=ff.DTYPES[view["dtype"]][0]).reshape(view["shape"])
    return arrays


# ------------------------------------------------------------------------------------ the entries

# A last net: the checks are meant to leave nothing for it, and the tests hold them to that.
_LAST_NET = (ValueError, TypeError, KeyError, IndexError, RuntimeError, OverflowError)


def _unchecked(exc: BaseException) -> str:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return f"it could not be checked ({type(exc).__name__}: {first_line})"


def _load_checked(blob: bytes, meta: dict, entries: dict[str, Entry], expected: Expected) -> Arrays:
    """Both file kinds, once the metadata says what to expect: layers against the header, then the
    tensors loaded (a copy of the file) and their values checked."""
    _check_layers(meta, entries, expected)
    try:
        arrays = _load_arrays(blob)
    except SafetensorError as exc:
        invalid(f"safetensors cannot read it ({str(exc).splitlines()[0] if str(exc) else 'no reason given'})")
    _check_values(arrays, meta, entries)
    return arrays


def check_bytes(blob: bytes, source: str = "the data") -> tuple[Arrays, dict]:
    """(numpy arrays, metadata) of a compressed model file's bytes, or NotACompressedModel.

    Everything is checked before any tensor is allocated (header, metadata, and each tensor's
    dtype, shape and byte count against the model the metadata describes); then the tensors are
    loaded (a copy of the file) and their values checked. No torch: core/filemodel.py makes torch
    tensors and the model of the result.
    """
    try:
        if not isinstance(blob, bytes):
            invalid(f"it is a {type(blob).__name__}, not bytes")
        if len(blob) > ff.MAX_FILE_BYTES:
            invalid(f"it is {len(blob):,} bytes, above the {ff.MAX_FILE_BYTES:,} this tool reads")
        entries, meta_text = parse_header(blob)
        meta = _strict_json(meta_text, "its metadata")
        expected = _check_meta(meta, len(entries))
        return _load_checked(blob, meta, entries, expected), meta
    except Invalid as exc:
        raise refusal(source, str(exc)) from None
    except _LAST_NET as exc:
        raise refusal(source, _unchecked(exc)) from None


def verified_arrays(blob: bytes) -> Arrays:
    """The tensors of bytes that already passed `check_bytes` (the run store keeps which, by their
    sha256), loaded without checking them again. Never for bytes from anywhere else."""
    return _load_arrays(blob)


def check_module_bytes(
    blob: bytes, into: nn.Module, source: str = "the data", aliases: Mapping[str, str] | None = None
) -> tuple[Arrays, dict]:
    """(arrays, metadata) of a file written by `core.save`, checked against the
    module `into` before any tensor is allocated (every coded weight names an nn.Linear or nn.Conv2d
    weight of `into` with its shape; every other tensor of `into` is there, in its dtype and shape;
    nothing else is), then loaded and its values checked. NotACompressedModel (one line) otherwise.
    `aliases`: keys of `into` that share their tensor with another key (which alone the file holds)."""
    from .models import select_weights  # `into` is a torch module: torch is here already

    aliases = aliases or {}
    try:
        if len(blob) > ff.MAX_FILE_BYTES:
            invalid(f"it is {len(blob):,} bytes, above the {ff.MAX_FILE_BYTES:,} this tool reads")
        entries, meta_text = parse_header(blob)
        meta = _strict_json(meta_text, "its metadata")
        if not isinstance(meta, dict):
            invalid("its metadata is not a JSON object")
        if meta.get("format") != ff.MODULE_FORMAT:
            hint = (
                " (a built-in run's file: load it with core.export.load_file)"
                if meta.get("format") == ff.FORMAT
                else ""
            )
            invalid(f"format is {_show(meta.get('format'))}; core.load reads {ff.MODULE_FORMAT!r}{hint}")
        if set(meta) != {"format", "compress_config", "layers"}:
            invalid("its metadata does not hold exactly format, compress_config and layers")
        cfg = _config(CompressConfig, meta["compress_config"], "compress_config")
        if cfg.to_json() != meta["compress_config"]:
            invalid(f"compress_config is not in the canonical form this tool writes ({cfg.label()})")
        state = {key: value for key, value in into.state_dict().items() if key not in aliases}
        expected = Expected(
            compress_cfg=cfg,
            shapes={key: tuple(value.shape) for key, value in state.items()},
            fc_names=[name for name, _ in select_weights(into, ["*"]) if name in state],
            model_label=f"module {type(into).__name__}",
            every_one=False,
            rest_dtypes={key: _safetensors_dtype(value.dtype) for key, value in state.items()},
        )
        return _load_checked(blob, meta, entries, expected), meta
    except Invalid as exc:
        raise refusal(source, str(exc)) from None
    except _LAST_NET as exc:
        raise refusal(source, _unchecked(exc)) from None


# torch dtype name -> safetensors dtype: what a module's uncoded tensor must be stored as
_TORCH_DTYPES = {"uint8": "U8", "float16": "F16", "bfloat16": "BF16", "float32": "F32"}
_TORCH_DTYPES |= {"int32": "I32", "float64": "F64", "int64": "I64"}


def _safetensors_dtype(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    return _TORCH_DTYPES.get(name, str(dtype))


# ------------------------------------------------------------------------------------- the file


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
        raise refusal(source, "there is no file at this path; give a file written by `compress --out`") from None
    except OSError as exc:
        raise refusal(source, f"it cannot be opened ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refusal(source, "it is not a regular file")
        if info.st_size > ff.MAX_FILE_BYTES:
            raise refusal(source, f"it is {info.st_size:,} bytes, above the {ff.MAX_FILE_BYTES:,} this tool reads")
        with os.fdopen(fd, "rb", closefd=False) as file:
            blob = file.read(ff.MAX_FILE_BYTES + 1)  # + 1: a file that grew since fstat is still caught
    finally:
        os.close(fd)
    if len(blob) > ff.MAX_FILE_BYTES:
        raise refusal(source, f"it grew past the {ff.MAX_FILE_BYTES:,} bytes this tool reads")
    return blob


__all__ = [
    "NotACompressedModel",
    "check_bytes",
    "check_module_bytes",
    "parse_header",
    "read_file_bytes",
    "verified_arrays",
]
