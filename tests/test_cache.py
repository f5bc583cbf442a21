"""ROI cache: manifest, re-use, workers, bad subjects, ROIDataset in loaders, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torchio as tio
from typer.testing import CliRunner

from tumoraug import __version__
from tumoraug.cli import app
from tumoraug.data import ROIDataset, make_roi_subject, preprocess, read_manifest, subject_tensors
from tumoraug.data.cache import MANIFEST_NAME
from tumoraug.data.phantom import save_nifti
from tumoraug.errors import ConfigError, DataError


@pytest.fixture
def brats(phantom_dir, tmp_path):
    """A private copy of the phantom folder that a test may change."""
    return shutil.copytree(phantom_dir, tmp_path / "brats")


def test_manifest_records_every_subject(roi_cache, phantom_dir):
    manifest = read_manifest(roi_cache)
    assert manifest["size"] == 16 and manifest["modalities"] == ["flair"]
    assert manifest["tumoraug_version"] == __version__
    assert manifest["failed"] == []
    subjects = manifest["subjects"]
    assert [e["subject"] for e in subjects] == [
        *(f"Phantom_HGG_{i:03d}" for i in range(3)),
        *(f"Phantom_LGG_{i:03d}" for i in range(3)),
    ]
    entry = subjects[0]
    assert entry["grade"] == "HGG" and entry["label"] == 1
    assert entry["shape"] == [1, 16, 16, 16]
    assert set(entry["sources"]) == {"flair", "seg"}
    assert entry["sources"]["flair"].endswith("Phantom_HGG_000_flair.nii.gz")
    assert len(entry["input_sha256"]) == 64 and len(entry["sha256"]) == 64
    assert entry["bytes"] == (roi_cache / entry["file"]).stat().st_size
    assert entry["tumoraug_version"] == __version__
    assert (roi_cache / entry["file"]).is_file()
    assert sorted(p.name for p in roi_cache.iterdir()) == sorted(
        [MANIFEST_NAME] + [e["file"] for e in subjects]
    )


def test_roi_dataset_items(roi_cache):
    dataset = ROIDataset(roi_cache)
    assert len(dataset) == 6
    assert dataset.labels == [1, 1, 1, 0, 0, 0]
    item = dataset[4]
    assert isinstance(item, tio.Subject)
    assert isinstance(item["image"], tio.ScalarImage) and isinstance(item["seg"], tio.LabelMap)
    image, seg = item["image"].data, item["seg"].data
    assert image.shape == (1, 16, 16, 16) and image.dtype == torch.float32
    assert seg.shape == (1, 16, 16, 16) and seg.dtype == torch.uint8
    assert image.min() >= -1 and image.max() <= 1 and image.min() == -1
    assert (seg > 0).any() and set(seg.unique().tolist()) <= {0, 1, 2, 4}
    assert item["label"] == 0 and item["grade"] == "LGG" and item["subject_id"] == "Phantom_LGG_001"
    assert dataset[-1]["subject_id"] == "Phantom_LGG_002"
    with pytest.raises(IndexError):
        dataset[6]


def test_second_run_skips_unchanged_subjects(brats, tmp_path):
    out = tmp_path / "rois"
    first = preprocess(brats, out, size=16)
    assert len(first.processed) == 6 and first.skipped == []
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    second = preprocess(brats, out, size=16)
    assert second.processed == [] and len(second.skipped) == 6
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")} == before
    # change one input: only that subject is redone
    seg_path = brats / "LGG" / "Phantom_LGG_002" / "Phantom_LGG_002_seg.nii.gz"
    from tumoraug.data import load_volume

    seg = load_volume(seg_path, segmentation=True)
    seg[seg == 2] = 0
    save_nifti(seg, seg_path)
    third = preprocess(brats, out, size=16)
    assert third.processed == ["Phantom_LGG_002"] and len(third.skipped) == 5
    # other settings: everything is redone
    fourth = preprocess(brats, out, size=8)
    assert len(fourth.processed) == 6
    assert fourth.warnings and "is larger than the 8³ ROI" in fourth.warnings[0][1]
    assert any(e["warnings"] for e in read_manifest(out)["subjects"])
    assert read_manifest(out)["size"] == 8 and ROIDataset(out)[0]["image"].shape == (1, 8, 8, 8)


def test_workers_give_the_same_cache(brats, tmp_path, roi_cache):
    report = preprocess(brats, tmp_path / "rois", size=16, workers=2)
    assert len(report.processed) == 6
    hashes = [e["sha256"] for e in read_manifest(tmp_path / "rois")["subjects"]]
    assert hashes == [e["sha256"] for e in read_manifest(roi_cache)["subjects"]]


def test_several_modalities_become_channels(phantom_dir, tmp_path):
    preprocess(phantom_dir, tmp_path / "rois", size=16, modalities="flair,t1ce,t2")
    item = ROIDataset(tmp_path / "rois")[0]
    assert item["image"].shape == (3, 16, 16, 16)
    assert read_manifest(tmp_path / "rois")["modalities"] == ["flair", "t1ce", "t2"]


def break_subjects(brats):
    """Two bad subjects: a missing FLAIR and an empty tumor mask."""
    (brats / "HGG" / "Phantom_HGG_001" / "Phantom_HGG_001_flair.nii.gz").unlink()
    seg = brats / "LGG" / "Phantom_LGG_000" / "Phantom_LGG_000_seg.nii.gz"
    save_nifti(np.zeros((48, 48, 32), np.uint8), seg)
    return seg


def test_bad_subjects_are_reported_and_the_rest_goes_on(brats, tmp_path):
    seg = break_subjects(brats)
    report = preprocess(brats, tmp_path / "rois", size=16, workers=2)
    assert len(report.processed) == 4
    failed = dict(report.failed)
    assert set(failed) == {"Phantom_HGG_001", "Phantom_LGG_000"}
    assert "missing flair file" in failed["Phantom_HGG_001"]
    assert (
        str(seg) in failed["Phantom_LGG_000"] and "tumor mask is empty" in failed["Phantom_LGG_000"]
    )
    manifest = read_manifest(tmp_path / "rois")
    assert [f["subject"] for f in manifest["failed"]] == ["Phantom_HGG_001", "Phantom_LGG_000"]
    assert len(ROIDataset(tmp_path / "rois")) == 4


def test_strict_stops_at_the_first_bad_subject(brats, tmp_path):
    break_subjects(brats)
    with pytest.raises(DataError, match="missing flair file for subject Phantom_HGG_001"):
        preprocess(brats, tmp_path / "rois", size=16, strict=True)


def test_unknown_grade_is_a_bad_subject_not_a_crash(tmp_path, phantom_dir):
    flat = tmp_path / "flat"
    for subject in ("Phantom_HGG_000", "Phantom_LGG_000"):
        shutil.copytree(next(phantom_dir.glob(f"*/{subject}")), flat / subject)
    (flat / "grades.csv").write_text("subject,grade\nPhantom_HGG_000,HGG\nPhantom_LGG_000,GBM\n")
    report = preprocess(flat, tmp_path / "rois", size=16)
    assert report.processed == ["Phantom_HGG_000"]
    assert "unknown grade 'GBM'" in dict(report.failed)["Phantom_LGG_000"]
    with pytest.raises(DataError, match=r"grades\.csv, line 3: unknown grade"):
        preprocess(flat, tmp_path / "rois2", size=16, strict=True)


def test_bad_settings_are_config_errors(phantom_dir, tmp_path):
    with pytest.raises(ConfigError, match="size"):
        preprocess(phantom_dir, tmp_path, size=4)
    with pytest.raises(ConfigError, match="workers"):
        preprocess(phantom_dir, tmp_path, workers=0)
    with pytest.raises(ConfigError, match="unknown modality"):
        preprocess(phantom_dir, tmp_path, modalities="dwi")


def test_cache_read_errors(roi_cache, tmp_path):
    with pytest.raises(DataError, match="no ROI cache manifest"):
        ROIDataset(tmp_path)
    copy = shutil.copytree(roi_cache, tmp_path / "copy")
    (copy / "Phantom_HGG_000.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"Phantom_HGG_000\.safetensors: cannot read cached ROI"):
        ROIDataset(copy)[0]
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["format_version"] = 99
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="format version 99"):
        ROIDataset(copy)


def test_dataloader_with_two_workers(roi_cache):
    loader = torch.utils.data.DataLoader(ROIDataset(roi_cache), batch_size=4, num_workers=2)
    batches = list(loader)
    assert [len(b["subject_id"]) for b in batches] == [4, 2]
    image, seg, label = subject_tensors(batches[0])
    assert image.shape == (4, 1, 16, 16, 16) and image.dtype == torch.float32
    assert seg.shape == (4, 1, 16, 16, 16) and seg.dtype == torch.long
    assert label.tolist() == [1, 1, 1, 0]
    assert batches[1]["grade"] == ["LGG", "LGG"]


def test_torchio_transforms_loader_and_queue(roi_cache):
    dataset = ROIDataset(roi_cache, transform=tio.RandomFlip(axes=(0,), flip_probability=1.0))
    assert isinstance(dataset, tio.SubjectsDataset)
    flipped = dataset[0]["image"].data
    plain = ROIDataset(roi_cache)[0]["image"].data
    assert torch.equal(flipped, plain.flip(1))
    batch = next(iter(tio.SubjectsLoader(dataset, batch_size=2)))
    assert batch["image"][tio.DATA].shape == (2, 1, 16, 16, 16)
    queue = tio.Queue(dataset, max_length=8, samples_per_volume=2, sampler=tio.UniformSampler(8))
    patches = next(iter(torch.utils.data.DataLoader(queue, batch_size=4, num_workers=0)))
    assert patches["image"][tio.DATA].shape == (4, 1, 8, 8, 8)
    assert len(queue) == 12


def test_subject_tensors_accepts_items_batches_and_tuples():
    image = torch.rand(2, 8, 8, 8) * 2 - 1
    item = make_roi_subject(image, "HGG", subject_id="x")
    x, seg, label = subject_tensors(item)
    assert x.shape == (1, 2, 8, 8, 8) and seg.shape == (1, 1, 8, 8, 8) and label.tolist() == [1]
    x, seg, label = subject_tensors((image, "LGG"))
    assert x.shape == (1, 2, 8, 8, 8) and (seg == 0).all() and label.tolist() == [0]
    x, seg, label = subject_tensors((image[None].repeat(3, 1, 1, 1, 1), torch.tensor([0, 1, 1])))
    assert x.shape == (3, 2, 8, 8, 8) and seg.shape == (3, 1, 8, 8, 8)
    assert label.tolist() == [0, 1, 1]
    with pytest.raises(DataError, match="cannot read an item"):
        subject_tensors(image)
    with pytest.raises(DataError, match="2 labels for a batch of 3"):
        subject_tensors((torch.zeros(3, 1, 4, 4, 4), [0, 1]))


def test_cli_preprocess_summary_and_skip(phantom_dir, tmp_path):
    out = tmp_path / "rois"
    args = ["preprocess", str(phantom_dir), str(out), "--size", "16", "--workers", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "6 ROIs in" in result.stdout and "6 processed" in result.stdout
    again = CliRunner().invoke(app, args)
    assert "6 unchanged" in again.stdout


def test_cli_preprocess_reports_bad_subjects(brats, tmp_path):
    break_subjects(brats)
    args = ["preprocess", str(brats), str(tmp_path / "rois"), "--size", "16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0
    assert "2 failed" in result.stdout
    assert "failed: Phantom_HGG_001" in result.output
    strict = CliRunner().invoke(app, [*args, "--strict"])
    assert strict.exit_code == 1 and "error:" in strict.output


def test_cli_preprocess_empty_folder_is_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["preprocess", str(tmp_path / "empty"), str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "error:" in result.output and "the folder is empty" in result.output


def test_items_keep_the_seg_uint8_through_torchio(roi_cache):
    image = torch.zeros(1, 8, 8, 8)
    seg = torch.zeros(1, 8, 8, 8, dtype=torch.int64)
    seg[0, 2:5, 2:5, 2:5] = 4
    item = make_roi_subject(image, "HGG", seg)
    assert item["seg"].data.dtype == torch.uint8 and torch.equal(item["seg"].data.long(), seg)
    with pytest.raises(DataError, match=r"0\.\.255.*got 0\.\.300"):
        make_roi_subject(image, "HGG", seg * 75)
    flipped = tio.Compose([tio.RandomFlip(), tio.CropOrPad(10)])(ROIDataset(roi_cache)[0])
    assert flipped["seg"].data.dtype == torch.uint8
    batch = next(iter(tio.SubjectsLoader(ROIDataset(roi_cache), batch_size=2)))
    assert batch["seg"][tio.DATA].dtype == torch.uint8
    assert subject_tensors(batch)[1].dtype == torch.long  # what losses take
