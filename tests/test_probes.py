"""Per-layer probes on small synthetic data: 24 speakers x 5 clips, 4 layers of width 16, every layer carrying a
speaker-specific offset (so a probe could score by recognising voices), and a label-dependent mean shift planted
at layer 2 only."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from asrinterp_utils import probes
from asrinterp_utils.probes import (Fold, ProbeResult, best_layer, check_group_separation, grouped_splits,
                                    normalised_depth, probe_layers, projection_2d, selectivity,
                                    shuffled_label_control)

N_SPEAKERS, CLIPS, N_LAYERS, D, SIGNAL_LAYER = 24, 5, 4, 16, 2


def synthetic(*, n_classes: int = 2, per_speaker: bool = False, signal_layer: int | None = SIGNAL_LAYER,
              n_layers: int = N_LAYERS, shift: float = 3.0, speaker_scale: float = 1.0, seed: int = 0):
    """features ``(120, n_layers, 16)``, labels ``(120,)`` and speaker ids ``(120,)``.

    Labels vary within speakers (balanced over all clips) unless ``per_speaker`` (a speaker property, like
    gender). At ``signal_layer`` each class's clips are shifted by ``shift`` along a class direction."""
    rng = np.random.default_rng(seed)
    n = N_SPEAKERS * CLIPS
    groups = np.repeat([f"spk{i:02d}" for i in range(N_SPEAKERS)], CLIPS)
    if per_speaker:
        labels = np.repeat(rng.permutation(np.arange(N_SPEAKERS) % n_classes), CLIPS)
    else:
        labels = rng.permutation(np.arange(n) % n_classes)
    speaker = speaker_scale * rng.normal(size=(N_SPEAKERS, n_layers, D))
    features = rng.normal(size=(n, n_layers, D)) + np.repeat(speaker, CLIPS, axis=0)
    if signal_layer is not None:
        directions = np.linalg.qr(rng.normal(size=(D, n_classes)))[0].T      # (n_classes, D), orthonormal
        features[:, signal_layer, :] += shift * directions[labels]
    return features, labels, groups


@pytest.fixture(scope="module")
def planted():
    features, labels, groups = synthetic()
    return features, labels, groups, probe_layers(features, labels, groups)


def test_planted_signal_is_found_at_its_layer_only(planted):
    _, _, _, result = planted
    table = result.table
    assert isinstance(result, ProbeResult) and result.splitter == "StratifiedGroupKFold"
    assert list(table["layer"]) == [0, 1, 2, 3]
    assert best_layer(result) == SIGNAL_LAYER
    assert table.loc[SIGNAL_LAYER, "accuracy"] > 0.85
    assert table.loc[SIGNAL_LAYER, "ci_low"] > 0.75
    chance = table.loc[0, "chance"]
    assert chance == pytest.approx(0.5)
    for layer in (0, 1, 3):
        assert abs(table.loc[layer, "accuracy"] - chance) < 0.2
        assert table.loc[layer, "ci_low"] < chance + 0.05   # no evidence of signal where none was planted
    assert (table["n_samples"] == 120).all() and (table["n_groups"] == N_SPEAKERS).all()
    assert (table["n_classes"] == 2).all() and (table["n_folds"] == 5).all()


def test_result_holds_consistent_raw_material(planted):
    _, labels, groups, result = planted
    table = result.table
    assert result.predictions.shape == (N_LAYERS, 120) and result.fold_accuracy.shape == (N_LAYERS, 5)
    assert result.confusion.shape == (N_LAYERS, 2, 2)
    assert (result.confusion.sum(axis=(1, 2)) == 120).all()
    pooled = np.trace(result.confusion, axis1=1, axis2=2) / 120
    np.testing.assert_allclose(pooled, table["pooled_accuracy"])
    np.testing.assert_allclose(result.fold_accuracy.mean(axis=1), table["accuracy"])
    assert (table["ci_low"] <= table["pooled_accuracy"]).all() and (table["pooled_accuracy"] <= table["ci_high"]).all()
    frame = result.predictions_frame()
    assert len(frame) == N_LAYERS * 120
    np.testing.assert_allclose(frame.groupby("layer")["correct"].mean(), table["pooled_accuracy"])
    assert result.confusion_frame(SIGNAL_LAYER).shape == (2, 2)
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_array_equal(result.groups, groups)


