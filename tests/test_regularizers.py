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


# ------------------------------------------------------------------ levels and pq over the survivors


def _pruned_weights(seed: int = 4) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Three weights of uneven size, pruned by magnitude (their zeros exact, as training keeps them)."""
    from core.prune import magnitude_mask

    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(24, 40, generator=generator) * 0.05, torch.randn(9, 24, generator=generator) * 0.2]
    weights.append(torch.randn(3, 9, generator=generator))
    masks = [magnitude_mask(w, s) for w, s in zip(weights, (0.75, 0.5, 0.3))]
    return [w * m for w, m in zip(weights, masks)], masks


def _old_target_step(weights, targets, lam, on_cpu):
    """target_step_ (with overwrite) as it was before pruning (commit d5a4240): the unpruned reference."""
    total = 0.0 if on_cpu else weights[0].new_zeros(())
    for weight, target in zip(weights, targets):
        flat = weight.detach().reshape(-1)
        n = flat.numel()
        diff = torch.sub(flat, target.reshape(-1))
        if on_cpu:
            mean = float(flat.sum()) / n
            scale = max((float(torch.dot(flat, flat)) - n * mean * mean) / max(n - 1, 1), 1e-12) * n
            total += float(torch.dot(diff, diff)) / scale
            weight.grad = torch.mul(diff, 2 * lam / scale).view_as(weight)
        else:
            scale_t = flat.var().clamp_min(1e-12) * n
            total += torch.dot(diff, diff) / scale_t
            weight.grad = torch.mul(diff, 2 * lam / scale_t).view_as(weight)
    return total


@pytest.mark.parametrize("host_scalars", [True, False], ids=["cpu-scalars", "device-scalars"])
def test_an_unpruned_levels_or_pq_term_is_bit_identical_to_the_code_before_pruning(host_scalars, monkeypatch):
    """Without masks the terms take exactly the path they took before they learned the survivors: the same
    levels, the same PQ targets, the same penalty and gradient bits (so an unpruned run trains as before)."""
    import core.regularizers as regularizers
    from core.pq import QuantizedLayer, as_rows, kmeans, to_groups, to_subvectors

    monkeypatch.setattr(regularizers, "_host_scalars", lambda tensor: host_scalars)
    generator = torch.Generator().manual_seed(5)
    weights = [torch.randn(24, 40, generator=generator) * 0.05, torch.randn(9, 24, generator=generator)]
    for kind in ("levels", "pq"):
        term = TERMS[kind](Regularizer(kind, 1.0, levels=3, subvector_size=4, n_centroids=8))
        term.refresh(weights, 7)
        if kind == "levels":  # the old fit: k-means of every weight, then each weight's nearest level
            old_levels = [kmeans(w.float().reshape(1, -1, 1), 3, n_iter=10, seed=7)[0].reshape(-1) for w in weights]
            assert all(torch.equal(a, b) for a, b in zip(term.levels, old_levels))  # type: ignore[attr-defined]
            targets = [regularizers.nearest_levels(w, levels) for w, levels in zip(weights, old_levels)]
        else:  # the old fit: PQ of the rows, one shared codebook
            targets = []
            for w in weights:
                grouped = to_groups(to_subvectors(as_rows(w.float()), 4), "shared")
                centroids, codes = kmeans(grouped, 8, n_iter=10, seed=7)
                targets.append(QuantizedLayer("target", tuple(w.shape), 4, "shared", centroids, codes).decode())
            assert all(torch.equal(a, b) for a, b in zip(term.targets, targets))  # type: ignore[attr-defined]
        mine = [w.clone().requires_grad_(True) for w in weights]
        theirs = [w.clone().requires_grad_(True) for w in weights]
        value = term.step_(mine, 0.7, overwrite=True)
        old = _old_target_step(theirs, targets, 0.7, host_scalars)
        assert float(value) == float(old), kind
        assert all(torch.equal(a.grad, b.grad) for a, b in zip(mine, theirs)), kind
        # the autograd penalty too: the same expression as before, bit for bit
        if kind == "levels":
            expected = sum(
                ((w.unsqueeze(-1) - lv) ** 2).min(-1).values.mean() / w.var().clamp_min(1e-12)
                for w, lv in zip(weights, old_levels)
            )
        else:
            expected = sum(((w - t) ** 2).mean() / w.var().clamp_min(1e-12) for w, t in zip(weights, targets))
        assert float(term.penalty(weights)) == float(expected), kind


@pytest.mark.parametrize("host_scalars", [True, False], ids=["cpu-scalars", "device-scalars"])
@pytest.mark.parametrize("kind", ["levels", "pq"])
def test_levels_and_pq_over_the_survivors_closed_form_equals_autograd_and_the_zeros_get_no_gradient(
    kind, host_scalars, monkeypatch
):
    """With gradual pruning's masks, levels and pq fit, pull and scale over each layer's survivors only,
    as binary does: the fused gradient is autograd's of the masked penalty, 0 at every pruned zero."""
    import core.regularizers as regularizers

    monkeypatch.setattr(regularizers, "_host_scalars", lambda tensor: host_scalars)
    weights, masks = _pruned_weights()
    term = TERMS[kind](Regularizer(kind, 1.0, levels=3, subvector_size=4, n_centroids=8))
    term.set_masks(masks)
    term.refresh(weights, 3)
    for step in range(3):
        moved = [(w * (1 + 0.1 * step)).requires_grad_(True) for w in weights]  # the zeros stay zeros
        value = term.step_(moved, 0.7, overwrite=True) if step % 2 else term.add_gradient_(moved, 0.7)
        fused = [w.grad.clone() for w in moved]
        reference = [w.detach().clone().requires_grad_(True) for w in moved]
        penalty = term.penalty(reference)
        (0.7 * penalty).backward()
        assert float(value) == pytest.approx(float(penalty.detach()), rel=1e-5), step
        for f, r, mask in zip(fused, reference, masks):
            torch.testing.assert_close(f, r.grad, rtol=1e-4, atol=1e-8)
            assert not f[~mask].any()  # a pruned zero is pulled nowhere


