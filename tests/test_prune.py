"""Magnitude pruning before coding (core/prune.py): exact zeros, survivors coded, the mask stored and
counted exactly (bitmap, or entropy-coded), and the file's bytes equal to the ledger."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from core.compress import compress_run, retrain_survivors
from core.config import CompressConfig, TrainConfig
from core.data import DATASET_SOURCES, load_dataset
from core.export import (
    HEADER_BOUND,
    NotACompressedModel,
    build_payload,
    from_bytes,
    header_bytes,
    layers_from_payload,
    stored_code_bits,
    to_bytes,
)
from core.methods import quantize_model
from core.models import coded_weights
from core.pipeline import compression_cost_features, estimate_seconds, get_or_compress, get_or_train
from core.pq import DoesNotFit
from core.prune import GradualPruner, magnitude_mask, n_kept
from core.regularizers import binary_penalty, binary_step_
from core.size import size_report
from core.store import RunStore
from core.train import train
from tests.marks import fast_cases
from tests.test_app import assert_clean, open_page, texts
from tests.test_cli import TRAIN as CLI_TRAIN
from tests.test_cli import run_cli
from tests.tiny import TINY


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.999])
def test_magnitude_mask_prunes_the_smallest(sparsity):
    weight = torch.randn(30, 17, generator=torch.Generator().manual_seed(1))
    mask = magnitude_mask(weight, sparsity)
    assert mask.shape == weight.shape and int(mask.sum()) == n_kept(weight.numel(), sparsity)
    if 0 < mask.sum() < weight.numel():
        assert weight[mask].abs().min() >= weight[~mask].abs().max()


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.01, float("nan"), float("inf"), "0.5", True])
def test_a_bad_sparsity_is_one_line(bad):
    with pytest.raises(ValueError, match=r"must be a number from 0 \(no pruning\) up to but not including 1"):
        CompressConfig(sparsity=bad)


def test_pruning_needs_one_codebook_a_layer():
    with pytest.raises(ValueError, match="use layout shared"):
        CompressConfig(method="pq", subvector_size=2, n_centroids=4, layout="per-chunk", sparsity=0.5)


def test_default_keys_unchanged_and_float_ignores_pruning():
    assert "sparsity" not in CompressConfig().to_json()
    assert CompressConfig(sparsity=0).key() == CompressConfig().key()
    assert CompressConfig(method="float", sparsity=0.5) == CompressConfig(method="float")
    cfg = CompressConfig(method="kmeans", n_centroids=4, sparsity=0.8)
    assert cfg.label() == "prune 0.8 + kmeans k=4" and CompressConfig.from_dict(cfg.to_json()) == cfg


PRUNED = [
    CompressConfig(method="kmeans", n_centroids=8, sparsity=0.7),
    CompressConfig(method="kmeans", n_centroids=8, sparsity=0.7, entropy="ans"),
    CompressConfig(method="pq", subvector_size=2, n_centroids=16, sparsity=0.5),
    CompressConfig(method="binarize", sparsity=0.9, entropy="ans"),
    CompressConfig(method="rq", subvector_size=2, n_centroids=4, stages=2, sparsity=0.6),
    CompressConfig(method="kmeans", n_centroids=4, sparsity=0.8, finetune_epochs=1),
]


@fast_cases(2)
@pytest.mark.parametrize("cfg", PRUNED, ids=lambda c: c.label())
def test_pruned_file_holds_exact_zeros_and_its_bytes_are_the_ledger(tiny_store, cfg):
    run = tiny_store.list_runs()[0]
    record, blob = compress_run(run, cfg, device="cpu")
    tensors, meta = from_bytes(blob)
    state = run.state_dict()
    for info, layer in zip(meta["layers"], layers_from_payload(tensors, meta)):
        weight = state[layer.name]
        expected = magnitude_mask(weight, cfg.sparsity)
        assert layer.mask is not None and torch.equal(layer.mask, expected)
        decoded = layer.decode()
        assert bool((decoded[~expected] == 0).all())  # pruned weights: exact zeros, through fine-tuning too
        kept = n_kept(weight.numel(), cfg.sparsity)
        # the method coded the survivors only: (1, kept) of them
        assert layer.rows == (1, kept)
        assert info["mask"] in ("bitmap", "ans")
    # the shape-only ledger counts the survivors' codes and a bitmap of every weight
    shapes = [tuple(state[info["name"]].shape) for info in meta["layers"]]
    assert record.size.mask_bits == sum(math.prod(s) for s in shapes)
    assert record.size == dataclasses.replace(
        size_report(shapes, record.size.rest_bits // 32, cfg), entropy_code_bits=record.size.entropy_code_bits
    )
    # bytes on disk = the model bits as stored / 8 + under a byte of padding per packed stream + the header
    model_bits = record.size.entropy_model_bits
    if cfg.entropy == "none":
        assert stored_code_bits(tensors, meta) + record.size.codebook_bits + record.size.scale_bits == (
            record.size.fc_bits
        )
    overhead = len(blob) - model_bits / 8 - header_bytes(blob)
    assert 0 <= overhead < 2 * len(meta["layers"])
    assert header_bytes(blob) <= HEADER_BOUND and record.file_bytes == len(blob)


def test_pruning_then_coding_is_smaller_and_keeps_the_float_survivors_close(tiny_store):
    run = tiny_store.list_runs()[0]
    plain, _ = compress_run(run, CompressConfig(method="kmeans", n_centroids=16), device="cpu")
    pruned, _ = compress_run(run, CompressConfig(method="kmeans", n_centroids=16, sparsity=0.5), device="cpu")
    coded, _ = compress_run(
        run, CompressConfig(method="kmeans", n_centroids=16, sparsity=0.5, entropy="ans"), device="cpu"
    )
    assert pruned.size.fc_bits < plain.size.fc_bits  # half the codes, plus 1 bit a weight
    assert coded.size.entropy_fc_bits <= pruned.size.fc_bits


def _payload(run, cfg):
    layers = quantize_model(run.model(), cfg)
    return build_payload(run.state_dict(), layers, run.config, cfg, run.input_shape, run.n_classes)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, m: t.__setitem__("fcs.0.weight.mask", t["fcs.0.weight.mask"] ^ 1), "mask keeps"),
        (lambda t, m: t.__setitem__("fcs.0.weight.mask", t["fcs.0.weight.mask"][:-1].clone()), "its 2,048 weights"),
        (lambda t, m: m["layers"][0].__setitem__("mask", "rle"), "stores its mask as 'rle'"),
        (lambda t, m: t.pop("fcs.0.weight.mask"), "no 1-D U8 fcs.0.weight.mask"),
    ],
)  # fmt: skip
def test_the_reader_refuses_a_bad_mask(tiny_store, change, message):
    run = tiny_store.list_runs()[0]
    tensors, meta = _payload(run, CompressConfig(method="kmeans", n_centroids=4, sparsity=0.6))
    assert meta["layers"][0]["name"] == "fcs.0.weight"
    change(tensors, meta)
    with pytest.raises(NotACompressedModel, match=message):
        from_bytes(to_bytes(tensors, meta))


def test_a_too_narrow_survivor_row_does_not_fit(tiny_store):
    from core.pipeline import get_or_compress
    from core.pq import DoesNotFit

    run = tiny_store.list_runs()[0]
    # the 16 x 10 output layer keeps 2 of 160 weights at s = 0.99: d = 4 is wider than its survivors
    with pytest.raises(DoesNotFit, match="d=4"):
        get_or_compress(tiny_store, run, CompressConfig(method="pq", subvector_size=4, n_centroids=4, sparsity=0.99))


def test_compress_page_prunes_and_draws_the_pruned_weights_apart(lab_store):
    from tests.test_app import PLAIN, assert_clean, open_page

    at = open_page("compress", {"run": PLAIN.run_id(), "method": "kmeans", "k": "4"})
    assert_clean(at)
    at.select_slider(key="sparsity").set_value(0.8).run()
    assert_clean(at)
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    names = [trace.get("name", "") for spec in specs for trace in spec["data"]]
    assert any(name.startswith("pruned weights") for name in names)


RETRAINED = CompressConfig(method="kmeans", n_centroids=4, sparsity=0.8, prune_finetune_epochs=2)
RETRAIN_QUERY = {"method": "kmeans", "k": "4", "sparsity": "80%", "retrain": "2"}


@pytest.mark.usefixtures("tiny_run_in_store")
def test_the_compress_page_offers_retraining_the_survivors_as_a_job(store):
    """The "Retrain the survivors" control: read from the link, enabled only for a coding method that
    prunes, and priced by the planner: a retraining is expensive (passes over the training set), so it is
    offered as a job with its estimate, never run by the link itself."""
    from core.jobs import JobManager
    from core.pipeline import PlanKind, compression_key, plan_compression
    from views.compress import fmt_seconds

    run = store.load_run(TrainConfig(**TINY).run_id())
    plan = plan_compression(store, run, RETRAINED)
    assert plan.kind is PlanKind.EXPENSIVE  # one epoch over the training set alone is over the cheap bound
    unretrained = plan_compression(store, run, dataclasses.replace(RETRAINED, prune_finetune_epochs=0))
    assert unretrained.kind is PlanKind.CHEAP and unretrained.seconds < plan.seconds
    at = open_page("compress", {"run": run.run_id, **RETRAIN_QUERY})
    assert_clean(at)
    assert not at.warning
    retrain = at.number_input(key="retrain")
    assert retrain.value == 2 and not retrain.disabled
    assert at.query_params["retrain"] == "2" and at.query_params["sparsity"] == "80%"
    assert "prune 0.8 +rt2 + kmeans k=4" in texts(at.info) and "2 epochs of retraining the survivors" in texts(at.info)
    assert [b.label for b in at.button if b.label.startswith("Compute")] == [
        f"Compute (about {fmt_seconds(plan.seconds)})"
    ]
    assert JobManager(store.root).status(compression_key(run.run_id, RETRAINED)) is None  # nothing started
    # nothing pruned, or a method that codes nothing: the control is off (and the config drops it)
    for query in ({"sparsity": "off"}, {"method": "float"}):
        at = open_page("compress", {"run": run.run_id, **RETRAIN_QUERY, **query})
        assert_clean(at)
        assert at.number_input(key="retrain").disabled
        assert not [b for b in at.button if b.label.startswith("Compute")]  # cheap: no retraining to offer


@pytest.mark.parametrize("epochs", ["4", "10"])
@pytest.mark.usefixtures("tiny_run_in_store")
def test_a_link_to_any_stored_retraining_reopens_it(store, epochs):
    """The control was a 0/1/2/3/5 slider, so a compression retrained 4 or 10 epochs (the CLI takes up to
    the epochs limit) reopened from its link as 0, another compression."""
    run_id = TrainConfig(**TINY).run_id()
    at = open_page("compress", {"run": run_id, **RETRAIN_QUERY, "retrain": epochs})
    assert_clean(at)
    assert not at.warning and at.number_input(key="retrain").value == int(epochs)
    assert at.query_params["retrain"] == epochs and f"+rt{epochs}" in texts(at.info)


@fast_cases(1)
@pytest.mark.parametrize("forged", ["99", "-1", "1e400", "2<script>", "two"])
@pytest.mark.usefixtures("tiny_run_in_store")
def test_a_forged_retraining_in_the_link_is_one_line_and_the_page_still_works(store, forged):
    run_id = TrainConfig(**TINY).run_id()
    at = open_page("compress", {"run": run_id, **RETRAIN_QUERY, "retrain": forged})
    assert_clean(at)
    warnings = [str(w.value) for w in at.warning]
    assert len(warnings) == 1 and "retrain" in warnings[0] and "showing 0 instead" in warnings[0]
    assert "<script>" not in warnings[0]  # shown as text
    assert at.number_input(key="retrain").value == 0 and "retrain" not in at.query_params
    assert "Accuracy after" in [m.label for m in at.metric]  # the setting without retraining, computed


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_run_in_store")
def test_the_compress_page_retrains_the_survivors_when_asked(store):
    from core.jobs import JobManager
    from core.pipeline import compression_key

    run_id = TrainConfig(**TINY).run_id()
    at = open_page("compress", {"run": run_id, **RETRAIN_QUERY})
    at.button(key="compute_button").click().run()
    assert_clean(at)
    status = JobManager(store.root).wait(compression_key(run_id, RETRAINED), timeout=120)
    assert status is not None and status.terminal, status
    at.run()
    assert_clean(at)
    record = store.load_compression(run_id, RETRAINED)
    assert record is not None and record.compress_config.prune_finetune_epochs == 2
    assert f"{RETRAINED.label()} on run {run_id[:6]}" in texts(at.subheader)


def test_the_sweep_grid_carries_both_stages_to_every_coding_method():
    from core.experiments import compression_grid

    cfgs = compression_grid(["float", "kmeans", "pq"], [2], [4], fixed={"entropy": "ans", "sparsity": 0.5})
    by_method = {cfg.method: cfg for cfg in cfgs}
    assert by_method["float"] == CompressConfig(method="float")
    for method in ("kmeans", "pq"):
        assert by_method[method].entropy == "ans" and by_method[method].sparsity == 0.5


# ---------------------------------------------------------------------- gradual pruning during training

GRADUAL = dict(TINY, epochs=3, prune_sparsity=0.75, prune_start_epoch=0, prune_epochs=2)


def _coded_zeros(run) -> dict[str, tuple[int, int]]:
    """(zeros, weights) of each coded (FC) weight of a run."""
    state = run.state_dict()
    return {layer.name: (int((state[layer.name] == 0).sum()), state[layer.name].numel()) for layer in run.layers}


@pytest.fixture(scope="module")
def gradual_runs(tmp_path_factory):
    """A tiny run pruned gradually without and with the binarizing term, each trained once."""
    store = RunStore(tmp_path_factory.mktemp("gradual-store"))
    plain, _ = get_or_train(store, TrainConfig(**GRADUAL))
    binary, _ = get_or_train(store, TrainConfig(**GRADUAL, reg="binary", lam=0.05))
    return store, plain, binary


def test_the_schedule_is_zhu_and_gupta_cubic_exact_at_its_ends():
    cfg = TrainConfig(**dict(TINY, epochs=5), prune_sparsity=0.9, prune_start_epoch=1, prune_epochs=3)
    assert cfg.prune_schedule(0.0) == 0.0 and cfg.prune_schedule(1.0) == 0.0  # nothing before the start
    assert cfg.prune_schedule(4.0) == 0.9 and cfg.prune_schedule(5.0) == 0.9  # s_f from the end on
    assert cfg.prune_schedule(2.5) == pytest.approx(0.9 * (1 - 0.5**3))  # s_f (1 - (1 - t/T)^3)
    values = [cfg.prune_schedule(t / 10) for t in range(51)]
    assert values == sorted(values)  # never decreasing: a pruned weight stays pruned
    assert TrainConfig(**TINY).prune_schedule(1.0) == 0.0  # off


@pytest.mark.parametrize("variant", ["plain", "binary"])
def test_gradual_pruning_reaches_its_sparsity_exactly(gradual_runs, variant):
    _, plain, binary = gradual_runs
    run = {"plain": plain, "binary": binary}[variant]
    for name, (zeros, n) in _coded_zeros(run).items():
        assert zeros == n - n_kept(n, 0.75), name  # floor(s * n) exact zeros, as post-training pruning
    assert all(math.isfinite(epoch.loss) for epoch in run.history)
    assert run.test_accuracy > 0.5  # it still learned (10 classes: chance is 0.1)


def test_the_binary_term_combines_with_pruning_over_the_survivors(gradual_runs):
    _, plain, binary = gradual_runs
    assert binary.config.label() == "binary λ=0.05 prune 0.75" and binary.run_id != plain.run_id
    assert 0 < binary.history[-1].reg < binary.history[0].reg  # the term still acts, and falls
    # the survivors' magnitudes: the term (alpha over the survivors) pulls them together, not to zero
    state = binary.state_dict()
    for layer in binary.layers:
        survivors = state[layer.name][state[layer.name] != 0].abs()
        assert survivors.min() > 0 and survivors.std() / survivors.mean() < 1.0


@pytest.mark.slow
def test_the_mask_holds_through_training(monkeypatch):
    """Each pruning step keeps what the one before pruned, and between steps the zeros stay zeros."""
    seen: list[list[torch.Tensor]] = []
    original = GradualPruner.apply_

    def recording_apply(self):
        original(self)
        if self.masks is not None:
            for weight, mask in zip(self.weights, self.masks):
                assert not weight.detach()[~mask].any()
            if not seen or any(m.data_ptr() != s.data_ptr() for m, s in zip(self.masks, seen[-1])):
                seen.append(list(self.masks))

    monkeypatch.setattr(GradualPruner, "apply_", recording_apply)
    train(TrainConfig(**GRADUAL), device="cpu")
    assert len(seen) >= 10  # the sparsity rose in several pruning steps
    for before, after in itertools.pairwise(seen):
        for old, new in zip(before, after):
            assert not (new & ~old).any()  # nothing pruned comes back
    assert [int((~m).sum()) for m in seen[-1]] == [n - n_kept(n, 0.75) for n in (m.numel() for m in seen[-1])]


def test_the_binary_term_over_survivors_closed_form_equals_autograd():
    generator = torch.Generator().manual_seed(3)
    weights = [torch.randn(20, 13, generator=generator), torch.randn(7, 20, generator=generator)]
    masks = [magnitude_mask(w, s) for w, s in zip(weights, (0.6, 0.3))]
    leaves = [(w * m).requires_grad_(True) for w, m in zip(weights, masks)]
    expected = binary_penalty(leaves, masks)
    expected.backward()
    closed = [w.detach().clone() for w in leaves]
    penalty = binary_step_(closed, 0.5, overwrite=True, kept=[int(m.sum()) for m in masks])
    assert penalty == pytest.approx(float(expected.detach()), rel=1e-5)
    for leaf, mine in zip(leaves, closed):
        assert leaf.grad is not None and mine.grad is not None
        torch.testing.assert_close(mine.grad, 0.5 * leaf.grad, rtol=1e-5, atol=1e-7)


def test_default_run_ids_and_keys_are_those_of_main():
    """The new fields at their defaults (or reset: no pruning) leave every existing run id and key as it was
    (pinned from main before pruning during training existed)."""
    assert TrainConfig().run_id() == "72e2f0ea83e22432"
    assert TrainConfig(**TINY).run_id() == "d2bcaaba5aa11d57"
    assert TrainConfig(reg="binary", lam=0.02).run_id() == "25414de1c0da29e7"
    lenet = dict(model="lenet5", reg="binary", lam=0.1, reg_targets="fc+conv")
    assert TrainConfig(**lenet).run_id() == "40e4e59069fd98f0"
    assert TrainConfig(prune_sparsity=0, prune_start_epoch=3, prune_epochs=4).run_id() == "72e2f0ea83e22432"
    assert not any(key.startswith("prune") for key in TrainConfig().to_json())
    assert CompressConfig().key() == "be4e19cb276bed27"
    assert CompressConfig(method="kmeans", n_centroids=4, sparsity=0.8).key() == "fb8cfe970e23bc8c"
    assert CompressConfig(method="kmeans", n_centroids=4, prune_finetune_epochs=3) == CompressConfig(
        method="kmeans", n_centroids=4
    )  # nothing pruned, nothing to retrain
    assert "prune_finetune_epochs" not in CompressConfig(sparsity=0.5).to_json()


def test_only_a_pruned_levels_or_pq_run_moved_its_id_when_their_terms_learned_the_survivors():
    """levels and pq over the survivors change what a pruned levels / pq run trains: its id moved (pinned
    from the commit before), so an entry trained the old way is never served; every other id is as it was."""
    pruned = dict(GRADUAL, lam=0.05)
    assert TrainConfig(**pruned, reg="binary").run_id() == "e4fdac4dcb3d350e"  # binary: always the survivors
    assert TrainConfig(reg="levels", lam=0.1).run_id() == "5b446ecf0764513a"  # unpruned: as before
    assert TrainConfig(reg="pq", lam=0.1).run_id() == "92b00a0f3d5c5ddb"
    old = {"levels": "055d9691eda29e65", "pq": "0f2613b9f074181a"}  # their ids before
    for reg, before in old.items():
        cfg = TrainConfig(**pruned, reg=reg)
        assert cfg.run_id() != before and "terms_over_survivors" not in cfg.to_json()


@pytest.mark.slow
def test_the_levels_term_combines_with_pruning_over_the_survivors(tmp_path):
    """A levels run pruned gradually: the exact sparsity, and its term (over the survivors) falls; the
    survivors gather at the levels the term fits on them, far from the zeros."""
    from core.regularizers import fit_levels

    cfg = TrainConfig(**GRADUAL, reg="levels", lam=0.5, reg_levels=2)
    run, _ = get_or_train(RunStore(tmp_path / "store"), cfg)
    for name, (zeros, n) in _coded_zeros(run).items():
        assert zeros == n - n_kept(n, 0.75), name
    assert 0 < run.history[-1].reg < run.history[0].reg
    state = run.state_dict()
    for layer in run.layers:
        weight = state[layer.name]
        levels = fit_levels(weight, 2, mask=weight != 0)
        assert levels.abs().min() > 0.5 * weight[weight != 0].abs().mean()  # no level at the zeros


def test_pruning_keeps_the_conv_targets_without_a_regularizer():
    cfg = TrainConfig(model="lenet5", epochs=2, reg_targets="fc+conv", prune_sparsity=0.5)
    assert cfg.reg_targets == "fc+conv" and cfg.label() == "none (λ=0) prune 0.5 +conv"
    assert TrainConfig(model="lenet5", reg_targets="fc+conv").reg_targets == "fc"  # nothing to act on


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(prune_sparsity=1.0), r"prune_sparsity=1\.0 must be a number from 0 \(no pruning\) up to"),
        (dict(prune_sparsity=-0.1), "prune_sparsity=-0.1 must be a number from 0"),
        (dict(prune_sparsity=float("nan")), "prune_sparsity=nan must be a number from 0"),
        (dict(prune_sparsity="0.5"), "prune_sparsity='0.5' must be a number from 0"),
        (dict(prune_sparsity=True), "prune_sparsity=True must be a number from 0"),
        (dict(prune_sparsity=0.5, prune_start_epoch=2, prune_epochs=1), "is more than epochs"),
        (dict(prune_sparsity=0.5, prune_epochs=3), "is more than epochs"),
        (dict(prune_sparsity=0.5, prune_epochs=0), "prune_epochs=0 must be a whole number from 1"),
        (dict(prune_sparsity=0.5, prune_start_epoch=-1), "prune_start_epoch=-1 must be a whole number from 0"),
    ],
)
def test_bad_pruning_settings_are_one_line(fields, message):
    with pytest.raises(ValueError, match=message) as error:
        TrainConfig(**dict(TINY, **fields))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_a_bad_retraining_length_is_one_line(bad):
    with pytest.raises(ValueError, match=r"prune_finetune_epochs=.* must be a whole number from 0"):
        CompressConfig(method="kmeans", n_centroids=4, sparsity=0.5, prune_finetune_epochs=bad)


def test_the_cli_refuses_a_bad_sparsity_before_any_work(capsys, tmp_path):
    cache = tmp_path / "cache"
    code, out, err = run_cli(capsys, *CLI_TRAIN, "--prune-sparsity", "1.5", "--cache-dir", str(cache))
    assert code == 2 and out == "" and err.count("\n") == 1 and "prune_sparsity=1.5 must be" in err
    code, _, err = run_cli(
        capsys, *CLI_TRAIN, "--prune-sparsity", "0.5", "--prune-epochs", "3", "--cache-dir", str(cache)
    )
    assert code == 2 and "is more than epochs" in err
    assert not (cache / "runs").exists()


# ------------------------------------------------------------------------ compressing a pruned run


def test_a_pruned_run_is_coded_at_its_sparsity_or_more(gradual_runs):
    store, plain, _ = gradual_runs
    with pytest.raises(
        DoesNotFit, match=r"pruned to sparsity 0\.75 during training: compress it with sparsity >= 0\.75"
    ):
        get_or_compress(store, plain, CompressConfig(method="kmeans", n_centroids=4, sparsity=0.5))
    assert store.load_compression(plain.run_id, CompressConfig(method="kmeans", n_centroids=4, sparsity=0.5)) is None
    float_record, _ = get_or_compress(store, plain, CompressConfig(method="float"))  # codes nothing: allowed
    assert float_record.accuracy == plain.test_accuracy
    cfg = CompressConfig(method="kmeans", n_centroids=4, sparsity=0.75)
    record, _ = get_or_compress(store, plain, cfg)
    tensors, meta = from_bytes(Path(record.file_path).read_bytes())
    state = plain.state_dict()
    for layer in layers_from_payload(tensors, meta):
        decoded = layer.decode()
        # the stored mask is the run's zeros: the survivors alone are coded, every pruned weight stays 0
        assert torch.equal(decoded == 0, state[layer.name] == 0)


@pytest.mark.slow
def test_retraining_the_survivors_keeps_the_mask_and_lowers_the_loss(tiny_store):
    run = tiny_store.load_run(TrainConfig(**TINY).run_id())
    data = load_dataset("digits")
    cfg = CompressConfig(method="kmeans", n_centroids=4, sparsity=0.8, prune_finetune_epochs=3)
    model = run.model()
    masks = {name: magnitude_mask(weight, 0.8) for name, weight in coded_weights(model, "fc")}
    pruned = run.model()
    with torch.no_grad():
        for name, weight in coded_weights(pruned, "fc"):
            weight.mul_(masks[name])
    steps: list[int] = []
    state = retrain_survivors(model, data, cfg, 64, run.config.lr, torch.device("cpu"), on_step=steps.append)
    assert steps[-1] == 3 * math.ceil(len(data.x_train) / 64)
    for name, mask in masks.items():
        assert not state[name][~mask].any() and state[name][mask].ne(0).all()  # pruned: 0; survivors: moved
    retrained = run.model(state)

    def train_loss(net):
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(net(data.x_train), data.y_train))

    assert train_loss(retrained) <= train_loss(pruned)
    before, _ = compress_run(run, dataclasses.replace(cfg, prune_finetune_epochs=0), data=data, device="cpu")
    after, _ = compress_run(run, cfg, data=data, device="cpu")
    assert after.compress_config.label() == "prune 0.8 +rt3 + kmeans k=4"
    assert after.size == before.size  # the same mask, codes and codebooks: only their values differ
    assert after.accuracy >= before.accuracy
    assert after.key != before.key


def test_the_estimate_prices_the_retraining(tiny_store):
    run = tiny_store.load_run(TrainConfig(**TINY).run_id())
    base = CompressConfig(method="kmeans", n_centroids=4, sparsity=0.8)
    more = dataclasses.replace(base, prune_finetune_epochs=2)
    steps = math.ceil(DATASET_SOURCES["digits"].n_train / run.config.batch_size)
    assert (
        compression_cost_features(run, more)["finetune_steps"]
        == compression_cost_features(run, base)["finetune_steps"] + 2 * steps
    )
    assert estimate_seconds(run, more) > estimate_seconds(run, base)


def test_the_train_page_prunes_only_when_asked(empty_store):
    at = open_page("train", {"dataset": "digits"})
    assert_clean(at)
    plain_id = TrainConfig(**dict(TrainConfig().to_json(), dataset="digits", reg="binary", lam=0.01)).run_id()
    assert plain_id in texts(at.info)  # pruning off: the run id of the page before pruning existed
    assert at.select_slider(key="prune_sparsity").disabled and at.number_input(key="prune_start").disabled
    at.toggle(key="prune").set_value(True).run()
    assert_clean(at)
    assert not at.select_slider(key="prune_sparsity").disabled
    pruned = TrainConfig(
        **dict(TrainConfig().to_json(), dataset="digits", reg="binary", lam=0.01, prune_sparsity=0.9)
    ).run_id()
    assert pruned in texts(at.info)
    at.number_input(key="prune_start").set_value(5).run()  # 5 epochs: a schedule past the end
    assert_clean(at)
    assert "is more than epochs" in texts(at.error)
