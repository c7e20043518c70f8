"""The per-layer budget (core/budget.py) and the per-layer settings it finds (CompressConfig.per_layer):
the ledger within the budget, a bigger budget never a smaller model, the search only on the training
split, bad budgets and floors one line before any evaluation, and the record through the store and file."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

import core
from core import budget
from core.__main__ import main
from core.compress import check_pruned_run, coded_shapes, compress_run, retrain_survivors
from core.config import CompressConfig, LayerSetting, TrainConfig
from core.data import load_dataset
from core.export import HEADER_BOUND, METADATA_KEY, NotACompressedModel, from_bytes, header_bytes, load_file
from core.filereader import check_bytes
from core.pipeline import job_manager
from core.pq import DoesNotFit, check_fits
from core.prune import n_kept
from core.size import layer_bits
from core.train import evaluate
from tests.tiny import TINY

# Keys that existed before per-layer settings, as computed on main before the field was added.
KEYS_BEFORE = {
    CompressConfig(): "be4e19cb276bed27",
    CompressConfig(method="kmeans", n_centroids=4, sparsity=0.5, entropy="ans"): "774ee57e8813d331",
    CompressConfig(method="float"): "69756a0bb1858202",
}
NAMES = ("fcs.0.weight", "fcs.1.weight", "fcs.2.weight")  # the tiny MLP's coded weights


@pytest.fixture
def small_grid(monkeypatch):
    """A grid of four coding candidates a weight (and float): the search stays a few seconds."""
    monkeypatch.setattr(budget, "KMEANS_CENTROIDS", (2, 4, 16))
    monkeypatch.setattr(budget, "PQ_SETTINGS", ((2, 16),))


@pytest.fixture
def tiny_run(tiny_store):
    (run,) = [r for r in tiny_store.list_runs() if r.config == TrainConfig(**TINY)]
    return run


@pytest.fixture
def counted(monkeypatch):
    """Every held-out evaluation of the search, with the inputs it was given."""
    calls: list[torch.Tensor] = []
    real = budget.heldout_metrics

    def counting(model, weights, inputs, targets):
        calls.append(inputs)
        return real(model, weights, inputs, targets)

    monkeypatch.setattr(budget, "heldout_metrics", counting)
    return calls


# ------------------------------------------------------------------------------------ the config


@pytest.mark.parametrize("cfg", list(KEYS_BEFORE))
def test_keys_without_per_layer_settings_are_unchanged(cfg):
    assert cfg.key() == KEYS_BEFORE[cfg] and "per_layer" not in cfg.to_json()
    assert cfg.for_layer("fcs.0.weight") is cfg and cfg.family == cfg.method


def test_per_layer_settings_are_canonical_and_round_trip():
    cfg = CompressConfig(
        method="pq",
        subvector_size=4,
        n_centroids=16,
        per_layer=[
            {"name": "fcs.2.weight", "method": "float", "n_centroids": 7},
            {"name": "fcs.1.weight", "method": "pq", "subvector_size": 4, "n_centroids": 16},  # = the rest
            {"name": "fcs.0.weight", "method": "pq", "subvector_size": 1, "n_centroids": 4, "sparsity": 0.5},
        ],
    )
    assert cfg.per_layer == (
        LayerSetting("fcs.0.weight", "kmeans", 1, 4, 0.5),  # pq d=1 shared is kmeans
        LayerSetting("fcs.2.weight", "float", 8, 256, 0.0),  # float reads no d, k
    )
    assert CompressConfig.from_dict(json.loads(json.dumps(cfg.to_json()))) == cfg
    assert cfg.family == "budget" and cfg.for_layer("fcs.1.weight").label() == "pq d=4 k=16 shared"
    assert cfg.label() == "budget fcs.0: prune 0.5 + kmeans k=4; fcs.2: float | rest pq d=4 k=16 shared"


@pytest.mark.parametrize(
    "settings, message",
    [
        ([{"name": "fcs.0.weight", "method": "rq"}], "unknown method of layer 'fcs.0.weight'"),
        ([{"name": "fcs.0.weight", "method": "pq", "n_centroids": 1}], "layer 'fcs.0.weight': number of centroids"),
        ([{"name": "fcs.0.weight", "method": "kmeans", "sparsity": 1.0}], "layer 'fcs.0.weight': sparsity"),
        ([{"name": "a", "method": "float"}, {"name": "a", "method": "pq"}], "has two per-layer settings"),
        ([{"method": "float"}], "must be an object with name and method"),
        ("fcs.0.weight", "must be a list"),
    ],
)
def test_a_bad_per_layer_setting_is_one_line(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CompressConfig(per_layer=settings)


def test_a_setting_for_a_weight_the_run_does_not_code_is_refused_before_work(tiny_run):
    cfg = CompressConfig(per_layer=[{"name": "conv.weight", "method": "float"}])
    with pytest.raises(ValueError, match=r"'conv\.weight', which is not a coded weight of this run"):
        check_fits(coded_shapes(tiny_run, cfg.targets), cfg)


def test_a_per_layer_file_holds_the_ledger_and_loads_back(tiny_run, tmp_path):
    cfg = CompressConfig(
        method="pq",
        subvector_size=2,
        n_centroids=16,
        entropy="none",
        per_layer=[
            {"name": "fcs.0.weight", "method": "kmeans", "n_centroids": 4, "sparsity": 0.5},
            {"name": "fcs.2.weight", "method": "float"},
        ],
    )
    record, blob = compress_run(tiny_run, cfg)
    shapes = {layer.name: layer.shape for layer in tiny_run.layers}
    assert record.size.fc_bits == sum(layer_bits(n, shapes[n], cfg).bits for n in NAMES)
    assert layer_bits("fcs.2.weight", shapes["fcs.2.weight"], cfg).bits == 32 * math.prod(shapes["fcs.2.weight"])
    # the file: the ledger's bits, each coded layer's padding to a whole byte, and the header
    payload = len(blob) - header_bytes(blob)
    assert 0 <= payload - math.ceil(record.size.model_bits / 8) <= 2 * 2 and header_bytes(blob) <= HEADER_BOUND
    _, meta = from_bytes(blob)
    assert [info["name"] for info in meta["layers"]] == ["fcs.0.weight", "fcs.1.weight"]  # fcs.2 stays float
    assert "mask" in meta["layers"][0] and "mask" not in meta["layers"][1]
    assert CompressConfig.from_dict(meta["compress_config"]) == cfg
    path = tmp_path / "m.safetensors"
    path.write_bytes(blob)
    model, _ = load_file(str(path))
    data = load_dataset("digits")
    assert evaluate(model, data.x_test, data.y_test, torch.device("cpu")) == record.accuracy


def test_the_api_compresses_with_per_layer_settings():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    cfg = CompressConfig(per_layer=[{"name": "0.weight", "method": "kmeans", "n_centroids": 4},
                                    {"name": "2.weight", "method": "float"}])  # fmt: skip
    packed = core.compress(model, cfg)
    assert [layer.name for layer in packed.layers] == ["0.weight"]
    assert packed.size.model_bits == 12 * 8 * 2 + 4 * 32 + 32 * (8 + 3 + 8 * 3)


# A per-layer setting that prunes one weight (and codes it by its own method) over a pq rest.
PRUNED_ONE = {
    "method": "pq",
    "subvector_size": 2,
    "n_centroids": 16,
    "per_layer": [{"name": "fcs.0.weight", "method": "kmeans", "n_centroids": 4, "sparsity": 0.5}],
}


def test_a_per_layer_pruned_setting_keeps_its_retraining():
    assert CompressConfig(**PRUNED_ONE, prune_finetune_epochs=2).prune_finetune_epochs == 2
    # a float setting prunes nothing (its sparsity is dropped): nothing is left to retrain
    kept_float = PRUNED_ONE | {"per_layer": [{"name": "fcs.0.weight", "method": "float", "sparsity": 0.5}]}
    cfg = CompressConfig(**kept_float, prune_finetune_epochs=2)
    assert cfg.per_layer == (LayerSetting("fcs.0.weight", "float"),) and cfg.prune_finetune_epochs == 0


def test_the_survivors_retrain_each_at_its_own_sparsity(tiny_run):
    cfg = CompressConfig(**PRUNED_ONE, prune_finetune_epochs=1)
    model = tiny_run.model(tiny_run.state_dict())
    state = retrain_survivors(model, load_dataset("digits"), cfg, 64, 1e-3, torch.device("cpu"))
    n = state["fcs.0.weight"].numel()
    assert int((state["fcs.0.weight"] == 0).sum()) == n - n_kept(n, 0.5)  # its own mask, held through training
    assert all(int((state[name] == 0).sum()) == 0 for name in NAMES[1:])  # the others unpruned
    assert not torch.equal(state["fcs.1.weight"], model.state_dict()["fcs.1.weight"])  # and retrained


@pytest.mark.parametrize(
    "settings, fits",
    [
        ({"sparsity": 0.5, "per_layer": [{"name": "fcs.0.weight", "method": "kmeans", "sparsity": 0.5}]}, True),
        ({"sparsity": 0.5, "per_layer": [{"name": "fcs.0.weight", "method": "kmeans"}]}, False),
        ({"sparsity": 0.5, "per_layer": [{"name": "fcs.0.weight", "method": "float"}]}, True),  # codes nothing
        # every coded weight listed, each pruned enough: the rest's own sparsity codes no weight
        ({"per_layer": [{"name": name, "method": "kmeans", "sparsity": 0.5} for name in NAMES]}, True),
    ],
)
def test_a_run_pruned_in_training_needs_each_coded_weight_pruned_as_much(tiny_run, settings, fits):
    pruned = dataclasses.replace(tiny_run, config=dataclasses.replace(tiny_run.config, prune_sparsity=0.5))
    cfg = CompressConfig(**({"method": "pq", "subvector_size": 2, "n_centroids": 16} | settings))
    if fits:
        check_pruned_run(pruned, cfg)
    else:
        with pytest.raises(DoesNotFit, match="for every coded layer"):
            check_pruned_run(pruned, cfg)


@pytest.fixture(scope="module")
def per_layer_blob(tiny_store) -> bytes:
    (run,) = [r for r in tiny_store.list_runs() if r.config == TrainConfig(**TINY)]
    return compress_run(run, CompressConfig(**PRUNED_ONE))[1]


def _with_setting(blob: bytes, edit) -> bytes:
    """The file with its compress_config's first per-layer setting edited (the data section kept)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    meta = json.loads(header["__metadata__"][METADATA_KEY])
    edit(meta["compress_config"]["per_layer"])
    header["__metadata__"][METADATA_KEY] = json.dumps(meta, sort_keys=True)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + blob[8 + n :]


