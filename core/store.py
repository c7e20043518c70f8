"""The run store: trained runs and compressions on disk, content-addressed, verified, atomic.

    <root>/runs/<run_id>/model.safetensors      trained weights
    <root>/runs/<run_id>/run.json               {"format", "record": RunRecord JSON, "weights_sha256", "checksum"}
    <root>/compress/<run_id>/<key>.safetensors  the exported compressed model
    <root>/compress/<run_id>/<key>.json         {"format", "record": CompressionRecord JSON, "file_sha256", "checksum"}
    <root>/jobs/                                job status and lock files (core/jobs.py)

run_id hashes the (canonical) TrainConfig; key hashes the CompressConfig. The store only persists:
what to compute, and when, is `core/pipeline.py`'s and `core/jobs.py`'s business.

Everything served is verified: the checksum covers each entry's JSON and its weights' or file's
sha256 together; the folder name must be the hash of the config inside, and the key the hash of
the compression config inside; a compressed file must pass the reader's own checks
(`core.filereader.check_bytes`, on numpy: no torch). An entry that fails any check counts as missing:
it is recomputed, never served, and never breaks a listing. The reader's checks run once for each
file's content in a process (`_VerifiedFiles`, keyed by the sha256 the entry already records): the
pipeline's look after a job, the pages' cached listing and the page that draws the file's layers all
serve the file that one check passed, and a changed file (another sha256) is checked again. The
checksum detects corruption and edits; it is not a signature (someone who can write the store can
also recompute it).

Writes are atomic (a run is built in a temporary folder and renamed into place; files go through
`core.fileio.write_atomic`), so a reader never sees half an entry and two writers of one key
leave one valid entry. What a killed writer leaves (hidden temporaries) `gc` removes. Nothing is
loaded with pickle: weights are safetensors, metadata JSON.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import CompressConfig
from .fileio import hold_temporary, is_temporary, temporary_name, write_atomic, writer_alive
from .records import BlobWeights, CompressionRecord, RunRecord, StoredWeights, sha256

if TYPE_CHECKING:
    import numpy as np

ENV_VAR = "COMPRESSION_LAB_CACHE"
_WHERE = f"--cache-dir, {ENV_VAR}"  # how a user picks another store: the CLI's option, the app's variable
STORE_FORMAT = "compression-lab-store/2"
MAX_JSON_BYTES = 64 << 20  # a run.json is tens of kB; anything this large is not ours
STALE_TEMPORARY_S = 3600.0  # a temporary older than this was left by a killed writer
TRANSIENT_SUFFIX = ".transient"  # beside <key>.json: a compression only passed over (see save_compression)
# A writer publishes a compression's JSON milliseconds after its file; a file alone this much
# longer was left by a killed writer (gc's --older-than 0 must not take one being published).
PUBLISH_GAP_S = 60.0


class _VerifiedFiles:
    """The compressed files that passed the reader's checks in this process, by their sha256, with
    their metadata: bytes with such a hash are those bytes, so the checks (which cost far more than
    hashing) are not run on them again. Bounded; the oldest are forgotten first, and checked again
    if they come back. Shared by the threads of a process (the app's sessions and jobs)."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._metas: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def meta(self, blob: bytes, sha: str, source: str) -> dict:
        """The checked metadata of `blob`, whose sha256 is `sha`; NotACompressedModel when it fails."""
        with self._lock:
            if sha in self._metas:
                self._metas.move_to_end(sha)
                return copy.deepcopy(self._metas[sha])
        from .filereader import check_bytes  # numpy only: verifying a stored file imports no torch

        _, meta = check_bytes(blob, source)
        with self._lock:
            self._metas[sha] = meta
            while len(self._metas) > self.limit:
                self._metas.popitem(last=False)
        return copy.deepcopy(meta)

    def __contains__(self, sha: str) -> bool:
        with self._lock:
            return sha in self._metas

    def clear(self) -> None:
        with self._lock:
            self._metas.clear()


_VERIFIED_FILES = _VerifiedFiles()


def default_root() -> Path:
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path(__file__).resolve().parent.parent / "cache"


def _is_id(text: str) -> bool:
    return len(text) == 16 and all(c in "0123456789abcdef" for c in text)


def _checksum(record_json: dict, blob_sha256: str) -> str:
    text = json.dumps({"record": record_json, "sha256": blob_sha256}, sort_keys=True, separators=(",", ":"))
    return sha256(text.encode())


def _envelope(record_json: dict, blob_sha256: str, blob_field: str) -> bytes:
    return json.dumps(
        {
            "format": STORE_FORMAT,
            "record": record_json,
            blob_field: blob_sha256,
            "checksum": _checksum(record_json, blob_sha256),
        }
    ).encode()


def _open_envelope(path: Path, blob_field: str) -> tuple[dict, str]:
    """(record JSON, sha256 of its blob) from a verified envelope; ValueError / OSError otherwise."""
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path.name} is too large to be a store entry")
    envelope = json.loads(path.read_bytes())
    if not isinstance(envelope, dict) or envelope.get("format") != STORE_FORMAT:
        raise ValueError("not an entry of this store format")
    record_json, blob_sha = envelope["record"], envelope[blob_field]
    if not isinstance(record_json, dict) or not isinstance(blob_sha, str):
        raise ValueError("malformed entry")
    if envelope.get("checksum") != _checksum(record_json, blob_sha):
        raise ValueError("the entry does not match its checksum")
    return record_json, blob_sha


