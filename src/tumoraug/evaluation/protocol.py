"""Downstream protocol: does synthetic data help a 3D CNN tell LGG from HGG, and where?

The classifier of `tumoraug.evaluation.classifier` (`ClassifierConfig.network`) is trained
on ROIs and tested on *real* subjects only, with k-fold cross-validation stratified by grade
(optionally repeated with new split seeds), in *arms*: a condition of
`tumoraug.evaluation.arms` (``real``, ``mixed``, ``pretrain``, ``balance``,
``synthetic_only``) × an amount of synthetic data (``ratios``: synthetic ROIs per real
training ROI, a sweep) × a synthetic source (e.g. one per guidance scale).

Every arm runs on the same *trials* (`tumoraug.evaluation.splits`): a trial is a test
fold, its real training ROIs (the other folds, or a seeded subsample of ``train_size``
ROIs at ``hgg_share``, the low-data regime of BraTS 2019) and a training seed
(initialisation, example order and synthetic subset). So every arm is compared with
``real`` run by run (`tumoraug.evaluation.paired`: mean paired ΔAUC, wins, two-sided
Wilcoxon p), and ``repeats × folds × seeds`` runs per arm (15 with 5 folds × 3 seeds).

The protocol takes the real data and the synthetic sources, never a generator: the
generator must have been trained on subjects disjoint from ``real`` (docs/evaluation.md).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from tumoraug.config import Config, check
from tumoraug.errors import DataError
from tumoraug.evaluation.arms import (
    ALL_CONDITIONS,
    CONDITIONS,
    RATIO_CONDITIONS,
    Arm,
    build_arms,
    condition_title,
)
from tumoraug.evaluation.classifier import (
    ClassifierConfig,
    build_classifier,
    item_tensors,
    predict,
    train_classifier,
)
from tumoraug.evaluation.result import METRIC_HEADERS, METRICS, ProtocolResult
from tumoraug.evaluation.splits import (
    Trial,
    class_counts,
    dataset_labels,
    plan_trials,
    stratified_folds,
)
from tumoraug.labels import GRADES
from tumoraug.metrics import classification_metrics
from tumoraug.progress import progress_bar

__all__ = [
    "ALL_CONDITIONS",
    "CONDITIONS",
    "METRICS",
    "METRIC_HEADERS",
    "ProtocolConfig",
    "ProtocolResult",
    "condition_title",
    "dataset_labels",
    "run_protocol",
    "stratified_folds",
    "synthetic_demand",
    "synthetic_subset",
    "training_stages",
]


@dataclasses.dataclass
class ProtocolConfig(Config):
    """Cross-validation protocol settings (see the module docstring).

    ``ratio`` is the one amount of synthetic data (× the real training ROIs) unless
    ``ratios`` gives a sweep; ``balance_factor`` scales what ``balance`` adds.
    ``train_size`` / ``hgg_share`` subsample every training fold (None: the whole fold, or
    its own grade proportions); ``repeats`` repeats the k-fold split with split seeds
    ``split_seed + r``.
    """

    conditions: tuple[str, ...] = CONDITIONS
    folds: int = 5
    run_folds: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    split_seed: int = 0
    ratio: float = 1.0
    ratios: tuple[float, ...] = ()
    balance_factor: float = 1.0
    train_size: int | None = None
    hgg_share: float | None = None
    repeats: int = 1
    epochs: int = 30
    pretrain_epochs: int = 15
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    threshold: float = 0.5
    device: str = "auto"

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        "tiny": {"folds": 2, "run_folds": 1, "seeds": (0,), "epochs": 1, "pretrain_epochs": 1},
    }

    def validate(self) -> None:
        name = type(self).__name__
        unknown = [c for c in self.conditions if c not in ALL_CONDITIONS]
        check(
            len(self.conditions) >= 1 and not unknown,
            name,
            "conditions",
            f"a non-empty subset of {list(ALL_CONDITIONS)}",
            self.conditions,
        )
        check(
            len(set(self.conditions)) == len(self.conditions),
            name, "conditions", "no condition twice", self.conditions,
        )  # fmt: skip
        check(self.folds >= 2, name, "folds", "an int >= 2", self.folds)
        check(
            self.run_folds is None or 1 <= self.run_folds <= self.folds,
            name,
            "run_folds",
            f"None or an int in [1, {self.folds}]",
            self.run_folds,
        )
        check(len(self.seeds) >= 1, name, "seeds", "at least one seed", self.seeds)
        check(self.ratio > 0, name, "ratio", "a number > 0", self.ratio)
        check(
            all(r > 0 for r in self.ratios) and len(set(self.ratios)) == len(self.ratios),
            name, "ratios", "distinct numbers > 0 (or empty: use ratio)", self.ratios,
        )  # fmt: skip
        check(self.balance_factor > 0, name, "balance_factor", "a number > 0", self.balance_factor)
        check(
            self.train_size is None or self.train_size >= 2,
            name, "train_size", "None or an int >= 2", self.train_size,
        )  # fmt: skip
        check(
            self.hgg_share is None or 0 < self.hgg_share < 1,
            name, "hgg_share", "None or a number in (0, 1)", self.hgg_share,
        )  # fmt: skip
        check(self.repeats >= 1, name, "repeats", "an int >= 1", self.repeats)
        check(self.epochs >= 1, name, "epochs", "an int >= 1", self.epochs)
        check(
            self.pretrain_epochs >= 1, name, "pretrain_epochs", "an int >= 1", self.pretrain_epochs
        )
        check(self.batch_size >= 1, name, "batch_size", "an int >= 1", self.batch_size)
        check(self.lr > 0, name, "lr", "a number > 0", self.lr)
        check(self.weight_decay >= 0, name, "weight_decay", "a number >= 0", self.weight_decay)
        check(0 < self.threshold < 1, name, "threshold", "a number in (0, 1)", self.threshold)

    @property
    def needs_synthetic(self) -> bool:
        """Whether any chosen condition uses synthetic data."""
        return any(c != "real" for c in self.conditions)

    @property
    def ratio_values(self) -> tuple[float, ...]:
        """The swept amounts of synthetic data: ``ratios``, or ``(ratio,)``."""
        return tuple(float(r) for r in self.ratios) or (float(self.ratio),)

    def trials(self, labels: list[int]) -> list[Trial]:
        """The trials of this protocol on real data with ``labels`` (`plan_trials`)."""
        return plan_trials(
            labels,
            folds=self.folds,
            run_folds=self.run_folds,
            seeds=self.seeds,
            split_seed=self.split_seed,
            repeats=self.repeats,
            train_size=self.train_size,
            hgg_share=self.hgg_share,
        )


def synthetic_subset(synthetic: Dataset, count: int, seed: int) -> Subset:
    """``count`` items of ``synthetic`` in a seeded random order (repeats if it is smaller).

    For one seed, a smaller count takes a prefix of a larger one (the ratio sweep nests).
    """
    size = len(synthetic)  # type: ignore[arg-type]
    if size == 0:
        raise DataError("the synthetic dataset is empty")
    rng = torch.Generator().manual_seed(seed)
    repeats = -(-count // size)
    indices = torch.cat([torch.randperm(size, generator=rng) for _ in range(repeats)])
    return Subset(synthetic, indices[:count].tolist())


def balance_count(real_counts: list[int], factor: float) -> tuple[int, int]:
    """``(grade, count)``: the minority grade of ``[n_LGG, n_HGG]`` and how many synthetic
    ROIs of it make the grades equal, × ``factor`` (count 0 when already balanced)."""
    minority = int(np.argmin(real_counts))
    return minority, round(factor * (max(real_counts) - min(real_counts)))


def synthetic_amount(arm: Arm, n_train: int) -> int:
    """How many synthetic ROIs a ``ratio`` arm draws for ``n_train`` real training ROIs."""
    return max(1, round(float(arm.ratio) * n_train))  # type: ignore[arg-type]


def training_stages(
    arm: Arm,
    train: Dataset,
    train_labels: list[int],
    synthetic: Dataset | None,
    synthetic_labels: list[int] | None,
    *,
    config: ProtocolConfig,
    seed: int,
) -> list[tuple[Dataset, int, int]]:
    """What a run of ``arm`` trains on: ``(dataset, epochs, order seed)`` per stage.

    ``train`` are the trial's real training ROIs (``train_labels`` their labels);
    ``synthetic`` the arm's source (``synthetic_labels`` its labels). The synthetic subset
    follows ``seed``.
    """
    if arm.condition == "real":
        return [(train, config.epochs, seed)]
    if synthetic is None:
        raise DataError(f"condition {arm.condition!r} needs a synthetic dataset, none given")
    if arm.condition == "balance":
        grade, count = balance_count(class_counts(train_labels), arm.balance_factor or 1.0)
        if count == 0:
            return [(train, config.epochs, seed)]
        labels = synthetic_labels if synthetic_labels is not None else dataset_labels(synthetic)
        members = [i for i, v in enumerate(labels) if v == grade]
        if not members:
            raise DataError(
                f"synthetic source {arm.source!r} holds no {GRADES[grade]} ROI to balance with"
            )
        extra = synthetic_subset(Subset(synthetic, members), count, seed)
        return [(ConcatDataset([train, extra]), config.epochs, seed)]
    extra = synthetic_subset(synthetic, synthetic_amount(arm, len(train_labels)), seed)
    if arm.condition == "mixed":
        return [(ConcatDataset([train, extra]), config.epochs, seed)]
    if arm.condition == "pretrain":
        return [(extra, config.pretrain_epochs, seed), (train, config.epochs, seed + 1)]
    return [(extra, config.epochs, seed)]  # synthetic_only


def labels_of(dataset: Dataset, known: Mapping[int, list[int]]) -> list[int]:
    """Labels of ``dataset`` through its `Subset` / `ConcatDataset` layers, reading the
    labels of a base dataset from ``known`` (by ``id``) when given there."""
    if id(dataset) in known:
        return known[id(dataset)]
    if isinstance(dataset, Subset):
        base = labels_of(dataset.dataset, known)
        return [base[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [v for part in dataset.datasets for v in labels_of(part, known)]
    return dataset_labels(dataset)


def stage_counts(
    stages: list[tuple[Dataset, int, int]], real: Dataset, known: Mapping[int, list[int]]
) -> dict[str, list[int]]:
    """``{"real": [n_LGG, n_HGG], "synthetic": [...]}``: what the stages train on, summed."""
    counts = {"real": [0, 0], "synthetic": [0, 0]}

    def visit(dataset: Dataset) -> None:
        if isinstance(dataset, ConcatDataset):
            for part in dataset.datasets:
                visit(part)
            return
        origin = "real" if isinstance(dataset, Subset) and dataset.dataset is real else "synthetic"
        for cls, n in enumerate(class_counts(labels_of(dataset, known))):
            counts[origin][cls] += n

    for dataset, _, _ in stages:
        visit(dataset)
    return counts


def synthetic_demand(labels: list[int], config: ProtocolConfig, hgg_share: float = 0.5) -> int:
    """How many synthetic ROIs a source needs so that no run draws one of its ROIs twice.

    ``hgg_share`` is the HGG share of the source (for what ``balance`` draws of one grade).
    0 when no chosen condition uses synthetic data.
    """
    demand = 0
    for trial in config.trials(labels) if config.needs_synthetic else []:
        counts = class_counts([labels[i] for i in trial.train])
        if any(c in RATIO_CONDITIONS for c in config.conditions):
            demand = max(demand, max(1, round(max(config.ratio_values) * sum(counts))))
        if "balance" in config.conditions:
            grade, count = balance_count(counts, config.balance_factor)
            share = hgg_share if grade == 1 else 1 - hgg_share
            demand = max(demand, math.ceil(count / share) if share > 0 else count)
    return demand


def named_sources(
    synthetic: Dataset | Mapping[str, Dataset] | None,
    provenance: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[dict[str, Dataset], dict[str, dict[str, Any]]]:
    """``({name: dataset}, {name: description})`` of the synthetic input of `run_protocol`."""
    if synthetic is None:
        datasets: dict[str, Dataset] = {}
    elif isinstance(synthetic, Mapping):
        datasets = dict(synthetic)
    else:
        single = provenance is not None and len(provenance) == 1
        datasets = {next(iter(provenance)) if single else "synthetic": synthetic}  # type: ignore[arg-type]
    info = {}
    for name, dataset in datasets.items():
        described = dict((provenance or {}).get(name, {}))
        described.setdefault("n", len(dataset))  # type: ignore[arg-type]
        info[name] = described
    return datasets, info


def check_inputs(
    real: Dataset, sources: dict[str, Dataset], config: ProtocolConfig, channels: int
) -> tuple[int, ...]:
    """The real ROI shape, after checking the classifier channels and the sources' shapes."""
    shape = tuple(item_tensors(real[0])[0].shape)
    if channels != shape[0]:
        raise DataError(
            f"the ROIs have {shape[0]} channel(s), the classifier expects in_channels={channels}"
        )
    if config.needs_synthetic and not sources:
        raise DataError(
            f"conditions {list(config.conditions)} need synthetic data: pass a generator "
            "model, a synthetic bank or a synthetic ROI folder, or use conditions=('real',)"
        )
    for name, dataset in sources.items():
        synthetic_shape = tuple(item_tensors(dataset[0])[0].shape)
        if synthetic_shape != shape:
            raise DataError(
                f"synthetic ROIs have shape {synthetic_shape} (source {name!r}), the real ROIs "
                f"{shape}: use a model / bank made for this ROI size and modalities"
            )
    return shape


