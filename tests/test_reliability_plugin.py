"""Reliability catalogue, the plugin surface (issue 11): datasets, transforms and banks given
bad arguments. One test per failure, named after it, asserting the exact error (type and
message naming the argument) and that nothing was changed."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torchio as tio
from typer.testing import CliRunner

from tumoraug import SamplingConfig
from tumoraug.augment import (
    RandomSyntheticReplace,
    SyntheticBank,
    SyntheticReplace,
    SyntheticTumorDataset,
)
from tumoraug.cli import app
from tumoraug.errors import ConfigError, DataError
from tumoraug.generator import TumorGenerator

FAST = SamplingConfig(steps=2)


@pytest.fixture(scope="module")
def bank(generator, tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.npy"
    return SyntheticBank.build(generator, 4, None, path, seed=0, sampling=FAST)


@pytest.fixture
def lazy(tiny_model_dir):
    """A generator whose weights are not loaded yet: a refusal must come before loading."""
    return TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")


def t1_only() -> tio.Subject:
    return tio.Subject(t1=tio.ScalarImage(tensor=torch.full((1, 16, 16, 16), 0.5)), label=1)


@pytest.mark.parametrize("length", [2.5, "3", True, -1])
def test_dataset_length_that_is_not_a_count_is_a_config_error(generator, length):
    with pytest.raises(ConfigError, match=rf"SyntheticTumorDataset: length must be an int >= 0, "
                                          rf"got {length!r}"):  # fmt: skip
        SyntheticTumorDataset(generator, length)


@pytest.mark.parametrize("field", ["block_size", "cache_blocks"])
def test_dataset_block_size_or_cache_blocks_0_is_a_config_error(generator, field):
    with pytest.raises(ConfigError, match=rf"SyntheticTumorDataset: {field} must be an int >= 1"):
        SyntheticTumorDataset(generator, 3, **{field: 0})


def test_index_minus_4_of_a_3_item_dataset_names_index_minus_4(lazy):
    dataset = SyntheticTumorDataset(lazy, 3, sampling=FAST)
    with pytest.raises(IndexError, match=r"^index -4 out of range for 3 synthetic items$"):
        dataset[-4]
    with pytest.raises(IndexError, match=r"^index 3 out of range for 3 synthetic items$"):
        dataset[3]
    assert not lazy.is_loaded  # refused before any generation


@pytest.mark.parametrize("transform", [RandomSyntheticReplace, SyntheticReplace])
def test_include_naming_an_image_the_subject_lacks_raises(bank, transform):
    kwargs = {"p": 1.0} if transform is RandomSyntheticReplace else {"label": 1, "seed": 0}
    replace = transform(bank, include=["image"], **kwargs)
    subject = t1_only()
    message = rf"{transform.__name__}: include names 'image', which the subject does not have"
    with pytest.raises(DataError, match=message + r" \(entries: t1, label\)"):
        replace(subject)
    assert torch.equal(subject.t1.data, t1_only().t1.data)


def test_include_naming_a_present_image_still_replaces_it(bank):
    out = RandomSyntheticReplace(bank, p=1.0, include=["t1"])(t1_only())
    assert not torch.equal(out.t1.data, t1_only().t1.data)


def test_bank_already_exists_error_names_the_cli_option(generator, bank):
    before = hashlib.sha256(bank.path.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=r"pass overwrite=True \(CLI: --overwrite\)"):
        SyntheticBank.build(generator, 2, None, bank.path, sampling=FAST)
    assert hashlib.sha256(bank.path.read_bytes()).hexdigest() == before


def test_cli_generate_into_an_existing_bank_says_overwrite(tiny_model_dir, bank):
    before = bank.path.read_bytes()
    args = ["generate", "--model", str(tiny_model_dir), "--label", "HGG", "--bank",
            str(bank.path), "--steps", "2", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1
    assert "Traceback" not in result.output and "(CLI: --overwrite)" in result.output
    assert bank.path.read_bytes() == before


@pytest.mark.parametrize(
    ("field", "value"), [("n", 0), ("batch_size", 0), ("workers", 0), ("start", -1), ("n", 2.5)]
)
def test_bank_build_bad_counts_name_the_argument(generator, tmp_path, field, value):
    kwargs = {field: value}
    n = kwargs.pop("n", 2)
    with pytest.raises(ConfigError, match=rf"SyntheticBank\.build: {field} must be an int"):
        SyntheticBank.build(generator, n, None, tmp_path / "bank.npy", sampling=FAST, **kwargs)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("field", "value"), [("steps", 0), ("temperature", -1)])
def test_sampling_steps_0_or_temperature_minus_1_fail_at_construction(lazy, field, value):
    with pytest.raises(ConfigError, match=rf"SamplingConfig\.{field}: expected"):
        SyntheticTumorDataset(lazy, 2, sampling=SamplingConfig(**{field: value}))
    assert not lazy.is_loaded


def test_a_bank_item_index_out_of_range_names_the_bank(bank):
    with pytest.raises(IndexError, match=rf"{bank.path}: index out of range for 4 bank items"):
        bank.read(np.array([4]))
