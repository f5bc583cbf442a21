"""ROI extraction: a cube centred on the tumor, intensities normalised to [-1, 1].

The cube has ``size`` voxels per edge and is centred on the centre of the bounding box of the
tumor (``seg > 0``). Where it leaves the volume it is padded: the image with background (-1
after normalisation), the segmentation with 0. Each channel is clipped to the 0.5–99.5
percentiles of its brain voxels (the non-zero ones, over the whole volume, so that the scale
does not depend on where the cube falls), scaled linearly to [-1, 1], and its background
(zero voxels) is set to exactly -1. A tumor that does not fit in the cube gives a
`ROIWarning`: the crop is kept, but the user is told that part of the tumor was cut off.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tumoraug.errors import DataError

PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""Brain-voxel percentiles that the intensities are clipped to before scaling."""


class ROIWarning(UserWarning):
    """A subject is usable but not as expected (e.g. its tumor is larger than the ROI)."""


@dataclass(frozen=True)
class ROI:
    """A cropped, normalised ROI: ``image`` (C,S,S,S) float32 in [-1, 1], ``seg`` (S,S,S) uint8."""

    image: np.ndarray
    seg: np.ndarray
    start: tuple[int, int, int]
    """Voxel index in the source volume of the ROI's first corner (may be negative: padding)."""
    tumor_extent: tuple[int, int, int]
    """Size of the tumor's bounding box in voxels."""


def tumor_bbox(seg: np.ndarray, name: str = "segmentation") -> tuple[np.ndarray, np.ndarray]:
    """Inclusive lower and upper voxel corners of ``seg > 0``; `DataError` if the mask is empty."""
    mask = seg > 0
    if not mask.any():
        raise DataError(f"{name}: the tumor mask is empty (no voxel > 0)")
    lower, upper = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        lower.append(hits[0])
        upper.append(hits[-1])
    return np.asarray(lower), np.asarray(upper)


def centred_start(lower: np.ndarray, upper: np.ndarray, size: int) -> tuple[int, ...]:
    """First corner of the ``size``-cube centred on the box ``[lower, upper]`` (inclusive).

    When the margin ``size - extent`` is odd, the cube has one more voxel before the box
    than after it.
    """
    return tuple(int(s) for s in (np.asarray(lower) + np.asarray(upper) + 1 - size) // 2)


def crop_or_pad(volume: np.ndarray, start: Sequence[int], size: int, fill: float) -> np.ndarray:
    """The ``size``-cube of the last three axes of ``volume`` at ``start``, padded with ``fill``."""
    spatial = volume.shape[-3:]
    out = np.full((*volume.shape[:-3], size, size, size), fill, dtype=volume.dtype)
    src, dst = [], []
    for s, n in zip(start, spatial, strict=True):
        lo, hi = max(s, 0), min(s + size, n)
        if hi <= lo:  # the cube misses the volume along this axis: nothing to copy
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[(..., *dst)] = volume[(..., *src)]
    return out


def brain_range(volume: np.ndarray, name: str = "image") -> tuple[float, float]:
    """The 0.5 and 99.5 percentiles of the brain (non-zero) voxels of ``volume``."""
    brain = volume[volume != 0]
    if brain.size == 0:
        raise DataError(f"{name}: the image is empty (all voxels are 0)")
    lo, hi = (float(v) for v in np.percentile(brain, PERCENTILES))
    if not hi > lo:
        raise DataError(f"{name}: the brain has constant intensity ({lo:g}), cannot normalise")
    return lo, hi


def scale_to_unit(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip ``volume`` to [lo, hi], map it linearly to [-1, 1], set zero voxels to exactly -1."""
    volume = np.asarray(volume, dtype=np.float32)
    out = (np.clip(volume, lo, hi) - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - 1.0
    out[volume == 0] = -1.0
    return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)


def normalize(volume: np.ndarray, name: str = "image") -> np.ndarray:
    """Clip to brain-voxel percentiles, scale to [-1, 1]; background (zero voxels) exactly -1."""
    volume = np.asarray(volume, dtype=np.float32)
    return scale_to_unit(volume, *brain_range(volume, name))


def extract_roi(
    images: Sequence[np.ndarray],
    seg: np.ndarray,
    size: int = 128,
    names: Sequence[str] | None = None,
    seg_name: str = "segmentation",
) -> ROI:
    """Crop and normalise one subject: ``images`` (one (D,H,W) array per channel) and ``seg``.

    ``names`` (one per image) and ``seg_name`` only label error and warning messages.
    """
    if int(size) < 1:
        raise DataError(f"ROI size must be >= 1, got {size}")
    names = list(names) if names is not None else [f"channel {i}" for i in range(len(images))]
    if not images:
        raise DataError("no image channel given")
    for image, name in zip(images, names, strict=True):
        if image.shape != seg.shape:
            raise DataError(
                f"{name}: shape {tuple(image.shape)} differs from the segmentation "
                f"{seg_name} {tuple(seg.shape)}"
            )
    lower, upper = tumor_bbox(seg, seg_name)
    extent = tuple(int(e) for e in upper - lower + 1)
    if max(extent) > size:
        warnings.warn(
            f"{seg_name}: tumor bounding box {extent} is larger than the {size}³ ROI; "
            "the ROI keeps its centre and cuts the rest off",
            ROIWarning,
            stacklevel=2,
        )
    start = centred_start(lower, upper, size)
    # Percentiles over the whole brain, scaling on the cube only (padding is 0, i.e. background).
    channels = [
        scale_to_unit(crop_or_pad(image, start, size, 0), *brain_range(image, name))
        for image, name in zip(images, names, strict=True)
    ]
    roi_seg = crop_or_pad(np.asarray(seg).astype(np.uint8), start, size, 0)
    return ROI(np.stack(channels), roi_seg, start, extent)  # type: ignore[arg-type]
