"""Input statistics of the layers to code: what activation-aware PQ weighs its k-means by.

For a weight cut into chunks of d inputs, the output error of coding one subvector depends on the
inputs through their second moment on that chunk, S_c = E[x_c x_c^T] (d x d). Only these diagonal
blocks are needed, so a layer's statistics cost C * d * d floats whatever its width. Inputs are those
of the float network (not of the partly coded one), on a seeded sample of the training set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .models import module_name
from .pq import n_chunks

CALIBRATION_SAMPLES = 2048  # training inputs the statistics are measured on (built-in runs)
CALIBRATION_BATCH = 512


def _chunked_moments(rows: torch.Tensor, subvector_size: int) -> torch.Tensor:
    """(n, D) inputs -> sum over n of x_c x_c^T per chunk: (C, d, d); the last chunk zero-padded."""
    n, width = rows.shape
    pad = n_chunks(width, subvector_size) * subvector_size - width
    chunks = F.pad(rows, (0, pad)).reshape(n, -1, subvector_size)  # (n, C, d)
    return torch.einsum("ncd,nce->cde", chunks, chunks)


def _layer_inputs(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """What a layer's weight rows multiply: (n, in) for nn.Linear (every leading position a sample),
    (n * positions, in * kh * kw) patches for nn.Conv2d, in the order of `core.pq.as_rows`."""
    if isinstance(module, nn.Linear):
        return inputs.reshape(-1, inputs.shape[-1])
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or not isinstance(module.padding, tuple):
            raise ValueError("activation weighting supports nn.Linear and ungrouped nn.Conv2d with numeric padding")
        patches = F.unfold(
            inputs, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride
        )  # (n, in * kh * kw, positions)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    raise ValueError(f"activation weighting supports nn.Linear and nn.Conv2d, not {type(module).__name__}")


@torch.no_grad()
def input_moments(
    model: nn.Module, names: Sequence[str], batches: Iterable[torch.Tensor], subvector_size: int
) -> dict[str, torch.Tensor]:
    """Per coded weight (state-dict key 'module.weight'): the mean second moment of its inputs per
    chunk of `subvector_size`, (C, d, d), measured by running `model` (not modified) on `batches`."""
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name in names:
        module = modules.get(module_name(name))
        if module is None:
            raise ValueError(f"no module {module_name(name)!r} in this model")

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
            rows = _layer_inputs(module, args[0].detach().float())
            moments = _chunked_moments(rows, subvector_size)
            sums[name] = sums[name] + moments if name in sums else moments
            counts[name] = counts.get(name, 0) + rows.shape[0]

        hooks.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for index, batch in enumerate(batches):
            try:
                model(batch.to(device))
            except RuntimeError as exc:  # e.g. inputs of the wrong width: one line, not the traceback
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ValueError(
                    f"the model cannot run on calibration batch {index} of shape {list(batch.shape)} ({reason}): "
                    "give batches of the model's own inputs"
                ) from None
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    missing = [name for name in names if name not in sums]
    if missing:
        raise ValueError(f"the calibration inputs never reached layer(s) {', '.join(missing)}")
    return {name: (sums[name] / counts[name]).cpu() for name in names}


def calibration_batches(x: torch.Tensor, seed: int, n: int = CALIBRATION_SAMPLES) -> list[torch.Tensor]:
    """A seeded sample of `n` inputs of `x` (all when fewer), in batches."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(x), generator=generator)[:n]
    return [x[picks[start : start + CALIBRATION_BATCH]] for start in range(0, len(picks), CALIBRATION_BATCH)]
