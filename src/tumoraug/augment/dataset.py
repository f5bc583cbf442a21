"""Synthetic ROIs as a torch Dataset, and mixing them with real ROIs on the fly.

`SyntheticTumorDataset` serves ``tio.Subject`` items made by a `TumorGenerator` (or read from
a `SyntheticBank`). Item ``i`` is a pure function of ``(seed, i)`` and the generation
settings: its class label and its sample seed are derived from the index alone, and the
generator draws every sample's noise from its own seed, so that the same index gives the same
ROI in any worker, process or batch composition.

`mix` wraps a real dataset and a synthetic one into one Dataset that yields both at a fixed
ratio per epoch and returns the kind of item the real dataset yields (``tio.Subject`` or
``(tensor, label)``), so that an existing training loop takes it unchanged.
`SyntheticThenReal` is the epoch schedule for pre-training on synthetic data and
fine-tuning on real data.
"""

from __future__ import annotations

import collections
import math
import os
import types
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torchio as tio
from torch.utils.data import Dataset

from tumoraug.errors import ConfigError, DataError
from tumoraug.labels import GRADES, LabelLike, to_grade, to_labels
from tumoraug.sampling import per_sample_seeds

if TYPE_CHECKING:
    from tumoraug.bank import SyntheticBank
    from tumoraug.generator import TumorGenerator

__all__ = [
    "MixedDataset",
    "SyntheticThenReal",
    "SyntheticTumorDataset",
    "class_labels",
    "item_seeds",
    "mix",
]


def item_seeds(seed: int, indices: Sequence[int] | np.ndarray) -> list[int]:
    """Per-item sample seeds: ``per_sample_seeds(seed, 1, start=i)`` for each index ``i``.

    The seed of an item depends on nothing but the dataset seed and its own index, so that
    datasets, banks, their shards and ``generator.generate(labels, seed=seed)`` agree item by
    item.
    """
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


