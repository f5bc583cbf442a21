"""Trials of the protocol: repeated stratified folds and low-data training subsamples."""

from __future__ import annotations

import pytest

from tumoraug.errors import DataError
from tumoraug.evaluation import plan_trials, stratified_folds, subsample_training
from tumoraug.evaluation.splits import class_counts, subsample_counts

LABELS = [i % 2 for i in range(40)]  # 20 LGG (0) + 20 HGG (1)


def test_subsample_has_the_size_and_grade_ratio_and_stays_in_the_training_fold():
    for train, test in stratified_folds(LABELS, folds=5, seed=0):
        picked = subsample_training(train, LABELS, size=12, hgg_share=0.75, seed=7)
        assert len(picked) == 12 and len(set(picked)) == 12
        assert class_counts([LABELS[i] for i in picked]) == [3, 9]  # 3 HGG : 1 LGG
        assert set(picked) <= set(train) and not set(picked) & set(test)
        assert picked == subsample_training(train, LABELS, size=12, hgg_share=0.75, seed=7)
        assert picked != subsample_training(train, LABELS, size=12, hgg_share=0.75, seed=8)


def test_subsample_sizes_without_a_size_or_a_share():
    assert subsample_counts([16, 16], 8, None) == (4, 4)  # the fold's own proportions
    assert subsample_counts([6, 18], None, 0.75) == (6, 18)  # the largest that fits
    assert subsample_counts([5, 16], None, 0.75) == (5, 16)  # 21: round(0.75 * 21) = 16 HGG
    with pytest.raises(DataError, match="holds 4 LGG and 16 HGG"):
        subsample_counts([4, 16], 24, 0.5)
    with pytest.raises(DataError, match="both grades"):
        subsample_counts([16, 16], 2, 0.9)


def test_trials_keep_the_test_folds_and_vary_the_subsample_per_trial():
    folds = stratified_folds(LABELS, folds=5, seed=3)
    trials = plan_trials(
        LABELS, folds=5, run_folds=None, seeds=(0, 1, 2), split_seed=3, train_size=8,
        hgg_share=0.75,
    )  # fmt: skip
    assert len(trials) == 15 and len({t.key for t in trials}) == 15
    assert [(t.seed, t.fold) for t in trials[:6]] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (0, 4),
        (1, 0),
    ]
    for trial in trials:
        train, test = folds[trial.fold]
        assert list(trial.test) == test  # never subsampled
        assert set(trial.train) <= set(train) and len(trial.train) == 8
        assert class_counts([LABELS[i] for i in trial.train]) == [2, 6]
    same_fold = [t.train for t in trials if t.fold == 0]
    assert len(set(same_fold)) == 3  # a new subsample for every seed
    again = plan_trials(
        LABELS, folds=5, run_folds=None, seeds=(0, 1, 2), split_seed=3, train_size=8,
        hgg_share=0.75,
    )  # fmt: skip
    assert again == trials


def test_repeated_splits_give_fifteen_distinct_trials():
    trials = plan_trials(LABELS, folds=5, run_folds=None, seeds=(0,), repeats=3)
    assert len(trials) == 15 and len({t.key for t in trials}) == 15
    tests = {t.test for t in trials}
    assert len(tests) == 15  # every repeat splits differently
    for repeat in range(3):
        folds = stratified_folds(LABELS, 5, repeat)
        assert [list(t.test) for t in trials if t.repeat == repeat] == [f[1] for f in folds]
        assert [list(t.train) for t in trials if t.repeat == repeat] == [f[0] for f in folds]
