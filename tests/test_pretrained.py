"""The embedded demo model: loads offline, generates both grades, is the CLI's default."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest
import torch
from typer.testing import CliRunner

import tumoraug.pretrained as pretrained
from tumoraug import TumorGenerator
from tumoraug.cli import app
from tumoraug.errors import CheckpointError
from tumoraug.sampling import SamplingConfig

REFERENCE = Path(__file__).parent / "data" / "demo_samples_sha256.json"


@pytest.fixture(scope="module")
def demo() -> TumorGenerator:
    return TumorGenerator.from_pretrained(pretrained.demo_model_path(), device="cpu")


def test_demo_folder_is_complete_small_and_documented():
    folder = pretrained.demo_model_path()
    for name in ("tumoraug.json", "tokenizer/config.json", "transformer/model.safetensors"):
        assert (folder / name).is_file(), name
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    card = (folder / "README.md").read_text()
    assert "phantom" in card and "not" in card and "BraTS" in card


def test_demo_generates_both_grades_deterministically(demo):
    first = demo.generate(["HGG", "LGG"], seed=[5, 6], sampling=SamplingConfig(steps=4))
    again = demo.generate(["HGG", "LGG"], seed=[5, 6], sampling=SamplingConfig(steps=4))
    size = demo.roi_size
    assert first.shape == (2, demo.in_channels, size, size, size)
    assert first.dtype == torch.float32
    assert first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("case", sorted(json.loads(REFERENCE.read_text())["samples"]))
def test_demo_samples_are_those_recorded_when_it_was_shipped(demo, case):
    """Same weights, same default settings, same seeds: the same tokens and voxels
    (recorded by scripts/record_demo_checksums.py)."""
    expected = json.loads(REFERENCE.read_text())["samples"][case]
    grade = case.split("/")[0]
    assert pretrained.sample_checksums(demo, grade, expected["seeds"]) == expected


def test_generate_cli_defaults_to_the_demo(tmp_path):
    out = tmp_path / "synthetic"
    args = ["generate", "--label", "HGG", "--n", "2", "--out", str(out), "--steps", "4"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    files = [sample["file"] for sample in manifest["samples"]]
    assert len(files) == 2 and (out / "preview.png").is_file()
    assert nib.load(out / files[0]).shape[:3] == (32, 32, 32)


def test_missing_demo_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "DEMO_DIR", tmp_path / "absent")
    with pytest.raises(CheckpointError, match="embedded demo model is missing"):
        pretrained.demo_model_path()
