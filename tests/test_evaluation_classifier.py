"""The downstream classifier: shapes, presets, item reading, training and prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio

from extras import require_extra
from tumoraug.errors import ConfigError, DataError, TumorAugError
from tumoraug.evaluation import (
    ClassifierConfig,
    MonaiClassifier,
    ResNet3D,
    build_classifier,
    predict,
    train_classifier,
)
from tumoraug.evaluation.classifier import item_tensors

TINY = ClassifierConfig.preset("tiny")


def test_classifier_shapes_and_presets():
    model = ResNet3D(ClassifierConfig(in_channels=2, base_width=4))
    x = torch.randn(3, 2, 32, 32, 32)
    assert model(x).shape == (3,)
    assert model.features(x).shape == (3, 32)
    assert ResNet3D(TINY)(torch.randn(2, 1, 16, 16, 16)).shape == (2,)
    with pytest.raises(ConfigError, match="base_width"):
        ClassifierConfig(base_width=0)
    with pytest.raises(ConfigError, match="dropout"):
        ClassifierConfig(dropout=1.0)
    assert ClassifierConfig.from_dict(TINY.to_dict()) == TINY


def test_item_tensors_reads_subjects_and_tuples():
    volume = torch.rand(1, 8, 8, 8)
    subject = tio.Subject(image=tio.ScalarImage(tensor=volume), label=1)
    image, label = item_tensors(subject)
    assert torch.equal(image, volume) and label == 1
    image, label = item_tensors((volume, "LGG"))
    assert torch.equal(image, volume) and label == 0
    with pytest.raises(DataError, match="cannot read"):
        item_tensors("scan.nii.gz")
    with pytest.raises(DataError, match="batch of 2"):
        item_tensors((torch.rand(2, 1, 8, 8, 8), 1))
    with pytest.raises(TumorAugError):
        item_tensors((volume, 3))


def test_train_then_predict_is_seeded_and_keeps_order():
    rng = torch.Generator().manual_seed(0)
    items = [(torch.rand(1, 16, 16, 16, generator=rng), i % 2) for i in range(6)]

    def trained(seed: int) -> ResNet3D:
        torch.manual_seed(0)
        model = ResNet3D(TINY)
        return train_classifier(model, items, epochs=1, batch_size=4, seed=seed, device="cpu")

    labels, probs = predict(trained(0), items, batch_size=4, device="cpu")
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert probs.shape == (6,) and ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_array_equal(predict(trained(0), items, device="cpu")[1], probs)
    assert not np.array_equal(predict(trained(1), items, device="cpu")[1], probs)


def test_network_names_are_checked_and_recorded():
    with pytest.raises(ConfigError, match="network"):
        ClassifierConfig(network="vgg")
    config = ClassifierConfig(network="densenet121")
    assert ClassifierConfig.from_dict(config.to_dict()).network == "densenet121"
    legacy = {k: v for k, v in TINY.to_dict().items() if k != "network"}
    assert ClassifierConfig.from_dict(legacy).network == "tumoraug"
    assert isinstance(build_classifier(TINY), ResNet3D)


@pytest.mark.parametrize("network", ["resnet10", "resnet18", "densenet121"])
def test_monai_networks_train_and_predict(network):
    require_extra("monai")
    config = ClassifierConfig(in_channels=2, network=network)
    torch.manual_seed(0)
    model = build_classifier(config)
    assert isinstance(model, MonaiClassifier)
    size = 32 if network == "densenet121" else 16
    if network == "densenet121":
        with pytest.raises(DataError, match="at least 32 voxels"):
            model(torch.randn(2, 2, 16, 16, 16))
    rng = torch.Generator().manual_seed(0)
    # 5 items in batches of 4 leave a batch of one, which BatchNorm cannot train on
    items = [(torch.rand(2, size, size, size, generator=rng), i % 2) for i in range(5)]
    train_classifier(model, items, epochs=1, batch_size=4, device="cpu")
    labels, probs = predict(model, items, batch_size=4, device="cpu")
    assert labels.tolist() == [0, 1, 0, 1, 0] and np.isfinite(probs).all()
