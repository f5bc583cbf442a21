"""Downstream protocol: does synthetic data help a 3D CNN tell LGG from HGG?

A small 3D ResNet (`ResNet3D`, ResNet-10-like: one basic block per stage) is trained on
ROIs and tested with k-fold cross-validation over the *real* subjects, stratified by
grade, under three conditions:

* ``real``: real training folds only;
* ``mixed``: real training folds plus synthetic ROIs (``ratio`` × the number of real
  training ROIs), shuffled together;
* ``pretrain``: pre-train on the same number of synthetic ROIs, then fine-tune on the
  real training folds.

Every condition is repeated over seeds (initialisation, shuffling and the synthetic
subset follow the seed; the fold split follows ``split_seed`` and is the same for all
conditions and seeds, so that conditions are compared on identical test subjects).
Datasets may yield ``tio.Subject`` items (``image`` + ``label``), batch-like dicts, or
``(image, label)`` tuples, so a `ROIDataset`, a synthetic dataset or a plain list works.
Results: mean ± std over folds × seeds of AUC, F1, accuracy, precision and recall, as a
Markdown table in the papers' format, JSON, and ROC curves drawn with Pillow.
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
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from tumoraug.checkpoint import atomic_path, atomic_write_json, atomic_write_text
from tumoraug.config import Config, check
from tumoraug.data import subject_tensors
from tumoraug.errors import ConfigError, DataError
from tumoraug.metrics import classification_metrics, roc_curve
from tumoraug.training.loop import resolve_device

CONDITIONS = ("real", "mixed", "pretrain")
METRICS = ("auc", "f1", "accuracy", "precision", "recall")
METRIC_HEADERS = {"auc": "AUC", "f1": "F1", "accuracy": "Acc", "precision": "Prec", "recall": "Rec"}


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass
class ClassifierConfig(Config):
    """The 3D ResNet: ``base_width`` channels in the first stage, doubled at each next one.

    ``blocks`` lists the basic blocks per stage: ``(1, 1, 1, 1)`` is the ResNet-10 layout
    (stem + 4 × 2 convolutions + linear head). Normalisation is GroupNorm so that batches
    of 2 large ROIs train as well as batches of 32 small ones.
    """

    in_channels: int = 1
    base_width: int = 16
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    dropout: float = 0.2

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "resnet10": {},
        "tiny": {"base_width": 4, "blocks": (1, 1), "dropout": 0.0},
    }

    def validate(self) -> None:
        name = type(self).__name__
        check(self.in_channels >= 1, name, "in_channels", "an int >= 1", self.in_channels)
        check(self.base_width >= 1, name, "base_width", "an int >= 1", self.base_width)
        check(
            len(self.blocks) >= 1 and all(int(b) >= 1 for b in self.blocks),
            name,
            "blocks",
            "a non-empty list of ints >= 1",
            self.blocks,
        )
        check(0 <= self.dropout < 1, name, "dropout", "a number in [0, 1)", self.dropout)


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


# ----------------------------------------------------------------------------- model


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class BasicBlock3D(nn.Module):
    """Two 3×3×3 convolutions with a residual connection (1×1×1 projection when needed)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = _norm(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = _norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride, bias=False), _norm(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet3D(nn.Module):
    """3D ResNet classifier: (B,C,D,H,W) ROIs -> (B,) logits of P(HGG)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        width = config.base_width
        self.stem = nn.Sequential(
            nn.Conv3d(config.in_channels, width, 7, 2, 3, bias=False),
            _norm(width),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, 2, 1),
        )
        stages = []
        channels = width
        for index, count in enumerate(config.blocks):
            out_channels = width * 2**index
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock3D(channels, out_channels, stride))
                channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(channels, 1)
        self.feature_dim = channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (B, F): usable as an MMD feature space."""
        return self.stages(self.stem(x)).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x))).squeeze(1)


# ----------------------------------------------------------------------------- data


