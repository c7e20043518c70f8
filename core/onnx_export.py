"""ONNX export with the weights kept coded: a compressed model that runs in ONNX Runtime (or any
ONNX runtime) and stays about as small as our own file.

ONNX has no lookup-table operator, so the decode is spelled in standard operators inside the
graph. Each coded weight `W` becomes

    W.codes (uint8 initializer: our file's bit-packed codes, byte for byte)
      -> unpack: 8 codes of b bits fill exactly b bytes, so each byte group is a row of b bytes; a
         code j of the row lies in a window of min(3, b) bytes at a fixed offset (b <= 16), read by
         Gather, joined into one integer (Mul + ReduceSum), then BitShift right and BitwiseAnd
      -> Gather from the codebook initializer (float32 or float16, cast to float32 first)
      -> Transpose (per-chunk layout) and Reshape to (out, chunks * d), Slice off the zero padding,
         Reshape to the weight's own shape (a conv's (out, in, kh, kw))
      -> a tensor named `W`, which the Gemm / MatMul / Conv of the float graph reads as before.

The float graph comes from torch's own exporter (the TorchScript one: offline, no extra package),
run on the model rebuilt from the file; its float initializer of every coded weight is then
replaced by the decode subgraph that produces a tensor of the same name. So any architecture torch
can export works, the built-in networks and a user's own module alike. The biases and every
uncoded tensor stay ordinary float initializers.

The decode is exact: the weights the graph computes are bit for bit those of `QuantizedLayer.decode`
(a float16 centroid cast to float32 is exact, and so is a sign's -alpha). ONNX Runtime's default
graph optimizations fold the decode into constants once, when a session is created.

onnx is imported lazily: core works without it, and the export says which package is missing.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .decoded import read_compressed
from .export import build_module_payload
from .fileio import check_output_path, write_atomic
from .models import select_weights
from .pq import n_chunks, row_shape

if TYPE_CHECKING:
    from .api import Compressed

OPSET = 18  # BitwiseAnd needs 18; ONNX Runtime 1.16 and later run it
INPUT_NAME = "input"
OUTPUT_NAME = "output"
DECODED_LAYOUTS = ("shared", "per-chunk", "sign")
MAX_CODE_BITS = 16  # k <= 65,536: a code spans at most 3 bytes, and 3 bytes fit an int32


class MissingDependency(ImportError):
    """An optional package the export needs is not installed."""


def require_onnx() -> Any:
    """The onnx module, or MissingDependency with the one line that says how to get it."""
    try:
        return importlib.import_module("onnx")
    except ImportError:
        raise MissingDependency(
            "the ONNX export needs the package onnx; install it with `pip install -r requirements-onnx.txt`"
        ) from None


def export_onnx(
    source: Compressed | str | Path,
    path: str | Path,
    model: nn.Module | None = None,
    example_input: torch.Tensor | None = None,
) -> int:
    """Write `source` as an ONNX file with the weights kept coded; returns the bytes written.

    `source`: a file of `python -m core compress --out` (a built-in network: the file says what to
    build and its input shape), or a file of `core.save` or a `core.Compressed` of your own module:
    then pass `model` (an instance of the compressed module; it is not modified) and `example_input`
    (a batch of its inputs; the batch axis of the graph is dynamic). The output path and the source
    are checked before any work; nothing is written on failure (the write is atomic). ValueError
    (one line) for bad input, MissingDependency without onnx."""
    check_output_path(path)
    blob = onnx_bytes(source, model, example_input)
    write_atomic(path, blob)
    return len(blob)


def onnx_bytes(
    source: Compressed | str | Path | bytes,
    model: nn.Module | None = None,
    example_input: torch.Tensor | None = None,
    coded: bool = True,
) -> bytes:
    """The ONNX file of `source` (as `export_onnx` takes it, or a compressed file's bytes) as bytes.
    `coded=False` gives the plain float graph of the decoded model instead (the reference)."""
    onnx = require_onnx()
    tensors, meta, float_model, example = _payload(source, model, example_input)
    layers = meta["layers"]
    for info in layers:
        if coded and (info.get("entropy", "none") != "none" or info.get("mask") is not None):
            # an rANS stream or a pruning mask: no standard ONNX operator decodes them in the graph
            raise ValueError(
                f"layer {info['name']} is pruned or entropy-coded, which the ONNX export cannot decode in the "
                f"graph; compress the run without --sparsity and --entropy to export it as ONNX"
            )
        if info["layout"] not in DECODED_LAYOUTS or info["code_bits"] > MAX_CODE_BITS:
            raise ValueError(
                f"layer {info['name']} is coded as {info['layout']} with {info['code_bits']}-bit codes, which the "
                f"ONNX export cannot decode (it decodes {', '.join(DECODED_LAYOUTS)} up to {MAX_CODE_BITS} bits)"
            )
    proto = onnx.load_from_string(_torch_export(float_model, example))
    if coded:
        _replace_weights(onnx, proto, layers, tensors)
    for node in proto.graph.node:
        node.doc_string = ""  # torch's source locations: bytes that say nothing to a runtime
    proto.doc_string = ""
    proto.producer_name = "compression-lab"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError: a bug of ours, never the user's input
        raise RuntimeError(f"the ONNX graph fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    return proto.SerializeToString()


# ------------------------------------------------------------------------------------ the source


def _payload(
    source: Compressed | str | Path | bytes, model: nn.Module | None, example_input: torch.Tensor | None
) -> tuple[dict[str, torch.Tensor], dict, nn.Module, torch.Tensor]:
    """(file tensors, metadata, the decoded float model, an example input) of any source, checked."""
    from .api import Compressed  # api imports the whole training stack; only this path needs it

    if isinstance(source, Compressed):
        model, example_input = _own_module(model, example_input, "a core.Compressed")
        _check_coded_layers(model, [(layer.name, tuple(layer.shape)) for layer in source.layers])
        tensors, meta = build_module_payload(source.rest, source.layers, source.config)
        decoded = copy.deepcopy(model)
        try:
            decoded.load_state_dict(source.state_dict(), strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"the compressed tensors do not fit this model ({str(exc).splitlines()[0]}); pass an instance "
                f"of the module that was compressed"
            ) from None
        return tensors, meta, decoded.eval(), example_input
    if not isinstance(source, str | Path | bytes):
        raise ValueError(f"cannot export a {type(source).__name__}: give a file path or a core.Compressed")
    if model is not None:
        model, example_input = _own_module(model, example_input, "a core.save file")
    tensors, meta, decoded_model = read_compressed(source, model)
    if model is None:
        example_input = torch.zeros(1, *meta["input_shape"])  # (1, C, H, W); the batch axis is dynamic
    assert example_input is not None
    return tensors, meta, decoded_model, example_input


def _own_module(
    model: nn.Module | None, example_input: torch.Tensor | None, what: str
) -> tuple[nn.Module, torch.Tensor]:
    if model is None or example_input is None:
        raise ValueError(
            f"exporting {what} needs model= (an instance of the compressed module) and example_input= (a batch "
            f"of its inputs)"
        )
    if not isinstance(model, nn.Module):
        raise ValueError(f"model is a {type(model).__name__}, not a torch.nn.Module")
    if not isinstance(example_input, torch.Tensor):
        raise ValueError(f"example_input is a {type(example_input).__name__}, not a torch.Tensor")
    return model, example_input


def _check_coded_layers(model: nn.Module, coded: Sequence[tuple[str, tuple[int, ...]]]) -> None:
    """Every coded weight is the weight of an nn.Linear or nn.Conv2d of `model`, in its shape."""
    weights = {name: tuple(weight.shape) for name, weight in select_weights(model, ["*"])}
    for name, shape in coded:
        if name not in weights:
            raise ValueError(
                f"coded weight {name} is not the weight of an nn.Linear or nn.Conv2d of this model; the ONNX "
                f"export decodes those only"
            )
        if weights[name] != shape:
            raise ValueError(f"coded weight {name} has shape {list(shape)} but the model's is {list(weights[name])}")


def _torch_export(model: nn.Module, example: torch.Tensor) -> bytes:
    """The float graph, by torch's TorchScript exporter (no extra package, works offline).

    No constant folding, so that every parameter stays an initializer under its state-dict name."""
    buffer = io.BytesIO()
    try:
        # redirect: on failure the exporter prints its whole TorchScript graph; core never prints
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
            torch.onnx.export(
                model.eval(),
                (example,),
                buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to a file object
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=False,
            )
    except Exception as exc:  # torch's exporter raises many kinds; the user gets its first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"torch.onnx cannot export this model to ONNX ({type(exc).__name__}: {first})") from None
    return buffer.getvalue()


# ------------------------------------------------------------------------------ the decode graph


class _Graph:
    """Nodes and initializers being added to an ONNX graph, with short unique tensor names (the
    names are bytes of the file: a few per node)."""

    def __init__(self, onnx: Any, taken: set[str]):
        self.onnx = onnx
        self.taken = taken
        self.nodes: list[Any] = []
        self.initializers: dict[str, Any] = {}
        self._shared: dict[str, str] = {}  # key -> the initializer's name
        self._count = 0

    def name(self) -> str:
        while True:
            self._count += 1
            candidate = f"q{self._count}"
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate

    def const(self, array: np.ndarray, key: str | None = None) -> str:
        """An initializer, named `key` when that name is free; constants with the same `key` (one code
        width's unpack tables, a weight's codes) are one initializer."""
        if key is not None and key in self._shared:
            return self._shared[key]
        name = key if key is not None and key not in self.taken else self.name()
        self.taken.add(name)
        if key is not None:
            self._shared[key] = name
        self.initializers[name] = self.onnx.numpy_helper.from_array(np.array(array, order="C"), name)  # 0-d stays 0-d
        return name

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs: Any) -> str:
        out = output if output is not None else self.name()
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out


def unpack_tables(bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For codes of `bits` bits packed MSB first: 8 codes fill `bits` bytes exactly. Returns the byte
    window of each code j of such a row, (8, W) int64 with W = min(3, bits); the place value of each
    window byte, (W,) int32; and the right shift that brings code j to the low bits, (8,) uint32."""
    width = min(3, bits)  # a code of <= 16 bits starting anywhere in a byte spans <= 3 bytes
    first_byte = np.array([min(j * bits // 8, bits - width) for j in range(8)], dtype=np.int64)  # (8,)
    window = first_byte[:, None] + np.arange(width, dtype=np.int64)  # (8, W)
    place = (256 ** np.arange(width - 1, -1, -1)).astype(np.int32)  # (W,) most significant first
    end_bit = np.arange(1, 9, dtype=np.int64) * bits  # (8,) bit after code j, from the row's start
    shift = (8 * (first_byte + width) - end_bit).astype(np.uint32)  # (8,)
    return window, place, shift


def unpack_in_graph(g: _Graph, packed: str, n_bytes: int, bits: int, count: int) -> str:
    """(n_bytes,) uint8 bit-packed codes -> (count,) int64 codes, in standard operators."""
    if bits == 8:
        return g.op("Cast", [packed], to=g.onnx.TensorProto.INT64)
    rows = math.ceil(count / 8)  # 8 codes a row of `bits` bytes
    if rows * bits != n_bytes:  # the file stops at the last code's byte; complete the last row
        pads = g.const(np.array([0, rows * bits - n_bytes], dtype=np.int64))
        packed = g.op("Pad", [packed, pads])
    window, place, shift = unpack_tables(bits)
    grid = g.op("Reshape", [packed, g.const(np.array([rows, bits], dtype=np.int64))])  # (rows, b)
    windows = g.op("Gather", [grid, g.const(window, f"unpack{bits}.window")], axis=1)  # (rows, 8, W) uint8
    wide = g.op("Cast", [windows], to=g.onnx.TensorProto.INT32)
    scaled = g.op("Mul", [wide, g.const(place, f"unpack{bits}.place")])
    joined = g.op("ReduceSum", [scaled, g.const(np.array([-1], dtype=np.int64), "axis.last")], keepdims=0)  # (rows, 8)
    unsigned = g.op("Cast", [joined], to=g.onnx.TensorProto.UINT32)  # BitShift takes unsigned types only
    shifted = g.op("BitShift", [unsigned, g.const(shift, f"unpack{bits}.shift")], direction="RIGHT")
    mask = g.const(np.array((1 << bits) - 1, dtype=np.uint32), f"unpack{bits}.mask")
    codes = g.op("Cast", [g.op("BitwiseAnd", [shifted, mask])], to=g.onnx.TensorProto.INT64)
    flat = g.op("Reshape", [codes, g.const(np.array([-1], dtype=np.int64), "shape.flat")])  # (rows * 8,)
    if rows * 8 == count:
        return flat
    starts, ends = g.const(np.array([0], dtype=np.int64), "index.zero"), g.const(np.array([count], dtype=np.int64))
    return g.op("Slice", [flat, starts, ends])


def decode_stage(
    g: _Graph, codes: str, books: str, layout: str, shape: Sequence[int], books_shape: Sequence[int]
) -> str:
    """One codebook lookup: (count,) int64 codes into float32 codebooks (G, k, d) -> (out, chunks, d).

    A residual quantizer's weight is the sum of such lookups, one a stage (`decoded_weight`)."""
    groups, k, dim = books_shape
    out_features, in_features = row_shape(tuple(shape))
    chunks = n_chunks(in_features, dim)
    if layout == "per-chunk":  # codes (chunks, out), codebook g for chunk g: one flat table, offset codes
        table = g.op("Reshape", [books, g.const(np.array([groups * k, dim], dtype=np.int64))])  # (G * k, d)
        grid = g.op("Reshape", [codes, g.const(np.array([groups, out_features], dtype=np.int64))])  # (G, out)
        zero, end, step = (np.array(value, dtype=np.int64) for value in (0, groups * k, k))  # 0-d: Range's scalars
        starts = g.op("Range", [g.const(zero, "scalar.zero"), g.const(end), g.const(step)])
        offsets = g.op("Unsqueeze", [starts, g.const(np.array([1], dtype=np.int64), "axis.one")])  # (G, 1): g * k
        picked = g.op("Gather", [table, g.op("Add", [grid, offsets])], axis=0)  # (G, out, d)
        return g.op("Transpose", [picked], perm=[1, 0, 2])  # (out, G, d)
    table = g.op("Reshape", [books, g.const(np.array([k, dim], dtype=np.int64))])  # (k, d)
    grid = g.op("Reshape", [codes, g.const(np.array([out_features, chunks], dtype=np.int64))])  # (out, chunks)
    return g.op("Gather", [table, grid], axis=0)  # (out, chunks, d)


def decoded_weight(g: _Graph, stages: Sequence[str], shape: Sequence[int], dim: int, output: str) -> str:
    """Sum of the stages' (out, chunks, d) lookups -> the weight in its own shape, named `output`."""
    out_features, in_features = row_shape(tuple(shape))
    total = stages[0] if len(stages) == 1 else g.op("Sum", list(stages))
    padded = n_chunks(in_features, dim) * dim
    needs_slice, needs_shape = padded != in_features, len(shape) != 2
    rows = g.op(
        "Reshape",
        [total, g.const(np.array([out_features, padded], dtype=np.int64))],
        None if needs_slice or needs_shape else output,
    )  # (out, chunks * d)
    if needs_slice:  # the last chunk's zero padding
        starts, ends = (
            g.const(np.array([0], dtype=np.int64), "index.zero"),
            g.const(np.array([in_features], dtype=np.int64)),
        )
        rows = g.op(
            "Slice",
            [rows, starts, ends, g.const(np.array([1], dtype=np.int64), "axis.one")],
            None if needs_shape else output,
        )
    if needs_shape:  # (out, in * kh * kw) -> (out, in, kh, kw)
        rows = g.op("Reshape", [rows, g.const(np.array(shape, dtype=np.int64))], output)
    return rows


def _rows(g: _Graph, tensor: str, start: int, end: int) -> str:
    """tensor[start:end] along its first axis."""
    bounds = (g.const(np.array([value], dtype=np.int64)) for value in (start, end))
    return g.op("Slice", [tensor, *bounds])


def _float32(g: _Graph, name: str, dtype: torch.dtype) -> str:
    return name if dtype == torch.float32 else g.op("Cast", [name], to=g.onnx.TensorProto.FLOAT)


def _replace_weights(onnx: Any, proto: Any, layers: Sequence[dict], tensors: dict[str, torch.Tensor]) -> None:
    """Swap the float initializer of every coded weight for its decode subgraph (same tensor name)."""
    graph = proto.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    taken = set(initializers) | {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {value.name for value in (*graph.input, *graph.output)}
    g = _Graph(onnx, taken)
    for info in layers:
        name, shape, layout = info["name"], list(info["shape"]), info["layout"]
        found = initializers.get(name)
        if found is None or list(found.dims) != shape:
            raise ValueError(
                f"the graph torch exported does not hold weight {name} as a {shape} tensor (the model uses it in a "
                f"way the ONNX export cannot rewrite: a tied, reparametrized or transformed weight)"
            )
        graph.initializer.remove(found)
        packed_tensor = tensors[f"{name}.codes"]
        packed = g.const(packed_tensor.numpy(), f"{name}.codes")
        count = info["groups"] * info["codes_per_group"]
        codes = unpack_in_graph(g, packed, packed_tensor.numel(), info["code_bits"], count)
        if layout == "sign":
            alpha_tensor = tensors[f"{name}.alpha"]
            alpha = _float32(g, g.const(alpha_tensor.numpy(), f"{name}.alpha"), alpha_tensor.dtype)
            pair = g.op("Concat", [g.op("Neg", [alpha]), alpha], axis=0)  # (2,): the codebook [-alpha, +alpha]
            books, books_shape = pair, [1, 2, 1]  # (G, k, d)
        else:
            book_tensor = tensors[f"{name}.codebooks"]
            books = _float32(g, g.const(book_tensor.numpy(), f"{name}.codebooks"), book_tensor.dtype)
            books_shape = list(book_tensor.shape)
        stages = int(info.get("stages", 1))  # residual quantization: the stages' lookups add up
        groups, k, dim = books_shape[0] // stages, books_shape[1], books_shape[2]
        per_stage = count // stages  # codes and codebooks are stacked stage by stage
        lookups = []
        for stage in range(stages):
            stage_codes, stage_books = codes, books
            if stages > 1:
                stage_codes = _rows(g, codes, stage * per_stage, (stage + 1) * per_stage)
                stage_books = _rows(g, books, stage * groups, (stage + 1) * groups)
            lookups.append(decode_stage(g, stage_codes, stage_books, layout, shape, [groups, k, dim]))
        decoded_weight(g, lookups, shape, dim, name)
    nodes = [*g.nodes, *graph.node]  # the decode first: nodes stay in topological order
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(g.initializers.values())


__all__ = ["MissingDependency", "decode_stage", "decoded_weight", "export_onnx", "onnx_bytes", "unpack_in_graph"]
