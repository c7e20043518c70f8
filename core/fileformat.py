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

The format has three homes: this module (names, bounds, bit packing: numpy only), the writer
(core/filewriter.py: torch tensors -> bytes) and the untrusting reader (core/filereader.py: bytes ->
checked numpy arrays, no torch), with core/filemodel.py turning a checked payload into torch tensors
and a runnable model. core/export.py re-exports the public names of all four.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import numpy as np

from . import entropy

FORMAT = "compression-lab/1"
MODULE_FORMAT = "compression-lab-module/1"  # `core.save` of any nn.Module: no training config inside
HEADER_BOUND = 8 * 1024  # bytes: safetensors header of every model here, metadata included

# Reader bounds. They are far above anything the writer writes, and exist so that a crafted file
# cannot make the reader do unbounded work before its claims are checked against its bytes.
MAX_FILE_BYTES = 2 * 1024**3  # a file above this is refused before it is read
MAX_HEADER_BYTES = 1024 * 1024  # safetensors JSON header, tensor index and metadata included
MAX_INPUT_SIDE = 4096  # each of (channels, height, width)
MAX_CLASSES = 100_000
MAX_HIDDEN_WIDTH = 1 << 24  # one hidden layer of `mlp`
MAX_TENSOR_DIMS = 8
METADATA_KEY = "compression_lab"  # the one key of the safetensors `__metadata__`
LAYOUTS = ("shared", "per-chunk", "sign", "row-groups")  # row-groups: the peers' LUTs (methods/lut.py)
# safetensors dtype -> (numpy dtype the reader holds it in, bytes an element): only the dtypes the
# writer writes. numpy has no bfloat16: a BF16 tensor is held as its raw 16-bit patterns.
DTYPES: dict[str, tuple[np.dtype, int]] = {
    "U8": (np.dtype("uint8"), 1),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
    "F32": (np.dtype("<f4"), 4),
    "I32": (np.dtype("<i4"), 4),  # an entropy-coded layer's code counts
    "F64": (np.dtype("<f8"), 8),
    "I64": (np.dtype("<i8"), 8),  # a module's integer buffers (BatchNorm's num_batches_tracked)
}
CENTROID_DTYPES = {32: "F32", 16: "F16"}
LAYER_KEYS = ("name", "shape", "layout", "subvector_size", "n_centroids", "code_bits", "groups", "codes_per_group")
REQUIRED_META = ("format", "train_config", "compress_config", "input_shape", "n_classes", "layers")
OPTIONAL_META = ("run_id", "accuracy", "dataset")  # added by compress_run after the payload is built
# Codes unpacked at a time: bounds the (codes, bits) temporaries of unpacking to a few MB.
# A multiple of 8, so that every step starts on a byte boundary whatever the code width.
_UNPACK_CHUNK = 1 << 18


class NotACompressedModel(ValueError):
    """The file is missing, unreadable, or not written by `export`."""


class Invalid(Exception):
    """What is wrong with the bytes; the reader turns it into a NotACompressedModel naming the source."""


def invalid(what: str) -> NoReturn:
    raise Invalid(what)


def one_line(text: str) -> str:
    # The message is one line whatever a crafted file or a path puts into it.
    return text.replace("\r", "\\r").replace("\n", "\\n")


def refusal(source: str, what: str) -> NotACompressedModel:
    return NotACompressedModel(one_line(f"{source} is not a compressed model written by this tool: {what}"))


# -------------------------------------------------------------------------------- bit packing


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """int codes (any shape) -> (ceil(n * bits / 8),) uint8, each code MSB first, in row-major order."""
    flat = np.asarray(codes).reshape(-1).astype(np.int64)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    bit_matrix = ((flat[:, None] >> shifts) & 1).astype(np.uint8)  # (n, bits)
    return np.packbits(bit_matrix.reshape(-1))


