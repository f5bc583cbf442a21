"""Synthetic banks: ROIs generated once into one memory-mapped file, served without a model.

A bank is two files: the data file (``bank.npy``, a standard ``.npy`` array of shape
``(N, C, S, S, S)``, int16 or float16) and its manifest (``bank.json``: labels, per-item
seeds, dtype, scale, model and generation settings). The manifest is the source of truth
for the number of items; the data file may hold more (an append that was interrupted).

int16 storage quantises ``x`` in [-1, 1] as ``q = round(x * 32767)`` and serves
``q / 32767`` in float32: the served value is within ``0.5 / 32767`` of the generated one,
and quantising a served value again gives back ``q`` exactly, so that re-storing what a bank
serves is bit-exact. float16 storage keeps ``x`` to float16 precision (``2**-11`` in [-1, 1]).

Item ``i`` of a bank built with ``seed`` has the sample seed ``item_seeds(seed, [i])`` and the
label ``class_labels([i], ...)`` (unless labels are given), exactly as item ``i`` of a
`SyntheticTumorDataset` with the same seed: shards built over index ranges and merged equal a
bank built in one go, bit for bit.
"""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import itertools
import json
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from tumoraug import __version__
from tumoraug.checkpoint import atomic_path, atomic_write_json
from tumoraug.dataset import GeneratorSource, _resolve_labels, item_seeds
from tumoraug.errors import ConfigError, DataError
from tumoraug.generator import DEFAULT_GUIDANCE, DEFAULT_STEPS
from tumoraug.labels import LabelLike

if TYPE_CHECKING:
    from tumoraug.generator import TumorGenerator

__all__ = ["INT16_SCALE", "BankBatches", "SyntheticBank", "dequantize", "quantize"]

FORMAT = "tumoraug-synthetic-bank"
FORMAT_VERSION = 1
INT16_SCALE = 32767
"""int16 storage: ``q = round(clip(x, -1, 1) * 32767)``, served as ``q / 32767``."""
HEADER_BYTES = 256  # fixed .npy header size, so that appending can rewrite it in place
DTYPES = {"int16": np.dtype("<i2"), "float16": np.dtype("<f2")}
_COPY_ITEMS = 64


