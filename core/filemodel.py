"""A checked compressed file as torch tensors and a runnable model: the torch half of reading (the
checks themselves are core/filereader.py's, on numpy arrays; the format is core/fileformat.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .config import CompressConfig, TrainConfig
from .fileformat import DTYPES, layer_codes, layer_mask, unpack_bits
from .filereader import check_bytes, check_module_bytes, read_file_bytes

if TYPE_CHECKING:
    from .pq import QuantizedLayer

# the reader's numpy dtype of each safetensors dtype -> its torch dtype (uint16 is BF16's raw bits:
# the writer writes no other 16-bit integers)
_TORCH_DTYPES = {
    DTYPES[name][0]: dtype
    for name, dtype in {
        "U8": torch.uint8,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F32": torch.float32,
        "I32": torch.int32,
        "F64": torch.float64,
        "I64": torch.int64,
    }.items()
}


def as_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The reader's numpy arrays as CPU torch tensors sharing their memory, as safetensors.torch.load
    gives them (torch warns once that they are read-only, as it does there)."""
    tensors = {}
    for key, array in arrays.items():
        dtype = _TORCH_DTYPES[array.dtype]
        if array.size == 0:  # torch.frombuffer takes no empty buffer
            tensors[key] = torch.empty(array.shape, dtype=dtype)
        else:
            tensors[key] = torch.frombuffer(array, dtype=dtype).reshape(array.shape)
    return tensors


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """(bytes,) uint8 -> (count,) int64 codes; the inverse of `pack_codes`."""
    return torch.from_numpy(unpack_bits(packed.numpy(), bits, count))


def from_bytes(blob: bytes, source: str = "the data") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a compressed model file's bytes, or NotACompressedModel: the reader's
    checks (`core.filereader.check_bytes`), then the checked arrays as torch tensors. The result is
    safe for `layers_from_payload` and `model_from_payload`."""
    arrays, meta = check_bytes(blob, source)
    return as_tensors(arrays), meta


def read_payload(blob: bytes, source: str = "the data") -> tuple[dict[str, torch.Tensor], dict]:
    """`from_bytes`, under the name the run store once called it by (the store now checks with
    `core.filereader.check_bytes`, which imports no torch)."""
    return from_bytes(blob, source)


def load_payload(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a compressed model file, validated as `from_bytes` does."""
    return from_bytes(read_file_bytes(path), source=str(path))


def load_file(path: str | Path) -> tuple[nn.Module, dict]:
    """(runnable model, metadata) from a compressed model file."""
    tensors, meta = load_payload(path)
    return model_from_payload(tensors, meta), meta


def layers_from_payload(tensors: Mapping[str, torch.Tensor], meta: dict) -> list[QuantizedLayer]:
    """The coded FC layers of a payload from `from_bytes` (or `build_payload`), decoded to QuantizedLayers
    by the method its compress_config names."""
    cfg = CompressConfig.from_dict(meta["compress_config"])
    layers = []
    for info in meta["layers"]:
        name, groups, count = info["name"], info["groups"], info["codes_per_group"]
        method = cfg.for_layer(name).method_spec  # its own setting, in a per-layer compression
        codes = torch.from_numpy(layer_codes(tensors, info)).reshape(groups, count)
        layer = method.read_layer(name, info, tensors, codes)
        if "mask" in info:
            layer = dataclasses.replace(layer, mask=torch.from_numpy(layer_mask(tensors, info)))
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


def model_from_payload(tensors: Mapping[str, torch.Tensor], meta: dict) -> nn.Module:
    """Rebuild the runnable model: float rest as stored, FC weights decoded from their codes.

    Only for payloads that `from_bytes` validated (or that `build_payload` just built): then every
    key and shape below is known to match, the codes index inside their codebooks, and the model's
    memory is that of the model the file describes. Loading is strict, so a payload that slipped
    past validation fails loudly instead of leaving weights at their random init.
    """
    from .models import build_model

    cfg = TrainConfig.from_dict(meta["train_config"])
    model = build_model(cfg.model, tuple(meta["input_shape"]), meta["n_classes"], cfg.hidden)
    layers = layers_from_payload(tensors, meta)
    state = {layer.name: layer.decode() for layer in layers}
    coded = _coded_tensor_names(layers, meta)
    state.update({key: value.float() for key, value in tensors.items() if key not in coded})
    model.load_state_dict(state, strict=True)
    return model.eval()


def module_from_bytes(
    blob: bytes, into: nn.Module, source: str = "the data", aliases: Mapping[str, str] | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a file written by `core.save`, checked against the module `into`
    (`core.filereader.check_module_bytes`); NotACompressedModel (one line) otherwise."""
    arrays, meta = check_module_bytes(blob, into, source, aliases)
    return as_tensors(arrays), meta


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
