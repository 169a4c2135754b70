"""Per-layer linear probes: at which layer does a property of the input become linearly readable?

A *probe* is a small classifier trained on a model's hidden states to predict a property of the input clip: the
speaker's gender or accent, the noise condition, the word spoken. If a linear probe on layer ``l`` predicts the
property well for speakers it was never trained on, the property is *linearly decodable* from that layer. That does
not show that the model *uses* it: that is a question for activation patching.

The method, for each layer on its own
-------------------------------------
1. Features are ``(n_clips, n_layers, d_model)``, usually the residual stream mean-pooled over each clip's real
   frames. :meth:`ActivationCache.stack <asrinterp_utils.cache.ActivationCache.stack>` gives
   ``(layers, batch, d_model)``, so transpose it::

       input_features, n_frames = lm.features(clips)
       with cache_activations(lm, "enc.*.resid_post", pool="mean", n_frames=n_frames) as cache:
           whisper_core(lm).encoder(input_features)
       features = cache.stack("enc.*.resid_post").transpose(0, 1)      # (n_clips, layers, d_model)

2. The probe is ``Pipeline(StandardScaler, LogisticRegression)`` (L2 penalty, multinomial for more than two
   classes).
3. The outer cross-validation is grouped by speaker. When each speaker has one label (gender, accent), each
   class's speakers are dealt to the folds in turn, so every training side keeps every class; otherwise
   ``StratifiedGroupKFold`` (reshuffled until every training side holds every class), or ``GroupKFold`` when some class
   has fewer speakers than folds. No speaker is on both the training and the test side of a split, so the probe
   cannot score by recognising a voice it was trained on. The same splits serve every layer, so layers are compared
   on the same held-out speakers.
4. The regularisation strength ``C`` is chosen *inside* each outer training fold, by a grid search whose own
   cross-validation is also grouped by speaker; the outer test fold is never seen while ``C`` is chosen (choosing
   ``C`` on the test fold would report the best of several test scores, an optimistic number).
5. Reported per layer: the mean and standard deviation of the fold accuracies; a 95% bootstrap interval for the
   accuracy of the pooled out-of-fold predictions, resampling *speakers* (clips of one speaker are not independent,
   so resampling clips would give too narrow an interval); the chance level (the majority-class rate); the ``C``
   chosen in each fold; pooled confusion matrices; every out-of-fold prediction and the splits actually used.

Controls
--------
A probe's accuracy mixes what the layer encodes with what the probe can fit. Three controls separate them:

- **Shuffled labels** (:func:`shuffled_label_control`): the same features and the same splits, with the labels
  permuted. When the label is a property of the speaker (gender, accent) whole speakers are relabelled, so the
  control task has the same speaker structure as the real one (all of a speaker's clips share a label).
  :func:`selectivity` is probe minus control accuracy per layer (after Hewitt & Liang, 2019, "Designing and
  Interpreting Probes with Control Tasks", where the control task is a random relabelling of word types).
- **A random-initialised model** of the same architecture: what the architecture alone makes decodable.
- **The log-mel input** itself, as a single "layer": ``features`` of shape ``(n_clips, 1, n_mels)``.

The last two are feature sources: compute them and give them to :func:`probe_layers` like any other features.

>>> result = probe_layers(features, labels, speakers)                       # doctest: +SKIP
>>> result.table[["layer", "accuracy", "ci_low", "ci_high", "chance"]]     # doctest: +SKIP
>>> control = shuffled_label_control(features, labels, speakers)            # doctest: +SKIP
>>> selectivity(result, control)                                            # doctest: +SKIP
>>> best_layer(result), normalised_depth(best_layer(result), result.n_layers)  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from .stats import bootstrap_mean, cross_fitted_best, grouped_resample_means

DEFAULT_CS = (0.01, 0.1, 1, 10)
"""The regularisation strengths searched in each training fold (ties go to the first, so keep them ascending and the
strongest regularisation wins a tie)."""

MAX_ITER = 10_000
"""``LogisticRegression.max_iter`` (the default, 100, is often too few for lbfgs on wide layers at ``C=10``; a
probe that stops early would be judged on an unfinished fit)."""

TOL = 1e-6
"""``LogisticRegression.tol`` (lbfgs stops when no gradient component exceeds it). At the default, 1e-4, the probes
of chapter 5 stopped short of their optimum: the same probe fitted in the row space and in the full space gave
accuracies up to 4 points apart (3 of 138 clips); at 1e-6 the two agree on every layer of every task."""

_C_PARAM = "logisticregression__C"


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Fold:
    """One outer split: row indices into the ``n_samples`` axis.

    Attributes:
        train: ``(n_train,)`` rows the probe (and the choice of ``C``) was fitted on.
        test: ``(n_test,)`` rows it was scored on.
    """
    train: np.ndarray
    test: np.ndarray


@dataclass(eq=False)
class ProbeResult:
    """What :func:`probe_layers` returns: a tidy table plus the raw material behind it.

    Attributes:
        table: one row per layer, with the columns ``layer``, ``accuracy`` (mean of the fold accuracies),
            ``accuracy_std`` (their standard deviation, ddof=1), ``pooled_accuracy`` (accuracy of all out-of-fold
            predictions together), ``ci_low`` and ``ci_high`` (95% bootstrap interval of ``pooled_accuracy``,
            resampling speakers), ``chance`` (majority-class rate), ``chosen_C`` (a tuple, one per fold),
            ``n_samples``, ``n_groups``, ``n_classes``, ``n_folds``.
        classes: ``(n_classes,)`` the sorted class labels; the order of the confusion matrices' rows and columns.
        confusion: ``(n_layers, n_classes, n_classes)`` pooled out-of-fold counts; rows are the true class,
            columns the predicted one.
        predictions: ``(n_layers, n_samples)`` the out-of-fold prediction for every clip at every layer.
        fold_accuracy: ``(n_layers, n_folds)``.
        chosen_C: ``(n_layers, n_folds)`` the ``C`` chosen inside each training fold.
        splits: the ``n_folds`` outer splits used (the same for every layer).
        labels: ``(n_samples,)`` the labels the probe was trained on (permuted ones for a control).
        groups: ``(n_samples,)`` the speaker of each clip.
        splitter: ``"speakers dealt per class"`` (each speaker has one label), ``"StratifiedGroupKFold"``,
            ``"GroupKFold"`` or ``"given"`` (splits passed in).
        control: None for a probe; a description for a control (``"shuffled labels (group level, ...)"``).
    """
    table: pd.DataFrame
    classes: np.ndarray = field(repr=False)
    confusion: np.ndarray = field(repr=False)
    predictions: np.ndarray = field(repr=False)
    fold_accuracy: np.ndarray = field(repr=False)
    chosen_C: np.ndarray = field(repr=False)
    splits: list[Fold] = field(repr=False)
    labels: np.ndarray = field(repr=False)
    groups: np.ndarray = field(repr=False)
    splitter: str = ""
    control: Union[str, None] = None

    @property
    def n_layers(self) -> int:
        return len(self.table)

    @property
    def correct(self) -> np.ndarray:
        """``(n_layers, n_samples)`` booleans: whether each out-of-fold prediction is right."""
        return self.predictions == self.labels[None, :]

    @property
    def fold_of_sample(self) -> np.ndarray:
        """``(n_samples,)`` the outer fold in which each clip was a test clip."""
        fold = np.empty(len(self.labels), dtype=int)
        for k, split in enumerate(self.splits):
            fold[split.test] = k
        return fold

    def predictions_frame(self) -> pd.DataFrame:
        """Every out-of-fold prediction as a long table: ``layer, sample, fold, group, label, predicted, correct``
        (``n_layers * n_samples`` rows)."""
        n_layers, n = self.predictions.shape
        return pd.DataFrame({
            "layer": np.repeat(np.arange(n_layers), n),
            "sample": np.tile(np.arange(n), n_layers),
            "fold": np.tile(self.fold_of_sample, n_layers),
            "group": np.tile(self.groups, n_layers),
            "label": np.tile(self.labels, n_layers),
            "predicted": self.predictions.ravel(),
            "correct": self.correct.ravel(),
        })

    def confusion_frame(self, layer: int) -> pd.DataFrame:
        """The confusion matrix of one layer with class names: index = true class, columns = predicted class."""
        return pd.DataFrame(self.confusion[layer], index=pd.Index(self.classes, name="true"),
                            columns=pd.Index(self.classes, name="predicted"))

    def _repr_html_(self) -> str:  # notebooks show the table
        return self.table._repr_html_()


# ---------------------------------------------------------------------------------------------------------------
# Input checks and the grouped splits
# ---------------------------------------------------------------------------------------------------------------

def _as_numpy(x: Any) -> np.ndarray:
    """numpy arrays, lists and torch tensors (any device; bf16 and fp16 become float32) as numpy arrays."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _check_inputs(features: Any, labels: Any, groups: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert: features ``(n_samples, n_layers, d)``, labels and groups ``(n_samples,)``."""
    features, labels, groups = _as_numpy(features), _as_numpy(labels), _as_numpy(groups)
    if features.ndim != 3:
        raise ValueError(f"features must be (n_samples, n_layers, d), got shape {features.shape}; a single feature "
                         "set (a log-mel baseline, one layer) is features[:, None, :]")
    if labels.ndim != 1 or groups.ndim != 1:
        raise ValueError(f"labels and groups must be 1-D (n_samples,), got shapes {labels.shape} and {groups.shape}")
    n = features.shape[0]
    if not len(labels) == n == len(groups):
        raise ValueError(f"lengths differ: features has {n} samples (axis 0), labels {len(labels)}, groups "
                         f"{len(groups)}. features must be (n_samples, n_layers, d); ActivationCache.stack gives "
                         "(layers, batch, d_model), so transpose(0, 1) it")
    if not np.issubdtype(features.dtype, np.number):
        raise ValueError(f"features must be numeric, got dtype {features.dtype}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    if pd.isna(labels).any() or pd.isna(groups).any():
        raise ValueError("labels and groups must not contain missing values (None or NaN)")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError(f"labels must have at least two classes, got only {classes.tolist()}")
    lonely = {c: np.unique(groups[labels == c]).tolist() for c in classes.tolist()}
    lonely = {c: g for c, g in lonely.items() if len(g) < 2}
    if lonely:
        detail = ", ".join(f"class {c!r} only in group {g[0]!r}" for c, g in lonely.items())
        raise ValueError(f"each class needs at least two groups (speakers) so that a grouped split can put it on "
                         f"both the training and the test side: {detail}. Drop the class or add speakers")
    return features, labels, groups


def _grouped_cv(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int):
    """``StratifiedGroupKFold`` when every class has at least ``n_splits`` groups, else ``GroupKFold``."""
    n_groups = len(np.unique(groups))
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    if n_splits > n_groups:
        raise ValueError(f"n_splits={n_splits} is more than the {n_groups} groups (speakers): every fold needs "
                         "speakers of its own. Use fewer splits or more speakers")
    fewest = min(len(np.unique(groups[labels == c])) for c in np.unique(labels))
    if fewest >= n_splits:
        return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def _labels_per_group(labels: np.ndarray, groups: np.ndarray) -> Union[dict, None]:
    """``{group: label}`` when every group has a single label (gender, accent of a speaker), else None."""
    out = {}
    for g, y in zip(groups.tolist(), labels.tolist()):
        if out.setdefault(g, y) != y:
            return None
    return out


def _deal_groups(group_label: dict, groups: np.ndarray, n_splits: int,
                 seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified by *speakers*: each class's speakers, shuffled, are dealt to the folds in turn (the deal goes on
    from fold to fold across classes), so every fold gets ``n_c / n_splits`` speakers of class ``c``, rounded."""
    rng = np.random.default_rng(seed)
    fold_of, turn = {}, 0
    for label in sorted(set(group_label.values()), key=str):
        members = sorted((g for g, y in group_label.items() if y == label), key=str)
        for g in rng.permutation(np.array(members, dtype=object)).tolist():
            fold_of[g] = turn % n_splits
            turn += 1
    fold = np.array([fold_of[g] for g in groups.tolist()])
    return [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(n_splits)]


def _complete_splits(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int,
                     max_tries: int = 50) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped splits in which every training side holds every class.

    When each speaker has one label (gender, accent), speakers are dealt to folds class by class
    (:func:`_deal_groups`): every class keeps as many speakers as possible on every training side. Otherwise
    :func:`_grouped_cv` is used; ``StratifiedGroupKFold`` stratifies clips, not speakers, and with few speakers of
    very different sizes can leave a training side without a class, so it is reshuffled (seeds ``seed, seed + 1,
    ...``) until none does; ValueError after ``max_tries``."""
    classes = np.unique(labels)
    _grouped_cv(labels, groups, n_splits, seed)  # checks n_splits against the number of groups
    group_label = _labels_per_group(labels, groups)
    x = np.zeros((len(labels), 1))
    for attempt in range(max_tries):
        if group_label is not None:
            splits = _deal_groups(group_label, groups, n_splits, seed + attempt)
        else:
            cv = _grouped_cv(labels, groups, n_splits, seed + attempt)
            splits = [(np.asarray(tr), np.asarray(te)) for tr, te in cv.split(x, labels, groups)]
        if all(len(te) and len(np.unique(labels[tr])) == len(classes) for tr, te in splits):
            return splits
    raise ValueError(f"no split of these {len(np.unique(groups))} speakers into {n_splits} folds keeps every class "
                     f"on every training side (tried {max_tries} shuffles): use fewer splits or more speakers")


def _splitter_name(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> str:
    if _labels_per_group(labels, groups) is not None:
        return "speakers dealt per class"
    return type(_grouped_cv(labels, groups, n_splits, seed)).__name__


def grouped_splits(labels: Any, groups: Any, *, n_splits: int = 5, seed: int = 0) -> list[Fold]:
    """The outer splits :func:`probe_layers` makes for these labels and groups (``(n_samples,)`` each): grouped by
    speaker, stratified by class when every class has at least ``n_splits`` speakers, and every training side
    holding every class."""
    labels, groups = _as_numpy(labels), _as_numpy(groups)
    return [Fold(tr, te) for tr, te in _complete_splits(labels, groups, n_splits, seed)]


def check_group_separation(splits: Sequence[Union[Fold, tuple]], groups: Any) -> None:
    """Raise ValueError if any group (speaker) has clips on both sides of any split."""
    groups = _as_numpy(groups)
    for k, split in enumerate(splits):
        train, test = (split.train, split.test) if isinstance(split, Fold) else split
        shared = np.intersect1d(groups[np.asarray(train)], groups[np.asarray(test)])
        if len(shared):
            raise ValueError(f"split {k}: group(s) {shared[:5].tolist()} on both the training and the test side; "
                             "a probe scored on speakers it was trained on can score by recognising their voices")


def _check_folds(folds: list[Fold], labels: np.ndarray, groups: np.ndarray) -> None:
    """Group separation; the test sides partition the samples; every training side has two classes or more."""
    n = len(labels)
    check_group_separation(folds, groups)
    tested = np.zeros(n, dtype=int)
    for k, fold in enumerate(folds):
        if len(fold.train) == 0 or len(fold.test) == 0:
            raise ValueError(f"split {k} has an empty training or test side")
        if fold.train.min() < 0 or fold.test.min() < 0 or max(fold.train.max(), fold.test.max()) >= n:
            raise ValueError(f"split {k} has row indices outside 0..{n - 1}")
        if len(np.unique(labels[fold.train])) < 2:
            raise ValueError(f"split {k}: the training side has a single class; use fewer splits or more speakers")
        np.add.at(tested, fold.test, 1)
    if not (tested == 1).all():
        raise ValueError("the test sides of the splits must partition the samples (each sample tested exactly "
                         f"once), but {int((tested == 0).sum())} are never tested and {int((tested > 1).sum())} "
                         "more than once")


def _as_folds(splits: Sequence[Union[Fold, tuple]]) -> list[Fold]:
    out = []
    for split in splits:
        train, test = (split.train, split.test) if isinstance(split, Fold) else split
        out.append(Fold(np.asarray(train, dtype=int), np.asarray(test, dtype=int)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------------------------------

class RowSpace(TransformerMixin, BaseEstimator):
    """Coordinates in the span of the training rows: ``(n, d) -> (n, rank)``, ``rank <= min(n, d)``.

    An L2-penalised linear classifier's weights lie in the span of its training rows (at the optimum ``w = -C
    sum_i g_i x_i``, the representer theorem), and an orthonormal basis keeps ``||w||``, so a logistic regression
    fitted on these coordinates reaches the same optimum, and the same predictions, as one fitted on ``X``, with
    ``rank`` instead of ``d`` weights per class: with a few hundred clips and 384-512 dimensions, several times
    faster. ``components_`` ``(rank, d)`` maps the weights back (``coef_ @ components_``).
    """

    def fit(self, X: np.ndarray, y: Any = None) -> "RowSpace":
        X = np.asarray(X, dtype=np.float64)
        if X.shape[0] >= X.shape[1]:  # the rows span every direction already: nothing to gain
            self.components_ = None
            return self
        # the right singular vectors from the (n, n) Gram matrix's eigenvectors (a full SVD of (n, d) costs ~10x
        # more): X = U S V^T, X X^T = U S^2 U^T, V^T = S^-1 U^T X; directions whose singular value is below 1e-6
        # of the largest carry no weight worth keeping (and are not resolved by the Gram matrix)
        eigenvalues, u = np.linalg.eigh(X @ X.T)
        s = np.sqrt(np.clip(eigenvalues, 0.0, None))
        keep = s > 1e-6 * s.max() if s.max() > 0 else s.argmax() == np.arange(len(s))
        vt = (u[:, keep].T @ X) / np.where(s[keep] > 0, s[keep], 1.0)[:, None]  # (rank, d), orthonormal rows
        self.components_ = vt
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return X if self.components_ is None else X @ self.components_.T


def _search_scores(X: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, Cs: Sequence[float],
                   row_space: bool) -> list[float]:
    """Held-out accuracy of the probe at each ``C`` on one inner split. The scaler (and the row space) are fitted
    once for the split; each ``C`` starts from the previous ``C``'s weights (the optimum does not depend on the
    start: the loss is strictly convex; the start only saves iterations)."""
    prep = make_pipeline(StandardScaler(), *([RowSpace()] if row_space else [])).fit(X[train])
    x_train, x_test = prep.transform(X[train]), prep.transform(X[test])
    classifier = LogisticRegression(max_iter=MAX_ITER, tol=TOL, warm_start=True)
    scores = []
    for C in Cs:
        classifier.set_params(C=C).fit(x_train, labels[train])
        scores.append(float(np.mean(classifier.predict(x_test) == labels[test])))
    return scores


def _fit_probe(X: np.ndarray, labels: np.ndarray, groups: np.ndarray, Cs: Sequence[float], inner_splits: int,
               seed: int, n_jobs: int, row_space: bool = False) -> tuple[Any, float]:
    """Fit the probe on one outer training side, ``X`` ``(n_train, d)``, choosing ``C`` there and nowhere else.

    The search for ``C`` is a grid search (the mean held-out accuracy over inner folds, ties to the first ``C``, as
    ``GridSearchCV`` scores it) whose folds are grouped by speaker and stratified by class, with at most as many
    folds as the rarest class has speakers here (so that every inner training side can keep every class).
    With a single ``C`` there is nothing to choose and the probe is fitted directly; so it is, with the middle ``C``
    of the grid, when no speaker-grouped inner split keeps every class on every inner training side (a class with a
    single speaker here; this happens to shuffled-label controls, whose permuted classes are not dealt evenly over
    the probe's folds, and to tiny datasets). Returns the fitted estimator
    (refitted on the whole training side) and the chosen ``C``. ``row_space``: fit in the span of the training
    rows (:class:`RowSpace`: the same optimum, faster when there are fewer clips than dimensions), for callers that
    need predictions, not weights in the feature space.
    """
    probe = make_pipeline(StandardScaler(), *([RowSpace()] if row_space else []),
                          LogisticRegression(max_iter=MAX_ITER, tol=TOL))
    if len(Cs) == 1:
        return probe.set_params(**{_C_PARAM: Cs[0]}).fit(X, labels), float(Cs[0])
    speakers_per_class = {c: len(np.unique(groups[labels == c])) for c in np.unique(labels).tolist()}
    rarest = min(speakers_per_class, key=speakers_per_class.get)
    n_inner = min(inner_splits, speakers_per_class[rarest])
    cv = None
    if n_inner >= 2:
        try:
            cv = _complete_splits(labels, groups, n_inner, seed)  # every inner training side keeps every class
        except ValueError:
            pass
    if cv is None:  # no speaker-grouped search possible: the middle of the grid, recorded in chosen_C
        C = float(sorted(Cs)[len(Cs) // 2])
        return probe.set_params(**{_C_PARAM: C}).fit(X, labels), C
    scores = Parallel(n_jobs=n_jobs)(delayed(_search_scores)(X, labels, np.asarray(train), np.asarray(test), Cs,
                                                             row_space) for train, test in cv)
    C = float(Cs[int(np.argmax(np.mean(scores, axis=0)))])  # (inner folds, Cs) -> the first best C
    return probe.set_params(**{_C_PARAM: C}).fit(X, labels), C


def _speaker_bootstrap(correct: np.ndarray, groups: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """95% percentile interval of the pooled accuracy, resampling speakers with replacement.

    ``correct`` is ``(n_layers, n_samples)`` booleans; returns ``(n_layers, 2)``. Every layer uses the same
    resampled speakers, so intervals of different layers are paired.
    """
    if n_bootstrap <= 0:
        return np.full((correct.shape[0], 2), np.nan)
    _, g = np.unique(groups, return_inverse=True)
    accuracy = grouped_resample_means(correct.T.astype(np.float64), g, n_bootstrap, seed)  # (n_bootstrap, n_layers)
    return np.percentile(accuracy, [2.5, 97.5], axis=0).T


def probe_layers(features: Any, labels: Any, groups: Any, *, n_splits: int = 5, Cs: Sequence[float] = DEFAULT_CS,
                 inner_splits: int = 3, seed: int = 0, n_bootstrap: int = 1000, n_jobs: int = 1,
                 splits: Union[Sequence[Union[Fold, tuple]], None] = None) -> ProbeResult:
    """A linear probe per layer, scored on held-out speakers, with ``C`` chosen inside each training fold.

    Args:
        features: ``(n_samples, n_layers, d)``, numpy or torch. One "layer" (``(n, 1, d)``) for a log-mel baseline.
        labels: ``(n_samples,)`` class labels (strings or integers; two classes or more).
        groups: ``(n_samples,)`` speaker ids. Every class needs at least two speakers.
        n_splits: outer folds (at most the number of speakers).
        Cs: inverse regularisation strengths searched inside each training fold (ties go to the first); a single
            value skips the search.
        inner_splits: folds of the inner, speaker-grouped search for ``C`` (fewer when the rarest class has fewer
            speakers on the training side).
        seed: seeds the outer and inner splits and the bootstrap.
        n_bootstrap: speaker-bootstrap resamples for ``ci_low``/``ci_high`` (0: no interval, NaN).
        n_jobs: inner folds of each search for ``C`` run in parallel (joblib). Keep the default, 1, on a small
            machine: worker processes add dispatch and copies (on 2 cores ``n_jobs=2`` made a probe sweep about 2x
            slower, at 60 and at 600 clips alike).
        splits: outer splits to use instead of making them (:class:`Fold` or ``(train, test)`` index pairs); their
            test sides must partition the samples. :func:`shuffled_label_control` passes the probe's splits here.

    Returns:
        A :class:`ProbeResult`; ``result.table`` has one row per layer.

    Raises:
        ValueError: on mismatched lengths, a wrong shape, non-finite features, a single class, a class with only
            one speaker, more splits than speakers, or splits that put a speaker on both sides.
    """
    features, labels, groups = _check_inputs(features, labels, groups)
    if len(Cs) == 0 or any(not float(c) > 0 for c in Cs):
        raise ValueError(f"Cs must hold at least one value, each a positive inverse regularisation strength; got "
                         f"{list(Cs)}")
    if int(n_bootstrap) < 0:
        raise ValueError(f"n_bootstrap must be 0 (no interval) or more; got {n_bootstrap}")
    if splits is None:
        folds = grouped_splits(labels, groups, n_splits=n_splits, seed=seed)
        splitter = _splitter_name(labels, groups, n_splits, seed)
    else:
        folds, splitter = _as_folds(splits), "given"
    _check_folds(folds, labels, groups)

    n_samples, n_layers, _ = features.shape
    predictions = np.empty((n_layers, n_samples), dtype=labels.dtype)
    fold_accuracy = np.zeros((n_layers, len(folds)))
    chosen_C = np.zeros((n_layers, len(folds)))
    # one BLAS thread: the matrices are a few hundred rows wide, and a second thread costs more in hand-offs than it
    # brings (the row-space probes' Gram matrices ran 2x slower with two)
    with threadpool_limits(1, user_api="blas"):
        for layer in range(n_layers):
            X = np.asarray(features[:, layer, :], dtype=np.float64)       # (n_samples, d)
            for k, fold in enumerate(folds):
                try:
                    probe, chosen_C[layer, k] = _fit_probe(X[fold.train], labels[fold.train], groups[fold.train],
                                                           Cs, inner_splits, seed, n_jobs, row_space=True)
                except ValueError as err:
                    raise ValueError(f"layer {layer}, outer fold {k}: {err}") from err
                predicted = probe.predict(X[fold.test])
                predictions[layer, fold.test] = predicted
                fold_accuracy[layer, k] = np.mean(predicted == labels[fold.test])

    classes = np.unique(labels)
    correct = predictions == labels[None, :]                            # (n_layers, n_samples)
    interval = _speaker_bootstrap(correct, groups, n_bootstrap, seed)   # (n_layers, 2)
    confusion = np.stack([confusion_matrix(labels, predictions[layer], labels=classes) for layer in range(n_layers)])
    table = pd.DataFrame({
        "layer": np.arange(n_layers),
        "accuracy": fold_accuracy.mean(axis=1),
        "accuracy_std": fold_accuracy.std(axis=1, ddof=1),
        "pooled_accuracy": correct.mean(axis=1),
        "ci_low": interval[:, 0],
        "ci_high": interval[:, 1],
        "chance": np.unique(labels, return_counts=True)[1].max() / n_samples,
        "chosen_C": [tuple(float(c) for c in row) for row in chosen_C],
        "n_samples": n_samples,
        "n_groups": len(np.unique(groups)),
        "n_classes": len(classes),
        "n_folds": len(folds),
    })
    return ProbeResult(table=table, classes=classes, confusion=confusion, predictions=predictions,
                       fold_accuracy=fold_accuracy, chosen_C=chosen_C, splits=folds, labels=labels, groups=groups,
                       splitter=splitter)


# ---------------------------------------------------------------------------------------------------------------
# Controls and summaries
# ---------------------------------------------------------------------------------------------------------------

def _permute_labels(labels: np.ndarray, groups: np.ndarray, level: str, seed: int) -> tuple[np.ndarray, str]:
    """Permuted labels and the level used: ``"group"`` relabels whole speakers (only possible when each speaker has
    one label), ``"clip"`` permutes clips; ``"auto"`` picks ``"group"`` when possible."""
    if level not in ("auto", "group", "clip"):
        raise ValueError(f"level must be 'auto', 'group' or 'clip', got {level!r}")
    _, g = np.unique(groups, return_inverse=True)
    _, first = np.unique(g, return_index=True)
    group_labels = labels[first]                                        # (n_groups,)
    constant = bool((labels == group_labels[g]).all())
    if level == "auto":
        level = "group" if constant else "clip"
    rng = np.random.default_rng(seed)
    if level == "group":
        if not constant:
            raise ValueError("level='group' needs labels that are constant within each group (speaker)")
        return rng.permutation(group_labels)[g], level
    return rng.permutation(labels), level


def shuffled_label_control(features: Any, labels: Any, groups: Any, *, level: str = "auto",
                           permutation_seed: int = 0, n_splits: int = 5, Cs: Sequence[float] = DEFAULT_CS,
                           inner_splits: int = 3, seed: int = 0, n_bootstrap: int = 1000, n_jobs: int = 1,
                           splits: Union[Sequence[Union[Fold, tuple]], None] = None) -> ProbeResult:
    """The same probe on permuted labels: the accuracy a probe reaches when there is nothing to find.

    The outer splits are those :func:`probe_layers` makes for the *true* labels with the same ``n_splits`` and
    ``seed`` (or ``splits`` when given, e.g. ``result.splits``), so probe and control are scored on the same
    held-out speakers. With ``level="auto"`` a label that is constant within each speaker (gender, accent) is
    permuted across speakers (each speaker gets another speaker's label, all its clips together, and each class
    keeps its number of speakers); a label that varies within speakers is permuted across clips. One call is one
    permutation, one draw from the null: on small data it can land several points from chance, so call it with
    several ``permutation_seed`` values for a spread.

    Arguments are those of :func:`probe_layers`, plus ``level`` (``"auto"``, ``"group"`` or ``"clip"``) and
    ``permutation_seed``. Returns a :class:`ProbeResult` whose ``labels`` are the permuted ones and whose
    ``control`` says how they were made.
    """
    features, labels, groups = _check_inputs(features, labels, groups)
    if splits is None:
        splits = grouped_splits(labels, groups, n_splits=n_splits, seed=seed)
    permuted, level = _permute_labels(labels, groups, level, permutation_seed)
    result = probe_layers(features, permuted, groups, n_splits=n_splits, Cs=Cs, inner_splits=inner_splits, seed=seed,
                          n_bootstrap=n_bootstrap, n_jobs=n_jobs, splits=splits)
    result.control = f"shuffled labels ({level} level, permutation_seed={permutation_seed})"
    return result


def _table(result: Union[ProbeResult, pd.DataFrame]) -> pd.DataFrame:
    return result.table if isinstance(result, ProbeResult) else result


def selectivity(probe_table: Union[ProbeResult, pd.DataFrame],
                control_table: Union[ProbeResult, pd.DataFrame]) -> pd.DataFrame:
    """Probe minus control accuracy per layer: columns ``layer, probe_accuracy, control_accuracy, selectivity``.

    Takes :class:`ProbeResult` objects or their tables; both must cover the same layers.
    """
    probe = _table(probe_table).set_index("layer")["accuracy"].sort_index()
    control = _table(control_table).set_index("layer")["accuracy"].sort_index()
    if not probe.index.equals(control.index):
        raise ValueError(f"probe and control cover different layers: {probe.index.tolist()} vs "
                         f"{control.index.tolist()}")
    return pd.DataFrame({"layer": probe.index.to_numpy(), "probe_accuracy": probe.to_numpy(),
                         "control_accuracy": control.to_numpy(), "selectivity": (probe - control).to_numpy()})


def best_layer(table: Union[ProbeResult, pd.DataFrame]) -> int:
    """The layer with the highest mean accuracy; among ties (within 1e-12) the earliest."""
    table = _table(table)
    accuracy = table["accuracy"].to_numpy(dtype=float)
    if not np.isfinite(accuracy).any():
        raise ValueError(f"best_layer: the table has no layer with an accuracy ({len(table)} rows); probe some layers "
                         "first")
    return int(table.loc[accuracy >= np.nanmax(accuracy) - 1e-12, "layer"].min())


def normalised_depth(layer: int, n_layers: int) -> float:
    """``layer / (n_layers - 1)``: 0 for the first layer, 1 for the last, so models of different depth compare
    (0 when there is a single layer)."""
    if n_layers < 1 or not 0 <= layer < n_layers:
        raise ValueError(f"need 0 <= layer < n_layers, got layer={layer}, n_layers={n_layers}")
    return 0.0 if n_layers == 1 else layer / (n_layers - 1)


def projection_2d(features: Any, labels: Any, *, groups: Any = None, standardise: bool = True) -> pd.DataFrame:
    """The first two principal components of one layer's features, for a scatter plot.

    Args:
        features: ``(n_samples, d)``: one layer, e.g. ``features[:, layer, :]``.
        labels: ``(n_samples,)``; copied into the ``label`` column.
        groups: optional ``(n_samples,)`` speaker ids (a ``group`` column).
        standardise: scale each dimension to unit variance first, as the probe does.

    Returns:
        A DataFrame with ``pc1, pc2, label`` (and ``group``); ``.attrs["explained_variance_ratio"]`` holds the two
        components' shares of the variance.
    """
    X, labels = _as_numpy(features).astype(np.float64), _as_numpy(labels)
    if X.ndim != 2 or X.shape[0] != len(labels) or X.shape[0] < 2 or X.shape[1] < 2:
        raise ValueError(f"features must be (n_samples >= 2, d >= 2) matching labels ({len(labels)}), got {X.shape}")
    if standardise:
        X = StandardScaler().fit_transform(X)
    pca = PCA(n_components=2, svd_solver="full").fit(X)
    coords = pca.transform(X)
    frame = pd.DataFrame({"pc1": coords[:, 0], "pc2": coords[:, 1], "label": labels})
    if groups is not None:
        frame["group"] = _as_numpy(groups)
    frame.attrs["explained_variance_ratio"] = tuple(float(v) for v in pca.explained_variance_ratio_)
    return frame


# ---------------------------------------------------------------------------------------------------------------
# Several feature sources on one task, and transfer to another domain
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ProbeSweep:
    """What :func:`probe_sources` returns.

    Attributes:
        table: one row per source and layer: ``source, layer, n_layers, depth`` (:func:`normalised_depth`);
            ``accuracy``, the accuracy of all out-of-fold predictions together (the ``pooled_accuracy`` of
            :func:`probe_layers`), with its speaker-bootstrap interval ``ci_low, ci_high``; the fold accuracies'
            ``fold_mean`` and ``fold_std``; ``chance``; the shuffled-label control's pooled ``control_accuracy``
            (NaN without controls); ``selectivity`` (accuracy minus control); ``is_best``, the layer with the
            highest ``accuracy`` (the earliest among ties); ``crossfit_accuracy`` with ``crossfit_low,
            crossfit_high``, the same for every row of a source: the accuracy of the best layer when it is chosen
            on half the speakers and scored on the other half, and the other way round
            (:func:`~asrinterp_utils.stats.cross_fitted_best` on the out-of-fold predictions; the interval
            resamples speakers), free of the optimism of choosing the layer on the clips that score it.
        results: ``{source: ProbeResult}``.
        controls: ``{source: ProbeResult}`` of the shuffled-label control (empty without controls).
        seed, n_bootstrap: those of :func:`probe_sources`, for the cross-fitted choice in :meth:`top`.
    """
    table: pd.DataFrame
    results: dict
    controls: dict
    seed: int = 0
    n_bootstrap: int = 1000

    def best(self) -> pd.DataFrame:
        """One row per source: its best layer (the rows with ``is_best``)."""
        return self.table[self.table.is_best].reset_index(drop=True)

    def top(self, exclude: Sequence[str] = ()) -> tuple[pd.Series, pd.DataFrame]:
        """The most accurate source at its best layer, among the sources not in ``exclude`` (e.g. the log-mel
        input), and that probe's out-of-fold predictions: its row of :meth:`best` and the
        :meth:`ProbeResult.predictions_frame` rows of its layer, in sample order.

        The row's ``accuracy`` is read off the clips that chose the source and the layer. Its ``crossfit_accuracy``
        (with ``crossfit_low, crossfit_high``) is not the table's per-source value: here the source *and* the layer
        are chosen together on half the speakers and scored on the other half (:func:`cross_fitted_best` over
        every kept source's layers), so choosing between poolings or models costs the estimate its optimism too.
        ``crossfit_choice`` names what all the speakers would choose (``"<source>, layer <L>"``) and
        ``crossfit_agreement`` the share of folds that chose it as well."""
        best = self.best()
        best = best[~best.source.isin(list(exclude))]
        if best.empty:
            raise ValueError(f"top: no source left after excluding {list(exclude)}; the sweep has "
                             f"{sorted(self.results)}")
        row = best.sort_values("accuracy").iloc[-1].copy()
        kept = list(best.source)
        correct = pd.concat([pd.DataFrame(self.results[name].correct.T,
                                          columns=[f"{name}, layer {layer}" for layer in range(
                                              self.results[name].n_layers)])
                             for name in kept], axis=1)                    # (n_samples, candidates)
        groups = self.results[kept[0]].groups
        fitted = cross_fitted_best(correct, groups=groups, seed=self.seed)
        row["crossfit_accuracy"] = float(fitted.values.mean())
        row["crossfit_low"] = row["crossfit_high"] = np.nan
        if self.n_bootstrap > 0:
            estimate = bootstrap_mean(fitted.values, groups=groups, n_resamples=self.n_bootstrap, seed=self.seed)
            row["crossfit_low"], row["crossfit_high"] = estimate.low, estimate.high
        row["crossfit_choice"], row["crossfit_agreement"] = fitted.best_overall, fitted.agreement
        predictions = self.results[row.source].predictions_frame()
        return row, predictions[predictions.layer == row.layer].reset_index(drop=True)

    def _repr_html_(self) -> str:
        return self.best()._repr_html_()


def probe_sources(sources: dict, labels: Any, groups: Any, *, shuffled_control: bool = True,
                  n_splits: int = 5, Cs: Sequence[float] = DEFAULT_CS, inner_splits: int = 3, seed: int = 0,
                  n_bootstrap: int = 1000, n_jobs: int = 1) -> ProbeSweep:
    """:func:`probe_layers` on each feature source for one task, on the same speaker-grouped splits.

    Args:
        sources: ``{name: features (n_samples, n_layers, d)}``, e.g. ``{"tiny.en": ..., "tiny.en (random init)":
            ..., "log-mel": (n, 1, n_mels)}``. Widths and layer counts may differ; the samples must be the same.
        labels: as for :func:`probe_layers`.
        groups: as for :func:`probe_layers`.
        shuffled_control: also run :func:`shuffled_label_control` on each source (same splits) and report
            ``control_accuracy`` and ``selectivity``.

    The other arguments are those of :func:`probe_layers`.

    Returns:
        A :class:`ProbeSweep`; ``sweep.table`` is long (one row per source and layer), ready for a plot.
    """
    if not sources:
        raise ValueError("sources is empty: give at least one {name: features}.")
    _, labels, groups = _check_inputs(next(iter(sources.values())), labels, groups)
    splits = grouped_splits(labels, groups, n_splits=n_splits, seed=seed)
    kwargs = dict(Cs=Cs, inner_splits=inner_splits, seed=seed, n_bootstrap=n_bootstrap, n_jobs=n_jobs,
                  splits=splits)
    results, controls, frames = {}, {}, []
    for name, features in sources.items():
        result = probe_layers(features, labels, groups, **kwargs)
        results[name] = result
        table = result.table[["layer", "pooled_accuracy", "ci_low", "ci_high", "accuracy", "accuracy_std",
                              "chance"]].rename(columns={"pooled_accuracy": "accuracy", "accuracy": "fold_mean",
                                                         "accuracy_std": "fold_std"})
        if shuffled_control:
            controls[name] = shuffled_label_control(features, labels, groups, **kwargs)
            table["control_accuracy"] = controls[name].table["pooled_accuracy"].to_numpy()
        else:
            table["control_accuracy"] = np.nan
        table["selectivity"] = table["accuracy"] - table["control_accuracy"]
        n_layers = result.n_layers
        table.insert(0, "source", name)
        table.insert(2, "n_layers", n_layers)
        table.insert(3, "depth", [normalised_depth(layer, n_layers) for layer in table["layer"]])
        table["is_best"] = table["layer"] == best_layer(table)
        # grouped_splits has checked that there are speakers to deal into two folds
        fitted = cross_fitted_best(result.correct.T, groups=groups, seed=seed).values      # (n_samples,)
        table["crossfit_accuracy"] = fitted.mean()
        table["crossfit_low"] = table["crossfit_high"] = np.nan  # n_bootstrap=0: no interval, as for the accuracy
        if n_bootstrap > 0:
            estimate = bootstrap_mean(fitted, groups=groups, n_resamples=n_bootstrap, seed=seed)
            table["crossfit_low"], table["crossfit_high"] = estimate.low, estimate.high
        frames.append(table)
    return ProbeSweep(table=pd.concat(frames, ignore_index=True), results=results, controls=controls, seed=seed,
                      n_bootstrap=n_bootstrap)


def fit_probe(features: Any, labels: Any, groups: Any, *, Cs: Sequence[float] = DEFAULT_CS, inner_splits: int = 3,
              seed: int = 0, n_jobs: int = 1) -> tuple[Any, float]:
    """One probe fitted on all of ``features (n_samples, d)``, ``C`` chosen by speaker-grouped cross-validation.

    Returns the fitted scikit-learn pipeline (``StandardScaler`` then ``LogisticRegression``) and the chosen ``C``;
    score it on another domain with :func:`probe_transfer` or ``pipeline.predict``.
    """
    X, labels, groups = _check_inputs(np.asarray(_as_numpy(features))[:, None, :], labels, groups)
    return _fit_probe(np.asarray(X[:, 0, :], dtype=np.float64), labels, groups, Cs, inner_splits, seed, n_jobs)


@dataclass(frozen=True, eq=False)
class TransferResult:
    """What :func:`probe_transfer` returns.

    Attributes:
        table: one row per layer: ``layer, accuracy`` (on the test domain), ``balanced_accuracy`` (mean of the
            per-class recalls over the classes present in the test set: the test domain is often unbalanced),
            ``chosen_C``, ``n_test``, and one ``recall[<class>]`` column per test class.
        per_group: one row per layer and test group (``layer, group, label, accuracy, n``); None without
            ``test_groups``.
    """
    table: pd.DataFrame
    per_group: Union[pd.DataFrame, None] = None

    def _repr_html_(self) -> str:
        return self.table._repr_html_()


def probe_transfer(train_features: Any, train_labels: Any, train_groups: Any, test_features: Any, test_labels: Any,
                   test_groups: Any = None, *, Cs: Sequence[float] = DEFAULT_CS, inner_splits: int = 3,
                   seed: int = 0) -> TransferResult:
    """Per layer: a probe fitted on one domain (e.g. TTS voices) and scored on another (e.g. real recordings).

    Args:
        train_features: ``(n_train, n_layers, d)``; train_labels, train_groups: ``(n_train,)``.
        test_features: ``(n_test, n_layers, d)``; test_labels: ``(n_test,)``; test_groups: optional speakers.

    Returns:
        A :class:`TransferResult`: ``.table`` per layer, ``.per_group`` per layer and test group (with
        ``test_groups``).
    """
    train_features, train_labels, train_groups = _check_inputs(train_features, train_labels, train_groups)
    test_features, test_labels = _as_numpy(test_features), _as_numpy(test_labels)
    if test_features.ndim != 3 or test_features.shape[1:] != train_features.shape[1:]:
        raise ValueError(f"test_features must be (n_test, {train_features.shape[1]}, {train_features.shape[2]}) like "
                         f"the training features, got {test_features.shape}")
    if len(test_labels) != len(test_features) or len(test_labels) == 0:
        raise ValueError(f"test_labels ({len(test_labels)}) must match test_features ({len(test_features)}) and "
                         "not be empty")
    if test_groups is not None and len(_as_numpy(test_groups)) != len(test_labels):
        raise ValueError(f"test_groups ({len(_as_numpy(test_groups))}) must give one group per test clip "
                         f"({len(test_labels)})")
    unknown = sorted(set(test_labels.tolist()) - set(train_labels.tolist()))
    if unknown:
        raise ValueError(f"test labels {unknown} never occur in training: a probe cannot predict them")
    classes = sorted(set(test_labels.tolist()))
    rows, per_group = [], []
    for layer in range(train_features.shape[1]):
        probe, C = _fit_probe(np.asarray(train_features[:, layer], dtype=np.float64), train_labels, train_groups, Cs,
                              inner_splits, seed, 1, row_space=True)
        predicted = probe.predict(np.asarray(test_features[:, layer], dtype=np.float64))
        correct = predicted == test_labels
        recalls = {f"recall[{c}]": float(correct[test_labels == c].mean()) for c in classes}
        rows.append({"layer": layer, "accuracy": float(correct.mean()),
                     "balanced_accuracy": float(np.mean(list(recalls.values()))), "chosen_C": C,
                     "n_test": len(test_labels), **recalls})
        if test_groups is not None:
            g = _as_numpy(test_groups)
            for group in pd.unique(g):
                per_group.append({"layer": layer, "group": group, "label": test_labels[g == group][0],
                                  "accuracy": float(correct[g == group].mean()), "n": int((g == group).sum())})
    return TransferResult(table=pd.DataFrame(rows), per_group=pd.DataFrame(per_group) if per_group else None)


def good_and_bad(table: pd.DataFrame, wer_column: str, *, seed: int = 0) -> pd.DataFrame:
    """The paper's labels for predicting hallucinations from the decoder: ``good`` = clips transcribed with zero
    WER, ``bad`` = the same number of clips with the highest WER (so the classes are balanced and chance is 50 %).
    Where there are more good clips than wrong ones, as many good clips as wrong ones are drawn (seeded).

    Returns the chosen rows of ``table`` with a ``label`` column (``good`` first, then ``bad`` from the highest
    WER down)."""
    if wer_column not in table:
        raise KeyError(f"good_and_bad: no column {wer_column!r}; the table has {list(table.columns)}")
    good = table[table[wer_column] == 0]
    wrong = table[table[wer_column] > 0].sort_values(wer_column, ascending=False)
    n = min(len(good), len(wrong))
    if n == 0:
        raise ValueError(f"good_and_bad: {len(good)} clips with zero WER and {len(wrong)} with a positive one in "
                         f"{wer_column!r}: both classes need clips (add clips of the missing kind)")
    good = good.sample(n, random_state=seed) if len(good) > n else good
    return pd.concat([good.assign(label="good"), wrong.head(n).assign(label="bad")])


BASELINE_VERDICTS = ("not above chance", "above both baselines", "below the input", "not clearly above the baselines")
"""What :func:`compare_with_baselines` can say."""


def compare_with_baselines(ci_low: float, ci_high: float, chance: float, control: float, baseline: float) -> str:
    """How a trained network's best probe compares with chance, with the same probe on a control network (random
    init) and with a baseline input (the log-mel features), one of :data:`BASELINE_VERDICTS`, from its 95 %
    interval ``[ci_low, ci_high]``:

    - ``not above chance``: the interval reaches chance (a null result);
    - ``above both baselines``: the interval lies above both the control's and the baseline's accuracy (training put
      the information into a linear form);
    - ``below the input``: the interval lies below the baseline's accuracy (the network discards what its input has);
    - ``not clearly above the baselines``: otherwise (the input already carries it).
    """
    if not ci_low <= ci_high:
        raise ValueError(f"compare_with_baselines: the interval [{ci_low}, {ci_high}] has its ends swapped (or NaN)")
    if ci_low <= chance:
        return "not above chance"
    if ci_low > max(control, baseline):
        return "above both baselines"
    if ci_high < baseline:
        return "below the input"
    return "not clearly above the baselines"
