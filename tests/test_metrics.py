"""Correlations, errors and the R robustness score against values computed by hand."""
import math

import numpy as np
import pytest

import metrics

TOL = 1e-9


def test_srocc_by_hand():
    # ranks of b: 1 3 2 4 -> squared rank differences 0 1 1 0 -> 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    assert metrics.srocc([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8, abs=TOL)
    assert metrics.srocc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0, abs=TOL)


def test_krocc_by_hand():
    # pairs of (1,2,3,4) vs (1,3,2,4): 5 concordant, 1 discordant -> (5 - 1) / 6
    assert metrics.krocc([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6, abs=TOL)


def test_plcc_by_hand():
    # deviations (-1, 0, 1) and (-4/3, -1/3, 5/3): cov 3, variances 2 and 42/9 -> 3 / sqrt(2 * 42 / 9)
    assert metrics.plcc([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(2 * 42 / 9), abs=TOL)


def test_rmse_and_mae_by_hand():
    # differences 1, 0, 2
    assert metrics.rmse([1, 2, 3], [2, 2, 5]) == pytest.approx(math.sqrt(5 / 3), abs=TOL)
    assert metrics.mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0, abs=TOL)


def test_r_by_hand():
    # s = 20 -> room max(80, 20) = 80, |s' - s| = 5 -> log10(16); s = 70 -> room 70, change 1 -> log10(70)
    r = metrics.robustness_r([20, 70], [25, 69], low=0, high=100)
    assert r == pytest.approx((math.log10(16) + math.log10(70)) / 2, abs=TOL)


def test_r_clips_an_unchanged_score_to_a_fraction_of_the_score_range():
    # s = s' = 50: room 50, change clipped up to 1e-5 x 100; the image is kept, not skipped
    r = metrics.robustness_r([50, 20], [50, 25], low=0, high=100)
    assert metrics.MIN_SCORE_CHANGE_FRACTION == 1e-5
    assert r == pytest.approx((math.log10(50 / 1e-3) + math.log10(16)) / 2, abs=TOL)
    assert metrics.robustness_r([50], [50], 0, 100, min_change=0.5) == pytest.approx(2.0, abs=TOL)
    # the same unmoved image on BID's 0-5 scale and CSIQ's 0-1 scale counts the same
    assert metrics.robustness_r([2.5], [2.5], 0, 5) == pytest.approx(math.log10(50 / 1e-3), abs=TOL)
    assert metrics.robustness_r([0.5], [0.5], 0, 1) == pytest.approx(math.log10(50 / 1e-3), abs=TOL)


def test_r_uses_the_given_score_range():
    # BID-like range 0-5: s = 1 -> room 4, change 0.4 -> log10(10) = 1
    assert metrics.robustness_r([1.0], [1.4], low=0, high=5) == pytest.approx(1.0, abs=TOL)


def test_correlation_of_a_constant_list_is_nan():
    assert math.isnan(metrics.srocc([1, 1, 1], [1, 2, 3]))
    assert math.isnan(metrics.plcc([1, 2, 3], [4, 4, 4]))


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="length"):
        metrics.srocc([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        metrics.plcc([1], [1])
    with pytest.raises(ValueError, match="NaN"):
        metrics.mae([1, np.nan], [1, 2])
    with pytest.raises(ValueError, match="low < high"):
        metrics.robustness_r([1], [2], low=5, high=5)


def test_metrics_accept_arrays_and_return_floats():
    a, b = np.array([[1.0], [2.0], [4.0]]), (2.0, 3.0, 3.0)
    values = [f(a, b) for f in metrics.AGREEMENT_METRICS.values()]
    assert all(type(v) is float for v in values)


def test_integral_robustness_is_the_normalized_trapezoid_area_from_one_at_zero():
    # (0, 1), (1, 0.8), (2, 0.6), (4, 0.2): 0.9 + 0.7 + 0.8 = 2.4 over [0, 4]
    assert metrics.integral_robustness([4, 1, 2], [0.2, 0.8, 0.6]) == pytest.approx(0.6)
    assert metrics.integral_robustness([0.03], [0.5]) == pytest.approx(0.75)
    assert metrics.integral_robustness([1, 2], [1.0, 1.0]) == pytest.approx(1.0)  # never moved
    assert metrics.integral_robustness([1, 2], [0.0, 0.0], value_at_zero=0.0) == 0.0
    assert math.isnan(metrics.integral_robustness([1, 2], [0.5, math.nan]))
    with pytest.raises(ValueError, match="distinct and > 0"):
        metrics.integral_robustness([1, 1], [0.5, 0.4])
    with pytest.raises(ValueError, match="one value per eps"):
        metrics.integral_robustness([1, 2], [0.5])


def test_score_stability_is_one_minus_the_mean_absolute_change_over_the_range():
    assert metrics.score_stability(metrics.mae([10, 50], [12, 44]), 0, 100) == pytest.approx(1 - 4 / 100)
    assert metrics.score_stability(metrics.mae([1, 2], [1, 2]), 0, 5) == 1.0