def test_no_speaker_on_both_sides_of_any_split_used(planted):
    _, _, groups, result = planted
    assert len(result.splits) == 5
    tested = np.concatenate([fold.test for fold in result.splits])
    assert sorted(tested) == list(range(120))   # every clip is tested exactly once
    for fold in result.splits:
        assert not set(groups[fold.train]) & set(groups[fold.test])
        assert len(fold.train) + len(fold.test) == 120
    check_group_separation(result.splits, groups)   # the public check agrees
    # the splits are those grouped_splits makes, so a control can reuse them
    again = grouped_splits(result.labels, groups, n_splits=5, seed=0)
    for a, b in zip(again, result.splits, strict=True):
        np.testing.assert_array_equal(a.test, b.test)


def test_C_is_chosen_per_fold_from_the_grid(planted):
    _, _, _, result = planted
    assert result.chosen_C.shape == (N_LAYERS, 5)
    assert set(result.chosen_C.ravel()) <= set(probes.DEFAULT_CS)
    assert all(len(cs) == 5 for cs in result.table["chosen_C"])


def test_C_selection_sees_only_training_rows(monkeypatch):
    """Spy on every search for C: the rows it is given (identified by a planted row id) are exactly one outer
    training side, its inner folds are grouped by speaker, and it never sees a test row of that split."""
    features, labels, groups = synthetic(n_layers=2, signal_layer=1)
    features = np.concatenate([features, np.broadcast_to(np.arange(120.0)[:, None, None], (120, 2, 1))], axis=2)
    calls = []
    search_scores = probes._search_scores

    def spy(X, labels, train, test, Cs, row_space):
        calls.append({"rows": X[:, -1].astype(int), "train": train, "test": test})
        return search_scores(X, labels, train, test, Cs, row_space)

    monkeypatch.setattr(probes, "_search_scores", spy)
    result = probe_layers(features, labels, groups, n_splits=4, Cs=(0.01, 1.0), n_bootstrap=0)
    searches = [calls[i:i + 3] for i in range(0, len(calls), 3)]  # three inner splits per search
    assert len(calls) == 2 * 4 * 3 and all(len({tuple(c["rows"]) for c in s}) == 1 for s in searches)
    for i, search in enumerate(searches):  # one search per layer and outer fold
        fold = result.splits[i % 4]   # layer by layer, fold by fold
        rows = search[0]["rows"]
        np.testing.assert_array_equal(np.sort(rows), np.sort(fold.train))
        assert not set(rows) & set(fold.test)
        for call in search:
            assert not set(groups[rows[call["train"]]]) & set(groups[rows[call["test"]]])
    assert set(result.chosen_C.ravel()) <= {0.01, 1.0}


def test_shuffled_labels_give_chance_and_positive_selectivity(planted):
    features, labels, groups, result = planted
    control = shuffled_label_control(features, labels, groups)
    assert control.control.startswith("shuffled labels (clip level")
    assert not np.array_equal(control.labels, labels)
    assert sorted(control.labels) == sorted(labels)          # a permutation
    for a, b in zip(control.splits, result.splits, strict=True):          # scored on the same held-out speakers
        np.testing.assert_array_equal(a.test, b.test)
    accuracy = control.table["accuracy"]
    assert (abs(accuracy - 0.5) < 0.2).all()
    assert abs(accuracy.mean() - 0.5) < 0.1
    sel = selectivity(result, control)
    assert list(sel.columns) == ["layer", "probe_accuracy", "control_accuracy", "selectivity"]
    np.testing.assert_allclose(sel["selectivity"], result.table["accuracy"] - control.table["accuracy"])
    assert sel["selectivity"].idxmax() == SIGNAL_LAYER and sel.loc[SIGNAL_LAYER, "selectivity"] > 0.3
    sel_tables = selectivity(result.table, control.table)    # tables work too
    pd.testing.assert_frame_equal(sel, sel_tables)
    with pytest.raises(ValueError, match="different layers"):
        selectivity(result, control.table.iloc[:2])


def test_speaker_level_labels_are_permuted_per_speaker_and_not_leaked():
    """A gender-like label (one per speaker) with strong speaker offsets and no planted signal: an ungrouped CV
    scores well by recognising voices, the grouped probe does not; the control relabels whole speakers."""
    features, labels, groups = synthetic(per_speaker=True, signal_layer=None, speaker_scale=2.0, n_layers=1)
    leaky = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=10, max_iter=10_000)),
                            features[:, 0], labels, cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean()
    grouped = probe_layers(features, labels, groups, n_bootstrap=200).table.loc[0, "accuracy"]
    assert leaky > 0.75 and grouped < 0.7
    control = shuffled_label_control(features, labels, groups, n_bootstrap=200)
    assert control.control.startswith("shuffled labels (group level")
    per_speaker = pd.Series(control.labels).groupby(groups).nunique()
    assert (per_speaker == 1).all()                           # each speaker keeps a single label
    assert (np.bincount(control.labels) == np.bincount(labels)).all()   # class sizes kept
    with pytest.raises(ValueError, match="constant within each group"):
        shuffled_label_control(*synthetic(n_layers=1, signal_layer=0), level="group")


