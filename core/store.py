"""The run store: trained runs and compression results on disk, content-addressed.

    <root>/runs/<run_id>/model.safetensors   trained weights
    <root>/runs/<run_id>/run.json            config, per-epoch metrics, histograms, sha256 of the weights
    <root>/compress/<run_id>/<key>.safetensors  the exported compressed model
    <root>/compress/<run_id>/<key>.json      its result, with the sha256 of the file

run_id hashes the canonical TrainConfig; key hashes the canonical CompressConfig.
Writes are atomic (a run is built in a temporary folder and renamed into place; files are written
to a temporary name and renamed), so a reader never sees half an entry and two writers of one
key leave one valid entry. An entry whose checksum does not match is treated as missing and
recomputed. Nothing is loaded with pickle: weights are safetensors, metadata JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .compress import CompressResult, compress_run
from .config import CompressConfig, TrainConfig
from .data import Dataset
from .fileio import write_atomic
from .train import OnEpoch, OnStep, TrainResult, train

ENV_VAR = "COMPRESSION_LAB_CACHE"


def default_root() -> Path:
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path(__file__).resolve().parent.parent / "cache"


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


class RunStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()

    # ------------------------------------------------------------------------------------ runs
    def _run_dir(self, run_id: str) -> Path:
        if not run_id or not all(c in "0123456789abcdef" for c in run_id):
            raise KeyError(run_id)
        return self.root / "runs" / run_id

    def load_run(self, run_id: str) -> TrainResult | None:
        """The stored run, or None when absent or corrupt (a corrupt entry is never loaded)."""
        try:
            folder = self._run_dir(run_id)
            meta = json.loads((folder / "run.json").read_text())
            blob = (folder / "model.safetensors").read_bytes()
            if meta.get("model_sha256") != _sha256(blob):
                return None
            return TrainResult(
                config=TrainConfig.from_dict(meta["config"]).canonical(),
                run_id=meta["run_id"],
                state_dict=st_load(blob),
                input_shape=tuple(meta["input_shape"]),
                n_classes=meta["n_classes"],
                history=meta["history"],
                histograms=meta["histograms"],
                device=meta.get("device", "cpu"),
                seconds=meta.get("seconds", 0.0),
            )
        except (OSError, KeyError, TypeError, ValueError):
            return None

    def has_run(self, run_id: str) -> bool:
        return self.load_run(run_id) is not None

    def save_run(self, result: TrainResult) -> None:
        """Publish a run atomically; a valid entry already there wins, a corrupt one is replaced."""
        blob = st_save(result.state_dict)
        meta = {
            "run_id": result.run_id,
            "config": asdict(result.config),
            "input_shape": list(result.input_shape),
            "n_classes": result.n_classes,
            "history": result.history,
            "histograms": result.histograms,
            "device": result.device,
            "seconds": result.seconds,
            "model_sha256": _sha256(blob),
        }
        final = self._run_dir(result.run_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{result.run_id}-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            (tmp / "model.safetensors").write_bytes(blob)
            (tmp / "run.json").write_text(json.dumps(meta))
            for _attempt in range(3):
                try:
                    os.rename(tmp, final)
                    return
                except OSError:
                    if self.load_run(result.run_id) is not None:
                        return  # another writer published the same run first
                    self._discard(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _discard(self, folder: Path) -> None:
        """Move a corrupt entry out of the way (rename first, so readers never see it half-deleted)."""
        trash = folder.parent / f".trash-{folder.name}-{uuid.uuid4().hex}"
        try:
            os.rename(folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def list_runs(self) -> list[TrainResult]:
        """Every valid stored run, newest first."""
        runs_dir = self.root / "runs"
        if not runs_dir.is_dir():
            return []
        folders = [p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        runs = [self.load_run(p.name) for p in folders]
        return [run for run in runs if run is not None]

    def get_or_train(
        self,
        cfg: TrainConfig,
        device=None,
        on_epoch: OnEpoch | None = None,
        on_step: OnStep | None = None,
        data: Dataset | None = None,
    ) -> tuple[TrainResult, bool]:
        """(run, was_cached). Trains and stores only on a miss; a failed or interrupted training
        stores nothing."""
        cached = self.load_run(cfg.run_id())
        if cached is not None:
            return cached, True
        result = train(cfg, device=device, on_epoch=on_epoch, on_step=on_step, data=data)
        self.save_run(result)
        return result, False

    # ---------------------------------------------------------------------------- compressions
    def _compress_paths(self, run_id: str, cfg: CompressConfig) -> tuple[Path, Path]:
        folder = self.root / "compress" / self._run_dir(run_id).name
        key = cfg.key()
        return folder / f"{key}.json", folder / f"{key}.safetensors"

    def load_compression(self, run_id: str, cfg: CompressConfig) -> tuple[CompressResult, Path] | None:
        """(result, path of the exported file), or None when absent or corrupt."""
        json_path, file_path = self._compress_paths(run_id, cfg)
        try:
            meta = json.loads(json_path.read_text())
            if meta.get("file_sha256") != _sha256(file_path.read_bytes()):
                return None
            return CompressResult.from_json(meta["result"]), file_path
        except (OSError, KeyError, TypeError, ValueError):
            return None

    def save_compression(self, result: CompressResult, blob: bytes) -> Path:
        json_path, file_path = self._compress_paths(result.run_id, result.compress_config)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        # The file first, then the JSON that vouches for it: a reader that finds the JSON finds
        # the file it describes (or a newer identical one from a concurrent writer).
        write_atomic(file_path, blob)
        write_atomic(json_path, json.dumps({"result": result.to_json(), "file_sha256": _sha256(blob)}).encode())
        return file_path

    def get_or_compress(
        self,
        run: TrainResult,
        cfg: CompressConfig,
        device=None,
        data: Dataset | None = None,
        on_step: OnStep | None = None,
    ) -> tuple[CompressResult, Path, bool]:
        """(result, exported file, was_cached)."""
        cached = self.load_compression(run.run_id, cfg)
        if cached is not None:
            return (*cached, True)
        result, blob = compress_run(run, cfg, data=data, device=device, on_step=on_step)
        return result, self.save_compression(result, blob), False

    def list_compressions(self, run_id: str | None = None) -> list[CompressResult]:
        """Every valid stored compression (of one run, or of all)."""
        base = self.root / "compress"
        folders = [base / run_id] if run_id else (sorted(base.iterdir()) if base.is_dir() else [])
        results = []
        for folder in folders:
            if not folder.is_dir():
                continue
            for json_path in sorted(folder.glob("*.json")):
                try:
                    meta = json.loads(json_path.read_text())
                    result = CompressResult.from_json(meta["result"])
                except (OSError, KeyError, TypeError, ValueError):
                    continue
                if self.load_compression(result.run_id, result.compress_config) is not None:
                    results.append(result)
        return results
