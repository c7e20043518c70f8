"""bench/gpu.py: its dry run exercises every step on tiny sizes on the CPU and writes its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a safety net only: no wall-clock limit of its own
def test_gpu_dry_run_exercises_every_step(tmp_path):
    env = os.environ | {"COMPRESSION_LAB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["env"]["dry_run"] is True
    steps = {row["step"] for row in result["rows"]}
    assert steps == {"tests", "epoch", "regularizer", "pq", "vgg11"}
    assert all(row["device"] for row in result["rows"])  # each figure names its device
    assert all(row["device"].startswith("cpu") for row in result["rows"] if "unavailable" not in row)
    assert {row["impl"] for row in result["rows"] if row["step"] == "pq"} == {"core", "faiss"}
    assert "dry run" in (tmp_path / "gpu.md").read_text()


@pytest.mark.slow
def test_gpu_run_refuses_without_cuda_and_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the real run would start")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--out", "/nonexistent"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "no CUDA device here" in proc.stderr and "Traceback" not in proc.stderr
