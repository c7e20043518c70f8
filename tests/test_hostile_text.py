"""Text from outside is shown as text on every page: a hostile value in every URL parameter, in the
stored fields a page shows (a run's device, its layer names, a compression's layer_mse keys) and in
every field of a job file (kind, label, text, message, host, metric names) never becomes a link, an
image or chart HTML.

What the browser would make of a page is judged from what AppTest exposes: every string of every
element (Markdown bodies, alerts, labels, captions, radio options, progress texts) and the JSON of
every Plotly figure. Streamlit renders Markdown with remark-gfm, whose auto-linker runs on the text
after backslash escapes are resolved (its two patterns, copied from Streamlit's bundle, are
`URL_LINK` and `MAIL_LINK` below); Plotly draws `<a href>` in any chart text as a real link.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from core.config import CompressConfig, TrainConfig
from core.jobs import JobState, JobStatus
from core.pipeline import get_or_compress, get_or_train
from core.records import LayerHistogram, LayerShape
from core.store import RunStore
from tests.marks import fast_cases

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 60
HOSTILE = "https://evil.example/p www.evil.example u@evil.example <a href='x'>a</a> <img src=x>"
TINY = dict(dataset="digits", model="mlp", hidden=(32, 16), epochs=2, batch_size=64, seed=0)
PLAIN = TrainConfig(**TINY)
OTHER = TrainConfig(**{**TINY, "seed": 1})
FOLLOWED = TrainConfig(**TINY, reg="binary", lam=0.05)  # not stored: a live (hostile) job trains it
TRAIN_QUERY = {"dataset": "digits", "hidden": "32,16", "epochs": "2", "reg": "none", "lam": "0"}
FOLLOWED_QUERY = {**TRAIN_QUERY, "reg": "binary", "lam": "0.05"}

# remark-gfm's auto-linker (mdast-util-gfm-autolink-literal, as in Streamlit's StreamlitMarkdown bundle)
URL_LINK = re.compile(r"(https?://|www(?=\.))([-.\w]+)([^ \t\r\n]*)", re.IGNORECASE | re.ASCII)
MAIL_LINK = re.compile(r"([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)", re.ASCII)
HTML_TAG = re.compile(r"(?<!\\)<\s*/?\s*(a|img)\b", re.IGNORECASE)  # a tag Markdown or Plotly would draw
MD_LINK = re.compile(r"(?<!\\)\]\s*\(")  # [text](url), ![alt](src)
UNESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")  # CommonMark: a backslash before ASCII punctuation

# Proto fields that hold what a user typed into a widget (shown in an input box, never rendered) or
# machine data (ids, the URL's own query string): not text the page draws.
NOT_DRAWN = {"value", "default", "raw_value", "id", "form_id", "query_string", "page_script_hash", "data"}

PAGES: dict[str, tuple[str, ...]] = {
    "frontier": ("point", "f_reg", "f_method", "f_epochs", "f_seed", "dataset", "model", "x", "dominated", "min_acc"),
    "compare": ("runs",),
    "train": (
        "hidden",
        "dataset",
        "model",
        "reg",
        "lam",
        "warmup",
        "warmup_start",
        "epochs",
        "lr",
        "seed",
        "reg_levels",
        "reg_d",
        "reg_k",
        "layer",
        "epoch",
    ),
    "learn": ("toy_lam", "toy_k", "ex_d", "ex_k"),
    "compress": ("run", "method", "d", "k", "layer", "ft", "layout", "bits", "weighting", "targets"),
    "jobs": (),
    "store": (),
}
BASE_QUERY = {
    "frontier": {"min_acc": "0"},
    "train": TRAIN_QUERY,
    "compress": {"run": PLAIN.run_id(), "method": "kmeans", "k": "4"},
    "compare": {"runs": f"{PLAIN.run_id()},{OTHER.run_id()}"},
}


def hostile_run(run, tag: str):
    """The run as a tampered run.json would hold it: its device and its layer names are hostile (the
    checksum is no signature: whoever edits the file can write a matching one)."""
    names = {layer.name: f"{HOSTILE} {tag}{i}" for i, layer in enumerate(run.layers)}
    return replace(
        run,
        device=HOSTILE,
        layers=tuple(LayerShape(names[layer.name], layer.shape) for layer in run.layers),
        histograms=tuple(
            tuple(LayerHistogram(names[h.layer], h.alpha, h.std, h.limit, h.counts) for h in epoch)
            for epoch in run.histograms
        ),
    )


def write_job(root: Path, key: str, state: JobState, **fields) -> None:
    status = JobStatus(
        key=key, kind=HOSTILE, label=HOSTILE, state=state, message=HOSTILE, done=1, total=3, text=HOSTILE,
        metrics={HOSTILE: 0.5, f"{HOSTILE} accuracy": 0.9}, submitted=time.time() - 5, pid=1, host=HOSTILE, **fields,
    )  # fmt: skip
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    (root / "jobs" / f"{key}.json").write_text(status.to_json())


def build_hostile_store(root: Path, clean_root: Path) -> int:
    """A store at `root` whose runs, compressions and job files hold hostile text (trained in
    `clean_root`); one job is live: the returned descriptor holds its lock, as its owner would, so
    its progress panel with its metrics is drawn. Close it to let the job go."""
    clean = RunStore(clean_root)
    store = RunStore(root)
    for index, cfg in enumerate((PLAIN, OTHER)):
        run, _ = get_or_train(clean, cfg)
        stored = store.save_run(hostile_run(run, f"L{index}"))
        for ccfg in (CompressConfig(method="kmeans", n_centroids=4), CompressConfig(method="binarize")):
            record, _ = get_or_compress(clean, run, ccfg)
            mse = tuple((f"{HOSTILE} {name}", value) for name, value in record.layer_mse)
            assert record.file_path is not None
            store.save_compression(replace(record, layer_mse=mse), Path(record.file_path).read_bytes())
        assert stored.device == HOSTILE
    write_job(root, FOLLOWED.run_id(), JobState.RUNNING, started=time.time() - 4)
    write_job(root, "failedjob", JobState.FAILED, finished=time.time() - 2)
    write_job(root, "orphanjob", JobState.RUNNING, started=time.time() - 4)  # no owner: "interrupted ... on HOST"
    lock = os.open(root / "jobs" / f"{FOLLOWED.run_id()}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return lock


@pytest.fixture(scope="module")
def hostile_root(lab_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-store")
    lock = build_hostile_store(root, lab_root)  # the clean runs: PLAIN is already there
    yield root
    os.close(lock)


@pytest.fixture
def hostile_store(hostile_root, monkeypatch) -> Path:
    monkeypatch.setenv("COMPRESSION_LAB_CACHE", str(hostile_root))
    return hostile_root


def open_page(page: str, query: dict) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(query)
    at.run()
    at.switch_page(f"views/{page}.py")
    at.run()
    return at


def drawn_strings(message, field: str = "") -> list[tuple[str, str]]:
    """(field, text) for every string a proto message holds, Plotly figures' JSON included."""
    from google.protobuf.message import Message

    found: list[tuple[str, str]] = []
    if isinstance(message, Message):
        for descriptor, value in message.ListFields():
            name = descriptor.name
            if name in NOT_DRAWN:
                continue
            values = value if descriptor.is_repeated else [value]
            for item in values:
                if name == "spec" and isinstance(item, str):  # a Plotly figure
                    found += [(f"plotly:{k}", s) for k, s in figure_strings(json.loads(item))]
                else:
                    found += drawn_strings(item, name)
    elif isinstance(message, str):
        found.append((field, message))
    return found


