"""The Ray executor on a real local cluster (127.0.0.1, 2 CPUs): the same sweep as the local
executor, the same run ids and the same numbers; the driver alone writes the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.ray_cluster import _session_pids, local_ray_cluster

pytest.importorskip("ray", reason="ray is an optional dependency (requirements-ray.txt)")
pytestmark = pytest.mark.slow

SWEEP = ["sweep", "--dataset", "digits", "--hidden", "32", "16", "--epochs", "2", "--lr", "3e-3",
         "--reg", "binary", "--lam", "0", "0.05", "--method", "binarize", "kmeans", "pq",
         "-d", "4", "-k", "8", "--json"]  # fmt: skip


def cli(*argv: str, env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "core", *argv], capture_output=True, text=True, timeout=600, env=env or os.environ
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    log = tmp_path_factory.mktemp("ray") / "ray.log"
    with local_ray_cluster(log) as ray_cluster:
        yield ray_cluster.address


def points(result: dict) -> list[tuple]:
    return [(r["run_id"], r["key"], r["accuracy"], r["float_accuracy"], r["fc_bits"], r["file_bytes"])
            for r in result["rows"]]  # fmt: skip


def test_sweep_on_ray_equals_the_local_sweep(cluster, tmp_path):
    on_ray = cli(*SWEEP, "--cache-dir", str(tmp_path / "ray"), "--executor", "ray", "--ray-address", cluster)
    local = cli(*SWEEP, "--cache-dir", str(tmp_path / "local"))
    assert len(on_ray["rows"]) == 6 and points(on_ray) == points(local)
    # the driver published what the workers returned, with the store's own checks
    from core.store import RunStore

    store = RunStore(tmp_path / "ray")
    assert len(store.list_runs()) == 2 and len(store.list_compressions()) == 6
    # a second sweep finds everything in the store: nothing is sent to the cluster
    again = cli(*SWEEP, "--cache-dir", str(tmp_path / "ray"), "--executor", "ray", "--ray-address", cluster)
    assert points(again) == points(on_ray)


def test_ray_address_from_the_environment(cluster, tmp_path):
    env = os.environ | {"RAY_ADDRESS": cluster, "COMPRESSION_LAB_EXECUTOR": "ray"}
    result = cli(*SWEEP[:-1], "--method", "binarize", "--json", "--cache-dir", str(tmp_path / "env"), env=env)
    assert len(result["rows"]) == 2


def test_an_unreachable_cluster_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "core", *SWEEP, "--cache-dir", str(tmp_path / "c"), "--executor", "ray",
         "--ray-address", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no Ray cluster answers" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "c" / "runs").exists()


def test_the_cluster_ends_with_its_block(tmp_path):
    """Every process of the cluster's session is gone afterwards (ended by id, never by name)."""
    with local_ray_cluster(tmp_path / "ray.log") as cluster:
        assert _session_pids(cluster.session)
    assert _session_pids(cluster.session) == []
