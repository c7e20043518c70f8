"""Start-up: what the command line imports and loads for each command.

A listing, a deletion, gc of runs and --help import no torch; a cache hit (train, compress) loads no
dataset, builds no model for training and imports none of the dataset libraries; a process that
waits for another's job loads nothing. Each command runs in a fresh interpreter (a wrapper that
runs `python -m core` and reports which heavy modules it imported), so nothing the test process
imported counts. What these assert is what was imported, never how long it took (bench/startup.py
measures that).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import core
from core.config import MAX_PARAMETERS, MODELS, CompressConfig, TrainConfig
from core.data import DATASET_SOURCES
from core.models import MODEL_BUILDERS, count_parameters
from core.pipeline import get_or_compress
from core.store import RunStore

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "sklearn", "scipy", "mlxtend", "pandas", "safetensors.torch", "core.train")

# Runs `python -m core ARGV...` the way the shell does (the package core/__init__.py first, then
# core/__main__.py as __main__) and writes {"code", "heavy"} to the file named by its first argument.
WRAPPER = f"""
import json, os, runpy, sys
sys.path[0] = os.getcwd()  # as `python -m` puts it, not the wrapper's own folder
report, sys.argv = sys.argv[1], ["python -m core", *sys.argv[2:]]
try:
    runpy.run_module("core", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exit_:
    code = exit_.code
heavy = [name for name in {HEAVY!r} if name in sys.modules]
with open(report, "w") as out:
    json.dump({{"code": code, "heavy": heavy}}, out)
"""


def run_core(tmp_path: Path, *argv: str) -> dict:
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(script), str(report), *argv], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert report.exists(), proc.stderr
    result = json.loads(report.read_text())
    result["stdout"], result["stderr"] = proc.stdout, proc.stderr
    return result


def train_argv(cfg: TrainConfig, root: Path) -> list[str]:
    """`python -m core train` arguments asking for exactly the run of `cfg`."""
    argv = ["train", "--dataset", cfg.dataset, "--hidden", *map(str, cfg.hidden), "--epochs", str(cfg.epochs)]
    argv += ["--lr", str(cfg.lr), "--batch-size", str(cfg.batch_size), "--seed", str(cfg.seed)]
    return [*argv, "--reg", cfg.reg, "--lam", str(cfg.lam), "--cache-dir", str(root), "--json"]


@pytest.fixture
def store_copy(tiny_store, tmp_path) -> RunStore:
    """A copy of the tiny store (runs only) that a command may change."""
    root = tmp_path / "store"
    shutil.copytree(tiny_store.root / "runs", root / "runs")
    return RunStore(root)


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [["--help"], ["runs"], ["runs", "--json"], ["gc", "--older-than", "0"], ["rm", "RUN"], ["train", "--help"]],
    ids=["help", "runs", "runs-json", "gc", "rm", "train-help"],
)
def test_listing_commands_import_no_torch(tmp_path, store_copy, argv):
    run_id = store_copy.list_runs()[0].run_id
    argv = [run_id if arg == "RUN" else arg for arg in argv]
    if argv[0] != "--help" and "--help" not in argv:
        argv += ["--cache-dir", str(store_copy.root)]
    result = run_core(tmp_path, *argv)
    assert result["code"] == 0, result["stderr"]
    assert result["heavy"] == []
    if argv[0] == "runs":
        assert run_id in result["stdout"]
    if argv[0] == "rm":
        assert store_copy.load_run(run_id) is None


@pytest.mark.slow
def test_cache_hits_load_no_dataset_and_build_no_training(tmp_path, store_copy):
    run = store_copy.list_runs()[0]
    cfg = run.config
    result = run_core(tmp_path, *train_argv(cfg, store_copy.root))
    assert result["code"] == 0, result["stderr"]
    assert json.loads(result["stdout"])["cached"] is True and json.loads(result["stdout"])["run_id"] == run.run_id
    assert result["heavy"] == []  # not even torch: the weights are checked in numpy

    get_or_compress(store_copy, run, CompressConfig(method="binarize"))
    argv = ["compress", run.run_id, "--method", "binarize", "--cache-dir", str(store_copy.root), "--json"]
    result = run_core(tmp_path, *argv)
    assert result["code"] == 0, result["stderr"]
    assert json.loads(result["stdout"])["cached"] is True
    assert result["heavy"] == []  # not even torch: the compressed file is checked in numpy


# A process that verifies every stored compression of a store (as `compress` does its one, as the
# pages' listing does them all) and reports which heavy modules that imported.
VERIFY = f"""
import json, sys
from core.store import RunStore
store = RunStore(sys.argv[1])
verified = [(r.key, r.compress_config.method) for r in store.list_compressions()]
payloads = [store.load_compression_payload(r.run_id, r.key) is not None for r in store.list_compressions()]
heavy = [name for name in {HEAVY!r} if name in sys.modules]
print(json.dumps({{"verified": verified, "payloads": payloads, "heavy": heavy}}))
"""


@pytest.mark.slow
def test_verifying_stored_compressions_imports_no_torch(store_copy):
    """The store's check of a compressed file (the reader's every check, on numpy) imports no torch,
    for every built-in method and with entropy coding and pruning; torch comes only with a model."""
    run = store_copy.list_runs()[0]
    settings = [
        CompressConfig(method="float"),
        CompressConfig(method="binarize"),
        CompressConfig(method="kmeans", n_centroids=8),
        CompressConfig(method="pq", subvector_size=2, n_centroids=4, layout="per-chunk", centroid_bits=16),
        CompressConfig(method="rq", subvector_size=2, n_centroids=4, stages=2),
        CompressConfig(method="pq", subvector_size=2, n_centroids=8, entropy="ans", sparsity=0.5),
        CompressConfig(  # per-layer settings (core/budget.py): each layer checked by its own
            method="pq",
            subvector_size=2,
            n_centroids=8,
            per_layer=[{"name": "fcs.0.weight", "method": "kmeans", "n_centroids": 4, "sparsity": 0.5}],
        ),
    ]
    keys = {get_or_compress(store_copy, run, cfg)[0].key: cfg.method for cfg in settings}
    proc = subprocess.run(
        [sys.executable, "-c", VERIFY, str(store_copy.root)], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert dict(result["verified"]) == keys and all(result["payloads"])
    assert result["heavy"] == []


@pytest.mark.slow
def test_a_waiter_loads_no_dataset(tmp_path, store_copy):
    """A process that finds the run's job held by another waits for it: no torch, no dataset."""
    import fcntl
    import time

    from core.jobs import JobManager

    run = store_copy.load_run(store_copy.run_ids()[0], verify_weights=True)  # its weights held in memory
    assert run is not None
    cfg = run.config
    # this process "is training" the run (it holds the key's lock) and publishes it while the other waits
    shutil.rmtree(store_copy.run_dir(run.run_id))
    manager = JobManager(store_copy.root)
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    report = tmp_path / "report.json"
    argv = train_argv(cfg, store_copy.root)
    manager.jobs_dir.mkdir(parents=True, exist_ok=True)  # the job layer makes its folder at its first job
    with open(manager.jobs_dir / f"{cfg.run_id()}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiter = subprocess.Popen([sys.executable, str(script), str(report), *argv], cwd=REPO, stdout=subprocess.PIPE)
        time.sleep(3.0)  # not a limit: whenever the waiter looks, it finds the lock held, then the run
        store_copy.save_run(run)
        fcntl.flock(lock, fcntl.LOCK_UN)
    out, _ = waiter.communicate()
    result = json.loads(report.read_text())
    assert result["code"] == 0 and json.loads(out)["run_id"] == run.run_id and json.loads(out)["cached"] is True
    assert result["heavy"] == []


@pytest.mark.slow
def test_import_core_is_lazy_and_keeps_the_public_api():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, core; assert 'torch' not in sys.modules, 'import core imported torch'; "
            "import core.compress; from core import compress; "
            "assert core.compress is compress and callable(compress) and compress.__module__ == 'core.api'; "
            "assert sorted(core.__all__) == sorted(n for n in dir(core) if n in core.__all__)",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert callable(core.compress) and core.CompressConfig is CompressConfig
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        core.nothing  # noqa: B018


def test_models_named_in_config_are_the_builders():
    assert tuple(MODEL_BUILDERS) == MODELS


@pytest.mark.parametrize("hidden", [(300, 100), (32, 16), (7,), (1000, 500, 250, 10)])
@pytest.mark.parametrize("dataset", ["digits", "mnist-5k", "cifar10"])
def test_mlp_parameters_counted_by_arithmetic_match_the_network(dataset, hidden):
    cfg = TrainConfig(dataset=dataset, model="mlp", hidden=hidden)
    source = DATASET_SOURCES[dataset]
    assert cfg.mlp_parameters() == count_parameters("mlp", source.input_shape, source.n_classes, hidden)


def test_the_fixed_networks_are_under_the_parameter_limit_on_every_dataset():
    # the config bounds only the MLP (the one network whose size it sets): the others must stay small
    for model in MODELS:
        for dataset, source in DATASET_SOURCES.items():
            if model == "cifar-cnn" and dataset != "cifar10":
                continue
            if model != "mlp":
                assert count_parameters(model, source.input_shape, source.n_classes, ()) < MAX_PARAMETERS


def test_too_large_an_mlp_is_still_refused():
    with pytest.raises(ValueError, match="parameters; the limit is 20,000,000"):
        TrainConfig(dataset="mnist-5k", hidden=(10_000, 10_000))
