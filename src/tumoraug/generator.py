"""`TumorGenerator`: one object over both stages that turns grades into synthetic tumor ROIs.

A full model is one folder (local or a Hub repo)::

    tumoraug.json                      what the folder is, ROI size, channels, grades
    tokenizer/config.json              stage 1, `tumoraug.models.vqgan.VQGAN3D`
    tokenizer/model.safetensors
    generator/config.json              stage 2, `tumoraug.models.transformer.MaskedTransformer`
    generator/model.safetensors

`TumorGenerator.from_pretrained` reads only the JSON files, so it is cheap, checks that the
two stages fit together, and is picklable: DataLoader workers receive the folder path and
load the weights themselves, once, on their first `generate` call.

Sampling is seeded per sample (see `tumoraug.sampling`): with ``seed=[s0, s1, ...]`` sample
``j`` depends only on its label, ``s_j`` and the settings, whatever the batch it is drawn in;
an int seed ``s`` stands for the per-sample seeds ``per_sample_seeds(s, n)``.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from tumoraug import __version__
from tumoraug.checkpoint import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    resolve_pretrained,
)
from tumoraug.config import TransformerConfig, TokenizerConfig
from tumoraug.errors import CheckpointError, ConfigError, DataError
from tumoraug.labels import GRADES, LabelLike, to_labels
from tumoraug.sampling import SamplingConfig, make_rngs, per_sample_seeds, sample_tokens

MODEL_TYPE = "tumor_generator"
FORMAT_VERSION = 1
MANIFEST_NAME = "tumoraug.json"
TOKENIZER_DIR = "tokenizer"
TRANSFORMER_DIR = "transformer"
DEFAULT_STEPS = 12
DEFAULT_GUIDANCE = 1.5


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as `torch.device`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"unknown device {device!r}: expected auto, cpu or cuda ({exc})"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here")
    return resolved


def check_compatible(tokenizer: TokenizerConfig, generator: TransformerConfig, source: str) -> None:
    """Raise `CheckpointError` unless the transformer's vocabulary and grid match the tokenizer."""
    if tokenizer.codebook_size != generator.codebook_size:
        raise CheckpointError(
            f"{source}: generator codebook_size {generator.codebook_size} does not match the "
            f"tokenizer's {tokenizer.codebook_size}"
        )
    if tuple(tokenizer.token_grid) != tuple(generator.token_grid):
        raise CheckpointError(
            f"{source}: generator token_grid {tuple(generator.token_grid)} does not match the "
            f"tokenizer's {tuple(tokenizer.token_grid)}"
        )


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; a tumoraug model folder holds {MANIFEST_NAME}, "
            f"{TOKENIZER_DIR}/ and {TRANSFORMER_DIR}/"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{path}: not a tumoraug model (model_type != {MODEL_TYPE!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {version!r} is newer than this tumoraug ({__version__}) "
            f"supports ({FORMAT_VERSION}); upgrade tumoraug"
        )
    return manifest


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class TumorGenerator:
    """Class-conditional synthetic tumor ROIs from a tokenizer and a masked transformer.

    Build it with `from_pretrained` (lazy) or from live models
    ``TumorGenerator(tokenizer, transformer, device="auto")``.
    """

    def __init__(self, tokenizer: Any, transformer: Any, *, device: str | torch.device = "auto"):
        check_compatible(tokenizer.config, transformer.config, "TumorGenerator")
        self._device_request = str(device)
        self._device = resolve_device(device)
        self._root: Path | None = None
        self._source: str | None = None
        self._tokenizer_config: TokenizerConfig = tokenizer.config
        self._generator_config: TransformerConfig = transformer.config
        self._tokenizer = tokenizer.to(self._device).eval()
        self._transformer = transformer.to(self._device).eval()
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        *,
        device: str | torch.device = "auto",
        revision: str | None = None,
    ) -> TumorGenerator:
        """Open a model folder or Hub repo; reads only its JSON files (weights on first use)."""
        from tumoraug.models.transformer import MaskedTransformer
        from tumoraug.models.vqgan import VQGAN3D

        root = resolve_pretrained(path_or_hub_id, revision=revision)
        _read_manifest(root)
        tokenizer_config = VQGAN3D.load_config(root / TOKENIZER_DIR)
        generator_config = MaskedTransformer.load_config(root / TRANSFORMER_DIR)
        check_compatible(tokenizer_config, generator_config, str(root))
        generator = cls.__new__(cls)
        generator._device_request = str(device)
        generator._device = resolve_device(device)
        generator._root = root
        generator._source = str(path_or_hub_id)
        generator._tokenizer_config = tokenizer_config  # type: ignore[assignment]
        generator._generator_config = generator_config  # type: ignore[assignment]
        generator._tokenizer = None
        generator._transformer = None
        generator._lock = threading.Lock()
        return generator

    # -- state ---------------------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        """Whether the weights of both stages are in memory."""
        return self._tokenizer is not None and self._transformer is not None

    @property
    def roi_size(self) -> int:
        """Edge length S of the generated ``(C, S, S, S)`` ROIs."""
        return int(self._tokenizer_config.roi_size)

    @property
    def in_channels(self) -> int:
        """Number of channels C of the generated ROIs."""
        return int(self._tokenizer_config.in_channels)

    @property
    def device(self) -> torch.device:
        """Device the models run on."""
        return self._device

    @property
    def source(self) -> str | None:
        """The folder or Hub id this generator was opened from (None for live models)."""
        return self._source

    @property
    def tokenizer_config(self) -> TokenizerConfig:
        return self._tokenizer_config

    @property
    def generator_config(self) -> TransformerConfig:
        return self._generator_config

    @property
    def tokenizer(self) -> Any:
        """The stage-1 `VQGAN3D` (loads the weights if needed)."""
        self.load()
        return self._tokenizer

    @property
    def transformer(self) -> Any:
        """The stage-2 `MaskedTransformer` (loads the weights if needed)."""
        self.load()
        return self._transformer

    def load(self) -> TumorGenerator:
        """Load both stages' weights onto the device (once; thread-safe); returns self."""
        if self.is_loaded:
            return self
        from tumoraug.models.transformer import transformer_class
        from tumoraug.models.vqgan import VQGAN3D

        with self._lock:
            if not self.is_loaded:
                assert self._root is not None
                tokenizer = VQGAN3D.from_pretrained(self._root / TOKENIZER_DIR, device=self._device)
                transformer = transformer_class(self._generator_config).from_pretrained(
                    self._root / TRANSFORMER_DIR, device=self._device
                )
                self._tokenizer, self._transformer = tokenizer, transformer
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = {
            "device_request": self._device_request,
            "root": self._root,
            "source": self._source,
            "tokenizer_config": self._tokenizer_config,
            "generator_config": self._generator_config,
        }
        if self._root is None:  # live models have no folder to reload from
            state["tokenizer"], state["transformer"] = self._tokenizer, self._transformer
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._device_request = state["device_request"]
        self._device = resolve_device(self._device_request)
        self._root = state["root"]
        self._source = state["source"]
        self._tokenizer_config = state["tokenizer_config"]
        self._generator_config = state["generator_config"]
        self._tokenizer = state.get("tokenizer")
        self._transformer = state.get("transformer")
        if self._tokenizer is not None:
            self._tokenizer = self._tokenizer.to(self._device).eval()
            self._transformer = self._transformer.to(self._device).eval()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        origin = self._source or "live models"
        return (
            f"TumorGenerator({origin!r}, roi_size={self.roi_size}, in_channels={self.in_channels}, "
            f"device={str(self._device)!r}, loaded={self.is_loaded})"
        )

    # -- sampling ------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def generate_tokens(
        self,
        labels: Sequence[int],
        seeds: Sequence[int],
        *,
        steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> torch.Tensor:
        """Token grids ``(N, d, h, w)`` for integer ``labels`` with one seed per sample."""
        transformer = self.transformer
        with self._autocast():
            return sample_tokens(
                transformer,
                torch.as_tensor(list(labels), dtype=torch.long),
                make_rngs(seeds),
                SamplingConfig(
                    steps=steps,
                    temperature=temperature,
                    guidance_scale=guidance_scale,
                    top_k=top_k,
                    top_p=top_p,
                ),
            )

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token grids -> ROIs ``(N, C, S, S, S)`` float32 on the CPU, in [-1, 1]."""
        tokenizer = self.tokenizer
        with self._autocast():
            volumes = tokenizer.decode(tokens.to(self._device))
        return volumes.float().clamp(-1.0, 1.0).cpu()

    def generate(
        self,
        labels: LabelLike | Iterable[LabelLike],
        n: int | None = None,
        *,
        seed: int | Sequence[int] = 0,
        steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        batch_size: int = 8,
        progress: bool = False,
    ) -> torch.Tensor:
        """Sample ROIs ``(N, C, S, S, S)`` float32 on the CPU in [-1, 1].

        ``labels``: ``"HGG"``, ``"LGG"``, 0, 1, or a list of them (mixed grades are fine);
        ``n`` repeats a single label ``n`` times. ``seed``: an int (per-sample seeds derived
        from it) or one int per sample. ``guidance_scale = 1`` turns guidance off.
        ``progress`` shows a progress bar on stderr.
        """
        label_list = to_labels(labels, n)
        total = len(label_list)
        if isinstance(seed, numbers.Integral):
            seeds = per_sample_seeds(int(seed), total)
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != total:
                raise ValueError(f"got {len(seeds)} seeds for {total} samples")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        shape = (0, self.in_channels, self.roi_size, self.roi_size, self.roi_size)
        if total == 0:
            return torch.zeros(shape)
        outputs = []
        with _progress_bar(progress, total) as advance:
            for part in _chunks(total, batch_size):
                tokens = self.generate_tokens(
                    label_list[part],
                    seeds[part],
                    steps=steps,
                    guidance_scale=guidance_scale,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                )
                outputs.append(self.decode(tokens))
                advance(part.stop - part.start)
        return torch.cat(outputs)

    # -- saving --------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write both stages into one Hub-compatible folder; `tumoraug.json` is written last."""
        directory = Path(directory)
        self.load()
        self._tokenizer.save_pretrained(directory / TOKENIZER_DIR)
        self._transformer.save_pretrained(directory / TRANSFORMER_DIR)
        readme = directory / "README.md"
        if not readme.exists():
            atomic_write_text(readme, _model_card(self.roi_size, self.in_channels))
        atomic_write_json(
            directory / MANIFEST_NAME,
            {
                "model_type": MODEL_TYPE,
                "format_version": FORMAT_VERSION,
                "tumoraug_version": __version__,
                "roi_size": self.roi_size,
                "in_channels": self.in_channels,
                "grades": list(GRADES),
                "token_grid": list(self._generator_config.token_grid),
                "codebook_size": self._generator_config.codebook_size,
            },
        )
        return directory


