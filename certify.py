"""Certified score bounds by median smoothing, for any quality model (pixels in [0, 1] -> scores).

Median smoothing (Chiang, Curry, Abdelkader, Kumar, Dickerson and Goldstein, "Detection as
Regression: Certified Object Detection by Median Smoothing", NeurIPS 2020), as applied to IQA
models by katiashh/certified-iqa-defenses (DMS-IQA, 2024): the smoothed model of a quality model f is

    h(x) = median of f(clip(x + G)),  G ~ N(0, sigma^2 I),  clip to the pixel range [0, 1]

(the noisy images are clipped before scoring, as the certified-IQA code does; the clip is part of
the function smoothed, so the guarantee is unchanged). With h_p(x) the p-th percentile of
f(clip(x + G)), Chiang et al. prove that for every x' with ||x' - x||_2 <= eps

    h_{Phi(-eps / sigma)}(x) <= h(x') <= h_{Phi(eps / sigma)}(x).

The percentiles are estimated from n noisy scores sorted in increasing order, X_(1) <= ... <= X_(n):
X_(q) is an upper confidence bound of the p-th percentile with confidence P(Binomial(n, p) <= q - 1)
and a lower one with confidence P(Binomial(n, p) >= q). The upper bound is the smallest q whose
confidence exceeds the level asked for, the lower bound the largest q (Chiang et al.'s correction);
where no order statistic reaches that level the bound is infinite (too few samples for that radius).

Confidence: each bound of `certify` holds with probability 1 - (1 - confidence) / 2 over the noise,
so that the interval holds with `confidence` (the certified-IQA code and Chiang et al. give each bound
the confidence alone). An image scored as the mean over V views (`certify_views`) certifies each view
at 1 - (1 - confidence) / V, so that its interval, the mean of the views' intervals, holds with
`confidence` too (union bound). A view of an image moved by at most eps in l2 moves by at most eps.

The smoothed score is the lower median X_((n + 1) // 2) (torch.median's, as in the certified-IQA code).
The noise of every sample is drawn in turn (image by image, sample by sample) from the generator
given, so the scores do not depend on the batching; all radii use the same samples.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
from scipy import stats

from attacks.base import check_pixels, default_chunk_size, score_patches
from families.base import QualityModel

DEFAULT_SIGMA = 0.12  # noise standard deviation, pixel units: the certified-IQA code's
DEFAULT_SAMPLES = 1000  # noisy scores per image, as there
DEFAULT_RADIUS = 0.05  # l2 radius of the certificate, pixel units, as there
DEFAULT_CONFIDENCE = 0.999  # as there (its alpha = 0.001)


def order_statistic_indices(samples: int, radius: float, sigma: float,
                            confidence: float) -> tuple[int | None, int | None]:
    """(lower, upper): 0-based indices into `samples` noisy scores sorted in increasing order of the
    order statistics that bound the Phi(-radius / sigma)-th and the Phi(radius / sigma)-th percentiles
    from below and from above, each with probability > `confidence`; None where none does.

    In 1-based terms: upper = the smallest q with P(Binomial(n, Phi(radius / sigma)) <= q - 1) >
    confidence; lower = the largest q with P(Binomial(n, Phi(-radius / sigma)) >= q) > confidence.
    """
    if samples < 1 or not sigma > 0 or not radius >= 0 or not 0 < confidence < 1:
        raise ValueError(f"need samples >= 1, sigma > 0, radius >= 0 and 0 < confidence < 1; got samples={samples}, "
                         f"sigma={sigma}, radius={radius}, confidence={confidence}")
    counts = np.arange(samples + 1)  # k: how many of the samples fall below the percentile
    above = stats.binom.cdf(counts, samples, stats.norm.cdf(radius / sigma)) > confidence  # P(Bin <= k)
    below = stats.binom.sf(counts, samples, stats.norm.cdf(-radius / sigma)) > confidence  # P(Bin >= k + 1)
    # 1-based q = k + 1 is the 0-based index k; an index must name one of the samples (k < n).
    upper = int(np.argmax(above)) if above[:samples].any() else None
    lower = int(np.flatnonzero(below[:samples])[-1]) if below[:samples].any() else None
    return lower, upper


class Certificate(NamedTuple):
    """Median-smoothing results of a batch: smoothed scores (B,), and for each radius of `radii` the
    certified lower and upper bounds (R, B), in score units (-inf / +inf where uncertified)."""

    smoothed: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    radii: tuple[float, ...]


def noisy_scores(model: QualityModel, pixels: torch.Tensor, sigma: float, samples: int,
                 generator: torch.Generator | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """Scores (B, samples) of `samples` copies of each pixel image (B, 3, H, W) in [0, 1] under Gaussian
    noise of `sigma` (pixel units), clipped to [0, 1]; the copies scored in chunks of `chunk_size`."""
    check_pixels(pixels)
    if samples < 1 or not sigma > 0:
        raise ValueError(f"need samples >= 1 and sigma > 0, got samples={samples}, sigma={sigma}")
    block = chunk_size or default_chunk_size(pixels.device)  # noisy copies per batch, of one image
    scores = []
    for image in pixels:
        for start in range(0, samples, block):
            noise = torch.stack([torch.randn(image.shape, generator=generator, dtype=image.dtype)
                                 for _ in range(min(block, samples - start))])
            scores.append(score_patches(model, (image + sigma * noise.to(image.device)).clamp_(0.0, 1.0), chunk_size))
    return torch.cat(scores).view(len(pixels), samples)


def bounds_of_scores(scores: torch.Tensor, radii: Sequence[float], sigma: float, confidence: float) -> Certificate:
    """The certificate of noisy scores (B, n) (see `noisy_scores`): the lower median and, per radius,
    the order statistics of `order_statistic_indices`, each at `confidence`."""
    ordered = scores.sort(dim=1).values
    samples = ordered.shape[1]
    lower, upper = [], []
    for radius in radii:
        low, high = order_statistic_indices(samples, radius, sigma, confidence)
        lower.append(ordered[:, low] if low is not None else torch.full_like(ordered[:, 0], -math.inf))
        upper.append(ordered[:, high] if high is not None else torch.full_like(ordered[:, 0], math.inf))
    return Certificate(ordered[:, (samples - 1) // 2], torch.stack(lower), torch.stack(upper), tuple(radii))


def certify(model: QualityModel, pixels: torch.Tensor, radii: Sequence[float] = (DEFAULT_RADIUS,),
            sigma: float = DEFAULT_SIGMA, samples: int = DEFAULT_SAMPLES, confidence: float = DEFAULT_CONFIDENCE,
            generator: torch.Generator | None = None, chunk_size: int | None = None) -> Certificate:
    """Median smoothing of `model` at each pixel image (B, 3, H, W) in [0, 1]: the smoothed score, and
    for each l2 radius of `radii` (pixel units) an interval that holds the smoothed score of every
    image within that radius with probability `confidence` (each bound at 1 - (1 - confidence) / 2).
    The noise (`sigma`, `samples` draws per image, from `generator`) is drawn once for all radii."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    scores = noisy_scores(model, pixels, sigma, samples, generator, chunk_size)
    return bounds_of_scores(scores, radii, sigma, 1 - (1 - confidence) / 2)


