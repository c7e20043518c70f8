"""What the pages share: the run store, cached reads of its records, shared widgets, error display.

Caching: `st.cache_data` holds records read from the disk store; every key carries the store
root and a fingerprint of its entries (names and modification times), so a new run or
compression shows at once, a deleted one disappears, and a test's tmp store never sees another's
entries. Records are plain frozen dataclasses; a run's weights are read (and checked) only when
asked, never held by a cache.
"""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st
import torch

from core.config import CompressConfig
from core.data import DatasetUnavailable
from core.filemodel import as_tensors, layers_from_payload
from core.pq import to_groups, to_subvectors
from core.records import CompressionRecord, CorruptEntry, RunRecord
from core.store import RunStore, stat_signature
from core.train import TrainingDiverged

# lam control: log-spaced, 0 allowed (0 turns the regularizer off).
LAM_OPTIONS = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
D_OPTIONS = (1, 2, 4, 8, 16, 32)
K_OPTIONS = tuple(2**i for i in range(1, 17))  # 2 .. 65,536
MAX_SCATTER_POINTS = 4000
MAX_HIST_WEIGHTS = 50_000
# a setting shown this long on the Compress page is one the user settled on: it goes on the Frontier
SETTLE_S = 2.0


def store() -> RunStore:
    """The run store (root from COMPRESSION_LAB_CACHE, else <repo>/cache), read fresh each call."""
    return RunStore()


def _fingerprint() -> tuple[str, tuple]:
    root = store().root
    return str(root), stat_signature(root)


def fmt_lam(value: float) -> str:
    return f"{value:g}"


def fmt_k(value: int) -> str:
    return f"{value:,}"


# ------------------------------------------------------------------------------------------ runs


@st.cache_data(show_spinner=False, max_entries=64)
def _runs(root: str, signature: tuple) -> list[RunRecord]:
    return RunStore(root).list_runs()


def runs() -> list[RunRecord]:
    """Every valid stored run, newest first (no weights read)."""
    return _runs(*_fingerprint())


def run_record(run_id: str) -> RunRecord | None:
    """The stored run, or None when it is not in the store (or not valid)."""
    return next((run for run in runs() if run.run_id == run_id), None)


# ---------------------------------------------------------------------------------- compressions


@st.cache_data(show_spinner=False, max_entries=100_000)
def _compression_entry(root: str, run_id: str, key: str, stamp: tuple) -> CompressionRecord | None:
    # one entry's verification (checksum, file read through the reader's checks), kept until the
    # entry's files change: a point landing re-verifies that point, not the whole store
    return RunStore(root).load_compression_entry(run_id, key)


def compressions() -> list[CompressionRecord]:
    """Every valid stored compression (each verified by the store, once for each version of it)."""
    root = str(store().root)
    records = (_compression_entry(root, *entry) for entry in RunStore(root).compression_entries())
    return [record for record in records if record is not None]


def stored_compression(run_id: str, cfg: CompressConfig) -> CompressionRecord | None:
    key = cfg.key()
    return next((c for c in compressions() if c.run_id == run_id and c.key == key), None)