def run_protocol(
    real: Dataset,
    synthetic: Dataset | Mapping[str, Dataset] | None = None,
    *,
    config: ProtocolConfig | None = None,
    classifier: ClassifierConfig | None = None,
    provenance: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
) -> ProtocolResult:
    """Train and test the classifier in every arm and trial; see the module docstring.

    ``synthetic``: one dataset, or several by name (e.g. ``{"guidance 1.5": ...}``: each
    becomes its own arms); ``provenance`` describes each source by name (model id or bank,
    count, sampling; its ``"guidance"`` names the arms), recorded in the report.
    Initialisation and dropout draw from the global RNG seeded with the trial's seed inside
    a forked RNG state, so a run depends on its trial only, not on what ran before it.
    """
    config = config or ProtocolConfig()
    labels = dataset_labels(real)
    channels = item_tensors(real[0])[0].shape[0]
    classifier = classifier or ClassifierConfig(in_channels=channels)
    sources, info = named_sources(synthetic, provenance)
    check_inputs(real, sources, config, classifier.in_channels)
    used = sources if config.needs_synthetic else {}
    source_labels = {name: dataset_labels(dataset) for name, dataset in used.items()}
    known = {id(real): labels, **{id(sources[n]): v for n, v in source_labels.items()}}
    arms = build_arms(config.conditions, config.ratio_values, info, config.balance_factor)
    trials = config.trials(labels)
    runs = []
    common = {"batch_size": config.batch_size, "lr": config.lr}
    common.update(weight_decay=config.weight_decay, device=config.device)
    started = time.perf_counter()
    with progress_bar("evaluate", len(arms) * len(trials), enabled=progress) as bar:
        for arm in arms:
            for trial in trials:
                bar.describe(f"{arm.key} seed {trial.seed} fold {trial.fold + 1}")
                train = Subset(real, list(trial.train))
                stages = training_stages(
                    arm,
                    train,
                    [labels[i] for i in trial.train],
                    sources.get(arm.source) if arm.source else None,
                    source_labels.get(arm.source) if arm.source else None,
                    config=config,
                    seed=trial.seed,
                )
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(trial.seed)
                    model = build_classifier(classifier)
                    for dataset, epochs, order_seed in stages:
                        train_classifier(model, dataset, epochs=epochs, seed=order_seed, **common)
                test = Subset(real, list(trial.test))
                y, p = predict(model, test, batch_size=config.batch_size, device=config.device)
                runs.append(
                    {
                        "arm": arm.key,
                        "condition": arm.condition,
                        "ratio": arm.ratio,
                        "source": arm.source,
                        "repeat": trial.repeat,
                        "seed": trial.seed,
                        "fold": trial.fold,
                        "train_indices": list(trial.train),
                        "test_indices": list(trial.test),
                        "real_counts": class_counts([labels[i] for i in trial.train]),
                        "trained_on": stage_counts(stages, real, known),
                        "labels": y.astype(int).tolist(),
                        "probs": [round(float(v), 6) for v in p],
                        "metrics": classification_metrics(y, p, config.threshold),
                    }
                )
                bar.advance()
    return ProtocolResult(
        config=config,
        classifier=classifier,
        runs=runs,
        n_real=len(labels),
        n_synthetic=sum(info[n]["n"] for n in info) if info else None,
        seconds=time.perf_counter() - started,
        arms=arms,
        sources=info,
    )
