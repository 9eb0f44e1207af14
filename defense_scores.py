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
(..., data_range=1)`), those of msu_scores.py (NumPy and SciPy, float64). This SSIM is not ssim.py's
(the Gaussian 11x11 window of Wang et al., used for the labels of adversarial training).
"""
from __future__ import annotations

import math

import numpy as np

import metrics
import msu_scores

RELATIVE_GAIN_EPS = 1e-6  # the benchmark's guard against a zero reference score
PSNR_WEIGHT = 1 / 40  # similarity = SSIM + PSNR / 40 (dB)
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
    """Spearman's rank correlation of two score lists (metrics.srocc); NaN with fewer than 2 images, a
    constant list or a NaN (no MOS)."""
    return metrics.defined_or_nan(metrics.srocc, np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def similarity(ssim: np.ndarray, psnr: np.ndarray) -> float:
    """mean(SSIM + PSNR / 40) over the images, NaN values left out (the benchmark's similarity score)."""
    values = np.asarray(ssim, dtype=np.float64) + np.asarray(psnr, dtype=np.float64) * PSNR_WEIGHT
    values = values[~np.isnan(values)]
    return float(np.mean(values)) if len(values) else math.nan


def view_similarity(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(SSIM, PSNR) of an image from its views (V, 3, H, W) in [0, 1] against other views: the means over
    the views of scikit-image's SSIM and PSNR (msu_scores.image_ssim, image_psnr; sides of at least 7)."""
    pairs = [(np.moveaxis(x, 0, -1), np.moveaxis(y, 0, -1)) for x, y in zip(np.asarray(reference), np.asarray(other))]
    return (float(np.mean([msu_scores.image_ssim(x, y) for x, y in pairs])),
            float(np.mean([msu_scores.image_psnr(x, y) for x, y in pairs])))


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
