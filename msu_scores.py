"""The scores of the MSU metrics robustness benchmark (Antsiferova et al., AAAI 2024; code:
msu-video-group/MSU_Metrics_Robustness_Benchmark, score_methods.py and methods/utils), exactly as its
code defines them, with numpy and scipy only.

Over one model x attack on a set of images with clean scores s and attacked scores s' (N,):

- the min-max scaling is fitted on the clean scores of the set and applied to both (scikit-learn's
  MinMaxScaler arithmetic: s_hat = s * scale + offset, scale = 1 / (max s - min s), offset =
  -min s * scale; a constant set gets scale 1), and k = -1 for a model where lower is better;
- per image, reported as the mean with a 95% Student-t interval over the images:
  normalized absolute gain k (s'_hat - s_hat); normalized relative gain
  k ((s'_hat + 1) - (s_hat + 1)) / (s_hat + 1); robustness score
  log10(max(1 - s_hat, s_hat - 0) / (|s_hat - s'_hat| + 1e-6)); classic relative gain
  (s' - s) / (s + 1e-6) on the raw scores;
- over the set: Wasserstein score k W(s_hat, s'_hat) sign(mean s'_hat - mean s_hat) and energy-distance
  score, the same with scipy's energy distance.

Higher gains mean a more successful attack (a less robust model); a higher robustness score means a
more robust one. The benchmark's own evaluation calls these without k (every metric it ranks is read
as higher-is-better); k is there for a model trained on DMOS.

Per image, its results CSV also holds rel_gain = s' / s (inf when |s| < 1e-3), and the PSNR, SSIM and
MSE of the attacked image against the clean one, as scikit-image computes them for images in [0, 1]
(`image_psnr`, `image_ssim`, `image_mse`).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import ndimage, stats

RELATIVE_GAIN_EPS = 1e-6  # the benchmark's guard in the classic relative gain's denominator
ROBUSTNESS_EPS = 1e-6  # its guard in the robustness score's denominator
REL_GAIN_MIN_CLEAN = 1e-3  # below this |clean score|, its per-image rel_gain is inf
CONFIDENCE = 0.95  # its Student-t interval
CONSTANT_RANGE = 10 * np.finfo(np.float64).eps  # scikit-learn's MinMaxScaler takes a narrower range as constant
SSIM_WINDOW = 7  # scikit-image's default: a uniform 7x7 window
SSIM_K1, SSIM_K2 = 0.01, 0.03

# Column names of the benchmark's per-image results CSV (methods/utils/evaluate.py)
IMAGE_COLUMNS = ("image_name", "test_dataset", "clear", "attacked", "rel_gain", "psnr", "ssim", "mse")
PER_IMAGE_SCORES = ("normalized_absolute_gain", "normalized_relative_gain", "robustness_score",
                    "relative_gain_classic")
SET_SCORES = ("wasserstein_score", "energy_distance_score")


def _scores(values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0 or not np.isfinite(array).all():
        raise ValueError("scores must be a non-empty list of finite numbers")
    return array


def min_max_fit(clean) -> tuple[float, float]:
    """(scale, offset) of the min-max scaling fitted on the clean scores (N,): s * scale + offset maps
    min s to 0 and max s to 1 (scale 1 for a set whose range is below CONSTANT_RANGE)."""
    clean = _scores(clean)
    low, high = clean.min(), clean.max()
    width = high - low
    scale = 1.0 / (width if width >= CONSTANT_RANGE else 1.0)
    return float(scale), float(0.0 - low * scale)


def _scaled(clean, attacked) -> tuple[np.ndarray, np.ndarray]:
    clean, attacked = _scores(clean), _scores(attacked)
    if clean.shape != attacked.shape:
        raise ValueError(f"need one attacked score per clean score, got {clean.size} and {attacked.size}")
    scale, offset = min_max_fit(clean)
    return clean * scale + offset, attacked * scale + offset


def _sign(lower_is_better: bool) -> float:
    return -1.0 if lower_is_better else 1.0


def normalized_absolute_gain(clean, attacked, lower_is_better: bool = False) -> np.ndarray:
    """k (s'_hat - s_hat) per image (N,)."""
    s, s_adv = _scaled(clean, attacked)
    return _sign(lower_is_better) * (s_adv - s)


def normalized_relative_gain(clean, attacked, lower_is_better: bool = False) -> np.ndarray:
    """k ((s'_hat + 1) - (s_hat + 1)) / (s_hat + 1) per image (N,)."""
    s, s_adv = _scaled(clean, attacked)
    return _sign(lower_is_better) * ((s_adv + 1.0) - (s + 1.0)) / (s + 1.0)


def robustness_score(clean, attacked, lower_is_better: bool = False) -> np.ndarray:
    """log10(max(1 - s_hat, s_hat - 0) / (|s_hat - s'_hat| + 1e-6)) per image (N,); no k (it is a
    size, not a direction)."""
    s, s_adv = _scaled(clean, attacked)
    return np.log10(np.maximum(1.0 - s, s - 0.0) / (np.abs(s - s_adv) + ROBUSTNESS_EPS))


def relative_gain_classic(clean, attacked, lower_is_better: bool = False) -> np.ndarray:
    """(s' - s) / (s + 1e-6) per image (N,), on the raw scores; no k (as the benchmark's)."""
    clean, attacked = _scores(clean), _scores(attacked)
    return (attacked - clean) / (clean + RELATIVE_GAIN_EPS)


def _distance_score(distance: Callable[[np.ndarray, np.ndarray], float], clean, attacked,
                    lower_is_better: bool) -> float:
    s, s_adv = _scaled(clean, attacked)
    return float(_sign(lower_is_better) * distance(s, s_adv) * np.sign(np.mean(s_adv) - np.mean(s)))


def wasserstein_score(clean, attacked, lower_is_better: bool = False) -> float:
    """k W(s_hat, s'_hat) sign(mean s'_hat - mean s_hat): the first Wasserstein distance of the two
    scaled score distributions, signed by the direction of the mean shift."""
    return _distance_score(stats.wasserstein_distance, clean, attacked, lower_is_better)


def energy_distance_score(clean, attacked, lower_is_better: bool = False) -> float:
    """k E(s_hat, s'_hat) sign(mean s'_hat - mean s_hat), E scipy's energy distance."""
    return _distance_score(stats.energy_distance, clean, attacked, lower_is_better)


def mean_interval(values) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-image values (N,) and its 95% Student-t interval
    (N - 1 degrees of freedom, the standard error with ddof 1), as the benchmark reports it;
    the interval is NaN for one image."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    mean = float(np.mean(values))
    if values.size < 2:
        return mean, math.nan, math.nan
    low, high = stats.t.interval(CONFIDENCE, values.size - 1, loc=mean, scale=stats.sem(values))
    return mean, float(low), float(high)


PER_IMAGE = {"normalized_absolute_gain": normalized_absolute_gain, "normalized_relative_gain": normalized_relative_gain,
             "robustness_score": robustness_score, "relative_gain_classic": relative_gain_classic}
OVER_SET = {"wasserstein_score": wasserstein_score, "energy_distance_score": energy_distance_score}
# The columns of a row of benchmark_scores (after the setting's own columns)
SCORE_COLUMNS = tuple(f"{name}{part}" for name in PER_IMAGE_SCORES for part in ("", "_low", "_high")) + SET_SCORES


def benchmark_scores(clean, attacked, lower_is_better: bool = False) -> dict[str, float]:
    """Every score of the benchmark over one set (see SCORE_COLUMNS): each per-image score's mean and
    95% interval (`{name}`, `{name}_low`, `{name}_high`), and the two set scores."""
    row: dict[str, float] = {}
    for name, score in PER_IMAGE.items():
        row[name], row[f"{name}_low"], row[f"{name}_high"] = mean_interval(score(clean, attacked, lower_is_better))
    for name, score in OVER_SET.items():
        row[name] = score(clean, attacked, lower_is_better)
    return row


# -- the per-image columns of the benchmark's results CSV


def rel_gain(clean: float, attacked: float) -> float:
    """s' / s, inf when |s| < 1e-3 (the benchmark's per-image rel_gain column)."""
    return attacked / clean if abs(clean) >= REL_GAIN_MIN_CLEAN else math.inf


def _pair(clean: np.ndarray, attacked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    clean, attacked = np.asarray(clean, dtype=np.float64), np.asarray(attacked, dtype=np.float64)
    if clean.shape != attacked.shape or clean.ndim != 3 or clean.shape[2] != 3:
        raise ValueError(f"expected two images (H, W, 3) of one shape, got {clean.shape} and {attacked.shape}")
    return clean, attacked


def image_mse(clean: np.ndarray, attacked: np.ndarray) -> float:
    """Mean squared difference of two images (H, W, 3) in [0, 1], over pixels and channels."""
    clean, attacked = _pair(clean, attacked)
    return float(np.mean((clean - attacked) ** 2))


def image_psnr(clean: np.ndarray, attacked: np.ndarray) -> float:
    """PSNR (dB) of the attacked image against the clean one (H, W, 3) in [0, 1]: 10 log10(1 / MSE)
    (scikit-image's data range for a float image with no negative value); inf for equal images."""
    error = image_mse(clean, attacked)
    return math.inf if error == 0 else float(10 * np.log10(1.0 / error))


def image_ssim(clean: np.ndarray, attacked: np.ndarray) -> float:
    """SSIM of two images (H, W, 3) in [0, 1] as scikit-image's `structural_similarity(...,
    channel_axis=2, data_range=1)` computes it: per channel, local means, variances (sample, N - 1)
    and covariance over a uniform 7x7 window (reflected at the border), the SSIM map averaged
    after cropping 3 pixels off each side; then the mean over channels. Sides of at least 7."""
    clean, attacked = _pair(clean, attacked)
    if min(clean.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {clean.shape[:2]}")
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    pad = (SSIM_WINDOW - 1) // 2
    covariance_norm = SSIM_WINDOW ** 2 / (SSIM_WINDOW ** 2 - 1)
    values = []
    for channel in range(3):
        x, y = clean[:, :, channel], attacked[:, :, channel]
        mean_x, mean_y, mean_xx, mean_yy, mean_xy = (ndimage.uniform_filter(m, size=SSIM_WINDOW)
                                                     for m in (x, y, x * x, y * y, x * y))
        var_x = covariance_norm * (mean_xx - mean_x * mean_x)
        var_y = covariance_norm * (mean_yy - mean_y * mean_y)
        cov = covariance_norm * (mean_xy - mean_x * mean_y)
        index = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2))
        values.append(index[pad:-pad, pad:-pad].mean())
    return float(np.mean(values))
