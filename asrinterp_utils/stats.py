"""Intervals, paired tests and verdicts for the book's claims; scipy and numpy do the mathematics.

Every headline number in the book carries an interval, chosen by what the number is:

- a proportion (loops resolved, a hallucination rate, agreement): Wilson's score interval, :func:`proportion`
  (``scipy.stats.binomtest``); it stays inside [0, 1] and is not empty at 0 of n or n of n;
- a mean over clips (WER, accuracy, KL, a logit difference): a percentile bootstrap, :func:`bootstrap_mean`, that
  resamples clips, or whole groups (speakers, voices, source clips) when clips of one group are not independent;
- two conditions measured on the same items (a patch against no patch, a model against its control): the paired
  difference, :func:`paired_difference`, and for two yes/no outcomes McNemar's exact test on the discordant
  pairs, :func:`mcnemar`;
- how stable a choice is (which head, layer or component is best): the share of bootstrap resamples in which each
  candidate wins, :func:`selection_stability`;
- the effect of "the best" candidate without the optimism of choosing it on the same items: cross-fitting,
  :func:`cross_fitted_best` (chosen on some items, measured on the others, every item measured once);
- a verdict that respects the interval, :func:`verdict`: "supported" only when the interval excludes the null.

>>> print(proportion(6, 7))
0.86 [0.49, 0.97] (6 of 7, wilson)
>>> verdict(proportion(6, 7), null=0.5)
'supported'
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

__all__ = ["Estimate", "McNemar", "CrossFit", "proportion", "bootstrap_mean", "grouped_resample_means",
           "grouped_resamples", "interval_text",
           "paired_difference", "mcnemar", "selection_stability", "cross_fitted_best", "verdict", "VERDICTS",
           "CONFIDENCE", "N_RESAMPLES"]

CONFIDENCE = 0.95
"""The confidence level of every interval in the book."""

N_RESAMPLES = 2000
"""Bootstrap resamples: enough that the 2.5 % and 97.5 % percentiles move by well under the interval's width when
the seed changes."""

VERDICTS = ("supported", "inconclusive", "not supported")
"""What :func:`verdict` can say, strongest first."""


@dataclass(frozen=True)
class Estimate:
    """A number with its interval: ``value`` in [``low``, ``high``] at ``confidence``, from ``n`` items (clips or
    groups, as ``method`` says); ``successes`` for a proportion (``value = successes / n``)."""

    value: float
    low: float
    high: float
    n: int
    method: str
    confidence: float = CONFIDENCE
    successes: int | None = None

    def excludes(self, x: float) -> bool:
        """Whether ``x`` lies outside the interval."""
        return not self.low <= x <= self.high

    def __str__(self) -> str:
        counted = f"{self.successes} of {self.n}, " if self.successes is not None else ""
        return f"{interval_text(self.value, self.low, self.high)} ({counted}{self.method})"


def interval_text(value: float, low: float, high: float, digits: int = 2) -> str:
    """How every interval in the book is written: ``value [low, high]`` with ``digits`` decimals."""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _check_confidence(confidence: Any, what: str) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"{what}: confidence is a level between 0 and 1 (0.95 for a 95 % interval); got "
                         f"{confidence!r}")


def proportion(successes: int, n: int, *, confidence: float = CONFIDENCE) -> Estimate:
    """``successes`` of ``n`` with Wilson's score interval (``scipy.stats.binomtest(...).proportion_ci``)."""
    if any(isinstance(x, bool) or int(x) != x for x in (successes, n)):
        raise ValueError(f"proportion: successes and n are counts (whole numbers); got {successes!r} of {n!r}. For a "
                         "share, pass the count of items and the number of items")
    _check_confidence(confidence, "proportion")
    successes, n = int(successes), int(n)
    if n < 1:
        raise ValueError(f"proportion: n must be at least 1 (no items, no proportion); got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"proportion: successes must be in 0..n={n}; got {successes}")
    ci = _scipy_stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Estimate(successes / n, float(ci.low), float(ci.high), n, "wilson", confidence, successes)


def _values_and_groups(values: Any, groups: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{what}: no values given")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: values must be finite; {int((~np.isfinite(x)).sum())} of {x.size} are not "
                         "(drop or impute them first, and say so)")
    if groups is None:
        return x, np.arange(x.size)
    g = np.asarray(groups).ravel()
    if g.size != x.size:
        raise ValueError(f"{what}: groups has {g.size} entries for {x.size} values (one group per value)")
    return x, np.unique(g, return_inverse=True)[1]


def grouped_resample_means(values: np.ndarray, codes: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """The bootstrap behind every interval here: the mean of each column of ``values`` ``(n, k)`` over
    ``n_resamples`` resamples that draw the groups ``codes`` (``(n,)`` integers ``0 .. G-1``, one per row) with
    replacement, G draws each, every row of a drawn group counting once per draw. Returns ``(n_resamples, k)``."""
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be at least 1; got {n_resamples}")
    n_groups = int(codes.max()) + 1
    sums = np.stack([np.bincount(codes, weights=column, minlength=n_groups) for column in values.T], axis=1)
    sizes = np.bincount(codes, minlength=n_groups)                                                   # (groups,)
    draws = np.random.default_rng(seed).multinomial(n_groups, np.full(n_groups, 1.0 / n_groups),
                                                    size=int(n_resamples))                      # (resamples, groups)
    return (draws @ sums) / (draws @ sizes)[:, None]


def grouped_resamples(groups: Any, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of ``n_resamples`` bootstrap resamples that draw whole groups with replacement (``groups``:
    ``(n,)`` labels, one per row; G distinct groups, G draws each, every row of a drawn group taken once per draw),
    for a statistic that is not a mean (an AUROC): each resample is an index array into the ``n`` rows."""
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be at least 1; got {n_resamples}")
    _, codes = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    members = [np.flatnonzero(codes == g) for g in range(int(codes.max()) + 1)]
    rng = np.random.default_rng(seed)
    for _ in range(int(n_resamples)):
        yield np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])


def bootstrap_mean(values: Any, *, groups: Any = None, n_resamples: int = N_RESAMPLES,
                   confidence: float = CONFIDENCE, seed: int = 0) -> Estimate:
    """The mean of ``values`` ``(n,)`` with a percentile bootstrap interval.

    With ``groups`` (one label per value: a speaker, a voice, a source clip) whole groups are resampled with
    replacement and the mean is taken over the values they bring (clips of one speaker are not independent, so
    resampling clips would give too narrow an interval); without, single values are. ``n`` of the result counts the
    units resampled. A constant gives a zero-width interval at the constant.
    """
    x, g = _values_and_groups(values, groups, "bootstrap_mean")
    _check_confidence(confidence, "bootstrap_mean")
    if int(n_resamples) < 1:
        raise ValueError(f"bootstrap_mean: n_resamples must be at least 1; got {n_resamples}")
    n_groups = int(g.max()) + 1
    means = grouped_resample_means(x[:, None], g, n_resamples, seed)[:, 0]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    method = "bootstrap over groups" if groups is not None else "bootstrap over items"
    return Estimate(float(x.mean()), float(min(low, x.mean())), float(max(high, x.mean())), n_groups, method,
                    confidence)


def paired_difference(a: Any, b: Any, *, groups: Any = None, n_resamples: int = N_RESAMPLES,
                      confidence: float = CONFIDENCE, seed: int = 0) -> Estimate:
    """The mean of ``a - b`` over items measured under both conditions (``a``, ``b``: ``(n,)``, item ``i`` in the
    same place in both), with the interval of :func:`bootstrap_mean` (items, or their ``groups``, resampled
    together, so that what the two conditions share cancels)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: a has {a.size} items and b {b.size}; a paired comparison needs the "
                         "same items in both, in the same order")
    return bootstrap_mean(a - b, groups=groups, n_resamples=n_resamples, confidence=confidence, seed=seed)


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two yes/no outcomes on the same items: ``only_first`` items were yes under the first
    condition only, ``only_second`` under the second only; ``p_value`` (two-sided, exact binomial on the
    discordant pairs)."""

    only_first: int
    only_second: int
    p_value: float


def mcnemar(first: Any, second: Any) -> McNemar:
    """McNemar's exact test: did the share of yes change between two conditions measured on the same items?
    ``first``, ``second``: ``(n,)`` booleans (e.g. loop resolved without and with a patch)."""
    x, y = np.asarray(first, dtype=bool).ravel(), np.asarray(second, dtype=bool).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"mcnemar: first ({x.size}) and second ({y.size}) must be the same, non-empty items")
    only_first, only_second = int((x & ~y).sum()), int((~x & y).sum())
    discordant = only_first + only_second
    p = 1.0 if discordant == 0 else float(_scipy_stats.binomtest(only_first, discordant, 0.5).pvalue)
    return McNemar(only_first, only_second, p)


def _scores_matrix(scores: Any, what: str) -> tuple[list | None, np.ndarray]:
    """``scores (items, candidates)`` as float64, checked, and the candidates' names (a DataFrame's columns)."""
    names = list(scores.columns) if isinstance(scores, pd.DataFrame) else None
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"{what}: scores must be (items, candidates); got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{what}: scores must be finite")
    return names, s


def selection_stability(scores: Any, *, groups: Any = None, n_resamples: int = N_RESAMPLES, seed: int = 0,
                        higher_is_better: bool = True) -> pd.Series:
    """How often each candidate is the best under resampling: ``scores`` is ``(items, candidates)`` (a DataFrame
    names the candidates by its columns), the best candidate has the highest mean score over the items (lowest with
    ``higher_is_better=False``); items, or their ``groups``, are resampled with replacement. Returns the share of
    resamples each candidate wins, largest first (ties go to the first candidate)."""
    names, s = _scores_matrix(scores, "selection_stability")
    _, g = _values_and_groups(s[:, 0], groups, "selection_stability")
    means = grouped_resample_means(s, g, n_resamples, seed)                                       # (resamples, cand.)
    winners = (means if higher_is_better else -means).argmax(axis=1)
    share = np.bincount(winners, minlength=s.shape[1]) / len(winners)
    return pd.Series(share, index=names if names is not None else range(s.shape[1]),
                     name="share of resamples won").sort_values(ascending=False, kind="stable")


@dataclass(frozen=True)
class CrossFit:
    """The best candidate chosen on some items and measured on others (:func:`cross_fitted_best`).

    ``values (items,)``: each item's score under the candidate chosen *without* it; ``chosen``: that candidate,
    per item; ``fold (items,)``: the item's fold; ``best_overall``: the candidate that the whole set would choose
    (what a chapter names as "the best"), and ``agreement``: the share of folds that chose it too."""

    values: np.ndarray
    chosen: list
    fold: np.ndarray
    best_overall: Any
    agreement: float


def cross_fitted_best(scores: Any, *, groups: Any = None, n_folds: int = 2, seed: int = 0,
                      higher_is_better: bool = True) -> CrossFit:
    """Choose the best candidate on some items and measure it on the others, so that its effect is not read off the
    items that chose it (which biases it upward: with many candidates, one wins on noise).

    ``scores (items, candidates)`` (a DataFrame names the candidates by its columns). Items, or whole ``groups`` of
    them (all clips of a source together), are dealt into ``n_folds`` folds at random (``seed``); for each fold the
    candidate with the best mean score on the *other* folds is chosen and its scores on this fold's items are kept.
    Every item is measured once, by a choice it took no part in: give :attr:`CrossFit.values` to
    :func:`bootstrap_mean` (or count them with :func:`proportion` for yes/no scores)."""
    names, s = _scores_matrix(scores, "cross_fitted_best")
    _, g = _values_and_groups(s[:, 0], groups, "cross_fitted_best")
    n_groups = int(g.max()) + 1
    if int(n_folds) != n_folds or not 2 <= n_folds <= n_groups:
        raise ValueError(f"cross_fitted_best: n_folds must be a whole number from 2 to the number of "
                         f"{'groups' if groups is not None else 'items'} ({n_groups}); got {n_folds}")
    sign = 1.0 if higher_is_better else -1.0
    group_fold = np.random.default_rng(seed).permutation(n_groups) % int(n_folds)
    fold = group_fold[g]
    label = (lambda j: names[j]) if names is not None else (lambda j: int(j))
    overall = int((sign * s.mean(axis=0)).argmax())
    values, chosen, agree = np.empty(len(s)), [None] * len(s), 0
    for k in range(int(n_folds)):
        inside, outside = fold == k, fold != k
        best = int((sign * s[outside].mean(axis=0)).argmax())
        agree += best == overall
        values[inside] = s[inside, best]
        for i in np.flatnonzero(inside):
            chosen[i] = label(best)
    return CrossFit(values, chosen, fold, label(overall), agree / int(n_folds))


def verdict(estimate: Estimate, *, null: float = 0.0, reported: float | None = None, direction: int = 1) -> str:
    """What an estimate says about a claimed effect, respecting its interval.

    ``"supported"``: the interval lies wholly on the claimed side of ``null`` (above it for ``direction=1``, below
    for ``-1``). ``"inconclusive"``: it does not, but it still includes the ``reported`` effect (or no effect was
    reported): these data cannot tell. ``"not supported"``: it excludes the reported effect without clearing the
    null, or it lies wholly on the other side of the null.
    """
    if direction not in (1, -1):
        raise ValueError(f"verdict: direction must be 1 (the claim is an increase) or -1 (a decrease); got {direction}")
    if not all(math.isfinite(x) for x in (estimate.value, estimate.low, estimate.high, null)):
        raise ValueError(f"verdict: the estimate and the null must be finite numbers; got {estimate} against {null}")
    low, high = (estimate.low, estimate.high) if direction == 1 else (-estimate.high, -estimate.low)
    null_ = null * direction
    if low > null_:
        return "supported"
    if high < null_:
        return "not supported"
    if reported is None or not estimate.excludes(reported):
        return "inconclusive"
    return "not supported"
