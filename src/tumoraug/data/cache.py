"""The preprocessed ROI cache: one safetensors file per subject plus ``manifest.json``.

``preprocess`` turns a BraTS folder into a cache folder::

    <out_dir>/manifest.json
    <out_dir>/<subject_id>.safetensors    # "image" (C,S,S,S) float32, "seg" (1,S,S,S) uint8

The manifest records, per subject, its grade and label, the ROI shape, the source paths, the
SHA-256 of the inputs (file contents + ROI settings + cache format) and of the output file,
and the tumoraug version that wrote it. A re-run skips every subject whose input hash is
unchanged and whose file is still there, so an interrupted or extended run only does the
missing work. Bad subjects are reported at the end (or stop the run with ``strict=True``).

`ROIDataset` reads the cache back through memory-mapped safetensors files and returns
`torchio.Subject` items (see `tumoraug.data.items`).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torchio as tio
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from tumoraug.checkpoint import atomic_path, atomic_write_json, sha256_file
from tumoraug.data.brats import SubjectRecord, check_modalities, load_subject, scan_subjects
from tumoraug.data.items import make_roi_subject
from tumoraug.data.roi import ROIWarning, extract_roi
from tumoraug.errors import ConfigError, DataError
from tumoraug.labels import to_grade
from tumoraug.progress import progress_bar
from tumoraug.version import __version__

CACHE_FORMAT = "tumoraug-roi-cache"
CACHE_VERSION = 1
"""Bumped whenever the ROI rules or the file format change: old entries are then rebuilt."""
MANIFEST_NAME = "manifest.json"


@dataclass
class PreprocessReport:
    """What a `preprocess` run did: subject ids processed, skipped (unchanged) and failed."""

    out_dir: Path
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(subject id, error message) of every bad subject."""
    warnings: list[tuple[str, str]] = field(default_factory=list)
    """(subject id, warning message), e.g. a tumor larger than the ROI."""
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Number of subjects in the cache after the run."""
        return len(self.processed) + len(self.skipped)

    def problems(self) -> list[tuple[str, str, str]]:
        """``("warning" | "failed", subject id, message)`` of every warning, then every failure."""
        return [("warning", *w) for w in self.warnings] + [("failed", *f) for f in self.failed]

    def summary(self) -> str:
        """One line: counts and time."""
        return (
            f"{self.total} ROIs in {self.out_dir} ({len(self.processed)} processed, "
            f"{len(self.skipped)} unchanged, {len(self.failed)} failed) in {self.seconds:.1f} s"
        )


def _input_hash(paths: dict[str, Path], size: int, modalities: Sequence[str]) -> str:
    """SHA-256 over the ROI settings, the cache format and the bytes of every input file."""
    digest = hashlib.sha256()
    settings = {"format": CACHE_VERSION, "size": size, "modalities": list(modalities)}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for kind, path in paths.items():
        digest.update(f"{kind}:{sha256_file(path)}".encode())
    return digest.hexdigest()


def cache_file_name(subject_id: str) -> str:
    """Name of a subject's file in the cache folder."""
    return subject_id.replace("/", "_").replace("\\", "_") + ".safetensors"


def _process_subject(
    record: SubjectRecord,
    paths: dict[str, Path],
    input_hash: str,
    modalities: tuple[str, ...],
    size: int,
    out_dir: Path,
) -> dict[str, Any]:
    """Load, crop, normalise and save one subject; return its manifest entry."""
    loaded = load_subject(record, modalities)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ROIWarning)
        roi = extract_roi(
            loaded.images,
            loaded.seg,
            size,
            names=[str(paths[m]) for m in modalities],
            seg_name=str(paths["seg"]),
        )
    name = cache_file_name(record.subject_id)
    with atomic_path(out_dir / name) as tmp:
        save_file({"image": roi.image, "seg": roi.seg[None]}, str(tmp))
    return {
        "subject": record.subject_id,
        "grade": record.grade,
        "label": record.label,
        "file": name,
        "shape": list(roi.image.shape),
        "sources": {kind: str(path.resolve()) for kind, path in paths.items()},
        "input_sha256": input_hash,
        "sha256": sha256_file(out_dir / name),
        "roi_start": list(roi.start),
        "tumor_extent": list(roi.tumor_extent),
        "tumor_voxels": int(np.count_nonzero(roi.seg)),
        "warnings": [str(w.message) for w in caught if issubclass(w.category, ROIWarning)],
        "tumoraug_version": __version__,
    }