def test_three_classes_and_their_confusion_matrix():
    features, labels, groups = synthetic(n_classes=3, seed=1)
    names = np.array(["a", "b", "c"])[labels]                 # string labels
    result = probe_layers(features, names, groups, n_bootstrap=200)
    assert list(result.classes) == ["a", "b", "c"]
    assert result.confusion.shape == (N_LAYERS, 3, 3)
    assert (result.confusion.sum(axis=(1, 2)) == 120).all()
    np.testing.assert_array_equal(result.confusion[0].sum(axis=1), [40, 40, 40])   # rows are the true classes
    assert best_layer(result) == SIGNAL_LAYER and result.table.loc[SIGNAL_LAYER, "accuracy"] > 0.7
    assert result.table.loc[0, "chance"] == pytest.approx(1 / 3)
    assert list(result.confusion_frame(SIGNAL_LAYER).index) == ["a", "b", "c"]


def test_single_layer_torch_features_as_for_a_log_mel_baseline():
    features, labels, groups = synthetic(signal_layer=0, n_layers=1)
    as_torch = torch.from_numpy(features).to(torch.bfloat16)     # (n, 1, d), a dtype numpy lacks
    result = probe_layers(as_torch, torch.from_numpy(labels), groups, Cs=(1.0,), n_bootstrap=100)
    assert len(result.table) == 1 and result.table.loc[0, "accuracy"] > 0.85
    assert (result.chosen_C == 1.0).all()


def test_bad_inputs_raise_clear_errors():
    features, labels, groups = synthetic(n_layers=1, signal_layer=0)
    with pytest.raises(ValueError, match="lengths differ"):
        probe_layers(features, labels[:-1], groups)
    with pytest.raises(ValueError, match="transpose"):             # (layers, n, d) from ActivationCache.stack
        probe_layers(features.transpose(1, 0, 2), labels, groups)
    with pytest.raises(ValueError, match=r"\(n_samples, n_layers, d\)"):
        probe_layers(features[:, 0, :], labels, groups)
    lonely = labels.copy()
    lonely[groups == "spk03"] = 7                                 # class 7 is spoken by one speaker only
    with pytest.raises(ValueError, match="at least two groups.*class 7 only in group 'spk03'"):
        probe_layers(features, lonely, groups)
    with pytest.raises(ValueError, match="at least two classes"):
        probe_layers(features, np.zeros(120, dtype=int), groups)
    with pytest.raises(ValueError, match="more than the 24 groups"):
        probe_layers(features, labels, groups, n_splits=25)
    bad = features.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        probe_layers(bad, labels, groups)


def test_splits_that_share_a_speaker_are_refused():
    features, labels, groups = synthetic(n_layers=1, signal_layer=0)
    good = grouped_splits(labels, groups, n_splits=5)
    leaky = list(good)
    moved = good[0].test[:1]                                      # one clip of a test speaker moved to training
    leaky[0] = Fold(np.concatenate([good[0].train, moved]), good[0].test[1:])
    leaky[1] = Fold(good[1].train, np.concatenate([good[1].test, moved]))
    with pytest.raises(ValueError, match="on both the training and the test side"):
        probe_layers(features, labels, groups, splits=leaky)
    with pytest.raises(ValueError, match="partition"):
        probe_layers(features, labels, groups, splits=[(f.train, f.test) for f in good[:4]])


def test_best_layer_ties_and_normalised_depth():
    table = pd.DataFrame({"layer": [0, 1, 2, 3], "accuracy": [0.5, 0.8, 0.8, 0.7]})
    assert best_layer(table) == 1
    assert normalised_depth(0, 4) == 0.0 and normalised_depth(3, 4) == 1.0 and normalised_depth(1, 3) == 0.5
    assert normalised_depth(0, 1) == 0.0
    with pytest.raises(ValueError):
        normalised_depth(4, 4)


def test_projection_2d():
    features, labels, groups = synthetic()
    frame = projection_2d(features[:, SIGNAL_LAYER], labels, groups=groups)
    assert list(frame.columns) == ["pc1", "pc2", "label", "group"] and len(frame) == 120
    assert len(frame.attrs["explained_variance_ratio"]) == 2
    with pytest.raises(ValueError):
        projection_2d(features, labels)


