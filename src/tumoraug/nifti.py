"""NIfTI files of synthetic ROIs: one volume as bytes, and the files of one exported sample.

A ROI of one channel is one 3D file. A ROI of several channels is one file per channel,
named after its modality as BraTS names its files (``<sample>_flair.nii.gz``, ...;
``channels="split"``), or one 4D file (``channels="4d"``). In an export manifest a sample
lists its one ``file`` and ``sha256``, or ``files`` and ``sha256`` by modality; the helpers
below read and write both forms, keying the one-file form by ``""``.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tumoraug.errors import ConfigError, DataError

NIFTI_FORMATS: tuple[str, ...] = ("nii.gz", "nii")
CHANNEL_LAYOUTS: tuple[str, ...] = ("split", "4d")
"""How a ROI of several channels is written: a file per channel, or one 4D file."""


def check_format(fmt: str, channels: str = "split") -> None:
    """Raise `ConfigError` unless ``fmt`` and ``channels`` are known choices."""
    if fmt not in NIFTI_FORMATS:
        raise ConfigError(
            f"unknown output format {fmt!r}: expected one of {', '.join(NIFTI_FORMATS)}"
        )
    if channels not in CHANNEL_LAYOUTS:
        raise ConfigError(
            f"unknown channel layout {channels!r}: expected one of {', '.join(CHANNEL_LAYOUTS)} "
            "(CLI: --channels)"
        )


def nifti_bytes(volume: torch.Tensor, fmt: str) -> bytes:
    """A ``(C, D, H, W)`` ROI as NIfTI-1 bytes with a 1 mm identity affine (C > 1: 4th axis).

    ``fmt``: ``"nii.gz"`` (gzip with a zero timestamp, so equal volumes give equal bytes) or
    ``"nii"``.
    """
    import nibabel as nib
    import numpy as np

    check_format(fmt)
    array = volume.detach().cpu().numpy().astype(np.float32)
    array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    image = nib.Nifti1Image(array, np.eye(4))
    image.header.set_xyzt_units("mm")
    data = image.to_bytes()
    return gzip.compress(data, mtime=0) if fmt == "nii.gz" else data


def read_nifti(path: Path) -> torch.Tensor:
    """The ``(C, D, H, W)`` volume of a file written by `nifti_bytes`."""
    import nibabel as nib
    import numpy as np

    array = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    return torch.from_numpy(array[None] if array.ndim == 3 else np.moveaxis(array, -1, 0))


def sample_entry(stem: str, fmt: str, modalities: Sequence[str] | None) -> dict[str, Any]:
    """Where a sample's files go: ``{"file": ...}``, or with ``modalities`` (a file per
    channel) ``{"files": {modality: <stem>_<modality>.<fmt>}}``."""
    if modalities:
        return {"files": {m: f"{stem}_{m}.{fmt}" for m in modalities}}
    return {"file": f"{stem}.{fmt}"}


def sample_files(sample: dict[str, Any]) -> dict[str, Any]:
    """A manifest sample's file names by modality (key ``""`` for a one-file sample)."""
    files = sample.get("files")
    return dict(files) if isinstance(files, dict) else {"": sample.get("file")}


def sample_hashes(sample: dict[str, Any]) -> dict[str, Any]:
    """A manifest sample's recorded SHA-256 by the keys of `sample_files` (empty: none)."""
    value = sample.get("sha256")
    if isinstance(value, dict):
        return value
    return {"": value} if isinstance(value, str) else {}


def set_sample_hashes(sample: dict[str, Any], hashes: dict[str, str]) -> None:
    """Record ``hashes`` (by the keys of `sample_files`) in a manifest sample."""
    sample["sha256"] = hashes if "files" in sample else hashes[""]


def sample_bytes(
    sample: dict[str, Any], volume: torch.Tensor, fmt: str, channels: str, model: str
) -> dict[str, bytes]:
    """The NIfTI bytes of one ``(C, D, H, W)`` volume by the keys of `sample_files`;
    ``model`` names the source in the `DataError` of a volume that does not fit."""
    files = sample_files(sample)
    if "" in files:
        if channels == "split" and volume.shape[0] > 1:
            raise DataError(
                f"{model} makes ROIs of {volume.shape[0]} channels without naming them; write "
                "each as one 4D file (channels='4d', CLI: --channels 4d)"
            )
        return {"": nifti_bytes(volume, fmt)}
    if len(files) != volume.shape[0]:
        raise DataError(
            f"{model} names {len(files)} channel(s) ({', '.join(files)}) but makes ROIs of "
            f"{volume.shape[0]}"
        )
    return {name: nifti_bytes(volume[c : c + 1], fmt) for c, name in enumerate(files)}


def read_sample(out_dir: Path, sample: dict[str, Any]) -> torch.Tensor:
    """The ``(C, D, H, W)`` volume of an exported sample (its files in ``out_dir``)."""
    return torch.cat([read_nifti(out_dir / name) for name in sample_files(sample).values()])
