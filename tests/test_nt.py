"""The NT regularizer: shared clean forward vs the released three passes (on the stand-in model, and one
HyperIQA step against the released step in float64), finite difference vs exact."""
import pytest
import torch

import models
from nt_regularizer import exact_penalty, finite_difference_penalty, nt_loss
from released_reference import released_three_pass_nt_loss
from tests import recipe
from tests.stand_in import StandInScoreModel

GRAD_RTOL = 1e-12  # float64, the same function computed in two orders
NT_STEP_RTOL = 1e-9  # float64 against the released step (tests/fixtures/README.md: about 1e-12)


@pytest.fixture
def stand_in():
    return StandInScoreModel().double().eval()  # eval: both formulations see the same function


@pytest.fixture
def images():
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _weight_gradients(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_shared_forward_gives_the_weight_gradients_of_the_three_pass_release(stand_in, images):
    mos = torch.tensor([30.0, 50.0, 70.0], dtype=torch.float64)
    ours = nt_loss(stand_in, images, mos, weight=0.5, h=0.01)
    released = released_three_pass_nt_loss(stand_in, images, mos, weight=0.5, h=0.01)
    assert ours.total.item() == pytest.approx(released.total.item(), rel=1e-12)
    assert ours.penalty.item() > 0
    g_ours = _weight_gradients(stand_in, ours.total)
    g_released = _weight_gradients(stand_in, released.total)
    assert ((g_ours - g_released).norm() / g_released.norm()).item() < GRAD_RTOL
    # the penalty really contributes: without it the gradients differ far beyond the tolerance
    g_plain = _weight_gradients(stand_in, nt_loss(stand_in, images, mos).released)
    assert ((g_plain - g_released).norm() / g_released.norm()).item() > 1e6 * GRAD_RTOL


def test_finite_difference_approaches_the_exact_penalty_as_h_shrinks(stand_in, images):
    x = images.requires_grad_(True)
    scores = stand_in(x)
    exact = exact_penalty(x, scores).item()
    steps = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)
    errors = [abs(finite_difference_penalty(stand_in, x, scores, h).item() - exact) / exact for h in steps]
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 1e-4 and errors[0] > 0.1  # from a coarse difference to the derivative itself


class Linear(torch.nn.Module):
    """f(x) = <w, x> per image: the input gradient is w, so ||g||_1 = ||w||_1 exactly."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[0.5, -2.0], [1.0, 0.0]]))

    def forward(self, x):
        return (x * self.w).flatten(1).sum(dim=1)


@pytest.mark.parametrize("mode", ["finite_difference", "exact"])
def test_penalty_for_any_score_model_and_its_gradient_flows_through_both_terms(mode):
    model = Linear()
    x = torch.randn(3, 2, 2)
    mos = torch.zeros(3)
    loss = nt_loss(model, x, mos, weight=1.0, h=0.5, mode=mode)
    l1_norm = 3.5
    assert loss.penalty.item() == pytest.approx(l1_norm ** 2 / 2, rel=1e-6)
    model.zero_grad()
    loss.penalty.backward()
    # d/dw (||w||_1^2 / 2) = ||w||_1 sign(w); a gradient through f(x + h d) alone would differ
    torch.testing.assert_close(model.w.grad, l1_norm * torch.sign(model.w.detach()))


def test_total_is_l1_plus_weighted_penalty_and_scores_are_the_clean_ones():
    model = Linear()
    x = torch.randn(4, 2, 2)
    mos = torch.randn(4)
    loss = nt_loss(model, x, mos, weight=0.25, h=0.1)
    clean = model(x).detach()
    torch.testing.assert_close(loss.scores.detach(), clean)
    assert loss.released.item() == pytest.approx((clean - mos).abs().mean().item(), rel=1e-6)
    assert loss.total.item() == pytest.approx(loss.released.item() + 0.25 * loss.penalty.item(), rel=1e-6)


def test_invalid_mode_and_step_are_rejected():
    with pytest.raises(ValueError, match="finite_difference, exact"):
        nt_loss(Linear(), torch.zeros(1, 2, 2), torch.zeros(1), mode="fd")
    with pytest.raises(ValueError, match="h must be > 0"):
        nt_loss(Linear(), torch.zeros(1, 2, 2), torch.zeros(1), h=0.0)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_one_nt_step_gives_the_released_gradient_of_every_parameter_in_float64(mode):
    """nt_loss (two forward passes) against the released three-pass step of tests/fixtures/nt_step_float64.json,
    with BatchNorm in train mode (batch statistics) and in eval mode."""
    step = recipe.nt_step_float64()
    expected = step["modes"][mode]
    model = recipe.recipe_model_float64(50.0).train(mode == "train")
    images = models.normalize(recipe.recipe_pixels().double())
    loss = nt_loss(model, images, torch.tensor(step["mos"], dtype=torch.float64), step["weight"], step["h"])
    loss.total.backward()
    for value, name in ((loss.total, "loss"), (loss.released, "l1"), (loss.penalty, "penalty")):
        assert value.item() == pytest.approx(expected[name], rel=NT_STEP_RTOL)
    norms = {name: param.grad.norm().item() for name, param in model.named_parameters()}
    assert set(norms) == set(expected["grad_l2_norm"])
    worst = max(abs(norms[name] - value) / value for name, value in expected["grad_l2_norm"].items())
    assert worst < NT_STEP_RTOL, worst
    everything = torch.cat([param.grad.flatten() for param in model.parameters()]).norm().item()
    assert everything == pytest.approx(expected["grad_l2_norm_all"], rel=NT_STEP_RTOL)
