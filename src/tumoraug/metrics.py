"""Metrics for synthetic ROIs and for the downstream LGG/HGG classifier.

Three families, all written with torch / numpy only (no scikit-learn at run time):

* **3D MS-SSIM** (`ms_ssim_3d`, `ms_ssim_diversity`): structural similarity of two volumes
  over several scales. As in Kwon et al. 2019 and the tumoraug papers, the *mean pairwise*
  MS-SSIM of a sample set measures its diversity: lower means more diverse, and a
  generator is expected to land near the value of the real set.
* **MMD** (`mmd`): maximum mean discrepancy between a real and a generated set, in a
  documented feature space (voxels after average-pool downsampling, or any feature
  function such as a trained classifier's embedding). Reported raw and ×10⁴.
* **Classification** (`roc_auc`, `roc_curve`, `classification_metrics`): rank-based AUC
  with ties, F1, accuracy, precision and recall of binary predictions (1 = HGG).
* **Intensity statistics** (`intensity_statistics`): segmentation-free numbers a grade's
  ROIs should share with the real ones (mean brain intensity, hyperintense share, size of
  the bright tumour core), compared as relative differences.

The definitions, and where they depart from the reference code, are in docs/evaluation.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Wang et al. (2003) per-scale exponents, finest scale first. When a volume is too small
#: for all five scales, the first ``M`` weights are kept and renormalised to sum to 1.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

#: Factor applied to raw MMD values in the papers' tables.
MMD_SCALE = 1e4

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


#: Thresholds of `intensity_statistics` on the [-1, 1] scale: brain (background is -1),
#: hyperintense (FLAIR edema and tumour) and the bright tumour core.
BRAIN_THRESHOLD, HYPERINTENSE_THRESHOLD, CORE_THRESHOLD = -0.99, 0.25, 0.5


# ----------------------------------------------------------------------------- MS-SSIM


def _as_batch(volumes: torch.Tensor | Sequence[torch.Tensor], name: str) -> torch.Tensor:
    """Return volumes as a float (B,C,D,H,W) tensor; accepts (C,D,H,W) / (D,H,W) singles."""
    if not isinstance(volumes, torch.Tensor):
        if len(volumes) == 0:
            raise ValueError(f"{name}: expected at least one volume, got none")
        volumes = torch.stack([torch.as_tensor(v) for v in volumes])
        if volumes.ndim == 4:
            volumes = volumes.unsqueeze(1)
    elif volumes.ndim == 3:
        volumes = volumes[None, None]
    elif volumes.ndim == 4:
        volumes = volumes.unsqueeze(0)
    if volumes.ndim != 5:
        raise ValueError(
            f"{name}: expected (B,C,D,H,W), (C,D,H,W) or (D,H,W) volumes, "
            f"got shape {tuple(volumes.shape)}"
        )
    return volumes.detach().float()


def _gaussian_1d(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).float()


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of a (N,1,D,H,W) tensor (no padding)."""
    k = kernel.numel()
    x = F.conv3d(x, kernel.view(1, 1, k, 1, 1))
    x = F.conv3d(x, kernel.view(1, 1, 1, k, 1))
    return F.conv3d(x, kernel.view(1, 1, 1, 1, k))


def ms_ssim_scales(shape: Sequence[int], window_size: int = 11, max_scales: int = 5) -> int:
    """Number of MS-SSIM scales a volume of spatial ``shape`` allows.

    Scale ``j`` (1-based) sees the volume average-pooled ``j - 1`` times by 2; it is usable
    when its smallest side is still at least ``window_size`` (valid filtering). 32³ with an
    11-voxel window gives 2 scales, 64³ gives 3, 128³ gives 4, 176³ and up give 5.
    """
    smallest = min(int(s) for s in shape)
    scales = 0
    while scales < max_scales and smallest >= window_size:
        scales += 1
        smallest //= 2
    return scales


