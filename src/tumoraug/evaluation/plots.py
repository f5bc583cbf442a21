"""ROC curves drawn with Pillow only (no plotting library among the dependencies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tumoraug.checkpoint import atomic_path

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def save_roc_png(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, size: int = 560
) -> Path:
    """Draw ROC curves (``{name: (fpr, tpr, auc)}``) into a ``size``² PNG; returns the path.

    Axes, a 0.2 grid, the chance diagonal (dashed) and a legend with each curve's AUC.
    """
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = 60, 20, size - 20, size - 50
    width, height = right - left, bottom - top

    def point(fpr: float, tpr: float) -> tuple[float, float]:
        return left + fpr * width, bottom - tpr * height

    for tick in np.linspace(0, 1, 6):
        x, y = point(tick, tick)
        draw.line([(x, top), (x, bottom)], fill=(230, 230, 230))
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.text((x - 8, bottom + 6), f"{tick:.1f}", fill="black", font=font)
        draw.text((left - 30, y - 6), f"{tick:.1f}", fill="black", font=font)
    for start in np.arange(0, 1, 0.04):
        draw.line([point(start, start), point(start + 0.02, start + 0.02)], fill="grey")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left + width / 2 - 60, bottom + 26), "False positive rate", fill="black", font=font)
    draw.text((6, top - 14), "True positive rate", fill="black", font=font)
    for index, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        colour = COLOURS[index % len(COLOURS)]
        draw.line([point(f, t) for f, t in zip(fpr, tpr, strict=True)], fill=colour, width=3)
        y = bottom - 18 * (len(curves) - index) - 6
        draw.line([(left + width * 0.35, y + 6), (left + width * 0.35 + 20, y + 6)], colour, 3)
        draw.text((left + width * 0.35 + 26, y), f"{name} (AUC {auc:.3f})", fill="black", font=font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
