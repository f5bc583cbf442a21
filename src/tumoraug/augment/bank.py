"""Synthetic banks: ROIs generated once into one memory-mapped file, served without a model.

A bank is two files: the data file (``bank.npy``, a standard ``.npy`` array of shape
``(N, C, S, S, S)``, int16 or float16) and its manifest (``bank.json``: labels, per-item
seeds, dtype, scale, model and generation settings). The manifest is the source of truth
for the number of items; the data file may hold more (an append that was interrupted).

int16 storage serves values within ``0.5 / 32767`` of the generated ones, float16 storage
within float16 precision (``2**-11`` in [-1, 1]); see `tumoraug.augment.storage`.

Item ``i`` of a bank built with ``seed`` has the sample seed ``item_seeds(seed, [i])`` and the
label ``class_labels([i], ...)`` (unless labels are given), exactly as item ``i`` of a
`SyntheticTumorDataset` with the same seed: shards built over index ranges and merged equal a
bank built in one go, bit for bit.

A bank is a `tumoraug.augment.Source`: ``volumes(labels, seeds)`` serves the stored item of
each (label, seed) pair, or, for a pair it does not hold, an item of that class picked with
a generator seeded by the seed; so datasets and transforms take a bank where they take a
generator.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumoraug.augment.source import Source, as_source, check_count, item_seeds, resolve_labels
from tumoraug.augment.storage import (
    DTYPES,
    HEADER_BYTES,
    INT16_SCALE,
    check_target,
    dequantize,
    make_manifest,
    manifest_path,
    npy_header,
    quantize,
    read_manifest,
    read_npy_header,
)
from tumoraug.checkpoint import atomic_path, atomic_write_json
from tumoraug.config import channel_names
from tumoraug.errors import ConfigError, DataError
from tumoraug.generator import TumorGenerator
from tumoraug.generators import Settings
from tumoraug.labels import LabelLike
from tumoraug.progress import progress_bar

__all__ = ["INT16_SCALE", "SyntheticBank", "dequantize", "quantize"]

_COPY_ITEMS = 64


class SyntheticBank:
    """A read-only view of a bank (data file + manifest); also builds, appends and merges.

    Open with `SyntheticBank.open(path)`; `read(indices)` returns float32 volumes by index,
    `volumes(labels, seeds)` by (label, seed) as every `Source` does. The file is
    memory-mapped lazily in each process, so that a bank pickles cheaply to DataLoader
    workers.
    """

    device = "cpu"
    """Where a bank's volumes are computed: it only reads and dequantises."""

    def __init__(self, path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._array: np.ndarray | None = None
        self._index: dict[tuple[int, int], int] | None = None

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SyntheticBank:
        """Open and check a bank: `DataError` naming the file when missing, corrupt or truncated."""
        path = Path(path).expanduser()
        return cls(path, read_manifest(path))

    @property
    def array(self) -> np.ndarray:
        """The stored items, memory-mapped (``(N, C, S, S, S)`` int16 or float16)."""
        if self._array is None:
            try:
                full = np.load(self.path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DataError(f"{self.path}: cannot map synthetic bank ({exc})") from None
            self._array = full[: len(self)]
        return self._array

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def labels(self) -> list[int]:
        """Class label of every item."""
        return list(self.manifest["labels"])

    @property
    def seeds(self) -> list[int]:
        """Sample seed of every item."""
        return list(self.manifest["seeds"])

    @property
    def seed(self) -> int | None:
        """Base seed of the items (``None`` after merging shards of different seeds)."""
        return self.manifest.get("seed")

    @property
    def dtype(self) -> str:
        """Storage type: ``"int16"`` or ``"float16"``."""
        return str(self.manifest["dtype"])

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape ``(C, S, S, S)`` of one item."""
        return tuple(self.manifest["item_shape"])

    @property
    def modalities(self) -> tuple[str, ...]:
        """Names of the item channels: a bank does not record them, so the defaults of
        `tumoraug.config.channel_names` (``ch0, ch1, ...`` for several channels)."""
        return channel_names((), self.item_shape[0])

    @property
    def model_id(self) -> str:
        """The model the items were generated with (folder or Hub id)."""
        return str(self.manifest["model"])

    @property
    def settings(self) -> dict[str, Any]:
        """The sampling settings the items were generated with (fixed when it was built)."""
        return dict(self.manifest["settings"])

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Float32 volumes ``(len(indices), C, S, S, S)`` in [-1, 1]."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"{self.path}: index out of range for {len(self)} bank items")
        return dequantize(self.array[idx])

    def find(self, label: int, seed: int) -> int:
        """Index of the item of class ``label`` and sample ``seed``.

        The stored item when the bank holds that pair; otherwise one of the items of that
        class, picked with a generator seeded by ``seed`` (the same pick every time).
        """
        if self._index is None:
            pairs = zip(self.manifest["labels"], self.manifest["seeds"], strict=True)
            self._index = {}
            for i, pair in enumerate(pairs):
                self._index.setdefault((int(pair[0]), int(pair[1])), i)
        label, seed = int(label), int(seed)
        if (label, seed) in self._index:
            return self._index[(label, seed)]
        candidates = [i for i, v in enumerate(self.manifest["labels"]) if v == label]
        if not candidates:
            raise DataError(f"{self.path}: bank holds no item of class {label}")
        return candidates[int(np.random.default_rng(seed).integers(len(candidates)))]

    def volumes(self, labels: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
        """The items for per-sample ``labels`` and ``seeds`` (see `find`), float32 on the CPU."""
        if len(labels) != len(seeds):
            raise ConfigError(f"got {len(seeds)} seeds for {len(labels)} samples")
        pairs = zip(labels, seeds, strict=True)
        return self.read([self.find(label, seed) for label, seed in pairs])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.read([index])[0]

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "manifest": self.manifest, "_array": None, "_index": None}

    def __deepcopy__(self, memo: dict[int, Any]) -> SyntheticBank:
        return self

    def __repr__(self) -> str:
        return f"SyntheticBank({str(self.path)!r}, n={len(self)}, dtype={self.dtype})"

    # ------------------------------------------------------------------ writing
    @classmethod
    def build(
        cls,
        generator: TumorGenerator | Source | str | os.PathLike[str],
        n: int,
        labels: LabelLike | Sequence[LabelLike] | None,
        path: str | os.PathLike[str],
        seed: int = 0,
        *,
        dtype: str = "int16",
        batch_size: int = 8,
        class_ratio: float = 0.5,
        sampling: Settings = None,
        start: int = 0,
        workers: int = 1,
        device: str = "auto",
        overwrite: bool = False,
        on_batch: Callable[[int], None] | None = None,
        progress: bool = False,
    ) -> SyntheticBank:
        """Generate ``n`` ROIs into a new bank at ``path`` (``bank.npy`` + ``bank.json``).

        ``labels``: one grade for all, a sequence of ``n``, or ``None`` for ``class_ratio``
        HGG. ``sampling``: the decoding settings (`SamplingConfig` defaults when None),
        recorded in the manifest. ``start``: index of the first item (shards of a larger
        bank). ``workers > 1`` builds contiguous shards in that many spawned processes, then
        merges them (the generator must be picklable, e.g. loaded with ``from_pretrained``).
        ``on_batch`` is called with the number of items written after each batch;
        ``progress`` shows a progress bar on stderr.
        """
        path = Path(path).expanduser()
        if DTYPES.get(dtype) is None:
            raise ConfigError(f"bank dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        for name, value, low in (("n", n, 1), ("batch_size", batch_size, 1),
                                 ("workers", workers, 1), ("start", start, 0)):  # fmt: skip
            check_count("SyntheticBank.build", name, value, low)
        check_target(path, overwrite)
        label_list = resolve_labels(labels, n, class_ratio, seed, start)
        source = as_source(generator, sampling, device, batch_size=batch_size)
        with progress_bar("building bank", n, enabled=progress) as bar:

            def advance(k: int) -> None:
                bar.advance(k)
                if on_batch is not None:
                    on_batch(k)

            if workers > 1 and n > 1:
                return cls._build_parallel(
                    source, label_list, path, seed, dtype, batch_size, start, workers, advance
                )
            seeds = item_seeds(seed, range(start, start + n))
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                handle.write(bytes(HEADER_BYTES))  # the header follows once the shape is known
                item_shape = _write_items(
                    handle, source, label_list, seeds, dtype, batch_size, None, advance
                )
                handle.seek(0)
                handle.write(npy_header(DTYPES[dtype], (n, *item_shape)))
                handle.flush()
                os.fsync(handle.fileno())
        manifest = make_manifest(
            path, n, item_shape, dtype, seed, start, label_list, seeds, source.model_id,
            source.settings,
        )  # fmt: skip
        atomic_write_json(manifest_path(path), manifest)
        return cls(path, manifest)

    @classmethod
    def _build_parallel(
        cls,
        source: Source,
        labels: list[int],
        path: Path,
        seed: int,
        dtype: str,
        batch_size: int,
        start: int,
        workers: int,
        on_batch: Callable[[int], None],
    ) -> SyntheticBank:
        workers = min(workers, len(labels))
        bounds = [round(len(labels) * k / workers) for k in range(workers + 1)]
        ctx = multiprocessing.get_context("spawn")
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
            shard_paths = [Path(tmp) / f"shard{k}.npy" for k in range(workers)]
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                shards = zip(shard_paths, bounds[:-1], bounds[1:], strict=True)
                args = [
                    (labels[lo:hi], shard, seed, dtype, batch_size, start + lo)
                    for shard, lo, hi in shards
                ]
                jobs = [pool.submit(_build_shard, source, *job) for job in args]
                for job in concurrent.futures.as_completed(jobs):
                    on_batch(job.result())
            return cls.merge(shard_paths, path, overwrite=True)

    @classmethod
    def merge(
        cls,
        shards: Sequence[str | os.PathLike[str] | SyntheticBank],
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
    ) -> SyntheticBank:
        """Concatenate banks built with the same model, settings, dtype and ROI shape.

        Shards that cover consecutive index ranges of one seed merge into a bank equal to
        one built in one go (and that can be appended to); other shards merge too, with
        ``seed`` recorded as ``None``.
        """
        path = Path(path).expanduser()
        check_target(path, overwrite)
        banks = [s if isinstance(s, SyntheticBank) else cls.open(s) for s in shards]
        if not banks:
            raise ConfigError("merge needs at least one shard")
        first = banks[0].manifest
        for bank in banks[1:]:
            for key in ("dtype", "item_shape", "model", "settings"):
                if bank.manifest[key] != first[key]:
                    raise DataError(
                        f"{bank.path}: cannot merge, {key} is {bank.manifest[key]!r} but "
                        f"{banks[0].path} has {first[key]!r}"
                    )
        contiguous = all(
            b.seed == first["seed"] and b.manifest["start"] == a.manifest["start"] + len(a)
            for a, b in itertools.pairwise(banks)
        )
        count = sum(len(b) for b in banks)
        item_shape = tuple(first["item_shape"])
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            handle.write(npy_header(DTYPES[first["dtype"]], (count, *item_shape)))
            for bank in banks:
                for lo in range(0, len(bank), _COPY_ITEMS):
                    handle.write(np.ascontiguousarray(bank.array[lo : lo + _COPY_ITEMS]).tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        manifest = make_manifest(
            path, count, item_shape, first["dtype"], first["seed"] if contiguous else None,
            first["start"] if contiguous else 0, [v for b in banks for v in b.labels],
            [v for b in banks for v in b.seeds], first["model"], first["settings"],
        )  # fmt: skip
        atomic_write_json(manifest_path(path), manifest)
        return cls(path, manifest)

    def append(
        self,
        generator: TumorGenerator | str | os.PathLike[str],
        n: int,
        labels: LabelLike | Sequence[LabelLike] | None = None,
        *,
        class_ratio: float = 0.5,
        batch_size: int = 8,
        device: str = "auto",
        on_batch: Callable[[int], None] | None = None,
    ) -> SyntheticBank:
        """Add ``n`` items, continuing the bank's seed and indices with its sampling settings.

        Appending ``m`` items to a bank of ``k`` equals building ``k + m`` items in one go.
        Crash-safe ordering: the items are written after the current data, then the header
        is rewritten in place (same length), then the manifest is replaced atomically; an
        interrupted append leaves the bank as it was (extra bytes are ignored).
        """
        if self.seed is None:
            raise DataError(f"{self.path}: merged from unrelated shards; cannot append")
        check_count("SyntheticBank.append", "n", n)
        check_count("SyntheticBank.append", "batch_size", batch_size)
        m = self.manifest
        begin = m["start"] + len(self)
        label_list = resolve_labels(labels, n, class_ratio, self.seed, begin)
        seeds = item_seeds(self.seed, range(begin, begin + n))
        source = as_source(generator, dict(m["settings"]), device, batch_size=batch_size)
        item_shape, dtype = self.item_shape, DTYPES[self.dtype]
        _, _, offset = read_npy_header(self.path)
        self._array = self._index = None
        with open(self.path, "r+b") as handle:
            handle.seek(offset + len(self) * int(np.prod(item_shape)) * dtype.itemsize)
            _write_items(
                handle, source, label_list, seeds, self.dtype, batch_size, item_shape, on_batch
            )
            handle.flush()
            os.fsync(handle.fileno())
            handle.seek(0)
            handle.write(npy_header(dtype, (len(self) + n, *item_shape)))
            handle.flush()
            os.fsync(handle.fileno())
        manifest = dict(m, count=len(self) + n)
        manifest["labels"] = [*m["labels"], *label_list]
        manifest["seeds"] = [*m["seeds"], *seeds]
        atomic_write_json(manifest_path(self.path), manifest)
        self.manifest = manifest
        return self


def _write_items(
    handle: Any,
    source: Source,
    labels: list[int],
    seeds: list[int],
    dtype: str,
    batch_size: int,
    item_shape: tuple[int, ...] | None,
    on_batch: Callable[[int], None] | None,
) -> tuple[int, ...]:
    """Generate and write the items ``batch_size`` at a time; returns their shape.

    ``item_shape``: the shape the items must have (None: the first batch sets it).
    """
    for lo in range(0, len(labels), batch_size):
        hi = min(lo + batch_size, len(labels))
        volumes = source.volumes(labels[lo:hi], seeds[lo:hi])
        if item_shape is None:
            item_shape = tuple(volumes.shape[1:])
        if tuple(volumes.shape[1:]) != item_shape:
            raise DataError(
                f"bank holds ROIs of shape {item_shape}, {source.model_id} makes "
                f"{tuple(volumes.shape[1:])}"
            )
        handle.write(quantize(volumes, dtype).tobytes())
        if on_batch is not None:
            on_batch(hi - lo)
    assert item_shape is not None
    return item_shape


def _build_shard(
    source: Source,
    labels: list[int],
    path: Path,
    seed: int,
    dtype: str,
    batch_size: int,
    start: int,
) -> int:
    torch.set_num_threads(1)
    SyntheticBank.build(
        source, len(labels), labels, path, seed, dtype=dtype, batch_size=batch_size, start=start
    )
    return len(labels)