def _model_card(roi_size: int, in_channels: int) -> str:
    return (
        "---\nlibrary_name: tumoraug\ntags:\n- medical-imaging\n- brain-tumor\n- 3d\n---\n\n"
        f"# tumoraug tumor generator\n\nClass-conditional (LGG / HGG) synthetic {roi_size}³ "
        f"brain-tumor ROIs with {in_channels} channel(s): a 3D VQGAN tokenizer and a masked "
        "transformer.\n\n```python\nfrom tumoraug import TumorGenerator\n\n"
        'generator = TumorGenerator.from_pretrained("<this repo or folder>")\n'
        'rois = generator.generate("HGG", n=4, seed=0)  # (4, C, S, S, S) in [-1, 1]\n```\n'
    )


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Any]:
    """Yield ``advance(k)``: a rich progress bar on stderr when enabled, else a no-op."""
    if not enabled:
        yield lambda k: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task("generating", total=total)
        yield lambda k: bar.advance(task, k)


NIFTI_FORMATS: tuple[str, ...] = ("nii.gz", "nii")


def _nifti_bytes(volume: torch.Tensor, fmt: str) -> bytes:
    """A (C, D, H, W) ROI as NIfTI-1 bytes with a 1 mm identity affine (C > 1 -> 4th axis)."""
    import gzip

    import nibabel as nib
    import numpy as np

    array = volume.numpy().astype(np.float32)
    array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    image = nib.Nifti1Image(array, np.eye(4))
    image.header.set_xyzt_units("mm")
    data = image.to_bytes()
    return gzip.compress(data, mtime=0) if fmt == "nii.gz" else data


