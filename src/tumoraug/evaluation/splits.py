"""Which real ROIs train and test each run: stratified folds, repeats and low-data subsamples.

A *trial* is one (split repeat, fold, training seed): its test fold is a fold of a
stratified k-fold split of all real subjects, and its real training ROIs are the other
folds, or a seeded subsample of them (``train_size`` ROIs at a given HGG share: the
low-data, imbalanced regime of BraTS 2019). Every arm of the protocol runs on the same
trials, so that arms can be compared run by run (paired).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tumoraug.errors import DataError
from tumoraug.evaluation.classifier import item_tensors
from tumoraug.labels import GRADES


@dataclasses.dataclass(frozen=True)
class Trial:
    """One paired unit of the protocol: a test fold, its real training ROIs and a seed."""

    repeat: int
    fold: int
    seed: int
    train: tuple[int, ...]
    test: tuple[int, ...]

    @property
    def key(self) -> tuple[int, int, int]:
        """``(repeat, fold, seed)``: what pairs the runs of two arms."""
        return (self.repeat, self.fold, self.seed)


def dataset_labels(dataset: Dataset) -> list[int]:
    """The labels of all items: ``dataset.labels`` when present, else read item by item."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [item_tensors(dataset[i])[1] for i in range(len(dataset))]  # type: ignore[arg-type]
    return [int(v) for v in labels]


def class_counts(labels: Sequence[int]) -> list[int]:
    """``[n_LGG, n_HGG]`` of ``labels``."""
    return [sum(1 for v in labels if int(v) == cls) for cls in range(len(GRADES))]


def derived_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (through `numpy.random.SeedSequence`)."""
    words = [int(p) & 0xFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def stratified_folds(
    labels: Sequence[int], folds: int, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """``folds`` (train, test) index splits; each class is shuffled and dealt round-robin.

    Every test fold gets ``n_c // folds`` or one more items of each class ``c``; a class
    with fewer than ``folds`` items is an error (some test fold would miss it).
    """
    labels = [int(v) for v in labels]
    assignment = [0] * len(labels)
    rng = torch.Generator().manual_seed(seed)
    offset = 0
    for cls in sorted(set(labels)):
        members = [i for i, v in enumerate(labels) if v == cls]
        if len(members) < folds:
            raise DataError(
                f"class {cls} has {len(members)} subjects, fewer than folds={folds}; "
                "use fewer folds or more data"
            )
        order = torch.randperm(len(members), generator=rng).tolist()
        for position, k in enumerate(order):
            assignment[members[k]] = (position + offset) % folds
        offset += len(members)
    splits = []
    for fold in range(folds):
        test = [i for i, a in enumerate(assignment) if a == fold]
        train = [i for i, a in enumerate(assignment) if a != fold]
        splits.append((train, test))
    return splits


def fits(size: int, hgg_share: float, n_lgg: int, n_hgg: int) -> bool:
    """Whether ``size`` ROIs at ``hgg_share`` can be drawn from ``n_lgg`` + ``n_hgg``."""
    want_hgg = round(size * hgg_share)
    return want_hgg <= n_hgg and size - want_hgg <= n_lgg


def subsample_counts(
    available: Sequence[int], size: int | None, hgg_share: float | None
) -> tuple[int, int]:
    """``(n_LGG, n_HGG)`` to draw from ``available`` (``[n_LGG, n_HGG]``) for a subsample.

    ``size`` None takes the largest subsample with ``hgg_share``; ``hgg_share`` None keeps
    the proportions of ``available``. Both classes must be represented.
    """
    n_lgg, n_hgg = int(available[0]), int(available[1])
    if hgg_share is None:
        hgg_share = n_hgg / max(1, n_lgg + n_hgg)
    if size is None:  # the largest subsample that the fold can give at this share
        size = n_lgg + n_hgg
        while size > 0 and not fits(size, hgg_share, n_lgg, n_hgg):
            size -= 1
    want_hgg = round(size * hgg_share)
    want_lgg = size - want_hgg
    if want_hgg < 1 or want_lgg < 1:
        raise DataError(
            f"a training subsample of {size} ROIs at HGG share {hgg_share:g} has "
            f"{want_lgg} LGG and {want_hgg} HGG: both grades need at least one ROI"
        )
    if want_hgg > n_hgg or want_lgg > n_lgg:
        raise DataError(
            f"a training fold holds {n_lgg} LGG and {n_hgg} HGG ROIs, the subsample needs "
            f"{want_lgg} LGG and {want_hgg} HGG: use a smaller train_size, fewer folds or "
            "more data"
        )
    return want_lgg, want_hgg


def subsample_training(
    indices: Sequence[int],
    labels: Sequence[int],
    *,
    size: int | None,
    hgg_share: float | None,
    seed: int,
) -> list[int]:
    """A seeded subsample of the training ``indices`` with ``size`` ROIs at ``hgg_share``.

    ``labels`` are the labels of the whole dataset. Each grade is drawn without
    replacement from its own seeded permutation; the result is sorted.
    """
    members = [[i for i in indices if int(labels[i]) == cls] for cls in range(len(GRADES))]
    wants = subsample_counts([len(m) for m in members], size, hgg_share)
    rng = torch.Generator().manual_seed(seed)
    picked: list[int] = []
    for group, want in zip(members, wants, strict=True):
        order = torch.randperm(len(group), generator=rng).tolist()
        picked += [group[k] for k in order[:want]]
    return sorted(picked)


def plan_trials(
    labels: Sequence[int],
    *,
    folds: int,
    run_folds: int | None,
    seeds: Sequence[int],
    split_seed: int = 0,
    repeats: int = 1,
    train_size: int | None = None,
    hgg_share: float | None = None,
) -> list[Trial]:
    """Every trial of the protocol, ordered by repeat, seed, fold.

    Repeat ``r`` splits with seed ``split_seed + r``. Without ``train_size`` and
    ``hgg_share`` a trial trains on its whole training fold; with either, on a subsample of
    it drawn with a seed derived from ``(split_seed, repeat, fold, seed)``: the same for
    every arm, different for every trial. Test folds are never subsampled.
    """
    subsample = train_size is not None or hgg_share is not None
    trials = []
    for repeat in range(repeats):
        splits = stratified_folds(labels, folds, split_seed + repeat)[: run_folds or folds]
        for seed in seeds:
            for fold, (train, test) in enumerate(splits):
                if subsample:
                    pick = derived_seed(split_seed, repeat, fold, seed)
                    train = subsample_training(
                        train, labels, size=train_size, hgg_share=hgg_share, seed=pick
                    )
                trials.append(Trial(repeat, fold, int(seed), tuple(train), tuple(test)))
    return trials
