"""Serving a bank as whole batches: `BankBatches` (a Dataset of batches) and `BankLoader`
(DataLoader workers send the stored int16 / float16 values, the main process dequantises).

A batch is read with one sorted fancy-index of the memory map and no per-item objects. In
DataLoader workers it is written into shared memory, so that the DataLoader passes it on
without another copy; what remains is moving those bytes to the main process, which is why
`BankLoader` moves the stored values (half the bytes of float32) and dequantises after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from tumoraug.augment.bank import SyntheticBank
from tumoraug.augment.storage import dequantize
from tumoraug.errors import ConfigError

__all__ = ["BankBatches", "BankLoader"]


class BankBatches(Dataset):
    """A bank as a Dataset of whole batches: item ``k`` is ``(images (B,C,S,S,S), labels (B,))``.

    The fastest way to train on a bank: one read and one dequantisation per batch, written
    straight into shared memory inside DataLoader workers, no per-item objects and no
    collate copy. Use it with ``DataLoader(BankBatches(bank, 8), batch_size=None,
    num_workers=2)``; ``set_epoch`` draws a new, reproducible order (``shuffle=True``).
    With ``raw=True`` the images are the stored values (int16 or float16, half the bytes of
    float32 to move out of a worker) for the main process to `dequantize`; `BankLoader` does
    both.
    """

    def __init__(
        self,
        bank: SyntheticBank | str | os.PathLike[str],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        raw: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.bank = bank if isinstance(bank, SyntheticBank) else SyntheticBank.open(bank)
        self.batch_size, self.shuffle, self.seed, self.drop_last, self.raw = (
            batch_size,
            shuffle,
            seed,
            drop_last,
            raw,
        )
        self._labels = torch.tensor(self.bank.labels, dtype=torch.long)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Order of epoch ``epoch`` (a permutation seeded by ``(seed, epoch)`` when shuffling).

        DataLoader workers hold a copy of the dataset: the new order reaches them when they
        start, i.e. every epoch unless ``persistent_workers=True`` (`BankLoader` orders in
        the main process and has no such limit).
        """
        n = len(self.bank)
        rng = np.random.default_rng([self.seed, int(epoch)])
        self.order = rng.permutation(n) if self.shuffle else np.arange(n)

    def __len__(self) -> int:
        n, b = len(self.bank), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def indices(self, index: int) -> np.ndarray:
        """Bank indices of batch ``index`` in the current order, sorted (one forward read);
        ``bank.seeds[i]`` for each gives the items' sample seeds."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        return np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])

    def read(self, ids: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of the bank items ``ids`` (float32, or stored values with
        ``raw``), in shared memory inside a DataLoader worker."""
        ids = np.asarray(ids, dtype=np.int64)
        n = len(self.bank)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise IndexError(f"{self.bank.path}: index out of range for {n} bank items")
        stored = self.bank.array[ids]
        in_worker = get_worker_info() is not None
        if self.raw:
            images = torch.from_numpy(stored)  # the fancy index made a fresh array
            if in_worker:
                images.share_memory_()  # one copy into shared memory, as the float path
        else:
            images = torch.empty(stored.shape, dtype=torch.float32)
            if in_worker:
                images.share_memory_()  # the DataLoader then passes it on without another copy
            dequantize(stored, out=images)
        return images, self._labels[torch.from_numpy(ids)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.read(self.indices(index))


class BankLoader:
    """Whole batches of a bank through DataLoader workers that send the stored values.

    Iterating gives ``(images (B,C,S,S,S) float32, labels (B,))``, bit for bit the batches of
    ``BankBatches(bank, batch_size, ...)`` in the same order. The workers read the stored
    int16 (or float16) items into shared memory, so half the bytes of float32 cross each
    process boundary, and the main process dequantises. Call ``set_epoch`` before each epoch
    for a new order; the order is drawn in the main process, so it also holds with
    ``persistent_workers=True``. Other keyword arguments go to the ``DataLoader``
    (``loader``, which yields the stored batches).
    """

    def __init__(
        self,
        bank: SyntheticBank | str | os.PathLike[str],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_workers: int = 2,
        **loader_kwargs: Any,
    ) -> None:
        self.batches = BankBatches(
            bank, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, raw=True
        )
        self.loader = DataLoader(
            _StoredBatches(self.batches),
            batch_size=None,
            sampler=_BatchOrder(self.batches),
            num_workers=num_workers,
            **loader_kwargs,
        )

    def set_epoch(self, epoch: int) -> None:
        """Order of epoch ``epoch``, as `BankBatches.set_epoch`."""
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for stored, labels in self.loader:
            yield dequantize(stored), labels


class _StoredBatches(Dataset):
    """The reader behind `BankLoader`: bank indices -> (stored images, labels)."""

    def __init__(self, batches: BankBatches) -> None:
        self.batches = batches

    def __getitem__(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batches.read(ids)


class _BatchOrder(Sampler):
    """The bank indices of each batch of the current epoch, drawn in the main process."""

    def __init__(self, batches: BankBatches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.batches.indices(k) for k in range(len(self.batches)))
