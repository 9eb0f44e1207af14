"""The defense benchmark's scores against hand computations, and its SSIM and PSNR against scikit-image's
numbers (tests/fixtures/skimage_similarity.json)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

import defense_scores
import msu_scores

FIXTURE = Path(__file__).parent / "fixtures" / "skimage_similarity.json"
ROUNDING = 1e-12


def test_gains_follow_the_benchmark_definitions_in_their_three_variants():
    clean, attacked = np.array([40.0, 60.0, 80.0]), np.array([50.0, 45.0, 80.0])
    defended_clean, defended_attacked = np.array([41.0, 58.0, 76.0]), np.array([43.0, 85.0, 77.0])
    mos, similar = np.array([30.0, 50.0, 70.0]), np.array([0.9, 0.8, np.nan])
    psnr_attacked, psnr_clean = np.array([30.0, 20.0, 25.0]), np.array([40.0, 36.0, 1.0])
    scores = defense_scores.benchmark_scores(clean, attacked, defended_clean, defended_attacked, mos,
                                             similar, psnr_attacked, similar, psnr_clean, 100.0)
    assert list(scores) == list(defense_scores.SCORES)
    expect = {
        "robust_rel_gain": (3 / (40 + 1e-6) + 25 / (60 + 1e-6) + 3 / (80 + 1e-6)) / 3,  # clean vs defended attacked
        "robust_abs_gain": (3 + 25 + 3) / 3 / 100,
        "nonpurified_rel_gain": (10 / (40 + 1e-6) + 15 / (60 + 1e-6) + 0) / 3,  # clean vs attacked
        "nonpurified_abs_gain": (10 + 15 + 0) / 3 / 100,
        "both_defended_rel_gain": (2 / (41 + 1e-6) + 27 / (58 + 1e-6) + 1 / (76 + 1e-6)) / 3,  # defended clean vs attacked
        "both_defended_abs_gain": (2 + 27 + 1) / 3 / 100,
        "similarity_score": (0.9 + 30 / 40 + 0.8 + 20 / 40) / 2,  # the NaN image left out
        "clear_similarity_score": (0.9 + 40 / 40 + 0.8 + 36 / 40) / 2,
        "robust_attacked_srocc_mos": 0.5,  # ranks 1 3 2 against 1 2 3: 1 - 6 * 2 / (3 * 8)
        "robust_clear_srocc_mos": 1.0, "clear_srocc_mos": 1.0,
        "attacked_srocc_mos": 0.5,  # ranks 2 1 3
        "robust_clear_srocc_clear": 1.0,
    }
    for name, value in expect.items():
        assert scores[name] == pytest.approx(value, rel=1e-12), name


def test_srocc_is_undefined_without_mos_or_with_too_few_images():
    assert math.isnan(defense_scores.srocc(np.array([math.nan, math.nan]), np.array([1.0, 2.0])))
    assert math.isnan(defense_scores.srocc(np.array([1.0]), np.array([1.0])))
    assert defense_scores.srocc(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == -1.0


def hwc(image: np.ndarray) -> np.ndarray:
    return np.moveaxis(image, 0, -1)


def test_ssim_and_psnr_are_scikit_images():
    pairs = json.loads(FIXTURE.read_text())["pairs"]
    for pair in pairs:
        clean, other = np.array(pair["clean"]) / 255.0, np.array(pair["other"]) / 255.0
        assert msu_scores.image_ssim(hwc(clean), hwc(other)) == pytest.approx(pair["ssim"], abs=ROUNDING)
        assert msu_scores.image_psnr(hwc(clean), hwc(other)) == pytest.approx(pair["psnr"], abs=ROUNDING)
    clean = np.array(pairs[0]["clean"]) / 255.0
    assert msu_scores.image_ssim(hwc(clean), hwc(clean)) == pytest.approx(1.0)
    assert msu_scores.image_psnr(hwc(clean), hwc(clean)) == math.inf
    views = np.stack([clean, np.array(pairs[0]["other"]) / 255.0])
    ssim, psnr = defense_scores.view_similarity(views, views[::-1])  # both views: the same pair, both ways
    assert ssim == pytest.approx(pairs[0]["ssim"], abs=ROUNDING) and psnr == pytest.approx(pairs[0]["psnr"], abs=ROUNDING)
    with pytest.raises(ValueError, match="at least 7x7 pixels"):
        defense_scores.view_similarity(clean[None, :, :6], clean[None, :, :6])
