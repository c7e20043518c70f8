"""What the pages share: the run store, cached plain views over it, labels, and error display.

Caching: `st.cache_data` holds plain results (dicts, lists, DataFrames) read from the disk store;
every key carries the store root and a modification time, so a new run or compression shows
at once and a test's tmp store never sees another's entries. `st.cache_resource` holds only the
loaded runs, read-only (compression builds its own model copy from them).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import streamlit as st
import torch

from core.charts import reg_label
from core.config import CompressConfig
from core.data import DatasetUnavailable
from core.export import from_bytes, layers_from_payload
from core.pq import to_groups, to_subvectors
from core.store import RunStore
from core.train import TrainingDiverged, TrainResult

# lam control: log-spaced, 0 allowed (0 turns the regularizer off).
LAM_OPTIONS = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
D_OPTIONS = (1, 2, 4, 8, 16, 32)
K_OPTIONS = tuple(2**i for i in range(1, 17))  # 2 .. 65,536
MAX_SCATTER_POINTS = 4000
MAX_HIST_WEIGHTS = 50_000


def store() -> RunStore:
    """The run store (root from COMPRESSION_LAB_CACHE, else <repo>/cache), read fresh each call."""
    return RunStore()


def store_root() -> str:
    return str(store().root)


def fmt_lam(value: float) -> str:
    return f"{value:g}"


def fmt_k(value: int) -> str:
    return f"{value:,}"


# ------------------------------------------------------------------------------------------ runs


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def run_label(view: dict) -> str:
    cfg = view["config"]
    hidden = "-".join(str(h) for h in cfg["hidden"]) if cfg["model"] == "mlp" else ""
    model = f"{cfg['model']} {hidden}".strip()
    return (
        f"{cfg['dataset']} · {model} · {reg_label(cfg['reg'], cfg['lam'])} · {cfg['epochs']} ep · "
        f"seed {cfg['seed']} · acc {view['test_accuracy']:.1%} · {view['run_id'][:6]}"
    )


def _view(result: TrainResult) -> dict:
    """A run as plain data: everything the pages draw, no tensors."""
    view = {
        "run_id": result.run_id,
        "config": asdict(result.config),
        "history": result.history,
        "histograms": result.histograms,
        "test_accuracy": result.test_accuracy,
        "seconds": result.seconds,
        "device": result.device,
        "fc_shapes": [(layer["layer"], tuple(layer["shape"])) for layer in result.histograms[0]],
    }
    view["config"]["hidden"] = list(view["config"]["hidden"])
    view["label"] = run_label(view)
    return view


@st.cache_data(show_spinner=False, max_entries=256)
def _run_view(root: str, run_id: str, mtime: int) -> dict | None:
    result = RunStore(root).load_run(run_id)
    return _view(result) if result is not None else None


def run_view(run_id: str) -> dict | None:
    """The stored run as plain data, or None when it is not in the store."""
    root = store_root()
    mtime = _mtime(Path(root) / "runs" / run_id / "run.json")
    return _run_view(root, run_id, mtime) if mtime else None


def runs() -> list[dict]:
    """Every valid stored run as plain data, newest first."""
    runs_dir = Path(store_root()) / "runs"
    if not runs_dir.is_dir():
        return []
    folders = [p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    folders.sort(key=lambda p: (_mtime(p / "run.json"), p.name), reverse=True)
    views = [run_view(p.name) for p in folders]
    return [v for v in views if v is not None]


@st.cache_resource(show_spinner=False, max_entries=8)
def _loaded_run(root: str, run_id: str, mtime: int) -> TrainResult | None:
    """Read-only: never modified (compression builds a fresh model from it)."""
    return RunStore(root).load_run(run_id)


def loaded_run(run_id: str) -> TrainResult | None:
    root = store_root()
    return _loaded_run(root, run_id, _mtime(Path(root) / "runs" / run_id / "run.json"))


# ---------------------------------------------------------------------------------- compressions


class _NotStored(LookupError):
    """Raised inside a cached loader so that a miss is never cached."""


@st.cache_data(show_spinner=False, max_entries=512)
def _compression(root: str, run_id: str, ccfg: dict) -> dict:
    found = RunStore(root).load_compression(run_id, CompressConfig(**ccfg))
    if found is None:
        raise _NotStored(run_id)
    result, path = found
    return {
        "row": result.row(),
        "size": result.size.as_dict(),
        "layer_mse": result.layer_mse,
        "file_path": str(path),
        "label": result.compress_config.label(),
    }


def compression(run_id: str, ccfg: CompressConfig, on_step=None) -> dict:
    """The compression of a stored run as plain data, from the disk store, computed on a miss.

    Raises ValueError when the setting does not fit the run, DatasetUnavailable when the
    run's dataset (needed for the accuracy) cannot be loaded."""
    key = asdict(ccfg.canonical())
    try:
        return _compression(store_root(), run_id, key)
    except _NotStored:
        pass
    run = loaded_run(run_id)
    if run is None:
        raise ValueError(f"run {run_id} is no longer in the store; pick another one or train it again")
    store().get_or_compress(run, ccfg, on_step=on_step)
    return _compression(store_root(), run_id, key)


def is_compressed(run_id: str, ccfg: CompressConfig) -> bool:
    try:
        _compression(store_root(), run_id, asdict(ccfg.canonical()))
        return True
    except _NotStored:
        return False


