"""The public API on odd models and clumsy arguments (issue 17, section 4): the float method, tensors
that are not finite, empty layers, shared weights, parametrized layers, meta-device modules, and
arguments of the wrong kind. Each either works end to end (compress, size, save, load) or is refused
with one ValueError line before any work; and core.Regularizer refuses exactly what TrainConfig does."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import core
from core.config import TrainConfig
from core.export import header_bytes
from core.methods import binarize_weight

METHODS = [
    core.CompressConfig(method="float"),
    core.CompressConfig(method="binarize"),
    core.CompressConfig(method="kmeans", n_centroids=4),
    core.CompressConfig(method="pq", subvector_size=2, n_centroids=4),
]


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU())
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def small(seed: int = 0) -> Small:
    torch.manual_seed(seed)
    return Small().eval()


def round_trip(packed: core.Compressed, into: nn.Module, tmp_path) -> nn.Module:
    """Save, check the file holds the accounted bits, load into `into`, check every tensor came back."""
    path = tmp_path / "model.safetensors"
    core.save(packed, path)
    blob = path.read_bytes()
    padding = len(blob) - header_bytes(blob) - packed.size.model_bits // 8
    assert 0 <= padding < len(packed.layers) + 1  # the file holds exactly what the size counts
    loaded = core.load(path, into=into)
    expected, got = packed.state_dict(), loaded.state_dict()
    assert list(got) == list(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    return loaded


def ids(cfg: core.CompressConfig) -> str:
    return cfg.label()


# ---------------------------------------------------------------------------------------- float


@pytest.mark.parametrize("layers", [None, ["*"], ["head"]])
def test_the_float_method_is_the_model_itself_at_ratio_one(tmp_path, layers):
    net = small()
    packed = core.compress(net, core.CompressConfig(method="float"), layers=layers)
    assert packed.layers == ()
    assert packed.size.model_ratio == 1.0 and packed.size.coded_ratio == 1.0
    n_values = sum(t.numel() * t.element_size() * 8 for t in net.state_dict().values())
    assert packed.size.model_bits == n_values  # counted once: the chosen weights are not also in the rest
    assert [row["ratio"] for row in packed.size.table()] == [1.0] * len(packed.size.layers) and packed.size.layers
    loaded = round_trip(packed, small(seed=1), tmp_path)
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("cfg", METHODS, ids=ids)
def test_a_bare_layer_is_a_model_too(tmp_path, cfg):
    """The root module itself an nn.Linear: its weight's key is 'weight', not '.weight'."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    packed = core.compress(layer, cfg)
    assert [row.name for row in packed.size.layers] == ["weight"]
    assert packed.size.totals.model_float_bits == 32 * (6 * 4 + 4)  # each tensor counted once
    torch.manual_seed(1)
    round_trip(packed, nn.Linear(6, 4), tmp_path)


# ----------------------------------------------------------------------------------- not finite


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("key", ["body.0.weight", "head.bias", "body.1.running_mean"])
@pytest.mark.parametrize("cfg", METHODS, ids=ids)
def test_a_tensor_that_is_not_finite_is_refused_before_work(key, value, cfg):
    net = small()
    with torch.no_grad():
        net.state_dict(keep_vars=True)[key].view(-1)[0] = value
    with pytest.raises(ValueError, match=rf"the model's tensor {key} holds NaN or infinite values"):
        core.compress(net, cfg, layers=["*"])


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_calibration_inputs_are_refused(value):
    x = torch.randn(32, 6)
    x[3, 2] = value
    cfg = core.CompressConfig(method="pq", subvector_size=2, n_centroids=4, weighting="activations")
    with pytest.raises(ValueError, match=r"calibration batch 0 holds NaN or infinite values"):
        core.compress(small(), cfg, calibration=[torch.randn(8, 6), x][1:])


