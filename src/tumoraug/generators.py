"""What every generator shares: one model folder, lazy loading, and the (label, seed) contract.

A *generator* turns per-sample grades and seeds into ROIs ``(N, C, S, S, S)``. tumoraug's
own `TumorGenerator` and the baselines of `tumoraug.baselines` (DDPM, latent diffusion,
3D-αWGAN) all derive from `FolderGenerator`, so everything that consumes a generator (the
dataset, the transforms, banks, exports, ``evaluate`` and ``evaluate-samples``) accepts any
of them unchanged, and `open_generator` opens whichever kind a folder or Hub repo holds.

A model folder is ``tumoraug.json`` (the manifest: ``model_type``, format version, ROI size,
channels, grades) beside one sub-folder per component (``config.json`` +
``model.safetensors``, see `tumoraug.checkpoint`). Opening a folder reads only the JSON
files; the weights are loaded on first use (once, thread-safe), and a pickled generator
carries only the folder path, so DataLoader workers load their own copy.

A subclass says which components it has (`_read_configs`, `_load_models`), how it samples
(`_sample`, with its own `sampling_class` of settings) and what its manifest adds
(`_manifest_extra`). Sample ``j`` depends only on its label, its seed and the settings:
every subclass draws sample ``j``'s noise from its own `torch.Generator`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import numbers
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from tumoraug.checkpoint import atomic_write_json, resolve_pretrained
from tumoraug.config import Config
from tumoraug.device import resolve_device
from tumoraug.errors import CheckpointError, ConfigError
from tumoraug.labels import GRADES, LabelLike, to_labels
from tumoraug.progress import progress_bar
from tumoraug.sampling import SamplingConfig, check_settings, per_sample_seeds
from tumoraug.version import __version__

MANIFEST_NAME = "tumoraug.json"

GENERATOR_TYPES: dict[str, str] = {
    "tumor_generator": "tumoraug.generator:TumorGenerator",
    "ddpm_generator": "tumoraug.baselines.ddpm:DDPMGenerator",
    "latent_diffusion_generator": "tumoraug.baselines.latent_diffusion:LatentDiffusionGenerator",
    "alpha_wgan_generator": "tumoraug.baselines.alpha_wgan:AlphaWGANGenerator",
}
"""``model_type`` of a manifest -> the class that opens it (imported only when asked for)."""

Settings = Config | dict[str, Any] | None
"""Sampling settings as consumers take them: a generator's own settings config (e.g. a
`SamplingConfig`), a dict overriding some of its defaults, or None for the defaults."""


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a model folder as a dict; a `CheckpointError` naming the file if it is
    missing, not JSON or not a tumoraug model."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; a tumoraug model folder holds {MANIFEST_NAME} beside one "
            "sub-folder per component"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("model_type") not in GENERATOR_TYPES:
        found = manifest.get("model_type") if isinstance(manifest, dict) else None
        raise CheckpointError(
            f"{path}: not a tumoraug model (model_type {found!r}; known: "
            f"{', '.join(GENERATOR_TYPES)})"
        )
    return manifest


def generator_class(model_type: str) -> type[FolderGenerator]:
    """The `FolderGenerator` subclass for a manifest's ``model_type``."""
    module_name, _, name = GENERATOR_TYPES[model_type].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CheckpointError(
            f"a {model_type} model needs an optional dependency that is missing ({exc}): "
            'pip install "tumoraug[baselines]"'
        ) from None
    return getattr(module, name)


def open_generator(
    path_or_hub_id: str | Path,
    *,
    device: str | torch.device = "auto",
    revision: str | None = None,
    cpu_bf16: bool = False,
) -> FolderGenerator:
    """Open any tumoraug generator folder or Hub repo (reads only its JSON files)."""
    root = resolve_pretrained(path_or_hub_id, revision=revision)
    cls = generator_class(read_manifest(root)["model_type"])
    return cls.from_pretrained(path_or_hub_id, device=device, revision=revision, cpu_bf16=cpu_bf16)


