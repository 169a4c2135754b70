"""The statistics module against known answers: Wilson's interval at the edges and a textbook case, bootstraps of
constants and of grouped data, McNemar's exact test, selection stability and the verdict rule."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from asrinterp_utils import stats


def test_wilson_interval_known_cases():
    none = stats.proportion(0, 10)
    assert none.value == 0 and none.low == pytest.approx(0.0, abs=1e-12)
    assert none.high == pytest.approx(0.2775, abs=1e-4)
    every = stats.proportion(10, 10)
    assert every.high == pytest.approx(1.0) and every.low == pytest.approx(1 - 0.2775, abs=1e-4)
    # Wilson 95 % for 6 of 7 (z = 1.96): 0.4869 to 0.9743
    six = stats.proportion(6, 7)
    assert (six.low, six.high) == (pytest.approx(0.4869, abs=1e-4), pytest.approx(0.9743, abs=1e-4))
    assert str(six) == "0.86 [0.49, 0.97] (6 of 7, wilson)"
    with pytest.raises(ValueError, match="n must be at least 1"):
        stats.proportion(0, 0)
    with pytest.raises(ValueError, match="successes must be in 0..n=3"):
        stats.proportion(4, 3)


def test_bootstrap_of_a_constant_is_the_constant():
    e = stats.bootstrap_mean(np.full(20, 0.3))
    assert (e.value, e.low, e.high) == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))


def test_bootstrap_interval_covers_the_mean_and_groups_widen_it():
    rng = np.random.default_rng(0)
    speakers = np.repeat(np.arange(8), 10)
    values = rng.normal(size=8)[speakers] + 0.1 * rng.normal(size=80)  # clips of a speaker move together
    items = stats.bootstrap_mean(values)
    grouped = stats.bootstrap_mean(values, groups=speakers)
    assert items.low < values.mean() < items.high and grouped.low < values.mean() < grouped.high
    assert grouped.high - grouped.low > 2 * (items.high - items.low)  # 8 speakers, not 80 independent clips
    assert (items.n, grouped.n) == (80, 8)
    with pytest.raises(ValueError, match="finite"):
        stats.bootstrap_mean([1.0, np.nan])
    with pytest.raises(ValueError, match="groups has 2 entries for 3 values"):
        stats.bootstrap_mean([1.0, 2.0, 3.0], groups=[0, 1])


def test_paired_difference_cancels_what_the_items_share():
    rng = np.random.default_rng(1)
    base = rng.normal(scale=5.0, size=40)  # large item-to-item spread, shared by both conditions
    a, b = base + 1.0 + 0.1 * rng.normal(size=40), base
    paired = stats.paired_difference(a, b)
    assert paired.low > 0.9 and paired.high < 1.1
    with pytest.raises(ValueError, match="same items"):
        stats.paired_difference([1, 2], [1, 2, 3])


def test_mcnemar_exact():
    before = np.array([False] * 10 + [True] * 5)
    after = np.array([True] * 9 + [False] + [True] * 5)  # 9 turned yes, none turned no
    test = stats.mcnemar(before, after)
    assert (test.only_first, test.only_second) == (0, 9)
    assert test.p_value == pytest.approx(2 * 0.5 ** 9)
    assert stats.mcnemar(before, before).p_value == 1.0


def test_selection_stability_names_the_clear_winner():
    rng = np.random.default_rng(2)
    scores = pd.DataFrame({"weak": rng.normal(0.0, 1, 50), "strong": rng.normal(2.0, 1, 50),
                           "close": rng.normal(1.6, 1, 50)})
    share = stats.selection_stability(scores)
    assert share.index[0] == "strong" and share.sum() == pytest.approx(1.0)
    assert share["weak"] == 0 and 0 < share["close"] < 0.5
    assert stats.selection_stability(-scores, higher_is_better=False).index[0] == "strong"


def test_verdicts_respect_the_interval():
    above = stats.Estimate(0.3, 0.1, 0.5, 20, "test")
    around = stats.Estimate(0.1, -0.1, 0.3, 20, "test")
    below = stats.Estimate(-0.3, -0.5, -0.1, 20, "test")
    assert stats.verdict(above) == "supported"
    assert stats.verdict(around, reported=0.2) == "inconclusive"
    assert stats.verdict(around, reported=0.6) == "not supported"
    assert stats.verdict(below) == "not supported"
    assert stats.verdict(below, direction=-1) == "supported"
    assert set(stats.VERDICTS) == {"supported", "inconclusive", "not supported"}


def test_cross_fitting_removes_the_optimism_of_choosing_on_the_same_items():
    """Twenty candidates of pure noise: the best one's mean on the items that chose it is well above 0, its
    cross-fitted mean is not; a real winner is found in every fold and measured at its true effect."""
    rng = np.random.default_rng(0)
    noise = pd.DataFrame(rng.standard_normal((40, 20)), columns=[f"h{i}" for i in range(20)])
    in_sample = noise.mean().max()
    fit = stats.cross_fitted_best(noise, n_folds=2)
    assert in_sample > 0.3 and abs(fit.values.mean()) < in_sample / 2
    assert len(fit.values) == 40 and set(fit.fold) == {0, 1} and all(c in noise.columns for c in fit.chosen)
    real = noise.assign(h7=noise.h7 + 2.0)
    fit = stats.cross_fitted_best(real, n_folds=4, seed=1)
    assert fit.best_overall == "h7" and fit.agreement == 1.0 and set(fit.chosen) == {"h7"}
    assert fit.values == pytest.approx(real.h7.to_numpy())
    groups = np.repeat(np.arange(10), 4)  # whole groups stay in one fold
    fit = stats.cross_fitted_best(real, groups=groups, n_folds=2)
    assert all(len(set(fit.fold[groups == k])) == 1 for k in range(10))
    low = stats.cross_fitted_best(-real, higher_is_better=False)
    assert low.best_overall == "h7"
    with pytest.raises(ValueError, match="n_folds"):
        stats.cross_fitted_best(real, groups=groups, n_folds=11)
    with pytest.raises(ValueError, match="finite"):
        stats.cross_fitted_best(real.assign(h0=np.nan))


def test_grouped_resamples_draw_whole_groups_and_interval_text_is_one_format():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    draws = list(stats.grouped_resamples(groups, 50, seed=1))
    assert len(draws) == 50
    for rows in draws:
        counts = np.bincount(rows, minlength=6)
        assert counts[0] == counts[1] and counts[3] == counts[4] == counts[5]  # a group comes whole, or not at all
        assert counts[[0, 2, 3]].sum() == 3  # three groups, three draws
    assert [r.tolist() for r in stats.grouped_resamples(groups, 5, seed=1)] == [r.tolist() for r in draws[:5]]
    with pytest.raises(ValueError, match="n_resamples"):
        next(stats.grouped_resamples(groups, 0, seed=1))
    assert stats.interval_text(0.5, 0.25, 0.75) == "0.50 [0.25, 0.75]"
    half = stats.proportion(1, 2)
    assert str(half) == f"{stats.interval_text(half.value, half.low, half.high)} (1 of 2, wilson)"
