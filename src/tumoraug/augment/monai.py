"""MONAI dictionary transforms backed by a `Source`: the twins of the TorchIO transforms.

Optional: this module imports MONAI (``pip install "tumoraug[monai]"``); nothing else in
tumoraug imports it. `RandSyntheticReplaced` replaces ``d[key]`` for each key by a synthetic
ROI of the dict's own grade with probability ``prob``; `SyntheticReplaced` does it always,
for a given class and sample seed. Both sit in ``monai.transforms.Compose`` like any MONAI
dictionary transform and share the channel / shape policy of the TorchIO twins
(`tumoraug.augment.transforms.fit_volume`).

Each value under ``keys`` must be channel-first ``(C, D, H, W)``: a ``MetaTensor`` keeps its
affine and meta, a tensor stays a tensor (on its device), a numpy array stays an array; the
new image is float32 in [-1, 1]. Other entries (e.g. a ``seg``) are left as they are.

`RandSyntheticReplaced` draws its coin and its sample seed from MONAI's ``self.R``, so
``Compose(...).set_random_state(seed)`` and ``monai.utils.set_determinism`` make it
reproducible, and it writes what it did into the dict:

- ``"synthetic"``: True once the image is synthetic (an existing True, e.g. from a
  `SyntheticTumorDataset` item, is kept when the coin says no; absent means False).
- ``"synthetic_seed"``: the sample seed of the ROI it put in, -1 when it did not replace.

``SyntheticReplaced(keys, source, label, synthetic_seed)`` rebuilds that output.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type

from tumoraug.augment.source import Source, as_source
from tumoraug.augment.transforms import SourceLike, check_shape_mode, fit_volume
from tumoraug.errors import DataError, LabelError
from tumoraug.generators import Settings
from tumoraug.labels import to_label

__all__ = ["RandSyntheticReplaced", "SyntheticReplaced", "replace_values"]

SEED_BOUND = 2**31
"""Sample seeds are drawn in ``[0, SEED_BOUND)``, the range TorchIO's transforms draw from."""


def check_keys(transform: MapTransform, data: Mapping[Hashable, Any]) -> list[Hashable]:
    """The keys of ``transform`` present in ``data``; a missing one is a `DataError` unless
    ``allow_missing_keys`` (MONAI raises a bare KeyError there)."""
    missing = [key for key in transform.keys if key not in data]
    if missing and not transform.allow_missing_keys:
        raise DataError(
            f"{type(transform).__name__}: key(s) {', '.join(map(repr, missing))} missing from the "
            f"data (entries: {', '.join(map(str, data))}); pass allow_missing_keys=True to skip"
        )
    return [key for key in transform.keys if key in data]


def replace_values(
    data: Mapping[Hashable, Any],
    keys: list[Hashable],
    volume: torch.Tensor,
    shape_mismatch: str,
) -> dict[Hashable, Any]:
    """A copy of ``data`` with ``data[key]`` replaced by ``volume`` fitted to it, for each key.

    The new value has the old one's kind (MetaTensor with its meta, tensor on its device,
    numpy array) and is float32.
    """
    out = dict(data)
    for key in keys:
        value = out[key]
        if not isinstance(value, torch.Tensor | np.ndarray):
            raise DataError(
                f"data[{key!r}] is a {type(value).__name__}: expected a tensor, MetaTensor or "
                "numpy array (load images first, e.g. with monai.transforms.LoadImaged)"
            )
        if value.ndim != 4:
            raise DataError(
                f"data[{key!r}] has shape {tuple(value.shape)}: expected channel-first "
                "(C, D, H, W); add monai.transforms.EnsureChannelFirstd before this transform"
            )
        fitted = fit_volume(
            volume,
            value.shape[0],
            value.shape[1:],
            shape_mismatch,
            str(key),
            select_hint="keys=",
            crop_hint="monai.transforms.ResizeWithPadOrCropd",
        )
        out[key] = convert_to_dst_type(fitted, dst=value, dtype=torch.float32)[0]
    return out