@st.cache_data(show_spinner=False, max_entries=128)
def compression_plot_data(file_path: str, file_bytes: int, run_id: str, root: str, layer_name: str) -> dict:
    """What the Compress page draws for one FC layer, read from the exported file itself:
    the layer's float weights (d = 1) or its 2-D subvectors (d = 2), and the centroids. The file is
    the store's verified entry (`<key>.safetensors`), not checked again when the store checked it."""
    found = RunStore(root).load_compression_payload(run_id, Path(file_path).stem)
    if found is None:
        return {"kind": "none"}
    _, arrays, meta = found
    layers = {layer.name: layer for layer in layers_from_payload(as_tensors(arrays), meta)}
    if layer_name not in layers:
        return {"kind": "none"}
    layer = layers[layer_name]
    run = RunStore(root).load_run(run_id)
    if run is None:
        return {"kind": "none"}
    weight = run.state_dict()[layer.name].float()  # (out, in), the trained float weights
    pruned = None
    if layer.mask is not None:  # pruning: the method coded the survivors, as one row; the rest are zeros
        pruned = weight[~layer.mask]
        weight = weight[layer.mask].reshape(1, -1)  # (1, n_kept)
        if len(pruned) > MAX_HIST_WEIGHTS:
            pruned = pruned[torch.randperm(len(pruned), generator=torch.Generator().manual_seed(1))[:MAX_HIST_WEIGHTS]]
    generator = torch.Generator().manual_seed(0)
    data: dict = {
        "layer": layer.name,
        "layout": layer.layout,
        "subvector_size": layer.subvector_size,
        "n_centroids": layer.n_centroids,
    }
    if layer.subvector_size == 1:
        values = weight.flatten()
        if len(values) > MAX_HIST_WEIGHTS:
            values = values[torch.randperm(len(values), generator=generator)[:MAX_HIST_WEIGHTS]]
        data.update(kind="hist", weights=values.tolist(), centroids=layer.codebooks.flatten().unique().tolist())
        data["pruned"] = None if pruned is None else pruned.tolist()
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


def file_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


# -------------------------------------------------------------------------------------- widgets


def run_select_ui(records: list[RunRecord], label: str = "Trained run", key: str = "run") -> RunRecord:
    """Pick one stored run; its id lives in the URL (?run=...) so a link reproduces the view."""
    ids = [r.run_id for r in records]
    labels = {r.run_id: r.label() for r in records}
    wanted = st.query_params.get("run")
    if key not in st.session_state and wanted in ids:
        st.session_state[key] = wanted
    elif key not in st.session_state and wanted:
        st.warning(
            f"The link asks for run {plain(repr(wanted))}, which is not in this run store ({plain(store().root)}); "
            f"showing the newest run instead. Pick another below, or train it on the Train page."
        )
    if st.session_state.get(key) not in ids:
        st.session_state.pop(key, None)
    run_id: str = st.selectbox(label, ids, format_func=lambda i: labels[i], key=key)
    st.query_params["run"] = run_id
    return next(r for r in records if r.run_id == run_id)


def runs_multiselect_ui(
    records: list[RunRecord], label: str, default_count: int = 2, max_selections: int = 4, key: str = "runs"
) -> list[RunRecord]:
    """Pick several stored runs; their ids live in the URL (?runs=id1,id2)."""
    ids = [r.run_id for r in records]
    labels = {r.run_id: r.label() for r in records}
    if key not in st.session_state:
        asked = list(dict.fromkeys(r for r in st.query_params.get("runs", "").split(",") if r))
        wanted = [r for r in asked if r in ids]
        if len(wanted) < len(asked):
            missing = plain(", ".join(repr(r) for r in asked if r not in ids))
            st.warning(
                f"The link asks for runs that are not in this run store: {missing}. Showing the others"
                f"{'' if wanted else ' (the newest runs)'}."
            )
        st.session_state[key] = wanted[:max_selections] or ids[:default_count]
    st.session_state[key] = [r for r in st.session_state[key] if r in ids]
    chosen = st.multiselect(label, ids, format_func=lambda i: labels[i], max_selections=max_selections, key=key)
    st.query_params["runs"] = ",".join(chosen)
    return [next(r for r in records if r.run_id == run_id) for run_id in chosen]


_MARKDOWN = set("\\`*_{}[]()<>!|~$:&#@")  # what can open emphasis, a link, HTML, math, a short code, a mail
# GitHub-flavoured Markdown (remark-gfm, which Streamlit uses) links bare URLs, www. names and e-mail
# addresses in the text *after* backslash escapes are resolved, so escaping alone cannot stop it: an
# invisible zero-width space after every ':' (https:, mailto:, :short_code:), before every '@' and
# between 'www' and its '.' breaks each pattern, and the text still reads the same.
_ZERO_WIDTH = "\u200b"
_AUTOLINK = re.compile(r"(?i)(?<=www)(?=\.)|(?<=\\:)|(?=\\@)")
_LIST_START = re.compile(r"^(\s*\d*)([-+.)])")  # '- x', '+ x', '1. x', '1) x' open a list


