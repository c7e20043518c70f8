"""The command line: the happy path with --json, and one-line errors that write nothing."""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.__main__ import main
from core.records import sha256
from core.store import RunStore
from core.store import _envelope as store_envelope
from tests.marks import fast_cases

TRAIN = ["train", "--dataset", "digits", "--hidden", "32", "16", "--epochs", "2", "--lr", "3e-3"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse exits by itself
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.slow  # trains and compresses through the CLI: the whole suite's
def test_train_compress_evaluate_runs(capsys, tmp_path):
    cache = str(tmp_path / "cache")
    code, out, _ = run_cli(capsys, *TRAIN, "--reg", "binary", "--lam", "0.05", "--cache-dir", cache, "--json")
    assert code == 0
    trained = json.loads(out)
    assert {"run_id", "test_accuracy", "history"} <= set(trained) and len(trained["history"]) == 2
    code, out, _ = run_cli(capsys, *TRAIN, "--reg", "binary", "--lam", "0.05", "--cache-dir", cache, "--json")
    assert json.loads(out)["cached"] is True

    model_file = tmp_path / "model.safetensors"
    code, out, _ = run_cli(
        capsys,
        "compress",
        trained["run_id"][:6],
        "--method",
        "pq",
        "--subvector-size",
        "4",
        "--centroids",
        "16",
        "--layout",
        "shared",
        "--out",
        str(model_file),
        "--cache-dir",
        cache,
        "--json",
    )
    assert code == 0
    compressed = json.loads(out)
    for key in ("accuracy", "fc_bits", "fc_ratio", "model_bits", "model_ratio", "file_bytes"):
        assert key in compressed
    assert compressed["file_bytes"] == model_file.stat().st_size

    code, out, _ = run_cli(capsys, "evaluate", str(model_file), "--json")
    assert code == 0 and json.loads(out)["accuracy"] == compressed["accuracy"]

    code, out, _ = run_cli(capsys, "runs", "--cache-dir", cache)
    assert trained["run_id"] in out
    code, out, _ = run_cli(capsys, "compress", trained["run_id"], "--method", "binarize", "--cache-dir", cache)
    assert code == 0 and "FC" in out and "ratio" in out


@pytest.mark.slow
def test_sweep_writes_one_row_per_point(capsys, tmp_path):
    table = tmp_path / "sweep.csv"
    code, out, _ = run_cli(
        capsys,
        "sweep",
        "--dataset",
        "digits",
        "--hidden",
        "32",
        "16",
        "--epochs",
        "2",
        "--lr",
        "3e-3",
        "--reg",
        "binary",
        "--lam",
        "0",
        "0.05",
        "--method",
        "binarize",
        "kmeans",
        "pq",
        "-d",
        "2",
        "4",
        "-k",
        "4",
        "32",
        "--layout",
        "shared",
        "per-chunk",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--csv",
        str(table),
        "--json",
    )
    assert code == 0
    rows = list(csv.DictReader(table.open()))
    # per run: binarize 1 + kmeans 2 (k) + pq 2 d x 2 k x 2 layouts
    # - per-chunk k=32 (> the 10 rows of the last layer), for both d
    assert len(rows) == 2 * (1 + 2 + 8 - 2)
    assert {r["lam"] for r in rows} == {"0.0", "0.05"}
    skipped = json.loads(out)["skipped"]
    assert len(skipped) == 2 * 2 and "per-chunk" in skipped[0]["reason"]


@pytest.mark.slow
def test_the_sweep_spans_pruning_and_skips_what_cannot_be(capsys, tmp_path):
    """--prune-sparsity (training), --sparsity and --prune-finetune (compression) each take several values:
    each fitting combination is a row; a combination that is no compression (retraining at sparsity 0,
    pruning a per-chunk layout) and a compression below a run's own pruning are skipped on a line each,
    with the config's or the planner's reason; nothing is substituted."""
    table = tmp_path / "sweep.csv"
    argv = [
        "sweep", "--dataset", "digits", "--hidden", "32", "16", "--epochs", "2", "--lr", "3e-3", "--reg", "none",
        "--prune-sparsity", "0", "0.5", "--prune-epochs", "2", "--method", "float", "pq", "-d", "4", "-k", "4",
        "--layout", "shared", "per-chunk", "--sparsity", "0", "0.5", "--prune-finetune", "0", "1",
        "--cache-dir", str(tmp_path / "cache"), "--csv", str(table),
    ]  # fmt: skip
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == 0, err
    result = json.loads(out)
    rows = list(csv.DictReader(table.open()))
    runs = list(dict.fromkeys(r["run_id"] for r in rows))
    assert len(runs) == 2
    labels = {run: [r["label"] for r in rows if r["run_id"] == run] for run in runs}
    everything = ["float", "pq d=4 k=4 shared", "prune 0.5 + pq d=4 k=4 shared",
                  "prune 0.5 +rt1 + pq d=4 k=4 shared", "pq d=4 k=4 per-chunk"]  # fmt: skip
    assert labels[runs[0]] == everything
    # the run pruned to 0.5 in training: float, and the codings that prune at least as much
    assert labels[runs[1]] == ["float", "prune 0.5 + pq d=4 k=4 shared", "prune 0.5 +rt1 + pq d=4 k=4 shared"]
    skipped = {(s["run_id"], s["compression"]): s["reason"] for s in result["skipped"]}
    impossible = ["prune 0 +rt1 + pq d=4 k=4 shared", "prune 0 +rt1 + pq d=4 k=4 per-chunk",
                  "prune 0.5 + pq d=4 k=4 per-chunk", "prune 0.5 +rt1 + pq d=4 k=4 per-chunk"]  # fmt: skip
    for run in runs:
        for label in impossible:
            reason = skipped.pop((run, label))
            assert ("needs a sparsity > 0" in reason) == ("rt1" in label and "prune 0 " in label)
            assert ("use layout shared" in reason) == ("prune 0.5" in label)
    assert set(skipped) == {(runs[1], "pq d=4 k=4 shared"), (runs[1], "pq d=4 k=4 per-chunk")}
    assert all("pruned to sparsity 0.5 during training" in reason for reason in skipped.values())
    # the table: one line each skip, on stderr; a second sweep computes nothing and says the same
    code, out, err = run_cli(capsys, *argv)
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(lines) == len(result["skipped"]) == 2 * 4 + 2
    assert "skipped prune 0 +rt1 + pq d=4 k=4 shared on " in err and f"wrote {len(rows)} rows" in out


NO_CUDA = not torch.cuda.is_available()

# (argv, the one line's message); RUN is a stored run id, DIR a folder, FIFO a named pipe, LINK a
# symlink, FILE a regular file, MISSING a path in a folder that does not exist.
BAD = [
    (["bogus"], "invalid choice: 'bogus'"),
    (["train", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["train", "--model", "resnet"], "invalid choice: 'resnet'"),
    (["train", "--dataset", "digits", "--lam", "-1"], "lam=-1.0 must be a finite number >= 0"),
    (["train", "--dataset", "digits", "--lam", "inf"], "lam=inf must be a finite number"),
    (["train", "--dataset", "digits", "--lr", "nan"], "lr=nan must be a finite number"),
    (["train", "--dataset", "digits", "--epochs", "0"], "epochs=0 must be a whole number from 1 to 1,000"),
    (["train", "--dataset", "digits", "--epochs", "1000000000"], "epochs=1000000000 must be a whole number"),
    (["train", "--dataset", "digits", "--epochs", "1e400"], "invalid int value: '1e400'"),
    (["train", "--dataset", "digits", "--seed", str(2**70)], "seed=1180591620717411303424 must be a whole number"),
    (["train", "--dataset", "digits", "--seed", "-1"], "seed=-1 must be a whole number from 0"),
    (["train", "--dataset", "digits", "--hidden", "100000", "1000"], "the limit is 20,000,000"),
    (["train", "--dataset", "digits", "--hidden", "30,abc"], "whole numbers separated by commas or spaces"),
    (["train", "--dataset", "digits", "--batch-size", "0"], "batch_size=0"),
    (["train", "--dataset", "digits", "--device", "foo"], "unknown device 'foo'"),
    (["train", "--dataset", "digits", "--device", "cuda:99"], "cuda:99"),
    (["train", "--dataset", "digits", "--cache-dir", "FILE"], "is a file, not a folder"),
    (["compress", "RUN", "--method", "zip"], "invalid choice: 'zip'"),
    (["compress", "RUN", "-d", "0"], "d=0 must be a whole number from 1"),
    (["compress", "RUN", "-k", "1"], "k=1 must be a whole number from 2 to 65,536"),
    (["compress", "RUN", "-k", "70000"], "k=70000 must be a whole number from 2 to 65,536"),
    (["compress", "RUN", "-k", "64", "--layout", "per-chunk"], "layer fcs.2.weight has 10 rows, so k=64 is too many"),
    (["compress", "RUN", "-d", "64"], "wider than layer fcs.2.weight, which has 16 inputs; use d <= 16"),
    (["compress", "RUN", "--kmeans-iters", "100000"], "kmeans_iters=100000"),
    (["compress", "0123456789abcdef"], "is not a stored run"),
    (["compress", "nothex"], "is not a stored run"),
    (["compress", "RUN", "--out", "DIR"], "is a folder"),
    (["compress", "RUN", "--out", "MISSING"], "does not exist"),
    (["compress", "RUN", "--out", "FIFO"], "is not a regular file"),
    (["compress", "RUN", "--out", "LINK"], "is a symbolic link"),
    (["compress", "RUN", "--device", "foo"], "unknown device 'foo'"),
    (["sweep", "--dataset", "digits", "--csv", "DIR"], "is a folder"),
    (["sweep", "--dataset", "digits", "--csv", "MISSING"], "does not exist"),
    (["sweep", "--dataset", "digits", "--lam", "0", "-1"], "lam=-1.0 must be a finite number"),
    (["sweep", "--dataset", "digits", "-k", "1"], "k=1 must be a whole number"),
    (["sweep", "--dataset", "digits", "--epochs", "0"], "epochs=0 must be a whole number"),
    (["sweep", "--dataset", "digits", "--sparsity", "0", "1.0"], "sparsity=1.0 must be a number from 0"),
    (["sweep", "--dataset", "digits", "--sparsity", "-0.1", "--layout", "per-chunk"], "sparsity=-0.1 must be"),
    (["sweep", "--dataset", "digits", "--method", "float", "--sparsity", "nan"], "sparsity=nan must be a number"),
    (["sweep", "--dataset", "digits", "--prune-sparsity", "0", "1.0"], "prune_sparsity=1.0 must be a number"),
    (["sweep", "--dataset", "digits", "--prune-sparsity", "nan"], "prune_sparsity=nan must be a number"),
    (["sweep", "--dataset", "digits", "--prune-finetune", "0", "-1"], "prune_finetune_epochs=-1 must be"),
    # a grid in which a method asked for has no compression at all: one line before any training
    (
        ["sweep", "--dataset", "digits", "--method", "pq", "--layout", "per-chunk", "--sparsity", "0.5"],
        "no pq setting of this grid is a compression: pruning codes",
    ),
    (
        ["sweep", "--dataset", "digits", "--method", "float", "kmeans", "--prune-finetune", "2"],
        "no kmeans setting of this grid is a compression: retraining the survivors",
    ),
    (["evaluate", "MISSING"], "not a compressed model"),
    (["evaluate", "DIR"], "not a compressed model"),
    (["evaluate", "FILE"], "not a compressed model"),
    (["evaluate", "FILE", "--dataset", "mnsit"], "unknown dataset 'mnsit'"),
    (["rm", "0123456789abcdef"], "is not a stored run"),
    (["rm", "RUN/ffffffffffffffff"], "is not a stored compression"),
    (["gc", "--older-than", "-1"], "--older-than -1.0 must be a number of seconds >= 0"),
    (["runs", "--cache-dir", "FILE"], "is a file, not a folder"),
]
if NO_CUDA:
    BAD.append((["train", "--dataset", "digits", "--device", "cuda"], "CUDA is not available here"))


@pytest.fixture
def paths(tmp_path) -> dict[str, str]:
    folder = tmp_path / "folder"
    folder.mkdir()
    regular = tmp_path / "regular.txt"
    regular.write_text("not a model")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link.safetensors"
    link.symlink_to(regular)
    return {"DIR": str(folder), "FILE": str(regular), "FIFO": str(fifo), "LINK": str(link),
            "MISSING": str(tmp_path / "no" / "such" / "file.csv")}  # fmt: skip


@fast_cases(6)
@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_one_line_and_nothing_written(capsys, tmp_path, tiny_store, paths, argv, message):
    run_id = tiny_store.list_runs()[0].run_id
    argv = [a.replace("RUN", run_id) if a.startswith("RUN") else paths.get(a, a) for a in argv]
    if "--cache-dir" not in argv and argv[0] != "bogus":
        argv += ["--cache-dir", str(tiny_store.root)]
    before, around = snapshot(tiny_store.root), snapshot(tmp_path)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err and out == ""
    assert "python -m core core" not in err
    assert snapshot(tiny_store.root) == before and snapshot(tmp_path) == around
    assert Path(paths["FIFO"]).is_fifo() and Path(paths["LINK"]).is_symlink()


@pytest.mark.slow
def test_evaluate_warns_when_the_dataset_differs(capsys, tmp_path, tiny_store):
    run_id = tiny_store.list_runs()[0].run_id
    out_file = tmp_path / "m.safetensors"
    code, _, _ = run_cli(capsys, "compress", run_id, "--method", "binarize", "--out", str(out_file),
                         "--cache-dir", str(tiny_store.root))  # fmt: skip
    assert code == 0
    code, _, err = run_cli(capsys, "evaluate", str(out_file), "--dataset", "digits", "--json")
    assert code == 0 and "warning" not in err
    # another dataset of the same shape would be silently meaningless: here the shape differs,
    # so it is refused; the warning path is covered by the JSON field being present and null
    code, out, err = run_cli(capsys, "evaluate", str(out_file), "--json")
    assert code == 0 and json.loads(out)["warning"] is None


def test_unavailable_dataset_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_OFFLINE", "1")  # no download attempt: the tests stay offline
    monkeypatch.setenv("COMPRESSION_LAB_DATA", str(tmp_path / "data"))
    code, out, err = run_cli(capsys, "train", "--dataset", "mnist", "--cache-dir", str(tmp_path / "cache"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "dataset 'mnist' is not available" in err and "MNIST/raw" in err
    assert not (tmp_path / "cache").exists()


def test_evaluate_rejects_a_file_that_is_not_a_model(capsys, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a model")
    code, _, err = run_cli(capsys, "evaluate", str(bad))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "not a compressed model" in err


@pytest.mark.slow
@pytest.mark.slow
def test_no_traceback_from_the_real_entry_point(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "train",
            "--dataset",
            "digits",
            "--epochs",
            "0",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_four_concurrent_identical_trainings_train_once(tmp_path):
    """Four CLI processes asking for the same run: one trains, three wait for it (one job per key)."""
    cache = str(tmp_path / "cache")
    argv = [sys.executable, "-m", "core", *TRAIN, "--epochs", "3", "--cache-dir", cache, "--json"]
    env = os.environ | {"COMPRESSION_LAB_MAX_JOBS": "1"}
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)
    ]
    outputs = [proc.communicate() for proc in procs]  # no wall-clock limit: pytest-timeout's net only
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    assert len({r["run_id"] for r in results}) == 1
    assert sorted(r["cached"] for r in results) == [False, True, True, True]  # exactly one trained


@pytest.mark.slow
def test_rm_deletes_what_it_names_and_gc_reports_the_space(capsys, tmp_path):
    cache = str(tmp_path / "cache")
    ids = []
    for seed in ("0", "1"):
        code, out, _ = run_cli(capsys, *TRAIN, "--seed", seed, "--cache-dir", cache, "--json")
        ids.append(json.loads(out)["run_id"])
    code, out, _ = run_cli(capsys, "compress", ids[0], "--method", "binarize", "--cache-dir", cache, "--json")
    key = json.loads(out)["key"]
    run_cli(capsys, "compress", ids[0], "--method", "kmeans", "-k", "4", "--cache-dir", cache, "--json")
    # one compression by RUN/KEY prefix
    code, out, _ = run_cli(capsys, "rm", f"{ids[0][:6]}/{key[:6]}", "--cache-dir", cache, "--json")
    assert code == 0 and json.loads(out)["deleted"] == [f"{ids[0]}/{key}"] and json.loads(out)["bytes_freed"] > 0
    from core.store import RunStore

    store = RunStore(cache)
    assert [c.compress_config.method for c in store.list_compressions()] == ["kmeans"]
    # a whole run, with its compressions; the other run stays
    code, out, _ = run_cli(capsys, "rm", ids[0], "--cache-dir", cache)
    assert code == 0 and "freed" in out
    assert [r.run_id for r in store.list_runs()] == [ids[1]] and store.list_compressions() == []
    # gc: a stale temporary and a run whose JSON was edited go, with the space they took
    stale = Path(cache) / "runs" / ".x.1.dead.tmp"
    stale.write_bytes(b"x" * 5000)
    os.utime(stale, (1, 1))
    run_json = Path(cache) / "runs" / ids[1] / "run.json"
    run_json.write_text(run_json.read_text().replace('"seconds": ', '"seconds": 1'))
    code, out, _ = run_cli(capsys, "gc", "--cache-dir", cache, "--json")
    report = json.loads(out)
    assert code == 0 and "runs/.x.1.dead.tmp" in report["removed"] and f"runs/{ids[1]}" in report["removed"]
    assert report["bytes_freed"] > 5000 and store.list_runs() == []


@pytest.mark.slow
def test_evaluate_on_another_dataset_of_the_same_shape_warns(capsys, tmp_path, monkeypatch):
    """An MNIST model on Fashion-MNIST scores near chance: said on stderr and in --json, not silently."""
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    cache = str(tmp_path / "cache")
    code, out, _ = run_cli(capsys, "train", "--dataset", "mnist-5k", "--epochs", "1", "--cache-dir", cache, "--json")
    run_id = json.loads(out)["run_id"]
    model_file = tmp_path / "m.safetensors"
    run_cli(capsys, "compress", run_id, "--method", "binarize", "--out", str(model_file), "--cache-dir", cache)
    monkeypatch.setenv("COMPRESSION_LAB_DATA", str(tmp_path / "data"))  # fashion-mnist's files are placed there
    code, out, err = run_cli(capsys, "evaluate", str(model_file), "--dataset", "fashion-mnist", "--json")
    assert code == 0
    assert "warning: this model was trained on mnist-5k, not fashion-mnist" in err
    assert "trained on mnist-5k" in json.loads(out)["warning"]


# ---------------------------------------------------------------------------------------------------
# Files out onto a full disk, and a reader that leaves early: one line, exit 2, nothing half-written.


class _FullDisk:
    """A file whose writes fail as a full filesystem's do, after half the bytes would have landed."""

    def __init__(self, path, mode):
        self.file = open(path, mode)  # noqa: SIM115 (closed in __exit__)

    def write(self, data):
        self.file.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fileno(self):
        return self.file.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def _sweep_argv(cache: Path, table: Path) -> list[str]:
    hidden, epochs, lr = ["32", "16"], "2", "3e-3"
    return ["sweep", "--dataset", "digits", "--hidden", *hidden, "--epochs", epochs, "--lr", lr, "--reg", "none",
            "--lam", "0", "--method", "float", "binarize", "--cache-dir", str(cache), "--csv", str(table),
            "--json"]  # fmt: skip


@pytest.mark.parametrize("command", ["compress --out", "sweep --csv"])
def test_a_full_disk_for_the_output_is_one_line(capsys, tmp_path, tiny_store, monkeypatch, command):
    import core.fileio

    cache = tmp_path / "cache"
    shutil.copytree(tiny_store.root / "runs", cache / "runs")
    target = tmp_path / "out" / ("model.safetensors" if command.startswith("compress") else "points.csv")
    target.parent.mkdir()
    run_id = RunStore(cache).list_runs()[0].run_id
    if command.startswith("compress"):
        argv = ["compress", run_id, "--method", "binarize", "--cache-dir", str(cache), "--out", str(target)]
    else:
        argv = _sweep_argv(cache, target)
    assert run_cli(capsys, *argv)[0] == 0  # computed and stored while the disk had room
    target.unlink()
    monkeypatch.setattr(core.fileio, "open", _FullDisk, raising=False)  # the atomic writer's open
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and "Traceback" not in err and out == ""  # (--json: the sweep draws no bar either)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not write") and "No space left" in lines[0], err
    assert list(target.parent.iterdir()) == []  # neither the file nor a temporary


@pytest.mark.slow
@pytest.mark.parametrize("json_flag", [["--json"], []], ids=["json", "text"])
def test_a_reader_that_leaves_early_is_one_line(tmp_path, tiny_store, json_flag):
    """`python -m core runs --json | head -c 1`: the real pipe, closed by its reader before the end."""
    cache = tmp_path / "cache"
    shutil.copytree(tiny_store.root / "runs", cache / "runs")
    # enough runs listed that the output outlasts the pipe's buffer once the reader has gone
    store = RunStore(cache)
    original = store.list_runs()[0]
    for seed in range(1, 400):
        cfg = dataclasses.replace(original.config, seed=seed)
        folder = cache / "runs" / cfg.run_id()
        record = original.to_json() | {"run_id": cfg.run_id(), "config": cfg.to_json()}
        weights = (cache / "runs" / original.run_id / "model.safetensors").read_bytes()
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(weights)
        (folder / "run.json").write_bytes(store_envelope(record, sha256(weights), "weights_sha256"))
    assert len(store.list_runs()) >= 400
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", "runs", *json_flag, "--cache-dir", str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(1)
    proc.stdout.close()  # the reader leaves, as `head -c 1` does
    err = proc.stderr.read().decode()
    assert proc.wait() == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "closed the pipe" in err, err
