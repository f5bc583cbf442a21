"""TorchIO transforms backed by a `TumorGenerator` (or a `SyntheticBank`).

`RandomSyntheticReplace` replaces a subject's intensity image(s) by a synthetic ROI of the
subject's own grade, with probability ``p``. Like TorchIO's random transforms it draws its
parameters (here one sample seed), then applies the deterministic `SyntheticReplace` with
them, and that is what the subject's history records: ``subject.get_composed_history()``
rebuilds ``SyntheticReplace(source, label, seed, ...)`` and replays the same ROI.

Both honour ``include`` / ``exclude`` (intensity images only: label maps are left as they
are, so a ``seg`` no longer matches a replaced image), keep each image's affine, and are not
invertible. Class names do not clash with TorchIO's, which matters because TorchIO rebuilds
history entries by class name.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
import torchio as tio
from torchio.transforms.augmentation import RandomTransform
from torchio.transforms.intensity_transform import IntensityTransform

from tumoraug.bank import SyntheticBank
from tumoraug.dataset import GeneratorSource
from tumoraug.errors import ConfigError, DataError, LabelError
from tumoraug.labels import to_label

if TYPE_CHECKING:
    from tumoraug.generator import TumorGenerator

__all__ = ["RandomSyntheticReplace", "SyntheticReplace"]

SHAPE_MODES = ("error", "resize")
Source = GeneratorSource | SyntheticBank


def as_source(
    generator: TumorGenerator | SyntheticBank | GeneratorSource | str | os.PathLike[str],
    settings: dict[str, Any] | None = None,
    device: str = "auto",
) -> Source:
    """A generation source: a bank or a (lazily loaded) generator handle."""
    if isinstance(generator, SyntheticBank | GeneratorSource):
        return generator
    return GeneratorSource(generator, device=device, settings=settings)


def synthetic_volume(source: Source, label: int, seed: int) -> torch.Tensor:
    """One synthetic ROI ``(C,S,S,S)`` of class ``label``, fully determined by ``seed``.

    A generator makes it from that sample seed; a bank picks one of its items of that class
    with a generator seeded by ``seed``.
    """
    if isinstance(source, SyntheticBank):
        candidates = [i for i, v in enumerate(source.labels) if v == label]
        if not candidates:
            raise DataError(f"{source.path}: bank holds no item of class {label}")
        pick = np.random.default_rng(seed).integers(len(candidates))
        return source.read([candidates[int(pick)]])[0]
    return source.generate([label], [seed], batch_size=1)[0]


class SyntheticReplace(IntensityTransform):
    """Replace intensity images by the synthetic ROI of class ``label`` and sample ``seed``.

    The deterministic half of `RandomSyntheticReplace`, recorded in the subject history.

    Args:
        source: a `TumorGenerator`, a model folder / Hub id, or a `SyntheticBank`.
        label: class of the ROI (``"LGG"``/``"HGG"`` or 0/1).
        seed: sample seed of the ROI.
        shape_mismatch: ``"error"`` (default) or ``"resize"`` (trilinear) when the ROI and
            the image differ in spatial shape.
        steps, guidance_scale, temperature: generation settings (``None``: defaults).
        **kwargs: `tio.Transform` arguments (``include``, ``exclude``, ``copy``, ...).
    """

    def __init__(
        self,
        source: TumorGenerator | SyntheticBank | GeneratorSource | str | os.PathLike[str],
        label: int | str,
        seed: int,
        *,
        shape_mismatch: str = "error",
        steps: int | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if shape_mismatch not in SHAPE_MODES:
            raise ConfigError(
                f"shape_mismatch must be one of {SHAPE_MODES}, got {shape_mismatch!r}"
            )
        settings = {"steps": steps, "guidance_scale": guidance_scale, "temperature": temperature}
        self.source = as_source(source, settings)
        self.label = to_label(label)
        self.seed = int(seed)
        self.shape_mismatch = shape_mismatch
        self.steps, self.guidance_scale, self.temperature = steps, guidance_scale, temperature
        self.args_names = [
            "source", "label", "seed", "shape_mismatch", "steps", "guidance_scale", "temperature",
        ]  # fmt: skip

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        images = self.get_images_dict(subject)
        if not images:
            return subject
        volume = synthetic_volume(self.source, self.label, self.seed)
        for name, image in images.items():
            image.set_data(self._fit(volume, image, name))
        return subject

    def _fit(self, volume: torch.Tensor, image: tio.Image, name: str) -> torch.Tensor:
        if volume.shape[0] != image.shape[0]:
            raise DataError(
                f"image {name!r} has {image.shape[0]} channel(s), the synthetic ROI "
                f"{volume.shape[0]}; use include=/exclude= to pick images with matching channels"
            )
        target = tuple(image.spatial_shape)
        if tuple(volume.shape[1:]) == target:
            return volume.clone()
        if self.shape_mismatch == "error":
            raise DataError(
                f"image {name!r} has spatial shape {target}, the synthetic ROI "
                f"{tuple(volume.shape[1:])}; pass shape_mismatch='resize' or crop/resize the "
                "image first (e.g. tio.CropOrPad)"
            )
        resized = F.interpolate(volume[None], size=target, mode="trilinear", align_corners=False)
        return resized[0].clamp(-1.0, 1.0)


class RandomSyntheticReplace(RandomTransform, IntensityTransform):
    """With probability ``p``, replace the image(s) by a synthetic ROI of the subject's grade.

    The grade is read from ``subject[label_key]`` (0/1, ``"LGG"``/``"HGG"``, or a 0-d
    tensor). Each application draws one sample seed from torch's global RNG (seeded per
    DataLoader worker as usual), so ``torch.manual_seed`` makes a pipeline reproducible and
    the history replays it exactly.

    Args:
        generator: a `TumorGenerator`, a model folder / Hub id (loaded lazily in each
            process), or a `SyntheticBank` (fast: picks a stored ROI of the right class).
        p: probability of replacing.
        label_key: subject entry holding the class label.
        shape_mismatch: ``"error"`` or ``"resize"``, see `SyntheticReplace`.
        steps, guidance_scale, temperature: generation settings (``None``: defaults).
        **kwargs: `tio.Transform` arguments (``include``, ``exclude``, ...).
    """

    def __init__(
        self,
        generator: TumorGenerator | SyntheticBank | GeneratorSource | str | os.PathLike[str],
        p: float = 0.5,
        label_key: str = "label",
        *,
        shape_mismatch: str = "error",
        steps: int | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(p=p, **kwargs)
        if shape_mismatch not in SHAPE_MODES:
            raise ConfigError(
                f"shape_mismatch must be one of {SHAPE_MODES}, got {shape_mismatch!r}"
            )
        settings = {"steps": steps, "guidance_scale": guidance_scale, "temperature": temperature}
        self.generator = as_source(generator, settings)
        self.label_key = label_key
        self.shape_mismatch = shape_mismatch
        self.steps, self.guidance_scale, self.temperature = steps, guidance_scale, temperature
        self.args_names = [
            "generator", "p", "label_key", "shape_mismatch", "steps", "guidance_scale",
            "temperature",
        ]  # fmt: skip

    @property
    def p(self) -> float:
        return self.probability

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        if not self.get_images_dict(subject):
            return subject
        if self.label_key not in subject:
            raise LabelError(
                f"RandomSyntheticReplace: the subject has no {self.label_key!r} entry to read "
                f"the grade from (entries: {', '.join(map(str, subject.keys()))}); pass "
                "label_key= naming the entry that holds the class label"
            )
        label = to_label(subject[self.label_key])
        replace = SyntheticReplace(
            self.generator,
            label=label,
            seed=self._get_random_seed(),
            shape_mismatch=self.shape_mismatch,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            temperature=self.temperature,
            **self._get_base_args(),
        )
        transformed = replace(subject)
        assert isinstance(transformed, tio.Subject)
        return transformed
