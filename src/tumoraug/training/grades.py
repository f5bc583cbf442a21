"""Per-grade bookkeeping shared by both stages: loss weights against class imbalance, and
metrics split by grade (BraTS 2019 has about three HGG per LGG)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tumoraug.labels import GRADES


def grade_weights(
    class_counts: Sequence[int] | None, num_classes: int, balance: bool = True
) -> torch.Tensor:
    """Loss weight per grade: ``n / (K * n_c)`` when ``balance`` and counts are known, else 1."""
    if not balance or class_counts is None:
        return torch.ones(num_classes)
    counts = torch.as_tensor(list(class_counts), dtype=torch.float32).clamp_min(1)
    return counts.sum() / (num_classes * counts)


def per_grade_means(
    values: torch.Tensor, grades: torch.Tensor, name: str
) -> dict[str, torch.Tensor]:
    """``{name: mean, name/LGG: mean over LGG, name/HGG: ...}`` for the grades present."""
    out = {name: values.mean()}
    for label, grade in enumerate(GRADES):
        chosen = grades == label
        if bool(chosen.any()):
            out[f"{name}/{grade}"] = values[chosen].mean()
    return out
