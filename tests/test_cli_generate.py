"""`tumoraug generate`: files, manifest, preview, clear errors, no silent overwrite, Hub ids."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from tumoraug.cli import app

runner = CliRunner()
FAST = ["--steps", "2", "--guidance", "1.5", "--device", "cpu"]


def run(*args: str):
    return runner.invoke(app, ["generate", *args])


def test_generate_writes_nifti_manifest_and_preview(tiny_model_dir, tmp_path):
    out = tmp_path / "synthetic"
    result = run(
        "--model",
        str(tiny_model_dir),
        "--label",
        "HGG,LGG",
        "--n",
        "2",
        "--out",
        str(out),
        "--seed",
        "3",
        "--batch-size",
        "3",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    files = [s["file"] for s in manifest["samples"]]
    assert files == ["0000_HGG.nii.gz", "0001_HGG.nii.gz", "0002_LGG.nii.gz", "0003_LGG.nii.gz"]
    assert [s["label"] for s in manifest["samples"]] == [1, 1, 0, 0]
    assert manifest["settings"]["steps"] == 2 and manifest["settings"]["seed"] == 3
    assert manifest["model"] == str(tiny_model_dir)
    image = nib.load(out / files[0])
    assert image.shape == (16, 16, 16)
    assert np.allclose(image.affine, np.eye(4))
    data = np.asarray(image.dataobj)
    assert data.min() >= -1 and data.max() <= 1
    assert (out / "preview.png").stat().st_size > 0
    assert "wrote 4 ROIs" in result.stdout


def test_same_seed_same_files_and_no_overwrite(tiny_model_dir, tmp_path):
    args = ["--model", str(tiny_model_dir), "--label", "LGG", "--n", "1", *FAST]
    assert run(*args, "--out", str(tmp_path / "a")).exit_code == 0
    assert run(*args, "--out", str(tmp_path / "b"), "--format", "nii").exit_code == 0
    a = np.asarray(nib.load(tmp_path / "a" / "0000_LGG.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "b" / "0000_LGG.nii").dataobj)
    assert np.array_equal(a, b)
    before = (tmp_path / "a" / "0000_LGG.nii.gz").read_bytes()
    again = run(*args, "--out", str(tmp_path / "a"), "--seed", "9")
    assert again.exit_code == 1
    assert "overwrite" in again.output
    assert (tmp_path / "a" / "0000_LGG.nii.gz").read_bytes() == before
    forced = run(*args, "--out", str(tmp_path / "a"), "--seed", "9", "--overwrite")
    assert forced.exit_code == 0
    assert (tmp_path / "a" / "0000_LGG.nii.gz").read_bytes() != before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label", "GBM"], "unknown tumor grade 'GBM'"),
        (["--label", "HGG", "--format", "png"], "output format"),
        (["--label", "HGG", "--device", "tpu9"], "device"),
    ],
)
def test_clear_errors_for_bad_options(tiny_model_dir, tmp_path, args, message):
    result = run("--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), *args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_clear_errors_for_missing_model_and_unwritable_folder(tiny_model_dir, tmp_path):
    nowhere = run(
        "--model", str(tmp_path / "no-model"), "--label", "HGG", "--out", str(tmp_path / "o")
    )
    assert nowhere.exit_code == 1 and "no such checkpoint folder" in nowhere.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    unwritable = run(
        "--model", str(tiny_model_dir), "--label", "HGG", "--out", str(blocker / "sub"), *FAST
    )
    assert unwritable.exit_code == 1 and "not writable" in unwritable.output


def test_generate_from_hub_id_offline(tiny_model_dir, hub_cache, tmp_path):
    hub_cache(tiny_model_dir, "tumoraug/tiny-demo")
    out = tmp_path / "hub"
    result = run(
        "--model", "tumoraug/tiny-demo", "--label", "HGG", "--n", "1", "--out", str(out), *FAST
    )
    assert result.exit_code == 0, result.output
    local = tmp_path / "local"
    assert (
        run(
            "--model", str(tiny_model_dir), "--label", "HGG", "--n", "1", "--out", str(local), *FAST
        ).exit_code
        == 0
    )
    hub_data = np.asarray(nib.load(out / "0000_HGG.nii.gz").dataobj)
    assert np.array_equal(hub_data, np.asarray(nib.load(local / "0000_HGG.nii.gz").dataobj))
    assert json.loads((out / "manifest.json").read_text())["model"] == "tumoraug/tiny-demo"
    uncached = run("--model", "tumoraug/absent", "--label", "HGG", "--out", str(tmp_path / "x"))
    assert uncached.exit_code == 1 and "local Hub cache" in uncached.output
