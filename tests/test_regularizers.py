"""The regularizers: zero where docs/method.md says, gradients that match finite differences."""

from __future__ import annotations

import pytest
import torch

from core.config import TrainConfig
from core.models import build_model
from core.regularizers import TERMS, Regularizer, binary_penalty, levels_penalty, target_penalty


def test_binary_is_zero_at_plus_minus_alpha_and_positive_elsewhere():
    signs = torch.randint(0, 2, (20, 30), generator=torch.Generator().manual_seed(0)) * 2 - 1
    at_alpha = 0.37 * signs.float()
    assert float(binary_penalty([at_alpha])) < 1e-12
    assert float(binary_penalty([at_alpha, 2 * at_alpha])) < 1e-12  # scale-free, per layer alpha
    moved = at_alpha.clone()
    moved[0, 0] *= 1.5
    assert float(binary_penalty([moved])) > 0
    assert float(binary_penalty([torch.randn(20, 30)])) > 0.1


def test_binary_value_by_hand():
    w = torch.tensor([[1.0, -3.0]])  # alpha = 2
    expected = ((1 - 4) ** 2 + (9 - 4) ** 2) / 2 / 16
    assert abs(float(binary_penalty([w])) - expected) < 1e-6


def test_binary_gradient_matches_finite_differences():
    w = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    # alpha is a detached constant, so the reference holds alpha fixed as well.
    alpha_sq = w.detach().abs().mean() ** 2

    def penalty_fixed_alpha(x):
        return ((x * x - alpha_sq) ** 2).mean() / alpha_sq**2

    binary_penalty([w]).backward()
    eps = 1e-6
    numeric = torch.zeros_like(w)
    for i in range(w.numel()):
        step = torch.zeros(w.numel(), dtype=torch.float64)
        step[i] = eps
        step = step.reshape(w.shape)
        numeric.view(-1)[i] = (penalty_fixed_alpha(w.detach() + step) - penalty_fixed_alpha(w.detach() - step)) / (
            2 * eps
        )
    assert torch.allclose(w.grad, numeric, atol=1e-6)


def test_levels_and_target_penalties():
    w = torch.tensor([[0.5, -0.5, 0.5, -0.5]])
    assert float(levels_penalty([w], [torch.tensor([-0.5, 0.5])])) == 0
    assert float(levels_penalty([w + 0.1], [torch.tensor([-0.5, 0.5])])) > 0
    assert float(target_penalty([w], [w.clone()])) == 0
    assert float(target_penalty([w], [torch.zeros_like(w)])) > 0


def test_regularizer_refresh_and_warmup():
    model = build_model("mlp", (1, 8, 8), 10, (16,))
    for reg in ("levels", "pq"):
        cfg = TrainConfig(
            dataset="digits", hidden=(16,), reg=reg, lam=0.1, reg_subvector_size=4, reg_centroids=8, warmup_epochs=2
        )
        term = Regularizer.from_config(cfg)
        term.refresh(model, 0)
        value = term.penalty(model)
        assert value.requires_grad and float(value.detach()) > 0
        assert term.lam_at(0, 0, 10) == 0 and term.lam_at(1, 0, 10) == 0.05 and term.lam_at(5, 0, 10) == 0.1
    assert not Regularizer.from_config(TrainConfig(dataset="digits", reg="binary", lam=0)).active


