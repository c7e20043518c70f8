"""Compression on the Fly Lab: the core (no streamlit here).

Train networks with a binarizing regularizer on their layers, compress them with product
quantization, and count every bit. See docs/method.md. For your own model, the public API:

    core.Regularizer, core.compress, core.Compressed, core.finetune, core.save, core.load
    core.CompressConfig (the compression settings)
"""

from .api import Compressed, ModelSize, compress, finetune, load, save
from .config import CompressConfig, TrainConfig
from .regularizers import Regularizer

__all__ = [
    "CompressConfig",
    "Compressed",
    "ModelSize",
    "Regularizer",
    "TrainConfig",
    "compress",
    "finetune",
    "load",
    "save",
]