def item_tensors(item: Any) -> tuple[torch.Tensor, int]:
    """``(image (C,D,H,W) float32, label int)`` of one item, via `subject_tensors`."""
    image, _, label = subject_tensors(item)
    if image.shape[0] != 1:
        raise DataError(f"expected one item, got a batch of {image.shape[0]}")
    return image[0], int(label[0])


class _Examples(Dataset):
    """View of any dataset as ``(image, label)`` pairs for the default collate."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return item_tensors(self.dataset[index])


def materialize(dataset: Dataset, *, progress: bool = False) -> list[tuple[torch.Tensor, int]]:
    """Read every item once into memory as ``(image, label)`` pairs, in order.

    Use it for a generator-backed synthetic dataset: the protocol reads synthetic items
    once per epoch and run, and generating them each time would dominate the run time.
    Sequential reads let a `SyntheticTumorDataset` generate its items in blocks.
    """
    size = len(dataset)  # type: ignore[arg-type]
    items = []
    with Progress(*_progress_columns(), console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("synthetic ROIs", total=size)
        for index in range(size):
            items.append(item_tensors(dataset[index]))
            bar.advance(task)
    return items


def _progress_columns() -> tuple[Any, ...]:
    return (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )


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
    generator = torch.Generator().manual_seed(seed)
    offset = 0
    for cls in sorted(set(labels)):
        members = [i for i, v in enumerate(labels) if v == cls]
        if len(members) < folds:
            raise DataError(
                f"class {cls} has {len(members)} subjects, fewer than folds={folds}; "
                "use fewer folds or more data"
            )
        order = torch.randperm(len(members), generator=generator).tolist()
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
    generator = torch.Generator().manual_seed(seed)
    repeats = -(-count // size)
    indices = torch.cat([torch.randperm(size, generator=generator) for _ in range(repeats)])
    return Subset(synthetic, indices[:count].tolist())


# ----------------------------------------------------------------------------- training


def _autocast(device: torch.device) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_classifier(
    model: ResNet3D,
    dataset: Dataset,
    *,
    epochs: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str | torch.device = "auto",
) -> ResNet3D:
    """Train ``model`` in place on ``dataset`` with AdamW + BCE; returns it.

    The order of examples follows ``seed``; there is no early stopping (fixed epochs), so
    no validation split is taken from the small real training folds.
    """
    device = resolve_device(device)
    model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        _Examples(dataset), batch_size=batch_size, shuffle=True, generator=generator
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device).float()
            with _autocast(device):
                logits = model(images)
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


@torch.no_grad()
def predict(
    model: ResNet3D, dataset: Dataset, *, batch_size: int = 8, device: str | torch.device = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, P(HGG))`` of every item of ``dataset``, in order."""
    device = resolve_device(device)
    model.to(device).eval()
    labels, probs = [], []
    for images, batch_labels in DataLoader(_Examples(dataset), batch_size=batch_size):
        with _autocast(device):
            logits = model(images.to(device))
        probs.append(torch.sigmoid(logits.float()).cpu())
        labels.append(batch_labels)
    return torch.cat(labels).numpy(), torch.cat(probs).numpy()


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


# ----------------------------------------------------------------------------- results


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
        paths = _write_tables(out_dir, "results", self.to_markdown(), self.to_dict())
        paths["roc"] = Path(out_dir) / "roc.png"
        save_roc_png(self.roc_curves(), paths["roc"])
        return paths


