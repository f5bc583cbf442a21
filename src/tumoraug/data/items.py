"""The item format shared by real and synthetic ROI datasets, and a way back to tensors.

An item is a `torchio.Subject` with ``image`` (ScalarImage, (C,S,S,S) float32 in [-1, 1]),
``seg`` (LabelMap, (1,S,S,S) uint8: BraTS labels fit, and it is 1/8 of the bytes of int64
that DataLoader workers move), ``label`` (0 LGG / 1 HGG), ``grade`` and ``subject_id``.
`subject_tensors` turns an item, a collated batch of items or a plain ``(image, label)`` pair
into the ``(image, seg, label)`` tensors that models take.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torchio as tio

from tumoraug.errors import DataError
from tumoraug.labels import to_grade, to_label, to_labels


def make_roi_subject(
    image: torch.Tensor | np.ndarray,
    label: int | str,
    seg: torch.Tensor | np.ndarray | None = None,
    subject_id: str = "",
) -> tio.Subject:
    """Build one item: ``image`` (C,S,S,S), optional ``seg`` ((S,S,S) or (1,S,S,S), zeros if None).

    The seg is stored as uint8 (labels 0-255; a `DataError` outside that range). The affine
    is the identity (1 mm voxels), as for every ROI tumoraug writes.
    """
    image = torch.as_tensor(image, dtype=torch.float32)
    if image.ndim != 4:
        raise DataError(f"ROI image must be (C,S,S,S), got shape {tuple(image.shape)}")
    if seg is None:
        seg = torch.zeros((1, *image.shape[1:]), dtype=torch.uint8)
    seg = torch.as_tensor(seg)
    if seg.dtype != torch.uint8:
        low, high = (int(v) for v in torch.aminmax(seg)) if seg.numel() else (0, 0)
        if low < 0 or high > 255:
            raise DataError(
                f"ROI seg labels must lie in 0..255 (stored as uint8), got {low}..{high}"
            )
        seg = seg.to(torch.uint8)
    if seg.ndim == 3:
        seg = seg.unsqueeze(0)
    if tuple(seg.shape) != (1, *image.shape[1:]):
        raise DataError(
            f"ROI seg shape {tuple(seg.shape)} does not match image {tuple(image.shape)}"
        )
    return tio.Subject(
        image=tio.ScalarImage(tensor=image, affine=np.eye(4)),
        seg=tio.LabelMap(tensor=seg, affine=np.eye(4)),
        label=to_label(label),
        grade=to_grade(label),
        subject_id=subject_id,
    )


def _image_data(value: Any, name: str) -> torch.Tensor:
    """The tensor inside a tio.Image, a collated image dict (``{"data": ...}``) or a tensor."""
    if isinstance(value, tio.Image):
        return value.data
    if isinstance(value, Mapping):
        if tio.DATA not in value:
            raise DataError(f"batch[{name!r}] has no {tio.DATA!r} entry")
        value = value[tio.DATA]
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise DataError(f"{name}: expected a tensor or image, got {type(value).__name__}")
    return value


def _label_tensor(value: Any, batch: int) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        labels = [to_label(int(v)) for v in value.reshape(-1).tolist()]
    else:
        labels = to_labels(value)
    if len(labels) == 1 and batch > 1:
        labels = labels * batch
    if len(labels) != batch:
        raise DataError(f"got {len(labels)} labels for a batch of {batch} images")
    return torch.tensor(labels, dtype=torch.long)


def subject_tensors(item: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(image (B,C,S,S,S) float, seg (B,1,S,S,S) long, label (B,) long)``.

    Accepts a `tio.Subject` item, a batch dict collated by a DataLoader over such items, or
    an ``(image, label)`` tuple with image (C,S,S,S) or (B,C,S,S,S) (seg is then all zeros).
    """
    if isinstance(item, tio.Subject | Mapping):
        if "image" not in item or "label" not in item:
            raise DataError(f"item needs 'image' and 'label' entries, got keys {sorted(item)}")
        image = _image_data(item["image"], "image")
        seg = _image_data(item["seg"], "seg") if "seg" in item else None
        label = item["label"]
    elif isinstance(item, tuple | list) and len(item) == 2:
        image, label = item
        image, seg = _image_data(image, "image"), None
    else:
        raise DataError(
            f"cannot read an item of type {type(item).__name__}: expected a tio.Subject, "
            "a collated batch dict or an (image, label) tuple"
        )
    if image.ndim == 4:
        image = image.unsqueeze(0)
        seg = seg.unsqueeze(0) if seg is not None and seg.ndim == 4 else seg
    if image.ndim != 5:
        raise DataError(f"image must be (C,S,S,S) or (B,C,S,S,S), got {tuple(image.shape)}")
    if seg is None:
        seg = torch.zeros((image.shape[0], 1, *image.shape[2:]), dtype=torch.long)
    if isinstance(label, str | int) or (isinstance(label, torch.Tensor) and label.ndim == 0):
        label = [label]
    return image.float(), seg.long(), _label_tensor(label, image.shape[0])
