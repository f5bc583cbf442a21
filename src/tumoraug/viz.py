"""Slice montages as PNG: the pictures people look at to judge ROIs and reconstructions.

A montage has one row per volume and, per row, the centre slice along each of the three
axes (axial, coronal, sagittal) of the first channel, intensities mapped from [-1, 1] to
grey levels. Only Pillow is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from tumoraug.checkpoint import atomic_path


def centre_slices(volume: torch.Tensor | np.ndarray) -> list[np.ndarray]:
    """Return the axial, coronal and sagittal centre slices of a (C,D,H,W) or (D,H,W) volume."""
    array = volume.detach().float().cpu().numpy() if isinstance(volume, torch.Tensor) else volume
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 4:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"expected a (C,D,H,W) or (D,H,W) volume, got shape {array.shape}")
    d, h, w = array.shape
    return [array[d // 2], array[:, h // 2, :], array[:, :, w // 2]]


def _to_grey(image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    low, high = value_range
    scaled = (np.clip(image, low, high) - low) / max(high - low, 1e-8)
    return (scaled * 255.0 + 0.5).astype(np.uint8)


def save_montage(
    volumes: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
    path: str | Path,
    *,
    row_labels: Sequence[str] | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    min_cell: int = 96,
) -> Path:
    """Write a PNG with one row of three centre slices per volume; returns the path.

    Small volumes are upscaled (nearest neighbour) to at least ``min_cell`` pixels per
    slice so that 16³ test ROIs remain visible. The label column is as wide as the longest
    row label. The file is written atomically.
    """
    if isinstance(volumes, torch.Tensor):
        volumes = list(volumes)
    if len(volumes) == 0:
        raise ValueError("save_montage needs at least one volume")
    if row_labels is not None and len(row_labels) != len(volumes):
        raise ValueError(f"{len(row_labels)} row labels for {len(volumes)} volumes")
    rows = [[_to_grey(s, value_range) for s in centre_slices(v)] for v in volumes]
    cell = max(max(s.shape) for row in rows for s in row)
    scale = max(1, -(-min_cell // cell))
    cell *= scale
    labels = [str(label) for label in row_labels or []]
    font = ImageFont.load_default()
    label_width = max([70] + [int(font.getlength(t)) + 8 for t in labels]) if labels else 0
    pad = 2
    canvas = Image.new(
        "L", (label_width + 3 * (cell + pad) + pad, len(rows) * (cell + pad) + pad), color=0
    )
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = pad + r * (cell + pad)
        if labels:
            draw.text((4, top + cell // 2 - 5), labels[r], fill=255, font=font)
        for c, image in enumerate(row):
            tile = Image.fromarray(image).resize(
                (image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST
            )
            left = label_width + pad + c * (cell + pad)
            canvas.paste(tile, (left + (cell - tile.width) // 2, top + (cell - tile.height) // 2))
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
