"""Input-transform defenses: range and shape, each transform against an independent computation, the
seeded draws, BPDA and EOT, and an adaptive attack against a JPEG-defended stand-in."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import attacks
import defenses
import models
from defenses import DefendedModel, parse_defense
from families.base import Normalization, QualityModel
from tests.stand_in import stand_in_quality_model

ONE_OF_EACH = ("jpeg:50", "blur:1.5", "median:3", "resize:0.5", "quantize:8", "noise:0.1", "crop:0.75", "flip")
RANDOM = ("noise:0.1", "crop:0.75", "flip")
PIXEL_TOL = 1e-6
IDENTITY = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # quality models that score pixels as they are


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def pixels():
    torch.manual_seed(3)
    x = torch.rand(6, 3, 20, 18)
    x[0] = 0.0  # the ends of the range
    x[1] = 1.0
    return x


def test_the_table_names_every_defense_once():
    assert tuple(str(parse_defense(text)).split(":")[0] for text in ONE_OF_EACH) == defenses.DEFENSES
    assert {name for name in defenses.DEFENSES if defenses.TRANSFORMS[name].randomized} == {"noise", "crop", "flip"}
    assert {name for name in defenses.DEFENSES if not defenses.TRANSFORMS[name].differentiable} == {
        "jpeg", "median", "quantize"}


@pytest.mark.parametrize("text", ONE_OF_EACH)
def test_every_defense_keeps_the_shape_and_the_pixel_range_and_leaves_its_input(pixels, text):
    before = pixels.clone()
    defended = parse_defense(text)(pixels, generator())
    assert torch.equal(pixels, before)
    assert defended.shape == pixels.shape and defended.dtype == pixels.dtype
    assert defended.min() >= 0 and defended.max() <= 1
    assert (defended - pixels).abs().max() > 0.05  # it did something


def test_jpeg_recompression_costs_more_detail_at_a_lower_quality(pixels):
    low, high = defenses.jpeg_recompress(pixels, 10), defenses.jpeg_recompress(pixels, 95)
    assert (high - pixels).abs().mean() < (low - pixels).abs().mean()
    assert torch.equal(low * 255, (low * 255).round())  # decoded 8-bit levels
    with pytest.raises(ValueError, match="between 1 and 95"):
        defenses.jpeg_recompress(pixels, 0)


def test_blur_is_scipys_gaussian_filter_with_whole_sample_reflection(pixels):
    blurred = defenses.gaussian_blur(pixels.double(), 1.5)
    expected = np.stack([[ndimage.gaussian_filter(channel, 1.5, mode="mirror", truncate=3.0) for channel in image]
                         for image in pixels.double().numpy()])
    np.testing.assert_allclose(blurred.numpy(), expected, atol=1e-12)


def test_median_filter_takes_the_median_of_each_window(pixels):
    filtered = defenses.median_filter(pixels, 5)
    padded = np.pad(pixels.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    for b, c, i, j in ((2, 0, 0, 0), (3, 1, 7, 11), (5, 2, 19, 17)):
        assert filtered[b, c, i, j].item() == np.median(padded[b, c, i:i + 5, j:j + 5])


def test_quantize_rounds_to_evenly_spaced_levels_and_resize_keeps_a_constant_image(pixels):
    quantized = defenses.quantize_colors(pixels, 5)  # levels 0, 0.25, 0.5, 0.75, 1
    assert torch.allclose(quantized, torch.round(pixels * 4) / 4) and quantized.unique().numel() == 5
    grey = torch.full((1, 3, 20, 18), 0.3)
    assert torch.allclose(defenses.resize_down_up(grey, 0.5), grey)
    stripes = torch.zeros(1, 3, 20, 18)
    stripes[..., ::2] = 1.0  # the finest detail there is: resizing down to half removes it
    assert defenses.resize_down_up(stripes, 0.5).std() < 0.1 * stripes.std()


def test_noise_crop_and_flip_draw_from_the_generator_image_by_image(pixels):
    x = pixels[2:]  # inside the range, so that noise is not clipped away
    noise = torch.stack([torch.randn(x.shape[1:], generator=generator(7)) for _ in range(1)])
    assert torch.allclose(defenses.gaussian_noise(x[:1], 0.1, generator(7)), (x[:1] + 0.1 * noise).clamp(0, 1))
    flipped = defenses.random_flip(x, generator(1))
    assert all(torch.equal(f, image) or torch.equal(f, image.flip(-1)) for f, image in zip(flipped, x))
    assert torch.equal(defenses.random_crop_resize(x, 1.0, generator()), x)
    for text in RANDOM:  # one batch or two halves with one generator: the same draws
        defense, draws = parse_defense(text), generator(5)
        halves = torch.cat([defense(x[:2], draws), defense(x[2:], draws)])
        assert torch.equal(defense(x, generator(5)), halves)
        assert not torch.equal(defense(x, generator(5)), defense(x, generator(6)))  # the seed decides


@pytest.mark.parametrize("text, message", [
    ("gzip:3", "unknown defense 'gzip'; valid: jpeg, blur, median, resize, quantize, noise, crop, flip"),
    ("blur", "defense blur needs its sigma"), ("jpeg:50.5", "must be a whole number"), ("median:4", "odd and >= 3"),
    ("resize:1", "> 0 and < 1"), ("noise:nan", "must be > 0"), ("flip:1", "takes no parameter")])
def test_a_bad_defense_is_refused_with_what_is_valid(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_defense(text)


def test_bpda_is_the_defense_forward_and_the_identity_backward(pixels):
    x = pixels.clone().requires_grad_(True)
    jpeg = parse_defense("jpeg:30")
    through = defenses.bpda(x, lambda y: jpeg(y))
    assert torch.allclose(through, jpeg(pixels), atol=PIXEL_TOL)
    weights = torch.randn(pixels.shape)
    (grad,) = torch.autograd.grad((weights * through).sum(), x)
    assert torch.equal(grad, weights)


class RecordingModel(QualityModel):
    """A smooth quality model (weighted mean of the pixels, squashed) that records the batch sizes it sees."""

    def __init__(self):
        super().__init__(torch.nn.Identity(), IDENTITY)
        self.weights = torch.linspace(-1, 1, 3 * 20 * 18).view(3, 20, 18)
        self.batch_sizes = []

    def forward(self, pixels):
        self.batch_sizes.append(len(pixels))
        return 50 + 40 * torch.tanh((pixels * self.weights).mean(dim=(1, 2, 3)) * 10)


def test_eot_averages_the_given_number_of_draws_and_scores_take_one(pixels):
    x, model, draws = pixels[2:], RecordingModel(), 5
    noise = parse_defense("noise:0.2")
    defended = DefendedModel(model, noise, generator(4), eot=draws)
    inputs = x.clone().requires_grad_(True)
    scores = defended(inputs)
    (grad,) = torch.autograd.grad(scores.sum(), inputs)
    assert model.batch_sizes == [draws * len(x)]

    replay, expected, expected_grad = generator(4), 0, 0
    for _ in range(draws):  # the same draws, one at a time
        single = x.clone().requires_grad_(True)
        draw_scores = model(noise(single, replay))
        expected = expected + draw_scores.detach() / draws
        expected_grad = expected_grad + torch.autograd.grad(draw_scores.sum(), single)[0] / draws
    assert torch.allclose(scores, expected, atol=1e-5) and torch.allclose(grad, expected_grad, atol=1e-7)

    with torch.no_grad():  # a score query: one draw
        assert torch.allclose(DefendedModel(model, noise, generator(4), eot=draws)(x), model(noise(x, generator(4))))
    model.batch_sizes.clear()
    jpeg_scores = DefendedModel(model, parse_defense("jpeg:50"), eot=draws)(inputs)
    assert model.batch_sizes == [len(x)] and jpeg_scores.requires_grad  # deterministic: one draw, BPDA's gradient


class SharpnessScoreModel(torch.nn.Module):
    """A stand-in that likes brightness and fine detail: 50 + 20 * mean(x) + 10 * mean(laplacian(x)^2)
    of its (normalized) input. At a textured image its gradient is mostly the texture's (which JPEG
    wipes out); at the JPEG-compressed image, mostly the brightness's (which JPEG keeps)."""

    def forward(self, x):
        laplacian = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).to(x).view(1, 1, 3, 3).expand(3, 1, 3, 3)
        return 50 + 20 * x.mean(dim=(1, 2, 3)) + 10 * F.conv2d(x, laplacian, groups=3).pow(2).mean(dim=(1, 2, 3))