def packed_bytes(count: int, bits: int) -> int:
    return -(-count * bits // 8)


def code_chunks(packed: np.ndarray, bits: int, count: int) -> Iterator[np.ndarray]:
    """(bytes,) uint8 -> successive (n,) int64 codes, at most `_UNPACK_CHUNK` at a time."""
    weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
    for start in range(0, count, _UNPACK_CHUNK):
        n = min(_UNPACK_CHUNK, count - start)
        first = start * bits // 8  # exact: start is a multiple of 8
        part = packed[first : first + packed_bytes(n, bits)]
        bit_array = np.unpackbits(part, count=n * bits).reshape(n, bits)  # (n, bits)
        yield bit_array.astype(np.int64) @ weights


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """(bytes,) uint8 -> (count,) int64 codes; the inverse of `pack_bits`."""
    if bits < 1 or packed.size < packed_bytes(count, bits):
        # np.unpackbits would pad a short array with zeros: silently wrong codes, never that.
        raise ValueError(f"{packed.size} bytes cannot hold {count:,} codes of {bits} bits")
    codes = np.empty(count, dtype=np.int64)
    for start, chunk in zip(range(0, count, _UNPACK_CHUNK), code_chunks(packed, bits, count)):
        codes[start : start + len(chunk)] = chunk
    return codes


# ------------------------------------------------------------------ the coded layers' symbols

# The helpers below take the file's tensors as numpy arrays (the reader's) or CPU torch tensors (the
# writer's): np.asarray reads either without a copy, and none of them imports torch.


def counts_key(key: str) -> str:
    """W.codes -> W.code_counts, W.mask -> W.mask_counts: the frequency table beside a stream."""
    base, part = key.rsplit(".", 1)
    return f"{base}.{'code' if part == 'codes' else part}_counts"


def layer_codes(tensors: Mapping[str, Any], info: dict) -> np.ndarray:
    """(groups * codes_per_group,) int64 codes of a layer entry, however they are stored."""
    name, count = info["name"], info["groups"] * info["codes_per_group"]
    if info.get("entropy") == "ans":
        stream = np.asarray(tensors[f"{name}.codes"]).view("<u4")
        counts = np.asarray(tensors[f"{name}.code_counts"]).astype(np.int64)
        return entropy.decode(stream, counts)
    return unpack_bits(np.asarray(tensors[f"{name}.codes"]), info["code_bits"], count)


def layer_mask(tensors: Mapping[str, Any], info: dict) -> np.ndarray:
    """The bool survivors' mask of a pruned layer entry, in the weight's shape."""
    name, n = info["name"], math.prod(info["shape"])
    if info["mask"] == "ans":
        stream = np.asarray(tensors[f"{name}.mask"]).view("<u4")
        flat = entropy.decode(stream, np.asarray(tensors[f"{name}.mask_counts"]).astype(np.int64))
    else:
        flat = unpack_bits(np.asarray(tensors[f"{name}.mask"]), 1, n)
    return flat.astype(bool).reshape(info["shape"])


def stored_code_bits(tensors: Mapping[str, Any], meta: dict) -> int:
    """Bits the file holds for the coded layers' codes: an entropy-coded layer's stream and table, a
    packed layer's codes exactly (without the padding to a whole byte). The ledger's entropy line."""
    total = 0
    for info in meta["layers"]:
        name = info["name"]
        if info.get("entropy") == "ans":
            stream, table = tensors[f"{name}.codes"], tensors[f"{name}.code_counts"]
            total += 8 * math.prod(stream.shape) + entropy.COUNT_BITS * math.prod(table.shape)
        else:
            total += info["groups"] * info["codes_per_group"] * info["code_bits"]
        if info.get("mask") == "ans":
            total += 8 * math.prod(tensors[f"{name}.mask"].shape) + entropy.COUNT_BITS * 2
        elif info.get("mask") == "bitmap":
            total += math.prod(info["shape"])
    return total


def header_bytes(blob: bytes) -> int:
    """Bytes of the safetensors header: its 8-byte length plus the JSON itself."""
    return 8 + int.from_bytes(blob[:8], "little")