def test_a_per_layer_file_passes_the_numpy_reader(per_layer_blob):
    arrays, meta = check_bytes(per_layer_blob)
    assert CompressConfig.from_dict(meta["compress_config"]) == CompressConfig(**PRUNED_ONE)
    assert {"fcs.0.weight.mask", "fcs.0.weight.codes"} <= set(arrays)


@pytest.mark.parametrize(
    "edit",
    [
        lambda settings: settings[0].__setitem__("subvector_size", 1.0),
        lambda settings: settings[0].__setitem__("n_centroids", True),
        lambda settings: settings[0].__setitem__("sparsity", "0.5"),
        lambda settings: settings[0].__setitem__("name", 3),
        lambda settings: settings.__setitem__(0, "fcs.0.weight"),
    ],
    ids=["float-d", "bool-k", "text-sparsity", "number-name", "not-an-object"],
)
def test_a_crafted_per_layer_setting_is_refused_in_one_line(per_layer_blob, edit):
    with pytest.raises(NotACompressedModel, match=r"compress_config\.per_layer is .*not of the type this tool writes"):
        check_bytes(_with_setting(per_layer_blob, edit))


@pytest.mark.parametrize(
    "edit, message",
    [
        # its own sparsity read: 0.8 of the weight pruned leaves 410 codes, not the 1,024 the file holds
        (lambda settings: settings[0].__setitem__("sparsity", 0.8), "implies groups=1, codes_per_group=410"),
        (
            lambda settings: settings[0].update(method="pq", subvector_size=2),
            "layer fcs.0.weight is shared d=1 k=4 but compress_config says method pq writes shared d=2 k=4",
        ),
        (
            lambda settings: settings.append(dataclasses.asdict(LayerSetting("fcs.9.weight", "float"))),
            "not a coded weight",
        ),
    ],
    ids=["sparsity", "method", "unknown-weight"],
)
def test_a_per_layer_file_that_lies_about_a_layer_is_refused(per_layer_blob, edit, message):
    with pytest.raises(NotACompressedModel, match=message):
        check_bytes(_with_setting(per_layer_blob, edit))