def certify_views(model: QualityModel, views: torch.Tensor, radii: Sequence[float] = (DEFAULT_RADIUS,),
                  sigma: float = DEFAULT_SIGMA, samples: int = DEFAULT_SAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                  generator: torch.Generator | None = None, chunk_size: int | None = None) -> Certificate:
    """The certificate of one image scored as the mean over its views (V, 3, H, W): the mean of the
    views' certificates, each view at 1 - (1 - confidence) / V, so that the image's interval holds
    with `confidence`. Returns a Certificate of one image: smoothed (1,), lower and upper (R, 1)."""
    per_view = certify(model, views, radii, sigma, samples, 1 - (1 - confidence) / len(views), generator, chunk_size)
    return Certificate(per_view.smoothed.mean().view(1), per_view.lower.mean(dim=1, keepdim=True),
                       per_view.upper.mean(dim=1, keepdim=True), per_view.radii)


CERTIFIED_COLUMNS = ("model", "radius", "sigma", "samples", "confidence", "images", "uncertified", "mean_smoothed",
                     "mean_lower", "mean_upper", "mean_width", "width_share")


def width_rows(model: str, smoothed: np.ndarray, lower: np.ndarray, upper: np.ndarray, radii: Sequence[float],
               score_range: tuple[float, float], **setting) -> list[dict]:
    """One row (CERTIFIED_COLUMNS) per radius from per-image smoothed scores (N,) and bounds (R, N):
    the mean certified interval width in score units and as a share of the score range (high - low),
    and how many images got an infinite bound (they make the means infinite)."""
    rows = []
    for radius, low, high in zip(radii, lower, upper):
        width = float(np.mean(high - low))
        rows.append(dict(setting, model=model, radius=radius, images=len(smoothed),
                         uncertified=int(np.sum(~(np.isfinite(low) & np.isfinite(high)))),
                         mean_smoothed=float(np.mean(smoothed)), mean_lower=float(np.mean(low)),
                         mean_upper=float(np.mean(high)), mean_width=width,
                         width_share=width / (score_range[1] - score_range[0])))
    return rows
