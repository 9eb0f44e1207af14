"""LinearityIQA against the released code's numbers (tests/fixtures/linearityiqa_*): the real ResNeXt-101
network, loaded from a checkpoint in the authors' format, in float64.

One module-scoped model serves every test: the generic recipe weights (tests/fixtures/README.md)
saved as the authors save p1q2.pth (`{'model', 'optimizer', 'amp', 'k', 'b'}`), loaded by
`models.load_model` and cast to float64. Its k and b are not 1 and 0, so every number is checked on
the score a user sees, k[0] * out[-1] + b[0]: the raw outputs against the fixture directly, the
gradient norms against k[0] x the fixture's, the NT penalties against k[0]^2 x the fixture's. The
498x664 images go one at a time (eval mode: each image's numbers are its own); each forward serves
every check it can.
"""

import pytest
import torch

import models
from tests import recipe

FAMILY = "linearityiqa"
K, B = [2.5, -1.5, 3.0], [40.0, 60.0, 30.0]  # the map the checkpoint carries; index 0 maps the score
H = 0.01
RTOL = 1e-10  # float64 against the float64 fixture: the differences seen were below 1e-12 relative
PENALTY_RTOL = 1e-8  # the finite difference divides a difference of two close scores by h
TRAIN_MODE_RTOL = 1e-9  # batch statistics: seen 2e-12 relative


class Released:
    """The loaded model (float64, eval mode) and the state_dict layout it was loaded with."""

    def __init__(self, model, layout):
        self.model, self.layout = model, layout


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Released:
    layout = recipe.released_state_dict_layout(FAMILY)
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    template = {key: torch.zeros(shape, dtype=dtypes[dtype]) for key, shape, dtype in layout}
    state = recipe.generic_state_dict(template, score_bias=recipe.family_reference(FAMILY)["score_bias"])
    path = tmp_path_factory.mktemp("linearityiqa") / "p1q2.pth"
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "params": list(range(6))}]}
    amp = {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 0}}
    torch.save({"model": state, "optimizer": optimizer, "amp": amp, "k": K, "b": B}, path)
    del template, state
    model = models.load_model(path, FAMILY)
    loaded_layout = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    return Released(model.double().eval(), loaded_layout)


def expected(name: str, size: str) -> torch.Tensor:
    return torch.tensor(recipe.family_reference(FAMILY)["inputs"][size][name], dtype=torch.float64)


def close(actual: torch.Tensor, wanted: torch.Tensor, rtol: float = RTOL) -> None:
    torch.testing.assert_close(actual.detach(), wanted, rtol=rtol, atol=0)


def test_the_authors_checkpoint_format_loads_strictly_with_its_k_and_b(released):
    assert released.layout == recipe.released_state_dict_layout(FAMILY)  # every key, shape and dtype, in order
    assert len(released.layout) == 672
    assert sum(p.numel() for p in released.model.parameters()) == 90_453_443
    assert (released.model.family, released.model.network.k, released.model.network.b) == (FAMILY, K, B)
    assert not released.model.training


def score_gradients_and_shifted(model, pixels: torch.Tensor):
    """(mapped scores, raw outputs (N, 3), l1 input-gradient norms, scores after the NT shift h sign(g)),
    from one forward and one backward (plus the shifted forward, without a graph)."""
    inputs = model.inputs(pixels.double()).requires_grad_(True)
    scores, raw = model.network(inputs, all_outputs=True)
    (grad,) = torch.autograd.grad(scores.sum(), inputs)
    with torch.no_grad():
        shifted = model.network(inputs + H * grad.sign())
    return scores.detach(), raw.detach(), grad.abs().flatten(1).sum(dim=1), shifted


def check_penalties(scores, norms, shifted, size: str) -> None:
    finite_difference = (((shifted - scores) / H) ** 2).mean() / 2
    exact = (norms ** 2).mean() / 2  # what exact_penalty computes from the gradient, eval mode
    reference = recipe.family_reference(FAMILY)["inputs"][size]
    assert finite_difference.item() == pytest.approx(K[0] ** 2 * reference["nt_penalty_finite_difference_h0.01"],
                                                     rel=PENALTY_RTOL)
    assert exact.item() == pytest.approx(K[0] ** 2 * reference["nt_penalty_exact"], rel=PENALTY_RTOL)


def test_224x224_eval_and_train_mode_match_the_release(released):
    model, size = released.model, "224x224"
    pixels = recipe.recipe_pixels()
    scores, raw, norms, shifted = score_gradients_and_shifted(model, pixels)
    close(raw.T, expected("all_outputs", size))
    close((scores - B[0]) / K[0], expected("scores", size))  # the user's score is the mapped last output
    close(norms, abs(K[0]) * expected("grad_l1_model_input", size))
    check_penalties(scores, norms, shifted, size)

    # Train mode: BatchNorm2d and BatchNorm1d on the batch's statistics (their running ones restored after)
    buffers = {name: buffer.clone() for name, buffer in model.network.named_buffers()}
    try:
        model.train()
        with torch.no_grad():
            train_scores, train_raw = model.network(model.inputs(pixels.double()), all_outputs=True)
    finally:
        model.eval()
        for name, buffer in model.network.named_buffers():
            buffer.copy_(buffers[name])
    close(train_raw.T, expected("all_outputs_train_mode", size), TRAIN_MODE_RTOL)
    close((train_scores - B[0]) / K[0], expected("scores_train_mode", size), TRAIN_MODE_RTOL)


def test_498x664_the_released_input_size_matches_the_release(released):
    """The released input size (non-square maps, 16x21 at layer4): both images' outputs, the first
    image's gradient norm (one image at a time; the penalties, means over both images, are checked at
    224x224: at this size each float64 backward costs as much as the 224x224 test)."""
    size, model = "498x664", released.model
    ramp, checkerboard = recipe.inputs_sized(498, 664, count=2)
    inputs = model.inputs(ramp[None].double()).requires_grad_(True)
    scores, raw = model.network(inputs, all_outputs=True)
    (grad,) = torch.autograd.grad(scores.sum(), inputs)
    with torch.no_grad():
        other_scores, other_raw = model.network(model.inputs(checkerboard[None].double()), all_outputs=True)
    close(torch.cat((raw, other_raw)).T, expected("all_outputs", size))
    close((torch.cat((scores, other_scores)) - B[0]) / K[0], expected("scores", size))
    close(grad.abs().sum()[None], abs(K[0]) * expected("grad_l1_model_input", size)[:1])