def test_levels_and_pq_count_the_survivors_only_not_the_zeros():
    """The zeros are not weights of the term: a layer's penalty is that of its survivors alone (as one
    row, read row-major); computed over every weight (the code before), the zeros would drag a level
    to 0 and weigh in the mean and the variance."""
    from core.regularizers import fit_levels, pq_targets

    weights, masks = _pruned_weights()
    survivors = [w[m].reshape(1, -1) for w, m in zip(weights, masks)]
    for kind in ("levels", "pq"):
        pruned = TERMS[kind](Regularizer(kind, 1.0, levels=3, subvector_size=4, n_centroids=8))
        pruned.set_masks(masks)
        pruned.refresh(weights, 3)
        alone = TERMS[kind](Regularizer(kind, 1.0, levels=3, subvector_size=4, n_centroids=8))
        alone.refresh(survivors, 3)
        assert float(pruned.penalty(weights)) == pytest.approx(float(alone.penalty(survivors)), rel=1e-6), kind
        whole = TERMS[kind](Regularizer(kind, 1.0, levels=3, subvector_size=4, n_centroids=8))
        whole.refresh(weights, 3)
        assert float(whole.penalty(weights)) != pytest.approx(float(pruned.penalty(weights)), rel=1e-3), kind
    for w, m, s in zip(weights, masks, survivors):
        assert torch.equal(fit_levels(w, 3, 3, m), fit_levels(s, 3, 3))
        target = pq_targets(w, 4, 8, 3, m)
        assert not target[~m].any() and torch.equal(target[m], pq_targets(s, 4, 8, 3).reshape(-1))
    # the whole layer's levels: its 75% of zeros pull one level to (almost) exactly 0
    assert fit_levels(weights[0], 3, 3).abs().min() < 1e-3 < fit_levels(weights[0], 3, 3, masks[0]).abs().min()


def test_a_weight_pruned_after_the_refresh_leaves_the_targets_at_once():
    """The codebook is fitted once an epoch; a pruning step within the epoch drops the newly pruned weights
    from the targets, the mean and the variance at once (their gradient 0), as binary's alpha does."""
    from core.prune import magnitude_mask

    weights, masks = _pruned_weights()
    for kind in ("levels", "pq"):
        term = TERMS[kind](Regularizer(kind, 1.0, levels=3, subvector_size=4, n_centroids=8))
        term.set_masks(masks)
        term.refresh(weights, 3)
        tighter = [magnitude_mask(w, 0.9, m) for w, m in zip(weights, masks)]
        more = [(w * m).requires_grad_(True) for w, m in zip(weights, tighter)]
        term.set_masks(tighter)
        term.add_gradient_(more, 1.0)
        reference = [w.detach().clone().requires_grad_(True) for w in more]
        term.penalty(reference).backward()
        for w, r, mask in zip(more, reference, tighter):
            assert not w.grad[~mask].any(), kind
            torch.testing.assert_close(w.grad, r.grad, rtol=1e-4, atol=1e-8)
