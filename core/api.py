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

A weight shared by several modules (a head tied to an embedding, one Parameter in two layers, a
module registered under two names) is coded once, counted once, stored once and restored into every
name; an empty layer (no weights) is skipped: it has nothing to code and costs 0 bits. Bad input (a
NaN weight, a meta-device model, a weight computed by a parametrization, an unknown argument) is
refused with one ValueError line before any work.

A conv weight (out, in, kh, kw) is coded as its rows of in * kh * kw values, each output filter
flattened in that order (so with d = kh * kw a subvector is one input channel's kernel, as in Stock
et al. 2019, "And the Bit Goes Down"); the last chunk of a row is zero-padded when d does not divide
it (padding is coded, never counted as weights). docs/method.md has the details.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .budget import Allocation
from .compress import tune_centroids
from .config import MAX_EPOCHS, CompressConfig, _float, _int
from .export import build_module_payload, fill_module, module_from_bytes, read_file_bytes, stored_code_bits, to_bytes
from .fileio import check_output_path, write_atomic
from .methods import quantize_model
from .models import layer_patterns, module_name, select_weights
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
    layers: tuple[QuantizedLayer, ...]  # the coded weights (a shared one once, under its first name)
    rest: dict[str, torch.Tensor] = field(repr=False)  # every other state-dict tensor, as it was (once)
    keys: tuple[str, ...] = field(repr=False)  # the module's state-dict order
    size: ModelSize = field(repr=False)
    aliases: dict[str, str] = field(default_factory=dict, repr=False)  # key -> the key it shares a tensor with

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of the module: the coded weights decoded (float32), the rest as it was."""
        decoded = {layer.name: layer.decode() for layer in self.layers}
        held = decoded | self.rest
        return {key: held[self.aliases.get(key, key)] for key in self.keys}


def _size(
    cfg: CompressConfig, layers: Sequence[tuple[str, tuple[int, ...]]], rest: dict[str, torch.Tensor]
) -> ModelSize:
    """`layers`: the weights the method accounts for (for float, the chosen ones, at 32 bits each);
    `rest`: every other tensor the file holds, at its own width."""
    rest_bits = sum(t.numel() * t.element_size() * 8 for t in rest.values())  # exactly what the file holds
    totals = size_report([shape for _, shape in layers], 0, cfg, rest_bits=rest_bits, names=[n for n, _ in layers])
    return ModelSize(totals, tuple(layer_bits(name, shape, cfg) for name, shape in layers))


def _shared_keys(module: nn.Module) -> dict[str, str]:
    """State-dict keys whose tensor is also held under an earlier key: alias -> the key it is kept
    under (the first nn.Linear / nn.Conv2d weight of its group, else its first key), so that the
    compressing and the loading side pick the same name from the module alone."""
    groups: dict[int, list[str]] = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(key)
    codable = {name for name, _ in select_weights(module, ["*"])}
    aliases = {}
    for keys in groups.values():
        kept = next((key for key in keys if key in codable), keys[0])
        aliases.update({key: kept for key in keys if key != kept})
    return aliases


def _check_module(module: object, what: str) -> nn.Module:
    if isinstance(module, type):
        raise ValueError(
            f"{what} is the class {module.__name__}, not a module: pass an instance, e.g. {module.__name__}()"
        )
    if not isinstance(module, nn.Module):
        raise ValueError(f"{what} must be a torch.nn.Module instance, not a {type(module).__name__}")
    for key, tensor in module.state_dict(keep_vars=True).items():
        if tensor.is_meta:
            raise ValueError(
                f"{what}'s tensor {key} is on the meta device (it holds no values): build the module on a real "
                "device, or call .to_empty(device='cpu') and load its weights first"
            )
    return module


def _check_finite(tensors: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    for key, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{what} {key} holds NaN or infinite values; give finite values")


def _coded_weights(model: nn.Module, layers: list[str] | None) -> list[tuple[str, torch.Tensor]]:
    """(key, float32 CPU copy) of each chosen weight that holds values, once a tensor; ValueError for
    a weight that a parametrization computes (the file could not name what it stores)."""
    modules = dict(model.named_modules())
    aliases = _shared_keys(model)
    chosen: dict[str, torch.Tensor] = {}
    for name, weight in select_weights(model, layers):
        module = modules[module_name(name)]
        if "weight" not in module._parameters:
            layer = module_name(name) or type(module).__name__
            raise ValueError(
                f"layer {layer}'s weight is computed by a parametrization (weight_norm or "
                "torch.nn.utils.parametrize), not stored: remove it first (torch.nn.utils.parametrize."
                "remove_parametrizations(layer, 'weight') or torch.nn.utils.remove_weight_norm(layer)), or leave the "
                "layer out of `layers`"
            )
        if weight.numel() == 0:
            continue  # nothing to code: the empty tensor stays in the rest, at 0 bits
        chosen.setdefault(aliases.get(name, name), weight.detach().float().cpu())
    return list(chosen.items())


def _calibration_batches(calibration: Iterable[torch.Tensor] | torch.Tensor | None) -> list[torch.Tensor] | None:
    if calibration is None:
        return None
    if isinstance(calibration, torch.Tensor):
        calibration = [calibration]
    try:
        batches = list(calibration)
    except TypeError:
        raise ValueError(
            f"calibration must be a tensor or an iterable of tensors, not {type(calibration).__name__}"
        ) from None
    if not batches:
        raise ValueError("calibration holds no batch: give a few thousand of your model's inputs")
    for index, batch in enumerate(batches):
        if not isinstance(batch, torch.Tensor):
            raise ValueError(f"calibration batch {index} is a {type(batch).__name__}, not a tensor of model inputs")
        if batch.is_meta:
            raise ValueError(f"calibration batch {index} is on the meta device (it holds no values)")
    _check_finite(((f"batch {index}", batch) for index, batch in enumerate(batches)), "calibration")
    return batches


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
    output error on them. DoesNotFit when d or k does not fit a chosen layer; ValueError, before any
    work, when the patterns match no weight, calibration inputs are missing or do not fit the model,
    or a tensor is not finite."""
    _check_module(model, "model")
    if not isinstance(cfg, CompressConfig):
        raise ValueError(
            f"cfg must be a core.CompressConfig, not a {type(cfg).__name__} (from a dict: "
            "core.CompressConfig.from_dict(settings))"
        )
    patterns = layer_patterns(layers)
    state = model.state_dict(keep_vars=True)
    _check_finite(state.items(), "the model's tensor")
    chosen = _coded_weights(model, patterns)
    if not chosen and patterns is None:
        raise ValueError("this module has no nn.Linear with weights: choose its layers with layers=[...] globs")
    if not chosen:
        raise ValueError(f"the layer patterns {patterns} match no nn.Linear or nn.Conv2d with weights in this module")
    shapes = [(name, tuple(weight.shape)) for name, weight in chosen]
    check_fits(shapes, cfg)
    batches = None
    method = cfg.method_spec
    if cfg.weighting == "activations" and method.uses_calibration:
        batches = _calibration_batches(calibration)
    coded = quantize_model(model, cfg, chosen, batches)
    aliases = _shared_keys(model)
    coded_names = {layer.name for layer in coded}
    rest = {key: value.detach().cpu() for key, value in state.items() if key not in coded_names | aliases.keys()}
    if not method.codes_weights or cfg.per_layer:  # chosen weights (some) kept float: accounted as layers
        size = _size(cfg, shapes, {key: value for key, value in rest.items() if key not in dict(shapes)})
    else:
        size = _size(cfg, [(layer.name, tuple(layer.shape)) for layer in coded], rest)
    if cfg.entropy != "none":  # the entropy-coded line, measured on the codes as the file will hold them
        tensors, meta = build_module_payload(rest, coded, cfg)
        size = ModelSize(
            dataclasses.replace(size.totals, entropy_code_bits=stored_code_bits(tensors, meta)), size.layers
        )
    return Compressed(cfg, tuple(coded), rest, tuple(state), size, aliases)


