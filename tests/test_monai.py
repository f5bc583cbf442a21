"""The MONAI dictionary transforms and the dict items of SyntheticTumorDataset.

Skipped where MONAI is not installed, except in CI, which installs the ``monai`` extra.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from extras import require_extra
from tumoraug import SamplingConfig
from tumoraug.augment import GeneratorSource, SyntheticBank, SyntheticTumorDataset
from tumoraug.errors import ConfigError, DataError, LabelError
from tumoraug.labels import GRADES, to_label

monai = require_extra("monai")

from tumoraug.augment.monai import RandSyntheticReplaced, SyntheticReplaced  # noqa: E402

S = 16
FAST = SamplingConfig(steps=2)
AFFINE = torch.diag(torch.tensor([1.5, 1.5, 2.0, 1.0], dtype=torch.float64))


@pytest.fixture(scope="module")
def bank(generator, tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.npy"
    return SyntheticBank.build(generator, 6, None, path, seed=0, sampling=FAST)


def item(label=1, size=S, meta=True) -> dict:
    image = torch.full((1, size, size, size), -0.5)
    return {
        "image": monai.data.MetaTensor(image, affine=AFFINE) if meta else image,
        "seg": torch.ones((1, size, size, size), dtype=torch.int64),
        "label": label,
    }


@pytest.mark.parametrize("label", ["HGG", "LGG", 0, torch.tensor(1)])
def test_replaces_with_roi_of_the_dicts_grade(bank, label):
    out = RandSyntheticReplaced("image", bank, prob=1.0).set_random_state(0)(item(label))
    expected = bank.volumes([to_label(label)], [out["synthetic_seed"]])[0]
    assert torch.equal(out["image"].as_tensor(), expected)
    assert out["synthetic"] is True and out["synthetic_seed"] >= 0
    assert torch.equal(out["seg"], item()["seg"])  # other entries untouched


def test_generator_source_gives_the_generated_roi(generator):
    out = RandSyntheticReplaced("image", generator, 1.0, sampling=FAST).set_random_state(1)(item())
    expected = generator.generate([1], seed=[out["synthetic_seed"]], sampling=FAST)[0]
    assert torch.equal(out["image"].as_tensor(), expected)
    replayed = SyntheticReplaced("image", generator, 1, out["synthetic_seed"], sampling=FAST)
    assert torch.equal(replayed(item())["image"], out["image"])
    with pytest.raises(ConfigError, match="fixed when it was built"):
        RandSyntheticReplaced("image", GeneratorSource(generator, FAST), 1.0, sampling=FAST)


def test_deterministic_per_random_state(bank):
    def run(state: int) -> list[tuple[int, torch.Tensor]]:
        pipeline = monai.transforms.Compose([RandSyntheticReplaced("image", bank, prob=0.5)])
        pipeline.set_random_state(state)
        outs = [pipeline(item(label=i % 2)) for i in range(8)]
        return [(o["synthetic_seed"], o["image"].as_tensor()) for o in outs]

    first, again, other = run(3), run(3), run(4)
    assert [s for s, _ in first] == [s for s, _ in again]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, again, strict=True))
    assert [s for s, _ in first] != [s for s, _ in other]
    assert 0 < sum(s >= 0 for s, _ in first) < 8  # a coin, not a constant


def test_probability_zero_and_one(bank):
    never = RandSyntheticReplaced("image", bank, prob=0.0)
    out = never(item())
    assert torch.equal(out["image"], item()["image"])
    assert out["synthetic"] is False and out["synthetic_seed"] == -1
    assert never({**item(), "synthetic": True})["synthetic"] is True  # a synthetic item stays so
    always = RandSyntheticReplaced("image", bank, prob=1.0)
    assert all(always(item())["synthetic"] for _ in range(5))


def test_keeps_the_kind_of_value(bank):
    replace = SyntheticReplaced(["image", "t2"], bank, "HGG", 7)
    data = {**item(), "t2": np.zeros((1, S, S, S), dtype=np.float64)}
    data["image"].meta["filename_or_obj"] = "scan.nii.gz"
    out = replace(data)
    assert isinstance(out["image"], monai.data.MetaTensor)
    assert torch.equal(out["image"].affine, AFFINE)
    assert out["image"].meta["filename_or_obj"] == "scan.nii.gz"
    assert isinstance(out["t2"], np.ndarray) and out["t2"].dtype == np.float32
    assert np.array_equal(out["t2"], out["image"].numpy())
    plain = SyntheticReplaced("image", bank, "HGG", 7)(item(meta=False))["image"]
    assert type(plain) is torch.Tensor and plain.dtype == torch.float32
    assert data["image"].abs().max() == 0.5  # the input dict is not modified


def test_shape_and_value_errors(bank):
    with pytest.raises(DataError, match=r"spatial shape \(12, 12, 12\).*ResizeWithPadOrCropd"):
        RandSyntheticReplaced("image", bank, prob=1.0)(item(size=12))
    resized = RandSyntheticReplaced("image", bank, 1.0, shape_mismatch="resize")(item(size=12))
    assert resized["image"].shape == (1, 12, 12, 12) and resized["image"].abs().max() <= 1
    assert torch.equal(resized["image"].affine, AFFINE)
    with pytest.raises(DataError, match=r"2 channel\(s\).*keys="):
        SyntheticReplaced("image", bank, 0, 0)({"image": torch.zeros(2, S, S, S)})
    with pytest.raises(DataError, match=r"channel-first"):
        SyntheticReplaced("image", bank, 0, 0)({"image": torch.zeros(S, S, S)})
    with pytest.raises(DataError, match=r"is a str"):
        SyntheticReplaced("image", bank, 0, 0)({"image": "scan.nii.gz"})
    with pytest.raises(ConfigError, match="shape_mismatch"):
        SyntheticReplaced("image", bank, 0, 0, shape_mismatch="crop")


def test_missing_label_and_image_keys(bank):
    no_label = item()
    del no_label["label"]
    with pytest.raises(LabelError, match="no 'label' entry"):
        RandSyntheticReplaced("image", bank, prob=0.0)(no_label)
    with pytest.raises(LabelError, match="'grade'"):
        RandSyntheticReplaced("image", bank, prob=1.0, label_key="grade")(item())
    with pytest.raises(DataError, match="'flair' missing"):
        RandSyntheticReplaced(["image", "flair"], bank, prob=1.0)(item())
    skip = RandSyntheticReplaced(["image", "flair"], bank, prob=1.0, allow_missing_keys=True)
    out = skip(item())
    assert "flair" not in out and out["synthetic"]
    nothing = RandSyntheticReplaced("flair", bank, prob=1.0, allow_missing_keys=True)(item())
    assert (nothing["synthetic"], nothing["synthetic_seed"]) == (False, -1)  # still collates
    assert SyntheticReplaced("flair", bank, 0, 0, allow_missing_keys=True)(item()).keys() == {
        "image",
        "seg",
        "label",
    }


def test_dataloader_with_set_determinism(bank):
    items = [item(label=i % 2) for i in range(6)]
    transform = monai.transforms.Compose(
        [RandSyntheticReplaced("image", bank, prob=0.5), monai.transforms.ScaleIntensityd("image")]
    )

    def epoch() -> list[dict]:
        monai.utils.set_determinism(seed=0)
        dataset = monai.data.Dataset(items, transform=transform)
        return list(monai.data.DataLoader(dataset, batch_size=3, num_workers=0))

    try:
        first, again = epoch(), epoch()
    finally:
        monai.utils.set_determinism(seed=None)
    assert first[0]["image"].shape == (3, 1, S, S, S)
    assert torch.equal(first[0]["synthetic_seed"], again[0]["synthetic_seed"])
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again, strict=True))


def test_dataset_dict_items_match_subject_items(bank):
    subjects = SyntheticTumorDataset(bank, length=4, seed=0)
    dicts = SyntheticTumorDataset(bank, length=4, seed=0, output="dict")
    for i in range(4):
        subject, entry = subjects[i], dicts[i]
        assert set(entry) == {"image", "label", "grade", "synthetic", "seed", "subject_id"}
        assert type(entry["image"]) is torch.Tensor and entry["image"].dtype == torch.float32
        assert torch.equal(entry["image"], subject.image.data)
        for key in ("label", "grade", "synthetic", "seed", "subject_id"):
            assert entry[key] == subject[key]
    batch = dicts.__getitems__([3, 1])
    assert (
        torch.equal(batch[0]["image"], dicts[3]["image"]) and batch[1]["seed"] == dicts[1]["seed"]
    )
    stored = SyntheticTumorDataset.from_bank(bank, output="dict")[2]
    assert torch.equal(stored["image"], bank[2]) and stored["seed"] == bank.seeds[2]
    with pytest.raises(ConfigError, match="output must be one of"):
        SyntheticTumorDataset(bank, length=2, output="tensor")


def test_dataset_dicts_in_monai_loaders(bank):
    replace = RandSyntheticReplaced("image", bank, prob=1.0)
    dataset = SyntheticTumorDataset(bank, length=5, seed=0, output="dict", transform=replace)
    loader = monai.data.DataLoader(
        dataset, batch_size=2, num_workers=0, collate_fn=monai.data.list_data_collate
    )
    batches = list(loader)
    assert [len(b["label"]) for b in batches] == [2, 2, 1]
    assert batches[0]["image"].shape == (2, 1, S, S, S)
    assert batches[0]["grade"] == [GRADES[label] for label in dataset.labels[:2]]
    assert bool(batches[0]["synthetic"].all())

    plain = SyntheticTumorDataset(bank, length=4, seed=0, output="dict")
    cached = monai.data.CacheDataset(plain, transform=replace, progress=False, num_workers=1)
    listed = monai.data.CacheDataset([plain[i] for i in range(4)], progress=False)
    assert len(cached) == len(listed) == 4
    assert torch.equal(listed[2]["image"], plain[2]["image"])
    out = cached[1]
    expected = bank.volumes([plain.labels[1]], [out["synthetic_seed"]])[0]
    assert torch.equal(out["image"], expected)
