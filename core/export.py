"""The compressed model file, in one import: the names of its format (core/fileformat.py), its
writer (core/filewriter.py), its untrusting reader (core/filereader.py, numpy only: verifying a
stored file imports no torch) and the torch side of reading (core/filemodel.py: tensors, layers and
the runnable model of a checked file). The format itself is described in core/fileformat.py.

Importing this module imports torch (the writer and the model need it); code that only checks a
file imports core.filereader instead.
"""

from __future__ import annotations

from .fileformat import (
    FORMAT,
    HEADER_BOUND,
    LAYOUTS,
    MAX_FILE_BYTES,
    MAX_HEADER_BYTES,
    METADATA_KEY,
    MODULE_FORMAT,
    NotACompressedModel,
    header_bytes,
    stored_code_bits,
)
from .filemodel import (
    as_tensors,
    fill_module,
    from_bytes,
    layers_from_payload,
    load_file,
    load_payload,
    model_from_payload,
    module_from_bytes,
    read_payload,
    unpack_codes,
)
from .filereader import check_bytes, check_module_bytes, read_file_bytes
from .filewriter import build_module_payload, build_payload, pack_codes, save_file, to_bytes

__all__ = [
    "FORMAT",
    "HEADER_BOUND",
    "LAYOUTS",
    "MAX_FILE_BYTES",
    "MAX_HEADER_BYTES",
    "METADATA_KEY",
    "MODULE_FORMAT",
    "NotACompressedModel",
    "as_tensors",
    "build_module_payload",
    "build_payload",
    "check_bytes",
    "check_module_bytes",
    "fill_module",
    "from_bytes",
    "header_bytes",
    "layers_from_payload",
    "load_file",
    "load_payload",
    "model_from_payload",
    "module_from_bytes",
    "pack_codes",
    "read_file_bytes",
    "read_payload",
    "save_file",
    "stored_code_bits",
    "to_bytes",
    "unpack_codes",
]