def _work(args: tuple) -> dict[str, Any]:
    """Process-pool entry point: a DataError comes back as a value, anything else raises."""
    try:
        return {"entry": _process_subject(*args)}
    except DataError as exc:
        return {"error": str(exc)}


def read_manifest(cache_dir: str | Path) -> dict[str, Any]:
    """Read and check the manifest of a cache folder."""
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path}: no ROI cache manifest (run `tumoraug preprocess` first)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise DataError(f"{path}: not a tumoraug ROI cache manifest")
    if manifest.get("format_version") != CACHE_VERSION:
        raise DataError(
            f"{path}: cache format version {manifest.get('format_version')} is not "
            f"{CACHE_VERSION}; re-run `tumoraug preprocess` to rebuild it"
        )
    return manifest


def _old_entries(out_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        manifest = read_manifest(out_dir)
    except DataError:
        return {}
    return {e["subject"]: e for e in manifest.get("subjects", [])}


def _is_current(entry: dict[str, Any] | None, input_hash: str, out_dir: Path) -> bool:
    return (
        entry is not None
        and entry.get("input_sha256") == input_hash
        and (out_dir / entry["file"]).is_file()
    )


def _pool(workers: int) -> ProcessPoolExecutor:
    # fork is fast and safe here (workers only use numpy/nibabel); elsewhere use spawn
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def preprocess(
    brats_dir: str | Path,
    out_dir: str | Path,
    size: int = 128,
    modalities: str | Iterable[str] = ("flair",),
    workers: int = 1,
    strict: bool = False,
    labels_csv: str | Path | None = None,
    progress: bool = False,
) -> PreprocessReport:
    """Build (or update) the ROI cache of ``brats_dir`` in ``out_dir``; see the module docs.

    ``workers`` > 1 uses that many processes. With ``strict`` the first bad subject raises its
    `DataError`; otherwise bad subjects are listed in the report and the manifest.
    """
    start_time = time.perf_counter()
    modalities = check_modalities(modalities)
    if int(size) < 8:
        raise ConfigError(f"size: the ROI edge must be >= 8 voxels, got {size}")
    if int(workers) < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    size, workers = int(size), int(workers)
    records, problems = scan_subjects(brats_dir, labels_csv)
    if strict and problems:
        raise problems[0][1]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PreprocessReport(out_dir=out_dir)
    report.failed += [(s, str(e)) for s, e in problems]
    old = _old_entries(out_dir)
    entries: dict[str, dict[str, Any]] = {}
    order = [r.subject_id for r in records]

    def write_manifest() -> None:
        manifest = {
            "format": CACHE_FORMAT,
            "format_version": CACHE_VERSION,
            "tumoraug_version": __version__,
            "size": size,
            "modalities": list(modalities),
            "source": str(Path(brats_dir).resolve()),
            "subjects": [entries[s] for s in order if s in entries],
            "failed": [{"subject": s, "error": e} for s, e in report.failed],
        }
        atomic_write_json(out_dir / MANIFEST_NAME, manifest)

    def fail(subject: str, message: str) -> None:
        report.failed.append((subject, message))
        if strict:
            write_manifest()
            raise DataError(message)

    todo = []
    for record in records:  # hashing pass: decide what is unchanged
        try:
            paths = record.files(modalities)
            input_hash = _input_hash(paths, size, modalities)
        except DataError as exc:
            fail(record.subject_id, str(exc))
            continue
        entry = old.get(record.subject_id)
        if _is_current(entry, input_hash, out_dir):
            entries[record.subject_id] = entry  # type: ignore[assignment]
            report.skipped.append(record.subject_id)
        else:
            todo.append((record, paths, input_hash, modalities, size, out_dir))

    def done(subject: str, result: dict[str, Any]) -> None:
        bar.advance()
        if "error" in result:
            fail(subject, result["error"])
            return
        entry = result["entry"]
        entries[subject] = entry
        report.processed.append(subject)
        report.warnings += [(subject, w) for w in entry["warnings"]]
        write_manifest()

    workers = min(workers, len(todo))
    if workers <= 1:
        with progress_bar(
            "preprocessing", len(records), enabled=progress, completed=len(records) - len(todo)
        ) as bar:
            for task in todo:
                done(task[0].subject_id, _work(task))
    else:
        # Workers are forked before the progress bar starts its refresh thread.
        with _pool(workers) as pool:
            pending = {pool.submit(_work, t): t[0].subject_id for t in todo}
            try:
                with progress_bar(
                    "preprocessing",
                    len(records),
                    enabled=progress,
                    completed=len(records) - len(todo),
                ) as bar:
                    while pending:
                        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for future in finished:
                            done(pending.pop(future), future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    failed = {s for s, _ in report.failed}
    for subject, entry in old.items():  # drop files of subjects that left or went bad
        if subject not in entries and (subject in failed or subject not in order):
            (out_dir / entry["file"]).unlink(missing_ok=True)
    write_manifest()
    report.seconds = time.perf_counter() - start_time
    return report


class ROIDataset(tio.SubjectsDataset):
    """A torch Dataset over a ROI cache folder written by `preprocess`.

    Items are `torchio.Subject` s (``image``, ``seg``, ``label``, ``grade``, ``subject_id``),
    read from memory-mapped safetensors files, optionally passed through ``transform`` (any
    callable on a Subject, e.g. a `tio.Compose`). It is a `tio.SubjectsDataset`, so it works
    with `tio.SubjectsLoader`, `tio.Queue` and a plain `DataLoader` with worker processes.
    """

    def __init__(
        self, cache_dir: str | Path, transform: Callable[[tio.Subject], tio.Subject] | None = None
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)
        self._entries: list[dict[str, Any]] = list(self.manifest.get("subjects", []))
        if not self._entries:
            raise DataError(f"{self.cache_dir / MANIFEST_NAME}: the cache holds no subject")
        self._subjects = self._entries  # what SubjectsDataset.dry_iter() hands out
        self.load_getitem = True
        self.set_transform(transform)

    @property
    def labels(self) -> list[int]:
        """Class label of every item (0 LGG / 1 HGG), without reading any volume."""
        return [int(e["label"]) for e in self._entries]

    @property
    def subject_ids(self) -> list[str]:
        """Subject id of every item."""
        return [e["subject"] for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw arrays of item ``index``: image (C,S,S,S) float32 and seg (1,S,S,S) uint8."""
        entry = self._entries[index]
        path = self.cache_dir / entry["file"]
        try:
            with safe_open(str(path), framework="numpy") as handle:
                image, seg = handle.get_tensor("image"), handle.get_tensor("seg")
        except (OSError, SafetensorError) as exc:
            raise DataError(f"{path}: cannot read cached ROI ({exc}); re-run preprocess") from None
        if list(image.shape) != list(entry["shape"]):
            raise DataError(f"{path}: ROI shape {image.shape} is not {entry['shape']} (manifest)")
        return image, seg

    def __getitem__(self, index: int) -> tio.Subject:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} ROIs")
        index %= len(self)
        image, seg = self.read(index)
        entry = self._entries[index]
        subject = make_roi_subject(image, to_grade(entry["grade"]), seg, entry["subject"])
        if self._transform is not None:
            subject = self._transform(subject)
        return subject