def _resolve_labels(
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


def make_subject(volume: torch.Tensor, label: int, seed: int, index: int) -> tio.Subject:
    """A synthetic item: ``image`` (1 mm affine), ``label``, ``grade``, ``synthetic``, ``seed``."""
    return tio.Subject(
        image=tio.ScalarImage(tensor=volume, affine=np.eye(4)),
        label=int(label),
        grade=to_grade(label),
        synthetic=True,
        seed=int(seed),
        subject_id=f"synthetic-{index:06d}",
    )


class GeneratorSource:
    """A picklable handle on a `TumorGenerator`, given live or as a folder / Hub id.

    A path is loaded lazily, once per process, on the first request, so that DataLoader
    workers (fork or spawn) each load their own copy. Deep copies return the handle itself:
    TorchIO deep-copies subjects together with their history, which refers to this handle.
    """

    def __init__(
        self,
        generator: TumorGenerator | str | os.PathLike[str],
        *,
        device: str = "auto",
        settings: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(generator, str | os.PathLike):
            self.spec: str | None = str(generator)
            self._generator: Any = None
        elif callable(getattr(generator, "generate", None)):
            self.spec = None
            self._generator = generator
        else:
            raise ConfigError(
                "generator must be a TumorGenerator or a model folder / Hub id, "
                f"got {type(generator).__name__}"
            )
        self.device = device
        self.settings = {k: v for k, v in (settings or {}).items() if v is not None}

    @property
    def generator(self) -> TumorGenerator:
        """The generator, created on first use in this process."""
        if self._generator is None:
            from tumoraug.generator import TumorGenerator

            self._generator = TumorGenerator.from_pretrained(self.spec, device=self.device)
        return self._generator

    @property
    def model_id(self) -> str:
        """Where the model comes from (folder or Hub id), for manifests and reprs."""
        if self.spec is not None:
            return self.spec
        source = getattr(self._generator, "source", None)  # TumorGenerator.source
        return str(source) if source else type(self._generator).__name__

    def generate(
        self, labels: Sequence[int], seeds: Sequence[int], batch_size: int
    ) -> torch.Tensor:
        """Volumes ``(N, C, S, S, S)`` for per-sample ``labels`` and ``seeds``."""
        if not labels:
            raise DataError("no samples requested")
        generator = self.generator
        if not hasattr(generator, "generate_tokens"):
            out = generator.generate(
                list(labels), seed=list(seeds), batch_size=batch_size, **self.settings
            )
            return out.detach().to("cpu", torch.float32)
        # Tokens are sampled in batches (per-sample seeds make them independent of the batch);
        # the decoder runs one sample at a time because batched convolutions differ in the
        # last float bits with the batch size, and item i must be bit-identical in any batch.
        volumes = []
        for lo in range(0, len(labels), batch_size):
            tokens = generator.generate_tokens(
                list(labels[lo : lo + batch_size]),
                list(seeds[lo : lo + batch_size]),
                **self.settings,
            )
            volumes.extend(generator.decode(t[None])[0] for t in tokens)
        return torch.stack(volumes).to("cpu", torch.float32)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.spec is not None:
            state["_generator"] = None
        return state

    def __deepcopy__(self, memo: dict[int, Any]) -> GeneratorSource:
        return self

    def __repr__(self) -> str:
        return f"GeneratorSource({self.model_id!r}, settings={self.settings})"


class SyntheticTumorDataset(Dataset):
    """A torch Dataset of synthetic ROIs as ``tio.Subject`` items, deterministic per index.

    Each item holds ``image`` (``tio.ScalarImage`` ``(C,S,S,S)`` in [-1, 1], 1 mm affine),
    ``label`` (0 LGG / 1 HGG), ``grade``, ``synthetic=True``, ``seed`` and ``subject_id``.

    Args:
        generator: a `TumorGenerator`, or a model folder / Hub id loaded lazily in each
            process (the way to go with DataLoader workers).
        length: number of items (optional when ``labels`` is a sequence).
        labels: explicit labels (a sequence), one grade for all items, or ``None`` to use
            ``class_ratio``.
        class_ratio: fraction of HGG items when ``labels`` is ``None``.
        seed: dataset seed; item ``i`` uses the sample seed ``item_seeds(seed, [i])``.
        transform: applied to each Subject (any TorchIO transform or callable).
        steps, guidance_scale, temperature: generation settings (``None``: generator default).
        block_size: ``dataset[i]`` generates the ``block_size`` consecutive items around ``i``
            at once and keeps them (``cache_blocks`` blocks), which pays off for sequential
            access; DataLoader batches are generated together through ``__getitems__``.
            Use ``block_size=1`` for shuffled item-by-item access on CPU.
        device: device of a generator loaded from a path.
    """

    def __init__(
        self,
        generator: TumorGenerator | str | os.PathLike[str],
        length: int | None = None,
        *,
        labels: LabelLike | Sequence[LabelLike] | None = None,
        class_ratio: float = 0.5,
        seed: int = 0,
        transform: Callable[[tio.Subject], tio.Subject] | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        block_size: int = 8,
        cache_blocks: int = 2,
        device: str = "auto",
    ) -> None:
        if length is not None and length < 0:
            raise ConfigError(f"length must be >= 0, got {length}")
        if block_size < 1 or cache_blocks < 1:
            raise ConfigError("block_size and cache_blocks must be >= 1")
        self.source: GeneratorSource | None = GeneratorSource(
            generator,
            device=device,
            settings={"steps": steps, "guidance_scale": guidance_scale, "temperature": temperature},
        )
        self.bank: SyntheticBank | None = None
        self.labels: list[int] = _resolve_labels(labels, length, class_ratio, seed)
        self.seed = seed
        self._seeds: list[int] | None = None  # derived on demand: cheap per item
        self.transform = transform
        self.block_size = block_size
        self.cache_blocks = cache_blocks
        self._cache: collections.OrderedDict[int, torch.Tensor] = collections.OrderedDict()

    @classmethod
    def from_bank(
        cls,
        path: str | os.PathLike[str] | SyntheticBank,
        *,
        transform: Callable[[tio.Subject], tio.Subject] | None = None,
    ) -> SyntheticTumorDataset:
        """Serve the ROIs of a `SyntheticBank` file, without any model."""
        from tumoraug.bank import SyntheticBank

        bank = path if isinstance(path, SyntheticBank) else SyntheticBank.open(path)
        self = cls.__new__(cls)
        self.source = None
        self.bank = bank
        self.labels = list(bank.labels)
        self.seed = bank.seed if bank.seed is not None else 0
        self._seeds = list(bank.seeds)
        self.transform = transform
        self.block_size = 1
        self.cache_blocks = 1
        self._cache = collections.OrderedDict()
        return self

    def __len__(self) -> int:
        return len(self.labels)

    def set_transform(self, transform: Callable[[tio.Subject], tio.Subject] | None) -> None:
        """Replace the transform (as `tio.SubjectsDataset.set_transform`)."""
        self.transform = transform

    @property
    def seeds(self) -> list[int]:
        """Sample seed of every item."""
        if self._seeds is None:
            self._seeds = item_seeds(self.seed, range(len(self)))
        return self._seeds

    def item_seed(self, index: int) -> int:
        """Sample seed of item ``index``."""
        if self._seeds is not None:
            return self._seeds[index]
        return item_seeds(self.seed, [index])[0]

    def dry_iter(self) -> list[types.SimpleNamespace]:
        """Per-item metadata (label, grade, seed) without generating anything.

        `tio.Queue` calls this to count patches per epoch.
        """
        return [
            types.SimpleNamespace(label=label, grade=GRADES[label], seed=seed)
            for label, seed in zip(self.labels, self.seeds, strict=True)
        ]

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} synthetic items")
        return index

    def volumes(self, indices: Sequence[int]) -> torch.Tensor:
        """Raw volumes ``(N, C, S, S, S)`` of ``indices`` (no transform), generated together."""
        indices = [self._check_index(i) for i in indices]
        if self.bank is not None:
            return self.bank.read(indices)
        assert self.source is not None
        return self.source.generate(
            [self.labels[i] for i in indices],
            [self.item_seed(i) for i in indices],
            batch_size=max(self.block_size, 1),
        )

    def _volume(self, index: int) -> torch.Tensor:
        if self.bank is not None:
            return self.bank.read([index])[0]
        block = index // self.block_size
        if block not in self._cache:
            start = block * self.block_size
            stop = min(start + self.block_size, len(self))
            self._cache[block] = self.volumes(range(start, stop))
            while len(self._cache) > self.cache_blocks:
                self._cache.popitem(last=False)
        self._cache.move_to_end(block)
        return self._cache[block][index - block * self.block_size]

    def _item(self, index: int, volume: torch.Tensor) -> tio.Subject:
        subject = make_subject(volume, self.labels[index], self.item_seed(index), index)
        return self.transform(subject) if self.transform is not None else subject

    def __getitem__(self, index: int) -> tio.Subject:
        index = self._check_index(index)
        volume = self._volume(index)
        # a block stays cached: hand out a copy, so that changes to an item do not leak
        return self._item(index, volume if self.bank is not None else volume.clone())

    def __getitems__(self, indices: Sequence[int]) -> list[tio.Subject]:
        """A DataLoader batch: the items not cached are generated (or read) in one call."""
        indices = [self._check_index(i) for i in indices]
        volumes = {
            i: self._cache[i // self.block_size][i % self.block_size].clone()
            for i in indices
            if self.bank is None and i // self.block_size in self._cache
        }
        missing = [i for i in indices if i not in volumes]
        if missing:
            volumes.update(zip(missing, self.volumes(missing), strict=True))
        return [self._item(i, volumes[i]) for i in indices]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = collections.OrderedDict()
        return state

    def __repr__(self) -> str:
        counts = [self.labels.count(c) for c in range(len(GRADES))]
        origin = f"bank={self.bank.path}" if self.bank is not None else repr(self.source)
        per_class = ", ".join(f"{g}={n}" for g, n in zip(GRADES, counts, strict=True))
        return f"SyntheticTumorDataset(len={len(self)}, {per_class}, seed={self.seed}, {origin})"


def _first_scalar_image(subject: tio.Subject) -> tuple[str, tio.Image]:
    for name, image in subject.get_images_dict(intensity_only=True).items():
        return name, image
    raise DataError(f"subject has no intensity image (keys: {', '.join(subject.keys())})")


class MixedDataset(Dataset):
    """Real and synthetic items at a fixed ratio per epoch; built by `mix`."""

    def __init__(
        self,
        real: Dataset,
        synthetic: Dataset,
        ratio: float = 0.5,
        *,
        length: int | None = None,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(
                f"mix ratio (fraction of synthetic items) must be in [0, 1], got {ratio}"
            )
        self.real, self.synthetic = real, synthetic
        self.n_real_source, self.n_syn_source = len(real), len(synthetic)  # type: ignore[arg-type]
        if length is None:
            if ratio >= 1.0:
                length = self.n_syn_source
            else:
                length = self.n_real_source + round(self.n_real_source * ratio / (1.0 - ratio))
        if length < 0:
            raise ConfigError(f"length must be >= 0, got {length}")
        self.ratio, self.length, self.seed = ratio, int(length), seed
        self.n_synthetic = round(self.length * ratio)
        self.n_real = self.length - self.n_synthetic
        if (self.n_real or ratio < 1.0) and not self.n_real_source:
            raise DataError("mix: the real dataset is empty but the ratio asks for real items")
        if (self.n_synthetic or ratio > 0.0) and not self.n_syn_source:
            raise DataError("mix: the synthetic dataset is empty but the ratio asks for some")
        self._template: Any = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw the order and the items of epoch ``epoch`` (reproducible from ``seed``).

        Call it before creating the DataLoader iterator of the epoch; workers started with
        ``persistent_workers=True`` keep the epoch they were started with.
        """
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        kinds = np.zeros(self.length, dtype=np.int8)
        kinds[rng.permutation(self.length)[: self.n_synthetic]] = 1
        source_index = np.empty(self.length, dtype=np.int64)
        source_index[kinds == 0] = _cycled_permutation(rng, self.n_real_source, self.n_real)
        source_index[kinds == 1] = _cycled_permutation(rng, self.n_syn_source, self.n_synthetic)
        self.kinds, self.source_index = kinds, source_index

    def __len__(self) -> int:
        return self.length

    def is_synthetic(self, index: int) -> bool:
        """Whether item ``index`` of the current epoch is synthetic."""
        return bool(self.kinds[index])

    @property
    def template(self) -> Any:
        """The first real item, whose kind and keys synthetic items are made to match."""
        if self._template is None:
            if not self.n_real_source:
                return None
            self._template = self.real[0]
        return self._template

    def _conform(self, item: Any) -> Any:
        template = self.template
        if template is None:
            return item
        if isinstance(template, tio.Subject):
            return _conform_subject(item, template)
        if isinstance(template, tuple | list):
            return _conform_pair(item, template)
        raise DataError(
            "mix: the real dataset must yield tio.Subject items or (tensor, label) pairs, "
            f"got {type(template).__name__}"
        )

    def _real(self, item: Any) -> Any:
        if isinstance(item, tio.Subject) and "synthetic" not in item:
            item["synthetic"] = False
            item.update_attributes()
        return item

    def __getitem__(self, index: int) -> Any:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} mixed items")
        kind, j = int(self.kinds[index]), int(self.source_index[index])
        if kind == 0:
            return self._real(self.real[j])
        return self._conform(self.synthetic[j])

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """A DataLoader batch: synthetic items are fetched in one call when possible."""
        out: dict[int, Any] = {}
        syn = [i for i in indices if self.kinds[i] == 1]
        if syn and hasattr(self.synthetic, "__getitems__"):
            items = self.synthetic.__getitems__([int(self.source_index[i]) for i in syn])
            out.update((i, self._conform(item)) for i, item in zip(syn, items, strict=True))
        return [out[i] if i in out else self[i] for i in indices]

    def __repr__(self) -> str:
        return (
            f"MixedDataset(len={self.length}, real={self.n_real}, synthetic={self.n_synthetic}, "
            f"ratio={self.ratio}, seed={self.seed}, epoch={self.epoch})"
        )


def _cycled_permutation(rng: np.random.Generator, n_source: int, count: int) -> np.ndarray:
    """``count`` indices of ``range(n_source)``: whole permutations, then part of one more."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    rounds = math.ceil(count / n_source)
    return np.concatenate([rng.permutation(n_source) for _ in range(rounds)])[:count]


def _conform_pair(item: Any, template: Sequence[Any]) -> tuple[Any, Any]:
    """A synthetic item as an ``(image, label)`` pair typed like the real pair."""
    if len(template) != 2:
        raise DataError(
            f"mix: real items are tuples of length {len(template)}; only (tensor, label) "
            "pairs are supported"
        )
    if isinstance(item, tio.Subject):
        image, label = _first_scalar_image(item)[1].data, item["label"]
    else:
        image, label = item
    real_image, real_label = template
    if isinstance(real_image, torch.Tensor) and tuple(image.shape) != tuple(real_image.shape):
        raise DataError(
            f"mix: synthetic ROIs have shape {tuple(image.shape)} but real ones "
            f"{tuple(real_image.shape)}; resize one of them (e.g. tio.Resize) to match"
        )
    if isinstance(real_label, torch.Tensor):
        label = torch.as_tensor(int(label), dtype=real_label.dtype)
    else:
        label = int(label)
    return image, label


def _conform_subject(item: tio.Subject, template: tio.Subject) -> tio.Subject:
    """A synthetic Subject with the keys of the real ones, plus ``synthetic=True``.

    The synthetic image takes the name of the real intensity image; label maps the real
    items have (e.g. ``seg``) are filled with zeros (synthetic ROIs come without a
    segmentation: mask them with the ``synthetic`` flag); string entries get the synthetic
    subject id; other entries the synthetic item lacks are an error.
    """
    if not isinstance(item, tio.Subject):
        raise DataError(f"mix: real items are tio.Subject, synthetic ones {type(item).__name__}")
    real_name, real_image = _first_scalar_image(template)
    _, image = _first_scalar_image(item)
    if image.spatial_shape != real_image.spatial_shape or image.shape[0] != real_image.shape[0]:
        raise DataError(
            f"mix: synthetic ROIs have shape {tuple(image.shape)} but real ones "
            f"{tuple(real_image.shape)}; resize one of them (e.g. tio.Resize) to match"
        )
    out: dict[str, Any] = {}
    for key, value in template.items():
        if key == real_name:
            out[key] = image
        elif key in item:
            ours = item[key]
            if isinstance(value, torch.Tensor) and not isinstance(ours, torch.Tensor):
                ours = torch.as_tensor(ours, dtype=value.dtype)
            out[key] = ours
        elif isinstance(value, tio.LabelMap):
            zeros = torch.zeros((1, *image.spatial_shape), dtype=value.data.dtype)
            out[key] = tio.LabelMap(tensor=zeros, affine=image.affine)
        elif isinstance(value, str):
            out[key] = str(item.get("subject_id", "synthetic"))
        else:
            raise DataError(
                f"mix: real items have a {key!r} entry ({type(value).__name__}) that synthetic "
                "items lack; add it with a transform on the synthetic dataset"
            )
    out["synthetic"] = True
    subject = tio.Subject(out)
    subject.applied_transforms = list(getattr(item, "applied_transforms", []))
    return subject


def mix(
    real: Dataset,
    synthetic: Dataset,
    ratio: float = 0.5,
    *,
    length: int | None = None,
    seed: int = 0,
) -> MixedDataset:
    """Wrap ``real`` and ``synthetic`` in one Dataset with a fraction ``ratio`` of synthetic items.

    Every epoch holds exactly ``round(length * ratio)`` synthetic items at random positions;
    real items are drawn without replacement (each real item once per epoch by default),
    synthetic ones too, cycling when an epoch needs more than the dataset holds. The default
    ``length`` keeps every real item once: ``len(real) / (1 - ratio)``. ``set_epoch(e)``
    draws a new, reproducible epoch. Items come back as the real dataset yields them:
    ``tio.Subject`` (with ``synthetic`` set to False/True and synthetic items given the real
    items' keys) or ``(tensor, label)`` pairs.
    """
    return MixedDataset(real, synthetic, ratio, length=length, seed=seed)


class SyntheticThenReal:
    """Epoch schedule for pre-training on synthetic data, then fine-tuning on real data.

    Iterating yields ``(epoch, phase, dataset)`` with ``phase`` ``"synthetic"`` for the
    first ``synthetic_epochs`` epochs and ``"real"`` afterwards. Both phases go through
    `mix`, so that items have the real dataset's kind throughout: the synthetic phase is
    ``mix(real, synthetic, ratio=1.0)``, the real phase ``mix(real, synthetic,
    ratio=finetune_ratio)`` (0 by default: real items only). Each epoch's dataset has had
    ``set_epoch`` called.
    """

    def __init__(
        self,
        synthetic: Dataset,
        real: Dataset,
        *,
        synthetic_epochs: int,
        real_epochs: int,
        finetune_ratio: float = 0.0,
        seed: int = 0,
    ) -> None:
        if synthetic_epochs < 0 or real_epochs < 0:
            raise ConfigError("synthetic_epochs and real_epochs must be >= 0")
        self.synthetic_epochs, self.real_epochs = synthetic_epochs, real_epochs
        self.pretrain = mix(real, synthetic, ratio=1.0, seed=seed)
        self.finetune = mix(real, synthetic, ratio=finetune_ratio, seed=seed + 1)

    def __len__(self) -> int:
        return self.synthetic_epochs + self.real_epochs

    def dataset(self, epoch: int) -> MixedDataset:
        """The dataset of ``epoch`` (0-based over both phases), its epoch already set."""
        if epoch < self.synthetic_epochs:
            self.pretrain.set_epoch(epoch)
            return self.pretrain
        self.finetune.set_epoch(epoch - self.synthetic_epochs)
        return self.finetune

    def __iter__(self) -> Iterator[tuple[int, str, MixedDataset]]:
        for epoch in range(len(self)):
            phase = "synthetic" if epoch < self.synthetic_epochs else "real"
            yield epoch, phase, self.dataset(epoch)