_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError)


@dataclass(frozen=True)
class GcReport:
    removed: tuple[str, ...]  # paths removed, relative to the store root
    bytes_freed: int


class _RunEntries:
    """The store's runs: each a folder of its record and weights, verified before it is served."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()

    # ---------------------------------------------------------------------------------- checks
    def check_writable(self) -> None:
        """Raise ValueError (one line) when the store cannot be written: BEFORE any expensive work.
        Writes nothing that stays (a folder that does not exist yet is not created here)."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise ValueError(f"the run store {root} is a file, not a folder; choose another store ({_WHERE})")
        if not root.exists():
            ancestor = root.parent
            while not ancestor.exists() and ancestor != ancestor.parent:
                ancestor = ancestor.parent
            if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
                raise ValueError(
                    f"the run store {root} cannot be created under {ancestor}; choose another store ({_WHERE})"
                )
            return
        probe = root / f".write-probe.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise ValueError(
                f"the run store {root} is not writable ({error.strerror}); choose another store ({_WHERE})"
            ) from None

    # ------------------------------------------------------------------------------------ runs
    def run_dir(self, run_id: str) -> Path:
        if not _is_id(run_id):
            raise KeyError(run_id)
        return self.root / "runs" / run_id

    def load_run(self, run_id: str, verify_weights: bool = False) -> RunRecord | None:
        """The stored run (weights read on demand, checked then), or None when absent or not valid.

        `verify_weights=True` also reads and checks the weights now, and keeps them in memory."""
        try:
            folder = self.run_dir(run_id)
            record_json, weights_sha = _open_envelope(folder / "run.json", "weights_sha256")
            weights_path = folder / "model.safetensors"
            if not weights_path.is_file():
                return None
            record = RunRecord.from_json(record_json, weights=StoredWeights(str(weights_path), weights_sha))
            if record.run_id != run_id:
                return None  # a folder copied under another id
            if verify_weights:
                # safetensors' own checks of the file, in numpy: a cache hit imports no torch
                from safetensors import SafetensorError
                from safetensors.numpy import load as np_load

                blob = weights_path.read_bytes()
                if sha256(blob) != weights_sha:
                    return None
                try:
                    state = np_load(blob)
                except SafetensorError:  # (numpy cannot hold every dtype either: a TypeError, caught below)
                    return None
                expected = {layer.name: layer.shape for layer in record.layers}
                if any(tuple(state[name].shape) != shape for name, shape in expected.items()):
                    return None
                record = record.with_weights(BlobWeights(blob))
            return record
        except _READ_ERRORS:
            return None

    def save_run(self, record: RunRecord) -> RunRecord:
        """Publish a run atomically; a valid entry already there wins, a corrupt one is replaced.
        Returns the stored record (weights read from the store from then on)."""
        from safetensors.torch import save as st_save

        blob = st_save(record.state_dict())
        blob_sha = sha256(blob)
        final = self.run_dir(record.run_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(final)
        held: int | None = None
        try:
            tmp.mkdir()
            held = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            hold_temporary(held)  # until it is renamed: gc leaves it alone whatever its age
            (tmp / "model.safetensors").write_bytes(blob)
            (tmp / "run.json").write_bytes(_envelope(record.to_json(), blob_sha, "weights_sha256"))
            for _attempt in range(3):
                try:
                    os.rename(tmp, final)
                    break
                except OSError:
                    if self.load_run(record.run_id, verify_weights=True) is not None:
                        break  # another writer published the same run first
                    self._discard(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if held is not None:
                os.close(held)
        stored = self.load_run(record.run_id)
        return stored if stored is not None else record

    def _discard(self, path: Path) -> int | None:
        """Move an entry out of the way (rename first, so readers never see it half-deleted), then
        delete it. Returns the bytes it held, or None when this call did not move it (already gone:
        another gc or delete got there first, or it cannot be moved)."""
        trash = temporary_name(path.with_name(path.name + ".trash"))  # carries our pid: see writer_alive
        try:
            os.rename(path, trash)
        except OSError:
            return None
        freed = _size(trash)
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)
        return freed

    def _run_folders(self) -> list[Path]:
        runs_dir = self.root / "runs"
        if not runs_dir.is_dir():
            return []
        return [p for p in runs_dir.iterdir() if _is_id(p.name) and p.is_dir()]

    def run_ids(self) -> list[str]:
        """Ids of the run folders, newest first (not verified: `load_run` verifies)."""
        folders = self._run_folders()
        folders.sort(key=lambda p: (_mtime(p / "run.json"), p.name), reverse=True)
        return [p.name for p in folders]

    def list_runs(self) -> list[RunRecord]:
        """Every valid stored run, newest first. Reads no weights."""
        runs = (self.load_run(run_id) for run_id in self.run_ids())
        return [run for run in runs if run is not None]

    def resolve_run(self, prefix: str) -> RunRecord:
        """The run whose id is `prefix` or starts with it; ValueError (one line) otherwise."""
        run = self.load_run(prefix) if _is_id(prefix) else None
        if run is None:
            matches = [r for r in self.list_runs() if prefix and r.run_id.startswith(prefix)]
            if len(matches) != 1:
                what = "matches several runs" if matches else "is not a stored run"
                raise ValueError(f"run id {prefix!r} {what} in {self.root}; list them with `python -m core runs`")
            run = matches[0]
        return run


class _CompressionEntries(_RunEntries):
    """The store's compressions of its runs: a record and its file each, the file checked by the reader
    once for each content in a process."""

    # ---------------------------------------------------------------------------- compressions
    def compression_paths(self, run_id: str, key: str) -> tuple[Path, Path]:
        if not _is_id(key):
            raise KeyError(key)
        folder = self.root / "compress" / self.run_dir(run_id).name
        return folder / f"{key}.json", folder / f"{key}.safetensors"

    def load_compression(self, run_id: str, cfg: CompressConfig) -> CompressionRecord | None:
        return self._load_compression(run_id, cfg.key())

    def _load_compression(self, run_id: str, key: str) -> CompressionRecord | None:
        """The verified compression record (with its file path), or None when absent or not valid."""
        found = self._verified_compression(run_id, key)
        return None if found is None else found[0]

    def load_compression_payload(
        self, run_id: str, key: str
    ) -> tuple[CompressionRecord, dict[str, np.ndarray], dict] | None:
        """(record, the file's tensors as numpy arrays, its metadata) of a stored compression, verified
        as `load_compression` does (and not checked again when this process checked these bytes
        already), or None when absent or not valid: what a page that draws the file's layers reads."""
        from .filereader import verified_arrays

        found = self._verified_compression(run_id, key)
        if found is None:
            return None
        record, blob, meta = found
        return record, verified_arrays(blob), meta

    def _verified_compression(self, run_id: str, key: str) -> tuple[CompressionRecord, bytes, dict] | None:
        """(record, file bytes, checked metadata) of a compression entry that passes every check, or None."""
        try:
            json_path, file_path = self.compression_paths(run_id, key)
            record_json, file_sha = _open_envelope(json_path, "file_sha256")
            blob = file_path.read_bytes()
            if sha256(blob) != file_sha:
                return None
            transient = json_path.with_suffix(TRANSIENT_SUFFIX).exists()
            record = CompressionRecord.from_json(record_json, file_path=str(file_path), transient=transient)
            if record.run_id != run_id or record.key != key or record.file_bytes != len(blob):
                return None  # copied under another run or another setting's key
            meta = _VERIFIED_FILES.meta(blob, file_sha, str(file_path))
            if meta.get("run_id") != run_id or meta.get("compress_config") != record.compress_config.to_json():
                return None
            return record, blob, meta
        except _READ_ERRORS:  # NotACompressedModel, the reader's refusal, is a ValueError
            return None

    def save_compression(self, record: CompressionRecord, blob: bytes, transient: bool = False) -> CompressionRecord:
        """Publish the file, then the JSON that vouches for it: a reader that finds the JSON finds
        the file it describes (or a newer identical one from a concurrent writer). `transient`: the
        setting was only passed over (a slider on the Compress page): marked so before the JSON
        lands, so it never shows on the Frontier unless `settle_compression` keeps it."""
        json_path, file_path = self.compression_paths(record.run_id, record.key)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(file_path, blob)
        if transient and not json_path.exists():  # an entry already there stays as it is
            write_atomic(json_path.with_suffix(TRANSIENT_SUFFIX), b"")
        write_atomic(json_path, _envelope(record.to_json(), sha256(blob), "file_sha256"))
        return record.with_file(str(file_path), transient=json_path.with_suffix(TRANSIENT_SUFFIX).exists())

    def settle_compression(self, run_id: str, key: str) -> None:
        """A user stayed on this setting (or a sweep or the CLI asked for it): it goes on the Frontier."""
        json_path, _ = self.compression_paths(run_id, key)
        json_path.with_suffix(TRANSIENT_SUFFIX).unlink(missing_ok=True)

    def _compression_keys(self, run_id: str | None) -> Iterator[tuple[str, str]]:
        base = self.root / "compress"
        if not base.is_dir():
            return
        folders = [base / run_id] if run_id else sorted(p for p in base.iterdir() if _is_id(p.name))
        for folder in folders:
            if folder.is_dir():
                for json_path in sorted(folder.glob("*.json")):
                    if _is_id(json_path.stem):
                        yield folder.name, json_path.stem

    def compression_entries(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """(run_id, key, stamp) of every compression entry of a stored run, unverified: the stamp
        (sizes and modification times of its files, and whether it is transient) changes whenever
        the entry does, so a reader can cache each entry's verified record by it."""
        live_runs = set(self.run_ids())
        entries: list[tuple[str, str, tuple[int, ...]]] = []
        for run_id, key in self._compression_keys(None):
            if run_id in live_runs:
                json_path, file_path = self.compression_paths(run_id, key)
                stamp = (*_stat(json_path), *_stat(file_path), int(json_path.with_suffix(TRANSIENT_SUFFIX).exists()))
                entries.append((run_id, key, stamp))
        return entries

    def load_compression_entry(self, run_id: str, key: str) -> CompressionRecord | None:
        """The verified record of one entry of `compression_entries`, or None."""
        return self._load_compression(run_id, key)

    def list_compressions(self, run_id: str | None = None) -> list[CompressionRecord]:
        """Every valid stored compression (of one run, or of all) whose run is still stored."""
        live_runs = set(self.run_ids())
        records = (self._load_compression(r, k) for r, k in self._compression_keys(run_id) if r in live_runs)
        return [record for record in records if record is not None]


class RunStore(_CompressionEntries):
    """The run store: content-addressed, every entry verified before it is served, published atomically,
    no pickle; its runs (`_RunEntries`), their compressions (`_CompressionEntries`) and, here, deleting and
    cleaning up (`_Upkeep`)."""

    # ---------------------------------------------------------------------------- housekeeping
    def delete_run(self, run_id: str) -> int:
        """Remove a run and all its compressions; returns the bytes freed (0 when absent)."""
        freed = 0
        for path in (self.root / "compress" / self.run_dir(run_id).name, self.run_dir(run_id)):
            freed += self._discard(path) or 0
        return freed

    def delete_compression(self, run_id: str, key: str) -> int:
        json_path, file_path = self.compression_paths(run_id, key)
        freed = 0
        for path in (json_path, file_path, json_path.with_suffix(TRANSIENT_SUFFIX)):  # the JSON first
            if path.exists():
                freed += _size(path)
                path.unlink(missing_ok=True)
        return freed

    def size_bytes(self) -> int:
        return _size(self.root) if self.root.is_dir() else 0

    def clean_temporaries(self, older_than_s: float = STALE_TEMPORARY_S) -> GcReport:
        """Remove what killed writers left (`_Upkeep.clean_temporaries`); run at every process's first job."""
        return _Upkeep(self).clean_temporaries(older_than_s)

    def gc(self, older_than_s: float = STALE_TEMPORARY_S) -> GcReport:
        """Remove what no reader will ever serve (`_Upkeep.gc`)."""
        return _Upkeep(self).gc(older_than_s)


class _Upkeep:
    """The store's housekeeping: what killed writers left and what fails its checks, found and removed
    (each entry moved aside by `RunStore._discard` before it is deleted, so no reader sees it half-gone)."""

    def __init__(self, store: RunStore):
        self.store = store

    def clean_temporaries(self, older_than_s: float = STALE_TEMPORARY_S) -> GcReport:
        """Remove what killed writers left (hidden `.tmp` files and folders older than
        `older_than_s` whose writer is gone: `writer_alive`): cheap, reads no entry; run at every
        process's first job. A temporary being written is never removed, whatever `older_than_s`."""
        removed: list[str] = []
        freed = 0
        now = time.time()
        parents = [self.store.root, self.store.root / "runs", self.store.root / "compress"]
        compress = self.store.root / "compress"
        if compress.is_dir():
            parents += [p for p in compress.iterdir() if p.is_dir() and _is_id(p.name)]
        for parent in parents:
            if not parent.is_dir():
                continue
            for path in list(parent.iterdir()):
                if is_temporary(path) and now - _mtime(path) / 1e9 > older_than_s and not writer_alive(path):
                    gone = self.store._discard(path)
                    if gone is not None:  # counted by whoever removed it
                        freed += gone
                        removed.append(str(path.relative_to(self.store.root)))
        return GcReport(tuple(removed), freed)

    def gc(self, older_than_s: float = STALE_TEMPORARY_S) -> GcReport:
        """Remove what no reader will ever serve: temporaries left by killed writers (older than
        `older_than_s`), entries that fail verification (corrupt, edited, or of an old format or
        CODE_VERSION), and compressions whose run is gone."""
        temporaries = self.clean_temporaries(older_than_s)
        removed: list[str] = list(temporaries.removed)
        freed = temporaries.bytes_freed

        def drop(path: Path) -> None:
            nonlocal freed
            gone = self.store._discard(path)
            if gone is not None:  # another gc at the same moment counts what it removed itself
                freed += gone
                removed.append(str(path.relative_to(self.store.root)))

        live_runs = set()
        for folder in self.store._run_folders():
            if self.store.load_run(folder.name, verify_weights=True) is None:
                drop(folder)
            else:
                live_runs.add(folder.name)
        base = self.store.root / "compress"
        for folder in list(base.iterdir()) if base.is_dir() else []:
            if not _is_id(folder.name) or not folder.is_dir():
                continue
            if folder.name not in live_runs:
                drop(folder)
                continue
            for path in list(folder.iterdir()):
                if path.name.startswith(".") or not _is_id(path.stem):
                    continue
                if path.suffix == ".json" and self.store._load_compression(folder.name, path.stem) is None:
                    drop(path)
                    drop_file = path.with_suffix(".safetensors")
                    if drop_file.exists():
                        drop(drop_file)
                elif (
                    path.suffix in (".safetensors", TRANSIENT_SUFFIX)
                    and not path.with_suffix(".json").exists()
                    and time.time() - _mtime(path) / 1e9 > max(older_than_s, PUBLISH_GAP_S)  # its JSON comes next
                ):
                    drop(path)
        return GcReport(tuple(removed), freed)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _stat(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError:
        return (0, 0)
    return (info.st_size, info.st_mtime_ns)


def _size(path: Path) -> int:
    try:
        if path.is_file() or path.is_symlink():
            return path.lstat().st_size
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0


def stat_signature(root: Path) -> tuple[Any, ...]:
    """A cheap fingerprint of the store's contents (names and mtimes of the entry files), for caches."""
    entries: list[tuple[str, int]] = []
    for sub in ("runs", "compress"):
        base = root / sub
        if base.is_dir():
            for folder in base.iterdir():
                entries.append((f"{sub}/{folder.name}", _mtime(folder)))
    return tuple(sorted(entries))
