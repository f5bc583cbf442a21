"""Multi-modal ROIs end to end (issue 14): a 4-channel cache trains both stages with the
shape read from its manifest, the model records its modalities, and `tumoraug generate`
writes one NIfTI per modality (BraTS names) or one 4D NIfTI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli_checks import failed_cleanly
from tumoraug.cli import app
from tumoraug.config import TokenizerConfig
from tumoraug.errors import ConfigError, DataError
from tumoraug.export import generate_to_folder
from tumoraug.generator import TumorGenerator
from tumoraug.models.vqgan import VQGAN3D
from tumoraug.training.corpus import tokenizer_fingerprint

runner = CliRunner()
MODALITIES = ["flair", "t1ce", "t2", "t1"]
TRAIN = ["--preset", "tiny", "--steps", "2", "--batch-size", "2", "--device", "cpu"]
GENERATE = ["--label", "HGG,LGG", "--n", "1", "--steps", "2", "--device", "cpu"]


def call(*args: object):
    """The CLI run with ``args`` (paths and numbers as strings)."""
    return runner.invoke(app, [str(a) for a in args])


def invoke(*args: object):
    """`call`, which must succeed."""
    result = call(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """phantom -> preprocess (4 modalities, 16³) -> train-tokenizer -> train-transformer,
    through the CLI, without telling the trainers the ROI size or the channels."""
    root = tmp_path_factory.mktemp("multimodal")
    invoke("phantom", root / "brats", "--per-class", "2", "--shape", "32", "32", "32")
    cache = root / "rois"
    invoke("preprocess", root / "brats", cache, "--modalities", ",".join(MODALITIES), "--size", 16)
    invoke("train-tokenizer", cache, root / "stage1", *TRAIN)
    tokenizer = root / "stage1" / "tokenizer"
    stage2 = ["--data", cache, "--tokenizer", tokenizer, "--out", root / "model"]
    invoke("train-transformer", *stage2, *TRAIN)
    return {"root": root, "cache": cache, "tokenizer": tokenizer, "model": root / "model"}


def test_the_cache_sets_the_shape_and_the_model_records_the_modalities(pipeline):
    config = TokenizerConfig.from_dict(
        json.loads((pipeline["tokenizer"] / "config.json").read_text())["config"]
    )
    assert (config.in_channels, config.roi_size) == (4, 16)
    assert list(config.modalities) == MODALITIES
    folder = json.loads((pipeline["model"] / "tumoraug.json").read_text())
    assert folder["in_channels"] == 4 and folder["modalities"] == MODALITIES
    assert TumorGenerator.from_pretrained(pipeline["model"]).modalities == tuple(MODALITIES)


def test_generate_writes_a_file_per_modality_or_one_4d_file(pipeline):
    split, packed = pipeline["root"] / "split", pipeline["root"] / "4d"
    invoke("generate", "--model", pipeline["model"], *GENERATE, "--out", split)
    invoke("generate", "--model", pipeline["model"], *GENERATE, "--out", packed, "--channels", "4d")
    manifest = json.loads((split / "manifest.json").read_text())
    assert manifest["modalities"] == MODALITIES and manifest["in_channels"] == 4
    first = manifest["samples"][0]
    assert first["files"] == {m: f"0000_HGG_{m}.nii.gz" for m in MODALITIES}
    assert set(first["sha256"]) == set(MODALITIES)
    volumes = json.loads((packed / "manifest.json").read_text())["samples"]
    assert [s["file"] for s in volumes] == ["0000_HGG.nii.gz", "0001_LGG.nii.gz"]
    for sample, whole in zip(manifest["samples"], volumes, strict=True):
        four = np.asarray(nib.load(packed / whole["file"]).dataobj)
        assert four.shape == (16, 16, 16, 4) and -1 <= four.min() <= four.max() <= 1
        for c, modality in enumerate(MODALITIES):
            image = nib.load(split / sample["files"][modality])
            assert image.shape == (16, 16, 16) and np.allclose(image.affine, np.eye(4))
            assert np.array_equal(np.asarray(image.dataobj), four[..., c])  # the same ROI


def test_a_split_folder_is_completed_and_checked_file_by_file(pipeline):
    out = pipeline["root"] / "resumed"
    invoke("generate", "--model", pipeline["model"], *GENERATE, "--out", out)
    t1 = out / "0001_LGG_t1.nii.gz"
    before = t1.read_bytes()
    t1.unlink()
    again = invoke("generate", "--model", pipeline["model"], *GENERATE, "--out", out)
    assert "wrote 1 ROIs" in again.stdout and "(1 already there)" in again.stdout
    assert t1.read_bytes() == before
    done = invoke("generate", "--model", pipeline["model"], *GENERATE, "--out", out)
    assert "already holds these 2 ROIs" in done.stdout
    (out / "0000_HGG_t2.nii.gz").write_bytes(b"edited")
    edited = call("generate", "--model", pipeline["model"], *GENERATE, "--out", out)
    failed_cleanly(edited, "0000_HGG_t2.nii.gz", "--overwrite")


def test_a_roi_size_or_config_that_disagrees_with_the_cache_is_a_clear_error(pipeline, tmp_path):
    cache = pipeline["cache"]
    args = ["train-tokenizer", cache, tmp_path / "out", *TRAIN]
    result = call(*args, "--roi-size", 32)
    failed_cleanly(result, str(cache / "manifest.json"), "--roi-size", "roi_size=32", "16")
    TokenizerConfig.preset("tiny").to_json(tmp_path / "one_channel.json")
    result = call(*args, "--config", tmp_path / "one_channel.json")
    failed_cleanly(result, str(cache / "manifest.json"), "in_channels=1", "not 4")
    assert not (tmp_path / "out").exists()


def test_a_cache_of_other_modalities_is_refused_by_stage_2(pipeline, tmp_path):
    other, brats = tmp_path / "reordered", pipeline["root"] / "brats"
    invoke("preprocess", brats, other, "--modalities", "t1,t2,t1ce,flair", "--size", 16)
    stage2 = ["--data", other, "--tokenizer", pipeline["tokenizer"], "--out", tmp_path / "m"]
    result = call("train-transformer", *stage2, *TRAIN)
    failed_cleanly(result, "t1, t2, t1ce, flair", "flair, t1ce, t2, t1", "--tokenizer")


def test_older_configs_load_and_channel_names_are_checked():
    old = {k: v for k, v in TokenizerConfig.preset("tiny").to_dict().items() if k != "modalities"}
    assert TokenizerConfig.from_dict(old).channel_names == ("flair",)
    assert TokenizerConfig(in_channels=2).channel_names == ("ch0", "ch1")
    with pytest.raises(ConfigError, match="modalities: expected 2 name"):
        TokenizerConfig(in_channels=2, modalities=("flair",))
    with pytest.raises(ConfigError, match="modalities: expected distinct names"):
        TokenizerConfig(in_channels=2, modalities=("flair", "../t1"))


def test_the_channel_names_change_no_fingerprint():
    tokenizer = VQGAN3D(TokenizerConfig.preset("tiny"))
    before = tokenizer_fingerprint(tokenizer)
    tokenizer.config = tokenizer.config.replace(modalities=("t1",))
    assert tokenizer_fingerprint(tokenizer) == before  # older stage-2 runs still resume


class Unnamed:
    """A `Source` of 2-channel volumes that does not name its channels."""

    model_id, settings, device = "unnamed", {}, "cpu"

    def volumes(self, labels, seeds):
        return torch.zeros(len(labels), 2, 8, 8, 8)


def test_unnamed_channels_need_the_4d_layout(tmp_path):
    with pytest.raises(DataError, match=r"unnamed makes ROIs of 2 channels.*--channels 4d"):
        generate_to_folder(Unnamed(), "HGG", tmp_path / "split")
    assert not (tmp_path / "split").exists()
    manifest = generate_to_folder(Unnamed(), "HGG", tmp_path / "4d", channels="4d")
    assert nib.load(tmp_path / "4d" / manifest["samples"][0]["file"]).shape == (8, 8, 8, 2)
    with pytest.raises(ConfigError, match=r"channel layout 'stack'.*--channels"):
        generate_to_folder(Unnamed(), "HGG", tmp_path / "x", channels="stack")