def quantize(volumes: torch.Tensor | np.ndarray, dtype: str) -> np.ndarray:
    """Float volumes in [-1, 1] -> stored array (``int16`` with scale 32767, or ``float16``)."""
    x = np.asarray(volumes.detach().cpu() if isinstance(volumes, torch.Tensor) else volumes)
    x = np.clip(x.astype(np.float32, copy=False), -1.0, 1.0)
    if dtype == "int16":
        return np.rint(x * np.float32(INT16_SCALE)).astype(DTYPES["int16"])
    if dtype == "float16":
        return x.astype(DTYPES["float16"])
    raise ConfigError(f"bank dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def dequantize(stored: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
    """Stored array -> float32 tensor in [-1, 1] (the exact inverse map of `quantize`).

    ``out``: a float32 CPU tensor of the same shape to write into (e.g. in shared memory).
    """
    stored = np.asarray(stored)
    if out is None:
        out = torch.from_numpy(np.empty(stored.shape, dtype=np.float32))
    target = out.numpy()
    if stored.dtype == DTYPES["int16"]:
        np.divide(stored, np.float32(INT16_SCALE), out=target, dtype=np.float32)
    else:
        target[...] = stored
    return out


def manifest_path(path: str | os.PathLike[str]) -> Path:
    """The manifest beside a bank data file: ``bank.npy`` -> ``bank.json``."""
    path = Path(path)
    if path.suffix == ".json":
        raise ConfigError(f"{path}: give the bank data file (e.g. bank.npy), not its manifest")
    return path.with_suffix(".json")


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A .npy v1.0 header of exactly `HEADER_BYTES` bytes."""
    text = repr({"descr": dtype.str, "fortran_order": False, "shape": tuple(shape)})
    body_len = HEADER_BYTES - 10
    text = text.ljust(body_len - 1) + "\n"
    if len(text) != body_len:
        raise DataError(f"bank header too long for shape {shape}")
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + text.encode("latin1")


def _read_header(path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) of a .npy file; `DataError` naming the file if corrupt."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(10)
            if len(magic) < 10 or magic[:6] != b"\x93NUMPY" or magic[6] != 1:
                raise DataError(f"{path}: not a synthetic bank data file (bad .npy header)")
            body_len = int.from_bytes(magic[8:10], "little")
            info = ast.literal_eval(handle.read(body_len).decode("latin1"))
        dtype, shape = np.dtype(info["descr"]), tuple(int(v) for v in info["shape"])
        if info["fortran_order"]:
            raise ValueError("fortran order")
    except FileNotFoundError:
        raise DataError(f"{path}: synthetic bank data file is missing") from None
    except (ValueError, SyntaxError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: corrupt synthetic bank header ({exc})") from None
    return dtype, shape, 10 + body_len


class SyntheticBank:
    """A read-only view of a bank (data file + manifest); also builds, appends and merges.

    Open with `SyntheticBank.open(path)`; `read(indices)` returns float32 volumes. The file
    is memory-mapped lazily in each process, so that a bank pickles cheaply to DataLoader
    workers.
    """

    def __init__(self, path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._array: np.ndarray | None = None

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SyntheticBank:
        """Open and check a bank: `DataError` naming the file when missing, corrupt or truncated."""
        path = Path(path).expanduser()
        mpath = manifest_path(path)
        if not path.is_file():
            raise DataError(f"{path}: synthetic bank data file is missing")
        try:
            manifest = json.loads(mpath.read_text())
        except FileNotFoundError:
            raise DataError(f"{mpath}: synthetic bank manifest is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{mpath}: corrupt synthetic bank manifest ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DataError(f"{mpath}: not a tumoraug synthetic bank manifest")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise DataError(
                f"{mpath}: bank format {manifest.get('format_version')} is newer than this "
                f"tumoraug ({__version__}) reads; upgrade tumoraug"
            )
        bank = cls(path, manifest)
        bank._check()
        return bank

    def _check(self) -> None:
        m, mpath = self.manifest, manifest_path(self.path)
        try:
            count, item_shape = int(m["count"]), tuple(int(v) for v in m["item_shape"])
            dtype = DTYPES[m["dtype"]]
            labels, seeds = m["labels"], m["seeds"]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{mpath}: incomplete synthetic bank manifest ({exc!r})") from None
        if len(labels) != count or len(seeds) != count:
            raise DataError(
                f"{mpath}: manifest lists {len(labels)} labels and {len(seeds)} seeds "
                f"for {count} items"
            )
        file_dtype, shape, offset = _read_header(self.path)
        if file_dtype != dtype or shape[1:] != item_shape or shape[0] < count:
            raise DataError(
                f"{self.path}: data file holds {shape} {file_dtype} but the manifest says "
                f"{count} items of {item_shape} {m['dtype']}"
            )
        needed = offset + count * int(np.prod(item_shape)) * dtype.itemsize
        size = self.path.stat().st_size
        if size < needed:
            raise DataError(
                f"{self.path}: truncated synthetic bank ({size} bytes, {count} items need {needed})"
            )

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
        return list(self.manifest["labels"])

    @property
    def seeds(self) -> list[int]:
        return list(self.manifest["seeds"])

    @property
    def seed(self) -> int | None:
        """Base seed of the items (``None`` after merging shards of different seeds)."""
        return self.manifest.get("seed")

    @property
    def dtype(self) -> str:
        return str(self.manifest["dtype"])

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["item_shape"])

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Float32 volumes ``(len(indices), C, S, S, S)`` in [-1, 1]."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"{self.path}: index out of range for {len(self)} bank items")
        return dequantize(self.array[idx])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.read([index])[0]

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "manifest": self.manifest, "_array": None}

    def __deepcopy__(self, memo: dict[int, Any]) -> SyntheticBank:
        return self

    def __repr__(self) -> str:
        return f"SyntheticBank({str(self.path)!r}, n={len(self)}, dtype={self.dtype})"

    # ------------------------------------------------------------------ writing
    @classmethod
    def build(
        cls,
        generator: TumorGenerator | str | os.PathLike[str],
        n: int,
        labels: LabelLike | Sequence[LabelLike] | None,
        path: str | os.PathLike[str],
        seed: int = 0,
        *,
        dtype: str = "int16",
        batch_size: int = 8,
        class_ratio: float = 0.5,
        steps: int | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        start: int = 0,
        workers: int = 1,
        device: str = "auto",
        overwrite: bool = False,
        on_batch: Callable[[int], None] | None = None,
        progress: bool = False,
    ) -> SyntheticBank:
        """Generate ``n`` ROIs into a new bank at ``path`` (``bank.npy`` + ``bank.json``).

        ``labels``: one grade for all, a sequence of ``n``, or ``None`` for ``class_ratio``
        HGG. ``start``: index of the first item (shards of a larger bank). ``workers > 1``
        builds contiguous shards in that many spawned processes, then merges them (the
        generator must be picklable, e.g. loaded with ``from_pretrained``). ``on_batch``
        is called with the number of items written after each batch; ``progress`` shows a
        progress bar on stderr.
        """
        if progress:
            with _progress_bar(n) as advance:
                return cls.build(
                    generator, n, labels, path, seed, dtype=dtype, batch_size=batch_size,
                    class_ratio=class_ratio, steps=steps, guidance_scale=guidance_scale,
                    temperature=temperature, start=start, workers=workers, device=device,
                    overwrite=overwrite, on_batch=advance,
                )  # fmt: skip
        path = Path(path).expanduser()
        if DTYPES.get(dtype) is None:
            raise ConfigError(f"bank dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if n < 1 or batch_size < 1 or workers < 1 or start < 0:
            raise ConfigError("n, batch_size and workers must be >= 1 and start >= 0")
        _check_target(path, overwrite)
        label_list = _resolve_labels(labels, n, class_ratio, seed, start)
        settings = {
            "steps": DEFAULT_STEPS if steps is None else steps,
            "guidance_scale": DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale,
            "temperature": 1.0 if temperature is None else temperature,
        }
        source = GeneratorSource(generator, device=device, settings=settings)
        if workers > 1 and n > 1:
            return cls._build_parallel(
                source, label_list, path, seed, dtype, batch_size, start, min(workers, n), on_batch
            )
        seeds = item_seeds(seed, range(start, start + n))
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            item_shape: tuple[int, ...] | None = None
            for lo in range(0, n, batch_size):
                hi = min(lo + batch_size, n)
                volumes = source.generate(label_list[lo:hi], seeds[lo:hi], batch_size=batch_size)
                if item_shape is None:
                    item_shape = tuple(volumes.shape[1:])
                    handle.write(_header(DTYPES[dtype], (n, *item_shape)))
                handle.write(quantize(volumes, dtype).tobytes())
                if on_batch is not None:
                    on_batch(hi - lo)
            handle.flush()
            os.fsync(handle.fileno())
        assert item_shape is not None
        manifest = _manifest(
            path,
            n,
            item_shape,
            dtype,
            seed,
            start,
            label_list,
            seeds,
            source.model_id,
            source.settings,
        )
        atomic_write_json(manifest_path(path), manifest)
        return cls(path, manifest)

    @classmethod
    def _build_parallel(
        cls,
        source: GeneratorSource,
        labels: list[int],
        path: Path,
        seed: int,
        dtype: str,
        batch_size: int,
        start: int,
        workers: int,
        on_batch: Callable[[int], None] | None,
    ) -> SyntheticBank:
        bounds = [round(len(labels) * k / workers) for k in range(workers + 1)]
        ctx = multiprocessing.get_context("spawn")
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
            shard_paths = [Path(tmp) / f"shard{k}.npy" for k in range(workers)]
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                jobs = [
                    pool.submit(
                        _build_shard,
                        source,
                        labels[lo:hi],
                        shard,
                        seed,
                        dtype,
                        batch_size,
                        start + lo,
                    )
                    for shard, lo, hi in zip(shard_paths, bounds[:-1], bounds[1:], strict=True)
                ]
                for job in concurrent.futures.as_completed(jobs):
                    done = job.result()
                    if on_batch is not None:
                        on_batch(done)
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
        _check_target(path, overwrite)
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
            handle.write(_header(DTYPES[first["dtype"]], (count, *item_shape)))
            for bank in banks:
                for lo in range(0, len(bank), _COPY_ITEMS):
                    handle.write(np.ascontiguousarray(bank.array[lo : lo + _COPY_ITEMS]).tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        manifest = _manifest(
            path,
            count,
            item_shape,
            first["dtype"],
            first["seed"] if contiguous else None,
            first["start"] if contiguous else 0,
            [v for b in banks for v in b.labels],
            [v for b in banks for v in b.seeds],
            first["model"],
            first["settings"],
        )
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
        """Add ``n`` items, continuing the bank's seed and indices with its generation settings.

        Appending ``m`` items to a bank of ``k`` equals building ``k + m`` items in one go.
        Crash-safe ordering: the items are written after the current data, then the header
        is rewritten in place (same length), then the manifest is replaced atomically; an
        interrupted append leaves the bank as it was (extra bytes are ignored).
        """
        if self.seed is None:
            raise DataError(f"{self.path}: merged from unrelated shards; cannot append")
        if n < 1 or batch_size < 1:
            raise ConfigError("n and batch_size must be >= 1")
        m = self.manifest
        begin = m["start"] + len(self)
        label_list = _resolve_labels(labels, n, class_ratio, self.seed, begin)
        seeds = item_seeds(self.seed, range(begin, begin + n))
        source = GeneratorSource(generator, device=device, settings=m["settings"])
        item_shape = self.item_shape
        dtype = DTYPES[self.dtype]
        _, _, offset = _read_header(self.path)
        self._array = None
        with open(self.path, "r+b") as handle:
            handle.seek(offset + len(self) * int(np.prod(item_shape)) * dtype.itemsize)
            for lo in range(0, n, batch_size):
                hi = min(lo + batch_size, n)
                volumes = source.generate(label_list[lo:hi], seeds[lo:hi], batch_size=batch_size)
                if tuple(volumes.shape[1:]) != item_shape:
                    raise DataError(
                        f"{self.path}: bank holds ROIs of shape {item_shape}, the generator "
                        f"makes {tuple(volumes.shape[1:])}"
                    )
                handle.write(quantize(volumes, self.dtype).tobytes())
                if on_batch is not None:
                    on_batch(hi - lo)
            handle.flush()
            os.fsync(handle.fileno())
            handle.seek(0)
            handle.write(_header(dtype, (len(self) + n, *item_shape)))
            handle.flush()
            os.fsync(handle.fileno())
        manifest = dict(m, count=len(self) + n)
        manifest["labels"] = [*m["labels"], *label_list]
        manifest["seeds"] = [*m["seeds"], *seeds]
        atomic_write_json(manifest_path(self.path), manifest)
        self.manifest = manifest
        return self


class BankBatches(Dataset):
    """A bank as a Dataset of whole batches: item ``k`` is ``(images (B,C,S,S,S), labels (B,))``.

    The fastest way to train on a bank: one read and one dequantisation per batch, written
    straight into shared memory inside DataLoader workers, no per-item objects and no
    collate copy. Use it with ``DataLoader(BankBatches(bank, 8), batch_size=None,
    num_workers=2)``; ``set_epoch`` draws a new, reproducible order (``shuffle=True``).
    """

    def __init__(
        self,
        bank: SyntheticBank | str | os.PathLike[str],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.bank = bank if isinstance(bank, SyntheticBank) else SyntheticBank.open(bank)
        self.batch_size, self.shuffle, self.seed, self.drop_last = (
            batch_size,
            shuffle,
            seed,
            drop_last,
        )
        self._labels = torch.tensor(self.bank.labels, dtype=torch.long)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Order of epoch ``epoch`` (a permutation seeded by ``(seed, epoch)`` when shuffling)."""
        n = len(self.bank)
        rng = np.random.default_rng([self.seed, int(epoch)])
        self.order = rng.permutation(n) if self.shuffle else np.arange(n)

    def __len__(self) -> int:
        n, b = len(self.bank), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        ids = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        stored = self.bank.array[ids]
        out = torch.empty(stored.shape, dtype=torch.float32)
        if get_worker_info() is not None:
            out.share_memory_()  # the DataLoader then passes it on without another copy
        return dequantize(stored, out=out), self._labels[torch.from_numpy(ids)]


def _build_shard(
    source: GeneratorSource,
    labels: list[int],
    path: Path,
    seed: int,
    dtype: str,
    batch_size: int,
    start: int,
) -> int:
    torch.set_num_threads(1)
    SyntheticBank.build(
        source.generator if source.spec is None else source.spec,
        len(labels),
        labels,
        path,
        seed,
        dtype=dtype,
        batch_size=batch_size,
        start=start,
        device=source.device,
        **source.settings,
    )
    return len(labels)


@contextlib.contextmanager
def _progress_bar(total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(k)`` of a rich progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("building bank", total=total)
        yield lambda k: bar.advance(task, k)


def _check_target(path: Path, overwrite: bool) -> None:
    if path.suffix == ".json":
        raise ConfigError(f"{path}: give the bank data file (e.g. bank.npy), not a .json path")
    if not overwrite and (path.exists() or manifest_path(path).exists()):
        raise DataError(f"{path}: a bank already exists there (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)


def _manifest(
    path: Path,
    count: int,
    item_shape: tuple[int, ...],
    dtype: str,
    seed: int | None,
    start: int,
    labels: list[int],
    seeds: list[int],
    model: str,
    settings: dict[str, Any],
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tumoraug_version": __version__,
        "data_file": path.name,
        "count": count,
        "item_shape": list(item_shape),
        "dtype": dtype,
        "scale": INT16_SCALE if dtype == "int16" else None,
        "dequantize": "q / scale (float32)" if dtype == "int16" else "float16 -> float32",
        "seed": seed,
        "start": start,
        "model": model,
        "settings": dict(settings),
        "labels": [int(v) for v in labels],
        "seeds": [int(v) for v in seeds],
    }
