"""One generation path: the same (label, seed) gives the same volume from `generate`, a
dataset item, the TorchIO transforms, a bank and a NIfTI export, whatever the batch sizes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio

from tumoraug import SamplingConfig
from tumoraug.augment import (
    RandomSyntheticReplace,
    SyntheticBank,
    SyntheticReplace,
    SyntheticTumorDataset,
    as_source,
    item_seeds,
)
from tumoraug.augment.storage import INT16_SCALE
from tumoraug.errors import ConfigError
from tumoraug.export import generate_to_folder
from tumoraug.sampling import per_sample_seeds

S = 16
SEED = 5
LABELS = [1, 0, 0, 1, 1]
SAMPLING = SamplingConfig(steps=2)


@pytest.fixture(scope="module")
def reference(generator):
    """The volumes of items 0..4 through `TumorGenerator.generate`, 2 samples per batch."""
    seeds = item_seeds(SEED, range(len(LABELS)))
    return seeds, generator.generate(LABELS, seed=seeds, sampling=SAMPLING, batch_size=2)


def subject(label: int) -> tio.Subject:
    return tio.Subject(image=tio.ScalarImage(tensor=torch.zeros(1, S, S, S)), label=label)


def test_dataset_items_equal_generate(generator, reference, tiny_model_dir):
    seeds, volumes = reference
    assert item_seeds(SEED, range(len(LABELS))) == per_sample_seeds(SEED, len(LABELS))
    assert torch.equal(generator.generate(LABELS, seed=SEED, sampling=SAMPLING), volumes)
    blocks = SyntheticTumorDataset(generator, labels=LABELS, seed=SEED, sampling=SAMPLING)
    singles = SyntheticTumorDataset(
        str(tiny_model_dir), labels=LABELS, seed=SEED, sampling=SAMPLING, block_size=1
    )
    for i in (3, 0, 4):
        assert blocks[i].seed == seeds[i]
        assert torch.equal(blocks[i].image.data, volumes[i])
        assert torch.equal(singles[i].image.data, volumes[i])
    order = [4, 2, 1]
    batch = blocks.__getitems__(order)
    assert all(
        torch.equal(item.image.data, volumes[i]) for item, i in zip(batch, order, strict=True)
    )


def test_transforms_equal_generate(generator, reference):
    seeds, volumes = reference
    for i in (1, 3):
        out = SyntheticReplace(generator, LABELS[i], seeds[i], sampling=SAMPLING)(subject(0))
        assert torch.equal(out.image.data, volumes[i])
    torch.manual_seed(7)
    randomly = RandomSyntheticReplace(generator, p=1.0, sampling=SAMPLING)(subject(1))
    (record,) = randomly.get_applied_transforms()
    # the drawn seed, sampled together with other samples in a batch of 3
    together = generator.generate(
        [0, 1, 1], seed=[seeds[0], record.seed, seeds[1]], sampling=SAMPLING, batch_size=3
    )
    assert torch.equal(randomly.image.data, together[1])
    replayed = randomly.get_composed_history()(subject(1))
    assert torch.equal(replayed.image.data, together[1])


def test_bank_equals_generate_within_its_quantisation(generator, reference, tmp_path):
    seeds, volumes = reference
    bank = SyntheticBank.build(
        generator, len(LABELS), LABELS, tmp_path / "bank.npy", SEED, sampling=SAMPLING,
        batch_size=3,
    )  # fmt: skip
    step = 0.5 / INT16_SCALE + 1e-7  # half a quantisation step, plus float32 rounding
    assert (bank.volumes(LABELS, seeds) - volumes).abs().max() <= step
    order = [2, 4, 0]
    served = bank.volumes([LABELS[i] for i in order], [seeds[i] for i in order])
    assert (served - volumes[order]).abs().max() <= step
    from_bank = SyntheticTumorDataset.from_bank(bank)
    assert from_bank[3].seed == seeds[3]
    assert (from_bank[3].image.data - volumes[3]).abs().max() <= step
    replaced = SyntheticReplace(bank, LABELS[2], seeds[2])(subject(1))
    assert torch.equal(replaced.image.data, served[0])


def test_exported_files_equal_generate(generator, tmp_path):
    manifest = generate_to_folder(
        generator, ["HGG", "LGG"], tmp_path / "out", n=2, seed=SEED, sampling=SAMPLING,
        batch_size=3,
    )  # fmt: skip
    labels = [sample["label"] for sample in manifest["samples"]]
    expected = generator.generate(labels, seed=SEED, sampling=SAMPLING)
    for j, sample in enumerate(manifest["samples"]):
        data = np.asarray(nib.load(tmp_path / "out" / sample["file"]).dataobj)
        assert np.array_equal(data, expected[j, 0].numpy())


def test_a_bank_takes_no_sampling_settings(generator, tmp_path):
    bank = SyntheticBank.build(
        generator, 2, None, tmp_path / "bank.npy", sampling=SAMPLING, batch_size=2
    )
    with pytest.raises(ConfigError, match="a bank's settings were fixed when the bank was built"):
        as_source(bank, sampling=SamplingConfig())
    with pytest.raises(ConfigError, match="fixed when it was built"):
        SyntheticTumorDataset(bank, 2, sampling=SAMPLING)
    with pytest.raises(ConfigError, match="fixed when it was built"):
        generate_to_folder(bank, "HGG", tmp_path / "x", sampling=SAMPLING)
    assert not (tmp_path / "x").exists()  # refused before anything was written
