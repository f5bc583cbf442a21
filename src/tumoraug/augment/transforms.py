"""TorchIO transforms backed by a `Source`: a `TumorGenerator` or a `SyntheticBank`.

`RandomSyntheticReplace` replaces a subject's intensity image(s) by a synthetic ROI of the
subject's own grade, with probability ``p``. Like TorchIO's random transforms it draws its
parameters (here one sample seed), then applies the deterministic `SyntheticReplace` with
them, and that is what the subject's history records: ``subject.get_composed_history()``
rebuilds ``SyntheticReplace(source, label, seed, ...)`` and replays the same ROI: the
recorded `Source` carries the sampling settings it was made with.

Both honour ``include`` / ``exclude`` (intensity images only: label maps are left as they
are, so a ``seg`` no longer matches a replaced image; a name in ``include`` that the subject
lacks is a `DataError`, as TorchIO raises for a missing key), keep each image's affine, and
are not invertible. Class names do not clash with TorchIO's, which matters because TorchIO
rebuilds history entries by class name.

`fit_volume` is the one channel / shape policy, shared with the MONAI dictionary twins in
`tumoraug.augment.monai`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchio as tio
from torchio.transforms.augmentation import RandomTransform
from torchio.transforms.intensity_transform import IntensityTransform

from tumoraug.augment.source import Source, as_source
from tumoraug.errors import ConfigError, DataError, LabelError
from tumoraug.generator import TumorGenerator
from tumoraug.generators import Settings
from tumoraug.labels import to_label

__all__ = ["RandomSyntheticReplace", "SyntheticReplace", "fit_volume"]

SHAPE_MODES = ("error", "resize")
SourceLike = Source | TumorGenerator | str | os.PathLike[str]


def check_included(transform: tio.Transform, subject: tio.Subject) -> None:
    """`DataError` when ``include`` names an entry the subject lacks, as TorchIO raises for a
    missing key: a misspelt or absent image name must not turn the transform into a no-op."""
    missing = [name for name in transform.include or () if name not in subject]
    if missing:
        raise DataError(
            f"{type(transform).__name__}: include names {', '.join(map(repr, missing))}, which "
            f"the subject does not have (entries: {', '.join(map(str, subject.keys()))})"
        )


def check_shape_mode(shape_mismatch: str) -> str:
    """``shape_mismatch`` itself when it is one of `SHAPE_MODES`, else `ConfigError`."""
    if shape_mismatch not in SHAPE_MODES:
        raise ConfigError(f"shape_mismatch must be one of {SHAPE_MODES}, got {shape_mismatch!r}")
    return shape_mismatch


def fit_volume(
    volume: torch.Tensor,
    channels: int,
    spatial_shape: Sequence[int],
    shape_mismatch: str,
    name: str,
    *,
    select_hint: str = "include=/exclude=",
    crop_hint: str = "tio.CropOrPad",
) -> torch.Tensor:
    """A copy of ``volume`` (C,D,H,W) that fits an image of ``channels`` x ``spatial_shape``.

    The one shape policy of the TorchIO and MONAI transforms: the channel count must match
    (`DataError`); a spatial mismatch is a `DataError` with ``shape_mismatch="error"`` and a
    trilinear resize (clamped to [-1, 1]) with ``"resize"``. ``name`` is the image's name in
    the messages; ``select_hint`` / ``crop_hint`` name the caller's way to pick images and to
    crop them.
    """
    if volume.shape[0] != channels:
        raise DataError(
            f"image {name!r} has {channels} channel(s), the synthetic ROI "
            f"{volume.shape[0]}; use {select_hint} to pick images with matching channels"
        )
    target = tuple(int(n) for n in spatial_shape)
    if tuple(volume.shape[1:]) == target:
        return volume.clone()
    if shape_mismatch == "error":
        raise DataError(
            f"image {name!r} has spatial shape {target}, the synthetic ROI "
            f"{tuple(volume.shape[1:])}; pass shape_mismatch='resize' or crop/resize the "
            f"image first (e.g. {crop_hint})"
        )
    resized = F.interpolate(volume[None], size=target, mode="trilinear", align_corners=False)
    return resized[0].clamp(-1.0, 1.0)


class SyntheticReplace(IntensityTransform):
    """Replace intensity images by the synthetic ROI of class ``label`` and sample ``seed``.

    The deterministic half of `RandomSyntheticReplace`, recorded in the subject history.

    Args:
        source: a `TumorGenerator`, a model folder / Hub id, or any `Source` (e.g. a
            `SyntheticBank`, which serves a stored ROI of that class).
        label: class of the ROI (``"LGG"``/``"HGG"`` or 0/1).
        seed: sample seed of the ROI.
        shape_mismatch: ``"error"`` (default) or ``"resize"`` (trilinear) when the ROI and
            the image differ in spatial shape.
        sampling: the decoding settings of a generator (`SamplingConfig` defaults when
            None); a Source brings its own, and the history records the Source with them.
        **kwargs: `tio.Transform` arguments (``include``, ``exclude``, ``copy``, ...).
    """

    def __init__(
        self,
        source: SourceLike,
        label: int | str,
        seed: int,
        *,
        shape_mismatch: str = "error",
        sampling: Settings = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = as_source(source, sampling)
        self.label = to_label(label)
        self.seed = int(seed)
        self.shape_mismatch = check_shape_mode(shape_mismatch)
        self.args_names = ["source", "label", "seed", "shape_mismatch"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        check_included(self, subject)
        images = self.get_images_dict(subject)
        if not images:
            return subject
        volume = self.source.volumes([self.label], [self.seed])[0]
        for name, image in images.items():
            fitted = fit_volume(
                volume, image.shape[0], image.spatial_shape, self.shape_mismatch, name
            )
            image.set_data(fitted)
        return subject


class RandomSyntheticReplace(RandomTransform, IntensityTransform):
    """With probability ``p``, replace the image(s) by a synthetic ROI of the subject's grade.

    The grade is read from ``subject[label_key]`` (0/1, ``"LGG"``/``"HGG"``, or a 0-d
    tensor). Each application draws one sample seed from torch's global RNG (seeded per
    DataLoader worker as usual), so ``torch.manual_seed`` makes a pipeline reproducible and
    the history replays it exactly.

    Args:
        generator: a `TumorGenerator`, a model folder / Hub id (loaded lazily in each
            process), or any `Source` (a `SyntheticBank` is fast: it picks a stored ROI of
            the right class).
        p: probability of replacing.
        label_key: subject entry holding the class label.
        shape_mismatch: ``"error"`` or ``"resize"``, see `SyntheticReplace`.
        sampling: the decoding settings of a generator (`SamplingConfig` defaults when
            None); a Source brings its own.
        **kwargs: `tio.Transform` arguments (``include``, ``exclude``, ...).
    """

    def __init__(
        self,
        generator: SourceLike,
        p: float = 0.5,
        label_key: str = "label",
        *,
        shape_mismatch: str = "error",
        sampling: Settings = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(p=p, **kwargs)
        self.generator = as_source(generator, sampling)
        self.label_key = label_key
        self.shape_mismatch = check_shape_mode(shape_mismatch)
        self.args_names = ["generator", "p", "label_key", "shape_mismatch"]

    @property
    def p(self) -> float:
        """The probability of replacing, under its argument name (``args_names`` replay)."""
        return self.probability

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        check_included(self, subject)
        if not self.get_images_dict(subject):
            return subject
        if self.label_key not in subject:
            raise LabelError(
                f"RandomSyntheticReplace: the subject has no {self.label_key!r} entry to read "
                f"the grade from (entries: {', '.join(map(str, subject.keys()))}); pass "
                "label_key= naming the entry that holds the class label"
            )
        replace = SyntheticReplace(
            self.generator,
            label=to_label(subject[self.label_key]),
            seed=self._get_random_seed(),
            shape_mismatch=self.shape_mismatch,
            **self._get_base_args(),
        )
        transformed = replace(subject)
        assert isinstance(transformed, tio.Subject)
        return transformed
