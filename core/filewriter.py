"""The writer of the compressed model file (the format: core/fileformat.py): a model's coded layers
and float rest -> (tensors, metadata) -> the file's bytes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import save as st_save

from . import entropy
from .fileformat import FORMAT, METADATA_KEY, MODULE_FORMAT, counts_key, pack_bits
from .fileio import write_atomic

if TYPE_CHECKING:
    from .config import CompressConfig, TrainConfig
    from .pq import QuantizedLayer


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(G, N) int codes -> (ceil(G * N * bits / 8),) uint8, each code MSB first."""
    return torch.from_numpy(pack_bits(codes.cpu().numpy(), bits))


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
    tensors[counts_key(key)] = torch.from_numpy(coded.counts.astype(np.int32))
    return "ans"


def add_coded(tensors: dict[str, torch.Tensor], layers: Sequence[QuantizedLayer], cfg: CompressConfig) -> list[dict]:
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
    layer_info = add_coded(tensors, layers, compress_cfg)
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


def build_module_payload(
    rest: dict[str, torch.Tensor], layers: Sequence[QuantizedLayer], cfg: CompressConfig
) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and metadata of a file of any module (`core.save`): its coded weights (as
    `build_payload` writes them) and its uncoded tensors in their own dtypes. No training config:
    `load_module` fills a freshly built instance of the module, which says what every tensor must be."""
    tensors = {key: value.detach().cpu().contiguous() for key, value in rest.items()}
    layer_info = add_coded(tensors, layers, cfg)
    meta = {"format": MODULE_FORMAT, "compress_config": cfg.to_json(), "layers": layer_info}
    return tensors, meta


def to_bytes(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    return st_save(tensors, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})


def save_file(path: str | Path, blob: bytes) -> None:
    write_atomic(path, blob)