@pytest.mark.parametrize("lr", [math.inf, math.nan, 0.0, -1e-3, 11.0, True, "0.1"])
def test_finetune_refuses_a_learning_rate_outside_its_bounds(lr):
    net = small()
    packed = core.compress(net, core.CompressConfig(method="kmeans", n_centroids=4))
    data = [(torch.randn(8, 6), torch.randint(3, (8,)))]
    with pytest.raises(ValueError, match=r"lr=.* must be a finite number > 0"):
        core.finetune(packed, net, nn.functional.cross_entropy, data, epochs=1, lr=lr)


def test_finetune_that_diverges_says_so_instead_of_returning_nan_centroids():
    net = small()
    packed = core.compress(net, core.CompressConfig(method="kmeans", n_centroids=4))
    data = [(torch.randn(8, 6), torch.randint(3, (8,)))]

    def nan_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return outputs.sum() * math.nan

    with pytest.raises(ValueError, match="centroids NaN or infinite"):
        core.finetune(packed, net, nan_loss, data, epochs=1, lr=1e-3, device="cpu")


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_binarize_of_a_weight_that_is_not_finite_is_refused(value):
    weight = torch.randn(4, 3)
    weight[1, 1] = value
    with pytest.raises(ValueError, match="binarize needs finite weights"):
        binarize_weight("w", weight)