# ------------------------------------------------------------------------------------ the search


def test_the_model_fits_the_budget_by_the_ledger(tiny_run, tiny_store, small_grid):
    request = budget.BudgetRequest(budget_kb=1.0)
    allocation, record = budget.get_or_allocate(tiny_store, tiny_run, CompressConfig(), request)
    assert allocation is not None and allocation.evaluations <= allocation.plan.evaluations
    assert record.size.model_bits == allocation.model_bits <= request.budget_bits == 8_000
    assert record.compress_config == allocation.config and record.compress_config.family == "budget"
    assert record.row()["method"] == "budget"
    rows = allocation.layer_rows()
    assert [row["layer"] for row in rows] == list(NAMES)
    assert sum(row["bits"] for row in rows) + allocation.plan.rest_bits == record.size.model_bits
    # through the store: the same record, its file the chosen settings
    assert tiny_store.load_compression(tiny_run.run_id, allocation.config) == record
    assert tiny_store.load_compression_entry(tiny_run.run_id, record.key) == record
    _, meta = from_bytes(Path(record.file_path).read_bytes())
    assert CompressConfig.from_dict(meta["compress_config"]).per_layer == allocation.config.per_layer
    # asked again: the same search finds the same compression in the store
    again, record_again = budget.get_or_allocate(tiny_store, tiny_run, CompressConfig(), request)
    assert record_again == record and again is not None and again.config == allocation.config


