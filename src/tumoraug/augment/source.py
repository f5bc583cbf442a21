"""Where synthetic volumes come from: the small `Source` interface and its generator handle.

A `Source` answers ``volumes(labels, seeds)`` with one volume per (label, seed) pair. Two
kinds exist: `GeneratorSource`, a picklable handle on a generator (a `TumorGenerator` or a
baseline of `tumoraug.baselines`) bound to its sampling settings, and
`tumoraug.augment.SyntheticBank`, which serves stored items. The dataset, the transforms,
banks and exports call nothing else, so none of them branches on which kind it holds.
`as_source` turns what a user passes (a generator, a model folder or Hub id, a bank) into a
Source.

Item ``i`` of a synthetic dataset or bank with seed ``s`` has the sample seed
``item_seeds(s, [i])`` and the label ``class_labels([i], ratio, s)``: both depend on the
index alone, so datasets, banks, their shards and ``generator.generate(labels, seed=s)``
agree item by item.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from tumoraug.config import Config
from tumoraug.device import resolve_device
from tumoraug.errors import ConfigError, DataError
from tumoraug.generator import TumorGenerator
from tumoraug.generators import Settings, open_generator, resolve_sampling
from tumoraug.labels import LabelLike, to_labels
from tumoraug.sampling import per_sample_seeds

__all__ = [
    "GeneratorSource",
    "Source",
    "as_source",
    "check_count",
    "class_labels",
    "item_seeds",
    "resolve_labels",
]


@runtime_checkable
class Source(Protocol):
    """Anything that makes synthetic volumes from per-sample labels and seeds.

    ``volumes(labels, seeds)`` returns ``(N, C, S, S, S)`` float32 on the CPU in [-1, 1],
    volume ``j`` determined by ``(labels[j], seeds[j])`` alone; ``model_id`` names the model
    the volumes come from; ``settings`` the sampling settings they were made with (a
    JSON-compatible dict); ``device`` where they are computed. A source may also name the
    C channels of its volumes in ``modalities`` (exports then write a file per channel).
    """

    model_id: str
    settings: dict[str, Any]
    device: str

    def volumes(self, labels: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
        """ROIs ``(N, C, S, S, S)`` float32 on the CPU in [-1, 1], volume ``j`` made from
        ``(labels[j], seeds[j])`` alone."""
        ...


def check_count(owner: str, name: str, value: object, low: int = 1) -> int:
    """``value`` when it is an int >= ``low``, else a `ConfigError` naming ``owner.name``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{owner}: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def item_seeds(seed: int, indices: Sequence[int] | np.ndarray) -> list[int]:
    """Per-item sample seeds: ``per_sample_seeds(seed, 1, start=i)`` for each index ``i``."""
    out = []
    for index in np.asarray(indices, dtype=np.int64).tolist():
        if index < 0:
            raise DataError(f"item indices must be >= 0, got {index}")
        out.extend(per_sample_seeds(seed, 1, start=index))
    return out


def class_labels(indices: Sequence[int] | np.ndarray, class_ratio: float, seed: int) -> list[int]:
    """Class label of each index for a fraction ``class_ratio`` of HGG (1) items.

    A low-discrepancy sequence with a seed-dependent phase: every run of consecutive indices
    holds ``class_ratio`` HGG items up to one item, and the label of an index does not depend
    on the length of the dataset (so that a bank keeps its labels when it grows).
    """
    if not 0.0 <= class_ratio <= 1.0:
        raise ConfigError(f"class_ratio must be in [0, 1], got {class_ratio}")
    phase = item_seeds(seed, [0])[0] / float(1 << 32)
    idx = np.asarray(indices, dtype=np.float64)
    labels = np.floor((idx + 1) * class_ratio + phase) - np.floor(idx * class_ratio + phase)
    return [int(v) for v in labels]


def resolve_labels(
    labels: LabelLike | Sequence[LabelLike] | None,
    length: int | None,
    class_ratio: float,
    seed: int,
    start: int = 0,
) -> list[int]:
    """Labels of items ``start .. start+length``: explicit, one grade for all, or by ratio."""
    if labels is None:
        if length is None:
            raise ConfigError("give either `length` or explicit `labels`")
        return class_labels(range(start, start + length), class_ratio, seed)
    if isinstance(labels, str | int) or getattr(labels, "ndim", None) == 0:
        if length is None:
            raise ConfigError("a single label needs `length` (how many items)")
        return to_labels(labels, length)
    resolved = to_labels(labels)
    if length is not None and length != len(resolved):
        raise ConfigError(f"length={length} but {len(resolved)} labels were given")
    return resolved


