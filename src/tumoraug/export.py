"""Writing synthetic ROIs and models out for people and other tools: NIfTI files with a
manifest and a preview, and the model card of a model folder.

`generate_to_folder` makes its volumes through a `tumoraug.augment.Source`, the same path as
the datasets and transforms, so that the files hold exactly what a dataset item of the same
(label, seed) holds. `write_samples` is what ``tumoraug generate`` runs: NIfTI files and/or a
synthetic bank from one model.

A folder is written by one run at a time (`tumoraug.checkpoint.folder_lock`), and its
``manifest.json`` is written before the first ROI and after every batch: it lists every
planned file, ``"complete": false`` until the preview is written, and the SHA-256 of each
file written so far. So an interrupted run (even ``kill -9``) leaves a folder that the same
command completes, re-using the files whose hash matches; ``overwrite`` replaces a previous
run and removes the files of its manifest that the new run does not write.

A ROI of several channels becomes one NIfTI file per modality (BraTS names) or one 4D file:
see `tumoraug.nifti`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from tumoraug.augment.bank import SyntheticBank
from tumoraug.augment.source import Source, as_source, check_count
from tumoraug.augment.storage import check_target
from tumoraug.checkpoint import (
    atomic_path,
    atomic_write_json,
    folder_lock,
    remove_stale_temporaries,
    sha256_file,
)
from tumoraug.errors import ConfigError, DataError
from tumoraug.generator import TumorGenerator
from tumoraug.generators import FolderGenerator, Settings, open_generator
from tumoraug.hub import model_card
from tumoraug.labels import LabelLike, to_grade, to_labels
from tumoraug.nifti import (
    CHANNEL_LAYOUTS,
    NIFTI_FORMATS,
    check_format,
    nifti_bytes,
    read_sample,
    sample_bytes,
    sample_entry,
    sample_files,
    sample_hashes,
    set_sample_hashes,
)
from tumoraug.progress import progress_bar
from tumoraug.sampling import per_sample_seeds
from tumoraug.version import __version__

__all__ = [
    "CHANNEL_LAYOUTS",
    "MANIFEST_NAME",
    "NIFTI_FORMATS",
    "PREVIEW_NAME",
    "generate_to_folder",
    "model_card",
    "nifti_bytes",
    "write_samples",
]

MANIFEST_NAME = "manifest.json"
PREVIEW_NAME = "preview.png"


# -- one run's claim on a folder ------------------------------------------------------------


@contextlib.contextmanager
def _claimed(out_dir: Path) -> Iterator[Path]:
    """Create ``out_dir`` if needed and hold its lock; clear stale temporaries.

    Folders this call created are removed again if the run leaves them empty (a run refused
    or failed before its first ROI leaves no trace).
    """
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise DataError(f"{out_dir}: output folder is not writable ({exc.strerror})") from None
    try:
        with folder_lock(out_dir, DataError):
            remove_stale_temporaries(out_dir)
            yield out_dir
    finally:
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds while empty


@dataclasses.dataclass
class _FolderPlan:
    """What a run writes into a folder: the manifest, which samples to make, what to remove."""

    out_dir: Path
    manifest: dict[str, Any]
    todo: list[int]  # indices of the samples to generate
    remove: list[Path]  # files of the previous run that this one does not write
    finished: bool = False  # a complete earlier run of the same request: nothing to write


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What decides the files of a run (the batch size does not: decoding is batch-invariant)."""
    settings = {k: v for k, v in manifest.get("settings", {}).items() if k != "batch_size"}
    samples = [[sample_files(s), s.get("label"), s.get("seed")] for s in manifest["samples"]]
    return {
        "model": manifest.get("model"),
        "format": manifest.get("format"),
        "settings": settings,
        "samples": samples,
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The entries of two `_identity` dicts that differ, as ``key: <old> there, <new> now``."""
    a, b = {**old, **old["settings"]}, {**new, **new["settings"]}
    keys = [k for k in (*b, *[k for k in a if k not in b]) if k != "settings"]
    diffs = [
        f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" if k != "samples" else "the list of samples"
        for k in dict.fromkeys(keys)
        if a.get(k) != b.get(k)
    ]
    return "; ".join(diffs)


def _previous(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of an earlier run in ``out_dir``, or None (absent or not a tumoraug one)."""
    try:
        old = json.loads((out_dir / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(old, dict) or not isinstance(old.get("samples"), list):
        return None
    files = [
        name
        for s in old["samples"]
        for name in (sample_files(s).values() if isinstance(s, dict) else [None])
    ]
    if not all(isinstance(f, str) and f and Path(f).name == f for f in files):
        return None  # only plain file names inside the folder are ever touched
    return old


def _plan_folder(
    source: Source,
    labels: list[int],
    out_dir: Path,
    *,
    seed: int,
    batch_size: int,
    fmt: str,
    channels: str,
    overwrite: bool,
) -> _FolderPlan:
    """Decide what the run writes, or refuse (`DataError`) before anything is sampled.

    A previous run with the same model, settings and samples is completed: its files whose
    SHA-256 matches the manifest are kept (with an incomplete manifest, any other file it
    lists is the interrupted run's and is replaced). Anything else in the way needs
    ``overwrite``. A ROI gets one file per channel (``channels="split"``, when the source
    names several channels) or one file.
    """
    seeds = per_sample_seeds(seed, len(labels))
    grades = [to_grade(label) for label in labels]
    modalities = getattr(source, "modalities", None)
    split = channels == "split" and modalities is not None and len(modalities) > 1
    manifest: dict[str, Any] = {
        "tumoraug_version": __version__,
        "model": source.model_id,
        "roi_size": None,
        "in_channels": None,
        "modalities": None if modalities is None else list(modalities),
        "channels": channels,
        "format": fmt,
        "affine": "identity, 1 mm voxels",
        "settings": {
            **source.settings,
            "seed": seed,
            "batch_size": batch_size,
            "device": source.device,
        },
        "complete": False,
        "samples": [],
    }
    samples = manifest["samples"]
    for j, (grade, label, s) in enumerate(zip(grades, labels, seeds, strict=True)):
        where = sample_entry(f"{j:04d}_{grade}", fmt, modalities if split else None)
        samples.append({**where, "grade": grade, "label": label, "seed": s})
    names = {name for sample in samples for name in sample_files(sample).values()}
    old = _previous(out_dir)
    if overwrite:
        earlier = {f for s in (old or {}).get("samples", []) for f in sample_files(s).values()}
        remove = [out_dir / name for name in sorted(earlier - names) if (out_dir / name).is_file()]
        return _FolderPlan(out_dir, manifest, list(range(len(samples))), remove)
    if old is not None and _identity(old) == _identity(manifest):
        conflicts = []
        for sample, before in zip(samples, old["samples"], strict=True):
            kept, recorded = {}, sample_hashes(before)
            for key, name in sample_files(sample).items():
                path = out_dir / name
                if not path.exists():
                    continue
                if recorded.get(key) and sha256_file(path) == recorded[key]:
                    kept[key] = recorded[key]
                elif old.get("complete", True):
                    conflicts.append(name)
            if len(kept) == len(sample_files(sample)):  # a sample is re-used whole or made again
                set_sample_hashes(sample, kept)
        if conflicts:
            raise DataError(
                f"{out_dir}: {len(conflicts)} file(s) differ from what {MANIFEST_NAME} records "
                f"({', '.join(conflicts[:3])}{', ...' if len(conflicts) > 3 else ''}); pass "
                "--overwrite (overwrite=True) to generate them again, or choose another folder"
            )
        todo = [j for j, sample in enumerate(samples) if "sha256" not in sample]
        if not todo and old.get("complete") and (out_dir / PREVIEW_NAME).is_file():
            return _FolderPlan(out_dir, old, [], [], finished=True)
        return _FolderPlan(out_dir, manifest, todo, [])
    if old is not None and old.get("complete") is False:
        raise DataError(
            f"{out_dir}: holds an interrupted run with other settings "
            f"({_differences(_identity(old), _identity(manifest))}); re-run it with the "
            "options it was started with to complete it, or pass --overwrite "
            "(overwrite=True) to replace it"
        )
    existing = [n for n in (*sorted(names), MANIFEST_NAME, PREVIEW_NAME) if (out_dir / n).exists()]
    if existing:
        raise DataError(
            f"{out_dir}: would overwrite {len(existing)} existing file(s) "
            f"({', '.join(existing[:3])}{', ...' if len(existing) > 3 else ''}); "
            "pass --overwrite (overwrite=True) or choose another folder"
        )
    return _FolderPlan(out_dir, manifest, list(range(len(samples))), [])


def _fill_folder(
    plan: _FolderPlan, source: Source, batch_size: int, progress: bool, preview_rows: int
) -> tuple[dict[str, Any], int]:
    """Generate the planned samples, batch by batch; returns (manifest, samples re-used).

    The previous run's files are removed and the manifest written once the first batch
    exists, so that a model that fails on its first batch leaves the folder as it was.
    """
    from tumoraug.viz import save_montage

    out_dir, manifest = plan.out_dir, plan.manifest
    if plan.finished:
        return manifest, len(manifest["samples"])
    samples, manifest_file = manifest["samples"], plan.out_dir / MANIFEST_NAME
    preview: dict[int, torch.Tensor] = {}

    def commit() -> None:
        for path in plan.remove:
            path.unlink(missing_ok=True)
        atomic_write_json(manifest_file, manifest)

    fmt, channels = manifest["format"], manifest["channels"]
    with progress_bar("generating", len(plan.todo), enabled=progress) as bar:
        for lo in range(0, len(plan.todo), batch_size):
            part = plan.todo[lo : lo + batch_size]
            volumes = source.volumes(
                [samples[j]["label"] for j in part], [samples[j]["seed"] for j in part]
            )
            encoded = [
                sample_bytes(samples[j], volume, fmt, channels, source.model_id)
                for j, volume in zip(part, volumes, strict=True)
            ]
            if lo == 0:
                commit()
            for j, volume, files in zip(part, volumes, encoded, strict=True):
                names, hashes = sample_files(samples[j]), {}
                for key, data in files.items():
                    with atomic_path(out_dir / names[key]) as tmp:
                        tmp.write_bytes(data)
                    hashes[key] = hashlib.sha256(data).hexdigest()
                set_sample_hashes(samples[j], hashes)
                if j < preview_rows:
                    preview[j] = volume
            atomic_write_json(manifest_file, manifest)
            bar.advance(len(part))
    if not plan.todo:
        commit()
    rows = [
        preview[j] if j in preview else read_sample(out_dir, samples[j])
        for j in range(min(preview_rows, len(samples)))
    ]
    grades = [sample["grade"] for sample in samples[: len(rows)]]
    save_montage(rows, out_dir / PREVIEW_NAME, row_labels=grades)
    manifest.update(roi_size=int(rows[0].shape[-1]), in_channels=int(rows[0].shape[0]))
    manifest["complete"] = True
    atomic_write_json(manifest_file, manifest)
    return manifest, len(samples) - len(plan.todo)


def _check_request(n: int, batch_size: int, fmt: str, channels: str) -> None:
    check_count("generate", "n (CLI: --n)", n)
    check_count("generate", "batch_size (CLI: --batch-size)", batch_size)
    check_format(fmt, channels)


def generate_to_folder(
    generator_or_source: TumorGenerator | Source | str | os.PathLike[str],
    labels: LabelLike | Iterable[LabelLike],
    out_dir: str | Path,
    *,
    n: int = 1,
    seed: int = 0,
    sampling: Settings = None,
    batch_size: int = 8,
    fmt: str = "nii.gz",
    channels: str = "split",
    overwrite: bool = False,
    progress: bool = False,
    preview_rows: int = 16,
) -> dict[str, Any]:
    """Generate ``n`` ROIs per label and write them as NIfTI files to ``out_dir``.

    ``generator_or_source``: a `TumorGenerator` (or model folder / Hub id) sampled with
    ``sampling``, or any `Source` (e.g. a `SyntheticBank`, whose settings are fixed).
    Sample ``j`` has the seed ``per_sample_seeds(seed, N)[j]``. Writes
    ``<index>_<grade>.<fmt>`` per ROI (1 mm identity affine; with several channels one
    ``<index>_<grade>_<modality>.<fmt>`` per channel, or with ``channels="4d"`` one 4D file),
    ``manifest.json`` (file(s), grade, label, per-sample seed and SHA-256, model, modalities,
    settings, ``complete``) and ``preview.png`` (centre slices of the first ``preview_rows``
    ROIs). Checks the labels, the folder and existing files before any sampling; never
    overwrites unless ``overwrite``, which also removes the files of the folder's previous
    manifest that this run does not write; the same call completes a folder that an
    interrupted run left. Returns the manifest.
    """
    _check_request(n, batch_size, fmt, channels)
    check_count("generate_to_folder", "preview_rows", preview_rows)
    per_label = to_labels(labels)
    if not per_label:
        raise ConfigError("no label given: expected HGG, LGG, 0 or 1")
    source = as_source(generator_or_source, sampling, batch_size=batch_size)
    items = [label for label in per_label for _ in range(n)]
    with _claimed(Path(out_dir)) as folder:
        plan = _plan_folder(
            source, items, folder, seed=seed, batch_size=batch_size, fmt=fmt, channels=channels,
            overwrite=overwrite,
        )  # fmt: skip
        return _fill_folder(plan, source, batch_size, progress, preview_rows)[0]


def write_samples(
    model: FolderGenerator | str | os.PathLike[str] | None,
    labels: LabelLike | Iterable[LabelLike],
    *,
    n: int = 1,
    out_dir: str | Path | None = None,
    bank: str | Path | None = None,
    bank_dtype: str = "int16",
    seed: int = 0,
    sampling: Settings = None,
    batch_size: int = 8,
    device: str = "auto",
    fmt: str = "nii.gz",
    channels: str = "split",
    overwrite: bool = False,
    progress: bool = False,
    cpu_bf16: bool = False,
) -> list[str]:
    """``n`` ROIs per label as NIfTI files in ``out_dir`` and/or a `SyntheticBank` at ``bank``.

    ``model``: a generator (a `TumorGenerator` or a baseline), a model folder / Hub id of
    one, or None for the embedded demo model; ``sampling``: its settings, a dict of
    overrides, or None for its defaults. Empty labels (as in ``"HGG,"``) are skipped.
    Sample ``j`` has the seed ``per_sample_seeds(seed, N)[j]`` in both outputs, so the bank
    stores what the files hold (up to its quantisation). ``channels``: how ROIs of several
    channels are written (see `generate_to_folder`). ``cpu_bf16``: sample and decode under
    bf16 autocast on the CPU too (when ``model`` is opened here; a generator passed in keeps
    its own setting). Both outputs are checked before anything is sampled. Returns one
    summary line per output written.
    """
    if out_dir is None and bank is None:
        raise ConfigError(
            "nowhere to write: give out_dir (--out FOLDER, NIfTI files) and/or bank "
            "(--bank FILE, a synthetic bank)"
        )
    _check_request(n, batch_size, fmt, channels)
    if isinstance(labels, str | int):
        labels = [labels]
    per_label = to_labels([v for v in labels if not (isinstance(v, str) and not v.strip())])
    if not per_label:
        raise ConfigError("no label given: expected HGG, LGG, 0 or 1 (CLI: --label)")
    if model is None:
        from tumoraug.pretrained import demo_model_path

        model = demo_model_path()
    generator = (
        model
        if isinstance(model, FolderGenerator)
        else open_generator(model, device=device, cpu_bf16=cpu_bf16)
    )
    source = as_source(generator, sampling, batch_size=batch_size)
    items = [label for label in per_label for _ in range(n)]
    written = []
    with _claimed(Path(out_dir)) if out_dir is not None else contextlib.nullcontext() as folder:
        plan = None
        if folder is not None:
            plan = _plan_folder(
                source, items, folder, seed=seed, batch_size=batch_size, fmt=fmt,
                channels=channels, overwrite=overwrite,
            )  # fmt: skip
        if bank is not None:
            check_target(Path(bank).expanduser(), overwrite)
            built = SyntheticBank.build(
                source, len(items), items, bank, seed, dtype=bank_dtype, batch_size=batch_size,
                overwrite=overwrite, progress=progress,
            )  # fmt: skip
            written.append(f"wrote a bank of {len(built)} ROIs to {built.path}")
        if plan is not None:
            _, kept = _fill_folder(plan, source, batch_size, progress, preview_rows=16)
            if kept == len(items):
                written.append(f"{out_dir} already holds these {kept} ROIs")
            else:
                done = f" ({kept} already there)" if kept else ""
                written.append(f"wrote {len(items) - kept} ROIs to {out_dir}{done}")
    return written
