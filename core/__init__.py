"""Compression on the Fly Lab: the core (no streamlit here).

Train networks with a binarizing regularizer on their layers, compress them with product
quantization, and count every bit. See docs/method.md. For your own model, the public API:

    core.Regularizer, core.compress, core.Compressed, core.finetune, core.save, core.load
    core.CompressConfig (the compression settings)
    core.decompress (a float state dict), core.export_onnx (an ONNX graph with the codes kept coded)

The names are imported on first use (`core.compress`, `from core import compress`): importing
`core` alone imports no torch, so the command line's listings (`python -m core runs`, which
imports this package first) start in a fraction of a second.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type checkers and IDEs see the names as if imported here
    from .api import Compressed, ModelSize, compress, finetune, load, save
    from .config import CompressConfig, TrainConfig
    from .decoded import decompress
    from .onnx_export import export_onnx
    from .regularizers import Regularizer

# public name -> the module that defines it
_HOMES = {
    "Compressed": ".api",
    "ModelSize": ".api",
    "compress": ".api",
    "finetune": ".api",
    "allocate": ".api",
    "load": ".api",
    "save": ".api",
    "CompressConfig": ".config",
    "TrainConfig": ".config",
    "decompress": ".decoded",
    "export_onnx": ".onnx_export",
    "Regularizer": ".regularizers",
}

__all__ = [
    "CompressConfig",
    "Compressed",
    "ModelSize",
    "Regularizer",
    "TrainConfig",
    "allocate",
    "compress",
    "decompress",
    "export_onnx",
    "finetune",
    "load",
    "save",
]
assert sorted(__all__) == sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the submodule core/compress.py binds it as `core.compress`; the public
        # function of that name must win, as it did when this file imported it eagerly.
        if name in _HOMES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
