"""The scores of the IQA defense benchmark (Gushchin et al., ICML 2025; msu-video-group/
adversarial-defenses-for-iqa, `defence_scoring_methods.py`), from per-image scores and similarities.

Per image, four scores of the quality model: `clean` (the clean image), `attacked` (the attacked
image, undefended), `defended_clean` and `defended_attacked` (both through the defense). With
s the reference and s' the other scores, over the images:

    relative gain = mean(|s - s'| / (s + 1e-6))       absolute gain = mean(|s - s'| / score range)

| score | reference s | other s' |
|---|---|---|
| robust_rel_gain, robust_abs_gain | clean | defended_attacked |
| both_defended_rel_gain, both_defended_abs_gain | defended_clean | defended_attacked |
| nonpurified_rel_gain, nonpurified_abs_gain | clean | attacked |

(lower is better: the defense undid more of the attack), and

- similarity_score = mean over images of SSIM + PSNR / 40 between the clean image and the defended
  attacked one; clear_similarity_score, the same against the defended clean one (images whose
  value is NaN are left out; an image identical to the clean one has PSNR infinity, and so the mean);
- SROCC against MOS of the scores of the clean, attacked, defended clean and defended attacked images
  (clear_srocc_mos, attacked_srocc_mos, robust_clear_srocc_mos, robust_attacked_srocc_mos; NaN
  without MOS), and robust_clear_srocc_clear, SROCC between the clean and the defended clean scores.

The score range is the benchmark's metric range, high - low of the model's scale (0-100 on LIVEC).
SSIM and PSNR are scikit-image's, as the benchmark calls them (`structural_similarity(...,
channel_axis=2, data_range=1)`: 7x7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03, the mean
over the positions at least 3 pixels from the border, then over the channels; `peak_signal_noise_ratio
(..., data_range=1)`), written here in NumPy and SciPy in float64. This SSIM is not ssim.py's (the
Gaussian 11x11 window of Wang et al., used for the labels of adversarial training).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage, stats

RELATIVE_GAIN_EPS = 1e-6  # the benchmark's guard against a zero reference score
PSNR_WEIGHT = 1 / 40  # similarity = SSIM + PSNR / 40 (dB)
SSIM_WINDOW = 7  # scikit-image's default uniform window
SSIM_K1, SSIM_K2 = 0.01, 0.03
SCORES = ("robust_rel_gain", "robust_abs_gain", "nonpurified_rel_gain", "nonpurified_abs_gain",
          "both_defended_rel_gain", "both_defended_abs_gain", "similarity_score", "clear_similarity_score",
          "robust_attacked_srocc_mos", "robust_clear_srocc_mos", "clear_srocc_mos", "attacked_srocc_mos",
          "robust_clear_srocc_clear")  # the benchmark's names, in its order


def relative_gain(reference: np.ndarray, other: np.ndarray) -> float:
    """mean(|reference - other| / (reference + 1e-6)) over the images (the benchmark's rel_gain)."""
    reference, other = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    return float(np.mean(np.abs(reference - other) / (reference + RELATIVE_GAIN_EPS)))


def absolute_gain(reference: np.ndarray, other: np.ndarray, score_range: float) -> float:
    """mean(|reference - other| / score_range) over the images (the benchmark's abs_gain)."""
    reference, other = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    return float(np.mean(np.abs(reference - other) / score_range))


def srocc(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two score lists; NaN with fewer than 2 images, a constant list
    or a NaN (no MOS)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()) or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(a, b).statistic)


def similarity(ssim: np.ndarray, psnr: np.ndarray) -> float:
    """mean(SSIM + PSNR / 40) over the images, NaN values left out (the benchmark's similarity score)."""
    values = np.asarray(ssim, dtype=np.float64) + np.asarray(psnr, dtype=np.float64) * PSNR_WEIGHT
    values = values[~np.isnan(values)]
    return float(np.mean(values)) if len(values) else math.nan


def ssim(reference: np.ndarray, other: np.ndarray) -> float:
    """scikit-image's SSIM (see the module docstring) of two images (3, H, W) in [0, 1], H, W >= 7."""
    x, y = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 3 or min(x.shape[1:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs two images (C, H, W) of one shape, at least {SSIM_WINDOW} pixels a side; "
                         f"got {x.shape} and {y.shape}")
    size = (1, SSIM_WINDOW, SSIM_WINDOW)  # per channel
    mean = lambda image: ndimage.uniform_filter(image, size=size)  # noqa: E731 (scipy's 'reflect' borders)
    mu_x, mu_y = mean(x), mean(y)
    sample = SSIM_WINDOW ** 2 / (SSIM_WINDOW ** 2 - 1)  # sample covariance
    var_x, var_y = sample * (mean(x * x) - mu_x ** 2), sample * (mean(y * y) - mu_y ** 2)
    cov = sample * (mean(x * y) - mu_x * mu_y)
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2  # data range 1
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    border = (SSIM_WINDOW - 1) // 2
    return float(index[:, border:-border, border:-border].mean(axis=(1, 2)).mean())


def psnr(reference: np.ndarray, other: np.ndarray) -> float:
    """PSNR (dB) of two images in [0, 1]: 10 log10(1 / mean squared difference); inf when equal."""
    error = np.mean((np.asarray(reference, dtype=np.float64) - np.asarray(other, dtype=np.float64)) ** 2)
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(1.0 / error))


def view_similarity(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(SSIM, PSNR) of an image from its views (V, 3, H, W) against other views: the means over the views."""
    pairs = list(zip(np.asarray(reference), np.asarray(other)))
    return float(np.mean([ssim(x, y) for x, y in pairs])), float(np.mean([psnr(x, y) for x, y in pairs]))


def benchmark_scores(clean: np.ndarray, attacked: np.ndarray, defended_clean: np.ndarray,
                     defended_attacked: np.ndarray, mos: np.ndarray, ssim_attacked: np.ndarray,
                     psnr_attacked: np.ndarray, ssim_clean: np.ndarray, psnr_clean: np.ndarray,
                     score_range: float) -> dict[str, float]:
    """The benchmark's SCORES from per-image arrays (N,): the four scores (see the module docstring),
    the MOS (NaN: none), SSIM and PSNR of the clean image against the defended attacked one and
    against the defended clean one, and the score range (high - low)."""
    return {
        "robust_rel_gain": relative_gain(clean, defended_attacked),
        "robust_abs_gain": absolute_gain(clean, defended_attacked, score_range),
        "nonpurified_rel_gain": relative_gain(clean, attacked),
        "nonpurified_abs_gain": absolute_gain(clean, attacked, score_range),
        "both_defended_rel_gain": relative_gain(defended_clean, defended_attacked),
        "both_defended_abs_gain": absolute_gain(defended_clean, defended_attacked, score_range),
        "similarity_score": similarity(ssim_attacked, psnr_attacked),
        "clear_similarity_score": similarity(ssim_clean, psnr_clean),
        "robust_attacked_srocc_mos": srocc(mos, defended_attacked),
        "robust_clear_srocc_mos": srocc(mos, defended_clean),
        "clear_srocc_mos": srocc(mos, clean),
        "attacked_srocc_mos": srocc(mos, attacked),
        "robust_clear_srocc_clear": srocc(clean, defended_clean),
    }
