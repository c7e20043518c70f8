"""A compressed file decoded to plain float tensors: `decompress(path)`, a state dict any PyTorch
user can load into their own class, and the one place that turns a file of either kind (a built-in
run's, from `python -m core compress --out`; your own module's, from `core.save`) into its checked
payload and the float model it describes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from .export import (
    MODULE_FORMAT,
    NotACompressedModel,
    fill_module,
    from_bytes,
    model_from_payload,
    module_from_bytes,
    read_file_bytes,
)
from .filereader import parse_header


def decompress(path: str | Path, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the compressed model at `path`, the coded weights decoded to float32, the
    rest as stored: `my_net.load_state_dict(core.decompress(path))`.

    A built-in run's file needs nothing else. A file of `core.save` is checked against `model`, an
    instance of the module that was compressed (not modified), so pass it. NotACompressedModel (a
    ValueError, one line) for a file this tool did not write."""
    _, _, decoded = read_compressed(path, model)
    return {key: value.detach().clone() for key, value in decoded.state_dict().items()}


def read_compressed(
    source: str | Path | bytes, model: nn.Module | None = None
) -> tuple[dict[str, torch.Tensor], dict, nn.Module]:
    """(file tensors, metadata, the decoded float model in eval mode) of a compressed file or its
    bytes, after the reader's checks (`core.export.from_bytes` or, for a `core.save` file checked
    against `model`, `module_from_bytes`)."""
    if isinstance(source, bytes):
        blob, name = source, "the data"
    elif isinstance(source, str | Path):
        blob, name = read_file_bytes(source), str(source)
    else:
        raise ValueError(f"cannot read a {type(source).__name__}: give the path of a compressed model file")
    if model is None:
        try:
            tensors, meta = from_bytes(blob, name)
        except NotACompressedModel:
            if file_format(blob) == MODULE_FORMAT:
                raise ValueError(
                    f"{name} was written by core.save for your own module: pass model= (an instance of that "
                    f"module), which the file is checked against"
                ) from None
            raise
        return tensors, meta, model_from_payload(tensors, meta)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model is a {type(model).__name__}, not a torch.nn.Module")
    tensors, meta = module_from_bytes(blob, model, name)
    return tensors, meta, fill_module(copy.deepcopy(model), tensors, meta).eval()


def file_format(blob: bytes) -> str | None:
    """The `format` a compressed file's metadata claims, when its header can be read at all (only to
    say which reader a refused file needs)."""
    try:
        _, meta_text = parse_header(blob)
        meta = json.loads(meta_text)
    except Exception:  # an unreadable file: the reader's own refusal is the message
        return None
    return meta.get("format") if isinstance(meta, dict) else None


__all__ = ["decompress", "read_compressed"]