def test_a_bigger_budget_never_gives_a_smaller_model(tiny_run, small_grid, counted):
    base = CompressConfig()
    data = load_dataset("digits")
    sizes = []
    for kb in (0.7, 1.0, 2.0, 6.0):
        allocation = budget.allocate_run(tiny_run, base, budget.BudgetRequest(budget_kb=kb), data=data)
        assert allocation.model_bits <= kb * budget.KB_BITS
        sizes.append(allocation.model_bits)
    assert sizes == sorted(sizes) and len(set(sizes)) > 1


def test_the_search_measures_on_the_training_split_only(tiny_run, small_grid, counted):
    data = load_dataset("digits")
    request = budget.BudgetRequest(budget_kb=1.0, holdout=300, seed=3)
    allocation = budget.allocate_run(tiny_run, CompressConfig(), request, data=data)
    index = torch.tensor(allocation.holdout_indices)
    assert len(index) == len(set(allocation.holdout_indices)) == 300
    assert int(index.min()) >= 0 and int(index.max()) < len(data.x_train)
    assert len(counted) == allocation.evaluations > 0
    for inputs in counted:  # every evaluation saw exactly the slice of the training split
        assert torch.equal(inputs, data.x_train[index])
    # the test split is another tensor: no held-out example is a test example (digits has no duplicate
    # image between its two splits at these indices)
    flat_test = {tuple(row.tolist()) for row in data.x_test.flatten(1)}
    assert not any(tuple(row.tolist()) in flat_test for row in data.x_train[index].flatten(1))
    assert torch.equal(index, budget.holdout_indices(len(data.x_train), 300, 3))  # seeded, fixed


