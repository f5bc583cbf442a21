"""Downstream protocol: does synthetic data help a 3D CNN tell LGG from HGG?

The `ResNet3D` classifier of `tumoraug.evaluation.classifier` is trained on ROIs and
tested with k-fold cross-validation over the *real* subjects, stratified by grade, under
three conditions:

* ``real``: real training folds only;
* ``mixed``: real training folds plus synthetic ROIs (``ratio`` × the number of real
  training ROIs), shuffled together;
* ``pretrain``: pre-train on the same number of synthetic ROIs, then fine-tune on the
  real training folds.

Every condition is repeated over seeds (initialisation, shuffling and the synthetic
subset follow the seed; the fold split follows ``split_seed`` and is the same for all
conditions and seeds, so that conditions are compared on identical test subjects).
Results: mean ± std over folds × seeds of AUC, F1, accuracy, precision and recall, as a
Markdown table in the papers' format, JSON, and ROC curves.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from tumoraug.config import Config, check
from tumoraug.errors import DataError
from tumoraug.evaluation.classifier import (
    ClassifierConfig,
    ResNet3D,
    item_tensors,
    predict,
    train_classifier,
)
from tumoraug.evaluation.plots import save_roc_png
from tumoraug.evaluation.report import write_tables
from tumoraug.metrics import classification_metrics, roc_curve
from tumoraug.progress import progress_bar

CONDITIONS = ("real", "mixed", "pretrain")
METRICS = ("auc", "f1", "accuracy", "precision", "recall")
METRIC_HEADERS = {"auc": "AUC", "f1": "F1", "accuracy": "Acc", "precision": "Prec", "recall": "Rec"}


@dataclasses.dataclass
class ProtocolConfig(Config):
    """Cross-validation protocol settings (see the module docstring)."""

    conditions: tuple[str, ...] = CONDITIONS
    folds: int = 5
    run_folds: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    split_seed: int = 0
    ratio: float = 1.0
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
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        check(
            len(self.conditions) >= 1 and not unknown,
            name,
            "conditions",
            f"a non-empty subset of {list(CONDITIONS)}",
            self.conditions,
        )
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


def dataset_labels(dataset: Dataset) -> list[int]:
    """The labels of all items: ``dataset.labels`` when present, else read item by item."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [item_tensors(dataset[i])[1] for i in range(len(dataset))]  # type: ignore[arg-type]
    return [int(v) for v in labels]


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


