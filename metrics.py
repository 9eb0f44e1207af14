"""Agreement between two lists of quality scores, and the R robustness score.

Correlations (SROCC, PLCC, KROCC) and errors (RMSE, MAE) compare predictions with MOS, or clean
predictions `s` with attacked predictions `s'` over a test set. PLCC is computed on the raw scores,
without the logistic mapping some IQA papers fit first, as the released HyperIQA code does.

R (Zhang et al., "Perceptual Attacks of No-Reference Image Quality Models with Human-in-the-Loop",
NeurIPS 2022), used by the NT paper: for each image, how far the score could have moved (to the far
end of the score range) against how far the attack moved it, on a log10 scale, averaged:

    R = mean(log10(max(high - s, s - low) / |s' - s|))

Higher R is more robust; R = 1 means the attack moved the scores by a tenth of the room they had.

Integral robustness (over a sweep of attack radii, as the robustness benchmarks of the field report
it): the normalized area under a curve v(eps) of a robustness value that is 1 at eps = 0,

    integral = (1 / eps_max) * trapezoid area under (0, 1), (eps_1, v_1), ..., (eps_max, v_max)

1 for a model the attack does not move at all; lower is less robust. The evaluation reports it for
v = SROCC(clean, attacked) and for v = `score_stability` = 1 - mean|s' - s| / (high - low).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy import stats

ArrayLike = Sequence[float] | np.ndarray

# |s' - s| below this fraction of the score range counts as this much, so an image whose score did not
# move gives a large finite term (log10(100 / 1e-3) = 5 on a 0-100 range, the same on any range)
# instead of an infinite one.
MIN_SCORE_CHANGE_FRACTION = 1e-5


def _paired(a: ArrayLike, b: ArrayLike, minimum: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"score lists differ in length: {a.size} and {b.size}")
    if a.size < minimum:
        raise ValueError(f"need at least {minimum} paired scores, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("scores contain NaN or infinity")
    return a, b


def _correlation(function, a: ArrayLike, b: ArrayLike) -> float:
    """`function(a, b)[0]`; NaN when a list is constant (the correlation is undefined)."""
    a, b = _paired(a, b, minimum=2)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(function(a, b)[0])


def srocc(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman rank-order correlation of two score lists of equal length (>= 2); NaN if one is constant."""
    return _correlation(stats.spearmanr, a, b)


def plcc(a: ArrayLike, b: ArrayLike) -> float:
    """Pearson linear correlation of two score lists (no logistic mapping); NaN if one is constant."""
    return _correlation(stats.pearsonr, a, b)


def krocc(a: ArrayLike, b: ArrayLike) -> float:
    """Kendall rank-order correlation (tau-b) of two score lists; NaN if one is constant."""
    return _correlation(stats.kendalltau, a, b)


def defined_or_nan(metric, a: np.ndarray, b: np.ndarray) -> float:
    """metric(a, b) of two score lists, or NaN when it is undefined: fewer than 2 values, or a NaN or
    infinity among them (no MOS)."""
    if len(a) < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    return metric(a, b)


def rmse(a: ArrayLike, b: ArrayLike) -> float:
    """Root mean squared difference, in score units."""
    a, b = _paired(a, b)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def mae(a: ArrayLike, b: ArrayLike) -> float:
    """Mean absolute difference, in score units."""
    a, b = _paired(a, b)
    return float(np.mean(np.abs(a - b)))


def robustness_r(clean: ArrayLike, attacked: ArrayLike, low: float, high: float,
                 min_change: float | None = None) -> float:
    """R = mean(log10(max(high - s, s - low) / max(|s' - s|, min_change))) over images.

    clean `s`, attacked `s'`: per-image scores; low, high: the bottom and top of the score range
    (0 and 100 on LIVEC). A score change smaller than `min_change` score units (default
    MIN_SCORE_CHANGE_FRACTION of the range: 1e-3 on 0-100, 5e-5 on BID's 0-5) is clipped up to it:
    an unmoved score adds log10(room / min_change) rather than infinity, and no image is dropped.
    """
    if not high > low:
        raise ValueError(f"the score range needs low < high, got low={low}, high={high}")
    if min_change is None:
        min_change = MIN_SCORE_CHANGE_FRACTION * (high - low)
    if not min_change > 0:
        raise ValueError(f"min_change must be > 0, got {min_change}")
    s, s_adv = _paired(clean, attacked)
    room = np.maximum(high - s, s - low)
    change = np.maximum(np.abs(s_adv - s), min_change)
    return float(np.mean(np.log10(room / change)))


def score_stability(mean_abs_change: float, low: float, high: float) -> float:
    """1 - mean|s' - s| / (high - low): 1 when no score moved, 0 when they moved by the whole score
    range on average (mean_abs_change: `mae` of clean and attacked scores; low, high: the score range)."""
    if not high > low:
        raise ValueError(f"the score range needs low < high, got low={low}, high={high}")
    return 1.0 - mean_abs_change / (high - low)


def integral_robustness(eps_grid: ArrayLike, values: ArrayLike, value_at_zero: float = 1.0) -> float:
    """Normalized area under a robustness curve: the trapezoid area under the points
    (0, value_at_zero), (eps_i, values_i) sorted by eps, divided by the largest eps.

    eps_grid: distinct attack radii > 0 (any unit, any order); values: the robustness value at each
    (e.g. SROCC between clean and attacked scores). One point gives (value_at_zero + value) / 2.
    NaN when a value is NaN (e.g. an SROCC over fewer than two images).
    """
    eps = np.asarray(eps_grid, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if eps.shape != v.shape or eps.size == 0:
        raise ValueError(f"need one value per eps, got {eps.size} eps and {v.size} values")
    if not (eps > 0).all() or np.unique(eps).size != eps.size:
        raise ValueError(f"eps must be distinct and > 0, got {eps.tolist()}")
    order = np.argsort(eps)
    eps, v = np.concatenate([[0.0], eps[order]]), np.concatenate([[value_at_zero], v[order]])
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(eps)) / eps[-1])


# Name -> function of the metrics reported between two score lists, in table order.
AGREEMENT_METRICS = {"srocc": srocc, "plcc": plcc, "krocc": krocc, "rmse": rmse, "mae": mae}