def test_a_floor_keeps_its_drop_on_the_held_out_slice(tiny_run, small_grid):
    floor = tiny_run.test_accuracy - 0.03
    allocation = budget.allocate_run(tiny_run, CompressConfig(), budget.BudgetRequest(floor=floor))
    kept = allocation.float_heldout_accuracy - 0.03
    assert allocation.heldout_accuracy >= kept - 1e-12
    smaller = [s for s in allocation.path if s.model_bits < allocation.model_bits]
    assert all(s.measured_accuracy is not None and s.measured_accuracy < kept - 1e-12 for s in smaller)


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "request_args, message",
    [
        ({"budget_kb": 0.1}, r"a budget of 0.1 KB is below the smallest model these settings make \(0\.596 KB"),
        ({"floor": 0.999}, r"a floor of 99.90% is above the float model's own accuracy \(83\.06%\)"),
    ],
)
def test_an_impossible_request_is_one_line_before_any_evaluation(
    tiny_run, store, counted, monkeypatch, request_args, message
):
    def no_loading(*args, **kwargs):
        raise AssertionError("the dataset was loaded")

    monkeypatch.setattr(budget, "quantize_model", no_loading)
    monkeypatch.setattr("core.data.load_dataset", no_loading)
    request = budget.BudgetRequest(**request_args)
    with pytest.raises(ValueError, match=message):
        budget.allocate_run(tiny_run, CompressConfig(), request)
    with pytest.raises(ValueError, match=message):
        budget.submit_budget(store, tiny_run, CompressConfig(), request)
    assert counted == [] and job_manager(store).jobs() == []


@pytest.mark.parametrize(
    "args, message",
    [
        ({}, "give a size budget"),
        ({"budget_kb": 1.0, "floor": 0.5}, "give a size budget"),
        ({"budget_kb": -1.0}, "budget_kb=-1.0 must be a finite number > 0"),
        ({"budget_kb": float("nan")}, "budget_kb=nan"),
        ({"floor": 1.5}, "floor=1.5 must be a finite number"),
        ({"budget_kb": 1.0, "sparsities": (1.0,)}, "sparsity 1.0 must be from 0 up to"),
        ({"budget_kb": 1.0, "holdout": 0}, "holdout=0 must be a whole number"),
    ],
)
def test_a_bad_request_is_one_line(args, message):
    with pytest.raises(ValueError, match=message):
        budget.BudgetRequest(**args)


def test_a_run_pruned_in_training_is_searched_only_at_its_sparsity_or_more(tiny_run, counted, monkeypatch):
    """Before the fix the search ran on a pruned run at sparsity 0, and the compression it chose then
    failed `check_pruned_run`, after the whole search (bench/records.py --gradual --ratios)."""
    pruned = dataclasses.replace(tiny_run, config=dataclasses.replace(tiny_run.config, prune_sparsity=0.5))
    monkeypatch.setattr("core.data.load_dataset", lambda *a, **k: pytest.fail("the dataset was loaded"))
    for sparsities in [(0.0,), (0.0, 0.5), (0.25, 0.9)]:
        request = budget.BudgetRequest(budget_kb=10.0, sparsities=sparsities)
        with pytest.raises(ValueError, match=r"pruned to sparsity 0\.5 during training.*--budget-sparsities 0\.5"):
            budget.allocate_run(pruned, CompressConfig(), request)
    assert counted == []
    budget.plan_run(pruned, CompressConfig(), budget.BudgetRequest(budget_kb=10.0, sparsities=(0.5, 0.9)))


def test_a_search_stored_under_another_grid_is_not_this_one(monkeypatch):
    """The key holds the candidates' grid: a search stored before the grid changed is not served."""
    request, base = budget.BudgetRequest(budget_kb=10.0), CompressConfig()
    key = budget.budget_key("run", base, request)
    assert budget.budget_key("run", base, request) == key
    monkeypatch.setattr(budget, "PQ_SETTINGS", ((2, 16),))
    assert budget.budget_key("run", base, request) != key
    monkeypatch.undo()
    monkeypatch.setattr(budget, "KMEANS_CENTROIDS", (2, 4))
    assert budget.budget_key("run", base, request) != key


def test_a_base_that_cannot_share_its_fields_is_one_line(tiny_run):
    for base, message in [
        (CompressConfig(method="binarize"), "must be method kmeans or pq"),
        (CompressConfig(weighting="activations"), "weighting none"),
    ]:
        with pytest.raises(ValueError, match=message):
            budget.plan_run(tiny_run, base, budget.BudgetRequest(budget_kb=10.0))


