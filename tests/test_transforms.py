"""RandomSyntheticReplace / SyntheticReplace as TorchIO transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio
from torchio.utils import get_subclasses

from tumoraug import SamplingConfig
from tumoraug.augment import (
    GeneratorSource,
    RandomSyntheticReplace,
    SyntheticBank,
    SyntheticReplace,
)
from tumoraug.errors import ConfigError, DataError, LabelError

S = 16
FAST = SamplingConfig(steps=2)
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


@pytest.fixture(scope="module")
def bank(generator, tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.npy"
    return SyntheticBank.build(generator, 6, None, path, seed=0, sampling=FAST)


def subject(label=1, size=S) -> tio.Subject:
    return tio.Subject(
        image=tio.ScalarImage(tensor=torch.full((1, size, size, size), -0.5), affine=AFFINE),
        t2=tio.ScalarImage(tensor=torch.full((1, size, size, size), 0.25), affine=AFFINE),
        seg=tio.LabelMap(
            tensor=torch.ones((1, size, size, size), dtype=torch.int64), affine=AFFINE
        ),
        label=label,
    )


def test_replaces_with_roi_of_the_subjects_grade(generator):
    out = RandomSyntheticReplace(generator, p=1.0, sampling=FAST)(subject(label="HGG"))
    (record,) = out.get_applied_transforms()
    assert isinstance(record, SyntheticReplace) and record.label == 1
    expected = generator.generate_tokens([1], [record.seed], FAST)
    assert torch.equal(out.image.data, generator.decode(expected)[0])
    assert torch.equal(out.t2.data, out.image.data)  # every intensity image, one ROI
    assert torch.equal(out.seg.data, subject().seg.data)  # label maps untouched
    assert np.array_equal(out.image.affine, AFFINE)
    assert out.image.data.shape == (1, S, S, S)


def test_history_replay_reproduces_the_output(generator):
    pipeline = tio.Compose(
        [
            tio.RandomFlip(axes=(0, 1, 2)),
            RandomSyntheticReplace(generator, p=1.0, sampling=FAST),
            tio.RandomNoise(std=0.05),
        ]
    )
    original = subject(label=0)
    out = pipeline(original)
    replayed = out.get_composed_history()(original)
    assert torch.equal(replayed.image.data, out.image.data)
    assert not torch.equal(pipeline(original).image.data, out.image.data)  # new seed per call
    assert "SyntheticReplace" in repr(out.history)
    # the history records the source together with its sampling settings
    (_, record, _) = out.get_applied_transforms()
    assert isinstance(record.source, GeneratorSource) and record.source.sampling == FAST


def test_sampling_goes_with_the_source(generator, bank):
    longer = SamplingConfig(steps=3)
    plain = SyntheticReplace(generator, 1, 123, sampling=FAST)(subject())
    other = SyntheticReplace(generator, 1, 123, sampling=longer)(subject())
    assert not torch.equal(plain.image.data, other.image.data)
    assert torch.equal(plain.image.data, generator.generate([1], seed=[123], sampling=FAST)[0])
    with pytest.raises(ConfigError, match="fixed when it was built"):
        RandomSyntheticReplace(bank, p=1.0, sampling=FAST)
    with pytest.raises(ConfigError, match="shape_mismatch"):
        SyntheticReplace(generator, 1, 0, shape_mismatch="crop")


def test_probability_and_composition(generator, bank):
    assert RandomSyntheticReplace(generator, p=0.0)(subject()).history == []
    one_of = tio.OneOf({RandomSyntheticReplace(generator, p=1.0, sampling=FAST): 1.0})
    assert [t.name for t in one_of(subject()).history] == ["SyntheticReplace"]
    torch.manual_seed(1)
    coin = RandomSyntheticReplace(bank, p=0.5)
    applied = [len(coin(subject()).history) for _ in range(40)]
    assert 8 <= sum(applied) <= 32
    assert not RandomSyntheticReplace(generator).is_invertible()
    torchio_names = {cls.__name__ for cls in get_subclasses(tio.Transform)} - {
        "RandomSyntheticReplace",
        "SyntheticReplace",
    }
    assert {"RandomSyntheticReplace", "SyntheticReplace"}.isdisjoint(torchio_names)


def test_include_and_exclude(generator):
    only_t2 = RandomSyntheticReplace(generator, p=1.0, sampling=FAST, include=["t2"])(subject())
    assert torch.equal(only_t2.image.data, subject().image.data)
    assert not torch.equal(only_t2.t2.data, subject().t2.data)
    not_t2 = RandomSyntheticReplace(generator, p=1.0, sampling=FAST, exclude=["t2"])(subject())
    assert torch.equal(not_t2.t2.data, subject().t2.data)
    assert not torch.equal(not_t2.image.data, subject().image.data)
    replay = not_t2.get_composed_history()(subject())
    assert torch.equal(replay.t2.data, subject().t2.data)


def test_missing_label_and_shape_errors(generator):
    no_label = subject()
    del no_label["label"]
    with pytest.raises(LabelError, match="'label'"):
        RandomSyntheticReplace(generator, p=1.0)(no_label)
    with pytest.raises(LabelError, match="'grade'"):
        RandomSyntheticReplace(generator, p=1.0, label_key="grade")(subject())
    with pytest.raises(DataError, match=r"spatial shape \(12, 12, 12\)"):
        RandomSyntheticReplace(generator, p=1.0, sampling=FAST)(subject(size=12))
    resized = RandomSyntheticReplace(generator, p=1.0, sampling=FAST, shape_mismatch="resize")(
        subject(size=12)
    )
    assert resized.image.data.shape == (1, 12, 12, 12)
    assert resized.image.data.abs().max() <= 1


def test_bank_source_in_subjects_dataset_and_queue(bank):
    transform = RandomSyntheticReplace(bank, p=1.0)
    out = transform(subject(label=0))
    record = out.get_applied_transforms()[0]
    stored = bank.read([i for i, v in enumerate(bank.labels) if v == 0])
    assert any(torch.equal(out.image.data, v) for v in stored)
    assert torch.equal(SyntheticReplace(bank, 0, record.seed)(subject()).image.data, out.image.data)
    dataset = tio.SubjectsDataset([subject(label=i % 2) for i in range(4)], transform=transform)
    queue = tio.Queue(dataset, 8, 2, tio.UniformSampler(8), num_workers=2)
    batches = list(tio.SubjectsLoader(queue, batch_size=4))
    assert len(batches) == 2 and batches[0]["image"]["data"].shape == (4, 1, 8, 8, 8)