@st.cache_data(show_spinner=False, max_entries=128)
def compression_plot_data(file_path: str, run_id: str, root: str, layer_index: int) -> dict:
    """What the Compress page draws for one FC layer, read from the exported file itself:
    the layer's float weights (d = 1) or its 2-D subvectors (d = 2), and the centroids."""
    tensors, meta = from_bytes(Path(file_path).read_bytes(), source=file_path)
    layers = layers_from_payload(tensors, meta)
    if not layers:
        return {"kind": "none"}
    layer = layers[min(layer_index, len(layers) - 1)]
    run = RunStore(root).load_run(run_id)
    weight = run.state_dict[layer.name].float()  # (out, in), the trained float weights
    generator = torch.Generator().manual_seed(0)
    data = {
        "layer": layer.name,
        "shape": list(layer.shape),
        "layout": layer.layout,
        "subvector_size": layer.subvector_size,
        "n_centroids": layer.n_centroids,
    }
    if layer.subvector_size == 1:
        values = weight.flatten()
        if len(values) > MAX_HIST_WEIGHTS:
            values = values[torch.randperm(len(values), generator=generator)[:MAX_HIST_WEIGHTS]]
        data.update(kind="hist", weights=values.tolist(), centroids=layer.codebooks.flatten().unique().tolist())
    elif layer.subvector_size == 2:
        grouped = to_groups(to_subvectors(weight, 2), "per-chunk" if layer.layout == "per-chunk" else "shared")
        points = grouped[0]  # (N, 2): all subvectors (shared) or those of chunk position 0 (per-chunk)
        if len(points) > MAX_SCATTER_POINTS:
            points = points[torch.randperm(len(points), generator=generator)[:MAX_SCATTER_POINTS]]
        data.update(
            kind="scatter",
            points=points.tolist(),
            centroids=layer.codebooks[0].tolist(),
            group_note="chunk position 0 of the layer" if layer.layout == "per-chunk" else "the whole layer",
        )
    else:
        data.update(kind="other")
    return data


@st.cache_data(show_spinner=False, max_entries=32)
def _compressions_table(root: str, signature: tuple) -> pd.DataFrame:
    rows = [result.row() for result in RunStore(root).list_compressions()]
    return pd.DataFrame(rows)


def compressions_table() -> pd.DataFrame:
    """Every stored (run, compression) as one row of CompressResult.row()."""
    root = store_root()
    base = Path(root) / "compress"
    signature = tuple(sorted((p.name, _mtime(p)) for p in base.iterdir())) if base.is_dir() else ()
    return _compressions_table(root, signature)


def file_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


# -------------------------------------------------------------------------------------- widgets


def run_select_ui(views: list[dict], label: str = "Trained run", key: str = "run") -> dict:
    """Pick one stored run; its id lives in the URL (?run=...) so a link reproduces the view."""
    ids = [v["run_id"] for v in views]
    labels = {v["run_id"]: v["label"] for v in views}
    wanted = st.query_params.get("run")
    if key not in st.session_state and wanted in ids:
        st.session_state[key] = wanted
    elif key not in st.session_state and wanted:
        st.warning(
            f"The link asks for run {wanted!r}, which is not in this run store ({store_root()}); "
            f"showing the newest run instead. Pick another below, or train it on the Train page."
        )
    if st.session_state.get(key) not in ids:
        st.session_state.pop(key, None)
    run_id = st.selectbox(label, ids, format_func=labels.get, key=key)
    st.query_params["run"] = run_id
    return next(v for v in views if v["run_id"] == run_id)


def runs_multiselect_ui(
    views: list[dict], label: str, default_count: int = 2, max_selections: int = 4, key: str = "runs"
) -> list[dict]:
    """Pick several stored runs; their ids live in the URL (?runs=id1,id2)."""
    ids = [v["run_id"] for v in views]
    labels = {v["run_id"]: v["label"] for v in views}
    if key not in st.session_state:
        asked = [r for r in st.query_params.get("runs", "").split(",") if r]
        wanted = [r for r in asked if r in ids]
        if len(wanted) < len(asked):
            missing = ", ".join(r for r in asked if r not in ids)
            st.warning(
                f"The link asks for runs that are not in this run store: {missing}. Showing the others"
                f"{'' if wanted else ' (the newest runs)'}."
            )
        st.session_state[key] = wanted[:max_selections] or ids[:default_count]
    st.session_state[key] = [r for r in st.session_state[key] if r in ids]
    chosen = st.multiselect(label, ids, format_func=labels.get, max_selections=max_selections, key=key)
    st.query_params["runs"] = ",".join(chosen)
    return [next(v for v in views if v["run_id"] == r) for r in chosen]


def show_error(error: Exception) -> None:
    """One clear message inside the page for the errors a user can cause."""
    if isinstance(error, DatasetUnavailable):
        st.error(
            f"**Dataset unavailable.** {error}\n\nPick another dataset (digits and mnist-5k are "
            f"always available offline)."
        )
    elif isinstance(error, TrainingDiverged):
        st.error(f"**Training diverged.** {error}")
    else:
        st.error(f"**This setting does not work:** {error}")


def config_json(config: dict) -> str:
    return json.dumps(config, indent=1, sort_keys=True)
