"""Reliability catalogue, generation and exports (issue 11): one test per failure found by
trying bad inputs, kills and concurrent runs, named after the failure. Each asserts the
exact outcome: a one-line error naming the option or file, exit code 1 without a traceback,
and the files on disk unchanged, or the documented recovery."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from typer.testing import CliRunner

from cli_checks import failed_cleanly, tree
from tumoraug import SamplingConfig
from tumoraug.checkpoint import LOCK_NAME, atomic_write_json
from tumoraug.cli import app
from tumoraug.errors import CheckpointError, DataError
from tumoraug.export import generate_to_folder
from tumoraug.generator import TumorGenerator

FAST = ["--steps", "2", "--device", "cpu"]
runner = CliRunner()


def generate(model: Path, out: Path, *args: str):
    return runner.invoke(
        app, ["generate", "--model", str(model), "--label", "HGG", "--out", str(out), *FAST, *args]
    )


@pytest.fixture(scope="module")
def done(tiny_model_dir, tmp_path_factory):
    """A complete folder of 3 HGG ROIs (seed 0), to copy from."""
    out = tmp_path_factory.mktemp("done") / "out"
    assert generate(tiny_model_dir, out, "--n", "3", "--batch-size", "2").exit_code == 0
    return out


def copy(folder: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(folder, to)
    return to


# -- silent NaN -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("--guidance", "nan", "guidance_scale"),
        ("--guidance", "inf", "guidance_scale"),
        ("--temperature", "nan", "temperature"),
    ],
)
def test_generate_guidance_or_temperature_nan_inf_is_one_clean_line(
    tiny_model_dir, tmp_path, option, value, field
):
    result = generate(tiny_model_dir, tmp_path / "out", option, value)
    failed_cleanly(result, f"SamplingConfig.{field}", "finite number", f"(CLI: {option})")
    assert not (tmp_path / "out").exists()


def test_a_manifest_never_holds_bare_nan_or_infinity(tmp_path):
    for bad in (math.nan, math.inf):
        with pytest.raises(DataError, match=r"manifest\.json: refusing .* NaN or Infinity"):
            atomic_write_json(tmp_path / "manifest.json", {"settings": {"guidance_scale": bad}})
    assert not list(tmp_path.iterdir())


class NaNSettingsSource:
    """A third-party Source whose settings hold NaN (SamplingConfig refuses them itself)."""

    model_id, device = "nan-source", "cpu"
    settings: ClassVar[dict[str, float]] = {"guidance_scale": math.nan}

    def volumes(self, labels, seeds):
        return torch.zeros(len(labels), 1, 16, 16, 16)


def test_generate_to_folder_refuses_nan_settings_before_writing_a_file(tmp_path):
    with pytest.raises(DataError, match="NaN or Infinity"):
        generate_to_folder(NaNSettingsSource(), "HGG", tmp_path / "out", n=2)
    assert not (tmp_path / "out").exists()


def broken_tokenizer(tiny_model_dir: Path):
    generator = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu").load()
    tokenizer = generator.tokenizer
    with torch.no_grad():
        next(tokenizer.decoder.parameters()).fill_(math.nan)
    return tokenizer, generator.transformer


def test_a_model_that_decodes_nan_is_refused_at_generation(tiny_model_dir, tmp_path):
    generator = TumorGenerator(*broken_tokenizer(tiny_model_dir), device="cpu")
    with pytest.raises(CheckpointError, match="non-finite values"):
        generator.generate("HGG", n=1, sampling=SamplingConfig(steps=2))
    with pytest.raises(CheckpointError, match="non-finite"):
        generate_to_folder(generator, "HGG", tmp_path / "out", sampling=SamplingConfig(steps=2))
    assert not (tmp_path / "out").exists()  # the folder it created is gone again


def test_a_model_folder_with_nan_weights_is_refused_and_leaves_no_folder(tiny_model_dir, tmp_path):
    folder = TumorGenerator(*broken_tokenizer(tiny_model_dir), device="cpu").save_pretrained(
        tmp_path / "nan-model"
    )  # weights hash-matching, but NaN
    result = generate(folder, tmp_path / "out")
    failed_cleanly(result, "NaN")
    assert not (tmp_path / "out").exists()


# -- data loss and corruption ---------------------------------------------------------------


def test_a_second_generate_into_a_locked_folder_is_refused(tiny_model_dir, done, tmp_path):
    out = copy(done, tmp_path / "out")
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}
    (out / LOCK_NAME).write_text(json.dumps(holder))
    before = tree(out)
    result = generate(tiny_model_dir, out, "--n", "1", "--seed", "7", "--overwrite")
    failed_cleanly(result, LOCK_NAME, "another tumoraug run", f"pid {os.getpid()}")
    assert tree(out) == before


def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny_model_dir, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    holder = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then"}
    (out / LOCK_NAME).write_text(json.dumps(holder))
    result = generate(tiny_model_dir, out, "--n", "1")
    assert result.exit_code == 0, result.output
    assert not (out / LOCK_NAME).exists()


KILLER = """
    import contextlib, os, signal, sys
    import torch
    import tumoraug.export as export
    from tumoraug import SamplingConfig

    torch.set_num_threads(1)
    real = export.atomic_path

    @contextlib.contextmanager
    def dying(path):
        with real(path) as tmp:
            if path.name.startswith("0002_"):  # mid-write of the third ROI
                tmp.write_bytes(b"half a file")
                os.kill(os.getpid(), signal.SIGKILL)
            yield tmp

    export.atomic_path = dying
    export.generate_to_folder(
        sys.argv[1], "HGG", sys.argv[2], n=3, batch_size=2,
        sampling=SamplingConfig(steps=2), progress=False,
    )
