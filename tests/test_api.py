"""The public API on a model the tests define: nested nn.Sequential with Conv2d and Linear, shapes
that need padding; exact decode, save / load into a fresh instance, the file size against the
accounting, layer patterns, and the regularizer equal to the built-in training's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import core
from core.config import TrainConfig
from core.export import NotACompressedModel, header_bytes
from core.models import build_model
from core.pq import DoesNotFit


class Net(nn.Module):
    """Conv widths and FC widths that no usual d divides: every layer needs padding."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 7, 3), nn.BatchNorm2d(7), nn.ReLU()
        )  # fmt: skip
        hidden = nn.Sequential(nn.Linear(7 * 6 * 6, 13), nn.ReLU())  # 8x8 inputs: 6x6 after the second conv
        self.classifier = nn.Sequential(nn.Flatten(), hidden, nn.Linear(13, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def fresh(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    net.features[3].running_mean.uniform_(-1, 1)  # buffers that are not at their init
    net.features[3].num_batches_tracked.fill_(7)
    return net.eval()


WEIGHTS = ["features.0.weight", "features.2.weight", "classifier.1.0.weight", "classifier.2.weight"]


@pytest.mark.parametrize(
    "patterns, chosen",
    [
        (None, ["classifier.1.0.weight", "classifier.2.weight"]),  # default: every nn.Linear
        (["features.*"], ["features.0.weight", "features.2.weight"]),
        (["features.2", "classifier.2"], ["features.2.weight", "classifier.2.weight"]),
        ("classifier.*", ["classifier.1.0.weight", "classifier.2.weight"]),  # a bare string is one pattern
        (["*"], WEIGHTS),
    ],
)
def test_layer_patterns_select_exactly_what_they_say(patterns, chosen):
    packed = core.compress(fresh(), core.CompressConfig(method="kmeans", n_centroids=4), layers=patterns)
    assert [layer.name for layer in packed.layers] == chosen
    with pytest.raises(ValueError, match=r"match no nn\.Linear or nn\.Conv2d"):
        core.compress(fresh(), core.CompressConfig(), layers=["nothing.*"])


def test_decode_of_weights_built_from_known_centroids_is_exact():
    """Every weight is made of 4 known subvectors (d = 4); a row's padded last chunk is one of them cut
    short, then zero-padded: at most 8 distinct subvectors a layer, so k = 8 codes them exactly."""
    net = fresh()
    generator = torch.Generator().manual_seed(0)
    books = torch.randn(4, 4, generator=generator)  # (k, d): the centroids the weights are made of
    with torch.no_grad():
        for weight in [dict(net.named_parameters())[n] for n in WEIGHTS]:
            rows = weight.reshape(weight.shape[0], -1)  # (out, in * kh * kw)
            chunks = -(-rows.shape[1] // 4)
            picks = torch.randint(4, (rows.shape[0], chunks), generator=generator)
            full = books[picks].reshape(rows.shape[0], -1)  # (out, chunks * 4)
            # the last chunk's padding is zero in the coding, so the padded tail must be a centroid's head
            weight.copy_(full[:, : rows.shape[1]].reshape(weight.shape))
    cfg = core.CompressConfig(method="pq", subvector_size=4, n_centroids=8, kmeans_iters=30)
    packed = core.compress(net, cfg, layers=["*"])
    state = net.state_dict()
    for layer in packed.layers:
        assert layer.decode().shape == state[layer.name].shape
    # exact where the row is whole chunks; the padded tails are coded as their own subvectors
    decoded = packed.state_dict()
    for name in WEIGHTS:
        assert torch.allclose(decoded[name], state[name], atol=1e-6), name


@pytest.mark.parametrize(
    "cfg",
    [
        core.CompressConfig(method="pq", subvector_size=4, n_centroids=8),
        core.CompressConfig(method="pq", subvector_size=3, n_centroids=2, layout="per-chunk"),
        core.CompressConfig(method="kmeans", n_centroids=16, centroid_bits=16),
        core.CompressConfig(method="binarize"),
    ],
    ids=lambda c: c.label(),
)
def test_save_then_load_into_a_fresh_instance_and_the_file_size_is_the_accounting(tmp_path, cfg):
    net = fresh()
    packed = core.compress(net, cfg, layers=["*"])
    path = tmp_path / "net.safetensors"
    written = core.save(packed, path)
    blob = path.read_bytes()
    assert written == len(blob)
    padding = len(blob) - header_bytes(blob) - packed.size.model_bits // 8
    assert 0 <= padding < len(packed.layers) + 1  # under one byte a coded weight (bit packing)
    assert sum(row["code_bits"] + row["codebook_bits"] + row["scale_bits"] for row in packed.size.table()) == (
        packed.size.totals.fc_bits
    )
    loaded = core.load(path, into=fresh(seed=1))  # other random weights: all of them must be replaced
    expected = packed.state_dict()
    got = loaded.state_dict()
    assert list(got) == list(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key
    x = torch.randn(2, 3, 8, 8)
    reference = fresh()
    reference.load_state_dict(expected)
    assert torch.equal(loaded(x), reference.eval()(x))


def test_load_refuses_a_file_for_another_module_or_a_forged_one(tmp_path):
    packed = core.compress(fresh(), core.CompressConfig(method="kmeans", n_centroids=4))
    path = tmp_path / "net.safetensors"
    core.save(packed, path)

    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = nn.Linear(4, 2)

    with pytest.raises(NotACompressedModel, match="not a compressed model written by this tool"):
        core.load(path, into=Other())
    with pytest.raises(NotACompressedModel, match="no file"):
        core.load(tmp_path / "missing.safetensors", into=fresh())
    blob = path.read_bytes()
    needle = b'\\"n_centroids\\": 4'  # the metadata is JSON inside the header's JSON
    assert needle in blob
    forged = blob.replace(needle, b'\\"n_centroids\\": 2')
    (tmp_path / "forged.safetensors").write_bytes(forged)
    with pytest.raises(NotACompressedModel):
        core.load(tmp_path / "forged.safetensors", into=fresh())
    with pytest.raises(ValueError, match="is a folder"):
        core.save(packed, tmp_path)


def test_the_api_regularizer_gives_the_built_in_gradients():
    """core.Regularizer on a built-in network = the training's own regularizer (from its config)."""
    x, y = torch.randn(16, 1, 8, 8), torch.randint(10, (16,))
    for kind in ("binary", "levels", "pq"):
        cfg = TrainConfig(dataset="digits", hidden=(16, 12), reg=kind, lam=0.3, reg_levels=3,
                          reg_subvector_size=4, reg_centroids=8)  # fmt: skip
        grads = []
        for reg in (
            core.Regularizer.from_config(cfg),
            core.Regularizer(kind, lam=0.3, levels=3, subvector_size=4, n_centroids=8),
        ):
            torch.manual_seed(1)
            model = build_model("mlp", (1, 8, 8), 10, (16, 12))
            reg.refresh(model, 0)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            reg.add_gradient_(model, reg.lam_at(0, 0, 1))
            grads.append([p.grad.clone() for p in model.parameters()])
        assert all(torch.equal(a, b) for a, b in zip(*grads)), kind


def test_the_regularizer_on_conv_layers_matches_autograd():
    net = fresh()
    reg = core.Regularizer("pq", lam=0.5, layers=["features.*"], subvector_size=9, n_centroids=4)
    reg.refresh(net, 0)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(3, (4,))
    out = []
    for fused in (False, True):
        net.zero_grad()
        loss = torch.nn.functional.cross_entropy(net.train()(x), y)
        if fused:
            loss.backward()
            reg.add_gradient_(net, 0.5)
        else:
            (loss + 0.5 * reg.penalty(net)).backward()
        out.append([p.grad.clone() for p in net.parameters() if p.grad is not None])
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(*out))
    with pytest.raises(ValueError, match="unknown regularizer"):
        core.Regularizer("l1", lam=1)


def test_finetune_on_your_own_loss_lowers_it():
    net = fresh()
    packed = core.compress(net, core.CompressConfig(method="kmeans", n_centroids=2), layers=["*"])
    data = [(torch.randn(8, 3, 8, 8), torch.randint(3, (8,))) for _ in range(4)]

    def loss_of(state):
        model = fresh()
        model.load_state_dict(state)
        with torch.no_grad():
            return sum(float(torch.nn.functional.cross_entropy(model(x), y)) for x, y in data)

    tuned = core.finetune(packed, net, torch.nn.functional.cross_entropy, data, epochs=5, lr=1e-2, device="cpu")
    assert [q.codes.tolist() for q in tuned.layers] == [q.codes.tolist() for q in packed.layers]  # codes fixed
    assert loss_of(tuned.state_dict()) < loss_of(packed.state_dict())
    assert torch.equal(dict(net.named_parameters())["classifier.2.weight"], fresh().classifier[2].weight)


def test_a_setting_that_does_not_fit_says_which_layer():
    with pytest.raises(DoesNotFit, match=r"layer classifier\.2\.weight, which has 13 inputs"):
        core.compress(fresh(), core.CompressConfig(subvector_size=16, n_centroids=4))


@pytest.mark.slow
def test_torchvision_vgg11_end_to_end(tmp_path):
    """A torchvision model with random weights (no download): every Linear and Conv2d coded."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.vgg11(num_classes=10).eval()
    cfg = core.CompressConfig(method="pq", subvector_size=9, n_centroids=16, kmeans_iters=2)
    packed = core.compress(model, cfg, layers=["*"])
    assert len(packed.layers) == 11  # 8 convs + 3 linears
    assert packed.size.model_ratio > 10
    path = tmp_path / "vgg11.safetensors"
    core.save(packed, path)
    loaded = core.load(path, into=torchvision.models.vgg11(num_classes=10))
    x = torch.randn(1, 3, 64, 64)
    reference = torchvision.models.vgg11(num_classes=10)
    reference.load_state_dict(packed.state_dict())
    assert torch.equal(loaded(x), reference.eval()(x))


def test_finetune_leaves_your_module_as_it_was():
    """Its mode, its buffers (BatchNorm statistics move in train mode) and an earlier Compressed."""
    net = fresh()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    packed = core.compress(net, core.CompressConfig(method="kmeans", n_centroids=4), layers=["*"])
    rest_before = {k: v.clone() for k, v in packed.rest.items()}
    data = [(torch.randn(8, 3, 8, 8), torch.randint(3, (8,)))]
    core.finetune(packed, net, torch.nn.functional.cross_entropy, data, epochs=2, lr=1e-2, device="cpu")
    assert not net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(rest_before[k], v) for k, v in packed.rest.items())