def _write_tables(
    out_dir: str | Path, stem: str, markdown: str, data: dict[str, Any]
) -> dict[str, Path]:
    """Write a report's ``<stem>.md`` and ``<stem>.json`` into ``out_dir`` (created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json"}
    atomic_write_text(paths["markdown"], markdown)
    atomic_write_json(paths["json"], _json_safe(data))
    return paths


def _json_safe(value: Any) -> Any:
    """Replace NaN (an undefined AUC) by None so that the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def save_roc_png(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, size: int = 560
) -> Path:
    """Draw ROC curves (``{name: (fpr, tpr, auc)}``) with Pillow only; returns the path."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = 60, 20, size - 20, size - 50
    width, height = right - left, bottom - top

    def point(fpr: float, tpr: float) -> tuple[float, float]:
        return left + fpr * width, bottom - tpr * height

    for tick in np.linspace(0, 1, 6):
        x, y = point(tick, tick)
        draw.line([(x, top), (x, bottom)], fill=(230, 230, 230))
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.text((x - 8, bottom + 6), f"{tick:.1f}", fill="black", font=font)
        draw.text((left - 30, y - 6), f"{tick:.1f}", fill="black", font=font)
    for start in np.arange(0, 1, 0.04):
        draw.line([point(start, start), point(start + 0.02, start + 0.02)], fill="grey")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left + width / 2 - 60, bottom + 26), "False positive rate", fill="black", font=font)
    draw.text((6, top - 14), "True positive rate", fill="black", font=font)
    for index, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        colour = _COLOURS[index % len(_COLOURS)]
        draw.line([point(f, t) for f, t in zip(fpr, tpr, strict=True)], fill=colour, width=3)
        y = bottom - 18 * (len(curves) - index) - 6
        draw.line([(left + width * 0.35, y + 6), (left + width * 0.35 + 20, y + 6)], colour, 3)
        draw.text((left + width * 0.35 + 26, y), f"{name} (AUC {auc:.3f})", fill="black", font=font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


# ----------------------------------------------------------------------------- protocol


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
    with Progress(*_progress_columns(), console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("evaluate", total=len(jobs))
        for condition, seed, fold in jobs:
            bar.update(task, description=f"{condition} seed {seed} fold {fold + 1}")
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
            bar.advance(task)
    return ProtocolResult(
        config=config,
        classifier=classifier,
        runs=runs,
        n_real=len(labels),
        n_synthetic=None if synthetic is None else len(synthetic),  # type: ignore[arg-type]
        seconds=time.perf_counter() - started,
    )


# ----------------------------------------------------------------------------- sample report


@dataclasses.dataclass
class SampleReport:
    """Fidelity (MMD to real ROIs) and diversity (mean pairwise MS-SSIM) per model and grade."""

    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    montage: list[tuple[str, torch.Tensor]] = dataclasses.field(default_factory=list, repr=False)

    def to_markdown(self) -> str:
        """One row per model and grade; the real set's own MS-SSIM is the reference."""
        lines = [
            "| Model | Grade | n real / gen | MMD ×10⁴ | MS-SSIM generated | MS-SSIM real |",
            "|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row['model']} | {row['grade']} | {row['n_real']} / {row['n_generated']} | "
                f"{row['mmd_1e4']:.2f} | {row['ms_ssim_generated']:.4f} | "
                f"{row['ms_ssim_real']:.4f} |"
            )
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Settings and rows (raw MMD and ×10⁴ both), JSON-compatible."""
        return {"settings": self.settings, "rows": self.rows}

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``samples.md``, ``samples.json`` and ``samples_montage.png`` into ``out_dir``."""
        from tumoraug.viz import save_montage

        paths = _write_tables(out_dir, "samples", self.to_markdown(), self.to_dict())
        paths["montage"] = Path(out_dir) / "samples_montage.png"
        save_montage(
            [volume for _, volume in self.montage],
            paths["montage"],
            row_labels=[name for name, _ in self.montage],
        )
        return paths