class SyntheticReplaced(MapTransform):
    """Replace ``d[key]`` for each key by the synthetic ROI of class ``label`` and ``seed``.

    The deterministic twin of `RandSyntheticReplaced`, which records the seed it drew as
    ``d["synthetic_seed"]``; this one does not touch other entries.

    Args:
        keys: keys of the images to replace (all get the same ROI).
        source: a `TumorGenerator`, a model folder / Hub id (loaded lazily in each process),
            or any `Source` (e.g. a `SyntheticBank`, which serves a stored ROI of that class).
        label: class of the ROI (``"LGG"``/``"HGG"`` or 0/1).
        seed: sample seed of the ROI.
        shape_mismatch: ``"error"`` (default) or ``"resize"`` (trilinear) when the ROI and
            an image differ in spatial shape.
        sampling: the decoding settings of a generator (`SamplingConfig` defaults when
            None); a Source brings its own.
        allow_missing_keys: skip keys absent from the data instead of raising `DataError`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        source: SourceLike,
        label: int | str,
        seed: int,
        *,
        shape_mismatch: str = "error",
        sampling: Settings = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source: Source = as_source(source, sampling)
        self.label = to_label(label)
        self.seed = int(seed)
        self.shape_mismatch = check_shape_mode(shape_mismatch)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        keys = check_keys(self, data)
        if not keys:
            return dict(data)
        volume = self.source.volumes([self.label], [self.seed])[0]
        return replace_values(data, keys, volume, self.shape_mismatch)


class RandSyntheticReplaced(RandomizableTransform, MapTransform):
    """With probability ``prob``, replace ``d[key]`` by a synthetic ROI of the dict's grade.

    The grade is read from ``d[label_key]`` (0/1, ``"LGG"``/``"HGG"``, or a 0-d tensor);
    a dict that holds images under ``keys`` but no label is a `LabelError`, whatever the coin
    says. The coin and the sample seed
    come from ``self.R`` (see the module docstring for the ``"synthetic"`` and
    ``"synthetic_seed"`` entries it writes).

    Args:
        keys: keys of the images to replace (all get the same ROI).
        generator: a `TumorGenerator`, a model folder / Hub id (loaded lazily in each
            process), or any `Source` (a `SyntheticBank` is fast: it picks a stored ROI of
            the right class).
        prob: probability of replacing.
        label_key: entry holding the class label.
        shape_mismatch: ``"error"`` or ``"resize"``, see `SyntheticReplaced`.
        sampling: the decoding settings of a generator (`SamplingConfig` defaults when
            None); a Source brings its own.
        allow_missing_keys: skip keys absent from the data instead of raising `DataError`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        generator: SourceLike,
        prob: float = 0.5,
        label_key: str = "label",
        *,
        shape_mismatch: str = "error",
        sampling: Settings = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.generator: Source = as_source(generator, sampling)
        self.label_key = label_key
        self.shape_mismatch = check_shape_mode(shape_mismatch)
        self.seed = -1

    def randomize(self, data: Any = None) -> None:
        """Toss the coin; on heads draw the sample seed from ``self.R`` (else ``seed`` is -1)."""
        super().randomize(None)
        self.seed = int(self.R.randint(SEED_BOUND)) if self._do_transform else -1

    def read_label(self, data: Mapping[Hashable, Any]) -> int:
        """The class label in ``data[label_key]``; `LabelError` when the entry is missing."""
        if self.label_key not in data:
            raise LabelError(
                f"RandSyntheticReplaced: the data has no {self.label_key!r} entry to read the "
                f"grade from (entries: {', '.join(map(str, data))}); pass label_key= naming "
                "the entry that holds the class label"
            )
        return to_label(data[self.label_key])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        keys = check_keys(self, data)
        label = self.read_label(data) if keys else None
        self.randomize()
        out = dict(data)
        if label is not None and self._do_transform:
            volume = self.generator.volumes([label], [self.seed])[0]
            out = replace_values(out, keys, volume, self.shape_mismatch)
            out["synthetic"], out["synthetic_seed"] = True, self.seed
        else:
            out.setdefault("synthetic", False)
            out["synthetic_seed"] = -1
        return out
