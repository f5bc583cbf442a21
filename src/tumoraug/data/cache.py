"""The preprocessed ROI cache: one safetensors file per subject plus ``manifest.json``.

``preprocess`` turns a BraTS folder into a cache folder::

    <out_dir>/manifest.json
    <out_dir>/<subject_id>.safetensors    # "image" (C,S,S,S) float32, "seg" (1,S,S,S) uint8

The manifest records, per subject, its grade and label, the ROI shape, the source paths, the
SHA-256 of the inputs (file contents + ROI settings + cache format) and of the output file,
and the tumoraug version that wrote it. A re-run skips every subject whose input hash is
unchanged and whose file is intact (size and SHA-256 as recorded), so an interrupted or
extended run only does the missing work. Bad subjects are reported at the end (or stop the
run with ``strict=True``).

Nothing is lost by mistake: ``preprocess`` writes only into a new or empty folder or a cache
of the same source (another source's cache is replaced only with ``overwrite=True``), and
one run at a time holds the folder (a lock file, see `tumoraug.checkpoint.folder_lock`).

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

from tumoraug.checkpoint import (
    atomic_path,
    atomic_write_json,
    folder_lock,
    remove_stale_temporaries,
    sha256_file,
)
from tumoraug.data.brats import (
    LayoutWarning,
    SubjectRecord,
    check_modalities,
    load_subject,
    scan_subjects,
)
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
    notes: list[str],
) -> dict[str, Any]:
    """Load, crop, normalise and save one subject; return its manifest entry.

    ``notes`` are the warnings found while locating the files (e.g. a misnamed segmentation).
    """
    loaded = load_subject(record, modalities, paths=paths)
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
        "bytes": (out_dir / name).stat().st_size,
        "sha256": sha256_file(out_dir / name),
        "roi_start": list(roi.start),
        "tumor_extent": list(roi.tumor_extent),
        "tumor_voxels": int(np.count_nonzero(roi.seg)),
        "warnings": notes + [str(w.message) for w in caught if issubclass(w.category, ROIWarning)],
        "tumoraug_version": __version__,
    }


def _work(args: tuple) -> dict[str, Any]:
    """Process-pool entry point: a DataError comes back as a value, anything else raises."""
    try:
        return {"entry": _process_subject(*args)}
    except DataError as exc:
        return {"error": str(exc)}


def _load_manifest(path: Path) -> dict[str, Any]:
    """Read ``path`` and check that it is a tumoraug ROI cache manifest (any format version)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise DataError(f"{path}: not a tumoraug ROI cache manifest")
    return manifest


def read_manifest(cache_dir: str | Path) -> dict[str, Any]:
    """Read and check the manifest of a cache folder."""
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path}: no ROI cache manifest (run `tumoraug preprocess` first)")
    manifest = _load_manifest(path)
    if manifest.get("format_version") != CACHE_VERSION:
        raise DataError(
            f"{path}: cache format version {manifest.get('format_version')} is not "
            f"{CACHE_VERSION}; re-run `tumoraug preprocess` to rebuild it"
        )
    return manifest


def _existing_cache(out_dir: Path, source: str, overwrite: bool) -> dict[str, Any] | None:
    """The manifest of the cache in ``out_dir`` (None: new or empty); refuse what is not ours.

    Refused with a `DataError`, before anything is written: a file, a non-empty folder that
    is not a tumoraug ROI cache, and a cache of another source unless ``overwrite``.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: is a file, not a folder; give a folder for the ROI cache")
    if not out_dir.is_dir():
        return None
    if not (out_dir / MANIFEST_NAME).exists():
        others = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
        if others:
            listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise DataError(
                f"{out_dir}: the folder holds files ({listed}) but is not a tumoraug ROI cache "
                f"(no {MANIFEST_NAME}); choose an empty or new folder"
            )
        return None
    try:
        manifest = _load_manifest(out_dir / MANIFEST_NAME)
    except DataError as exc:
        raise DataError(f"{exc}; will not write a ROI cache there, choose another folder") from None
    if manifest.get("source") != source and not overwrite:
        raise DataError(
            f"{out_dir}: this ROI cache was built from {manifest.get('source')}, not {source}; "
            "pass --overwrite (overwrite=True) to replace it, or choose another folder"
        )
    return manifest


def _entries(manifest: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The well-formed subject entries of a manifest by subject id (file: a plain name)."""
    subjects = manifest.get("subjects") if manifest else None
    if not isinstance(subjects, list):
        return {}
    return {
        e["subject"]: e
        for e in subjects
        if isinstance(e, dict)
        and isinstance(e.get("subject"), str)
        and isinstance(e.get("file"), str)
        and Path(e["file"]).name == e["file"]
    }


def _is_current(entry: dict[str, Any] | None, input_hash: str, out_dir: Path) -> bool:
    """True when ``entry`` was made from these inputs and its file is intact (size + hash)."""
    if entry is None or entry.get("input_sha256") != input_hash:
        return False
    path = out_dir / entry["file"]
    return (
        path.is_file()
        and path.stat().st_size == entry.get("bytes")
        and sha256_file(path) == entry.get("sha256")
    )