def figure_strings(node, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [pair for key, value in node.items() for pair in figure_strings(value, f"{path}.{key}")]
    if isinstance(node, list):
        return [pair for value in node for pair in figure_strings(value, path)]
    return [(path, node)] if isinstance(node, str) else []


def elements(at: AppTest):
    stack = [at._tree]
    while stack:
        node = stack.pop()
        proto = getattr(node, "proto", None)
        if proto is not None:
            yield node, proto
        children = getattr(node, "children", None)
        if children:
            stack.extend(children.values())


def live_markup(at: AppTest) -> list[str]:
    """What in the page would be a link, an image or HTML made of the hostile text."""
    bad = []
    for node, proto in elements(at):
        for field, text in drawn_strings(proto):
            where = f"{type(node).__name__}.{field}: {text[:140]!r}"
            if HTML_TAG.search(text):
                bad.append(f"HTML tag in {where}")
            if field.startswith("plotly:"):
                continue  # Plotly draws no Markdown and links no bare URL
            if MD_LINK.search(text):
                bad.append(f"Markdown link in {where}")
            shown = UNESCAPE.sub(r"\1", text)
            links = [m.group(0) for m in (*URL_LINK.finditer(shown), *MAIL_LINK.finditer(shown))]
            if any("evil" in link for link in links):
                bad.append(f"auto-link {links} in {where}")
    return bad


def hostile_shown(at: AppTest) -> bool:
    """The hostile text reached the page somewhere (else the sweep proves nothing for that case)."""
    return any("evil" in text for _, proto in elements(at) for _, text in drawn_strings(proto))


CASES = [(page, None) for page in PAGES] + [(page, param) for page, params in PAGES.items() for param in params]


@fast_cases("train-store", "compress-run")
@pytest.mark.parametrize("page,param", CASES, ids=[f"{p}-{q or 'store'}" for p, q in CASES])
def test_hostile_text_shows_as_text(hostile_store, page, param):
    query = dict(BASE_QUERY.get(page, {}))
    if page == "train" and param is None:
        query = FOLLOWED_QUERY  # the live job's panel: its text and metric names
    if param is not None:
        query[param] = HOSTILE
    at = open_page(page, query)
    assert not at.exception, [e.message for e in at.exception]
    assert live_markup(at) == []
    if param is not None or page in ("train", "compress", "jobs", "compare"):
        assert hostile_shown(at), "the hostile value was not shown at all: this case tests nothing"


def test_the_train_histogram_title_and_compress_layer_names_are_escaped(hostile_store):
    """The layer name went into the Train histogram's title as HTML (a real link)."""
    at = open_page("train", TRAIN_QUERY)
    figures = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    titles = [f["layout"].get("title", {}).get("text", "") for f in figures]
    assert any("&lt;a href='x'&gt;" in t for t in titles), titles
    radio = at.radio(key=f"hist_layer_{PLAIN.run_id()}")
    assert all("\\<a" in option for option in radio.options), radio.options
