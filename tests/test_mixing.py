"""mix (ratio, epochs, item kinds) and the SyntheticThenReal schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio
from torch.utils.data import DataLoader

from tumoraug import SamplingConfig
from tumoraug.augment import MixedDataset, SyntheticThenReal, SyntheticTumorDataset, mix
from tumoraug.errors import ConfigError, DataError

S = 16
FAST = SamplingConfig(steps=2)


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
    synthetic = SyntheticTumorDataset(generator, 10, seed=0, sampling=FAST)
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
    mixed = mix(real, SyntheticTumorDataset(generator, 6, seed=0, sampling=FAST), 0.5, seed=0)
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
    small_real = mix(
        real_subjects(2, size=8), SyntheticTumorDataset(generator, 2, sampling=FAST), 1.0
    )
    with pytest.raises(DataError, match="shape"):
        small_real[0]
    triples = [(torch.zeros(1, S, S, S), 0, "x")] * 2
    with pytest.raises(DataError, match="pairs"):
        mix(triples, SyntheticTumorDataset(generator, 2, sampling=FAST), 1.0)[0]


def test_synthetic_then_real_schedule():
    real, synthetic = PairDataset(4), PairDataset(8)
    schedule = SyntheticThenReal(synthetic, real, synthetic_epochs=2, real_epochs=1)
    phases = [(epoch, phase, len(ds)) for epoch, phase, ds in schedule]
    assert phases == [(0, "synthetic", 8), (1, "synthetic", 8), (2, "real", 4)]
    assert all(schedule.dataset(0).is_synthetic(i) for i in range(8))
    assert not any(schedule.dataset(2).is_synthetic(i) for i in range(4))
