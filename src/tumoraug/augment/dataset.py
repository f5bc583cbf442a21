"""Synthetic ROIs as a torch Dataset of ``tio.Subject`` (or plain dict) items, deterministic.

`SyntheticTumorDataset` serves the volumes of any `Source`: a `TumorGenerator` (wrapped in a
`GeneratorSource`) or a `SyntheticBank`, through the one call ``source.volumes(labels,
seeds)``. Item ``i`` is a pure function of ``(seed, i)`` and the sampling settings: its class
label and its sample seed are derived from the index alone, and every volume depends only on
its own (label, seed), so that the same index gives the same ROI in any worker, process or
batch composition.

With ``output="dict"`` items are MONAI-style dicts of the same values (`make_item_dict`), for
``monai.data.DataLoader`` / ``CacheDataset`` pipelines; nothing here imports MONAI.
"""

from __future__ import annotations

import collections
import os
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchio as tio
from torch.utils.data import Dataset

from tumoraug.augment.bank import SyntheticBank
from tumoraug.augment.source import Source, as_source, check_count, item_seeds, resolve_labels
from tumoraug.errors import ConfigError
from tumoraug.generator import TumorGenerator
from tumoraug.generators import Settings
from tumoraug.labels import GRADES, LabelLike, to_grade

__all__ = ["OUTPUTS", "SyntheticTumorDataset", "make_item_dict", "make_subject"]

OUTPUTS = ("subject", "dict")
"""Item kinds of `SyntheticTumorDataset`: ``tio.Subject`` items or plain dicts."""


def make_item_dict(volume: torch.Tensor, label: int, seed: int, index: int) -> dict[str, Any]:
    """A synthetic item as a dict: ``image`` (the tensor), ``label``, ``grade``, ``synthetic``,
    ``seed``, ``subject_id``, the entries of `make_subject` (MONAI's dictionary format)."""
    return {
        "image": volume,
        "label": int(label),
        "grade": to_grade(label),
        "synthetic": True,
        "seed": int(seed),
        "subject_id": f"synthetic-{index:06d}",
    }


def make_subject(volume: torch.Tensor, label: int, seed: int, index: int) -> tio.Subject:
    """A synthetic item: ``image`` (1 mm affine), ``label``, ``grade``, ``synthetic``, ``seed``."""
    entries = make_item_dict(volume, label, seed, index)
    image = tio.ScalarImage(tensor=entries.pop("image"), affine=np.eye(4))
    return tio.Subject(image=image, **entries)