def allocate(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    budget_kb: float | None = None,
    floor: float | None = None,
    cfg: CompressConfig | None = None,
    layers: Sequence[str] | None = None,
    sparsities: Sequence[float] = (0.0,),
) -> Allocation:
    """Each chosen weight's own setting (float, kmeans k, pq (d, k), optionally pruned first) for a
    size budget (`budget_kb`, the module's bits / 8,000, the float rest included) or an accuracy
    `floor` (as a drop from the float module's accuracy on `inputs`), from each setting's measured
    sensitivity on `inputs`, `targets`: give examples held out from your test data (core/budget.py).
    `cfg` (kmeans or pq) gives the shared fields. Pass the result's `.config` to `compress` with the
    same `layers`. ValueError (one line) before any work for a budget below the smallest model the
    settings make; a floor above the float accuracy after its one evaluation, before any coding."""
    from .budget import MAX_HOLDOUT, BudgetRequest
    from .budget import allocate as allocate_weights

    _check_module(model, "model")
    cfg = CompressConfig() if cfg is None else cfg
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor) or len(inputs) != len(targets):
        raise ValueError("inputs and targets must be tensors of the same length (held-out examples and labels)")
    if not 1 <= len(inputs) <= MAX_HOLDOUT:
        raise ValueError(f"give 1 to {MAX_HOLDOUT:,} held-out examples (got {len(inputs):,})")
    request = BudgetRequest(budget_kb=budget_kb, floor=floor, holdout=len(inputs), sparsities=tuple(sparsities))
    patterns = layer_patterns(layers)
    chosen = _coded_weights(model, patterns)
    if not chosen:
        raise ValueError("the layer patterns match no nn.Linear or nn.Conv2d with weights in this module")
    names = {name for name, _ in chosen} | _shared_keys(model).keys()
    rest_bits = sum(t.numel() * t.element_size() * 8 for k, t in model.state_dict().items() if k not in names)
    return allocate_weights(model, chosen, rest_bits, inputs, targets, cfg, request)


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
    epoch; `loss_fn(model(inputs), targets)`. The module is not modified. ValueError (one line) for
    bad arguments, before any work, and when the centroids come out NaN or infinite."""
    if not isinstance(compressed, Compressed):
        raise ValueError(f"compressed must be what core.compress returned, not a {type(compressed).__name__}")
    _check_module(model, "model")
    if tuple(model.state_dict()) != compressed.keys:
        raise ValueError("model is not the module that was compressed: its state-dict keys differ")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function of (outputs, targets), not a {type(loss_fn).__name__}")
    _int("epochs", epochs, 0, MAX_EPOCHS)
    _float("lr", lr, 0.0, 10.0, low_open=True, hint=", e.g. 0.0001")
    if isinstance(batches, Iterator) and epochs > 1:  # a generator: its second epoch would be empty
        raise ValueError(
            "batches is an iterator, used up after one epoch: pass a list, a DataLoader or a function of the epoch"
        )
    if not compressed.layers or epochs == 0:
        return compressed
    per_epoch = batches if callable(batches) else (lambda epoch: batches)
    steps = 0

    def count(step: int) -> None:
        nonlocal steps
        steps = step

    tuned = tune_centroids(
        model, compressed.layers, per_epoch, loss_fn, epochs, lr, pick_device(device), compressed.config.centroid_bits,
        on_step=count,
    )  # fmt: skip
    if steps == 0:
        raise ValueError("batches gave no (inputs, targets) pair: there was nothing to fine-tune on")
    if not all(bool(torch.isfinite(layer.codebooks).all()) for layer in tuned):
        raise ValueError(
            "fine-tuning made centroids NaN or infinite (the loss was not finite): check the batches, "
            "or use a smaller lr"
        )
    return dataclasses.replace(compressed, layers=tuple(tuned))


def save(compressed: Compressed, path: str | Path) -> int:
    """Write the file: bit-packed codes, codebooks, the rest as it was, the layer list and the config
    in the metadata. Its size is the accounted bits / 8 + under one byte a coded weight + the header.
    Returns the bytes written. ValueError (one line) for a path that cannot take a file, or for
    tensors that are not finite (a file `load` would refuse)."""
    if not isinstance(compressed, Compressed):
        raise ValueError(f"compressed must be what core.compress returned, not a {type(compressed).__name__}")
    check_output_path(path)
    _check_finite(((layer.name, layer.codebooks) for layer in compressed.layers), "the centroids of")
    _check_finite(compressed.rest.items(), "tensor")
    tensors, meta = build_module_payload(compressed.rest, compressed.layers, compressed.config)
    blob = to_bytes(tensors, meta)
    write_atomic(path, blob)
    return len(blob)


def load(path: str | Path, into: nn.Module) -> nn.Module:
    """Fill `into`, a freshly built instance of the module that was compressed, from the file, and
    return it. The file is checked against `into` before anything is allocated: NotACompressedModel
    (one line) for a file this tool did not write for such a module; ValueError (one line) when `into`
    is not a module on a real device."""
    _check_module(into, "into")
    aliases = _shared_keys(into)
    tensors, meta = module_from_bytes(read_file_bytes(path), into, source=str(path), aliases=aliases)
    return fill_module(into, tensors, meta, aliases).eval()


__all__ = ["Allocation", "Compressed", "ModelSize", "Regularizer", "allocate", "compress", "finetune", "load", "save"]
