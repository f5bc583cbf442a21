"""Mixing real and synthetic ROIs on the fly, and the synthetic-then-real schedule.

`mix` wraps a real dataset and a synthetic one into one Dataset that yields both at a fixed
ratio per epoch and returns the kind of item the real dataset yields (``tio.Subject`` or
``(tensor, label)``), so that an existing training loop takes it unchanged.
`SyntheticThenReal` is the epoch schedule for pre-training on synthetic data and
fine-tuning on real data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torchio as tio
from torch.utils.data import Dataset

from tumoraug.errors import ConfigError, DataError

__all__ = ["MixedDataset", "SyntheticThenReal", "mix"]


def _first_scalar_image(subject: tio.Subject) -> tuple[str, tio.Image]:
    for name, image in subject.get_images_dict(intensity_only=True).items():
        return name, image
    raise DataError(f"subject has no intensity image (keys: {', '.join(subject.keys())})")


class MixedDataset(Dataset):
    """Real and synthetic items at a fixed ratio per epoch; built by `mix`."""

    def __init__(
        self,
        real: Dataset,
        synthetic: Dataset,
        ratio: float = 0.5,
        *,
        length: int | None = None,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(
                f"mix ratio (fraction of synthetic items) must be in [0, 1], got {ratio}"
            )
        self.real, self.synthetic = real, synthetic
        self.n_real_source, self.n_syn_source = len(real), len(synthetic)  # type: ignore[arg-type]
        if length is None:
            if ratio >= 1.0:
                length = self.n_syn_source
            else:
                length = self.n_real_source + round(self.n_real_source * ratio / (1.0 - ratio))
        if length < 0:
            raise ConfigError(f"length must be >= 0, got {length}")
        self.ratio, self.length, self.seed = ratio, int(length), seed
        self.n_synthetic = round(self.length * ratio)
        self.n_real = self.length - self.n_synthetic
        if (self.n_real or ratio < 1.0) and not self.n_real_source:
            raise DataError("mix: the real dataset is empty but the ratio asks for real items")
        if (self.n_synthetic or ratio > 0.0) and not self.n_syn_source:
            raise DataError("mix: the synthetic dataset is empty but the ratio asks for some")
        self._template: Any = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw the order and the items of epoch ``epoch`` (reproducible from ``seed``).

        Call it before creating the DataLoader iterator of the epoch; workers started with
        ``persistent_workers=True`` keep the epoch they were started with.
        """
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        kinds = np.zeros(self.length, dtype=np.int8)
        kinds[rng.permutation(self.length)[: self.n_synthetic]] = 1
        source_index = np.empty(self.length, dtype=np.int64)
        source_index[kinds == 0] = _cycled_permutation(rng, self.n_real_source, self.n_real)
        source_index[kinds == 1] = _cycled_permutation(rng, self.n_syn_source, self.n_synthetic)
        self.kinds, self.source_index = kinds, source_index

    def __len__(self) -> int:
        return self.length

    def is_synthetic(self, index: int) -> bool:
        """Whether item ``index`` of the current epoch is synthetic."""
        return bool(self.kinds[index])

    @property
    def template(self) -> Any:
        """The first real item, whose kind and keys synthetic items are made to match."""
        if self._template is None:
            if not self.n_real_source:
                return None
            self._template = self.real[0]
        return self._template

    def _conform(self, item: Any) -> Any:
        template = self.template
        if template is None:
            return item
        if isinstance(template, tio.Subject):
            return _conform_subject(item, template)
        if isinstance(template, tuple | list):
            return _conform_pair(item, template)
        raise DataError(
            "mix: the real dataset must yield tio.Subject items or (tensor, label) pairs, "
            f"got {type(template).__name__}"
        )

    def _real(self, item: Any) -> Any:
        if isinstance(item, tio.Subject) and "synthetic" not in item:
            item["synthetic"] = False
            item.update_attributes()
        return item

    def __getitem__(self, index: int) -> Any:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} mixed items")
        kind, j = int(self.kinds[index]), int(self.source_index[index])
        if kind == 0:
            return self._real(self.real[j])
        return self._conform(self.synthetic[j])

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """A DataLoader batch: synthetic items are fetched in one call when possible."""
        out: dict[int, Any] = {}
        syn = [i for i in indices if self.kinds[i] == 1]
        if syn and hasattr(self.synthetic, "__getitems__"):
            items = self.synthetic.__getitems__([int(self.source_index[i]) for i in syn])
            out.update((i, self._conform(item)) for i, item in zip(syn, items, strict=True))
        return [out[i] if i in out else self[i] for i in indices]

    def __repr__(self) -> str:
        return (
            f"MixedDataset(len={self.length}, real={self.n_real}, synthetic={self.n_synthetic}, "
            f"ratio={self.ratio}, seed={self.seed}, epoch={self.epoch})"
        )


