"""The protocol's synthetic data: from a model, a bank or a ROI folder, read once."""

from __future__ import annotations

import pytest
import torch

from tumoraug.errors import ConfigError
from tumoraug.evaluation import materialize, synthetic_source
from tumoraug.sampling import SamplingConfig


def test_materialize_keeps_order_and_labels():
    rng = torch.Generator().manual_seed(0)
    items = [(torch.rand(1, 8, 8, 8, generator=rng), i % 2) for i in range(5)]
    cached = materialize(items)
    assert [label for _, label in cached] == [label for _, label in items]
    assert torch.equal(cached[2][0], items[2][0])
    assert [label for _, label in materialize(items, progress=True)] == [0, 1, 0, 1, 0]


def test_synthetic_source_takes_at_most_one_source(roi_cache, tiny_model_dir):
    assert synthetic_source() is None
    with pytest.raises(ConfigError, match="give one synthetic source, got model and roi_dir"):
        synthetic_source(model=tiny_model_dir, roi_dir=roi_cache)
    with pytest.raises(ConfigError, match="bank and roi_dir"):
        synthetic_source(bank="bank.npy", roi_dir=roi_cache)
    with pytest.raises(ConfigError, match="count"):
        synthetic_source(model=tiny_model_dir, count=0)


def test_synthetic_source_reads_a_roi_folder(roi_cache):
    from tumoraug.data import ROIDataset

    dataset = synthetic_source(roi_dir=roi_cache)
    assert isinstance(dataset, ROIDataset) and len(dataset) == 6


def test_synthetic_source_generates_once_from_a_model(tiny_model_dir):
    sampling = SamplingConfig(steps=2)
    kwargs = {"count": 4, "seed": 1, "sampling": sampling, "device": "cpu"}
    items = synthetic_source(model=tiny_model_dir, **kwargs)
    assert isinstance(items, list) and len(items) == 4
    assert sorted(label for _, label in items) == [0, 0, 1, 1]
    assert all(image.shape == (1, 16, 16, 16) for image, _ in items)
    again = synthetic_source(model=tiny_model_dir, **kwargs)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(items, again, strict=True))