def test_save_refuses_tensors_a_load_would_refuse(tmp_path):
    packed = core.compress(small(), core.CompressConfig(method="kmeans", n_centroids=4))
    packed.rest["head.bias"][0] = math.nan  # edited by hand after compress
    with pytest.raises(ValueError, match=r"tensor head\.bias holds NaN"):
        core.save(packed, tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()


# ----------------------------------------------------------------------------------- empty layers


class WithEmpty(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.no_inputs = nn.Linear(0, 5)  # weight (5, 0)
        self.no_outputs = nn.Linear(5, 0)  # weight (0, 5)
        self.real = nn.Linear(5, 4)


def with_empty(seed: int = 0) -> WithEmpty:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")  # torch's own, harmless here
        return WithEmpty()


@pytest.mark.parametrize("cfg", METHODS, ids=ids)
def test_empty_layers_are_skipped_and_cost_nothing(tmp_path, cfg):
    net = with_empty()
    packed = core.compress(net, cfg)
    assert [layer.name for layer in packed.layers] == ([] if cfg.method == "float" else ["real.weight"])
    assert [row.name for row in packed.size.layers] == ["real.weight"]
    alone = core.compress(nn.Linear(5, 4), cfg)  # the same layer without the empty ones
    assert packed.size.totals.fc_bits == alone.size.totals.fc_bits
    assert packed.size.model_bits == alone.size.model_bits + 32 * 5  # the empty layers' biases: 5 + 0 floats
    assert 1.0 <= packed.size.model_ratio < math.inf
    assert all(bool(torch.isfinite(t).all()) for t in packed.state_dict().values())
    round_trip(packed, with_empty(seed=1), tmp_path)


@pytest.mark.parametrize("layers", [["no_inputs"], ["no_*"]])
def test_a_selection_of_only_empty_layers_is_refused(layers):
    with pytest.raises(ValueError, match=r"match no nn\.Linear or nn\.Conv2d with weights"):
        core.compress(with_empty(), core.CompressConfig(method="kmeans", n_centroids=4), layers=layers)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        only_empty = nn.Sequential(nn.Linear(0, 5), nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match=r"this module has no nn\.Linear with weights: choose its layers"):
        core.compress(only_empty, core.CompressConfig(method="kmeans", n_centroids=4))


# ----------------------------------------------------------------------------------- shared weights


class TiedHead(nn.Module):
    """A language-model shape: the output head shares the embedding's matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.body = nn.Linear(6, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.emb(tokens))))


class SharedParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 6)
        self.second = nn.Linear(6, 6)
        self.second.weight = self.first.weight
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.second(torch.relu(self.first(x))))


class TwoNames(nn.Module):
    """One module registered under two names (its tensors appear twice in the state dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(6, 6)
        self.again = self.block
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.again(torch.relu(self.block(x))))


SHARED = [
    (TiedHead, {"head.weight": ["emb.weight"]}, lambda: torch.randint(10, (4, 3))),
    (SharedParameter, {"first.weight": ["second.weight"]}, lambda: torch.randn(4, 6)),
    (TwoNames, {"block.weight": ["again.weight"], "block.bias": ["again.bias"]}, lambda: torch.randn(4, 6)),
]


def build(cls: type[nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return cls().eval()


@pytest.mark.parametrize("cfg", METHODS[1:], ids=ids)
@pytest.mark.parametrize("cls, shared, inputs", SHARED, ids=lambda v: getattr(v, "__name__", ""))
def test_a_shared_tensor_is_coded_once_counted_once_and_restored_into_every_name(tmp_path, cls, shared, inputs, cfg):
    net = build(cls, 0)
    packed = core.compress(net, cfg, layers=["*"])
    names = [layer.name for layer in packed.layers]
    assert len(names) == len(set(names))
    for aliases in shared.values():
        assert not set(aliases) & set(names) and not set(aliases) & set(packed.rest)
    # every distinct tensor counted once: the float size is the module's distinct values
    distinct = {id(t): t for t in net.state_dict(keep_vars=True).values()}.values()
    assert packed.size.totals.model_float_bits == sum(t.numel() * t.element_size() * 8 for t in distinct)
    loaded = round_trip(packed, build(cls, 1), tmp_path)
    state = loaded.state_dict(keep_vars=True)
    decoded = packed.state_dict()
    for kept, aliases in shared.items():
        for alias in aliases:
            assert state[alias] is state[kept]  # still one tensor
            assert torch.equal(state[alias], decoded[kept])
    coded = packed.layers[0].name
    assert torch.equal(state[coded], packed.layers[0].decode())  # the decoded weight, not the float one
    x = inputs()
    reference = build(cls, 2)
    reference.load_state_dict(decoded)
    assert torch.equal(loaded(x), reference(x))


@pytest.mark.parametrize("cls, shared, inputs", SHARED, ids=lambda v: getattr(v, "__name__", ""))
def test_finetune_of_a_model_with_shared_tensors_keeps_them_shared(tmp_path, cls, shared, inputs):
    net = build(cls, 0)
    packed = core.compress(net, core.CompressConfig(method="kmeans", n_centroids=4), layers=["*"])
    x = inputs()
    targets = torch.randint(3, (x.shape[0],)) if cls is not TiedHead else torch.randint(10, (4, 3))

    def loss_fn(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), y.reshape(-1))

    tuned = core.finetune(packed, net, loss_fn, [(x, targets)], epochs=2, lr=1e-2, device="cpu")
    assert any(not torch.equal(a.codebooks, b.codebooks) for a, b in zip(tuned.layers, packed.layers))
    round_trip(tuned, build(cls, 1), tmp_path)


def old_weight_norm(layer: nn.Linear) -> nn.Module:
    with pytest.warns(FutureWarning):
        return torch.nn.utils.weight_norm(layer)


@pytest.mark.parametrize("parametrize", [old_weight_norm, torch.nn.utils.parametrizations.weight_norm])
def test_a_parametrized_weight_is_refused_and_the_other_layers_still_work(tmp_path, parametrize):
    def build_net() -> Small:
        net = small()
        net.head = parametrize(net.head)
        return net

    cfg = core.CompressConfig(method="kmeans", n_centroids=4)
    with pytest.raises(ValueError, match=r"layer head's weight is computed by a parametrization.*remove it first"):
        core.compress(build_net(), cfg)
    packed = core.compress(build_net(), cfg, layers=["body.*"])  # leave it out: it is kept as it is
    assert [layer.name for layer in packed.layers] == ["body.0.weight"]
    round_trip(packed, build_net(), tmp_path)


# ----------------------------------------------------------------------------------- meta device


def meta_small() -> Small:
    with torch.device("meta"):
        return Small()


def test_a_meta_model_is_refused_by_compress_finetune_and_load(tmp_path):
    with pytest.raises(ValueError, match=r"model's tensor body\.0\.weight is on the meta device.*to_empty"):
        core.compress(meta_small(), core.CompressConfig(method="kmeans", n_centroids=4))
    net = small()
    packed = core.compress(net, core.CompressConfig(method="kmeans", n_centroids=4))
    core.save(packed, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"into's tensor body\.0\.weight is on the meta device"):
        core.load(tmp_path / "model.safetensors", into=meta_small())
    with pytest.raises(ValueError, match="is on the meta device"):
        core.finetune(packed, meta_small(), nn.functional.cross_entropy, [], epochs=1)
    empty = meta_small().to_empty(device="cpu")  # the fix the message names
    assert torch.equal(core.load(tmp_path / "model.safetensors", into=empty).head.bias, net.head.bias)


# ----------------------------------------------------------------------------------- bad arguments

KMEANS = core.CompressConfig(method="kmeans", n_centroids=4)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: core.compress(small(), {"method": "pq"}), r"cfg must be a core\.CompressConfig, not a dict"),
        (lambda: core.compress(small(), KMEANS, layers=[None]), r"layers=\[None\] must be None"),
        (lambda: core.compress(small(), KMEANS, layers=5), "layers=5 must be None"),
        (lambda: core.compress({}, KMEANS), "model must be a torch.nn.Module instance, not a dict"),
        (lambda: core.compress(Small, KMEANS), "model is the class Small, not a module: pass an instance"),
        (
            lambda: core.compress(
                small(),
                core.CompressConfig(method="pq", subvector_size=2, n_centroids=4, weighting="activations"),
                calibration=torch.randn(8, 7),
            ),
            r"the model cannot run on calibration batch 0 of shape \[8, 7\] \(.*\): give batches of the model's",
        ),
        (
            lambda: core.compress(
                small(), core.CompressConfig(method="kmeans", weighting="activations"), calibration=[]
            ),
            "calibration holds no batch",
        ),
        (
            lambda: core.compress(
                small(), core.CompressConfig(method="kmeans", weighting="activations"), calibration=[[1.0] * 6]
            ),
            "calibration batch 0 is a list, not a tensor",
        ),
        (
            lambda: core.compress(small(), core.CompressConfig(method="kmeans", weighting="activations")),
            "needs calibration inputs",
        ),
        (lambda: core.load("model.safetensors", into={}), "into must be a torch.nn.Module instance, not a dict"),
        (lambda: core.load("model.safetensors", into=Small), "into is the class Small, not a module"),
        (lambda: core.save({}, "model.safetensors"), "compressed must be what core.compress returned"),
    ],
)
def test_a_wrong_argument_gets_one_clear_line(call, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("epochs", [-3, 1.5, True, "2", 10**6])
def test_finetune_refuses_a_number_of_epochs_outside_its_bounds(epochs):
    net = small()
    packed = core.compress(net, KMEANS)
    with pytest.raises(ValueError, match=r"epochs=.* must be a whole number from 0 to 1,000"):
        core.finetune(packed, net, nn.functional.cross_entropy, [(torch.randn(8, 6), torch.randint(3, (8,)))], epochs)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"compressed": {}}, "compressed must be what core.compress returned"),
        ({"model": nn.Linear(6, 3)}, "model is not the module that was compressed"),
        ({"loss_fn": "cross_entropy"}, "loss_fn must be a function"),
        ({"batches": []}, r"batches gave no \(inputs, targets\) pair"),
        ({"batches": iter([(torch.randn(8, 6), torch.randint(3, (8,)))])}, "batches is an iterator, used up"),
    ],
)
def test_finetune_refuses_what_it_cannot_use(arguments, message):
    net = small()
    given = {
        "compressed": core.compress(net, KMEANS),
        "model": net,
        "loss_fn": nn.functional.cross_entropy,
        "batches": [(torch.randn(8, 6), torch.randint(3, (8,)))],
        "epochs": 2,
        "device": "cpu",
    }
    with pytest.raises(ValueError, match=message):
        core.finetune(**(given | arguments))


