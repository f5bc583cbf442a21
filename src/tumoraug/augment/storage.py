"""The on-disk format of a synthetic bank: a fixed-size .npy header, int16/float16
quantisation and the JSON manifest beside the data file.

int16 storage quantises ``x`` in [-1, 1] as ``q = round(x * 32767)`` and serves
``q / 32767`` in float32 (within ``0.5 / 32767`` of ``x``; quantising a served value gives
back ``q`` exactly); float16 keeps ``x`` to float16 precision. The header has a fixed
length (`HEADER_BYTES`) so that an append can rewrite it in place.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumoraug.errors import ConfigError, DataError
from tumoraug.version import __version__

__all__ = [
    "DTYPES",
    "HEADER_BYTES",
    "INT16_SCALE",
    "check_data_file",
    "check_target",
    "dequantize",
    "make_manifest",
    "manifest_path",
    "npy_header",
    "quantize",
    "read_manifest",
    "read_npy_header",
]

FORMAT = "tumoraug-synthetic-bank"
FORMAT_VERSION = 1
INT16_SCALE = 32767
"""int16 storage: ``q = round(clip(x, -1, 1) * 32767)``, served as ``q / 32767``."""
HEADER_BYTES = 256  # fixed .npy header size, so that appending can rewrite it in place
DTYPES = {"int16": np.dtype("<i2"), "float16": np.dtype("<f2")}


def quantize(volumes: torch.Tensor | np.ndarray, dtype: str) -> np.ndarray:
    """Float volumes in [-1, 1] -> stored array (``int16`` with scale 32767, or ``float16``)."""
    x = np.asarray(volumes.detach().cpu() if isinstance(volumes, torch.Tensor) else volumes)
    x = np.clip(x.astype(np.float32, copy=False), -1.0, 1.0)
    if dtype == "int16":
        return np.rint(x * np.float32(INT16_SCALE)).astype(DTYPES["int16"])
    if dtype == "float16":
        return x.astype(DTYPES["float16"])
    raise ConfigError(f"bank dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def dequantize(stored: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Stored values -> float32 tensor in [-1, 1] (the exact inverse map of `quantize`).

    ``stored``: an int16 or float16 array, or a CPU tensor of one (e.g. a batch of
    ``BankBatches(..., raw=True)``); the same values give the same bits either way.
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


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A .npy v1.0 header of exactly `HEADER_BYTES` bytes."""
    text = repr({"descr": dtype.str, "fortran_order": False, "shape": tuple(shape)})
    body_len = HEADER_BYTES - 10
    text = text.ljust(body_len - 1) + "\n"
    if len(text) != body_len:
        raise DataError(f"bank header too long for shape {shape}")
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + text.encode("latin1")


def read_npy_header(path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
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


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the bank data file ``path``; `DataError` naming the file if unusable."""
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
    check_data_file(path, manifest)
    return manifest


def check_data_file(path: Path, manifest: dict[str, Any]) -> None:
    """`DataError` unless the data file holds the items the manifest lists."""
    m, mpath = manifest, manifest_path(path)
    try:
        count, item_shape = int(m["count"]), tuple(int(v) for v in m["item_shape"])
        dtype = DTYPES[m["dtype"]]
        labels, seeds = m["labels"], m["seeds"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{mpath}: incomplete synthetic bank manifest ({exc!r})") from None
    if len(labels) != count or len(seeds) != count:
        raise DataError(
            f"{mpath}: manifest lists {len(labels)} labels and {len(seeds)} seeds for {count} items"
        )
    file_dtype, shape, offset = read_npy_header(path)
    if file_dtype != dtype or shape[1:] != item_shape or shape[0] < count:
        raise DataError(
            f"{path}: data file holds {shape} {file_dtype} but the manifest says "
            f"{count} items of {item_shape} {m['dtype']}"
        )
    needed = offset + count * int(np.prod(item_shape)) * dtype.itemsize
    size = path.stat().st_size
    if size < needed:
        raise DataError(
            f"{path}: truncated synthetic bank ({size} bytes, {count} items need {needed})"
        )


def check_target(path: Path, overwrite: bool) -> None:
    """`DataError` when a bank exists at ``path`` (unless ``overwrite``); creates the folder."""
    if path.suffix == ".json":
        raise ConfigError(f"{path}: give the bank data file (e.g. bank.npy), not a .json path")
    if not overwrite and (path.exists() or manifest_path(path).exists()):
        raise DataError(
            f"{path}: a bank already exists there; pass overwrite=True (CLI: --overwrite) to "
            "replace it, or choose another file"
        )
    path.parent.mkdir(parents=True, exist_ok=True)


def make_manifest(
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
    """The manifest of a bank: the source of truth for its items, model and settings."""
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