def _cycled_permutation(rng: np.random.Generator, n_source: int, count: int) -> np.ndarray:
    """``count`` indices of ``range(n_source)``: whole permutations, then part of one more."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    rounds = math.ceil(count / n_source)
    return np.concatenate([rng.permutation(n_source) for _ in range(rounds)])[:count]


def _conform_pair(item: Any, template: Sequence[Any]) -> tuple[Any, Any]:
    """A synthetic item as an ``(image, label)`` pair typed like the real pair."""
    if len(template) != 2:
        raise DataError(
            f"mix: real items are tuples of length {len(template)}; only (tensor, label) "
            "pairs are supported"
        )
    if isinstance(item, tio.Subject):
        image, label = _first_scalar_image(item)[1].data, item["label"]
    else:
        image, label = item
    real_image, real_label = template
    if isinstance(real_image, torch.Tensor) and tuple(image.shape) != tuple(real_image.shape):
        raise DataError(
            f"mix: synthetic ROIs have shape {tuple(image.shape)} but real ones "
            f"{tuple(real_image.shape)}; resize one of them (e.g. tio.Resize) to match"
        )
    if isinstance(real_label, torch.Tensor):
        label = torch.as_tensor(int(label), dtype=real_label.dtype)
    else:
        label = int(label)
    return image, label


def _conform_subject(item: tio.Subject, template: tio.Subject) -> tio.Subject:
    """A synthetic Subject with the keys of the real ones, plus ``synthetic=True``.

    The synthetic image takes the name of the real intensity image; label maps the real
    items have (e.g. ``seg``) are filled with zeros (synthetic ROIs come without a
    segmentation: mask them with the ``synthetic`` flag); string entries get the synthetic
    subject id; other entries the synthetic item lacks are an error.
    """
    if not isinstance(item, tio.Subject):
        raise DataError(f"mix: real items are tio.Subject, synthetic ones {type(item).__name__}")
    real_name, real_image = _first_scalar_image(template)
    _, image = _first_scalar_image(item)
    if image.spatial_shape != real_image.spatial_shape or image.shape[0] != real_image.shape[0]:
        raise DataError(
            f"mix: synthetic ROIs have shape {tuple(image.shape)} but real ones "
            f"{tuple(real_image.shape)}; resize one of them (e.g. tio.Resize) to match"
        )
    out: dict[str, Any] = {}
    for key, value in template.items():
        if key == real_name:
            out[key] = image
        elif key in item:
            ours = item[key]
            if isinstance(value, torch.Tensor) and not isinstance(ours, torch.Tensor):
                ours = torch.as_tensor(ours, dtype=value.dtype)
            out[key] = ours
        elif isinstance(value, tio.LabelMap):
            zeros = torch.zeros((1, *image.spatial_shape), dtype=value.data.dtype)
            out[key] = tio.LabelMap(tensor=zeros, affine=image.affine)
        elif isinstance(value, str):
            out[key] = str(item.get("subject_id", "synthetic"))
        else:
            raise DataError(
                f"mix: real items have a {key!r} entry ({type(value).__name__}) that synthetic "
                "items lack; add it with a transform on the synthetic dataset"
            )
    out["synthetic"] = True
    subject = tio.Subject(out)
    subject.applied_transforms = list(getattr(item, "applied_transforms", []))
    return subject


def mix(
    real: Dataset,
    synthetic: Dataset,
    ratio: float = 0.5,
    *,
    length: int | None = None,
    seed: int = 0,
) -> MixedDataset:
    """Wrap ``real`` and ``synthetic`` in one Dataset with a fraction ``ratio`` of synthetic items.

    Every epoch holds exactly ``round(length * ratio)`` synthetic items at random positions;
    real items are drawn without replacement (each real item once per epoch by default),
    synthetic ones too, cycling when an epoch needs more than the dataset holds. The default
    ``length`` keeps every real item once: ``len(real) / (1 - ratio)``. ``set_epoch(e)``
    draws a new, reproducible epoch. Items come back as the real dataset yields them:
    ``tio.Subject`` (with ``synthetic`` set to False/True and synthetic items given the real
    items' keys) or ``(tensor, label)`` pairs.
    """
    return MixedDataset(real, synthetic, ratio, length=length, seed=seed)


class SyntheticThenReal:
    """Epoch schedule for pre-training on synthetic data, then fine-tuning on real data.

    Iterating yields ``(epoch, phase, dataset)`` with ``phase`` ``"synthetic"`` for the
    first ``synthetic_epochs`` epochs and ``"real"`` afterwards. Both phases go through
    `mix`, so that items have the real dataset's kind throughout: the synthetic phase is
    ``mix(real, synthetic, ratio=1.0)``, the real phase ``mix(real, synthetic,
    ratio=finetune_ratio)`` (0 by default: real items only). Each epoch's dataset has had
    ``set_epoch`` called.
    """

    def __init__(
        self,
        synthetic: Dataset,
        real: Dataset,
        *,
        synthetic_epochs: int,
        real_epochs: int,
        finetune_ratio: float = 0.0,
        seed: int = 0,
    ) -> None:
        if synthetic_epochs < 0 or real_epochs < 0:
            raise ConfigError("synthetic_epochs and real_epochs must be >= 0")
        self.synthetic_epochs, self.real_epochs = synthetic_epochs, real_epochs
        self.pretrain = mix(real, synthetic, ratio=1.0, seed=seed)
        self.finetune = mix(real, synthetic, ratio=finetune_ratio, seed=seed + 1)

    def __len__(self) -> int:
        return self.synthetic_epochs + self.real_epochs

    def dataset(self, epoch: int) -> MixedDataset:
        """The dataset of ``epoch`` (0-based over both phases), its epoch already set."""
        if epoch < self.synthetic_epochs:
            self.pretrain.set_epoch(epoch)
            return self.pretrain
        self.finetune.set_epoch(epoch - self.synthetic_epochs)
        return self.finetune

    def __iter__(self) -> Iterator[tuple[int, str, MixedDataset]]:
        for epoch in range(len(self)):
            phase = "synthetic" if epoch < self.synthetic_epochs else "real"
            yield epoch, phase, self.dataset(epoch)
