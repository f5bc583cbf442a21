"""The hand-written metrics against independent implementations, on the same inputs.

* 3D MS-SSIM against MONAI's `MultiScaleSSIMMetric` (an optional dependency: installed with
  the ``dev`` and ``monai`` extras). Conventions that must be matched: MONAI takes the
  scale weights as given, tumoraug renormalises the first ``M`` Wang et al. weights when a
  volume allows only ``M < 5`` scales, so MONAI gets the renormalised weights; both use a
  Gaussian window (11 voxels, sigma 1.5) without padding and 2× average pooling between
  scales. Agreement: 1e-5.
* MMD against the textbook formula written directly in NumPy (Gretton et al. 2012: the
  unbiased U-statistic and the biased V-statistic; median-distance bandwidth, taken as the
  lower median like `torch.median`). Agreement: 1e-10 (both in float64).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from extras import require_extra
from tumoraug.metrics import MS_SSIM_WEIGHTS, mmd, ms_ssim_3d, ms_ssim_scales


def pair(size: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, size, size, size, generator=g) * 2 - 1
    smooth = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1)  # some structure
    y = (smooth + noise * torch.randn(smooth.shape, generator=g)).clamp(-1, 1)
    return smooth, y


@pytest.mark.parametrize(("size", "noise"), [(32, 0.1), (48, 0.3), (48, 1.0)])
def test_ms_ssim_matches_monai(size, noise):
    metrics = require_extra("monai.metrics")
    x, y = pair(size, noise)
    scales = ms_ssim_scales(x.shape[2:])
    weights = [w / sum(MS_SSIM_WEIGHTS[:scales]) for w in MS_SSIM_WEIGHTS[:scales]]
    reference = metrics.MultiScaleSSIMMetric(
        spatial_dims=3, data_range=2.0, kernel_size=11, kernel_sigma=1.5, weights=weights
    )(x, y).flatten()
    ours = ms_ssim_3d(x, y)
    assert torch.allclose(ours, reference, atol=1e-5), (ours, reference)


def numpy_mmd(fx: np.ndarray, fy: np.ndarray, unbiased: bool) -> float:
    """Squared MMD with a Gaussian kernel, bandwidth = median pooled pairwise distance.

    tumoraug takes the median with `torch.median`, which returns the lower of the two middle
    values of an even count where `np.median` averages them (0.1 % apart in MMD here): the
    one convention difference."""
    pooled = np.concatenate([fx, fy])
    d2 = ((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1)
    distances = np.sqrt(d2[np.triu_indices(len(pooled), k=1)])
    s = np.sort(distances)[(len(distances) - 1) // 2]  # the lower median, as torch.median
    k = np.exp(-d2 / (2 * s**2))
    n, m = len(fx), len(fy)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    if unbiased:
        xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    else:
        xx, yy = kxx.mean(), kyy.mean()
    return float(xx + yy - 2 * kxy.mean())


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_matches_the_formula_in_numpy(unbiased):
    rng = np.random.default_rng(0)
    fx, fy = rng.normal(size=(12, 7)), rng.normal(0.5, 1.3, size=(9, 7))
    ours = mmd(fx, fy, precomputed=True, unbiased=unbiased).value
    assert ours == pytest.approx(numpy_mmd(fx, fy, unbiased), abs=1e-10)
    linear = mmd(fx, fy, precomputed=True, kernel="linear").value
    assert linear == pytest.approx(float(((fx.mean(0) - fy.mean(0)) ** 2).sum()), abs=1e-10)