@dataclass
class _Run:
    """One preprocess run: the entries done so far, the reusable old ones, the report."""

    out_dir: Path
    settings: dict[str, Any]
    """The manifest's header: format, versions, size, modalities, source."""
    strict: bool
    order: list[str]
    old: dict[str, dict[str, Any]]
    report: PreprocessReport
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def write_manifest(self, final: bool = False) -> None:
        """Write the manifest; until the end it still lists the old entries not yet redone."""
        subjects = [self.entries[s] for s in self.order if s in self.entries]
        if not final:  # every file on disk stays recorded if the run is interrupted
            subjects += [e for s, e in self.old.items() if s not in self.entries]
        failed = [{"subject": s, "error": e} for s, e in self.report.failed]
        manifest = {**self.settings, "subjects": subjects, "failed": failed}
        atomic_write_json(self.out_dir / MANIFEST_NAME, manifest)

    def fail(self, subject: str, message: str) -> None:
        """Record a bad subject (with ``strict``: write the manifest and raise)."""
        self.report.failed.append((subject, message))
        if self.strict:
            self.write_manifest()
            raise DataError(message)

    def done(self, subject: str, result: dict[str, Any]) -> None:
        """Record the result of `_work` for one subject."""
        if "error" in result:
            self.fail(subject, result["error"])
            return
        entry = result["entry"]
        self.entries[subject] = entry
        self.report.processed.append(subject)
        self.report.warnings += [(subject, w) for w in entry["warnings"]]
        self.write_manifest()

    def finish(self) -> None:
        """Delete the files of subjects that left the source or went bad; final manifest."""
        kept = {e["file"] for e in self.entries.values()}
        for subject, entry in self.old.items():
            if subject not in self.entries and entry["file"] not in kept:
                (self.out_dir / entry["file"]).unlink(missing_ok=True)
        self.write_manifest(final=True)


def _pool(workers: int) -> ProcessPoolExecutor:
    # fork is fast and safe here (workers only use numpy/nibabel); elsewhere use spawn
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def _locate(record: SubjectRecord, modalities: tuple[str, ...]) -> tuple[dict[str, Path], list]:
    """The input files of ``record`` and the `LayoutWarning` messages found on the way."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LayoutWarning)
        paths = record.files(modalities)
    return paths, [str(w.message) for w in caught if issubclass(w.category, LayoutWarning)]


def _open_cache(out_dir: Path, source: str, overwrite: bool) -> dict[str, dict[str, Any]]:
    """Under the folder lock: clear stale temporaries and return the reusable old entries.

    Entries that cannot be reused (another source with ``overwrite``, an older cache format)
    lose their files now.
    """
    remove_stale_temporaries(out_dir)
    manifest = _existing_cache(out_dir, source, overwrite)  # again: now no one else writes
    previous = _entries(manifest)
    key = (manifest.get("source"), manifest.get("format_version")) if manifest else None
    if key == (source, CACHE_VERSION):
        return previous
    for entry in previous.values():
        (out_dir / entry["file"]).unlink(missing_ok=True)
    return {}


def preprocess(
    brats_dir: str | Path,
    out_dir: str | Path,
    size: int = 128,
    modalities: str | Iterable[str] = ("flair",),
    workers: int = 1,
    strict: bool = False,
    labels_csv: str | Path | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> PreprocessReport:
    """Build (or update) the ROI cache of ``brats_dir`` in ``out_dir``; see the module docs.

    ``workers`` > 1 uses that many processes. With ``strict`` the first bad subject raises its
    `DataError`; otherwise bad subjects are listed in the report and the manifest.
    ``overwrite`` lets a cache built from another source be replaced.
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
    out_dir, source = Path(out_dir), str(Path(brats_dir).resolve())
    _existing_cache(out_dir, source, overwrite)  # refuse before writing anything
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out_dir}: cannot create the cache folder ({exc.strerror})") from None
    with folder_lock(out_dir, DataError):
        settings = {
            "format": CACHE_FORMAT,
            "format_version": CACHE_VERSION,
            "tumoraug_version": __version__,
            "size": size,
            "modalities": list(modalities),
            "source": source,
        }
        report = PreprocessReport(out_dir=out_dir)
        report.failed += [(s, str(e)) for s, e in problems]
        old = _open_cache(out_dir, source, overwrite)
        run = _Run(out_dir, settings, strict, [r.subject_id for r in records], old, report)
        run.write_manifest()  # the folder is marked as a cache before any ROI lands in it
        todo = []
        for record in records:  # hashing pass: decide what is unchanged
            try:
                paths, notes = _locate(record, modalities)
                input_hash = _input_hash(paths, size, modalities)
            except DataError as exc:
                run.fail(record.subject_id, str(exc))
                continue
            entry = run.old.get(record.subject_id)
            if _is_current(entry, input_hash, out_dir):
                run.entries[record.subject_id] = entry  # type: ignore[assignment]
                report.skipped.append(record.subject_id)
            else:
                todo.append((record, paths, input_hash, modalities, size, out_dir, notes))
        _run_tasks(run, todo, workers, progress, len(records))
        run.finish()
    report.seconds = time.perf_counter() - start_time
    return report


def _run_tasks(run: _Run, todo: list[tuple], workers: int, progress: bool, total: int) -> None:
    """Process ``todo`` in this process or in a pool of ``workers``, with a progress bar."""
    workers = min(workers, len(todo))
    done_already = total - len(todo)
    if workers <= 1:
        with progress_bar("preprocessing", total, enabled=progress, completed=done_already) as bar:
            for task in todo:
                run.done(task[0].subject_id, _work(task))
                bar.advance()
        return
    # Workers are forked before the progress bar starts its refresh thread.
    with _pool(workers) as pool:
        pending = {pool.submit(_work, t): t[0].subject_id for t in todo}
        try:
            with progress_bar(
                "preprocessing", total, enabled=progress, completed=done_already
            ) as bar:
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        run.done(pending.pop(future), future.result())
                        bar.advance()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


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

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality of each image channel, in order (``preprocess --modalities``)."""
        return tuple(self.manifest.get("modalities") or ())

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
