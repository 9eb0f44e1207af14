"""Median smoothing: the order statistics against a hand computation, the certificate against the
smoothed score at points within the radius, the split of the confidence, and seeded repeats."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import certify
from families.base import Normalization, QualityModel

IDENTITY = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
SIGMA, SAMPLES, CONFIDENCE = 0.12, 1000, 0.999


def hand_indices(samples: int, radius: float, sigma: float, confidence: float) -> tuple[int | None, int | None]:
    """Chiang et al.'s search, one candidate at a time, in 1-based order statistics, returned 0-based:
    the upper q climbs from ceil(p_u n) until P(Bin(n, p_u) <= q - 1) > confidence; the lower q falls
    from floor(p_l n) until P(Bin(n, p_l) >= q) > confidence."""
    p_upper, p_lower = stats.norm.cdf(radius / sigma), stats.norm.cdf(-radius / sigma)
    upper = next((q for q in range(math.ceil(p_upper * samples), samples + 1)
                  if stats.binom.cdf(q - 1, samples, p_upper) > confidence), None)
    lower = next((q for q in range(math.floor(p_lower * samples), 0, -1)
                  if 1 - stats.binom.cdf(q - 1, samples, p_lower) > confidence), None)
    return (None if lower is None else lower - 1), (None if upper is None else upper - 1)


@pytest.mark.parametrize("samples, radius, sigma, confidence", [
    (1000, 0.05, 0.12, 0.999), (1000, 0.25, 0.12, 0.9995), (100, 0.1, 0.25, 0.99), (40, 0.0, 0.12, 0.9)])
def test_order_statistic_indices_match_a_hand_computation(samples, radius, sigma, confidence):
    lower, upper = certify.order_statistic_indices(samples, radius, sigma, confidence)
    assert (lower, upper) == hand_indices(samples, radius, sigma, confidence)
    assert lower + upper == samples - 1  # Phi(-t) = 1 - Phi(t): the two bounds mirror each other
    p_upper = stats.norm.cdf(radius / sigma)
    assert stats.binom.cdf(upper, samples, p_upper) > confidence >= stats.binom.cdf(upper - 1, samples, p_upper)


def test_order_statistic_indices_for_the_defaults_and_too_few_samples():
    # Phi(0.05 / 0.12) = 0.6615: 661.5 of 1000 samples expected below the percentile, give or take
    # sqrt(1000 * 0.6615 * 0.3385) = 14.96; 3.09 of those for 0.999: 707.7, the 708th sample (0-based 707)
    assert certify.order_statistic_indices(1000, 0.05, 0.12, 0.999) == (1000 - 1 - 707, 707)
    assert certify.order_statistic_indices(20, 0.25, 0.12, 0.999) == (None, None)  # Phi(2.08) = 0.98: 20 are too few
    with pytest.raises(ValueError, match="confidence"):
        certify.order_statistic_indices(1000, 0.05, 0.12, 1.0)


class SmoothModel(QualityModel):
    """A smooth quality model of a small image: 50 + 40 * the mean pixel, squashed by tanh. Its median
    smoothing moves most in the direction of a uniform brightness change, where the bound is tight."""

    def __init__(self):
        super().__init__(torch.nn.Identity(), IDENTITY)

    def forward(self, pixels):
        return 50 + 40 * torch.tanh(2 * (pixels.mean(dim=(1, 2, 3)) - 0.5))


def image() -> torch.Tensor:
    return (0.5 + 0.05 * torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))).double()


def test_the_smoothed_score_within_the_radius_stays_inside_the_certified_interval():
    x, model, radii = image(), SmoothModel(), (0.1, 0.25)
    certificate = certify.certify(model, x, radii, SIGMA, SAMPLES, CONFIDENCE, torch.Generator().manual_seed(1), 250)
    draws = torch.Generator().manual_seed(2)
    for r, radius in enumerate(radii):
        uniform = torch.full_like(x, radius / math.sqrt(x.numel()))  # the worst direction, l2 norm = radius
        directions = [uniform, -uniform] + [torch.randn(x.shape, generator=draws, dtype=x.dtype) for _ in range(2)]
        points = [x + d / d.norm() * radius * (1 if i < 2 else torch.rand((), generator=draws).item())
                  for i, d in enumerate(directions)]
        smoothed = [certify.certify(model, p, radii, SIGMA, 2 * SAMPLES, CONFIDENCE, torch.Generator().manual_seed(3 + i),
                                    1000).smoothed.item() for i, p in enumerate(points)]
        low, high = certificate.lower[r, 0].item(), certificate.upper[r, 0].item()
        assert all(low <= value <= high for value in smoothed), (radius, low, high, smoothed)
        assert high - smoothed[0] < 0.5 * (high - certificate.smoothed.item())  # the uniform shift nearly reaches it
        assert smoothed[1] - low < 0.5 * (certificate.smoothed.item() - low)


def test_bounds_widen_with_the_radius_and_seeded_results_repeat():
    x, model, radii = image().repeat(2, 1, 1, 1), SmoothModel(), (0.05, 0.1, 0.25)
    x[1] += 0.1
    runs = [certify.certify(model, x, radii, SIGMA, 200, CONFIDENCE, torch.Generator().manual_seed(seed), chunk)
            for seed, chunk in ((5, 7), (5, 64), (6, 64))]
    lower, upper = runs[0].lower, runs[0].upper
    assert (lower[1:] < lower[:-1]).all() and (upper[1:] > upper[:-1]).all()
    assert (lower[0] < runs[0].smoothed).all() and (runs[0].smoothed < upper[0]).all()
    assert all(torch.equal(a, b) for a, b in zip(runs[0][:3], runs[1][:3]))  # the chunks do not change the draws
    assert not torch.equal(runs[0].smoothed, runs[2].smoothed)  # the seed does


def test_noisy_images_are_clipped_to_the_pixel_range_and_the_median_is_the_lower_one():
    class MeanOfClipped(SmoothModel):
        def forward(self, pixels):
            self.range = (min(getattr(self, "range", (1, 0))[0], pixels.min().item()),
                          max(getattr(self, "range", (1, 0))[1], pixels.max().item()))
            return pixels.mean(dim=(1, 2, 3))
    model, x = MeanOfClipped(), torch.full((1, 3, 4, 4), 0.95, dtype=torch.float64)
    scores = certify.noisy_scores(model, x, SIGMA, 10, torch.Generator().manual_seed(0))
    assert model.range[0] >= 0 and model.range[1] == 1.0  # some noisy pixels went past 1 and were clipped
    replay = torch.Generator().manual_seed(0)
    expected = [(x[0] + SIGMA * torch.randn(x.shape[1:], generator=replay, dtype=x.dtype)).clamp(0, 1).mean()
                for _ in range(10)]
    assert torch.allclose(scores[0], torch.stack(expected))
    assert certify.bounds_of_scores(scores, (0.05,), SIGMA, 0.9).smoothed.item() == scores.sort().values[0, 4].item()
    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).double()[None]  # the values 0-999
    bounds = certify.bounds_of_scores(shuffled, (0.05, 0.25), SIGMA, 0.9995)
    assert bounds.lower[:, 0].tolist() == [289, 5] and bounds.upper[:, 0].tolist() == [710, 994]  # the samples named


def test_an_image_of_several_views_splits_the_confidence_between_them():
    views = image().repeat(3, 1, 1, 1) + torch.tensor([0.0, 0.05, -0.05]).view(3, 1, 1, 1)
    model, radii = SmoothModel(), (0.1,)
    certificate = certify.certify_views(model, views, radii, SIGMA, 300, CONFIDENCE, torch.Generator().manual_seed(4))
    scores = certify.noisy_scores(model, views, SIGMA, 300, torch.Generator().manual_seed(4))
    per_bound = 1 - (1 - CONFIDENCE) / (2 * len(views))  # two bounds of three views
    by_hand = certify.bounds_of_scores(scores, radii, SIGMA, per_bound)
    assert certificate.smoothed.item() == pytest.approx(by_hand.smoothed.mean().item())
    assert certificate.lower[0, 0].item() == pytest.approx(by_hand.lower[0].mean().item())
    assert certificate.upper[0, 0].item() == pytest.approx(by_hand.upper[0].mean().item())


def test_width_rows_give_the_mean_width_and_its_share_of_the_score_range():
    smoothed = np.array([50.0, 60.0])
    lower, upper = np.array([[48.0, 59.0], [40.0, -np.inf]]), np.array([[53.0, 62.0], [58.0, 70.0]])
    rows = certify.width_rows("m", smoothed, lower, upper, (0.05, 0.25), (0.0, 100.0), sigma=SIGMA)
    assert (rows[0]["mean_width"], rows[0]["width_share"], rows[0]["uncertified"]) == (4.0, 0.04, 0)
    assert rows[1]["uncertified"] == 1 and rows[1]["mean_width"] == math.inf
    assert (rows[0]["radius"], rows[0]["sigma"], rows[0]["images"]) == (0.05, SIGMA, 2)