def ms_ssim_3d(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float = 2.0,
    window_size: int = 11,
    sigma: float = 1.5,
    scales: int | None = None,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """3D multi-scale SSIM between paired volumes; returns one value per pair, shape (B,).

    ``x`` and ``y`` are (B,C,D,H,W) (or single (C,D,H,W) / (D,H,W) volumes) with the same
    shape. ``data_range`` is max - min of the intensities: 2 for tumoraug's [-1, 1] ROIs.
    Per scale, SSIM statistics come from a Gaussian window (``window_size`` voxels, std
    ``sigma``) applied without padding; the contrast-structure term ``cs_j`` of scales
    1..M-1 and the full SSIM of the coarsest scale M are combined as
    ``prod_j cs_j ** w_j * ssim_M ** w_M`` with the Wang et al. weights (renormalised when
    ``M < 5``; see `ms_ssim_scales`). Negative terms are clamped to 0 before the powers so
    that anti-correlated volumes give 0 rather than NaN. Channels are averaged at the end.
    """
    x = _as_batch(x, "x")
    y = _as_batch(y, "y")
    if x.shape != y.shape:
        raise ValueError(
            f"ms_ssim_3d: x and y differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}"
        )
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"ms_ssim_3d: window_size must be a positive odd int, got {window_size}")
    available = ms_ssim_scales(x.shape[2:], window_size, len(MS_SSIM_WEIGHTS))
    if available == 0:
        raise ValueError(
            f"ms_ssim_3d: volumes of spatial shape {tuple(x.shape[2:])} are smaller than the "
            f"{window_size}-voxel window; pass a smaller window_size"
        )
    if scales is None:
        scales = available
    elif not 1 <= scales <= available:
        raise ValueError(
            f"ms_ssim_3d: scales must be in [1, {available}] for spatial shape "
            f"{tuple(x.shape[2:])} and window {window_size}, got {scales}"
        )
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float32, device=x.device)
    weights = weights / weights.sum()
    kernel = _gaussian_1d(window_size, sigma, x.device)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2

    b, c = x.shape[:2]
    xs = x.reshape(b * c, 1, *x.shape[2:])
    ys = y.reshape(b * c, 1, *y.shape[2:])
    terms = []
    for scale in range(scales):
        if scale > 0:
            xs = F.avg_pool3d(xs, 2)
            ys = F.avg_pool3d(ys, 2)
        n = xs.shape[0]
        stats = _blur(torch.cat([xs, ys, xs * xs, ys * ys, xs * ys]), kernel)
        mu_x, mu_y, xx, yy, xy = stats.split(n)
        var_x = xx - mu_x**2
        var_y = yy - mu_y**2
        cov = xy - mu_x * mu_y
        cs_map = (2 * cov + c2) / (var_x + var_y + c2)
        if scale < scales - 1:
            term = cs_map
        else:
            term = cs_map * (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
        terms.append(term.flatten(1).mean(1).clamp_min(0))
    per_channel = torch.stack(terms, dim=1).pow(weights).prod(dim=1)
    return per_channel.view(b, c).mean(dim=1)


def _pairs(n: int, max_pairs: int | None, seed: int) -> list[tuple[int, int]]:
    every = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if max_pairs is None or len(every) <= max_pairs:
        return every
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(every), generator=generator)[:max_pairs].sort().values
    return [every[k] for k in chosen.tolist()]


def ms_ssim_diversity(
    volumes: torch.Tensor | Sequence[torch.Tensor],
    *,
    max_pairs: int | None = 1000,
    seed: int = 0,
    batch_size: int = 16,
    **kwargs: Any,
) -> float:
    """Mean MS-SSIM over distinct pairs of a set (Kwon et al. 2019): lower = more diverse.

    All ``N(N-1)/2`` unordered pairs are used when there are at most ``max_pairs`` of them,
    otherwise ``max_pairs`` pairs drawn without replacement with ``seed``. Extra keyword
    arguments go to `ms_ssim_3d`.
    """
    batch = _as_batch(volumes, "volumes")
    if batch.shape[0] < 2:
        raise ValueError(f"ms_ssim_diversity: needs at least 2 volumes, got {batch.shape[0]}")
    pairs = _pairs(batch.shape[0], max_pairs, seed)
    values = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        first = batch[[i for i, _ in chunk]]
        second = batch[[j for _, j in chunk]]
        values.append(ms_ssim_3d(first, second, **kwargs))
    return float(torch.cat(values).mean())


