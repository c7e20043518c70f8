"""Every page under streamlit's AppTest: empty store, a store with tiny runs, and widgets that
change what is shown. The app is driven through app.py (st.navigation) with switch_page."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.config import CompressConfig, TrainConfig
from core.data import DatasetUnavailable
from core.pipeline import get_or_compress, get_or_train
from core.store import RunStore
from core.train import TrainingDiverged
from tests.marks import fast_cases

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGES = ("train", "compress", "frontier", "compare", "learn", "jobs", "store")
TIMEOUT = 60
TINY = dict(dataset="digits", model="mlp", hidden=(32, 16), epochs=2, batch_size=64, seed=0)
BINARY = TrainConfig(**TINY, reg="binary", lam=0.05)
PLAIN = TrainConfig(**TINY)


@pytest.fixture(autouse=True)
def patient_page(monkeypatch) -> None:
    """These tests check what the Compress page shows once a setting is computed: it waits for it here
    (a busy machine may take longer than the page's own INLINE_LIMIT_S). The short wait and the live
    panel that follows it are tested in tests/test_slider.py."""
    monkeypatch.setattr("core.pipeline.INLINE_LIMIT_S", float(TIMEOUT))


def open_page(page: str | None, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(query or {})
    at.run()
    if page is not None:
        at.switch_page(f"views/{page}.py")
        at.run()
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r}; metrics: {[m.label for m in at.metric]}"
    return values[0]


def texts(elements) -> str:
    return " ".join(str(e.value) for e in elements)


# ------------------------------------------------------------------------------------ empty store


@pytest.mark.slow
def test_home_on_empty_store_shows_labelled_illustration(empty_store):
    at = open_page(None)
    assert_clean(at)
    assert "Illustration" in texts(at.subheader)
    assert "ILLUSTRATION" in texts(at.caption)


@fast_cases(2)
@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_on_an_empty_store(empty_store, page):
    at = open_page(page)
    assert_clean(at)
    assert not at.error
    if page in ("compress", "frontier", "compare"):
        assert at.info, "an empty store should be explained with st.info"


# --------------------------------------------------------------------------------- store with runs


@fast_cases(2)
@pytest.mark.parametrize("page", (None, *PAGES))
def test_every_page_runs_on_a_store_with_runs(lab_store, page):
    at = open_page(page)
    assert_clean(at)
    assert not at.error


@pytest.mark.slow
def test_home_draws_a_stored_regularized_run(lab_store):
    at = open_page(None)
    assert "before and after training" in texts(at.subheader)
    assert BINARY.run_id()[:6] in texts(at.caption)


def test_train_shows_a_stored_run_without_training(lab_store, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a stored run must not be retrained")

    monkeypatch.setattr("core.executors.train", no_training)
    at = open_page("train", {"dataset": "digits", "hidden": "32,16", "epochs": "2", "reg": "binary", "lam": "0.05"})
    assert_clean(at)
    assert metric(at, "Test accuracy").endswith("%")
    assert BINARY.run_id() in texts(at.success)
    # the epoch slider moves the histogram back to initialisation
    at.slider(key=f"hist_epoch_{BINARY.run_id()}").set_value(0).run()
    assert_clean(at)


def finish_job(root: Path, key: str) -> None:
    """Wait for the background job `key` (the page only submitted it)."""
    from core.jobs import JobManager

    status = JobManager(root).wait(key, timeout=120)
    assert status is not None and status.terminal, status


@pytest.mark.slow
def test_train_button_trains_in_the_background_and_shows_the_run(empty_store):
    cfg = TrainConfig(dataset="digits", hidden=(16,), epochs=1, reg="binary", lam=0.01)
    at = open_page("train", {"dataset": "digits", "hidden": "16", "epochs": "1", "reg": "binary", "lam": "0.01"})
    assert "not been trained yet" in texts(at.info)
    at.button(key="train_button").click().run()
    assert_clean(at)
    finish_job(empty_store, cfg.run_id())
    assert RunStore(empty_store).load_run(cfg.run_id()) is not None
    at.run()  # what the progress panel does by itself when the job ends
    assert_clean(at)
    assert metric(at, "Test accuracy").endswith("%")
    # another session (a new tab, another browser) asking for the same settings: shown, not trained again
    other = open_page("train", {"dataset": "digits", "hidden": "16", "epochs": "1", "reg": "binary", "lam": "0.01"})
    assert metric(other, "Test accuracy") == metric(at, "Test accuracy")


@pytest.mark.slow
def test_training_survives_navigating_away_and_shows_its_progress_to_any_session(empty_store, monkeypatch):
    """A job that is running shows its live progress on the Train page of any session."""
    import threading

    release = threading.Event()
    started = threading.Event()
    from core import executors

    real_train = executors.train

    def slow_train(cfg, **kwargs):
        started.set()
        release.wait(60)
        return real_train(cfg, **kwargs)

    monkeypatch.setattr("core.executors.train", slow_train)
    query = {"dataset": "digits", "hidden": "8", "epochs": "1"}
    cfg = TrainConfig(dataset="digits", hidden=(8,), epochs=1, reg="binary", lam=0.01)
    at = open_page("train", query)
    at.button(key="train_button").click().run()
    assert started.wait(30)
    at.switch_page("views/learn.py").run()  # away...
    at.switch_page("views/train.py").run()  # ...and back: the job is still there
    assert_clean(at)
    assert any("Training run" in str(p.text) for p in at.get("progress")) or at.get("progress")
    other = open_page("train", query)  # another browser
    assert other.get("progress") and any(b.label == "Cancel" for b in other.button)
    release.set()
    finish_job(empty_store, cfg.run_id())
    at.run()
    assert metric(at, "Test accuracy").endswith("%")


@pytest.mark.slow
def test_cancel_stops_the_job_and_stores_nothing(empty_store, monkeypatch):
    import threading

    from core import executors

    real_train = executors.train
    started = threading.Event()

    def watched_train(cfg, **kwargs):
        started.set()
        on_step = kwargs["on_step"]
        for _ in range(600):  # reports until cancelled: a report is where a cancel lands
            on_step(1, 10)
            threading.Event().wait(0.05)
        return real_train(cfg, **kwargs)

    monkeypatch.setattr("core.executors.train", watched_train)
    query = {"dataset": "digits", "hidden": "12", "epochs": "1"}
    cfg = TrainConfig(dataset="digits", hidden=(12,), epochs=1, reg="binary", lam=0.01)
    at = open_page("train", query)
    at.button(key="train_button").click().run()
    assert started.wait(30)
    at.run()
    next(b for b in at.button if b.label == "Cancel").click().run()
    finish_job(empty_store, cfg.run_id())
    assert RunStore(empty_store).load_run(cfg.run_id()) is None
    at.run()
    assert_clean(at)
    assert "cancelled" in texts(at.error)


@pytest.mark.slow
def test_train_reports_an_unavailable_dataset(empty_store, monkeypatch):
    def unavailable(name, *args, **kwargs):
        raise DatasetUnavailable(f"dataset {name!r} is not available: no files (test)")

    monkeypatch.setattr("core.train.load_dataset", unavailable)
    at = open_page("train", {"dataset": "fashion-mnist", "epochs": "1"})
    at.button(key="train_button").click().run()
    finish_job(empty_store, TrainConfig(dataset="fashion-mnist", epochs=1, reg="binary", lam=0.01).run_id())
    at.run()
    assert_clean(at)
    assert "is not available" in texts(at.error)


@pytest.mark.slow
def test_train_reports_a_diverged_run(empty_store, monkeypatch):
    def diverge(cfg, **kwargs):
        raise TrainingDiverged("training diverged in epoch 1: the loss became nan; lower lam. Nothing was stored.")

    monkeypatch.setattr("core.executors.train", diverge)
    at = open_page("train", {"dataset": "digits", "epochs": "1", "lam": "1"})
    at.button(key="train_button").click().run()
    finish_job(empty_store, TrainConfig(dataset="digits", epochs=1, reg="binary", lam=1.0).run_id())
    at.run()
    assert_clean(at)
    assert "diverged" in texts(at.error)


@pytest.mark.slow
@pytest.mark.slow
def test_a_link_never_starts_expensive_work(empty_store):
    """/compress?run=..&d=2&k=65,536 opens with an estimate and a button; nothing runs until a click."""
    from core.jobs import JobManager

    run, _ = get_or_train(RunStore(empty_store), TrainConfig(dataset="mnist-5k", epochs=1))  # LeNet-300-100
    expensive = CompressConfig(method="pq", subvector_size=2, n_centroids=65536)
    at = open_page("compress", {"run": run.run_id, "method": "pq", "d": "2", "k": "65,536"})
    assert_clean(at)
    assert any(b.label.startswith("Compute (about") for b in at.button)
    assert JobManager(empty_store).status(f"{run.run_id}-{expensive.key()}") is None
    assert RunStore(empty_store).load_compression(run.run_id, expensive) is None


@fast_cases(1)
@pytest.mark.parametrize(
    "query, message",
    [
        ({"dataset": "digits", "hidden": "30,abc"}, "hidden widths"),
        ({"dataset": "mnist-5k", "model": "cifar-cnn"}, "cifar10"),
    ],
)
def test_train_rejects_an_invalid_configuration_in_the_page(empty_store, query, message):
    at = open_page("train", query)
    assert_clean(at)
    assert message in texts(at.error)


def test_compress_fc_ratio_follows_k(lab_store):
    at = open_page("compress", {"run": PLAIN.run_id(), "method": "pq", "d": "2", "k": "4"})
    assert_clean(at)
    small_k = metric(at, "FC ratio")
    started = time.perf_counter()
    at.select_slider(key="k").set_value(16).run()
    first_move = time.perf_counter() - started
    assert_clean(at)
    large_k = metric(at, "FC ratio")
    assert small_k != large_k
    # back to a setting seen before: answered from the cache, no recomputation
    started = time.perf_counter()
    at.select_slider(key="k").set_value(4).run()
    cached_move = time.perf_counter() - started
    assert metric(at, "FC ratio") == small_k
    print(f"\nCompress, k slider (AppTest): new setting {first_move:.3f} s, cached setting {cached_move:.3f} s")
    # d = 2 shows the scatter of subvectors; d = 1 (kmeans) the histogram with centroids
    assert at.get("plotly_chart")
    assert at.get("download_button")


@pytest.mark.slow
def test_compress_binarize_shows_histogram_and_one_bit_codes(lab_store):
    at = open_page("compress", {"run": BINARY.run_id(), "method": "binarize"})
    assert_clean(at)
    ratio = float(metric(at, "FC ratio").rstrip("x").replace(",", ""))
    assert 25 < ratio < 32  # 1 bit a weight plus one float alpha per layer


@pytest.mark.slow
def test_compress_per_chunk_with_too_many_centroids_is_an_error_in_the_page(lab_store):
    at = open_page("compress", {"run": PLAIN.run_id(), "method": "pq", "layout": "per-chunk", "k": "64", "d": "2"})
    assert_clean(at)
    assert "does not fit" in texts(at.error)
    assert "k=64 is too many" in texts(at.error) and "10 rows" in texts(at.error)


def test_frontier_switches_axis_and_hides_dominated_points(lab_store):
    at = open_page("frontier")
    assert_clean(at)
    assert at.get("plotly_chart")
    at.radio(key="x").set_value("fc_bits").run()
    assert_clean(at)
    at.toggle(key="dominated").set_value(False).run()
    assert_clean(at)


@pytest.mark.slow
def test_frontier_sweep_trains_missing_runs_and_skips_settings_that_do_not_fit(empty_store):
    at = open_page("frontier")
    assert "No compressions" in texts(at.info)
    at.selectbox(key="sw_dataset").set_value("digits")
    at.text_input(key="sw_hidden").set_value("16")
    at.number_input(key="sw_epochs").set_value(1)
    at.multiselect(key="sw_lams").set_value([0.0])
    at.multiselect(key="sw_methods").set_value(["binarize", "pq"])
    at.multiselect(key="sw_dims").set_value([2])
    at.multiselect(key="sw_ks").set_value([4, 64])  # per-chunk k=64 > 10 rows of the last layer: skipped
    at.selectbox(key="sw_layout").set_value("per-chunk")
    next(b for b in at.button if b.label == "Run the sweep").click().run()
    assert_clean(at)
    key = at.session_state["sweep_key"]
    assert key.startswith("sweep-")
    finish_job(empty_store, key)  # the sweep runs as one job; the page follows it
    at.run()
    assert_clean(at)
    assert "Sweep done" in texts(at.success) and "2 points, 1 skipped" in texts(at.success)
    assert "skipped pq d=2 k=64 per-chunk" in texts(at.success)
    assert len(RunStore(empty_store).list_compressions()) == 2  # binarize + pq d=2 k=4 per-chunk (fits: 10 rows)
    assert at.get("plotly_chart"), "the frontier is drawn right after the sweep"


@fast_cases(1)
@pytest.mark.parametrize(
    "page,query",
    [("compress", {"run": "0123456789abcdef"}), ("compare", {"runs": f"0123456789abcdef,{PLAIN.run_id()}"})],
)
def test_a_link_to_a_run_not_in_the_store_says_so(lab_store, page, query):
    at = open_page(page, query)
    assert_clean(at)
    assert "0123456789abcdef" in texts(at.warning) and "not in this run store" in texts(at.warning)


@pytest.mark.slow
def test_compare_two_runs_shows_differences_and_budgets(lab_store):
    at = open_page("compare", {"runs": f"{PLAIN.run_id()},{BINARY.run_id()}"})
    assert_clean(at)
    frames = at.dataframe
    assert len(frames) >= 2
    diff = frames[0].value
    assert "reg" in diff.index and "lam" in diff.index and "dataset" not in diff.index
    best = frames[-1].value
    assert set(best["budget (points)"]) == {0.5, 1.0, 2.0}
    at.radio(key="cmp_reference").set_value("each run's own float accuracy").run()
    assert_clean(at)
    own = at.dataframe[-1].value
    # from its own float accuracy no run's drop can be larger than from the best float accuracy
    ratios = [
        frame["FC ratio"].fillna(0).tolist() if "FC ratio" in frame else [0] * len(frame) for frame in (own, best)
    ]
    assert all(a >= b for a, b in zip(*ratios))
    at.slider(key="cmp_epoch").set_value(1).run()
    assert_clean(at)


@pytest.mark.slow
def test_learn_worked_example_and_toys(empty_store):
    at = open_page("learn")
    assert_clean(at)
    text = texts(at.markdown)
    assert "463,248 bits" in text and "FC ratio 18.39" in text
    assert "our reading of the paper's binarizing term" in text
    before = metric(at, "R(W) after descent")
    at.select_slider(key="toy_lam").set_value(3.0).run()
    assert metric(at, "R(W) after descent") != before
    at.select_slider(key="toy_k").set_value(16).run()
    assert_clean(at)


@pytest.mark.slow
def test_learn_three_stages_toy_and_the_real_ledger(tmp_path, monkeypatch):
    """The toy's controls moved (each answers with the ledger, every stage shown), a k the new
    survivors cannot take reset, a setting whose codebook outweighs its codes warned about; on a
    store with no pruned or entropy-coded compression one line says how to make one (a Compress link
    with those settings), and with one its stored ledger is shown stage by stage."""
    from urllib.parse import parse_qsl

    root = tmp_path / "stages-store"
    monkeypatch.setenv("COMPRESSION_LAB_CACHE", str(root))
    at = open_page("learn")
    assert_clean(at)

    def ledgers(at: AppTest) -> list:
        """The stage tables shown: the toy's, then a stored compression's (AppTest finds no table by key)."""
        return [frame.value for frame in at.dataframe if "after" in frame.value]

    stages = lambda: ledgers(at)[0]["after"].tolist()  # noqa: E731
    assert stages() == ["float32", "pruned", "quantized", "entropy-coded"]
    assert metric(at, "Mask as a bitmap") == "4,096 bits"
    for key, value in (("stage_s", 0.5), ("stage_d", 2), ("stage_k", 64), ("stage_s", 0.98), ("stage_s", 0.0)):
        at.select_slider(key=key).set_value(value).run()
        assert_clean(at)
        assert not at.error
    assert at.select_slider(key="stage_k").value == 16  # 64 did not fit the 41 subvectors of 98%
    assert stages() == ["float32", "quantized", "entropy-coded"]
    at.radio(key="stage_dist").set_value("two wells").run()
    assert_clean(at)
    # a link holds each control's label, as a bound widget writes it: it opens the same toy, unwarned
    again = open_page("learn", {"stage_s": "0.98", "stage_d": "8", "stage_k": "8", "stage_dist": "two wells"})
    assert_clean(again)
    assert not again.warning
    assert again.select_slider(key="stage_s").value == 0.98 and again.radio(key="stage_dist").value == "two wells"
    assert again.select_slider(key="stage_k").value == 8 and metric(again, "Weights kept") == "82 of 4,096"
    at.select_slider(key="stage_s").set_value(0.75).run()
    at.select_slider(key="stage_d").set_value(8).run()
    at.select_slider(key="stage_k").set_value(128).run()
    assert_clean(at)
    assert "the codebook outweighs what the codes save" in texts(at.warning)

    get_or_train(RunStore(root), PLAIN)  # a run, no pruned or entropy-coded compression of it
    at = open_page("learn")
    assert "No stored compression is pruned or entropy-coded yet" in texts(at.markdown)
    links = [link for link in at.get("page_link") if "rANS" in str(link.proto.label)]
    compress = open_page("compress", dict(parse_qsl(str(links[0].proto.query_string))))  # the link makes one
    assert_clean(compress)
    assert compress.select_slider(key="sparsity").value == 0.9 and compress.radio(key="entropy").value == "ans"
    (record,) = RunStore(root).list_compressions()
    assert record.compress_config.sparsity == 0.9 and record.compress_config.entropy == "ans"
    at = open_page("learn")
    assert_clean(at)
    _, table = ledgers(at)
    assert table["after"].tolist() == ["float32", "pruned", "quantized", "entropy-coded"]
    size = record.size
    assert table["coded layers (bits)"].tolist()[2:] == [f"{size.fc_bits:,}", f"{size.entropy_fc_bits:,}"]
    assert table["mask (bits)"].tolist()[2] == f"{size.mask_bits:,}"


# ------------------------------------------------------------------------------------------ links

EVIL_LINK = "[text](https://evil.example/x)"
EVIL_IMAGE = "![x](http://evil.example/t.png)"
# (page, query, what the page must say: a parameter name in a notice, or text of an error)
LINKS = [
    ("train", {"epochs": "1e400"}, "epochs"),
    ("train", {"epochs": "500"}, "epochs"),
    ("train", {"epochs": "0"}, "epochs"),
    ("train", {"epochs": "abc"}, "epochs"),
    ("train", {"epochs": "99999999999999999999999"}, "epochs"),
    ("train", {"lam": "0.07"}, "lam"),
    ("train", {"lam": "-1"}, "lam"),
    ("train", {"lam": "nan"}, "lam"),
    ("train", {"lr": "abc"}, "lr"),
    ("train", {"lr": "1e400"}, "lr"),
    ("train", {"dataset": "mnsit"}, "dataset"),
    ("train", {"dataset": ""}, "dataset"),
    ("train", {"model": "vgg"}, "model"),
    ("train", {"reg": "l1"}, "reg"),
    ("train", {"seed": "-5"}, "seed"),
    ("train", {"seed": "1e3"}, "seed"),
    ("train", {"warmup": "999"}, "warmup"),
    ("train", {"reg_levels": "1"}, "reg_levels"),
    ("train", {"reg_d": "3"}, "reg_d"),
    ("train", {"reg_k": "5"}, "reg_k"),
    ("train", {"hidden": "30,abc"}, "hidden widths"),
    ("train", {"hidden": "99999999"}, "hidden width"),
    ("train", {"hidden": "[text](https://evil.example/x)"}, "hidden widths"),
    ("compress", {"run": EVIL_LINK}, "not in this run store"),
    ("compress", {"run": EVIL_IMAGE}, "not in this run store"),
    ("compress", {"run": "0123"}, "not in this run store"),
    ("compress", {"method": "foo"}, "method"),
    ("compress", {"layout": "diagonal"}, "layout"),
    ("compress", {"d": "3"}, "d="),
    ("compress", {"d": "1e400"}, "d="),
    ("compress", {"k": "3"}, "k="),
    ("compress", {"k": "65,537"}, "k="),
    ("compress", {"bits": "8"}, "bits"),
    ("compress", {"ft": "99"}, "ft"),
    ("compress", {"ft": "-1"}, "ft"),
    ("frontier", {"x": "zzz"}, "x="),
    ("frontier", {"dominated": "maybe"}, "dominated"),
    ("frontier", {"dataset": "nope"}, "dataset"),
    ("frontier", {"model": "nope"}, "model"),
    ("compare", {"runs": EVIL_IMAGE}, "not in this run store"),
    ("compare", {"runs": "<script>alert(1)</script>"}, "not in this run store"),
    ("compare", {"runs": f"{PLAIN.run_id()},{BINARY.run_id()},{PLAIN.run_id()}"}, None),  # a repeat: no error
    ("compare", {"runs": ",,,"}, None),
]


LINK_IDS = [f"{p}-{'&'.join(f'{k}={v}' for k, v in q.items())}" for p, q, _ in LINKS]
# The whole family runs in CI (marked slow); these representatives keep the fast loop honest.
QUICK = {"train-epochs=1e400", "train-hidden=30,abc", f"compress-run={EVIL_LINK}", "frontier-x=zzz",
         f"compare-runs={EVIL_IMAGE}", "compress-k=65,537"}  # fmt: skip
QUICK_LINKS = [case for case, name in zip(LINKS, LINK_IDS) if name in QUICK]


@fast_cases(1)
@pytest.mark.parametrize("page,query,said", QUICK_LINKS)
def test_a_few_links_are_answered_without_an_exception(lab_store, page, query, said):
    check_link(page, query, said)


@pytest.mark.slow
@pytest.mark.parametrize("page,query,said", LINKS, ids=LINK_IDS)
def test_every_link_is_answered_without_an_exception(lab_store, page, query, said):
    check_link(page, query, said)


def check_link(page: str, query: dict, said: str | None) -> None:
    at = open_page(page, query)
    assert_clean(at)
    notices = (texts(at.warning) + " " + texts(at.error)).replace("\\", "")  # as rendered: escapes gone
    if said is not None:
        assert said in notices, notices
    # text from the link is shown as characters, never as a link, an image or HTML
    for element in [*at.warning, *at.error, *at.markdown, *at.caption]:
        value = str(element.value)
        assert "](http" not in value and "<script>" not in value, value


@pytest.mark.slow
def test_train_chart_follows_its_controls_through_a_setting_not_trained(lab_store):
    """Pick layer 3 and epoch 1, move λ to a setting not trained (the histogram is not drawn), then
    back: the radio, the slider and the chart title agree (they did not: the chart kept the old ones)."""
    query = {"dataset": "digits", "hidden": "32,16", "epochs": "2", "reg": "binary", "lam": "0.05"}
    at = open_page("train", query)
    layer_key, epoch_key = f"hist_layer_{BINARY.run_id()}", f"hist_epoch_{BINARY.run_id()}"
    at.radio(key=layer_key).set_value("fcs.2.weight").run()
    at.slider(key=epoch_key).set_value(1).run()
    at.select_slider(key="lam").set_value(0.2).run()  # not trained: no histogram on the page
    assert "not been trained yet" in texts(at.info)
    at.select_slider(key="lam").set_value(0.05).run()
    assert_clean(at)
    assert at.radio(key=layer_key).value == "fcs.2.weight" and at.slider(key=epoch_key).value == 1
    figure = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert "fcs.2.weight" in figure["layout"]["title"]["text"]
    assert figure["layout"]["sliders"][0]["active"] == 1  # the animation starts at the chosen epoch


@pytest.mark.slow
def test_compress_chart_follows_its_controls_through_an_error(lab_store):
    """Pick layer 3, choose a per-chunk k that does not fit (an error, no chart), then shared: the
    layer radio and the chart agree."""
    at = open_page("compress", {"run": PLAIN.run_id(), "method": "pq", "d": "2", "k": "8"})
    layer_key = f"layer_{PLAIN.run_id()}"
    at.radio(key=layer_key).set_value("fcs.2.weight").run()
    at.radio(key="layout").set_value("per-chunk").run()
    at.select_slider(key="k").set_value(64).run()
    assert "does not fit" in texts(at.error)
    at.radio(key="layout").set_value("shared").run()
    at.select_slider(key="k").set_value(8).run()
    assert_clean(at)
    assert at.radio(key=layer_key).value == "fcs.2.weight"
    spec = at.get("plotly_chart")[-1].proto.spec
    assert "fcs.2.weight" in spec


# ------------------------------------------------------------------------- frontier, detail, store


def plotly_values(data) -> list:
    """A Plotly array from a figure's JSON: a list, or Plotly's typed array ({"dtype", "bdata"})."""
    if isinstance(data, dict):
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)


def frontier_points(at: AppTest) -> int:
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    return sum(len(plotly_values(t.get("x", []))) for t in figure["data"] if t.get("mode") == "markers")


@pytest.mark.slow
def test_frontier_filters_hide_points_and_live_in_the_url(lab_store):
    at = open_page("frontier", {"min_acc": "0"})
    assert_clean(at)
    points = [p for p in RunStore(lab_store).list_compressions() if not p.transient]
    assert frontier_points(at) == len(points)
    at.multiselect(key="f_method").set_value(["pq"]).run()
    assert_clean(at)
    pq = [p for p in points if p.compress_config.method == "pq"]
    assert frontier_points(at) == len(pq) and at.query_params["f_method"] == "pq"
    at.multiselect(key="f_reg").set_value(["none (λ=0)"]).run()
    plain_pq = [p for p in pq if p.train_config.reg == "none"]
    assert 0 < frontier_points(at) == len(plain_pq) < len(points)
    # the same view from its link
    again = open_page("frontier", {"min_acc": "0", "f_method": "pq", "f_reg": "none (λ=0)"})
    assert frontier_points(again) == len(plain_pq)
    # the accuracy floor hides what sits near chance; at 100 % nothing is left
    at.number_input(key="min_acc").set_value(100).run()
    assert_clean(at)
    assert "No point passes these filters" in texts(at.info)


@pytest.mark.slow
def test_frontier_legend_tells_runs_apart(own_store):
    other = TrainConfig(**{**TINY, "seed": 1})
    store = RunStore(own_store)
    run, _ = get_or_train(store, other)
    get_or_compress(store, run, CompressConfig(method="binarize"))
    at = open_page("frontier", {"min_acc": "0"})
    names = [trace.get("name", "") for trace in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]]
    assert any("seed 1" in n for n in names) and any("seed 0" in n for n in names)
    ticks = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["xaxis"]["ticktext"]
    assert all(t.endswith("x") for t in ticks)  # 1x, 2x, 5x, 10x, ... not "2 3 4 5"


@pytest.mark.slow
def test_a_point_link_opens_its_detail_file_and_compress_link(lab_store):
    point = next(
        p for p in RunStore(lab_store).list_compressions() if p.compress_config.method == "pq" and not p.transient
    )
    at = open_page("frontier", {"min_acc": "0", "point": f"{point.run_id}-{point.key}"})
    assert_clean(at)
    assert point.label() in texts(at.subheader)
    assert at.get("download_button")
    links = [link for link in at.get("page_link") if "Compress" in str(link.proto.label)]
    assert links and f"run={point.run_id}" in str(links[0].proto.query_string)
    bad = open_page("frontier", {"min_acc": "0", "point": "[x](http://evil)"})
    assert_clean(bad)
    assert "not a stored compression" in texts(bad.warning)


def test_delete_a_compression_from_its_detail_and_a_run_from_the_store_page(own_store):
    store = RunStore(own_store)
    point = store.list_compressions()[0]
    at = open_page("frontier", {"min_acc": "0", "point": f"{point.run_id}-{point.key}"})
    at.button(key="detail_delete").click().run()
    assert_clean(at)
    assert store.load_compression(point.run_id, point.compress_config) is None
    assert len(store.list_compressions()) == 3
    page = open_page("store")
    assert "Runs" in [m.label for m in page.metric] and metric(page, "Runs") == "2"
    page.button(key=f"delete_{PLAIN.run_id()}").click().run()
    assert_clean(page)
    assert store.load_run(PLAIN.run_id()) is None and [r.run_id for r in store.list_runs()] == [BINARY.run_id()]
    assert all(c.run_id == BINARY.run_id() for c in store.list_compressions())


@pytest.mark.slow
def test_view_state_lives_in_the_url(lab_store):
    query = {"dataset": "digits", "hidden": "32,16", "epochs": "2", "reg": "binary", "lam": "0.05"}
    at = open_page("train", {**query, "layer": "fcs.1.weight", "epoch": "1"})
    assert_clean(at)
    assert at.radio(key=f"hist_layer_{BINARY.run_id()}").value == "fcs.1.weight"
    assert at.slider(key=f"hist_epoch_{BINARY.run_id()}").value == 1
    at = open_page("compress", {"run": PLAIN.run_id(), "method": "pq", "d": "2", "k": "8", "layer": "fcs.2.weight"})
    assert at.radio(key=f"layer_{PLAIN.run_id()}").value == "fcs.2.weight"
    at = open_page("learn", {"toy_k": "16", "toy_lam": "3", "ex_d": "4", "ex_k": "16"})
    assert_clean(at)
    assert at.select_slider(key="toy_k").value == 16 and at.select_slider(key="ex_d").value == 4
    assert at.query_params["toy_k"] == "16"


@pytest.mark.slow
def test_a_setting_only_passed_over_stays_off_the_frontier_until_settled(own_store):
    store = RunStore(own_store)
    run = store.load_run(PLAIN.run_id())
    glimpsed = CompressConfig(method="pq", subvector_size=2, n_centroids=4)
    record, _ = get_or_compress(store, run, glimpsed, transient=True)
    assert record.transient
    at = open_page("frontier", {"min_acc": "0"})
    assert frontier_points(at) == 4  # the 4 settled ones, not the one a slider passed over
    store.settle_compression(run.run_id, record.key)  # what the Compress page does after 2 s on it
    at = open_page("frontier", {"min_acc": "0"})
    assert frontier_points(at) == 5
    # a sweep or the CLI asking for a transient setting settles it too
    other = CompressConfig(method="kmeans", n_centroids=4)
    get_or_compress(store, run, other, transient=True)
    again, cached = get_or_compress(store, run, other)
    assert cached and not again.transient and not store.load_compression(run.run_id, other).transient


@pytest.mark.slow
def test_compare_runs_whose_configs_differ_in_a_later_field(own_store):
    """A run regularized on its convs beside one that is not: the difference table shows reg_targets
    (a field the JSON leaves out at its default) instead of failing on it."""
    store = RunStore(own_store)
    base = dict(dataset="digits", model="lenet5", epochs=1, reg="binary", lam=0.05)
    ids = [get_or_train(store, TrainConfig(**base, reg_targets=t))[0].run_id for t in ("fc+conv", "fc")]
    at = open_page("compare", {"runs": ",".join(ids)})
    assert_clean(at)
    assert "reg_targets" in at.dataframe[0].value.index


def follow_compress_link(at: AppTest) -> AppTest:
    """Open the Compress page with the query of the detail's "Open on Compress" link."""
    from urllib.parse import parse_qsl

    links = [link for link in at.get("page_link") if "Compress" in str(link.proto.label)]
    assert links, "the detail has no link to Compress"
    return open_page("compress", dict(parse_qsl(str(links[0].proto.query_string))))


@pytest.mark.slow
@pytest.mark.parametrize(
    "ccfg",
    [
        CompressConfig(method="binarize", targets="fc+conv"),
        CompressConfig(method="kmeans", n_centroids=4, targets="fc+conv", weighting="activations"),
        CompressConfig(method="kmeans", n_centroids=4, sparsity=0.9, entropy="ans"),
        CompressConfig(method="rq", subvector_size=4, n_centroids=16, stages=2),
        CompressConfig(method="kmeans", n_centroids=4, sparsity=0.8, prune_finetune_epochs=1),
    ],
    ids=["binarize-fc+conv", "kmeans-activations", "kmeans-pruned-rans", "rq-2-stages", "kmeans-pruned-retrained"],
)
def test_a_point_link_opens_that_very_compression_on_compress(own_store, ccfg):
    """The detail's link wrote the conv targets radio's inner value (targets=fc+conv), which the radio
    does not take, and no `weighting`: an FC + conv or activation-aware point opened another setting."""
    store = RunStore(own_store)
    run, _ = get_or_train(store, TrainConfig(dataset="digits", model="lenet5", epochs=1))
    point, _ = get_or_compress(store, run, ccfg)
    at = open_page("frontier", {"min_acc": "0", "point": f"{point.run_id}-{point.key}"})
    compress = follow_compress_link(at)
    assert_clean(compress)
    assert not [w.value for w in compress.warning if "cannot be used" in str(w.value)]
    assert compress.selectbox(key="run").value == run.run_id
    assert compress.selectbox(key="method").value == ccfg.method
    assert compress.radio(key="targets").value == ccfg.targets
    assert compress.radio(key="weighting").value == ccfg.weighting
    assert compress.select_slider(key="k").value == point.compress_config.n_centroids
    # the link once left out sparsity and entropy, and the sparsity slider refused its own label (90%)
    assert compress.select_slider(key="sparsity").value == point.compress_config.sparsity
    assert compress.radio(key="entropy").value == point.compress_config.entropy
    assert compress.number_input(key="retrain").value == point.compress_config.prune_finetune_epochs
    for option in point.compress_config.method_spec.options:
        assert compress.select_slider(key=option.field).value == getattr(point.compress_config, option.field)
    assert f"{point.label()} on run {run.run_id[:6]}" in texts(compress.subheader)


@pytest.mark.slow
def test_a_link_with_k_written_without_its_comma_is_taken_as_meant(lab_store):
    """k=65536 (the slider shows 65,536) silently became 256: the same number written without its
    comma is taken, on Compress and on Learn."""
    at = open_page("compress", {"run": PLAIN.run_id(), "method": "binarize", "k": "1024"})
    assert_clean(at)
    assert at.select_slider(key="k").value == 1024 and at.query_params["k"] == "1,024"
    assert not at.warning
    at.run()  # and it stays
    assert at.select_slider(key="k").value == 1024 and at.query_params["k"] == "1,024"
    at = open_page("learn", {"ex_k": "16384"})
    assert at.select_slider(key="ex_k").value == 16384


@pytest.mark.slow
def test_frontier_shows_points_that_land_while_it_is_open(own_store):
    """After the Frontier's own sweep, the chart kept the filters from before it: a new run's points
    (a new λ, a new seed) were filtered out until a reload."""
    at = open_page("frontier", {"min_acc": "0"})
    before = frontier_points(at)
    store = RunStore(own_store)
    for cfg in (TrainConfig(**TINY, reg="binary", lam=0.01), TrainConfig(**{**TINY, "seed": 1})):
        run, _ = get_or_train(store, cfg)
        get_or_compress(store, run, CompressConfig(method="binarize"))
    at.run()
    assert_clean(at)
    assert frontier_points(at) == before + 2
    # a value its user took out stays out; a new one still comes in
    at.multiselect(key="f_seed").set_value([1]).run()
    assert frontier_points(at) == 1
    run, _ = get_or_train(store, TrainConfig(**{**TINY, "seed": 2}))
    get_or_compress(store, run, CompressConfig(method="binarize"))
    at.run()
    assert frontier_points(at) == 2 and at.multiselect(key="f_seed").value == [1, 2]


@pytest.mark.slow
def test_frontier_says_what_it_leaves_out_and_how_to_include_it(own_store):
    store = RunStore(own_store)
    run = store.load_run(PLAIN.run_id())
    get_or_compress(store, run, CompressConfig(method="kmeans", n_centroids=2), transient=True)
    at = open_page("frontier", {"min_acc": "0"})
    assert_clean(at)
    said = texts(at.caption)
    assert "Left out: 1 compression(s) a slider on the Compress page only passed over" in said
    assert "stay on it for 2 s" in said


@fast_cases(1)
@pytest.mark.parametrize("reg,off", [("none", True), ("binary", False)])
def test_lambda_and_warmup_are_off_without_a_regularizer(empty_store, reg, off):
    at = open_page("train", {"dataset": "digits", "reg": reg})
    assert_clean(at)
    assert at.select_slider(key="lam").disabled is off
    assert at.number_input(key="warmup").disabled is off
    assert at.number_input(key="warmup_start").disabled is off


def test_compress_says_so_when_a_runs_weights_fail_their_check(own_store):
    """The weights drawn beside the centroids are read on the page: corrupt, they were a traceback."""
    weights = own_store / "runs" / PLAIN.run_id() / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-10] ^= 0xFF
    weights.write_bytes(bytes(blob))
    at = open_page("compress", {"run": PLAIN.run_id(), "method": "binarize"})
    assert_clean(at)
    assert "failed its check" in texts(at.error)


