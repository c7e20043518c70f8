"""Compress a trained run: quantize its FC layers, optionally fine-tune the centroids, build the
exported file, and measure it: accuracy of the model rebuilt from the file, and its size.

The accuracy is measured on the model rebuilt from the file's own tensors, so loading the
exported file gives back exactly the accuracy reported here.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .baselines import quantize_model
from .config import CompressConfig, TrainConfig
from .data import Dataset, load_dataset
from .export import build_payload, model_from_payload, to_bytes
from .models import fc_layers, param_counts
from .pq import QuantizedLayer
from .size import SizeReport, size_report
from .train import OnStep, TrainResult, evaluate, pick_device


@dataclass
class CompressResult:
    run_id: str
    train_config: TrainConfig
    compress_config: CompressConfig
    accuracy: float  # test accuracy of the model rebuilt from the exported file
    float_accuracy: float  # test accuracy of the run before compression
    size: SizeReport
    file_bytes: int  # exact size of the exported file
    layer_mse: dict[str, float] = field(default_factory=dict)  # reconstruction MSE per FC weight
    seconds: float = 0.0

    def row(self) -> dict:
        """One flat row: the frontier's and the sweep CSV's unit."""
        t, c = self.train_config, self.compress_config
        return {
            "run_id": self.run_id,
            "dataset": t.dataset,
            "model": t.model,
            "reg": t.reg,
            "lam": t.lam,
            "epochs": t.epochs,
            "seed": t.seed,
            "method": c.method,
            "subvector_size": c.subvector_size,
            "n_centroids": c.n_centroids,
            "layout": c.layout,
            "centroid_bits": c.centroid_bits,
            "finetune_epochs": c.finetune_epochs,
            "label": c.label(),
            "float_accuracy": self.float_accuracy,
            "accuracy": self.accuracy,
            "accuracy_drop": self.float_accuracy - self.accuracy,
            "fc_bits": self.size.fc_bits,
            "fc_ratio": self.size.fc_ratio,
            "model_bits": self.size.model_bits,
            "model_ratio": self.size.model_ratio,
            "code_bits": self.size.code_bits,
            "codebook_bits": self.size.codebook_bits,
            "scale_bits": self.size.scale_bits,
            "rest_bits": self.size.rest_bits,
            "file_bytes": self.file_bytes,
            "seconds": self.seconds,
        }

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id,
            "train_config": asdict(self.train_config),
            "compress_config": asdict(self.compress_config),
            "accuracy": self.accuracy,
            "float_accuracy": self.float_accuracy,
            "size": self.size.as_dict(),
            "file_bytes": self.file_bytes,
            "layer_mse": self.layer_mse,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: dict) -> CompressResult:
        return cls(
            run_id=data["run_id"],
            train_config=TrainConfig.from_dict(data["train_config"]),
            compress_config=CompressConfig.from_dict(data["compress_config"]),
            accuracy=data["accuracy"],
            float_accuracy=data["float_accuracy"],
            size=SizeReport(**data["size"]),
            file_bytes=data["file_bytes"],
            layer_mse=data.get("layer_mse", {}),
            seconds=data.get("seconds", 0.0),
        )


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
        QuantizedLayer(l.name, l.shape, l.subvector_size, l.layout, l.codebooks.to(device), l.codes.to(device))
        for l in layers
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
    run: TrainResult,
    cfg: CompressConfig,
    data: Dataset | None = None,
    device: str | torch.device | None = None,
    on_step: OnStep | None = None,
) -> tuple[CompressResult, bytes]:
    """Compress `run` as `cfg` says: (result, bytes of the exported file)."""
    started = time.perf_counter()
    cfg = cfg.canonical()
    device = pick_device(device)
    data = data or load_dataset(run.config.dataset)
    model = run.model()
    fc_shapes = [tuple(layer.weight.shape) for _, layer in fc_layers(model)]
    _, n_rest = param_counts(model)
    size = size_report(fc_shapes, n_rest, cfg)  # validates that cfg fits before any work
    layers = quantize_model(model, cfg)
    if cfg.finetune_epochs and layers:
        layers = finetune_centroids(model, layers, data, cfg, run.config.batch_size, device, on_step)
    state = run.state_dict
    layer_mse = {layer.name: float(((state[layer.name] - layer.decode()) ** 2).mean()) for layer in layers}
    tensors, meta = build_payload(
        state, layers, run.config, cfg, run.input_shape, run.n_classes, extra={"run_id": run.run_id}
    )
    rebuilt = model_from_payload(tensors, meta).to(device)
    accuracy = evaluate(rebuilt, data.x_test, data.y_test, device)
    meta["accuracy"] = accuracy
    meta["dataset"] = run.config.dataset
    blob = to_bytes(tensors, meta)
    result = CompressResult(
        run.run_id,
        run.config,
        cfg,
        accuracy,
        run.test_accuracy,
        size,
        len(blob),
        layer_mse,
        time.perf_counter() - started,
    )
    return result, blob