# ----------------------------------------------------------------------------- MMD


def volume_features(
    volumes: torch.Tensor | Sequence[torch.Tensor],
    *,
    feature_size: int | None = 16,
    feature_fn: FeatureFn | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Feature vectors (N, F) float64 in which MMD is measured.

    Default: each volume average-pooled to ``feature_size``³ per channel and flattened
    (``feature_size=None`` keeps every voxel). With ``feature_fn`` (e.g. a trained
    classifier's penultimate layer) the features are ``feature_fn((B,C,D,H,W)) -> (B,F)``
    evaluated without gradients, in batches of ``batch_size``.
    """
    batch = _as_batch(volumes, "volumes")
    chunks = []
    with torch.no_grad():
        for start in range(0, batch.shape[0], batch_size):
            part = batch[start : start + batch_size]
            if feature_fn is not None:
                out = feature_fn(part)
            elif feature_size is not None:
                out = F.adaptive_avg_pool3d(part, feature_size)
            else:
                out = part
            chunks.append(out.reshape(out.shape[0], -1).double().cpu())
    return torch.cat(chunks)


@dataclasses.dataclass(frozen=True)
class MMDResult:
    """An MMD² estimate with everything needed to read or reproduce it."""

    value: float
    kernel: str
    estimator: str
    bandwidth: float | None
    n_x: int
    n_y: int
    feature_dim: int

    @property
    def scaled(self) -> float:
        """The value ×10⁴, as in the papers' tables."""
        return self.value * MMD_SCALE

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict with both the raw and the ×10⁴ value."""
        return {**dataclasses.asdict(self), "scaled_1e4": self.scaled}


def median_bandwidth(features: torch.Tensor) -> float:
    """Median heuristic: the median Euclidean distance between distinct rows (1.0 if 0)."""
    distances = torch.cdist(features, features)
    upper = torch.triu_indices(features.shape[0], features.shape[0], offset=1)
    median = float(distances[upper[0], upper[1]].median()) if upper.shape[1] else 0.0
    return median if median > 0 else 1.0


def mmd(
    x: torch.Tensor | Sequence[torch.Tensor],
    y: torch.Tensor | Sequence[torch.Tensor],
    *,
    kernel: str = "gaussian",
    bandwidth: float | None = None,
    unbiased: bool = False,
    feature_size: int | None = 16,
    feature_fn: FeatureFn | None = None,
    precomputed: bool = False,
) -> MMDResult:
    """Squared MMD between two sets of volumes (or feature rows with ``precomputed=True``).

    Features come from `volume_features`. ``kernel="gaussian"``:
    ``k(a, b) = exp(-|a - b|² / (2 s²))`` with ``s = bandwidth`` or, by default, the median
    distance between distinct points of the pooled set. ``kernel="linear"``: ``k(a, b) =
    a·b``; with the biased estimator this is ``|mean(x) - mean(y)|²``, the formula of Kwon
    et al.'s code (there on raw voxels, ``feature_size=None``, and averaged over pairs of
    mini-batches). The default biased (V-statistic) estimator is >= 0 and exactly 0 for
    identical sets; ``unbiased=True`` drops the within-set diagonals (can be < 0, and is
    not 0 for identical sets).
    """
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"mmd: kernel must be 'gaussian' or 'linear', got {kernel!r}")
    if precomputed:
        fx = torch.as_tensor(x).double().reshape(len(x), -1)
        fy = torch.as_tensor(y).double().reshape(len(y), -1)
    else:
        fx = volume_features(x, feature_size=feature_size, feature_fn=feature_fn)
        fy = volume_features(y, feature_size=feature_size, feature_fn=feature_fn)
    if fx.shape[1] != fy.shape[1]:
        raise ValueError(f"mmd: feature sizes differ: {fx.shape[1]} vs {fy.shape[1]}")
    n, m = fx.shape[0], fy.shape[0]
    if n < 1 or m < 1 or (unbiased and min(n, m) < 2):
        raise ValueError(f"mmd: too few samples ({n}, {m}) for the chosen estimator")
    pooled = torch.cat([fx, fy])
    if kernel == "gaussian":
        scale = bandwidth if bandwidth is not None else median_bandwidth(pooled)
        if scale <= 0:
            raise ValueError(f"mmd: bandwidth must be > 0, got {scale}")
        gram = torch.exp(-torch.cdist(pooled, pooled).pow(2) / (2 * scale**2))
    else:
        scale = None
        gram = pooled @ pooled.T
    kxx, kyy, kxy = gram[:n, :n], gram[n:, n:], gram[:n, n:]
    if unbiased:
        xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        xx, yy = kxx.mean(), kyy.mean()
    value = float(xx + yy - 2 * kxy.mean())
    if not unbiased:
        value = max(value, 0.0)
    return MMDResult(
        value=value,
        kernel=kernel,
        estimator="unbiased" if unbiased else "biased",
        bandwidth=scale,
        n_x=n,
        n_y=m,
        feature_dim=int(fx.shape[1]),
    )


# ----------------------------------------------------------------------------- classification


def _binary_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (LGG) or 1 (HGG)")
    return y.astype(np.int64), s


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    start = 0
    while start < values.size:
        stop = start
        while stop + 1 < values.size and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve via the Mann-Whitney rank sum (ties count one half).

    Returns NaN when only one class is present (the AUC is undefined there).
    """
    y, s = _binary_inputs(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)``, starting at (0, 0) with threshold +inf.

    One point per distinct score, thresholds decreasing; a sample counts as positive when
    its score is >= the threshold.
    """
    y, s = _binary_inputs(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_run]
    fps = (last_of_run + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int(y.size - y.sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, s[last_of_run]]
    return fpr, tpr, thresholds


def classification_metrics(
    labels: Any, probabilities: Any, threshold: float = 0.5
) -> dict[str, float]:
    """AUC, F1, accuracy, precision and recall of P(HGG) scores (HGG = positive class).

    Predictions are ``probability >= threshold``. Precision (recall) is 0 when nothing is
    predicted (present) positive, and F1 is 0 when precision + recall is 0, as scikit-learn
    does with ``zero_division=0``.
    """
    y, p = _binary_inputs(labels, probabilities)
    predicted = (p >= threshold).astype(np.int64)
    tp = int(((predicted == 1) & (y == 1)).sum())
    fp = int(((predicted == 1) & (y == 0)).sum())
    fn = int(((predicted == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "auc": roc_auc(y, p),
        "f1": f1,
        "accuracy": float((predicted == y).mean()) if y.size else math.nan,
        "precision": precision,
        "recall": recall,
    }


# ----------------------------------------------------------------------------- intensities


def intensity_statistics(volumes: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, float]:
    """Mean over a set of ROIs of three per-ROI numbers that need no segmentation.

    ``mean_intensity``: mean brain intensity (voxels above `BRAIN_THRESHOLD`) on a 0..1
    scale (``(x + 1) / 2``, so that it is positive and a relative difference is defined);
    ``hyperintense_share``: share of brain voxels above `HYPERINTENSE_THRESHOLD`;
    ``core_share``: share of all ROI voxels above `CORE_THRESHOLD` (the size of the bright
    tumour core). Synthetic ROIs come without a segmentation, so all three read the image.
    """
    x = _as_batch(volumes, "volumes").flatten(1)
    brain = x > BRAIN_THRESHOLD
    voxels = brain.sum(1).clamp_min(1)
    mean = (((x + 1) / 2) * brain).sum(1) / voxels
    hyper = ((x > HYPERINTENSE_THRESHOLD) & brain).sum(1) / voxels
    core = (x > CORE_THRESHOLD).float().mean(1)
    return {
        "mean_intensity": float(mean.mean()),
        "hyperintense_share": float(hyper.float().mean()),
        "core_share": float(core.mean()),
    }


def relative_differences(generated: dict[str, float], real: dict[str, float]) -> dict[str, float]:
    """``(generated - real) / real`` per statistic (NaN where the real value is 0)."""
    return {k: (generated[k] - v) / v if v else math.nan for k, v in real.items()}