# ---------------------------------------------------------------------------- the cli, the api


def test_the_cli_fits_a_budget_and_refuses_an_impossible_one(capsys, tiny_store, tiny_run, small_grid):
    root = str(tiny_store.root)
    assert main(["compress", tiny_run.run_id, "--budget-kb", "0.2", "--cache-dir", root]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "below the smallest model" in err
    code = main(["compress", tiny_run.run_id, "--budget-kb", "1.5", "--cache-dir", root, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["method"] == "budget" and out["model_bits"] <= 1.5 * budget.KB_BITS
    assert out["budget"]["model_bits"] == out["model_bits"] and len(out["budget"]["layers"]) == 3


def test_the_sweep_adds_one_search_a_budget_a_run(capsys, tiny_store, tiny_run, small_grid, tmp_path):
    table = tmp_path / "sweep.csv"
    argv = ["sweep", "--dataset", "digits", "--hidden", "32", "16", "--epochs", "2", "--lr", "3e-3",
            "--reg", "none", "--lam", "0", "--seed", "0", "--method", "float", "--budget-kb", "0.8", "1.5",
            "--csv", str(table), "--cache-dir", str(tiny_store.root), "--json"]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["method"] for r in rows] == ["float", "budget", "budget"]
    assert (
        rows[1]["model_bits"] <= 0.8 * budget.KB_BITS
        and rows[1]["model_bits"] <= rows[2]["model_bits"] <= 1.5 * budget.KB_BITS
    )
    assert all(r["run_id"] == tiny_run.run_id for r in rows) and table.read_text().count("\n") == 4


def test_the_job_publishes_a_record_the_page_finds(tiny_store, tiny_run, small_grid):
    request = budget.BudgetRequest(budget_kb=0.8)
    status = budget.submit_budget(tiny_store, tiny_run, CompressConfig(), request)
    final = job_manager(tiny_store).wait(status.key, timeout=600)
    assert final is not None and final.finished_ok
    record = budget.budget_record(tiny_store, tiny_run, final)
    assert record is not None and record.size.model_bits <= request.budget_bits


def test_the_api_allocates_for_your_own_module(small_grid):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    inputs = torch.randn(200, 12)
    targets = model(inputs).argmax(1)  # the float module is right on every example
    model.train()
    allocation = core.allocate(model, inputs, targets, budget_kb=0.5)
    assert model.training  # its mode given back
    packed = core.compress(model, allocation.config)
    assert packed.size.model_bits == allocation.model_bits <= 4_000
    with pytest.raises(ValueError, match="below the smallest model"):
        core.allocate(model, inputs, targets, budget_kb=0.01)
    with pytest.raises(ValueError, match="above the float model's own accuracy on these examples"):
        core.allocate(model, inputs, targets[torch.randperm(200)], floor=0.99)


# ------------------------------------------------------------------------------------- the page


def test_the_compress_page_fits_a_budget_as_a_job(lab_store, small_grid):
    from core.store import RunStore
    from tests.test_app import PLAIN, assert_clean, open_page, texts

    at = open_page("compress", {"run": PLAIN.run_id(), "method": "pq", "d": "2", "k": "8"})
    assert_clean(at)
    at.slider(key="budget_kb").set_value(1.0).run()
    assert_clean(at)
    assert "held-out evaluations" in texts(at.info)
    next(b for b in at.button if b.key == "budget_button").click().run()
    assert_clean(at)
    store = RunStore(lab_store)
    (job,) = [j for j in job_manager(store).jobs() if j.kind == "budget"]
    final = job_manager(store).wait(job.key, timeout=600)
    assert final is not None and final.finished_ok
    at.run()
    assert_clean(at)
    (table,) = at.dataframe
    assert list(table.value["layer"]) == list(NAMES) and table.value["bits"].sum() > 0
    shown = float(next(m.value for m in at.metric if m.label == "Model size").removesuffix(" KB"))
    assert shown <= 1.0
