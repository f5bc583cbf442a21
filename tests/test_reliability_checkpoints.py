"""Reliability catalogue, files side: checkpoints, training state and file modes (issue 11).

One test per failure, named after it; each asserts the exact outcome (a `CheckpointError`
naming the file and the problem, or the documented behaviour). The table in
docs/reliability.md lists them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import stat

import pytest
import torch
from typer.testing import CliRunner

from tumoraug.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    PretrainedMixin,
    atomic_path,
    atomic_save_tensors,
    atomic_write_json,
    atomic_write_text,
    load_state,
    save_state,
)
from tumoraug.cli import app
from tumoraug.config import Config
from tumoraug.data import preprocess, write_phantom_dataset
from tumoraug.data.phantom import save_nifti
from tumoraug.errors import CheckpointError


@dataclasses.dataclass
class TinyConfig(Config):
    width: int = 3


class Tiny(PretrainedMixin, torch.nn.Module):
    config_class = TinyConfig
    model_type = "tiny-test"

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = torch.nn.Linear(config.width, 2)
        self.norm = torch.nn.LayerNorm(2)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---- files readable by colleagues ------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    """Run the test under this umask (restored afterwards)."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_written_files_get_the_mode_of_a_plain_open_not_0600(umask, tmp_path, phantom_dir):
    with open(tmp_path / "plain.txt", "w") as handle:
        handle.write("reference")
    expected = 0o666 & ~umask
    assert mode(tmp_path / "plain.txt") == expected
    atomic_write_text(tmp_path / "a.txt", "text")
    atomic_write_json(tmp_path / "a.json", {"a": 1})
    atomic_save_tensors({"x": torch.ones(2)}, tmp_path / "a.safetensors")
    with atomic_path(tmp_path / "a.bin") as tmp, open(tmp, "wb") as handle:
        handle.write(b"bytes")
    save_nifti(torch.ones(4, 4, 4).numpy(), tmp_path / "a.nii.gz")
    Tiny(TinyConfig()).save_pretrained(tmp_path / "model")
    save_state({"step": 1, "t": torch.zeros(2)}, tmp_path / "model")
    write_phantom_dataset(tmp_path / "brats2020", 1, shape=(16, 16, 16), layout="brats2020")
    preprocess(phantom_dir, tmp_path / "rois", size=16)
    args = ["preprocess", str(phantom_dir), str(tmp_path / "rois2"), "--size", "16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 36  # 5 atomic writers, 2 folders, a phantom, 2 caches
    assert {str(p.relative_to(tmp_path)): mode(p) for p in written} == {
        str(p.relative_to(tmp_path)): expected for p in written
    }


def test_generated_folders_and_banks_get_the_mode_of_a_plain_open_not_0600(
    umask, tiny_model_dir, tmp_path
):
    args = ["generate", "--model", str(tiny_model_dir), "--label", "HGG", "--n", "2", "--steps",
            "2", "--device", "cpu", "--out", str(tmp_path / "out"), "--bank",
            str(tmp_path / "bank.npy")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["bank.json", "bank.npy", "out/0000_HGG.nii.gz", "out/0001_HGG.nii.gz",
                       "out/manifest.json", "out/preview.png"]  # fmt: skip
    assert {name: mode(tmp_path / name) for name in written} == dict.fromkeys(
        written, 0o666 & ~umask
    )
    assert mode(tmp_path / "out") == 0o777 & ~umask


# ---- non-finite weights ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused_at_load(tmp_path, bad):
    model = Tiny(TinyConfig())
    with torch.no_grad():
        model.norm.bias[1] = bad
    folder = model.save_pretrained(tmp_path / "model")  # the recorded hash matches the file
    with pytest.raises(CheckpointError) as error:
        Tiny.from_pretrained(folder)
    assert str(error.value).startswith(f"{folder / WEIGHTS_NAME}: tensor 'norm.bias' holds NaN")
    assert "1 of 5 tensors are not finite" in str(error.value)


def test_model_folder_with_nan_weights_does_not_generate(tiny_model_dir, tmp_path):
    from tumoraug.models.vqgan import VQGAN3D

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    tokenizer = VQGAN3D.from_pretrained(folder / "tokenizer")
    with torch.no_grad():
        next(tokenizer.parameters()).fill_(float("nan"))
    tokenizer.save_pretrained(folder / "tokenizer")
    args = ["generate", "--model", str(folder), "--label", "HGG", "--n", "1"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert f"{folder / 'tokenizer' / WEIGHTS_NAME}: tensor " in line and "NaN or Inf" in line
    assert not list(tmp_path.glob("out/*.nii*"))


# ---- training state: hashed like the weights ---------------------------------------------------


def optimizer_state() -> dict:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return {"optimizer": optimizer.state_dict(), "step": 3, "rng": torch.get_rng_state()}


def test_training_state_with_altered_tensors_is_refused(tmp_path):
    save_state(optimizer_state(), tmp_path)
    path = tmp_path / "training_state.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of one tensor: still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as error:
        load_state(tmp_path)
    assert str(error.value).startswith(f"{path}: SHA-256 does not match the one recorded in")
    assert "training_state.json" in str(error.value)


def test_training_state_without_a_recorded_hash_is_refused(tmp_path):
    save_state(optimizer_state(), tmp_path)
    json_path = tmp_path / "training_state.json"
    meta = json.loads(json_path.read_text())
    json_path.write_text(json.dumps(meta["state"]))  # the layout before the hash was recorded
    with pytest.raises(CheckpointError, match=rf"{json_path}: not a training state of this"):
        load_state(tmp_path)


def test_training_state_records_the_sha256_of_its_tensors(tmp_path):
    from tumoraug.checkpoint import sha256_file

    save_state(optimizer_state(), tmp_path)
    meta = json.loads((tmp_path / "training_state.json").read_text())
    assert meta["tensors_sha256"] == sha256_file(tmp_path / "training_state.safetensors")
    assert load_state(tmp_path)["step"] == 3


def test_loading_checkpoints_never_unpickles(tmp_path, monkeypatch):
    Tiny(TinyConfig()).save_pretrained(tmp_path / "model")
    save_state(optimizer_state(), tmp_path / "model")

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert isinstance(Tiny.from_pretrained(tmp_path / "model"), Tiny)
    assert load_state(tmp_path / "model")["step"] == 3


# ---- atomic writes ----------------------------------------------------------------------------


def test_interrupted_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / CONFIG_NAME
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME]
