"""Sample quality per model and grade: fidelity (MMD to real ROIs), diversity (MS-SSIM) and
the intensity statistics a grade's ROIs should share with the real ones.

The definitions follow Kwon et al. 2019 as the papers use them (see `tumoraug.metrics`):
per grade, a Gaussian-kernel MMD (median heuristic, biased estimator) between all real
ROIs of that grade and the generated ones, and the mean pairwise MS-SSIM of the generated
set next to that of the real set, which is the reference. `intensity_statistics` (mean
brain intensity, hyperintense share, bright-core share) are compared as relative
differences; a row is within tolerance when all three are within ``STATS_TOLERANCE``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from tumoraug.errors import DataError
from tumoraug.evaluation.report import write_tables
from tumoraug.evaluation.sources import materialize
from tumoraug.generators import Settings, resolve_sampling
from tumoraug.labels import GRADES
from tumoraug.metrics import intensity_statistics, mmd, ms_ssim_diversity, relative_differences
from tumoraug.viz import save_montage

# Per-grade seed offset: the generated ROIs of LGG and HGG use disjoint seed streams.
GRADE_SEED_STRIDE = 7919
#: Largest relative difference of an intensity statistic from the real set that passes.
STATS_TOLERANCE = 0.15


@dataclasses.dataclass
class SampleReport:
    """Fidelity (MMD to real ROIs) and diversity (mean pairwise MS-SSIM) per model and grade."""

    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    montage: list[tuple[str, torch.Tensor]] = dataclasses.field(default_factory=list, repr=False)

    def to_markdown(self) -> str:
        """One row per model and grade; the real set's own MS-SSIM is the reference."""
        lines = [
            "| Model | Grade | n real / gen | MMD ×10⁴ | MS-SSIM generated | MS-SSIM real "
            "| Δ mean int. | Δ hyperint. | Δ core | within 15 % |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            diff = row["stats_relative_difference"]
            lines.append(
                f"| {row['model']} | {row['grade']} | {row['n_real']} / {row['n_generated']} | "
                f"{row['mmd_1e4']:.2f} | {row['ms_ssim_generated']:.4f} | "
                f"{row['ms_ssim_real']:.4f} | {diff['mean_intensity']:+.1%} | "
                f"{diff['hyperintense_share']:+.1%} | {diff['core_share']:+.1%} | "
                f"{'yes' if row['stats_within_tolerance'] else 'no'} |"
            )
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Settings and rows (raw MMD and ×10⁴ both), JSON-compatible."""
        return {"settings": self.settings, "rows": self.rows}

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``samples.md``, ``samples.json`` and ``samples_montage.png`` into ``out_dir``."""
        paths = write_tables(out_dir, "samples", self.to_markdown(), self.to_dict())
        paths["montage"] = Path(out_dir) / "samples_montage.png"
        save_montage(
            [volume for _, volume in self.montage],
            paths["montage"],
            row_labels=[name for name, _ in self.montage],
        )
        return paths


def recorded_settings(per_model: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The settings shared by every model, or ``{"per_model": {name: settings}}``."""
    distinct = {json.dumps(v, sort_keys=True) for v in per_model.values()}
    return next(iter(per_model.values())) if len(distinct) == 1 else {"per_model": per_model}


def evaluate_samples(
    real: Dataset,
    models: Mapping[str, Any],
    *,
    n_per_class: int = 16,
    seed: int = 0,
    sampling: Settings = None,
    feature_size: int | None = 16,
    max_pairs: int | None = 1000,
    montage_per_class: int = 2,
) -> SampleReport:
    """Compare ``n_per_class`` generated ROIs per grade from each model with the real ROIs.

    ``models`` maps a display name to anything with ``generate(labels, seed=..., sampling=...)``
    (a `TumorGenerator` or a baseline); every model gets the same labels, seeds and
    ``sampling`` (each model's own defaults when None; a dict overrides some of them, so one
    ``{"guidance_scale": 2}`` serves models of several kinds). The report records the
    settings once when every model used the same, else per model. MMD is computed in the
    `tumoraug.metrics.volume_features` space of ``feature_size``; MS-SSIM over at most
    ``max_pairs`` pairs per set. The montage shows ``montage_per_class`` ROIs per set.
    """
    if not models:
        raise DataError("evaluate_samples needs at least one model")
    settings_of = {name: resolve_sampling(model, sampling) for name, model in models.items()}
    examples = materialize(real)
    shape = tuple(examples[0][0].shape)
    rows: list[dict[str, Any]] = []
    montage: list[tuple[str, torch.Tensor]] = []
    for label, grade in enumerate(GRADES):
        same_grade = [x for x, y in examples if y == label]
        if len(same_grade) < 2:
            raise DataError(
                f"need at least 2 real {grade} ROIs to compare with, found {len(same_grade)}"
            )
        real_volumes = torch.stack(same_grade)
        real_diversity = ms_ssim_diversity(real_volumes, max_pairs=max_pairs, seed=seed)
        real_stats = intensity_statistics(real_volumes)
        montage += [(f"real {grade}", v) for v in real_volumes[:montage_per_class]]
        for name, model in models.items():
            generated = model.generate(
                [label] * n_per_class,
                seed=seed + GRADE_SEED_STRIDE * label,
                sampling=settings_of[name],
            )
            if tuple(generated.shape[1:]) != shape:
                raise DataError(
                    f"model {name!r} makes ROIs of shape {tuple(generated.shape[1:])}, "
                    f"the real ROIs are {shape}"
                )
            distance = mmd(real_volumes, generated, feature_size=feature_size)
            stats = intensity_statistics(generated)
            diff = relative_differences(stats, real_stats)
            rows.append(
                {
                    "model": name,
                    "grade": grade,
                    "n_real": len(real_volumes),
                    "n_generated": n_per_class,
                    "mmd": distance.value,
                    "mmd_1e4": distance.scaled,
                    "bandwidth": distance.bandwidth,
                    "ms_ssim_generated": ms_ssim_diversity(
                        generated, max_pairs=max_pairs, seed=seed
                    ),
                    "ms_ssim_real": real_diversity,
                    "stats_generated": stats,
                    "stats_real": real_stats,
                    "stats_relative_difference": diff,
                    "stats_within_tolerance": all(abs(v) <= STATS_TOLERANCE for v in diff.values()),
                }
            )
            montage += [(f"{name} {grade}", v) for v in generated[:montage_per_class]]
    settings = {
        "n_per_class": n_per_class,
        "seed": seed,
        "sampling": recorded_settings({n: v.to_dict() for n, v in settings_of.items()}),
        "feature_size": feature_size,
        "max_pairs": max_pairs,
        "kernel": "gaussian (median heuristic), biased estimator",
    }
    return SampleReport(rows=rows, settings=settings, montage=montage)