def _check_writable(out_dir: Path, names: list[str], overwrite: bool) -> None:
    import tempfile

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise DataError(f"{out_dir}: output folder is not writable ({exc.strerror})") from None
    if not overwrite:
        existing = [name for name in names if (out_dir / name).exists()]
        if existing:
            raise DataError(
                f"{out_dir}: would overwrite {len(existing)} existing file(s) "
                f"({', '.join(existing[:3])}{', ...' if len(existing) > 3 else ''}); "
                "pass --overwrite (overwrite=True) or choose another folder"
            )


def generate_to_folder(
    generator: TumorGenerator,
    labels: LabelLike | Iterable[LabelLike],
    out_dir: str | Path,
    *,
    n: int = 1,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    temperature: float = 1.0,
    batch_size: int = 8,
    fmt: str = "nii.gz",
    overwrite: bool = False,
    progress: bool = False,
    preview_rows: int = 16,
) -> dict[str, Any]:
    """Generate ``n`` ROIs per label and write them as NIfTI files to ``out_dir``.

    Writes ``<index>_<grade>.<fmt>`` per ROI (1 mm identity affine), ``manifest.json`` (file,
    grade, label, per-sample seed, model, settings) and ``preview.png`` (centre slices of the
    first ``preview_rows`` ROIs). Checks the labels, the folder and existing files before
    any sampling; never overwrites unless ``overwrite``. Returns the manifest.
    """
    from tumoraug.labels import to_grade
    from tumoraug.viz import save_montage

    if fmt not in NIFTI_FORMATS:
        raise ConfigError(
            f"unknown output format {fmt!r}: expected one of {', '.join(NIFTI_FORMATS)}"
        )
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    per_label = to_labels(labels)
    if not per_label:
        raise ConfigError("no label given: expected HGG, LGG, 0 or 1")
    label_list = [label for label in per_label for _ in range(n)]
    seeds = per_sample_seeds(seed, len(label_list))
    names = [f"{j:04d}_{to_grade(label)}.{fmt}" for j, label in enumerate(label_list)]
    out_dir = Path(out_dir)
    _check_writable(out_dir, [*names, "manifest.json", "preview.png"], overwrite)
    volumes = generator.generate(
        label_list,
        seed=seeds,
        steps=steps,
        guidance_scale=guidance_scale,
        temperature=temperature,
        batch_size=batch_size,
        progress=progress,
    )
    for name, volume in zip(names, volumes, strict=True):
        with atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(_nifti_bytes(volume, fmt))
    grades = [to_grade(label) for label in label_list]
    save_montage(volumes[:preview_rows], out_dir / "preview.png", row_labels=grades[:preview_rows])
    manifest = {
        "tumoraug_version": __version__,
        "model": generator.source,
        "roi_size": generator.roi_size,
        "in_channels": generator.in_channels,
        "format": fmt,
        "affine": "identity, 1 mm voxels",
        "settings": {
            "seed": seed,
            "steps": steps,
            "guidance_scale": guidance_scale,
            "temperature": temperature,
            "batch_size": batch_size,
            "device": str(generator.device),
        },
        "samples": [
            {"file": name, "grade": grade, "label": label, "seed": sample_seed}
            for name, grade, label, sample_seed in zip(
                names, grades, label_list, seeds, strict=True
            )
        ],
    }
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest
