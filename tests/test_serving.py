"""Serving a bank's stored values (int16 / float16) to the main process: `BankBatches(raw=True)`,
`dequantize` of a batch and `BankLoader` give bit for bit the float32 batches of the float
path, through DataLoader workers too."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from tumoraug import SamplingConfig
from tumoraug.augment import BankBatches, BankLoader, SyntheticBank, dequantize


@pytest.fixture(scope="module", params=["int16", "float16"])
def bank(request, generator, tmp_path_factory):
    """A 16³ bank of 5 items in each storage type."""
    path = tmp_path_factory.mktemp(request.param) / "bank.npy"
    return SyntheticBank.build(
        generator, 5, None, path, seed=11, dtype=request.param, sampling=SamplingConfig(steps=2)
    )


STORED = {"int16": torch.int16, "float16": torch.float16}


def test_raw_batches_dequantize_to_the_float_batches(bank):
    floats, raw = BankBatches(bank, 2, seed=3), BankBatches(bank, 2, seed=3, raw=True)
    for k in range(len(floats)):
        images, labels = floats[k]
        stored, raw_labels = raw[k]
        assert stored.dtype == STORED[bank.dtype] and images.dtype == torch.float32
        assert torch.equal(dequantize(stored), images)  # bit for bit
        assert torch.equal(dequantize(stored.numpy()), images)
        ids = raw.indices(k)
        assert torch.equal(images, bank.read(ids))
        assert torch.equal(raw_labels, labels) and labels.tolist() == [bank.labels[i] for i in ids]
    assert [bank.seeds[i] for i in raw.indices(0)] == [bank.seeds[i] for i in floats.indices(0)]
    with pytest.raises(IndexError, match="out of range"):
        raw.indices(len(raw))
    with pytest.raises(IndexError, match=r"bank\.npy: index out of range"):
        raw.read([0, len(bank)])


def test_workers_send_the_stored_dtype(bank):
    loader = DataLoader(BankBatches(bank, 2, raw=True), batch_size=None, num_workers=2)
    batches = list(loader)
    assert {stored.dtype for stored, _ in batches} == {STORED[bank.dtype]}
    served = torch.cat([dequantize(stored) for stored, _ in batches])
    expected = torch.cat([images for images, _ in BankBatches(bank, 2)])
    assert torch.equal(served, expected)


def test_bank_loader_equals_bank_batches_through_two_workers(bank):
    loader = BankLoader(bank, 2, seed=3, num_workers=2, persistent_workers=True)
    reference = BankBatches(bank, 2, seed=3)
    assert len(loader) == len(reference) == 3
    orders = []
    for epoch in range(2):  # the order of each epoch reaches persistent workers
        loader.set_epoch(epoch)
        reference.set_epoch(epoch)
        served = list(loader)
        assert len(served) == 3
        for (images, labels), (expected, expected_labels) in zip(served, reference, strict=True):
            assert images.dtype == torch.float32 and torch.equal(images, expected)
            assert torch.equal(labels, expected_labels)
        orders.append([reference.indices(k).tolist() for k in range(len(reference))])
        assert sorted(torch.cat([images for images, _ in served]).sum((1, 2, 3, 4)).tolist()) == (
            sorted(bank.read(range(5)).sum((1, 2, 3, 4)).tolist())
        )  # every item once per epoch
    assert orders[0] != orders[1]
    crossing = {stored.dtype for stored, _ in loader.loader}  # what the workers send
    assert crossing == {STORED[bank.dtype]}


def test_bank_loader_without_workers_and_drop_last(bank):
    loader = BankLoader(bank, 2, shuffle=False, drop_last=True, num_workers=0)
    served = list(loader)
    assert len(loader) == len(served) == 2
    assert torch.equal(torch.cat([images for images, _ in served]), bank.read(range(4)))
    assert torch.cat([labels for _, labels in served]).tolist() == bank.labels[:4]