# ----------------------------------------------------------------------------------- the regularizer

# (core.Regularizer's argument, TrainConfig's field, a bad value): one check for both
REGULARIZER_FIELDS = [
    ("lam", "lam", math.inf),
    ("lam", "lam", math.nan),
    ("lam", "lam", -0.1),
    ("lam", "lam", True),
    ("lam", "lam", 1e300),
    ("lam", "lam", "0.1"),
    ("warmup_epochs", "warmup_epochs", -2),
    ("warmup_epochs", "warmup_epochs", 1.7),
    ("warmup_start", "warmup_start", -5),
    ("levels", "reg_levels", 1),
    ("levels", "reg_levels", 0),
    ("levels", "reg_levels", -1),
    ("subvector_size", "reg_subvector_size", 0),
    ("n_centroids", "reg_centroids", 1),
    ("n_centroids", "reg_centroids", 0),
    ("seed", "seed", -1),
]


@pytest.mark.parametrize("argument, config_field, value", REGULARIZER_FIELDS)
def test_the_regularizer_refuses_what_train_config_refuses(argument, config_field, value):
    with pytest.raises(ValueError) as from_config:
        TrainConfig(**({"dataset": "digits", "reg": "levels", "lam": 0.1} | {config_field: value}))
    with pytest.raises(ValueError) as from_regularizer:
        core.Regularizer("levels", **({"lam": 0.1} | {argument: value}))
    assert str(from_regularizer.value) == str(from_config.value).replace(config_field, argument, 1)


