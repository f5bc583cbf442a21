"""Export: NIfTI bytes, the folder export and its manifest, write_samples, the model card."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from tumoraug import SamplingConfig
from tumoraug.augment import SyntheticBank
from tumoraug.errors import ConfigError, DataError
from tumoraug.export import generate_to_folder, model_card, nifti_bytes, write_samples

FAST = SamplingConfig(steps=2)


def test_nifti_bytes_are_reproducible_and_keep_channels(tmp_path):
    volume = torch.linspace(-1, 1, 2 * 4 * 5 * 6).reshape(2, 4, 5, 6)
    packed = nifti_bytes(volume, "nii.gz")
    assert packed == nifti_bytes(volume.clone(), "nii.gz")  # no timestamp in the gzip
    assert gzip.decompress(packed) == nifti_bytes(volume, "nii")
    (tmp_path / "roi.nii.gz").write_bytes(packed)
    image = nib.load(tmp_path / "roi.nii.gz")
    assert image.shape == (4, 5, 6, 2) and np.allclose(image.affine, np.eye(4))
    assert np.array_equal(np.asarray(image.dataobj), np.moveaxis(volume.numpy(), 0, -1))
    with pytest.raises(ConfigError, match="output format"):
        nifti_bytes(volume, "png")


def test_folder_manifest_records_the_sampling_config(generator, tmp_path):
    sampling = SamplingConfig(steps=2, guidance_scale=2.0)
    manifest = generate_to_folder(
        generator, "LGG", tmp_path / "out", n=3, seed=4, sampling=sampling, batch_size=2
    )
    assert manifest["settings"] == {
        **sampling.to_dict(),
        "seed": 4,
        "batch_size": 2,
        "device": "cpu",
    }
    assert manifest["model"] == str(generator.source) and manifest["roi_size"] == 16
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert (tmp_path / "out" / "preview.png").stat().st_size > 0
    with pytest.raises(DataError, match="overwrite"):
        generate_to_folder(generator, "LGG", tmp_path / "out", n=3, sampling=FAST)


def test_a_bank_exports_with_its_own_settings(generator, tmp_path):
    bank = SyntheticBank.build(generator, 4, None, tmp_path / "bank.npy", sampling=FAST)
    manifest = generate_to_folder(bank, ["HGG", "LGG"], tmp_path / "out")
    assert manifest["settings"]["steps"] == 2 and manifest["settings"]["device"] == "cpu"
    assert manifest["model"] == str(generator.source) and len(manifest["samples"]) == 2


def test_write_samples_writes_files_and_a_bank_of_the_same_rois(tiny_model_dir, tmp_path):
    lines = write_samples(
        str(tiny_model_dir), ["HGG", "", "LGG"], n=2, out_dir=tmp_path / "out",
        bank=tmp_path / "bank.npy", seed=3, sampling=FAST, batch_size=3, device="cpu",
    )  # fmt: skip
    assert lines == [
        f"wrote a bank of 4 ROIs to {tmp_path / 'bank.npy'}",
        f"wrote 4 ROIs to {tmp_path / 'out'}",
    ]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    bank = SyntheticBank.open(tmp_path / "bank.npy")
    assert bank.labels == [s["label"] for s in manifest["samples"]] == [1, 1, 0, 0]
    assert bank.seeds == [s["seed"] for s in manifest["samples"]]
    first = np.asarray(nib.load(tmp_path / "out" / manifest["samples"][0]["file"]).dataobj)
    assert np.abs(bank.read([0])[0, 0].numpy() - first).max() <= 0.5 / 32767 + 1e-7
    with pytest.raises(ConfigError, match="--bank FILE"):
        write_samples(str(tiny_model_dir), "HGG")


def test_model_card_names_the_roi_size():
    card = model_card(32, 1)
    assert card.startswith("---\nlibrary_name: tumoraug") and "32³" in card
    assert "TumorGenerator.from_pretrained" in card