class GeneratorSource:
    """A picklable handle on a generator and the sampling settings it samples with.

    ``generator``: a `TumorGenerator`, a baseline (any `tumoraug.generators.FolderGenerator`,
    or anything with their ``volumes`` method), or a model folder / Hub id of any of them
    (`open_generator` reads its JSON files here; the weights are loaded once per process on
    the first request, so that DataLoader workers, fork or spawn, each load their own copy).
    ``sampling``: that generator's settings (`SamplingConfig` for a `TumorGenerator`), a
    dict overriding some of their defaults, or None for the defaults. ``batch_size``: samples
    drawn together (it does not change the volumes). Deep copies return the handle itself:
    TorchIO deep-copies subjects together with their history, which refers to it.
    """

    def __init__(
        self,
        generator: TumorGenerator | str | os.PathLike[str],
        sampling: Settings = None,
        *,
        device: str = "auto",
        batch_size: int = 8,
    ) -> None:
        if isinstance(generator, str | os.PathLike):
            resolve_device(device)  # a bad device fails here, not in a DataLoader worker
            self.spec: str | None = str(generator)
            self._generator: Any = None
        elif isinstance(generator, Source):
            raise ConfigError(f"{generator!r} is a Source already: use it as it is")
        elif callable(getattr(generator, "volumes", None)):
            self.spec = None
            self._generator = generator
        else:
            raise ConfigError(
                "expected a TumorGenerator, a model folder / Hub id or a Source (e.g. a "
                f"SyntheticBank), got {type(generator).__name__}"
            )
        check_count("GeneratorSource", "batch_size", batch_size)
        if not (sampling is None or isinstance(sampling, Config | dict)):
            raise ConfigError(
                "sampling must be the generator's settings (e.g. a tumoraug.SamplingConfig), "
                f"a dict of overrides or None, got {type(sampling).__name__}"
            )
        self._sampling_request = sampling
        self._sampling: Any = None
        self.device_request = device
        self.batch_size = batch_size
        if self._generator is not None:
            self._sampling = resolve_sampling(self._generator, sampling)  # errors here, early

    @property
    def generator(self) -> Any:
        """The generator, opened on first use in this process (`open_generator`; its weights
        are loaded on the first request)."""
        if self._generator is None:
            self._generator = open_generator(self.spec, device=self.device_request)
        return self._generator

    @property
    def sampling(self) -> Any:
        """The generator's sampling settings (resolved against its defaults on first use)."""
        if self._sampling is None:
            self._sampling = resolve_sampling(self.generator, self._sampling_request)
        return self._sampling

    @property
    def model_id(self) -> str:
        """Where the model comes from (folder or Hub id), for manifests and reprs."""
        if self.spec is not None:
            return self.spec
        source = getattr(self._generator, "source", None)
        return str(source) if source else type(self._generator).__name__

    @property
    def settings(self) -> dict[str, Any]:
        """The sampling settings as a JSON-compatible dict."""
        return self.sampling.to_dict()

    @property
    def modalities(self) -> tuple[str, ...] | None:
        """Names of the channels of the volumes (None when the generator does not name them)."""
        names = getattr(self.generator, "modalities", None)
        return None if names is None else tuple(names)

    @property
    def device(self) -> str:
        """Device the generator runs (or will run) on; does not load anything."""
        if self._generator is None:
            return str(resolve_device(self.device_request))
        return str(getattr(self._generator, "device", "cpu"))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.spec is not None:
            state["_generator"] = None
        return state

    def volumes(self, labels: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
        """ROIs ``(N, C, S, S, S)`` float32 on the CPU for per-sample ``labels`` and ``seeds``."""
        out = self.generator.volumes(
            labels, seeds, sampling=self.sampling, batch_size=self.batch_size
        )
        return out.detach().to("cpu", torch.float32)

    def __deepcopy__(self, memo: dict[int, Any]) -> GeneratorSource:
        return self

    def __repr__(self) -> str:
        settings = self._sampling or self._sampling_request
        return f"GeneratorSource({self.model_id!r}, sampling={settings})"


def as_source(
    obj: Source | TumorGenerator | str | os.PathLike[str],
    sampling: Settings = None,
    device: str = "auto",
    *,
    batch_size: int = 8,
) -> Source:
    """A `Source` for ``obj``: a Source as it is, a generator or model folder wrapped.

    ``sampling``, ``device`` and ``batch_size`` configure the `GeneratorSource` made for a
    generator. A Source (a bank, a `GeneratorSource`) has fixed settings: giving
    ``sampling`` with one is a `ConfigError`, never silently ignored.
    """
    if isinstance(obj, Source):
        if sampling is not None:
            raise ConfigError(
                f"sampling={sampling} given with {obj!r}, whose settings were fixed when it "
                f"was built ({obj.settings}); a bank's settings were fixed when the bank was "
                "built: drop sampling=, or pass the generator itself"
            )
        return obj
    return GeneratorSource(obj, sampling, device=device, batch_size=batch_size)