@pytest.mark.parametrize("layers", [5, [None], [3, "head"], {"head": 1}.values()])
def test_the_regularizer_refuses_layers_that_are_not_patterns(layers):
    with pytest.raises(ValueError, match=r"must be None .*a module-name glob or a list of them"):
        core.Regularizer("binary", lam=0.1, layers=layers)


@pytest.mark.parametrize(
    "epoch, step, steps_per_epoch",
    [(0, 0, 0), (0, 0, -1), (0, 0, 1.5), (0, -1, 10), (0, 10, 10), (-1, 0, 10), (0.5, 0, 10)],
)
def test_lam_at_refuses_a_step_outside_an_epoch(epoch, step, steps_per_epoch):
    reg = core.Regularizer("binary", lam=0.1, warmup_epochs=2)
    with pytest.raises(ValueError, match=r"must be whole numbers|must be a whole number >= 1"):
        reg.lam_at(epoch, step, steps_per_epoch)


def test_the_regularizer_takes_what_train_config_takes():
    reg = core.Regularizer("pq", lam=2, warmup_epochs=3, warmup_start=1, subvector_size=2, n_centroids=4, seed=5)
    assert reg.lam == 2.0 and isinstance(reg.lam, float) and reg.active
    assert [reg.lam_at(epoch, 0, 4) for epoch in (0, 1, 2, 4)] == [0.0, 0.0, pytest.approx(2 / 3), 2.0]
    assert reg.layers is None and core.Regularizer("binary", 0.1, layers="head").layers == ["head"]


def test_the_regularizer_counts_a_shared_weight_once():
    """Two layers sharing one Parameter: the term acts on it once, as on the same model unshared."""
    shared = build(SharedParameter, 0)
    alone = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 3))
    alone.load_state_dict({"0.weight": shared.first.weight, "0.bias": shared.first.bias} | {
        "1.weight": shared.out.weight, "1.bias": shared.out.bias})  # fmt: skip
    reg = core.Regularizer("binary", lam=0.5)
    assert len(reg.weights(shared)) == 2
    assert torch.allclose(reg.penalty(shared), reg.penalty(alone))
    reg.add_gradient_(shared, 0.5)
    reg.add_gradient_(alone, 0.5)
    assert torch.allclose(shared.first.weight.grad, alone[0].weight.grad)