"""


@pytest.fixture(scope="module")
def killed(tiny_model_dir, tmp_path_factory):
    """A folder left by a run killed with SIGKILL while writing its third ROI."""
    root = tmp_path_factory.mktemp("killed")
    script = root / "killer.py"
    script.write_text(textwrap.dedent(KILLER))
    out = root / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(out)], env=env)
    assert code.returncode == -9
    return out


def test_a_run_killed_with_kill_9_is_completed_by_the_same_command(
    tiny_model_dir, killed, done, tmp_path
):
    out = copy(killed, tmp_path / "out")
    left = sorted(p.name for p in out.iterdir())
    assert LOCK_NAME in left and any(name.endswith(".tmp") for name in left)
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    result = generate(tiny_model_dir, out, "--n", "3", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert f"wrote 1 ROIs to {out} (2 already there)" in result.output
    assert sorted(tree(out)) == sorted(tree(done))  # no .tmp, no lock left
    assert tree(out) == tree(done)  # bit for bit what an uninterrupted run writes


def test_overwrite_on_a_folder_left_by_kill_9_leaves_no_temporary_and_no_lock(
    tiny_model_dir, killed, tmp_path
):
    out = copy(killed, tmp_path / "out")
    result = generate(tiny_model_dir, out, "--n", "1", "--seed", "3", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["0000_HGG.nii.gz", "manifest.json",
                                                     "preview.png"]  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["settings"]["seed"] == 3


def test_an_interrupted_folder_rerun_with_other_settings_says_what_to_do(
    tiny_model_dir, killed, tmp_path
):
    out = copy(killed, tmp_path / "out")
    (out / LOCK_NAME).unlink()  # keep the hashes comparable: only the stale lock would go
    for stale in out.glob(".*.tmp"):
        stale.unlink()
    before = tree(out)
    result = generate(tiny_model_dir, out, "--n", "3", "--seed", "5")
    failed_cleanly(result, "interrupted run with other settings", "seed: 0 there, 5 now",
                   "re-run it with the options it was started with", "--overwrite")  # fmt: skip
    assert tree(out) == before


def test_overwrite_with_a_smaller_n_removes_the_old_files(tiny_model_dir, done, tmp_path):
    out = copy(done, tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    result = generate(tiny_model_dir, out, "--n", "1", "--seed", "4", "--overwrite")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["0000_HGG.nii.gz", "manifest.json", "notes.txt", "preview.png"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["file"] for s in manifest["samples"]] == ["0000_HGG.nii.gz"]
    assert manifest["complete"] is True and manifest["settings"]["seed"] == 4


def test_generate_bank_new_and_out_existing_checks_both_before_sampling(
    tiny_model_dir, done, tmp_path
):
    out = copy(done, tmp_path / "out")
    before = tree(out)
    result = generate(tiny_model_dir, out, "--n", "1", "--seed", "9", "--bank",
                      str(tmp_path / "new.npy"))  # fmt: skip
    failed_cleanly(result, str(out), "would overwrite", "--overwrite")
    assert tree(out) == before
    assert not (tmp_path / "new.npy").exists() and not (tmp_path / "new.json").exists()


def test_generate_bank_existing_and_out_new_checks_both_before_sampling(tiny_model_dir, tmp_path):
    bank = tmp_path / "bank.npy"
    first = runner.invoke(app, ["generate", "--model", str(tiny_model_dir), "--label", "HGG",
                                "--n", "1", "--bank", str(bank), *FAST])  # fmt: skip
    assert first.exit_code == 0, first.output
    before = tree(tmp_path)
    result = generate(tiny_model_dir, tmp_path / "new", "--n", "1", "--bank", str(bank))
    failed_cleanly(result, str(bank), "already exists", "(CLI: --overwrite)")
    assert tree(tmp_path) == before and not (tmp_path / "new").exists()


def test_the_same_command_on_a_complete_folder_changes_nothing(tiny_model_dir, done, tmp_path):
    out = copy(done, tmp_path / "out")
    before = tree(out)
    result = generate(tiny_model_dir, out, "--n", "3", "--batch-size", "3")
    assert result.exit_code == 0 and f"{out} already holds these 3 ROIs" in result.output
    assert tree(out) == before


def test_a_file_edited_after_a_complete_run_is_not_replaced_silently(
    tiny_model_dir, done, tmp_path
):
    out = copy(done, tmp_path / "out")
    (out / "0001_HGG.nii.gz").write_bytes(b"edited by hand")
    before = tree(out)
    result = generate(tiny_model_dir, out, "--n", "3")
    failed_cleanly(result, "0001_HGG.nii.gz", "differ from what manifest.json records",
                   "--overwrite")  # fmt: skip
    assert tree(out) == before


# -- tracebacks and smaller gaps ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["--steps", "0"], ["SamplingConfig.steps", "an int >= 1, got 0 (CLI: --steps)"]),
        (["--temperature", "-1"], ["SamplingConfig.temperature", "got -1.0 (CLI: --temperature)"]),
        (["--batch-size", "0"], ["batch_size (CLI: --batch-size)", ">= 1, got 0"]),
        (["--n", "0"], ["n (CLI: --n)", ">= 1, got 0"]),
    ],
)
def test_generate_steps_0_temperature_minus_1_batch_size_0_are_clean_and_leave_no_folder(
    tiny_model_dir, tmp_path, args, phrases
):
    result = generate(tiny_model_dir, tmp_path / "out", *args)
    failed_cleanly(result, *phrases)
    assert not (tmp_path / "out").exists()