def synthetic_subset(synthetic: Dataset, count: int, seed: int) -> Subset:
    """``count`` items of ``synthetic`` in a seeded random order (repeats if it is smaller)."""
    size = len(synthetic)  # type: ignore[arg-type]
    if size == 0:
        raise DataError("the synthetic dataset is empty")
    rng = torch.Generator().manual_seed(seed)
    repeats = -(-count // size)
    indices = torch.cat([torch.randperm(size, generator=rng) for _ in range(repeats)])
    return Subset(synthetic, indices[:count].tolist())


def run_condition(
    condition: str,
    train: Dataset,
    test: Dataset,
    synthetic: Dataset | None,
    *,
    config: ProtocolConfig,
    classifier: ClassifierConfig,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Train one classifier under ``condition`` and return its test ``(labels, probs)``.

    Initialisation and dropout draw from the global RNG seeded with ``seed`` inside a
    forked RNG state, so a run depends on its seed only, not on what ran before it.
    """
    common = {
        "batch_size": config.batch_size,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "device": config.device,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet3D(classifier)
        if condition == "real":
            train_classifier(model, train, epochs=config.epochs, seed=seed, **common)
        else:
            if synthetic is None:
                raise DataError(f"condition {condition!r} needs a synthetic dataset, none given")
            extra = synthetic_subset(synthetic, max(1, round(config.ratio * len(train))), seed)
            if condition == "mixed":
                mixed = ConcatDataset([train, extra])
                train_classifier(model, mixed, epochs=config.epochs, seed=seed, **common)
            else:
                pre_epochs = config.pretrain_epochs
                train_classifier(model, extra, epochs=pre_epochs, seed=seed, **common)
                train_classifier(model, train, epochs=config.epochs, seed=seed + 1, **common)
    return predict(model, test, batch_size=config.batch_size, device=config.device)


def condition_title(condition: str, ratio: float) -> str:
    """Human title of a condition for tables and plots."""
    return {
        "real": "Real only",
        "mixed": f"Real + synthetic (ratio {ratio:g})",
        "pretrain": "Pre-train synthetic, fine-tune real",
    }[condition]


@dataclasses.dataclass
class ProtocolResult:
    """Per-run metrics and predictions, plus the settings that produced them."""

    config: ProtocolConfig
    classifier: ClassifierConfig
    runs: list[dict[str, Any]]
    n_real: int
    n_synthetic: int | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{condition: {metric: {"mean", "std", "n"}}}``; std is the sample std (ddof=1)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for condition in self.config.conditions:
            runs = [r for r in self.runs if r["condition"] == condition]
            out[condition] = {}
            for metric in METRICS:
                values = np.array([r["metrics"][metric] for r in runs], dtype=np.float64)
                values = values[~np.isnan(values)]
                std = float(values.std(ddof=1)) if values.size > 1 else 0.0
                mean = float(values.mean()) if values.size else math.nan
                out[condition][metric] = {"mean": mean, "std": std, "n": int(values.size)}
        return out

    def to_markdown(self) -> str:
        """The papers' table: one row per condition, ``mean ± std`` per metric."""
        header = "| Condition | " + " | ".join(METRIC_HEADERS[m] for m in METRICS) + " |"
        lines = [header, "|" + "---|" * (len(METRICS) + 1)]
        for condition, stats in self.summary().items():
            cells = [f"{stats[m]['mean']:.3f} ± {stats[m]['std']:.3f}" for m in METRICS]
            title = condition_title(condition, self.config.ratio)
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible: settings, summary and every run with its test predictions."""
        return {
            "protocol": self.config.to_dict(),
            "classifier": self.classifier.to_dict(),
            "n_real": self.n_real,
            "n_synthetic": self.n_synthetic,
            "seconds": round(self.seconds, 2),
            "summary": self.summary(),
            "runs": self.runs,
        }

    def roc_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
        """Per condition: ROC of the test predictions pooled over folds and seeds."""
        curves = {}
        for condition in self.config.conditions:
            runs = [r for r in self.runs if r["condition"] == condition]
            labels = np.concatenate([r["labels"] for r in runs])
            probs = np.concatenate([r["probs"] for r in runs])
            fpr, tpr, _ = roc_curve(labels, probs)
            auc = classification_metrics(labels, probs)["auc"]
            curves[condition_title(condition, self.config.ratio)] = (fpr, tpr, auc)
        return curves

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``results.md``, ``results.json`` and ``roc.png`` into ``out_dir``."""
        paths = write_tables(out_dir, "results", self.to_markdown(), self.to_dict())
        paths["roc"] = Path(out_dir) / "roc.png"
        save_roc_png(self.roc_curves(), paths["roc"])
        return paths


def run_protocol(
    real: Dataset,
    synthetic: Dataset | None = None,
    *,
    config: ProtocolConfig | None = None,
    classifier: ClassifierConfig | None = None,
    progress: bool = False,
) -> ProtocolResult:
    """Cross-validate the classifier under every condition and seed; see the module doc."""
    config = config or ProtocolConfig()
    labels = dataset_labels(real)
    shape = tuple(item_tensors(real[0])[0].shape)
    classifier = classifier or ClassifierConfig(in_channels=shape[0])
    if classifier.in_channels != shape[0]:
        raise DataError(
            f"the ROIs have {shape[0]} channel(s), the classifier expects "
            f"in_channels={classifier.in_channels}"
        )
    if config.needs_synthetic:
        if synthetic is None:
            raise DataError(
                f"conditions {list(config.conditions)} need synthetic data: pass a generator "
                "model, a synthetic bank or a synthetic ROI folder, or use conditions=('real',)"
            )
        synthetic_shape = tuple(item_tensors(synthetic[0])[0].shape)
        if synthetic_shape != shape:
            raise DataError(
                f"synthetic ROIs have shape {synthetic_shape}, the real ROIs {shape}: "
                "use a model / bank made for this ROI size and modalities"
            )
    splits = stratified_folds(labels, config.folds, config.split_seed)
    splits = splits[: config.run_folds or config.folds]
    jobs = [
        (condition, seed, fold)
        for condition in config.conditions
        for seed in config.seeds
        for fold in range(len(splits))
    ]
    runs = []
    started = time.perf_counter()
    with progress_bar("evaluate", len(jobs), enabled=progress) as bar:
        for condition, seed, fold in jobs:
            bar.describe(f"{condition} seed {seed} fold {fold + 1}")
            train_idx, test_idx = splits[fold]
            y, p = run_condition(
                condition,
                Subset(real, train_idx),
                Subset(real, test_idx),
                synthetic,
                config=config,
                classifier=classifier,
                seed=seed,
            )
            runs.append(
                {
                    "condition": condition,
                    "seed": seed,
                    "fold": fold,
                    "test_indices": list(test_idx),
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
        n_synthetic=None if synthetic is None else len(synthetic),  # type: ignore[arg-type]
        seconds=time.perf_counter() - started,
    )
