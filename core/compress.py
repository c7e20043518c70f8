"""Compress a trained run: quantize its FC layers, optionally fine-tune the centroids, build the
exported file, and measure it: accuracy of the model rebuilt from the file, and its size.

The accuracy is measured on the model rebuilt from the file's own tensors, so loading the
exported file gives back exactly the accuracy reported here.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from torch.nn import functional as F

from .config import CompressConfig
from .data import Dataset, load_dataset
from .export import build_payload, model_from_payload, to_bytes
from .methods import quantize_model
from .models import param_counts
from .pq import QuantizedLayer
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


def finetune_centroids(
    model: nn.Module,
    layers: list[QuantizedLayer],
    data: Dataset,
    cfg: CompressConfig,
    batch_size: int,
    device: torch.device,
    on_step: OnStep | None = None,
) -> list[QuantizedLayer]:
    """Deep Compression's trained quantization: codes fixed, centroids trained on the task loss.

    Each FC weight is decoded from trainable codebooks at every step, so a centroid's gradient is
    the sum of the gradients of the weights it stands for. Everything else stays frozen.
    """
    layers = [
        QuantizedLayer(q.name, q.shape, q.subvector_size, q.layout, q.codebooks.to(device), q.codes.to(device))
        for q in layers
    ]
    params = [p.to(device).detach().requires_grad_(True) for p in _trainable_codebooks(layers)]
    frozen = {k: v.detach().to(device) for k, v in model.state_dict().items()}
    model = model.to(device).train()
    optimizer = torch.optim.Adam(params, lr=cfg.finetune_lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    n_train = len(data.x_train)
    n_steps = math.ceil(n_train / batch_size)
    for epoch in range(cfg.finetune_epochs):
        order = torch.randperm(n_train, generator=generator)
        for step in range(n_steps):
            index = order[step * batch_size : (step + 1) * batch_size]
            weights = {layer.name: layer.decode(_codebooks_of(layer, p)) for layer, p in zip(layers, params)}
            logits = torch.func.functional_call(model, frozen | weights, (data.x_train[index].to(device),))
            loss = F.cross_entropy(logits, data.y_train[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(epoch * n_steps + step + 1, cfg.finetune_epochs * n_steps)
    tuned = []
    for layer, param in zip(layers, params):
        books = _codebooks_of(layer, param.detach()).cpu()
        if cfg.centroid_bits == 16:
            books = books.half().float()
        tuned.append(
            QuantizedLayer(layer.name, layer.shape, layer.subvector_size, layer.layout, books, layer.codes.cpu())
        )
    return tuned


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
    device = pick_device(device)
    data = data or load_dataset(run.config.dataset)
    model = run.model()
    _, n_rest = param_counts(model)
    size = size_report([(layer.shape[0], layer.shape[1]) for layer in run.layers], n_rest, cfg)
    layers = quantize_model(model, cfg)
    if cfg.finetune_epochs and layers:
        layers = finetune_centroids(model, layers, data, cfg, run.config.batch_size, device, on_step)
    state = run.state_dict()
    layer_mse = tuple((layer.name, float(((state[layer.name] - layer.decode()) ** 2).mean())) for layer in layers)
    tensors, meta = build_payload(
        state, layers, run.config, cfg, run.input_shape, run.n_classes, extra={"run_id": run.run_id}
    )
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
