"""Attacks, patch scoring and gradient norms: invariants on a tiny stand-in model, and the released
numbers (tests/fixtures) with the recipe weights loaded from checkpoints as the demos load them."""
import pytest
import torch

import attacks
import models
from families.base import Normalization, QualityModel
from tests import recipe
from tests.stand_in import StandInScoreModel, stand_in_quality_model

PIXEL_TOL = 1e-6
FIXTURE_RTOL = 1e-4  # float32 against the float32 fixture
FLOAT64_RTOL = 1e-8  # float64 against the float64 fixture, any CPU
FGSM_ATOL = {1: 1e-5, 10: 5e-4}  # score units, float64; fixtures README: ~1e-4 after 10 steps on any CPU


HYPERIQA = models.get_family("hyperiqa")


@pytest.fixture
def model():
    return stand_in_quality_model()


@pytest.fixture
def pixels():
    torch.manual_seed(1)
    x = torch.rand(6, 3, 16, 16)
    x[0] = 0.0  # at the bottom of the range: clipping matters
    x[1] = 1.0
    return x


class RoundingScoreModel(StandInScoreModel):
    """The stand-in behind a rounding of its (normalized) input to steps of 1/255: the same scores,
    to a fraction of a point, but an input gradient of exactly zero (gradient masking)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.round(x * 255) / 255)


MASKING_SPREAD = 1000.0  # wide enough that eps = 0.03 is worth several score points
SQUARE_TEST_QUERIES = 500
SEVERAL_POINTS = 3.0


@pytest.mark.parametrize("attack", attacks.LINF_ATTACKS)
def test_attack_stays_in_the_eps_ball_and_pixel_range_and_leaves_the_input(model, pixels, attack):
    before = pixels.clone()
    adversarial = attacks.run_attack(attack, model, pixels, eps=0.03, alpha=0.01, steps=5,
                                     generator=torch.Generator().manual_seed(0)).adversarial
    assert torch.equal(pixels, before)
    assert (adversarial - pixels).abs().max() <= 0.03 + PIXEL_TOL
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - pixels).abs().max() > 0.02  # it did move


def test_iterative_fgsm_moves_each_score_away_from_the_middle(model, pixels):
    clean = attacks.score_patches(model, pixels)
    middle = clean.median().item()  # some patches above it, some below
    result = attacks.iterative_fgsm(model, pixels, eps=0.05, alpha=0.01, steps=5, middle=middle)
    attacked = attacks.score_patches(model, result.adversarial)
    torch.testing.assert_close(result.clean_scores, clean)
    above = clean > middle
    assert above.any() and (~above).any()
    assert (attacked[above] < clean[above]).all()
    assert (attacked[~above] > clean[~above]).all()


def test_each_attack_has_its_own_default_steps():
    assert attacks.attack_settings("fgsm", 0.02, alpha=0.5, steps=7) == (0.02, 1)  # one step of eps
    assert attacks.attack_settings("ifgsm", 0.02) == (attacks.DEFAULT_ALPHA, attacks.DEFAULT_STEPS)  # the demo's
    alpha, steps = attacks.attack_settings("pgd", 0.02)
    assert steps == attacks.PGD_STEPS == 10 and alpha == pytest.approx(2.5 * 0.02 / 10)
    assert attacks.attack_settings("pgd", 0.02, alpha=0.001, steps=3) == (0.001, 3)
    assert attacks.attack_settings("pgd", 0.02, steps=4)[0] == pytest.approx(2.5 * 0.02 / 4)


def test_pgd_called_without_a_step_size_takes_the_documented_default(model, pixels):
    def run(**settings):
        return attacks.pgd(model, pixels, eps=0.03, steps=4, generator=torch.Generator().manual_seed(0),
                           **settings).adversarial
    torch.testing.assert_close(run(), run(alpha=2.5 * 0.03 / 4), rtol=0, atol=0)
    assert not torch.equal(run(), run(alpha=0.01))


def test_mifgsm_and_square_defaults():
    alpha, steps = attacks.attack_settings("mifgsm", 0.02)
    assert steps == attacks.MIFGSM_STEPS == 10 and alpha == pytest.approx(0.02 / 10)  # Dong et al.
    assert attacks.attack_settings("mifgsm", 0.02, alpha=0.001, steps=3) == (0.001, 3)
    alpha, queries = attacks.attack_settings("square", 0.02, alpha=0.5, steps=7)  # a budget of queries, not steps
    assert queries == attacks.SQUARE_QUERIES and alpha != alpha  # no step size: NaN
    assert attacks.attack_settings("square", 0.02, queries=30)[1] == 30


def directed_change(model, pixels, adversarial, middle) -> torch.Tensor:
    """Per image (B,): how far the score moved in the direction its attack pushes it."""
    clean = attacks.score_patches(model, pixels)
    return attacks.attack_direction(clean, middle) * (attacks.score_patches(model, adversarial) - clean)


def every_attack(model, pixels, middle, seed: int = 0) -> dict[str, torch.Tensor]:
    """Adversarial images (B, 3, H, W) of every attack at eps 0.03 with its default settings."""
    results = {}
    for name in attacks.LINF_ATTACKS:
        alpha, steps = attacks.attack_settings(name, 0.03, queries=SQUARE_TEST_QUERIES)
        results[name] = attacks.run_attack(name, model, pixels, 0.03, alpha, steps, middle,
                                           torch.Generator().manual_seed(seed)).adversarial
    return results


def test_every_attack_moves_every_score_the_chosen_way_on_a_smooth_model(pixels):
    model = stand_in_quality_model(spread=MASKING_SPREAD)
    middle = attacks.score_patches(model, pixels).median().item()  # some patches pushed down, some up
    for name, adversarial in every_attack(model, pixels, middle).items():
        assert (directed_change(model, pixels, adversarial, middle) > 0).all(), name


def test_gradient_attacks_are_stopped_by_a_masked_gradient_and_the_square_attack_is_not(pixels):
    model = HYPERIQA.quality_model(RoundingScoreModel(spread=MASKING_SPREAD))
    middle = attacks.score_patches(model, pixels).median().item()
    adversarial = every_attack(model, pixels, middle)
    for name in ("fgsm", "ifgsm", "mifgsm"):  # a zero gradient has no sign: not a pixel moves
        assert torch.equal(adversarial[name], pixels), name
    noise = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(0))
    start = (pixels + (2 * noise - 1) * 0.03).clamp(0, 1)
    torch.testing.assert_close(adversarial["pgd"], start, rtol=0, atol=PIXEL_TOL)  # PGD stays at its random start
    assert directed_change(model, pixels, adversarial["pgd"], middle).abs().max() < 1.5
    assert (directed_change(model, pixels, adversarial["square"], middle) > SEVERAL_POINTS).all()


def test_square_attack_spends_its_queries_on_all_images_at_once(pixels):
    calls = []

    class CountingModel(StandInScoreModel):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    attacks.square(HYPERIQA.quality_model(CountingModel()), pixels, eps=0.03, queries=7, generator=torch.Generator().manual_seed(0),
                   chunk_size=len(pixels))
    assert calls == [len(pixels)] * (1 + 7)  # the clean scores, the stripes, 6 windows


def test_square_attack_is_seeded_and_independent_of_chunking(model, pixels):
    def run(seed, chunk_size):
        return attacks.square(model, pixels, eps=0.03, queries=20, generator=torch.Generator().manual_seed(seed),
                              chunk_size=chunk_size).adversarial
    first = run(0, 6)
    torch.testing.assert_close(run(0, 4), first, rtol=0, atol=PIXEL_TOL)
    assert not torch.allclose(run(1, 6), first)
    assert_on_vertices(first, pixels, 0.03)


def assert_on_vertices(adversarial: torch.Tensor, clean: torch.Tensor, eps: float) -> None:
    """Every pixel at clean + eps or clean - eps, clipped to [0, 1]: a pixel left unmoved fails, unless
    clipping put it back (clean 0 moved down, clean 1 moved up)."""
    up, down = (clean + eps).clamp(0, 1), (clean - eps).clamp(0, 1)
    assert (((adversarial - up).abs() < PIXEL_TOL) | ((adversarial - down).abs() < PIXEL_TOL)).all()


class RecordingNetwork(torch.nn.Module):
    """Scores every image 50 (so no candidate of the square attack ever beats the one before) and keeps
    each batch it was given: the queries, in order."""

    def __init__(self):
        super().__init__()
        self.queries: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.queries.append(x.detach().clone())
        return torch.full((x.shape[0],), 50.0, dtype=x.dtype)


def square_queries(clean: torch.Tensor, eps: float, queries: int) -> list[torch.Tensor]:
    """What the square attack asks a model that never improves: the clean images, then one candidate
    (B, 3, H, W) per query, in pixel units (the model's normalization is the identity)."""
    network = RecordingNetwork()
    model = QualityModel(network, Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    attacks.square(model, clean, eps=eps, queries=queries, generator=torch.Generator().manual_seed(0))
    return network.queries


SQUARE_SIDE = 48
# The paper's schedule for a budget of 20 queries on 48 x 48 images (2304 pixels), worked out by hand:
# window query k (0-based) sits at k / 20 * 10000 = 500 k of the paper's 10000 queries, so p_init = 0.05
# is halved 0, 3, 4, 5, 5, 6, ... times (milestones 10, 50, 200, 500, 1000, 2000, 4000); the side is
# round(sqrt(p * 2304)): 11, 4, 3, 2, 2, 1, then 1 to the end.
SQUARE_SIDES_OF_20_QUERIES = [11, 4, 3, 2, 2] + [1] * 14


def test_square_attack_starts_from_vertical_stripes_with_a_sign_per_column_and_channel():
    clean = 0.25 + 0.5 * torch.rand(6, 3, SQUARE_SIDE, SQUARE_SIDE, generator=torch.Generator().manual_seed(3))
    asked = square_queries(clean, 0.03, 20)
    assert len(asked) == 1 + 20 and torch.equal(asked[0], clean)  # the clean scores, then 20 queries
    stripes = asked[1] - clean
    assert_on_vertices(asked[1], clean, 0.03)
    signs = stripes.sign()
    assert torch.equal(signs, signs[:, :, :1, :].expand_as(signs))  # one sign down each column
    per_column = signs[:, :, 0, :]  # (B, 3, W)
    assert ((per_column > 0).any(dim=2) & (per_column < 0).any(dim=2)).all()  # stripes, not one flat shift
    assert (per_column[:, 0] != per_column[:, 1]).any()  # each channel its own signs


def test_each_square_query_sets_one_window_of_the_scheduled_side_with_one_sign_per_channel():
    clean = 0.25 + 0.5 * torch.rand(6, 3, SQUARE_SIDE, SQUARE_SIDE, generator=torch.Generator().manual_seed(4))
    asked = square_queries(clean, 0.03, 20)
    stripes, channel_signs_differ = asked[1], False
    for query, (candidate, side) in enumerate(zip(asked[2:], SQUARE_SIDES_OF_20_QUERIES)):
        assert_on_vertices(candidate, clean, 0.03)
        # No candidate ever won, so each one is the stripes with one window set anew: the window's
        # rows change wherever a column's new sign differs from its stripe in any channel.
        changed = (candidate != stripes).any(dim=1)  # (B, H, W)
        full_width = False
        for image in range(len(clean)):
            rows = changed[image].any(dim=1).nonzero().flatten()
            columns = changed[image].any(dim=0).nonzero().flatten()
            if rows.numel() == 0:
                continue  # the window's new signs equal the stripes it covers
            top, bottom, left, right = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
            assert bottom - top == side and rows.numel() == side, (query, image)  # whole rows of the window
            assert right - left <= side, (query, image)
            full_width |= bool(right - left == side)
            window = (candidate - clean)[image, :, top:bottom, left:right].sign().flatten(1)  # (3, pixels)
            assert torch.equal(window, window[:, :1].expand_as(window)), (query, image)  # one sign per channel
            channel_signs_differ |= bool((window[:, 0] != window[0, 0]).any())
        assert full_width, query
    assert channel_signs_differ


def test_square_size_follows_the_paper_schedule():
    p = attacks.SQUARE_P_INIT
    assert attacks.square_fraction(0, 10000) == attacks.square_fraction(10, 10000) == p
    assert attacks.square_fraction(11, 10000) == p / 2
    assert attacks.square_fraction(9999, 10000) == p / 512
    assert attacks.square_fraction(1, 100) == p / 4  # rescaled to 10000 queries: index 100
    assert attacks.square_side(0.05, 224, 224) == 50  # round(sqrt(0.05 * 224 * 224))
    assert attacks.square_side(1e-6, 224, 224) == 1 and attacks.square_side(1.0, 16, 20) == 15


class BumpyScoreModel(torch.nn.Module):
    """A small, far from linear score model of pixels (B, 3, H, W) -> (B,), seeded: along an attack
    its input gradient turns and changes size, so MI-FGSM's momentum and its l1 normalization of
    each gradient both change the result (on the near-linear stand-in, normalizing changes nothing)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv1, self.conv2, self.head = torch.nn.Conv2d(3, 6, 3), torch.nn.Conv2d(6, 4, 3), torch.nn.Linear(4, 1)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(1.5 * torch.randn(parameter.shape, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.tanh(self.conv2(torch.tanh(4 * self.conv1(x))))
        return 50 + 30 * torch.tanh(self.head((features * features).mean(dim=(2, 3)))).view(-1)


def reference_mifgsm(network, clean, eps, alpha, steps, middle, momentum=1.0, normalize=True) -> torch.Tensor:
    """MI-FGSM written out from Dong et al., one image at a time: g_t = momentum * g_(t-1) + grad_t /
    ||grad_t||_1, x_(t+1) = clip(project(x_t + alpha * sign(g_t))), the score pushed down when the
    clean score is above `middle`, else up. `normalize=False` leaves the l1 normalization out."""
    adversarial = []
    for image in clean:
        start = image[None]
        direction = -1.0 if network(start).item() > middle else 1.0
        x, g = start.clone(), torch.zeros_like(start)
        for _ in range(steps):
            x.requires_grad_(True)
            (grad,) = torch.autograd.grad(direction * network(x).sum(), x)
            g = momentum * g + (grad / grad.abs().sum() if normalize else grad)
            x = torch.clamp(torch.min(torch.max(x.detach() + alpha * g.sign(), start - eps), start + eps), 0, 1)
        adversarial.append(x)
    return torch.cat(adversarial)


def test_mifgsm_is_dong_et_al_in_float64_on_a_nonlinear_model():
    network = BumpyScoreModel().double()
    clean = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        middle = network(clean).median().item()
    eps, steps = 0.1, 6
    settings = (network, clean, eps, eps / steps, steps, middle)
    expected = reference_mifgsm(*settings)
    model = QualityModel(network, Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    torch.testing.assert_close(attacks.mifgsm(model, clean, eps, steps=steps, middle=middle).adversarial, expected,
                               rtol=0, atol=1e-12)
    # The check can tell: without the momentum, or without the normalization, many pixels end elsewhere.
    for variant in (dict(momentum=0.0), dict(normalize=False)):
        moved = (reference_mifgsm(*settings, **variant) - expected).abs() > eps / steps / 2
        assert moved.flatten(1).float().mean(dim=1).min() > 0.1, variant


def test_mifgsm_without_momentum_is_iterative_fgsm(model, pixels):
    torch.testing.assert_close(attacks.mifgsm(model, pixels, eps=0.03, alpha=0.01, steps=3, momentum=0.0).adversarial,
                               attacks.iterative_fgsm(model, pixels, eps=0.03, alpha=0.01, steps=3).adversarial)


def test_pgd_with_restarts_keeps_per_image_the_restart_that_moved_the_score_most(model, pixels):
    middle = attacks.score_patches(model, pixels).median().item()
    settings = dict(eps=0.03, alpha=0.01, steps=2, middle=middle)
    generator = torch.Generator().manual_seed(0)
    singles = torch.stack([attacks.pgd(model, pixels, generator=generator, **settings).adversarial for _ in range(3)])
    best = attacks.run_attack("pgd", model, pixels, generator=torch.Generator().manual_seed(0), restarts=3,
                              **settings).adversarial
    gains = torch.stack([directed_change(model, pixels, single, middle) for single in singles])  # (3, B)
    expected = singles[gains.argmax(dim=0), torch.arange(len(pixels))]
    assert gains.argmax(dim=0).unique().numel() > 1  # the restarts won on different images
    torch.testing.assert_close(best, expected, rtol=0, atol=PIXEL_TOL)


def test_attack_direction_rule():
    direction = attacks.attack_direction(torch.tensor([50.1, 50.0, 10.0]), middle=50.0)
    assert direction.tolist() == [-1.0, 1.0, 1.0]  # a score exactly at the middle is raised, as released


def test_one_iterative_fgsm_step_moves_every_pixel_by_alpha_where_not_clipped(model, pixels):
    inner = pixels.clamp(0.1, 0.9)
    adversarial = attacks.iterative_fgsm(model, inner, eps=0.03, alpha=0.01, steps=1).adversarial
    torch.testing.assert_close((adversarial - inner).abs(), torch.full_like(inner, 0.01), rtol=0, atol=PIXEL_TOL)


def test_fgsm_is_one_step_of_eps_along_the_sign_of_the_gradient(model, pixels):
    # Goodfellow et al.: x' = clip(x + eps * direction * sign(d score / d x)), with the model in eval mode
    # and the direction from the clean score (down above the middle, else up).
    model.eval()
    x = pixels.clone().requires_grad_(True)
    scores = model(x)
    (grad,) = torch.autograd.grad(scores.sum(), x)
    middle = scores.median().item()
    direction = torch.where(scores.detach() > middle, -1.0, 1.0)
    assert (grad != 0).all() and (direction > 0).any() and (direction < 0).any()
    expected = (pixels + 0.02 * direction[:, None, None, None] * grad.sign()).clamp(0, 1)
    model.train()
    torch.testing.assert_close(attacks.fgsm(model, pixels, eps=0.02, middle=middle).adversarial, expected,
                               rtol=0, atol=PIXEL_TOL)


def test_batched_chunked_and_one_by_one_attacks_agree(model, pixels):
    batched = attacks.iterative_fgsm(model, pixels, steps=3, chunk_size=len(pixels))
    chunked = attacks.iterative_fgsm(model, pixels, steps=3, chunk_size=4)
    single = [attacks.iterative_fgsm(model, pixels[i:i + 1], steps=3) for i in range(len(pixels))]
    torch.testing.assert_close(chunked.adversarial, batched.adversarial, rtol=0, atol=PIXEL_TOL)
    torch.testing.assert_close(torch.cat([s.adversarial for s in single]), batched.adversarial, rtol=0, atol=PIXEL_TOL)
    torch.testing.assert_close(torch.cat([s.clean_scores for s in single]), batched.clean_scores)


def test_pgd_start_is_seeded_and_independent_of_chunking(model, pixels):
    def run(seed, chunk_size):
        return attacks.pgd(model, pixels, steps=2, generator=torch.Generator().manual_seed(seed),
                           chunk_size=chunk_size).adversarial
    first = run(0, 6)
    torch.testing.assert_close(run(0, 2), first, rtol=0, atol=PIXEL_TOL)
    assert not torch.allclose(run(1, 6), first)


def test_pgd_with_one_generator_per_image_draws_each_start_from_that_generator_alone(model, pixels):
    def generators(seeds):
        return [torch.Generator().manual_seed(seed) for seed in seeds]
    batched = attacks.pgd(model, pixels, steps=2, generator=generators(range(6))).adversarial
    alone = [attacks.pgd(model, pixels[i:i + 1], steps=2, generator=generators([i])).adversarial for i in range(6)]
    torch.testing.assert_close(batched, torch.cat(alone), rtol=0, atol=PIXEL_TOL)  # whatever shares the batch
    with pytest.raises(ValueError, match="one generator per image: got 2 generators for 6 images"):
        attacks.pgd(model, pixels, steps=2, generator=generators([0, 1]))


def test_model_mode_is_restored_and_no_parameter_gradient_accumulates(model, pixels):
    model.train()
    attacks.iterative_fgsm(model, pixels, steps=2)
    attacks.scores_and_gradient_norms(model, pixels)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    attacks.score_patches(model, pixels)
    assert not model.training


def test_attack_uses_eval_mode_batchnorm(model, pixels):
    # In train mode BatchNorm would mix the images of a batch; the attack must not see that.
    model.train()
    clean = attacks.iterative_fgsm(model, pixels, steps=1).clean_scores
    model.eval()
    with torch.no_grad():
        expected = model.network(models.normalize(pixels))
    torch.testing.assert_close(clean, expected)


def test_gradient_norm_is_the_l1_norm_in_normalized_input_space(model, pixels):
    scores, norms = attacks.scores_and_gradient_norms(model, pixels, chunk_size=4)
    model.eval()
    normalized = models.normalize(pixels).requires_grad_(True)
    (grad,) = torch.autograd.grad(model.network(normalized).sum(), normalized)
    torch.testing.assert_close(norms, grad.abs().sum(dim=(1, 2, 3)))
    torch.testing.assert_close(scores, attacks.score_patches(model, pixels, chunk_size=1))


def test_chunk_size_by_device():
    assert attacks.default_chunk_size("cpu") == attacks.CPU_CHUNK_SIZE
    assert attacks.default_chunk_size(torch.device("cuda", 0)) == attacks.CUDA_CHUNK_SIZE
    assert attacks.CUDA_CHUNK_SIZE >= 25  # the patches of an image in one pass


def test_default_chunking_gives_the_one_by_one_results(model, pixels):
    by_device = attacks.scores_and_gradient_norms(model, pixels)
    one_by_one = attacks.scores_and_gradient_norms(model, pixels, chunk_size=1)
    for a, b in zip(by_device, one_by_one):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        attacks.score_patches(model, pixels, chunk_size=0)


def test_score_patches_gives_a_normal_tensor(model, pixels):
    scores = attacks.score_patches(model, pixels)
    assert scores.shape == (len(pixels),)
    assert not scores.is_inference()


def test_invalid_attack_settings_are_rejected(model, pixels):
    with pytest.raises(ValueError, match="eps and alpha must be > 0"):
        attacks.iterative_fgsm(model, pixels, eps=0)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        attacks.iterative_fgsm(model, pixels, steps=0)
    for attack in ("pgd", "mifgsm"):  # their default step size divides by the steps
        with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
            attacks.attack_settings(attack, 0.03, steps=0)
        with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
            attacks.run_attack(attack, model, pixels, 0.03, None, 0)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        attacks.mifgsm(model, pixels, steps=0)
    with pytest.raises(ValueError, match="valid: fgsm, ifgsm, pgd, mifgsm, square"):
        attacks.run_attack("cw", model, pixels, 0.03, 0.01, 1)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        attacks.score_patches(model, pixels[0])


def test_quantize_8bit_gives_the_levels_of_a_saved_file():
    x = torch.tensor([0.0, 0.5 / 255, 0.6 / 255, 1.0, 1.2])
    assert attacks.quantize_8bit(x).mul(255).tolist() == pytest.approx([0, 0, 1, 255, 255])


# ---------------------------------------------------------------------------------------------
# The released numbers, with recipe checkpoints in both release forms (see tests/conftest.py)


@pytest.fixture(scope="module")
def recipe_models(recipe_checkpoints):
    return {variant: models.load_hyperiqa(path) for variant, path in recipe_checkpoints.items()}


@pytest.mark.parametrize("variant", list(recipe.OFFSETS))
def test_scores_and_gradient_norms_match_the_release(recipe_models, variant):
    expected = recipe.reference()["variants"][variant]
    scores, norms = attacks.scores_and_gradient_norms(recipe_models[variant], recipe.recipe_pixels())
    torch.testing.assert_close(scores, torch.tensor(expected["scores"]), rtol=FIXTURE_RTOL, atol=0)
    torch.testing.assert_close(norms, torch.tensor(expected["grad_l1_normalized_input"]), rtol=FIXTURE_RTOL, atol=0)


@pytest.mark.parametrize("variant, steps", [("fc5b_offset_50", 1), ("fc5b_offset_40", 1), ("fc5b_offset_50", 10)])
def test_iterative_fgsm_matches_the_release_in_float64(variant, steps):
    # One batch of the three images: the release attacked them one at a time, and batching must not
    # change the result. Float64, so that the result holds on any CPU (tests/fixtures/README.md).
    model = HYPERIQA.quality_model(recipe.recipe_model_float64(recipe.OFFSETS[variant])).eval()
    expected = recipe.reference_float64()["variants"][variant]["fgsm_pixel_space"]
    result = attacks.iterative_fgsm(model, recipe.recipe_pixels().double(), eps=0.03, alpha=0.01, steps=steps)
    attacked = attacks.score_patches(model, result.adversarial)
    float64 = dict(dtype=torch.float64)
    torch.testing.assert_close(result.clean_scores, torch.tensor([image["clean"] for image in expected], **float64),
                               rtol=FLOAT64_RTOL, atol=0)
    key = f"eps0.03_alpha0.01_steps{steps}"
    torch.testing.assert_close(attacked, torch.tensor([image[key] for image in expected], **float64), rtol=0,
                               atol=FGSM_ATOL[steps])