def test_every_training_side_keeps_every_class_with_unequal_speakers():
    """Few speakers of very different sizes (a gender task: 3 female speakers with 40, 2 and 2 clips): a plain
    StratifiedGroupKFold can leave an (outer or inner) training side without any female speaker, and the fit then
    fails. The splits used must keep every class on every training side, outer and inner."""
    rng = np.random.default_rng(0)
    sizes = {"f1": 40, "f2": 2, "f3": 2, "m1": 40, "m2": 40, "m3": 2, "m4": 2, "m5": 2, "m6": 2}
    groups = np.concatenate([[g] * n for g, n in sizes.items()])
    labels = np.array(["female" if g.startswith("f") else "male" for g in groups])
    features = rng.normal(size=(len(groups), 2, 6)) + (labels == "female")[:, None, None] * 1.5
    for seed in range(6):
        result = probe_layers(features, labels, groups, n_splits=3, n_bootstrap=0, seed=seed)
        for fold in result.splits:
            assert set(labels[fold.train]) == {"female", "male"}
        assert result.table["accuracy"].notna().all()


def test_probe_sources_scores_every_source_on_the_same_splits_with_controls():
    features, labels, groups = synthetic(per_speaker=True)
    noise = np.random.default_rng(5).normal(size=(120, 1, 8))
    sweep = probes.probe_sources({"model": features, "baseline": noise}, labels, groups, n_bootstrap=50)
    t = sweep.table
    assert list(t.source.unique()) == ["model", "baseline"]
    assert t[t.source == "model"].layer.tolist() == list(range(N_LAYERS))
    model_best = sweep.best().set_index("source")
    assert model_best.loc["model", "layer"] == SIGNAL_LAYER and model_best.loc["model", "depth"] == SIGNAL_LAYER / 3
    assert model_best.loc["baseline", "depth"] == 0.0
    assert model_best.loc["model", "selectivity"] > 0.3      # the planted layer beats its shuffled control
    assert abs(model_best.loc["baseline", "accuracy"] - 0.5) < 0.2   # pure noise: near chance
    # the best layer chosen on other speakers: the planted layer wins anyway, so nothing is lost; on one layer of
    # noise there is no choice to make, so the cross-fitted accuracy is the accuracy
    model = model_best.loc["model"]
    assert model.crossfit_low <= model.crossfit_accuracy <= model.crossfit_high
    assert model.crossfit_accuracy == pytest.approx(model.accuracy)
    assert model_best.loc["baseline", "crossfit_accuracy"] == pytest.approx(model_best.loc["baseline", "accuracy"])
    for a, b in zip(sweep.results["model"].splits, sweep.controls["baseline"].splits):
        np.testing.assert_array_equal(a.test, b.test)   # one set of held-out speakers for all
    top, predictions = sweep.top()
    assert top.source == "model" and top.layer == SIGNAL_LAYER
    assert predictions.layer.eq(SIGNAL_LAYER).all() and predictions["sample"].tolist() == list(range(len(labels)))
    assert predictions.correct.mean() == pytest.approx(top.accuracy)
    assert sweep.top(exclude=["model"])[0].source == "baseline"
    with pytest.raises(ValueError, match="no source left"):
        sweep.top(exclude=["model", "baseline"])
    # the source and the layer chosen together on other speakers: with one source kept it is the table's
    # per-source cross-fit; with both, the planted layer still wins on every fold
    alone = sweep.top(exclude=["baseline"])[0]
    assert alone.crossfit_accuracy == pytest.approx(model.crossfit_accuracy)
    assert (alone.crossfit_low, alone.crossfit_high) == pytest.approx((model.crossfit_low, model.crossfit_high))
    assert top.crossfit_choice == f"model, layer {SIGNAL_LAYER}" and top.crossfit_agreement == 1.0
    assert top.crossfit_accuracy == pytest.approx(model.crossfit_accuracy)


def test_top_pays_for_choosing_among_sources_on_pure_noise():
    """Six sources of noise, four layers each: the in-sample winner of 24 looks better than chance, the same choice
    made on half the speakers and scored on the other half does not."""
    _, labels, groups = synthetic(per_speaker=True)
    rng = np.random.default_rng(11)
    sources = {f"noise {k}": rng.normal(size=(len(labels), 4, 6)) for k in range(6)}
    sweep = probes.probe_sources(sources, labels, groups, shuffled_control=False, n_splits=3, n_bootstrap=100)
    top, _ = sweep.top()
    assert top.accuracy > top.crossfit_accuracy
    assert top.crossfit_low < 0.5 < top.crossfit_high
    assert top.crossfit_choice == f"{top.source}, layer {int(top.layer)}"