def test_an_adaptive_attack_moves_a_jpeg_defended_model_more_than_the_non_adaptive_one():
    ramp = torch.linspace(0.3, 0.7, 32).expand(4, 3, 32, 32)
    pixels = (ramp + 0.05 * torch.randn(4, 3, 32, 32, generator=generator(1))).clamp(0, 1)
    model = models.get_family("hyperiqa").quality_model(SharpnessScoreModel()).eval()
    jpeg = parse_defense("jpeg:50")
    eps = 4 / 255

    def defended_change(target) -> float:
        adversarial = attacks.iterative_fgsm(target, pixels, eps, eps / 4, 5).adversarial
        after, before = (attacks.score_patches(model, jpeg(x)) for x in (attacks.quantize_8bit(adversarial), pixels))
        return (after - before).abs().mean().item()

    non_adaptive, adaptive = defended_change(model), defended_change(DefendedModel(model, jpeg))
    bare = (attacks.score_patches(model, attacks.iterative_fgsm(model, pixels, eps, eps / 4, 5).adversarial)
            - attacks.score_patches(model, pixels)).abs().mean().item()
    assert non_adaptive < 0.2 * bare  # JPEG undoes most of the attack made against the bare model...
    assert adaptive > 2 * non_adaptive  # ...and much less of the attack made through it


def test_the_square_attack_queries_the_defended_model_and_seeded_draws_repeat(pixels):
    model = stand_in_quality_model().eval()
    crop = parse_defense("crop:0.6")
    runs = [attacks.square(DefendedModel(model, crop, generator(seed)), pixels, 0.03, 5, generator=generator(0))
            for seed in (2, 2, 3)]
    assert torch.equal(runs[0].adversarial, runs[1].adversarial)
    assert not torch.equal(runs[0].adversarial, runs[2].adversarial)  # the defense's draws changed its choices
    assert torch.equal(runs[0].clean_scores, model(crop(pixels, generator(2))))  # its first query: a defended score
    assert not model.training  # the wrapper kept the model's mode (BatchNorm's statistics: the running ones)
