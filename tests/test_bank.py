"""Synthetic banks: quantisation round trips, append, shards + merge, the Source interface,
serving, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tumoraug import SamplingConfig
from tumoraug.augment import BankBatches, Source, SyntheticBank, SyntheticTumorDataset, as_source
from tumoraug.augment.storage import INT16_SCALE, dequantize, manifest_path, quantize
from tumoraug.errors import ConfigError, DataError
from tumoraug.generator import TumorGenerator

FAST = SamplingConfig(steps=2)


@pytest.fixture(scope="module")
def reference(generator):
    """What the generator makes for items 0..5 of seed 11 (float32, as the dataset serves)."""
    ds = SyntheticTumorDataset(generator, 6, seed=11, sampling=FAST)
    return ds.labels, ds.volumes(range(6))


def build(generator, path, n=6, labels=None, **kwargs):
    kwargs = {"seed": 11, "sampling": FAST, "batch_size": 4, **kwargs}
    return SyntheticBank.build(generator, n, labels, path, **kwargs)


def test_int16_round_trip_is_bit_exact(generator, reference, tmp_path):
    labels, volumes = reference
    bank = build(generator, tmp_path / "bank.npy")
    assert bank.labels == labels and len(bank) == 6
    stored = np.load(tmp_path / "bank.npy")
    assert stored.dtype == np.int16 and stored.shape == (6, 1, 16, 16, 16)
    served = SyntheticBank.open(tmp_path / "bank.npy").read(range(6))
    assert served.dtype == torch.float32
    # served values re-quantise to exactly what is stored, and sit within 1/32767 of the model
    assert np.array_equal(quantize(served, "int16"), stored)
    assert (served - volumes).abs().max() <= 1 / INT16_SCALE
    assert torch.equal(dequantize(stored), served)
    # building again gives the same bytes
    build(generator, tmp_path / "again.npy")
    assert (tmp_path / "again.npy").read_bytes() == (tmp_path / "bank.npy").read_bytes()
    manifest = json.loads(manifest_path(tmp_path / "bank.npy").read_text())
    assert manifest["scale"] == INT16_SCALE and manifest["settings"] == FAST.to_dict()
    assert manifest["model"] == str(generator.source)


def test_float16_within_tolerance(generator, reference, tmp_path):
    _, volumes = reference
    bank = build(generator, tmp_path / "half.npy", dtype="float16")
    served = bank.read(range(6))
    assert np.load(tmp_path / "half.npy").dtype == np.float16
    assert (served - volumes).abs().max() <= 2**-11
    assert torch.equal(served, volumes.half().float())


def test_dataset_from_bank_serves_without_a_model(generator, reference, tmp_path):
    labels, volumes = reference
    build(generator, tmp_path / "bank.npy")
    ds = SyntheticTumorDataset.from_bank(tmp_path / "bank.npy")
    assert isinstance(ds.source, SyntheticBank) and ds.labels == labels and len(ds) == 6
    item = ds[4]
    assert item.label == labels[4] and item.synthetic is True
    assert item.seed == SyntheticTumorDataset(generator, 6, seed=11).seeds[4]
    assert (item.image.data - volumes[4]).abs().max() <= 1 / INT16_SCALE
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=lambda b: b)
    served = torch.stack([s.image.data for batch in loader for s in batch])
    assert torch.equal(served, ds.source.read(range(6)))


def test_append_equals_building_in_one_go(generator, tmp_path):
    bank = build(generator, tmp_path / "grown.npy", n=4)
    bank.append(generator, 2)
    reopened = SyntheticBank.open(tmp_path / "grown.npy")
    assert len(reopened) == 6
    build(generator, tmp_path / "whole.npy")
    assert (tmp_path / "grown.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    grown = json.loads(manifest_path(tmp_path / "grown.npy").read_text())
    whole = json.loads(manifest_path(tmp_path / "whole.npy").read_text())
    assert grown.pop("data_file") == "grown.npy"
    assert whole.pop("data_file") == "whole.npy"
    assert grown == whole


def test_shards_merge_and_parallel_build(generator, tiny_model_dir, tmp_path):
    build(generator, tmp_path / "whole.npy")
    build(generator, tmp_path / "a.npy", n=2, start=0)
    build(generator, tmp_path / "b.npy", n=4, start=2)
    merged = SyntheticBank.merge([tmp_path / "a.npy", tmp_path / "b.npy"], tmp_path / "m.npy")
    assert merged.seed == 11
    assert (tmp_path / "m.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    lazy = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")
    build(lazy, tmp_path / "par.npy", workers=2)
    assert (tmp_path / "par.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    assert not list(tmp_path.glob(".par*"))  # shard folder cleaned up
    unrelated = SyntheticBank.merge([tmp_path / "b.npy", tmp_path / "a.npy"], tmp_path / "u.npy")
    assert unrelated.seed is None and len(unrelated) == 6
    with pytest.raises(DataError, match="cannot append"):
        unrelated.append(generator, 1)
    build(generator, tmp_path / "f16.npy", n=2, dtype="float16")
    with pytest.raises(DataError, match="dtype"):
        SyntheticBank.merge([tmp_path / "a.npy", tmp_path / "f16.npy"], tmp_path / "x.npy")


def test_clear_errors_for_missing_corrupt_truncated_banks(generator, tmp_path):
    path = tmp_path / "bank.npy"
    with pytest.raises(DataError, match=r"bank\.npy: synthetic bank data file is missing"):
        SyntheticBank.open(path)
    build(generator, path, n=3)
    with pytest.raises(DataError, match="already exists"):
        build(generator, path, n=3)
    data, manifest = path.read_bytes(), manifest_path(path).read_text()

    path.write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"bank\.npy: truncated"):
        SyntheticBank.open(path)
    path.write_bytes(b"garbage" * 50)
    with pytest.raises(DataError, match=r"bank\.npy: .*header"):
        SyntheticBank.open(path)
    path.write_bytes(data)
    manifest_path(path).write_text(manifest[:40])
    with pytest.raises(DataError, match=r"bank\.json: corrupt"):
        SyntheticBank.open(path)
    manifest_path(path).unlink()
    with pytest.raises(DataError, match=r"bank\.json: synthetic bank manifest is missing"):
        SyntheticBank.open(path)
    manifest_path(path).write_text(manifest.replace('"count": 3', '"count": 5'))
    with pytest.raises(DataError, match=r"bank\.json"):
        SyntheticBank.open(path)


def test_cli_generate_writes_a_bank(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tumoraug.cli import app

    path = tmp_path / "cli-bank.npy"
    args = ["generate", "--model", str(tiny_model_dir), "--label", "HGG,LGG", "--n", "2"]
    args += ["--bank", str(path), "--steps", "2", "--device", "cpu", "--seed", "5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    bank = SyntheticBank.open(path)
    assert bank.labels == [1, 1, 0, 0] and bank.seed == 5
    assert bank.manifest["settings"]["steps"] == 2
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output
    missing = CliRunner().invoke(app, [*args[:7], "--steps", "2"])
    assert missing.exit_code == 1 and "--bank FILE" in missing.output


def test_bank_batches_cover_the_bank_once_per_epoch(generator, tmp_path):
    bank = build(generator, tmp_path / "bank.npy", n=5)
    batches = BankBatches(bank, 2, seed=3)
    assert len(batches) == 3 and len(BankBatches(bank, 2, drop_last=True)) == 2
    loader = DataLoader(batches, batch_size=None, num_workers=2)
    images, labels = zip(*loader, strict=True)
    assert [len(x) for x in labels] == [2, 2, 1]
    served, stored = torch.cat(images), bank.read(range(5))
    order = np.argsort([next(i for i in range(5) if torch.equal(stored[i], v)) for v in served])
    assert sorted(order.tolist()) == list(range(5))  # every item once
    assert torch.cat(labels)[order].tolist() == bank.labels
    first = batches.order.copy()
    batches.set_epoch(1)
    assert not np.array_equal(batches.order, first)  # a new order per epoch
    batches.set_epoch(0)
    assert np.array_equal(batches.order, first)
    assert torch.equal(torch.cat([x for x, _ in batches]), served)  # same order, same bits


def test_a_bank_is_a_source(generator, reference, tmp_path):
    labels, volumes = reference
    bank = build(generator, tmp_path / "bank.npy")
    assert isinstance(bank, Source) and as_source(bank) is bank
    assert bank.model_id == str(generator.source) and bank.settings == FAST.to_dict()
    # a (label, seed) pair the bank holds: that item, wherever it is asked for
    order = [4, 0, 5]
    served = bank.volumes([labels[i] for i in order], [bank.seeds[i] for i in order])
    assert torch.equal(served, bank.read(order))
    assert (served - volumes[order]).abs().max() <= 0.5 / INT16_SCALE + 1e-7
    # any other pair: an item of that class, the same for the same seed
    picks = [bank.find(1, seed) for seed in range(20)]
    assert {labels[i] for i in picks} == {1} and len(set(picks)) > 1
    assert picks == [bank.find(1, seed) for seed in range(20)]
    assert torch.equal(bank.volumes([1], [3]), bank.read([picks[3]]))
    assert bank.volumes([], []).shape == (0, 1, 16, 16, 16)
    with pytest.raises(ConfigError, match="fixed when it was built"):
        as_source(bank, sampling=SamplingConfig())
    only_hgg = build(generator, tmp_path / "hgg.npy", n=2, labels="HGG")
    with pytest.raises(DataError, match="no item of class 0"):
        only_hgg.volumes([0], [1])