def test_good_and_bad_balances_zero_wer_clips_against_the_worst():
    table = pd.DataFrame({"clip": range(8), "wer": [0, 0, 0, 0, 0.1, 0.9, 0.5, 0]})
    chosen = probes.good_and_bad(table, "wer", seed=0)
    bad, good = chosen[chosen.label == "bad"], chosen[chosen.label == "good"]
    assert bad.wer.tolist() == [0.9, 0.5, 0.1] and len(good) == 3 and (good.wer == 0).all()
    assert probes.good_and_bad(table, "wer", seed=0).equals(chosen)          # seeded
    few_good = probes.good_and_bad(table.assign(wer=[0, 1, 1, 1, 1, 1, 1, 1]), "wer")
    assert (few_good.label == "good").sum() == 1 and (few_good.label == "bad").sum() == 1
    with pytest.raises(KeyError, match="no column 'WER'"):
        probes.good_and_bad(table, "WER")


@pytest.mark.parametrize("interval, expected", [
    ((0.45, 0.70), "not above chance"),                  # the interval reaches chance (0.5)
    ((0.80, 0.90), "above both baselines"),              # above the control (0.6) and the input (0.7)
    ((0.52, 0.60), "below the input"),                   # above chance, wholly below the input
    ((0.65, 0.85), "not clearly above the baselines"),   # overlaps the input's accuracy
])
def test_compare_with_baselines_reads_the_interval(interval, expected):
    assert probes.compare_with_baselines(*interval, chance=0.5, control=0.6, baseline=0.7) == expected
    assert expected in probes.BASELINE_VERDICTS


def test_probe_transfer_carries_a_planted_signal_to_another_domain_and_refuses_unknown_labels():
    features, labels, groups = synthetic(per_speaker=True, speaker_scale=0.3)
    other, other_labels, _ = synthetic(per_speaker=True, speaker_scale=0.3, seed=0)  # same directions, new draw
    shifted = other + 0.2                                                           # a small domain shift
    result = probes.probe_transfer(features[:60], labels[:60], groups[:60], shifted[60:], other_labels[60:],
                                   groups[60:])
    table = result.table
    assert table.set_index("layer").loc[SIGNAL_LAYER, "balanced_accuracy"] > 0.9
    assert table.set_index("layer").drop(SIGNAL_LAYER).balanced_accuracy.max() < 0.8
    assert set(result.per_group.group) == set(groups[60:])
    with pytest.raises(ValueError, match="never occur in training"):
        probes.probe_transfer(features, labels, groups, features[:3], np.array(["x", "y", "z"]))


def test_a_probe_fitted_in_the_row_space_equals_one_fitted_on_every_dimension():
    """The representer theorem: with fewer rows than dimensions the L2-penalised optimum lies in the span of the
    rows, so fitting on the row-space coordinates gives the same probabilities (to the solver's tolerance)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(60, 200)), rng.integers(0, 3, 60)
    X[:, 0] += y  # some signal
    test = rng.normal(size=(25, 200))
    for C in (0.01, 1.0, 10.0):
        full = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=probes.MAX_ITER, tol=probes.TOL))
        rows = make_pipeline(StandardScaler(), probes.RowSpace(),
                             LogisticRegression(C=C, max_iter=probes.MAX_ITER, tol=probes.TOL))
        np.testing.assert_allclose(rows.fit(X, y).predict_proba(test), full.fit(X, y).predict_proba(test), atol=1e-4)
    assert rows[1].components_.shape == (59, 200)  # 60 centred rows span 59 directions
    np.testing.assert_allclose(rows[1].components_ @ rows[1].components_.T, np.eye(59), atol=1e-8)
    np.testing.assert_array_equal(probes.RowSpace().fit(X[:, :10]).transform(X[:, :10]), X[:, :10])  # n >= d


def test_the_search_for_C_picks_what_GridSearchCV_picks():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels, groups = synthetic(n_layers=1, signal_layer=0)
    X = features[:, 0].astype(np.float64)
    cv = probes._complete_splits(labels, groups, 3, 0)
    for Cs in [(0.01, 0.1, 1, 10), (10, 1, 0.1, 0.01), (1e-4, 1e-3)]:
        reference = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=probes.MAX_ITER,
                                                                                    tol=probes.TOL)),
                                 {probes._C_PARAM: list(Cs)}, cv=cv, scoring="accuracy").fit(X, labels)
        _, chosen = probes._fit_probe(X, labels, groups, Cs, 3, 0, 1)
        assert chosen == reference.best_params_[probes._C_PARAM]