def test_in_place_gradients_equal_autograd_of_the_penalty():
    """Training adds lam * dR/dW in closed form; it must be the gradient autograd gives for R."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 64), torch.randint(10, (32,))
    for reg in ("binary", "levels", "pq"):
        cfg = TrainConfig(
            dataset="digits", hidden=(16, 12), reg=reg, lam=0.3, reg_levels=3, reg_subvector_size=4, reg_centroids=8
        )
        grads = []
        for fused in (False, True):
            torch.manual_seed(1)  # the same weights for both
            model = build_model("mlp", (1, 8, 8), 10, (16, 12))
            term = Regularizer.from_config(cfg)
            term.refresh(model, 0)
            ce = torch.nn.functional.cross_entropy(model(x), y)
            if fused:
                ce.backward()
                value = term.add_gradient_(model, 0.3)
            else:
                value = term.penalty(model)
                (ce + 0.3 * value).backward()
            grads.append(([p.grad.clone() for p in model.parameters()], float(value.detach())))
        (autograd, value_a), (closed_form, value_c) = grads
        assert abs(value_a - value_c) < 1e-5 * max(1.0, value_a), reg
        for a, c in zip(autograd, closed_form):
            assert torch.allclose(a, c, rtol=1e-4, atol=1e-7), reg


@pytest.mark.parametrize("host_scalars", [True, False], ids=["cpu-scalars", "device-scalars"])
def test_fused_gradients_equal_autograd_over_steps_with_the_workspace_reused(host_scalars, monkeypatch):
    """The terms reuse one scratch vector a weight from step to step: still the autograd gradient
    at every step, as the weights move (binary, pq), on weights of uneven size; both with the scalars
    read back as floats (the CPU's path) and kept as tensors (a GPU's path, run here on the CPU)."""
    import core.regularizers as regularizers

    monkeypatch.setattr(regularizers, "_host_scalars", lambda tensor: host_scalars)
    torch.manual_seed(0)
    weights = [torch.randn(40, 70) * 0.05, torch.randn(9, 40) * 0.2, torch.randn(3, 9)]
    targets = [w + 0.01 * torch.randn_like(w) for w in weights]
    for kind in ("binary", "pq"):
        term = TERMS[kind](Regularizer(kind, 1.0, subvector_size=4, n_centroids=4))
        if kind == "pq":
            term.targets = targets  # type: ignore[attr-defined]
        for step in range(4):
            moved = [(w * (1 + 0.1 * step)).requires_grad_(True) for w in weights]
            if step % 2:  # the starter's way: written before a backward pass, which then accumulates
                value = term.step_(moved, 0.7, overwrite=True)
            else:
                value = term.add_gradient_(moved, 0.7)
            fused = [w.grad.clone() for w in moved]
            reference = [w.detach().clone().requires_grad_(True) for w in moved]
            penalty = term.penalty(reference)
            (0.7 * penalty).backward()
            p = float(penalty.detach())
            assert abs(float(value) - p) < 1e-5 * max(1.0, p), (kind, step)
            for f, r in zip(fused, reference):
                assert torch.allclose(f, r.grad, rtol=1e-4, atol=1e-8), (kind, step)


def test_warmup_start_holds_lam_at_zero_then_ramps():
    reg = Regularizer("binary", 0.2, warmup_epochs=2, warmup_start=3)
    assert [reg.lam_at(epoch, 0, 10) for epoch in (0, 2, 3, 4, 5, 9)] == [0.0, 0.0, 0.0, pytest.approx(0.1), 0.2, 0.2]
    assert reg.lam_at(2, 5, 10) == 0.0 and reg.lam_at(3, 5, 10) == pytest.approx(0.05)
    sudden = Regularizer("binary", 0.2, warmup_start=2)
    assert sudden.lam_at(1, 9, 10) == 0.0 and sudden.lam_at(2, 0, 10) == 0.2
    cfg = TrainConfig(dataset="digits", reg="binary", lam=0.1, warmup_start=2)
    assert Regularizer.from_config(cfg).warmup_start == 2
    # the field is left out of the run id at its default, and reset when there is no term
    assert "warmup_start" not in TrainConfig(dataset="digits").to_json()
    assert TrainConfig(dataset="digits", reg="none", warmup_start=4).warmup_start == 0


def test_starter_gradients_equal_autograd_and_the_other_parameters_start_from_none():
    """Training starts the gradients at lam * dR/dW and lets backward accumulate the task's on top:
    the gradient of ce + lam * R, for every parameter, over several steps of one optimizer."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 64), torch.randint(10, (32,))
    for reg in ("binary", "levels", "pq"):
        cfg = TrainConfig(
            dataset="digits", hidden=(16, 12), reg=reg, lam=0.3, reg_levels=3, reg_subvector_size=4, reg_centroids=8
        )
        torch.manual_seed(1)
        model = build_model("mlp", (1, 8, 8), 10, (16, 12))
        term = Regularizer.from_config(cfg)
        term.refresh(model, 0)
        start = term.starter(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(3):
            reference = build_model("mlp", (1, 8, 8), 10, (16, 12))
            reference.load_state_dict(model.state_dict())
            ((torch.nn.functional.cross_entropy(reference(x), y)) + 0.3 * term.penalty(reference)).backward()
            value = start(0.3)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            assert abs(float(value) - float(term.penalty(reference).detach())) < 1e-5, (reg, step)
            for (name, p), q in zip(model.named_parameters(), reference.parameters()):
                assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), (reg, step, name)
            optimizer.step()
