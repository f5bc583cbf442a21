"""The downstream LGG/HGG classifier: a small 3D ResNet, its training loop and predictions.

`ResNet3D` is ResNet-10-like (stem + one basic block per stage + linear head) with
GroupNorm, so that batches of 2 large ROIs train as well as batches of 32 small ones.
`ClassifierConfig.network` also picks one of MONAI's reference 3D classifiers
(``resnet10``, ``resnet18``, ``densenet121``; extra ``tumoraug[monai]``), built by
`build_classifier` with the same interface, so `tumoraug evaluate` numbers can be set
beside published ones. Which one is the default, and why: ``docs/evaluation.md``.
`train_classifier` and `predict` read any dataset whose items `item_tensors` understands:
``tio.Subject`` items (``image`` + ``label``), batch-like dicts, or ``(image, label)``
tuples, so a `ROIDataset`, a synthetic dataset or a plain list works.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tumoraug.config import Config, check
from tumoraug.data import subject_tensors
from tumoraug.device import autocast, resolve_device
from tumoraug.errors import DataError

NETWORKS = ("tumoraug", "resnet10", "resnet18", "densenet121")
"""Values of `ClassifierConfig.network`: tumoraug's own `ResNet3D`, then MONAI's networks."""
DEFAULT_NETWORK = "tumoraug"
"""The default of `tumoraug evaluate`, chosen by measurement (``docs/evaluation.md``)."""


@dataclasses.dataclass
class ClassifierConfig(Config):
    """The downstream classifier: which ``network``, and the shape of tumoraug's own.

    ``network="tumoraug"`` is `ResNet3D`: ``base_width`` channels in the first stage,
    doubled at each next one; ``blocks`` lists the basic blocks per stage (``(1, 1, 1, 1)``
    is the ResNet-10 layout: stem + 4 × 2 convolutions + linear head). The MONAI networks
    (see `build_classifier`) have their published widths: ``base_width``, ``blocks`` and
    ``dropout`` do not apply to them.
    """

    in_channels: int = 1
    base_width: int = 16
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    dropout: float = 0.2
    network: str = DEFAULT_NETWORK

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "resnet10": {},
        "tiny": {"base_width": 4, "blocks": (1, 1), "dropout": 0.0},
    }

    def validate(self) -> None:
        name = type(self).__name__
        check(self.network in NETWORKS, name, "network", f"one of {NETWORKS}", self.network)
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


class MonaiClassifier(nn.Module):
    """One of MONAI's 3D classification networks with one output: (B,C,D,H,W) -> (B,) logits.

    ``resnet10``/``resnet18``: `monai.networks.nets.resnet10`/``resnet18`` with a stride-2
    stem, as in MedicalNet (MONAI's default stem keeps full resolution, 4–6× the cost on
    small ROIs); ``densenet121``: `monai.networks.nets.DenseNet121` as published. Both keep
    MONAI's BatchNorm.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        try:
            from monai.networks import nets
        except ImportError as error:
            raise ImportError(
                f"classifier network {config.network!r} comes from MONAI: pip install "
                '"tumoraug[monai]" (or use network="tumoraug")'
            ) from error
        self.config = config
        if config.network == "densenet121":
            self.net: nn.Module = nets.DenseNet121(
                spatial_dims=3, in_channels=config.in_channels, out_channels=1
            )
        else:
            factory = {"resnet10": nets.resnet10, "resnet18": nets.resnet18}[config.network]
            self.net = factory(
                spatial_dims=3, n_input_channels=config.in_channels, num_classes=1,
                conv1_t_stride=2,
            )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.network == "densenet121" and min(x.shape[2:]) < 32:
            raise DataError(
                f"densenet121 needs ROIs of at least 32 voxels per axis (it halves them five "
                f"times), got {tuple(x.shape[2:])}: use resnet10, resnet18 or tumoraug"
            )
        return self.net(x).squeeze(1)


def build_classifier(config: ClassifierConfig) -> nn.Module:
    """The network ``config.network`` names: `ResNet3D` or a `MonaiClassifier`."""
    return ResNet3D(config) if config.network == "tumoraug" else MonaiClassifier(config)


def item_tensors(item: Any) -> tuple[torch.Tensor, int]:
    """``(image (C,D,H,W) float32, label int)`` of one item, via `subject_tensors`."""
    image, _, label = subject_tensors(item)
    if image.shape[0] != 1:
        raise DataError(f"expected one item, got a batch of {image.shape[0]}")
    return image[0], int(label[0])


class Examples(Dataset):
    """View of any dataset as ``(image, label)`` pairs, ready for the default collate."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return item_tensors(self.dataset[index])


def train_classifier(
    model: nn.Module,
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
    no validation split is taken from the small real training folds. A network with
    BatchNorm (the MONAI ones) skips a last batch of one ROI, which BatchNorm cannot train on.
    """
    device = resolve_device(device)
    model.to(device).train()
    rng = torch.Generator().manual_seed(seed)
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    drop_last = batch_norm and len(dataset) % batch_size == 1  # type: ignore[arg-type]
    loader = DataLoader(
        Examples(dataset), batch_size=batch_size, shuffle=True, generator=rng, drop_last=drop_last
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device).float()
            with autocast(device):
                logits = model(images)
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 8, device: str | torch.device = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, P(HGG))`` of every item of ``dataset``, in order."""
    device = resolve_device(device)
    model.to(device).eval()
    labels, probs = [], []
    for images, batch_labels in DataLoader(Examples(dataset), batch_size=batch_size):
        with autocast(device):
            logits = model(images.to(device))
        probs.append(torch.sigmoid(logits.float()).cpu())
        labels.append(batch_labels)
    return torch.cat(labels).numpy(), torch.cat(probs).numpy()
