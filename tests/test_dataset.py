"""SyntheticTumorDataset: determinism per index, labels, workers, TorchIO, any Source."""

from __future__ import annotations

import pytest
import torch
import torchio as tio
from torch.utils.data import DataLoader

from tumoraug import SamplingConfig
from tumoraug.augment import GeneratorSource, SyntheticTumorDataset, class_labels, item_seeds
from tumoraug.errors import ConfigError
from tumoraug.generator import TumorGenerator

S = 16
FAST = SamplingConfig(steps=2)


def test_item_is_a_pure_function_of_seed_and_index(generator):
    ds = SyntheticTumorDataset(generator, 6, seed=7, block_size=4, sampling=FAST)
    one = ds[5]
    assert one.image.data.shape == (1, S, S, S)
    assert one.label in (0, 1) and one.grade == ("LGG", "HGG")[one.label]
    assert one.synthetic is True and one.seed == item_seeds(7, [5])[0]
    # item by item, in a batch, with another block size, in a fresh dataset: same ROI
    batch = SyntheticTumorDataset(generator, 6, seed=7, block_size=1, sampling=FAST).__getitems__(
        [5, 0, 3]
    )
    assert torch.equal(batch[0].image.data, one.image.data)
    assert torch.equal(
        SyntheticTumorDataset(generator, 6, seed=7, sampling=FAST)[5].image.data, one.image.data
    )
    # the dataset agrees bit for bit with generator.generate(labels, seed=7), whose seeds
    # are per index
    direct = generator.generate(ds.labels, seed=7, sampling=FAST)
    assert torch.equal(direct[5], one.image.data)
    other = SyntheticTumorDataset(generator, 6, seed=8, sampling=FAST)[5].image.data
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
    ds = SyntheticTumorDataset(lazy, 8, seed=3, block_size=2, sampling=FAST)
    loader = tio.SubjectsLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn")
    batches = list(loader)
    assert not lazy.is_loaded  # only the workers loaded weights
    images = torch.cat([b["image"]["data"] for b in batches])
    assert torch.equal(
        images, SyntheticTumorDataset(generator, 8, seed=3, sampling=FAST).volumes(range(8))
    )
    assert torch.cat([b["label"] for b in batches]).tolist() == ds.labels


def test_forked_workers_load_a_path_and_item_access_uses_blocks(tiny_model_dir, generator):
    ds = SyntheticTumorDataset(
        str(tiny_model_dir), 5, seed=2, block_size=4, device="cpu", sampling=FAST
    )
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    images = torch.stack([item.image.data for item in loader])
    assert torch.equal(
        images, SyntheticTumorDataset(generator, 5, seed=2, sampling=FAST).volumes(range(5))
    )
    ds[1]
    assert list(ds._cache) == [0] and ds._cache[0].shape[0] == 4


def test_transform_and_torchio_queue(generator):
    flip = tio.Compose([tio.RandomFlip(axes=(0,), flip_probability=1)])
    ds = SyntheticTumorDataset(generator, 4, seed=0, transform=flip, sampling=FAST)
    plain = SyntheticTumorDataset(generator, 4, seed=0, sampling=FAST)
    assert torch.equal(ds[2].image.data, plain[2].image.data.flip(1))
    queue = tio.Queue(
        ds, max_length=8, samples_per_volume=2, sampler=tio.UniformSampler(8), num_workers=0
    )
    patches = list(tio.SubjectsLoader(queue, batch_size=4))
    assert len(patches) == 2 and patches[0]["image"]["data"].shape == (4, 1, 8, 8, 8)


def test_sampling_and_sources(generator, tiny_model_dir):
    ds = SyntheticTumorDataset(generator, 3, seed=1, sampling=FAST)
    assert isinstance(ds.source, GeneratorSource) and ds.source.sampling == FAST
    assert ds.source.settings == FAST.to_dict()
    # a Source serves as it is: the same items as the generator it wraps
    again = SyntheticTumorDataset(GeneratorSource(generator, FAST), 3, seed=1)
    assert torch.equal(again.volumes(range(3)), ds.volumes(range(3)))
    with pytest.raises(ConfigError, match="fixed when it was built"):
        SyntheticTumorDataset(ds.source, 3, sampling=FAST)
    overrides = SyntheticTumorDataset(generator, 3, seed=1, sampling={"steps": FAST.steps})
    assert overrides.source.sampling == FAST  # a dict overrides the defaults
    with pytest.raises(ConfigError, match="no sampling setting eta"):
        SyntheticTumorDataset(generator, 3, sampling={"eta": 0.0})
    with pytest.raises(ConfigError, match="SamplingConfig"):
        SyntheticTumorDataset(generator, 3, sampling=[2])
    with pytest.raises(TypeError):
        SyntheticTumorDataset(generator, 3, steps=2)
    with pytest.raises(ConfigError, match="device"):
        SyntheticTumorDataset(str(tiny_model_dir), 3, device="tpu9")
    assert "GeneratorSource" in repr(ds) and "LGG=" in repr(ds)