@pytest.mark.slow
def test_compare_leaves_out_settings_only_passed_over(own_store):
    store = RunStore(own_store)
    run = store.load_run(PLAIN.run_id())
    glimpsed, _ = get_or_compress(store, run, CompressConfig(method="kmeans", n_centroids=2), transient=True)
    at = open_page("compare", {"runs": f"{PLAIN.run_id()},{BINARY.run_id()}"})
    assert_clean(at)
    labels = set(at.dataframe[-1].value["best compression"])
    assert glimpsed.label() not in labels and labels


@pytest.mark.slow
def test_compress_activation_aware_from_a_link_and_a_bad_value_gets_a_notice(lab_store):
    """The k-means objective is a control and a URL parameter like the others; Streamlit keeps a
    radio's label in the URL (`weighting=output error`), which compresses with the output-error
    objective; any other value (the option's inner name too) falls back with a notice. Before the
    fix, a radio with labels (this one, and the conv targets) rejected the very links it wrote."""
    import json

    from core.store import RunStore

    at = open_page("compress", {"run": PLAIN.run_id(), "method": "pq", "d": "2", "k": "4", "weighting": "output error"})
    assert_clean(at)
    assert at.radio(key="weighting").value == "activations"
    store = RunStore(lab_store)
    computed = [
        json.loads(store.compression_paths(run_id, key)[0].read_text())
        for run_id, key, _ in store.compression_entries()
        if run_id == PLAIN.run_id()
    ]
    assert any('"weighting": "activations"' in json.dumps(entry) for entry in computed)
    for forged in ("outputs<script>", "activations"):
        at = open_page("compress", {"run": PLAIN.run_id(), "method": "pq", "weighting": forged})
        assert_clean(at)
        assert at.radio(key="weighting").value == "none"
        assert any("weighting" in str(w.value) for w in at.warning)


@pytest.mark.slow
def test_compress_link_k_without_its_comma_is_taken_as_meant(lab_store):
    """issue 17: the k slider shows 65,536 and Streamlit reads a bound slider's URL value as that text,
    so k=65536 typed without the comma silently became the default 256: now it is taken as meant, as
    is 65,536 as the slider writes it (and, its estimate being minutes of weighted k-means, offered as
    a job, never computed by the link)."""
    query = {"run": PLAIN.run_id(), "method": "pq", "d": "2", "weighting": "output error"}
    for k in ("65536", "65,536"):
        at = open_page("compress", {**query, "k": k})
        assert_clean(at)
        assert at.select_slider(key="k").value == 65_536
        assert not any("cannot be used here" in w.value for w in at.warning)
        assert any("Compute (about" in b.label for b in at.button)
