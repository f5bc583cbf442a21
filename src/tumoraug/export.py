"""Writing synthetic ROIs and models out for people and other tools: NIfTI files with a
manifest and a preview, and the model card of a model folder.

`generate_to_folder` makes its volumes through a `tumoraug.augment.Source`, the same path as
the datasets and transforms, so that the files hold exactly what a dataset item of the same
(label, seed) holds. `write_samples` is what ``tumoraug generate`` runs: NIfTI files and/or a
synthetic bank from one model.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from tumoraug.augment.bank import SyntheticBank
from tumoraug.augment.source import Source, as_source
from tumoraug.checkpoint import atomic_path, atomic_write_json
from tumoraug.errors import ConfigError, DataError
from tumoraug.generator import TumorGenerator
from tumoraug.labels import LabelLike, to_grade, to_labels
from tumoraug.progress import progress_bar
from tumoraug.sampling import SamplingConfig, per_sample_seeds
from tumoraug.version import __version__

__all__ = [
    "NIFTI_FORMATS",
    "check_writable",
    "generate_to_folder",
    "model_card",
    "nifti_bytes",
    "write_samples",
]

NIFTI_FORMATS: tuple[str, ...] = ("nii.gz", "nii")


def _check_format(fmt: str) -> None:
    if fmt not in NIFTI_FORMATS:
        raise ConfigError(
            f"unknown output format {fmt!r}: expected one of {', '.join(NIFTI_FORMATS)}"
        )


def nifti_bytes(volume: torch.Tensor, fmt: str) -> bytes:
    """A ``(C, D, H, W)`` ROI as NIfTI-1 bytes with a 1 mm identity affine (C > 1: 4th axis).

    ``fmt``: ``"nii.gz"`` (gzip with a zero timestamp, so equal volumes give equal bytes) or
    ``"nii"``.
    """
    import nibabel as nib
    import numpy as np

    _check_format(fmt)
    array = volume.detach().cpu().numpy().astype(np.float32)
    array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    image = nib.Nifti1Image(array, np.eye(4))
    image.header.set_xyzt_units("mm")
    data = image.to_bytes()
    return gzip.compress(data, mtime=0) if fmt == "nii.gz" else data


def check_writable(out_dir: Path, names: Iterable[str], overwrite: bool) -> None:
    """Create ``out_dir`` and check that it is writable and, unless ``overwrite``, that none
    of ``names`` exists there: `DataError` naming the folder otherwise."""
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


def model_card(roi_size: int, in_channels: int) -> str:
    """The README.md (Hub model card) of a `TumorGenerator` folder of ``roi_size`` ROIs."""
    return (
        "---\nlibrary_name: tumoraug\ntags:\n- medical-imaging\n- brain-tumor\n- 3d\n---\n\n"
        f"# tumoraug tumor generator\n\nClass-conditional (LGG / HGG) synthetic {roi_size}³ "
        f"brain-tumor ROIs with {in_channels} channel(s): a 3D VQGAN tokenizer and a masked "
        "transformer.\n\n```python\nfrom tumoraug import TumorGenerator\n\n"
        'generator = TumorGenerator.from_pretrained("<this repo or folder>")\n'
        'rois = generator.generate("HGG", n=4, seed=0)  # (4, C, S, S, S) in [-1, 1]\n```\n'
    )


def generate_to_folder(
    generator_or_source: TumorGenerator | Source | str | os.PathLike[str],
    labels: LabelLike | Iterable[LabelLike],
    out_dir: str | Path,
    *,
    n: int = 1,
    seed: int = 0,
    sampling: SamplingConfig | None = None,
    batch_size: int = 8,
    fmt: str = "nii.gz",
    overwrite: bool = False,
    progress: bool = False,
    preview_rows: int = 16,
) -> dict[str, Any]:
    """Generate ``n`` ROIs per label and write them as NIfTI files to ``out_dir``.

    ``generator_or_source``: a `TumorGenerator` (or model folder / Hub id) sampled with
    ``sampling``, or any `Source` (e.g. a `SyntheticBank`, whose settings are fixed).
    Sample ``j`` has the seed ``per_sample_seeds(seed, N)[j]``. Writes
    ``<index>_<grade>.<fmt>`` per ROI (1 mm identity affine), ``manifest.json`` (file, grade,
    label, per-sample seed, model, settings) and ``preview.png`` (centre slices of the first
    ``preview_rows`` ROIs). Checks the labels, the folder and existing files before any
    sampling; never overwrites unless ``overwrite``. Returns the manifest.
    """
    from tumoraug.viz import save_montage

    _check_format(fmt)
    if n < 1 or batch_size < 1:
        raise ConfigError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    per_label = to_labels(labels)
    if not per_label:
        raise ConfigError("no label given: expected HGG, LGG, 0 or 1")
    source = as_source(generator_or_source, sampling, batch_size=batch_size)
    label_list = [label for label in per_label for _ in range(n)]
    seeds = per_sample_seeds(seed, len(label_list))
    grades = [to_grade(label) for label in label_list]
    names = [f"{j:04d}_{grade}.{fmt}" for j, grade in enumerate(grades)]
    out_dir = Path(out_dir)
    check_writable(out_dir, [*names, "manifest.json", "preview.png"], overwrite)
    parts = []
    with progress_bar("generating", len(label_list), enabled=progress) as bar:
        for lo in range(0, len(label_list), batch_size):
            part = source.volumes(label_list[lo : lo + batch_size], seeds[lo : lo + batch_size])
            parts.append(part)
            bar.advance(len(part))
    volumes = torch.cat(parts)
    for name, volume in zip(names, volumes, strict=True):
        with atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(nifti_bytes(volume, fmt))
    save_montage(volumes[:preview_rows], out_dir / "preview.png", row_labels=grades[:preview_rows])
    manifest = {
        "tumoraug_version": __version__,
        "model": source.model_id,
        "roi_size": int(volumes.shape[-1]),
        "in_channels": int(volumes.shape[1]),
        "format": fmt,
        "affine": "identity, 1 mm voxels",
        "settings": {
            **source.settings,
            "seed": seed,
            "batch_size": batch_size,
            "device": source.device,
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


def write_samples(
    model: TumorGenerator | str | os.PathLike[str] | None,
    labels: LabelLike | Iterable[LabelLike],
    *,
    n: int = 1,
    out_dir: str | Path | None = None,
    bank: str | Path | None = None,
    bank_dtype: str = "int16",
    seed: int = 0,
    sampling: SamplingConfig | None = None,
    batch_size: int = 8,
    device: str = "auto",
    fmt: str = "nii.gz",
    overwrite: bool = False,
    progress: bool = False,
) -> list[str]:
    """``n`` ROIs per label as NIfTI files in ``out_dir`` and/or a `SyntheticBank` at ``bank``.

    ``model``: a `TumorGenerator`, a model folder / Hub id, or None for the embedded demo
    model. Empty labels (as in ``"HGG,"``) are skipped. Sample ``j`` has the seed
    ``per_sample_seeds(seed, N)[j]`` in both outputs, so the bank stores what the files hold
    (up to its quantisation). Returns one summary line per output written.
    """
    if out_dir is None and bank is None:
        raise ConfigError(
            "nowhere to write: give out_dir (--out FOLDER, NIfTI files) and/or bank "
            "(--bank FILE, a synthetic bank)"
        )
    if isinstance(labels, str | int):
        labels = [labels]
    per_label = to_labels([v for v in labels if not (isinstance(v, str) and not v.strip())])
    if model is None:
        from tumoraug.pretrained import demo_model_path

        model = demo_model_path()
    generator = (
        model
        if isinstance(model, TumorGenerator)
        else TumorGenerator.from_pretrained(model, device=device)
    )
    written = []
    if bank is not None:
        items = [label for label in per_label for _ in range(n)]
        built = SyntheticBank.build(
            generator, len(items), items, bank, seed, dtype=bank_dtype, batch_size=batch_size,
            sampling=sampling, overwrite=overwrite, progress=progress,
        )  # fmt: skip
        written.append(f"wrote a bank of {len(built)} ROIs to {built.path}")
    if out_dir is not None:
        manifest = generate_to_folder(
            generator, per_label, out_dir, n=n, seed=seed, sampling=sampling,
            batch_size=batch_size, fmt=fmt, overwrite=overwrite, progress=progress,
        )  # fmt: skip
        written.append(f"wrote {len(manifest['samples'])} ROIs to {out_dir}")
    return written
