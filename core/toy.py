"""Dataset-free toys for the Learn and Home pages, on the core's own functions (no streamlit here).

- the double well: a cloud of weights pulled by `core.regularizers.binary_penalty`;
- product quantization of 2-D points with `core.pq.kmeans`.
"""

from __future__ import annotations

import torch

from .histograms import histogram
from .pq import kmeans
from .records import LayerHistogram
from .regularizers import binary_penalty


def double_well_descent(lam: float, n_weights: int = 2000, steps: int = 300, lr: float = 0.01, seed: int = 0) -> dict:
    """Gradient descent on  mean (w - w0)^2 / var(w0) + lam * R_binary(w)  from a Gaussian cloud w0.

    The first term stands in for the task loss (it keeps each weight near where training put
    it); the second is the paper's binarizing term (our reading). lam = 0 leaves the cloud as it
    is; as lam grows the weights collapse onto +/- alpha. Returns plain lists.
    """
    generator = torch.Generator().manual_seed(seed)
    initial = torch.randn(1, n_weights, generator=generator) * 0.1  # (1, n): one "layer"
    weights = initial.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=lr * float(initial.std()))
    for _ in range(steps if lam > 0 else 0):
        loss = ((weights - initial) ** 2).mean() / initial.var() + lam * binary_penalty([weights])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = weights.detach()
    return {
        "initial": initial.flatten().tolist(),
        "final": final.flatten().tolist(),
        "alpha": float(final.abs().mean()),
        "penalty": float(binary_penalty([final])),
        "initial_penalty": float(binary_penalty([initial])),
    }


def toy_histogram(values: list[float], layer: str = "toy") -> LayerHistogram:
    """The same record as training keeps per layer and epoch, for a list of values."""
    return histogram(torch.tensor(values), layer)


def pq_toy(n_centroids: int, n_points: int = 600, n_iter: int = 20, seed: int = 0) -> dict:
    """k-means of a 2-D point cloud (three blobs), i.e. PQ with d = 2 of one subvector position."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-1.0, -0.5], [1.0, 0.0], [0.0, 1.2]])
    which = torch.randint(len(centers), (n_points,), generator=generator)
    points = centers[which] + 0.35 * torch.randn(n_points, 2, generator=generator)  # (N, 2)
    centroids, codes = kmeans(points.unsqueeze(0), n_centroids, n_iter=n_iter, seed=seed)  # (1, k, 2), (1, N)
    decoded = centroids[0][codes[0]]  # (N, 2)
    mse = float(((points - decoded) ** 2).mean())
    return {
        "points": points.tolist(),
        "centroids": centroids[0].tolist(),
        "codes": codes[0].tolist(),
        "mse": mse,
        "variance": float(points.var(0).mean()),
    }
