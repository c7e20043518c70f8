"""Compress a trained run: prune its coded layers (with `sparsity > 0`, optionally retraining the
survivors), quantize them (FC, plus conv with `targets="fc+conv"`), optionally fine-tune the centroids,
build the exported file, and measure it: accuracy of the model rebuilt from the file, and its size.

The accuracy is measured on the model rebuilt from the file's own tensors, so loading the
exported file gives back exactly the accuracy reported here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .calibration import calibration_batches
from .config import CompressConfig
from .data import Dataset, load_dataset
from .export import build_payload, model_from_payload, stored_code_bits, to_bytes
from .methods import quantize_model
from .models import build_model, coded_weights
from .pq import DoesNotFit, QuantizedLayer
from .prune import magnitude_mask
from .records import CompressionRecord, RunRecord
from .size import size_report
from .train import OnStep, evaluate, pick_device


def _trainable_codebooks(layers: list[QuantizedLayer]) -> list[torch.Tensor]:
    """One leaf tensor per layer: the codebooks, or for binarization the single alpha."""
    return [
        (
            layer.codebooks[0, 1].detach().clone() if layer.layout == "sign" else layer.codebooks.detach().clone()
        ).requires_grad_(True)
        for layer in layers
    ]


def _codebooks_of(layer: QuantizedLayer, param: torch.Tensor) -> torch.Tensor:
    if layer.layout == "sign":
        return torch.stack([-param, param]).reshape(1, 2, 1)
    return param


def tune_centroids(
    model: nn.Module,
    layers: Sequence[QuantizedLayer],
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    epochs: int,
    lr: float,
    device: torch.device,
    centroid_bits: int = 32,
    on_step: Callable[[int], None] | None = None,
) -> list[QuantizedLayer]:
    """Deep Compression's trained quantization: codes fixed, centroids trained on a task loss.

    Each coded weight is decoded from trainable codebooks at every step, so a centroid's gradient is
    the sum of the gradients of the weights it stands for; everything else stays frozen (`model` is
    not modified). `batches(epoch)` yields (inputs, targets); `loss_fn(model(inputs), targets)` is
    the loss. Returns the layers with the tuned codebooks (rounded to float16 when `centroid_bits` is 16).
    """
    moved = [dataclasses.replace(q, codebooks=q.codebooks.to(device), codes=q.codes.to(device)) for q in layers]
    params = [p.to(device).detach().requires_grad_(True) for p in _trainable_codebooks(moved)]
    # a copy: the caller's module keeps its mode, its device and its buffers (BatchNorm statistics
    # move in train mode); the frozen tensors are copies too, so a Compressed's `rest` stays as it was
    model = copy.deepcopy(model).to(device).train()
    # one entry a tensor: functional_call ties the other names of a shared one (a tied head) to it,
    # and refuses two different values for tied names
    frozen: dict[str, torch.Tensor] = {}
    held: set[int] = {id(v) for k, v in model.state_dict(keep_vars=True).items() if k in {q.name for q in moved}}
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) not in held:
            held.add(id(value))
            frozen[key] = value.detach().clone()
    optimizer = torch.optim.Adam(params, lr=lr)
    step = 0
    for epoch in range(epochs):
        for inputs, targets in batches(epoch):
            weights = {layer.name: layer.decode(_codebooks_of(layer, p)) for layer, p in zip(moved, params)}
            outputs = torch.func.functional_call(model, frozen | weights, (inputs.to(device),))
            loss = loss_fn(outputs, targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if on_step is not None:
                on_step(step)
    tuned = []
    for layer, param in zip(moved, params):
        books = _codebooks_of(layer, param.detach()).cpu()
        if centroid_bits == 16:
            books = books.half().float()
        tuned.append(dataclasses.replace(layer, codebooks=books, codes=layer.codes.cpu()))
    return tuned


def finetune_centroids(
    model: nn.Module,
    layers: list[QuantizedLayer],
    data: Dataset,
    cfg: CompressConfig,
    batch_size: int,
    device: torch.device,
    on_step: OnStep | None = None,
) -> list[QuantizedLayer]:
    """`tune_centroids` on a built-in run: its training split in seeded shuffled mini-batches, the
    cross-entropy, `cfg.finetune_epochs` epochs at `cfg.finetune_lr`."""
    generator = torch.Generator().manual_seed(cfg.seed)
    n_train = len(data.x_train)
    n_steps = math.ceil(n_train / batch_size)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(n_train, generator=generator)
        for step in range(n_steps):
            index = order[step * batch_size : (step + 1) * batch_size]
            yield data.x_train[index], data.y_train[index]

    total = cfg.finetune_epochs * n_steps
    return tune_centroids(
        model, layers, batches, F.cross_entropy, cfg.finetune_epochs, cfg.finetune_lr, device, cfg.centroid_bits,
        on_step=(lambda step: on_step(step, total)) if on_step is not None else None,
    )  # fmt: skip


def check_pruned_run(run: RunRecord, cfg: CompressConfig) -> None:
    """DoesNotFit (one line, before any work) when `run` was pruned during training and `cfg` would code
    its pruned zeros as weights: a coding method then prunes at least as much, so that the mask it
    stores is the run's zeros (the same magnitude order: they are the smallest) and it codes only the
    survivors. A float compression codes nothing and is always allowed."""
    pruned = run.config.prune_sparsity
    if pruned <= 0:
        return
    # a per-layer compression: each coded weight by its own setting
    own = [cfg.for_layer(name) for name, _ in coded_shapes(run, cfg.targets)] if cfg.per_layer else [cfg]
    if any(c.method_spec.codes_weights and c.sparsity < pruned for c in own):
        raise DoesNotFit(
            f"run {run.run_id} was pruned to sparsity {pruned:g} during training: compress it with sparsity "
            f">= {pruned:g} (--sparsity {pruned:g}, for every coded layer), so that its zeros are the stored "
            "mask and only the survivors are coded"
        )


def retrain_survivors(
    model: nn.Module,
    data: Dataset,
    cfg: CompressConfig,
    batch_size: int,
    lr: float,
    device: torch.device,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Deep Compression's retraining after pruning: the coded weights pruned at `cfg.sparsity` by
    magnitude, then the whole network trained `cfg.prune_finetune_epochs` epochs (cross-entropy, Adam at
    `lr`, seeded shuffled mini-batches of the training split) with the mask fixed: masked gradients
    zeroed before each step, masked weights after it. Returns the new state dict (CPU, float32);
    `model` is not modified. The coding that follows prunes the same weights: the zeros are the smallest."""
    model = copy.deepcopy(model).to(device).train()
    chosen = coded_weights(model, cfg.targets)
    weights = [weight for _, weight in chosen]
    with torch.no_grad():  # a per-layer compression: each weight at its own sparsity
        masks = [magnitude_mask(weight, cfg.for_layer(name).sparsity) for name, weight in chosen]
        for weight, mask in zip(weights, masks):
            weight.mul_(mask)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    n_train = len(data.x_train)
    step = 0
    for _ in range(cfg.prune_finetune_epochs):
        order = torch.randperm(n_train, generator=generator)
        for start in range(0, n_train, batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(data.x_train[index].to(device)), data.y_train[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for weight, mask in zip(weights, masks):
                    if weight.grad is not None:
                        weight.grad.mul_(mask)
                optimizer.step()
                for weight, mask in zip(weights, masks):
                    weight.mul_(mask)
            step += 1
            if on_step is not None:
                on_step(step)
    return {key: value.detach().float().cpu().contiguous() for key, value in model.state_dict().items()}


def compress_run(
    run: RunRecord,
    cfg: CompressConfig,
    data: Dataset | None = None,
    device: str | torch.device | None = None,
    on_step: OnStep | None = None,
) -> tuple[CompressionRecord, bytes]:
    """Compress `run` as `cfg` says: (record, bytes of the exported file). The record's accuracy is
    measured on the model rebuilt from the file's own tensors. The setting must fit the run's layers:
    `core.pipeline` checks that once (`core.pq.check_fits`), before any job or work."""
    started = time.perf_counter()
    check_pruned_run(run, cfg)
    device = pick_device(device)
    data = data or load_dataset(run.config.dataset)
    state = run.state_dict()  # read and checked (sha256) once: the model and the file both start from it
    model = run.model(state)
    n_steps = math.ceil(len(data.x_train) / run.config.batch_size)
    total_steps = (cfg.prune_finetune_epochs + cfg.finetune_epochs) * n_steps
    if cfg.prune_finetune_epochs:  # the survivors retrained: the file, the layers and the errors start from them
        state = retrain_survivors(
            model, data, cfg, run.config.batch_size, run.config.lr, device,
            on_step=(lambda step: on_step(step, total_steps)) if on_step is not None else None,
        )  # fmt: skip
        model = run.model(state)
    targets = coded_weights(model, cfg.targets)
    n_rest = sum(p.numel() for p in model.state_dict().values()) - sum(w.numel() for _, w in targets)
    size = size_report([tuple(w.shape) for _, w in targets], n_rest, cfg, names=[name for name, _ in targets])
    calibration = calibration_batches(data.x_train, cfg.seed) if cfg.weighting == "activations" else None
    layers = quantize_model(model, cfg, targets, calibration)
    if cfg.finetune_epochs and layers:
        done = cfg.prune_finetune_epochs * n_steps  # the steps of the survivors' retraining, reported first
        layers = finetune_centroids(
            model, layers, data, cfg, run.config.batch_size, device,
            (lambda step, _: on_step(done + step, total_steps)) if on_step is not None else None,
        )  # fmt: skip
    layer_mse = tuple((layer.name, float(((state[layer.name] - layer.decode()) ** 2).mean())) for layer in layers)
    tensors, meta = build_payload(
        state, layers, run.config, cfg, run.input_shape, run.n_classes, extra={"run_id": run.run_id}
    )
    if cfg.entropy != "none":  # the ledger's entropy-coded line: measured on the codes as written
        size = dataclasses.replace(size, entropy_code_bits=stored_code_bits(tensors, meta))
    rebuilt = model_from_payload(tensors, meta).to(device)
    accuracy = evaluate(rebuilt, data.x_test, data.y_test, device)
    meta["accuracy"] = accuracy
    meta["dataset"] = run.config.dataset
    blob = to_bytes(tensors, meta)
    record = CompressionRecord(
        run_id=run.run_id,
        train_config=run.config,
        compress_config=cfg,
        accuracy=accuracy,
        float_accuracy=run.test_accuracy,
        size=size,
        file_bytes=len(blob),
        layer_mse=layer_mse,
        seconds=time.perf_counter() - started,
    )
    return record, blob


def coded_shapes(run: RunRecord, targets: str) -> list[tuple[str, tuple[int, ...]]]:
    """(state-dict key, shape) of the weights a compression of `run` with `targets` codes, from the
    network built on the meta device: no weights read, nothing allocated."""
    with torch.device("meta"):
        model = build_model(run.config.model, run.input_shape, run.n_classes, run.config.hidden)
    return [(name, tuple(weight.shape)) for name, weight in coded_weights(model, targets)]