def with_overrides(sampling: Any, overrides: dict[str, Any]) -> Any:
    """A copy of the settings ``sampling`` with ``overrides`` (validated again); a field the
    settings do not have is a `ConfigError` naming it and the known ones."""
    known = {f.name for f in dataclasses.fields(sampling)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"{type(sampling).__name__}: this generator has no sampling setting "
            f"{', '.join(unknown)}; its settings are {', '.join(sorted(known))}"
        )
    return type(sampling).from_dict({**sampling.to_dict(), **overrides})


def resolve_sampling(generator: Any, sampling: Any) -> Any:
    """The settings ``generator`` samples with for ``sampling`` (None, a dict of overrides,
    or a settings config); generators without `FolderGenerator.check_sampling` take a
    `SamplingConfig`."""
    check = getattr(generator, "check_sampling", None)
    if check is not None:
        return check(sampling)
    if isinstance(sampling, dict):
        return with_overrides(SamplingConfig(), sampling)
    return check_settings(sampling, SamplingConfig)


class FolderGenerator:
    """Base of every generator: a model folder of components, loaded lazily.

    Subclasses set ``model_type``, ``format_version`` and ``sampling_class`` and implement
    `_read_configs`, `_load_models`, `_check_configs`, `_shape` and `_sample`; a
    ``sampling_class`` has a ``network_evaluations`` property.
    Build one from live models with ``cls(models, device=...)`` or open a folder with
    `from_pretrained`.
    """

    model_type: ClassVar[str]
    format_version: ClassVar[int] = 1
    sampling_class: ClassVar[type[Config]]

    def __init__(
        self,
        models: dict[str, nn.Module],
        *,
        device: str | torch.device = "auto",
        cpu_bf16: bool = False,
    ) -> None:
        configs = {name: model.config for name, model in models.items()}  # type: ignore[misc]
        self._check_configs(configs, type(self).__name__)
        self._device_request = str(device)
        self._device = resolve_device(device)
        self._cpu_bf16 = bool(cpu_bf16)
        self._root: Path | None = None
        self._source: str | None = None
        self._configs = configs
        self._models: dict[str, nn.Module] | None = {
            name: model.to(self._device).eval() for name, model in models.items()
        }
        self._lock = threading.Lock()

    # -- what subclasses provide ---------------------------------------------------------

    @classmethod
    def _read_configs(cls, root: Path) -> dict[str, Config]:
        """The components' configs, read from their ``config.json`` files only."""
        raise NotImplementedError

    @classmethod
    def _check_configs(cls, configs: dict[str, Any], source: str) -> None:
        """Raise `CheckpointError` when the components do not fit together."""

    def _load_models(self, root: Path) -> dict[str, nn.Module]:
        """The components with their weights, on ``self.device``."""
        raise NotImplementedError

    def _shape(self) -> Any:
        """The config that names the volume: ``roi_size``, ``in_channels``, ``channel_names``."""
        raise NotImplementedError

    def _sample(self, labels: list[int], seeds: list[int], sampling: Any) -> torch.Tensor:
        """Volumes ``(N, C, S, S, S)`` (any float dtype, any device), sample ``j`` from its
        label and seed alone; `volumes` checks, clamps and moves them."""
        raise NotImplementedError

    def _manifest_extra(self) -> dict[str, Any]:
        """What this kind's manifest records beside the common fields."""
        return {}

    def network_evaluations(self, sampling: Any = None) -> int:
        """Passes of the network that samples (the transformer, the UNet, the generator) per
        ROI with these settings: the settings' own count; a decoder pass is not counted."""
        return int(self.check_sampling(sampling).network_evaluations)

    # -- opening and loading -------------------------------------------------------------

    @classmethod
    def _check_manifest(cls, root: Path, manifest: dict[str, Any]) -> None:
        """Refuse a manifest of another kind or of an unknown format version."""
        path = root / MANIFEST_NAME
        if manifest.get("model_type") != cls.model_type:
            raise CheckpointError(
                f"{path}: holds a {manifest.get('model_type')!r} model, not a "
                f"{cls.model_type!r}; open it with tumoraug.open_generator"
            )
        version = manifest.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CheckpointError(
                f"{path}: format_version {version!r} is not a model-folder format"
            )
        if version > cls.format_version:
            raise CheckpointError(
                f"{path}: format version {version} is newer than this tumoraug ({__version__}) "
                f"supports ({cls.format_version}); upgrade tumoraug"
            )

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        *,
        device: str | torch.device = "auto",
        revision: str | None = None,
        cpu_bf16: bool = False,
    ) -> Any:
        """Open a model folder or Hub repo; reads only its JSON files (weights on first use)."""
        root = resolve_pretrained(path_or_hub_id, revision=revision)
        cls._check_manifest(root, read_manifest(root))
        configs = cls._read_configs(root)
        cls._check_configs(configs, str(root))
        generator = cls.__new__(cls)
        generator.__setstate__(
            {
                "device_request": str(device),
                "cpu_bf16": bool(cpu_bf16),
                "root": root,
                "source": str(path_or_hub_id),
                "configs": configs,
            }
        )
        return generator

    @property
    def is_loaded(self) -> bool:
        """Whether the weights of every component are in memory."""
        return self._models is not None

    def load(self) -> Any:
        """Load every component's weights onto the device (once; thread-safe); returns self."""
        if self._models is None:
            with self._lock:
                if self._models is None:
                    assert self._root is not None
                    self._models = self._load_models(self._root)
        return self

    @property
    def models(self) -> dict[str, nn.Module]:
        """The components by name (loads the weights if needed)."""
        self.load()
        assert self._models is not None
        return self._models

    def __getstate__(self) -> dict[str, Any]:
        state = {
            "device_request": self._device_request,
            "cpu_bf16": self._cpu_bf16,
            "root": self._root,
            "source": self._source,
            "configs": self._configs,
        }
        if self._root is None:  # live models have no folder to reload from
            state["models"] = self._models
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._device_request = state["device_request"]
        self._device = resolve_device(self._device_request)
        self._cpu_bf16 = state["cpu_bf16"]
        self._root = state["root"]
        self._source = state["source"]
        self._configs = state["configs"]
        models = state.get("models")
        if models is not None:
            models = {name: model.to(self._device).eval() for name, model in models.items()}
        self._models = models
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        origin = self._source or "live models"
        return (
            f"{type(self).__name__}({origin!r}, roi_size={self.roi_size}, "
            f"in_channels={self.in_channels}, device={str(self._device)!r}, "
            f"loaded={self.is_loaded})"
        )

    # -- what it makes -------------------------------------------------------------------

    @property
    def roi_size(self) -> int:
        """Edge length S of the generated ``(C, S, S, S)`` ROIs."""
        return int(self._shape().roi_size)

    @property
    def in_channels(self) -> int:
        """Number of channels C of the generated ROIs."""
        return int(self._shape().in_channels)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Names of the C channels, e.g. ``("flair",)``."""
        return tuple(self._shape().channel_names)

    @property
    def device(self) -> torch.device:
        """Device the models run on."""
        return self._device

    @property
    def cpu_bf16(self) -> bool:
        """Whether the networks run under bf16 autocast on the CPU too (CUDA always does)."""
        return self._cpu_bf16

    @property
    def source(self) -> str | None:
        """The folder or Hub id this generator was opened from (None for live models)."""
        return self._source

    def check_sampling(self, sampling: Any) -> Any:
        """This generator's settings (a `sampling_class`) for ``sampling``: None means the
        defaults, a dict overrides some of their fields (unknown ones are a `ConfigError`:
        so one dict such as ``{"guidance_scale": 3}`` serves generators of several kinds)."""
        if isinstance(sampling, dict):
            return with_overrides(self.sampling_class(), sampling)
        return check_settings(sampling, self.sampling_class)

    def _no_volumes(self) -> torch.Tensor:
        size = self.roi_size
        return torch.zeros(0, self.in_channels, size, size, size)

    def _finish(self, volumes: torch.Tensor) -> torch.Tensor:
        """Float32 on the CPU, refused when non-finite (broken weights), clamped to [-1, 1]."""
        out = torch.cat([self._no_volumes(), volumes.float().cpu()])
        if not bool(torch.isfinite(out).all()):
            bad = [j for j, volume in enumerate(out) if not bool(torch.isfinite(volume).all())]
            raise CheckpointError(
                f"{self._source or type(self).__name__}: the model made non-finite values "
                f"(NaN or infinity) for {len(bad)} of {len(out)} sample(s) of this batch; its "
                "weights are broken: re-train or re-download the model"
            )
        return out.clamp(-1.0, 1.0)

    def volumes(
        self,
        labels: Sequence[LabelLike],
        seeds: Sequence[int],
        *,
        sampling: Any = None,
        batch_size: int = 8,
        progress: bool = False,
    ) -> torch.Tensor:
        """ROIs ``(N, C, S, S, S)`` float32 on the CPU for per-sample ``labels`` and ``seeds``.

        The one path from (label, seed) to a volume: ``batch_size`` samples at a time (it
        does not change the volumes); a model that makes NaN or infinity is refused
        (`CheckpointError`). ``progress`` shows a progress bar on stderr.
        """
        label_list = to_labels(list(labels))
        seed_list = [int(s) for s in seeds]
        if len(seed_list) != len(label_list):
            raise ConfigError(
                f"got {len(seed_list)} seeds for {len(label_list)} samples: one seed per sample"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        sampling = self.check_sampling(sampling)
        outputs = [self._no_volumes()]
        with progress_bar("generating", len(label_list), enabled=progress) as bar:
            for lo in range(0, len(label_list), batch_size):
                part = slice(lo, lo + batch_size)
                made = self._sample(label_list[part], seed_list[part], sampling)
                outputs.append(self._finish(made))
                bar.advance(len(made))
        return torch.cat(outputs)

    def generate(
        self,
        labels: LabelLike | Iterable[LabelLike],
        n: int | None = None,
        *,
        seed: int | Sequence[int] = 0,
        sampling: Any = None,
        batch_size: int = 8,
        progress: bool = False,
    ) -> torch.Tensor:
        """Sample ROIs ``(N, C, S, S, S)`` float32 on the CPU in [-1, 1].

        ``labels``: ``"HGG"``, ``"LGG"``, 0, 1, or a list of them (mixed grades are fine);
        ``n`` repeats a single label ``n`` times. ``seed``: an int, standing for the
        per-sample seeds ``per_sample_seeds(seed, N)``, or one int per sample.
        ``sampling``: this generator's settings (its `sampling_class`; defaults when None).
        """
        label_list = to_labels(labels, n)
        if isinstance(seed, numbers.Integral):
            seeds = per_sample_seeds(int(seed), len(label_list))
        else:
            seeds = [int(s) for s in seed]
        return self.volumes(
            label_list, seeds, sampling=sampling, batch_size=batch_size, progress=progress
        )

    # -- saving --------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write every component into one Hub-compatible folder; the manifest is written last."""
        directory = Path(directory)
        for name, model in self.models.items():
            model.save_pretrained(directory / name)  # type: ignore[operator]
        atomic_write_json(
            directory / MANIFEST_NAME,
            {
                "model_type": self.model_type,
                "format_version": self.format_version,
                "tumoraug_version": __version__,
                "roi_size": self.roi_size,
                "in_channels": self.in_channels,
                "modalities": list(self.modalities),
                "grades": list(GRADES),
                **self._manifest_extra(),
            },
        )
        return directory