class SyntheticTumorDataset(Dataset):
    """A torch Dataset of synthetic ROIs as ``tio.Subject`` items, deterministic per index.

    Each item holds ``image`` (``tio.ScalarImage`` ``(C,S,S,S)`` in [-1, 1], 1 mm affine),
    ``label`` (0 LGG / 1 HGG), ``grade``, ``synthetic=True``, ``seed`` and ``subject_id``;
    with ``output="dict"`` the same values in a plain dict whose ``image`` is the float32
    tensor (`make_item_dict`), as MONAI's dictionary transforms and collation expect.

    Args:
        generator: a `TumorGenerator`, a model folder / Hub id loaded lazily in each process
            (the way to go with DataLoader workers), or any `Source` (e.g. a `SyntheticBank`).
        length: number of items (optional when ``labels`` is a sequence).
        labels: explicit labels (a sequence), one grade for all items, or ``None`` to use
            ``class_ratio``.
        class_ratio: fraction of HGG items when ``labels`` is ``None``.
        seed: dataset seed; item ``i`` uses the sample seed ``item_seeds(seed, [i])``.
        transform: applied to each item (a TorchIO transform, a MONAI ``Compose`` of
            dictionary transforms with ``output="dict"``, or any callable).
        sampling: the decoding settings (`SamplingConfig` defaults when None); a Source
            brings its own.
        block_size: ``dataset[i]`` generates the ``block_size`` consecutive items around ``i``
            at once and keeps them (``cache_blocks`` blocks), which pays off for sequential
            access; DataLoader batches are generated together through ``__getitems__``.
            Use ``block_size=1`` for shuffled item-by-item access on CPU.
        device: device of a generator loaded from a path.
        output: ``"subject"`` (default) for ``tio.Subject`` items, ``"dict"`` for dicts.
    """

    def __init__(
        self,
        generator: TumorGenerator | Source | str | os.PathLike[str],
        length: int | None = None,
        *,
        labels: LabelLike | Sequence[LabelLike] | None = None,
        class_ratio: float = 0.5,
        seed: int = 0,
        transform: Callable[[Any], Any] | None = None,
        sampling: Settings = None,
        block_size: int = 8,
        cache_blocks: int = 2,
        device: str = "auto",
        output: str = "subject",
    ) -> None:
        owner = type(self).__name__
        if output not in OUTPUTS:
            raise ConfigError(f"{owner}: output must be one of {OUTPUTS}, got {output!r}")
        self.output = output
        if length is not None:
            length = check_count(owner, "length", length, 0)
        self.block_size = check_count(owner, "block_size", block_size)
        self.cache_blocks = check_count(owner, "cache_blocks", cache_blocks)
        self.source: Source = as_source(generator, sampling, device, batch_size=block_size)
        self.labels: list[int] = resolve_labels(labels, length, class_ratio, seed)
        self.seed = seed
        self._seeds: list[int] | None = None  # derived on demand: cheap per item
        self.transform = transform
        self._cache: collections.OrderedDict[int, torch.Tensor] = collections.OrderedDict()

    @classmethod
    def from_bank(
        cls,
        bank: SyntheticBank | str | os.PathLike[str],
        *,
        transform: Callable[[Any], Any] | None = None,
        output: str = "subject",
    ) -> SyntheticTumorDataset:
        """Serve the items of a `SyntheticBank` (or bank file) in order, without any model."""
        bank = bank if isinstance(bank, SyntheticBank) else SyntheticBank.open(bank)
        seed = bank.seed if bank.seed is not None else 0
        dataset = cls(
            bank, labels=bank.labels, seed=seed, transform=transform, block_size=1, output=output
        )
        dataset._seeds = bank.seeds
        return dataset

    def __len__(self) -> int:
        return len(self.labels)

    def set_transform(self, transform: Callable[[Any], Any] | None) -> None:
        """Replace the transform (as `tio.SubjectsDataset.set_transform`)."""
        self.transform = transform

    @property
    def seeds(self) -> list[int]:
        """Sample seed of every item."""
        if self._seeds is None:
            self._seeds = item_seeds(self.seed, range(len(self)))
        return self._seeds

    def item_seed(self, index: int) -> int:
        """Sample seed of item ``index``."""
        if self._seeds is not None:
            return self._seeds[index]
        return item_seeds(self.seed, [index])[0]

    def dry_iter(self) -> list[types.SimpleNamespace]:
        """Per-item metadata (label, grade, seed) without generating anything.

        `tio.Queue` calls this to count patches per epoch.
        """
        return [
            types.SimpleNamespace(label=label, grade=GRADES[label], seed=seed)
            for label, seed in zip(self.labels, self.seeds, strict=True)
        ]

    def _check_index(self, index: int) -> int:
        """``index`` as a position in ``0 .. len-1`` (negative counts from the end)."""
        position = int(index) + len(self) if int(index) < 0 else int(index)
        if not 0 <= position < len(self):
            raise IndexError(f"index {int(index)} out of range for {len(self)} synthetic items")
        return position

    def volumes(self, indices: Sequence[int]) -> torch.Tensor:
        """Raw volumes ``(N, C, S, S, S)`` of ``indices`` (no transform), made together."""
        indices = [self._check_index(i) for i in indices]
        return self.source.volumes(
            [self.labels[i] for i in indices], [self.item_seed(i) for i in indices]
        )

    def _volume(self, index: int) -> torch.Tensor:
        block = index // self.block_size
        if block not in self._cache:
            start = block * self.block_size
            stop = min(start + self.block_size, len(self))
            self._cache[block] = self.volumes(range(start, stop))
            while len(self._cache) > self.cache_blocks:
                self._cache.popitem(last=False)
        self._cache.move_to_end(block)
        return self._cache[block][index - block * self.block_size]

    def _item(self, index: int, volume: torch.Tensor) -> Any:
        make = make_subject if self.output == "subject" else make_item_dict
        item = make(volume, self.labels[index], self.item_seed(index), index)
        return self.transform(item) if self.transform is not None else item

    def __getitem__(self, index: int) -> Any:
        index = self._check_index(index)
        # a block stays cached: hand out a copy, so that changes to an item do not leak
        return self._item(index, self._volume(index).clone())

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """A DataLoader batch: the items not cached are made in one call."""
        indices = [self._check_index(i) for i in indices]
        volumes = {
            i: self._cache[i // self.block_size][i % self.block_size].clone()
            for i in indices
            if i // self.block_size in self._cache
        }
        missing = [i for i in indices if i not in volumes]
        if missing:
            volumes.update(zip(missing, self.volumes(missing), strict=True))
        return [self._item(i, volumes[i]) for i in indices]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = collections.OrderedDict()
        return state

    def __repr__(self) -> str:
        counts = [self.labels.count(c) for c in range(len(GRADES))]
        per_class = ", ".join(f"{g}={n}" for g, n in zip(GRADES, counts, strict=True))
        return (
            f"SyntheticTumorDataset(len={len(self)}, {per_class}, seed={self.seed}, "
            f"{self.source!r})"
        )