def evaluate_samples(
    real: Dataset,
    models: dict[str, Any],
    *,
    n_per_class: int = 16,
    seed: int = 0,
    generate_kwargs: dict[str, Any] | None = None,
    feature_size: int | None = 16,
    max_pairs: int | None = 1000,
    montage_per_class: int = 2,
) -> SampleReport:
    """Compare ``n_per_class`` generated ROIs per grade from each model with the real ROIs.

    ``models`` maps a display name to anything with ``generate(labels, seed=...)`` and
    ``roi_size`` (a `TumorGenerator`). Per grade: Gaussian-kernel MMD (median heuristic,
    biased estimator) between all real ROIs of that grade and the generated ones, in the
    `tumoraug.metrics.volume_features` space of ``feature_size``; mean pairwise MS-SSIM of
    the generated set and, as the reference, of the real set.
    """
    from tumoraug.labels import GRADES
    from tumoraug.metrics import mmd, ms_ssim_diversity

    if not models:
        raise DataError("evaluate_samples needs at least one model")
    examples = materialize(real)
    shape = tuple(examples[0][0].shape)
    rows: list[dict[str, Any]] = []
    montage: list[tuple[str, torch.Tensor]] = []
    for label, grade in enumerate(GRADES):
        same_grade = [x for x, y in examples if y == label]
        if len(same_grade) < 2:
            raise DataError(
                f"need at least 2 real {grade} ROIs to compare with, found {len(same_grade)}"
            )
        real_volumes = torch.stack(same_grade)
        real_diversity = ms_ssim_diversity(real_volumes, max_pairs=max_pairs, seed=seed)
        montage += [(f"real {grade}", v) for v in real_volumes[:montage_per_class]]
        for name, model in models.items():
            generated = model.generate(
                [label] * n_per_class, seed=seed + 7919 * label, **(generate_kwargs or {})
            )
            if tuple(generated.shape[1:]) != shape:
                raise DataError(
                    f"model {name!r} makes ROIs of shape {tuple(generated.shape[1:])}, "
                    f"the real ROIs are {shape}"
                )
            distance = mmd(real_volumes, generated, feature_size=feature_size)
            rows.append(
                {
                    "model": name,
                    "grade": grade,
                    "n_real": len(real_volumes),
                    "n_generated": n_per_class,
                    "mmd": distance.value,
                    "mmd_1e4": distance.scaled,
                    "bandwidth": distance.bandwidth,
                    "ms_ssim_generated": ms_ssim_diversity(
                        generated, max_pairs=max_pairs, seed=seed
                    ),
                    "ms_ssim_real": real_diversity,
                }
            )
            montage += [(f"{name[:6]} {grade}", v) for v in generated[:montage_per_class]]
    settings = {
        "n_per_class": n_per_class,
        "seed": seed,
        "generate_kwargs": generate_kwargs or {},
        "feature_size": feature_size,
        "max_pairs": max_pairs,
        "kernel": "gaussian (median heuristic), biased estimator",
    }
    return SampleReport(rows=rows, settings=settings, montage=montage)


# ----------------------------------------------------------------------------- sources


def synthetic_source(
    *,
    model: str | Path | None = None,
    bank: str | Path | None = None,
    roi_dir: str | Path | None = None,
    count: int = 0,
    class_ratio: float = 0.5,
    seed: int = 0,
    generate_kwargs: dict[str, Any] | None = None,
    device: str = "auto",
    progress: bool = False,
) -> Dataset | None:
    """The synthetic dataset of the protocol from at most one of three sources, or None.

    ``model``: a `TumorGenerator` folder or Hub id; ``count`` ROIs (a fraction
    ``class_ratio`` of them HGG) are generated once, with ``seed``, and kept in memory.
    ``bank``: a `SyntheticBank` written earlier, read as it is. ``roi_dir``: a ROI cache
    folder (`ROIDataset` layout) holding synthetic ROIs made by any other means.
    """
    given = [name for name, v in (("model", model), ("bank", bank), ("roi_dir", roi_dir)) if v]
    if len(given) > 1:
        raise ConfigError(f"give one synthetic source, got {' and '.join(given)}")
    if model:
        from tumoraug.dataset import SyntheticTumorDataset

        if count < 1:
            raise ConfigError(f"count: expected the number of ROIs to generate (>= 1), got {count}")
        dataset = SyntheticTumorDataset(
            str(model),
            length=count,
            class_ratio=class_ratio,
            seed=seed,
            device=device,
            **(generate_kwargs or {}),
        )
        return materialize(dataset, progress=progress)  # type: ignore[return-value]
    if bank:
        from tumoraug.dataset import SyntheticTumorDataset

        return SyntheticTumorDataset.from_bank(bank)
    if roi_dir:
        from tumoraug.data import ROIDataset

        return ROIDataset(roi_dir)
    return None
