"""SyntheticTumorDataset (determinism per index, workers, TorchIO), mix and SyntheticThenReal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio
from torch.utils.data import DataLoader

from tumoraug.dataset import (
    MixedDataset,
    SyntheticThenReal,
    SyntheticTumorDataset,
    class_labels,
    item_seeds,
    mix,
)
from tumoraug.errors import ConfigError, DataError
from tumoraug.generator import TumorGenerator

S = 16


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")


def real_subjects(n: int, size: int = S) -> tio.SubjectsDataset:
    """Real-like items: what ROIDataset yields (image, seg, label, grade, subject_id)."""
    subjects = []
    for i in range(n):
        label = i % 2
        subjects.append(
            tio.Subject(
                image=tio.ScalarImage(tensor=torch.full((1, size, size, size), -0.5)),
                seg=tio.LabelMap(tensor=torch.ones((1, size, size, size), dtype=torch.int64)),
                label=label,
                grade=("LGG", "HGG")[label],
                subject_id=f"real-{i}",
            )
        )
    return tio.SubjectsDataset(subjects)


class PairDataset(torch.utils.data.Dataset):
    """Real items as (tensor, label-tensor) pairs."""

    def __init__(self, n: int, size: int = S) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.full((1, self.size, self.size, self.size), float(i)), torch.tensor(i % 2)


def test_item_is_a_pure_function_of_seed_and_index(generator):
    ds = SyntheticTumorDataset(generator, 6, seed=7, block_size=4, steps=2)
    one = ds[5]
    assert one.image.data.shape == (1, S, S, S)
    assert one.label in (0, 1) and one.grade == ("LGG", "HGG")[one.label]
    assert one.synthetic is True and one.seed == item_seeds(7, [5])[0]
    # item by item, in a batch, with another block size, in a fresh dataset: same ROI
    batch = SyntheticTumorDataset(generator, 6, seed=7, block_size=1, steps=2).__getitems__(
        [5, 0, 3]
    )
    assert torch.equal(batch[0].image.data, one.image.data)
    assert torch.equal(
        SyntheticTumorDataset(generator, 6, seed=7, steps=2)[5].image.data, one.image.data
    )
    # the dataset agrees with generator.generate(labels, seed=7), whose seeds are per index
    # (up to float rounding: generate decodes in batches, the dataset one item at a time)
    direct = generator.generate(ds.labels, seed=7, steps=2)
    torch.testing.assert_close(direct[5], one.image.data, atol=1e-4, rtol=0)
    other = SyntheticTumorDataset(generator, 6, seed=8, steps=2)[5].image.data
    assert (other - direct[5]).abs().max() > 1e-2
    assert one.image.data.min() >= -1 and one.image.data.max() <= 1


def test_labels_ratio_explicit_and_single():
    labels = class_labels(range(1000), 0.3, seed=1)
    assert sum(labels) == 300
    assert all(abs(sum(labels[i : i + 100]) - 30) <= 1 for i in range(0, 900, 50))
    assert class_labels(range(10, 20), 0.3, 1) == labels[10:20]  # independent of the length
    ds = SyntheticTumorDataset("unused-until-first-item", labels=["HGG", "LGG", 1])
    assert ds.labels == [1, 0, 1] and len(ds) == 3
    assert SyntheticTumorDataset("x", 4, labels="LGG").labels == [0, 0, 0, 0]
    with pytest.raises(ConfigError):
        SyntheticTumorDataset("x", 4, labels=[0, 1])
    with pytest.raises(ConfigError):
        SyntheticTumorDataset("x", 4, class_ratio=1.5)
    with pytest.raises(IndexError):
        SyntheticTumorDataset("x", 4)[4]


def test_spawned_workers_load_the_generator_lazily_and_agree(generator, tiny_model_dir):
    lazy = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")
    ds = SyntheticTumorDataset(lazy, 8, seed=3, block_size=2, steps=2)
    loader = tio.SubjectsLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn")
    batches = list(loader)
    assert not lazy.is_loaded  # only the workers loaded weights
    images = torch.cat([b["image"]["data"] for b in batches])
    assert torch.equal(
        images, SyntheticTumorDataset(generator, 8, seed=3, steps=2).volumes(range(8))
    )
    assert torch.cat([b["label"] for b in batches]).tolist() == ds.labels


def test_forked_workers_load_a_path_and_item_access_uses_blocks(tiny_model_dir, generator):
    ds = SyntheticTumorDataset(str(tiny_model_dir), 5, seed=2, block_size=4, device="cpu", steps=2)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    images = torch.stack([item.image.data for item in loader])
    assert torch.equal(
        images, SyntheticTumorDataset(generator, 5, seed=2, steps=2).volumes(range(5))
    )
    ds[1]
    assert list(ds._cache) == [0] and ds._cache[0].shape[0] == 4


def test_transform_and_torchio_queue(generator):
    flip = tio.Compose([tio.RandomFlip(axes=(0,), flip_probability=1)])
    ds = SyntheticTumorDataset(generator, 4, seed=0, transform=flip, steps=2)
    plain = SyntheticTumorDataset(generator, 4, seed=0, steps=2)
    assert torch.equal(ds[2].image.data, plain[2].image.data.flip(1))
    queue = tio.Queue(
        ds, max_length=8, samples_per_volume=2, sampler=tio.UniformSampler(8), num_workers=0
    )
    patches = list(tio.SubjectsLoader(queue, batch_size=4))
    assert len(patches) == 2 and patches[0]["image"]["data"].shape == (4, 1, 8, 8, 8)


def test_mix_ratio_within_two_percent_over_10000_draws():
    real, synthetic = PairDataset(300), PairDataset(50, size=S)
    for ratio in (0.1, 0.5, 0.8):
        mixed = mix(real, synthetic, ratio, length=10_000, seed=4)
        flags = [mixed.is_synthetic(i) for i in range(len(mixed))]
        assert abs(np.mean(flags) - ratio) <= 0.02
        assert abs(np.mean(flags[:1000]) - ratio) <= 0.05  # spread over the epoch
        # every real item is used before any is repeated
        real_ids = [int(mixed.source_index[i]) for i in range(2000) if not flags[i]]
        assert len(set(real_ids[:300])) == 300
    default = mix(real, synthetic, 0.25)
    assert len(default) == 400 and default.n_synthetic == 100 and default.n_real == 300


def test_mix_is_reproducible_per_epoch():
    real, synthetic = PairDataset(20), PairDataset(20)
    a, b = mix(real, synthetic, 0.5, seed=1), mix(real, synthetic, 0.5, seed=1)
    order = _plan(a)
    assert order == _plan(b)
    a.set_epoch(1)
    assert order != _plan(a)
    a.set_epoch(0)
    assert order == _plan(a)
    assert order != _plan(mix(real, synthetic, 0.5, seed=2))


def _plan(mixed: MixedDataset) -> list[tuple[int, int]]:
    return [(int(k), int(j)) for k, j in zip(mixed.kinds, mixed.source_index, strict=True)]


def test_mix_of_pairs_yields_pairs(generator):
    synthetic = SyntheticTumorDataset(generator, 10, seed=0, steps=2)
    mixed = mix(PairDataset(10), synthetic, 0.5, seed=0)
    syn_index = next(i for i in range(len(mixed)) if mixed.is_synthetic(i))
    image, label = mixed[syn_index]
    j = int(mixed.source_index[syn_index])
    assert torch.equal(image, synthetic[j].image.data)
    assert isinstance(label, torch.Tensor) and label.dtype == torch.int64
    assert int(label) == synthetic.labels[j]
    images, labels = next(iter(DataLoader(mixed, batch_size=len(mixed))))
    assert images.shape == (20, 1, S, S, S) and labels.shape == (20,)


def test_mix_of_subjects_yields_subjects_with_real_keys(generator):
    real = real_subjects(6)
    mixed = mix(real, SyntheticTumorDataset(generator, 6, seed=0, steps=2), 0.5, seed=0)
    items = [mixed[i] for i in range(len(mixed))]
    assert all(isinstance(item, tio.Subject) for item in items)
    keys = set(items[0].keys())
    assert keys == {"image", "seg", "label", "grade", "subject_id", "synthetic"}
    assert all(set(item.keys()) == keys for item in items)
    for i, item in enumerate(items):
        assert item["synthetic"] == mixed.is_synthetic(i)
        if item["synthetic"]:
            assert item["seg"].data.sum() == 0 and item["subject_id"].startswith("synthetic-")
    batch = next(iter(tio.SubjectsLoader(mixed, batch_size=12, num_workers=0)))
    assert batch["image"]["data"].shape == (12, 1, S, S, S)
    assert batch["synthetic"].sum() == 6


def test_mix_errors(generator):
    with pytest.raises(ConfigError):
        mix(PairDataset(4), PairDataset(4), 1.5)
    with pytest.raises(DataError):
        mix(PairDataset(0), PairDataset(4), 0.5)
    small_real = mix(real_subjects(2, size=8), SyntheticTumorDataset(generator, 2, steps=2), 1.0)
    with pytest.raises(DataError, match="shape"):
        small_real[0]
    triples = [(torch.zeros(1, S, S, S), 0, "x")] * 2
    with pytest.raises(DataError, match="pairs"):
        mix(triples, SyntheticTumorDataset(generator, 2, steps=2), 1.0)[0]


def test_synthetic_then_real_schedule():
    real, synthetic = PairDataset(4), PairDataset(8)
    schedule = SyntheticThenReal(synthetic, real, synthetic_epochs=2, real_epochs=1)
    phases = [(epoch, phase, len(ds)) for epoch, phase, ds in schedule]
    assert phases == [(0, "synthetic", 8), (1, "synthetic", 8), (2, "real", 4)]
    assert all(schedule.dataset(0).is_synthetic(i) for i in range(8))
    assert not any(schedule.dataset(2).is_synthetic(i) for i in range(4))
