"""Metrics: hand-computed values, known properties, and scikit-learn as a reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from tumoraug.metrics import (
    MS_SSIM_WEIGHTS,
    classification_metrics,
    mmd,
    ms_ssim_3d,
    ms_ssim_diversity,
    ms_ssim_scales,
    roc_auc,
    roc_curve,
    volume_features,
)


def _volumes(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, size, generator=generator) * 2 - 1


# ----------------------------------------------------------------------------- MS-SSIM


@pytest.mark.parametrize(
    ("size", "expected"), [(10, 0), (16, 1), (32, 2), (64, 3), (128, 4), (176, 5), (512, 5)]
)
def test_ms_ssim_scale_count_follows_volume_size(size, expected):
    assert ms_ssim_scales((size, size, size)) == expected


def test_ms_ssim_of_a_volume_with_itself_is_one():
    x = _volumes(3, size=32)
    assert torch.allclose(ms_ssim_3d(x, x), torch.ones(3), atol=1e-6)
    assert ms_ssim_3d(x[0], x[0]).shape == (1,)


def test_ms_ssim_is_symmetric_and_in_unit_interval():
    x, y = _volumes(2, size=32, seed=1), _volumes(2, size=32, seed=2)
    forward, backward = ms_ssim_3d(x, y), ms_ssim_3d(y, x)
    assert torch.allclose(forward, backward, atol=1e-6)
    assert ((forward >= 0) & (forward < 1)).all()


def test_ms_ssim_matches_hand_computed_value_for_constant_volumes():
    # Constant volumes: zero variance, so every contrast-structure term is exactly 1 and
    # only the luminance term of the coarsest scale remains, raised to its renormalised
    # weight (32³ allows 2 scales).
    a, b = 0.5, 0.25
    x = torch.full((1, 1, 32, 32, 32), a)
    y = torch.full((1, 1, 32, 32, 32), b)
    c1 = (0.01 * 2.0) ** 2
    luminance = (2 * a * b + c1) / (a * a + b * b + c1)
    weight = MS_SSIM_WEIGHTS[1] / (MS_SSIM_WEIGHTS[0] + MS_SSIM_WEIGHTS[1])
    assert ms_ssim_3d(x, y).item() == pytest.approx(luminance**weight, rel=1e-5)
    # One scale: the plain SSIM (= luminance) with weight 1.
    assert ms_ssim_3d(x, y, scales=1).item() == pytest.approx(luminance, rel=1e-5)


def test_ms_ssim_drops_with_noise_level():
    x = _volumes(1, size=32)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    values = [ms_ssim_3d(x, (x + s * noise).clamp(-1, 1)).item() for s in (0.05, 0.2, 0.8)]
    assert values[0] > values[1] > values[2]


def test_ms_ssim_rejects_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        ms_ssim_3d(_volumes(1, 16), _volumes(1, 32))
    with pytest.raises(ValueError, match="smaller than"):
        ms_ssim_3d(_volumes(1, 8), _volumes(1, 8))
    with pytest.raises(ValueError, match="scales must be"):
        ms_ssim_3d(_volumes(1, 32), _volumes(1, 32), scales=3)


def test_diversity_score_rises_for_near_duplicate_sets():
    base = _volumes(1, size=16, seed=3)
    noise = torch.randn(6, 1, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    near_duplicates = (base + 0.02 * noise).clamp(-1, 1)
    independent = _volumes(6, size=16, seed=5)
    assert ms_ssim_diversity(near_duplicates) > 0.9
    assert ms_ssim_diversity(near_duplicates) > ms_ssim_diversity(independent) + 0.5


def test_diversity_pair_subset_is_seeded():
    volumes = _volumes(8, size=16, seed=6)
    a = ms_ssim_diversity(volumes, max_pairs=5, seed=1)
    assert a == ms_ssim_diversity(volumes, max_pairs=5, seed=1)
    assert a != ms_ssim_diversity(volumes, max_pairs=5, seed=2)
    with pytest.raises(ValueError, match="at least 2"):
        ms_ssim_diversity(volumes[:1])


# ----------------------------------------------------------------------------- MMD


def test_mmd_of_identical_sets_is_zero():
    x = _volumes(5, size=16)
    result = mmd(x, x.clone())
    assert result.value == 0.0
    assert result.scaled == 0.0
    assert result.estimator == "biased"
    assert result.feature_dim == 16**3


def test_mmd_matches_hand_computed_values():
    x, y = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    gaussian = mmd(x, y, bandwidth=1.0, precomputed=True)
    assert gaussian.value == pytest.approx(2 - 2 * math.exp(-0.5))
    assert gaussian.to_dict()["scaled_1e4"] == pytest.approx(gaussian.value * 1e4)
    # Median heuristic: the only distance is 1, so the bandwidth is 1 as well.
    assert mmd(x, y, precomputed=True).bandwidth == pytest.approx(1.0)
    # Linear kernel, biased: |mean(x) - mean(y)|^2.
    xs, ys = torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([[3.0, 0.0], [3.0, 2.0]])
    assert mmd(xs, ys, kernel="linear", precomputed=True).value == pytest.approx(4.0)
    # Linear kernel, unbiased: off-diagonal means of Kxx (0) and Kyy (0) minus 2 * mean Kxy.
    xu, yu = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    unbiased = mmd(xu, yu, kernel="linear", unbiased=True, precomputed=True)
    assert unbiased.value == pytest.approx(-1.0)


def test_unbiased_mmd_of_identical_sets_is_near_zero_not_exact():
    x = _volumes(12, size=16, seed=7)
    value = mmd(x, x, unbiased=True).value
    assert value < 0
    assert abs(value) < 0.2


@pytest.mark.parametrize("bandwidth", [None, 20.0])
def test_mmd_grows_as_one_set_is_shifted(bandwidth):
    x = _volumes(6, size=16, seed=8)
    values = [mmd(x, x + shift, bandwidth=bandwidth).value for shift in (0.0, 0.05, 0.2, 0.5)]
    assert values[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(values))


def test_mmd_in_a_given_feature_space():
    x = _volumes(4, size=16, seed=9)
    features = volume_features(x, feature_fn=lambda b: b.mean(dim=(2, 3, 4)))
    assert features.shape == (4, 1)
    result = mmd(x, x + 0.3, feature_fn=lambda b: b.mean(dim=(2, 3, 4)))
    assert result.feature_dim == 1 and result.value > 0
    assert volume_features(x, feature_size=None).shape == (4, 16**3)
    assert volume_features(x, feature_size=4).shape == (4, 64)


def test_mmd_rejects_bad_inputs():
    x = _volumes(2, size=16)
    with pytest.raises(ValueError, match="kernel"):
        mmd(x, x, kernel="cosine")
    with pytest.raises(ValueError, match="too few"):
        mmd(x[:1], x[:1], unbiased=True)


# ----------------------------------------------------------------------------- classification


def test_auc_hand_computed_with_ties():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.9]))


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_roc_curve_match_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60), 1)  # rounding creates many ties
    assert roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores))
    fpr, tpr, thresholds = roc_curve(labels, scores)
    ref_fpr, ref_tpr, ref_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_allclose(thresholds[1:], ref_thr[1:])


def test_classification_metrics_hand_computed_and_vs_sklearn():
    labels = [1, 1, 0, 0, 1]
    probs = [0.9, 0.4, 0.6, 0.2, 0.7]  # predictions 1, 0, 1, 0, 1: tp=2, fp=1, fn=1
    result = classification_metrics(labels, probs)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["accuracy"] == pytest.approx(3 / 5)
    rng = np.random.default_rng(0)
    labels, probs = rng.integers(0, 2, 40), rng.random(40)
    predicted = (probs >= 0.5).astype(int)
    result = classification_metrics(labels, probs)
    assert result["f1"] == pytest.approx(skm.f1_score(labels, predicted))
    assert result["precision"] == pytest.approx(skm.precision_score(labels, predicted))
    assert result["recall"] == pytest.approx(skm.recall_score(labels, predicted))
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))


def test_classification_metrics_zero_division_and_bad_labels():
    result = classification_metrics([0, 1, 1], [0.1, 0.2, 0.3])
    assert result["precision"] == 0.0 and result["recall"] == 0.0 and result["f1"] == 0.0
    with pytest.raises(ValueError, match="0 \\(LGG\\) or 1"):
        classification_metrics([0, 2], [0.1, 0.9])
    with pytest.raises(ValueError, match="differ in length"):
        classification_metrics([0, 1], [0.1])


def test_intensity_statistics_read_brain_hyperintensity_and_core():
    from tumoraug.metrics import intensity_statistics, relative_differences

    volume = torch.full((1, 4, 4, 4), -1.0)  # background
    volume[0, :2] = 0.0  # 32 brain voxels at mid intensity
    volume[0, :2, :2, :2] = 0.8  # 8 of them bright: hyperintense and core
    stats = intensity_statistics(volume[None])
    assert stats["hyperintense_share"] == pytest.approx(8 / 32)
    assert stats["core_share"] == pytest.approx(8 / 64)
    assert stats["mean_intensity"] == pytest.approx((24 * 0.5 + 8 * 0.9) / 32)
    darker = intensity_statistics((volume[None] - 0.2).clamp(-1, 1))
    diff = relative_differences(darker, stats)
    assert diff["mean_intensity"] < 0 and diff["hyperintense_share"] == pytest.approx(0.0)
