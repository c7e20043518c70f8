"""What one training step of coremltools' DKMPalettizer costs against a plain step, on Fashion-MNIST /
LeNet-300-100 (why bench/peers.py's DKM part runs on mnist-5k / LeNet-5 only): the same batches of 128,
Adam, one torch thread, interleaved plain / DKM 1-bit / DKM 2-bit, `--steps` each, wall and CPU seconds.

    python bench/dkm_cost.py               # writes bench/results/dkm_cost.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch
from torch.nn import functional as F

from core.data import load_dataset
from core.methods.lut import require
from core.models import build_model


def step_seconds(data, bits: int, steps: int, seed: int) -> tuple[float, float]:
    """(wall, CPU) seconds a step, median over `steps`: plain training (bits 0) or DKM at `bits`."""
    torch.manual_seed(seed)
    model = build_model("mlp", data.input_shape, data.n_classes, (300, 100))
    palettizer = None
    if bits:
        palettization = require("coremltools.optimize.torch.palettization")
        fc = {"n_bits": bits, "cluster_dim": 1, "weight_threshold": 0}
        config = palettization.DKMPalettizerConfig.from_dict({"module_type_configs": {"Linear": fc}})
        palettizer = palettization.DKMPalettizer(model, config)
        model = palettizer.prepare()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))
    walls, cpus = [], []
    for step in range(steps):
        index = order[step * 128 : (step + 1) * 128]
        wall, cpu = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if palettizer is not None:
            palettizer.step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of plain, 1-bit, 2-bit")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist")
    steps_8_epochs = 8 * -(-len(data.x_train) // 128)
    found: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: []}
    for round_ in range(args.rounds):
        for bits in found:
            found[bits].append(step_seconds(data, bits, args.steps, round_))
    lines = [
        "# One training step: plain against coremltools' DKMPalettizer (Fashion-MNIST / LeNet-300-100)",
        "",
        f"`python bench/dkm_cost.py --steps {args.steps} --rounds {args.rounds}`: batch 128, Adam, one torch "
        f"thread, load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])} at the end; the "
        "median step of each round, then the median over the rounds.",
        "",
        "| training | wall s a step | CPU s a step | CPU / plain: median of the rounds' ratios [min, max] "
        "| 8 epochs (CPU, estimated) |",
        "|---|---|---|---|---|",
    ]
    for bits, rows in found.items():
        wall = statistics.median(w for w, _ in rows)
        cpu = statistics.median(c for _, c in rows)
        ratios = [c / plain for (_, c), (_, plain) in zip(rows, found[0])]  # each round's DKM / its plain
        name = "plain (a step of our training, no term)" if bits == 0 else f"DKM {bits}-bit"
        spread = f"{statistics.median(ratios):.1f}x [{min(ratios):.1f}, {max(ratios):.1f}]"
        lines.append(f"| {name} | {wall:.4f} | {cpu:.4f} | {spread} | {cpu * steps_8_epochs / 60:.1f} min |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dkm_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
