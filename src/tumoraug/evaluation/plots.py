"""Line plots drawn with Pillow only (no plotting library among the dependencies): ROC curves
of the downstream protocol and training curves (e.g. token accuracy against step)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tumoraug.checkpoint import atomic_path

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def save_line_plot(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    diagonal: bool = False,
    size: int = 560,
) -> Path:
    """Draw ``{legend: (xs, ys)}`` into a ``size``² PNG with axes, a grid and a legend.

    Ranges default to the data's; ``diagonal`` adds the dashed ``y = x`` line (chance of a
    ROC curve). Returns the path.
    """
    xs_all = np.concatenate([np.asarray(x, dtype=float) for x, _ in curves.values()])
    ys_all = np.concatenate([np.asarray(y, dtype=float) for _, y in curves.values()])
    x0, x1 = x_range or (float(xs_all.min()), float(xs_all.max()))
    y0, y1 = y_range or (float(ys_all.min()), float(ys_all.max()))
    x1, y1 = max(x1, x0 + 1e-9), max(y1, y0 + 1e-9)  # a flat curve still gets an axis
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = 60, 20, size - 20, size - 50
    width, height = right - left, bottom - top

    def point(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * width, bottom - (y - y0) / (y1 - y0) * height

    for fx, fy in zip(np.linspace(0, 1, 6), np.linspace(0, 1, 6), strict=True):
        x, y = x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)
        px, py = point(x, y)
        draw.line([(px, top), (px, bottom)], fill=(230, 230, 230))
        draw.line([(left, py), (right, py)], fill=(230, 230, 230))
        draw.text((px - 8, bottom + 6), f"{x:.4g}", fill="black", font=font)
        draw.text((left - 40, py - 6), f"{y:.4g}", fill="black", font=font)
    if diagonal:
        for start in np.arange(0, 1, 0.04):
            draw.line([point(start, start), point(start + 0.02, start + 0.02)], fill="grey")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left + width / 2 - 60, bottom + 26), x_label, fill="black", font=font)
    draw.text((6, top - 14), y_label, fill="black", font=font)
    for index, (name, (xs, ys)) in enumerate(curves.items()):
        colour = COLOURS[index % len(COLOURS)]
        draw.line([point(a, b) for a, b in zip(xs, ys, strict=True)], fill=colour, width=3)
        y = bottom - 18 * (len(curves) - index) - 6
        draw.line([(left + width * 0.35, y + 6), (left + width * 0.35 + 20, y + 6)], colour, 3)
        draw.text((left + width * 0.35 + 26, y), name, fill="black", font=font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def save_roc_png(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, size: int = 560
) -> Path:
    """Draw ROC curves (``{name: (fpr, tpr, auc)}``) into a ``size``² PNG; returns the path.

    Axes, a 0.2 grid, the chance diagonal (dashed) and a legend with each curve's AUC.
    """
    named = {f"{name} (AUC {auc:.3f})": (fpr, tpr) for name, (fpr, tpr, auc) in curves.items()}
    return save_line_plot(
        named, path, x_label="False positive rate", y_label="True positive rate",
        x_range=(0.0, 1.0), y_range=(0.0, 1.0), diagonal=True, size=size,
    )  # fmt: skip