def plain(text: object) -> str:
    """`text` from outside (a URL, a file, a job, an error) made inert for Streamlit's Markdown: the
    one way every page shows such text. Each character that can open emphasis, a link, an image,
    HTML, math or an emoji short code is backslash-escaped (CommonMark allows it for any punctuation),
    and so is a list marker at the start; bare URLs, www. names and e-mail addresses are broken for the
    auto-linker; line breaks become spaces. The text shows as the characters it is, and nothing is
    fetched or clickable. (Chart text has its own escape: `core.charts.chart_text`.)"""
    escaped = "".join("\\" + c if c in _MARKDOWN else c for c in " ".join(str(text).splitlines()))
    escaped = _LIST_START.sub(r"\1\\\2", escaped)
    return _AUTOLINK.sub(_ZERO_WIDTH, escaped)


def show_error(error: Exception) -> None:
    """One clear message inside the page for the errors a user can cause. The error's own text may
    hold what a user typed or linked, so it is shown as plain text, never as markdown."""
    if isinstance(error, DatasetUnavailable):
        title, hint = "Dataset unavailable.", "Pick another dataset (digits and mnist-5k are always available offline)."
    elif isinstance(error, TrainingDiverged):
        title, hint = "Training diverged.", ""
    elif isinstance(error, CorruptEntry):
        title, hint = "A stored entry failed its check.", ""
    else:
        title, hint = "This setting does not work:", ""
    st.error(f"**{title}** {plain(error)} {hint}".strip())


def kept(key: str) -> bool:
    """Keep a widget's value across script runs where the widget is not drawn (a page that stops
    early on an error, a control that depends on another): Streamlit forgets the state of a
    widget that was not drawn, and its control and the chart it drives could then disagree.
    Call before creating the widget, with `key=key`; pass the widget's default only when this
    returns False (its value then comes from the kept state)."""
    shadow = f"_kept_{key}"
    if key not in st.session_state and shadow in st.session_state:
        st.session_state[key] = st.session_state[shadow]
    return key in st.session_state


def keep(key: str, value: object) -> None:
    st.session_state[f"_kept_{key}"] = value


# ------------------------------------------------------------------------------------ numbers
# One format for each kind of number, on every page.


def fmt_pct(fraction: float) -> str:
    """An accuracy: '93.10%'."""
    return f"{100 * fraction:.2f}%"


def fmt_points(drop: float) -> str:
    """An accuracy drop (a fraction) in percentage points: '1.23 points' (negative: a gain)."""
    return f"{100 * drop:.2f} points"


def fmt_bytes(n: int) -> str:
    """A size that fits a metric card: '812 B', '61.6 kB', '3.2 MB'."""
    for limit, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= limit:
            return f"{n / limit:.1f} {unit}"
    return f"{n} B"


def url_choice(key: str, param: str, options: list, default: object, parse=str) -> None:
    """Seed a widget's state (`key`) from the URL parameter `param` the first time it is drawn (or
    after its state was forgotten): a link reproduces the view. A value that is not an option gets
    a notice and the default. Call before the widget; write the chosen value back with `st.query_params`."""
    if kept(key) and st.session_state[key] in options:
        return
    raw = st.query_params.get(param)
    value = default
    if raw is not None:
        try:
            parsed = parse(raw)
        except (TypeError, ValueError):
            parsed = None
        if parsed in options:
            value = parsed
        else:
            st.warning(f"The link's {plain(param)}={plain(raw[:60])} cannot be used here; showing {plain(default)}.")
    st.session_state[key] = value
