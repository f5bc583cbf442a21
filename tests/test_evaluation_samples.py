"""The sample report: MMD and MS-SSIM per model and grade, its settings and its files."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tumoraug.errors import DataError
from tumoraug.evaluation import evaluate_samples
from tumoraug.sampling import SamplingConfig


def _real_rois(n: int, seed: int = 3, size: int = 16) -> list:
    """``n`` random 16³ ROIs in [-1, 1], alternating LGG and HGG."""
    rng = torch.Generator().manual_seed(seed)
    return [(torch.rand(1, size, size, size, generator=rng) * 2 - 1, i % 2) for i in range(n)]


class RealCopier:
    """A stand-in model whose 'samples' of a grade are the real ROIs of that grade."""

    roi_size = 16

    def __init__(self, items: list) -> None:
        self.items = items
        self.calls: list[tuple[list, int, SamplingConfig | None]] = []

    def generate(
        self, labels: list, seed: int = 0, sampling: SamplingConfig | None = None
    ) -> torch.Tensor:
        self.calls.append((list(labels), seed, sampling))
        pool = [x for x, y in self.items if y == labels[0]]
        return torch.stack(pool[: len(labels)])


def test_sample_report_compares_models_with_real_rois(tiny_model_dir, tmp_path):
    from tumoraug.generator import TumorGenerator

    real = _real_rois(6)
    model = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")
    report = evaluate_samples(
        real,
        {"tiny": model, "copy": RealCopier(real)},
        n_per_class=3,
        sampling=SamplingConfig(steps=2),
        montage_per_class=1,
    )
    assert [(r["model"], r["grade"]) for r in report.rows] == [
        ("tiny", "LGG"),
        ("copy", "LGG"),
        ("tiny", "HGG"),
        ("copy", "HGG"),
    ]
    by_model = {(r["model"], r["grade"]): r for r in report.rows}
    # A "model" that returns the real ROIs themselves has MMD 0 and the real diversity.
    assert by_model[("copy", "HGG")]["mmd"] == 0.0
    copy_row = by_model[("copy", "HGG")]
    assert copy_row["ms_ssim_generated"] == pytest.approx(copy_row["ms_ssim_real"])
    assert by_model[("tiny", "HGG")]["mmd"] > 0
    # ... and intensity statistics equal to the real ones: within the 15 % tolerance.
    assert copy_row["stats_relative_difference"] == {
        "mean_intensity": 0.0, "hyperintense_share": 0.0, "core_share": 0.0,
    }  # fmt: skip
    assert copy_row["stats_within_tolerance"]
    assert by_model[("tiny", "HGG")]["mmd_1e4"] == pytest.approx(
        by_model[("tiny", "HGG")]["mmd"] * 1e4
    )
    paths = report.save(tmp_path)
    assert paths["markdown"].read_text().startswith("| Model | Grade |")
    assert len(json.loads(paths["json"].read_text())["rows"]) == 4
    with Image.open(paths["montage"]) as png:
        assert png.size[1] > 6 * 16  # 2 real + 2 x 2 generated rows


def test_every_model_gets_the_same_sampling_and_the_report_records_it():
    real = _real_rois(4)
    first, second = RealCopier(real), RealCopier(real)
    sampling = SamplingConfig(steps=3, guidance_scale=2.0)
    report = evaluate_samples(
        real, {"a": first, "b": second}, n_per_class=2, seed=5, sampling=sampling
    )
    assert first.calls == second.calls
    assert [(labels, s) for labels, s, _ in first.calls] == [([0, 0], 5), ([1, 1], 5 + 7919)]
    assert all(call[2] == sampling for call in first.calls)
    assert report.settings["sampling"] == sampling.to_dict()
    assert report.to_dict()["settings"]["n_per_class"] == 2

    default = evaluate_samples(real, {"a": RealCopier(real)}, n_per_class=2)
    assert default.settings["sampling"] == SamplingConfig().to_dict()


def test_sample_report_checks_its_inputs():
    real = _real_rois(4)
    with pytest.raises(DataError, match="at least one model"):
        evaluate_samples(real, {})
    with pytest.raises(DataError, match="2 real HGG"):
        evaluate_samples(real[:3], {"copy": RealCopier(real)}, n_per_class=2)
    small = RealCopier(_real_rois(4, size=8))
    with pytest.raises(DataError, match=r"makes ROIs of shape \(1, 8, 8, 8\)"):
        evaluate_samples(real, {"small": small}, n_per_class=2)


def test_montage_labels_are_not_cut_and_widen_their_column(tmp_path):
    from PIL import ImageDraw

    from tumoraug.viz import save_montage

    volumes = [torch.zeros(1, 16, 16, 16)] * 2
    short = Image.open(save_montage(volumes, tmp_path / "a.png", row_labels=["a", "b"]))
    name = "a_rather_long_model_folder_name HGG"
    long = Image.open(save_montage(volumes, tmp_path / "b.png", row_labels=[name, "b"]))
    needed = ImageDraw.Draw(Image.new("L", (1, 1))).textlength(name)
    assert long.width - short.width >= needed - 70
    assert long.width > short.width
