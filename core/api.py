"""The lab's method on your own PyTorch model: the regularizer in any training loop, product
quantization of any nn.Linear and nn.Conv2d weight, the exact size, centroid fine-tuning, and a
file that loads back into a fresh instance of your model.

    import core
    reg = core.Regularizer("binary", lam=0.02)                      # every nn.Linear (as the paper)
    ... in your loop: loss.backward(); reg.add_gradient_(model, reg.lam_at(epoch, step, n)); opt.step()
    cfg = core.CompressConfig(method="pq", subvector_size=8, n_centroids=256)
    packed = core.compress(model, cfg, layers=["features.*", "classifier.*"])   # convs too
    print(packed.size.model_ratio, packed.size.table())
    packed = core.finetune(packed, model, torch.nn.functional.cross_entropy, loader, epochs=2, lr=1e-4)
    core.save(packed, "model.safetensors")
    fresh = core.load("model.safetensors", into=MyNet())

A conv weight (out, in, kh, kw) is coded as its rows of in * kh * kw values, each output filter
flattened in that order (so with d = kh * kw a subvector is one input channel's kernel, as in Stock
et al. 2019, "And the Bit Goes Down"); the last chunk of a row is zero-padded when d does not divide
it (padding is coded, never counted as weights). docs/method.md has the details.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .compress import tune_centroids
from .config import CompressConfig
from .export import build_module_payload, fill_module, module_from_bytes, read_file_bytes, stored_code_bits, to_bytes
from .fileio import check_output_path, write_atomic
from .methods import quantize_model
from .models import select_weights
from .pq import QuantizedLayer, check_fits
from .regularizers import Regularizer
from .size import LayerBits, SizeReport, layer_bits, size_report
from .train import pick_device

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]] | Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass(frozen=True)
class ModelSize:
    """The exact accounting of a compressed module: the totals, and a row a coded weight."""

    totals: SizeReport  # codes, codebooks, scales, float rest; ratios (fc_* fields: the coded weights)
    layers: tuple[LayerBits, ...]

    @property
    def model_bits(self) -> int:
        return self.totals.model_bits

    @property
    def model_ratio(self) -> float:
        return self.totals.model_ratio

    @property
    def coded_ratio(self) -> float:
        """float32 bits of the coded weights / their compressed bits (the paper's FC ratio)."""
        return self.totals.fc_ratio

    def table(self) -> list[dict]:
        """One row a coded weight: its shape, code / codebook / scale bits, ratio."""
        return [
            {
                "layer": row.name,
                "shape": "x".join(map(str, row.shape)),
                "code_bits": row.code_bits,
                "codebook_bits": row.codebook_bits,
                "scale_bits": row.scale_bits,
                "float_bits": row.float_bits,
                "ratio": row.ratio,
            }
            for row in self.layers
        ]


@dataclass(frozen=True)
class Compressed:
    """A module's weights as codes and codebooks (the module itself is never modified)."""

    config: CompressConfig
    layers: tuple[QuantizedLayer, ...]  # the coded weights
    rest: dict[str, torch.Tensor] = field(repr=False)  # every other state-dict tensor, as it was
    keys: tuple[str, ...] = field(repr=False)  # the module's state-dict order
    size: ModelSize = field(repr=False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of the module: the coded weights decoded (float32), the rest as it was."""
        decoded = {layer.name: layer.decode() for layer in self.layers}
        return {key: decoded[key] if key in decoded else self.rest[key] for key in self.keys}


def _size(
    cfg: CompressConfig, layers: Sequence[tuple[str, tuple[int, ...]]], rest: dict[str, torch.Tensor]
) -> ModelSize:
    rest_bits = sum(t.numel() * t.element_size() * 8 for t in rest.values())  # exactly what the file holds
    totals = size_report([shape for _, shape in layers], 0, cfg, rest_bits=rest_bits)
    return ModelSize(totals, tuple(layer_bits(name, shape, cfg) for name, shape in layers))


def compress(
    model: nn.Module,
    cfg: CompressConfig,
    layers: Sequence[str] | None = None,
    calibration: Iterable[torch.Tensor] | torch.Tensor | None = None,
) -> Compressed:
    """Quantize the weights of `model`'s nn.Linear and nn.Conv2d modules whose names match one of
    `layers` (fnmatch globs; default: every nn.Linear) with any method of the lab (`cfg.method`:
    float, binarize, kmeans, pq). With `cfg.weighting="activations"`, pass `calibration`: a batch or
    batches of your model's inputs (a few thousand samples); each layer's k-means then minimizes its
    output error on them. DoesNotFit when d or k does not fit a chosen layer; ValueError when the
    patterns match nothing or calibration inputs are missing."""
    if isinstance(layers, str):
        layers = [layers]
    chosen = [(name, weight.detach().float().cpu()) for name, weight in select_weights(model, layers)]
    if not chosen:
        raise ValueError(f"the layer patterns {layers} match no nn.Linear or nn.Conv2d of this module")
    shapes = [(name, tuple(weight.shape)) for name, weight in chosen]
    check_fits(shapes, cfg)
    if isinstance(calibration, torch.Tensor):
        calibration = [calibration]
    coded = quantize_model(model, cfg, chosen, calibration)
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    coded_names = {layer.name for layer in coded}
    rest = {key: value for key, value in state.items() if key not in coded_names}
    coded_shapes = [(layer.name, tuple(layer.shape)) for layer in coded]
    size = _size(cfg, coded_shapes, rest)
    if cfg.entropy != "none":  # the entropy-coded line, measured on the codes as the file will hold them
        tensors, meta = build_module_payload(rest, coded, cfg)
        size = ModelSize(
            dataclasses.replace(size.totals, entropy_code_bits=stored_code_bits(tensors, meta)), size.layers
        )
    return Compressed(cfg, tuple(coded), rest, tuple(state), size)


def finetune(
    compressed: Compressed,
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Batches,
    epochs: int,
    lr: float = 1e-4,
    device: str | torch.device | None = None,
) -> Compressed:
    """Centroid fine-tuning (Deep Compression's trained quantization) on your loss and data: the
    codes stay fixed, each centroid moves with the summed gradient of the weights it stands for.
    `batches`: (inputs, targets) pairs, re-iterable (a DataLoader, a list) or a function of the
    epoch; `loss_fn(model(inputs), targets)`. The module is not modified."""
    if not compressed.layers:
        return compressed
    per_epoch = batches if callable(batches) else (lambda epoch: batches)
    tuned = tune_centroids(
        model, compressed.layers, per_epoch, loss_fn, epochs, lr, pick_device(device), compressed.config.centroid_bits
    )
    return Compressed(compressed.config, tuple(tuned), compressed.rest, compressed.keys, compressed.size)


def save(compressed: Compressed, path: str | Path) -> int:
    """Write the file: bit-packed codes, codebooks, the rest as it was, the layer list and the config
    in the metadata. Its size is the accounted bits / 8 + under one byte a coded weight + the header.
    Returns the bytes written. ValueError (one line) for a path that cannot take a file."""
    check_output_path(path)
    tensors, meta = build_module_payload(compressed.rest, compressed.layers, compressed.config)
    blob = to_bytes(tensors, meta)
    write_atomic(path, blob)
    return len(blob)


def load(path: str | Path, into: nn.Module) -> nn.Module:
    """Fill `into`, a freshly built instance of the module that was compressed, from the file, and
    return it. The file is checked against `into` before anything is allocated: NotACompressedModel
    (one line) for a file this tool did not write for such a module."""
    tensors, meta = module_from_bytes(read_file_bytes(path), into, source=str(path))
    return fill_module(into, tensors, meta).eval()


__all__ = ["Compressed", "ModelSize", "Regularizer", "compress", "finetune", "load", "save"]
