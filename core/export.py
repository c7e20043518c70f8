"""The compressed model file (safetensors): bit-packed codes, codebooks, the float rest, and the
configs in the metadata. Loading needs nothing but the file.

Tensors in the file, for each FC weight `W` (state-dict key, e.g. `fcs.0.weight`):
  `W.codes`      uint8, the layer's codes bit-packed (b = ceil(log2 k) bits each, MSB first)
  `W.codebooks`  float32 / float16, (G, k, d)          (kmeans, pq)
  `W.alpha`      float32 / float16, (1,)               (binarize: the codebook is [-alpha, +alpha])
and every other state-dict entry (biases, convs; FC weights too for method float) in float32.

Size on disk = model bits / 8 (the accounting of size.py) + under one byte of padding per FC
layer (each layer's codes are packed to whole bytes) + the safetensors header (8 bytes of length
plus the JSON header, which holds the tensor index and the metadata; `HEADER_BOUND` bounds it for
the models here).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .config import CompressConfig, TrainConfig
from .fileio import write_atomic
from .models import build_model
from .pq import QuantizedLayer
from .size import code_width

FORMAT = "compression-lab/1"
HEADER_BOUND = 8 * 1024  # bytes: safetensors header of every model here, metadata included


class NotACompressedModel(ValueError):
    """The file is missing, unreadable, or not written by `export`."""


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(G, N) int codes -> (ceil(G * N * bits / 8),) uint8, each code MSB first."""
    flat = codes.flatten().cpu().numpy().astype(np.int64)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    bit_matrix = ((flat[:, None] >> shifts) & 1).astype(np.uint8)  # (G * N, bits)
    return torch.from_numpy(np.packbits(bit_matrix.reshape(-1)))


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """(bytes,) uint8 -> (count,) int64 codes; the inverse of `pack_codes`."""
    bit_array = np.unpackbits(packed.numpy(), count=count * bits).reshape(count, bits)  # (count, bits)
    weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
    return torch.from_numpy(bit_array.astype(np.int64) @ weights)


def _code_bits(layer: QuantizedLayer) -> int:
    return 1 if layer.layout == "sign" else code_width(layer.n_centroids)


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
    store_dtype = torch.float16 if compress_cfg.centroid_bits == 16 else torch.float32
    coded = {layer.name for layer in layers}
    tensors = {key: value.detach().float().cpu().contiguous() for key, value in state_dict.items() if key not in coded}
    layer_info = []
    for layer in layers:
        bits = _code_bits(layer)
        tensors[f"{layer.name}.codes"] = pack_codes(layer.codes, bits)
        if layer.layout == "sign":
            tensors[f"{layer.name}.alpha"] = layer.codebooks[0, 1].detach().cpu().to(store_dtype).reshape(1)
        else:
            tensors[f"{layer.name}.codebooks"] = layer.codebooks.detach().cpu().to(store_dtype).contiguous()
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
            }
        )
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


def layers_from_payload(tensors: dict[str, torch.Tensor], meta: dict) -> list[QuantizedLayer]:
    layers = []
    for info in meta["layers"]:
        name, groups, count = info["name"], info["groups"], info["codes_per_group"]
        codes = unpack_codes(tensors[f"{name}.codes"], info["code_bits"], groups * count).reshape(groups, count)
        if info["layout"] == "sign":
            alpha = tensors[f"{name}.alpha"].float().reshape(())
            codebooks = torch.stack([-alpha, alpha]).reshape(1, 2, 1)
        else:
            codebooks = tensors[f"{name}.codebooks"].float()
        layers.append(
            QuantizedLayer(name, tuple(info["shape"]), info["subvector_size"], info["layout"], codebooks, codes)
        )
    return layers


def model_from_payload(tensors: dict[str, torch.Tensor], meta: dict) -> nn.Module:
    """Rebuild the runnable model: float rest as stored, FC weights decoded from their codes."""
    cfg = TrainConfig.from_dict(meta["train_config"])
    model = build_model(cfg.model, tuple(meta["input_shape"]), meta["n_classes"], cfg.hidden)
    state = {}
    coded = set()
    for layer in layers_from_payload(tensors, meta):
        state[layer.name] = layer.decode()
        coded.update(f"{layer.name}.{part}" for part in ("codes", "codebooks", "alpha"))
    state.update({key: value.float() for key, value in tensors.items() if key not in coded})
    model.load_state_dict(state)
    return model.eval()


def to_bytes(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    return st_save(tensors, metadata={"compression_lab": json.dumps(meta, sort_keys=True)})


def from_bytes(blob: bytes, source: str = "the data") -> tuple[dict[str, torch.Tensor], dict]:
    """Parse a file's bytes; NotACompressedModel when they are not one of ours."""
    try:
        tensors = st_load(blob)
        header_len = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["compression_lab"])
    except (SafetensorError, ValueError, KeyError, TypeError, OSError):
        raise NotACompressedModel(
            f"{source} is not a compressed model written by this tool (expected a safetensors file from "
            f"`python -m core compress ... --out FILE`)"
        ) from None
    if meta.get("format") != FORMAT:
        raise NotACompressedModel(f"{source} has format {meta.get('format')!r}; this tool reads {FORMAT!r}")
    return tensors, meta


def header_bytes(blob: bytes) -> int:
    """Bytes of the safetensors header: its 8-byte length plus the JSON itself."""
    return 8 + int.from_bytes(blob[:8], "little")


def save_file(path: str | Path, blob: bytes) -> None:
    write_atomic(path, blob)


def load_file(path: str | Path) -> tuple[nn.Module, dict]:
    """(runnable model, metadata) from a compressed model file."""
    path = Path(path)
    if not path.is_file():
        raise NotACompressedModel(f"no file at {path}; give the path of a file written by `compress --out`")
    tensors, meta = from_bytes(path.read_bytes(), source=str(path))
    return model_from_payload(tensors, meta), meta


def read_payload(blob: bytes, source: str = "the data") -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and metadata of a compressed model file, validated (the store reads through this)."""
    return from_bytes(blob, source)
