"""Reading BraTS: subject discovery, modality files and checked NIfTI loading.

Two layouts are understood:

* **BraTS 2019 training layout**: ``<root>/HGG/<id>/<id>_<modality>.nii.gz`` and
  ``<root>/LGG/...``; the grade comes from the folder name.
* **Flat layout with a CSV** (later releases): ``<root>/<id>/<id>_<modality>.nii.gz`` and a
  CSV file with a header, a ``grade`` column holding ``HGG``/``LGG`` and one or more subject
  columns (``subject``, ``id``, ``BraTS_2020_subject_ID`` ...). The subject column is the one
  whose values match the subject folders, as in BraTS 2020's ``name_mapping.csv``, where the
  ids of older releases stand beside the 2020 ones (``NA`` where a subject is new). A subject
  folder that the CSV does not list is reported, not skipped silently.

Modality files are found by suffix whatever their ending (``.nii`` or ``.nii.gz``), with the
BraTS 2023 names as aliases (``t2f`` for flair, ``t1c`` for t1ce, ``t1n`` for t1, ``t2w`` for
t2). A folder without a ``_seg`` file whose only other NIfTI matches no modality (BraTS 2020
ships one, ``W39_1998.09.19_Segm.nii``) uses that file as the segmentation, with a
`LayoutWarning` naming it. Every problem is a `DataError` naming the file and what is wrong.
"""

from __future__ import annotations

import csv
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from tumoraug.errors import ConfigError, DataError, LabelError
from tumoraug.labels import GRADES, to_grade, to_label

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
"""The four BraTS modalities, usable as ROI channels."""

_ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n"),
    "t1ce": ("t1ce", "t1c", "t1gd"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f"),
    "seg": ("seg",),
}
_EXTENSIONS = (".nii.gz", ".nii")
_SUBJECT_COLUMNS = ("subject", "subject_id", "id", "brats_id")
_NO_SUBJECT = ("", "na", "n/a")
"""Cells that name no subject (BraTS 2020 writes ``NA`` for ids a release did not have)."""


class LayoutWarning(UserWarning):
    """A subject folder is usable but not laid out as BraTS names it (e.g. a misnamed seg)."""


def _suffixes(kind: str) -> tuple[str, ...]:
    return tuple(
        f"{sep}{alias}{ext}" for alias in _ALIASES[kind] for sep in "_-" for ext in _EXTENSIONS
    )


def check_modalities(modalities: str | Iterable[str]) -> tuple[str, ...]:
    """Normalise a modality selection (``"flair"``, ``"flair,t1ce"`` or a list) to a tuple."""
    if isinstance(modalities, str):
        modalities = modalities.split(",")
    names = tuple(m.strip().lower() for m in modalities if m.strip())
    if not names:
        raise ConfigError(f"modalities: choose at least one of {', '.join(MODALITIES)}")
    for name in names:
        if name not in MODALITIES:
            raise ConfigError(f"modalities: unknown modality {name!r}, expected {MODALITIES}")
    if len(set(names)) != len(names):
        raise ConfigError(f"modalities: {names} lists a modality twice")
    return names


@dataclass(frozen=True)
class SubjectRecord:
    """One discovered subject: its id, grade and folder (files are looked up on demand)."""

    subject_id: str
    grade: str
    directory: Path

    @property
    def label(self) -> int:
        """Integer class label (0 LGG, 1 HGG)."""
        return to_label(self.grade)

    def find(self, kind: str) -> Path:
        """Path of the file of ``kind`` (a modality or ``"seg"``), `DataError` if none or many."""
        if not self.directory.is_dir():
            raise DataError(f"{self.directory}: subject folder of {self.subject_id} not found")
        files = sorted(self.directory.iterdir())
        matches = [p for p in files if p.name.lower().endswith(_suffixes(kind))]
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches)
            raise DataError(f"{self.directory}: several {kind} files ({names}); keep one")
        if matches:
            return matches[0]
        known = tuple(s for k in _ALIASES for s in _suffixes(k))
        unknown = [
            p
            for p in files
            if p.name.lower().endswith(_EXTENSIONS) and not p.name.lower().endswith(known)
        ]
        if kind == "seg" and len(unknown) == 1:
            warnings.warn(
                f"{unknown[0]}: no {self.subject_id}_seg file; using {unknown[0].name}, the "
                "only NIfTI that matches no modality, as the segmentation",
                LayoutWarning,
                stacklevel=2,
            )
            return unknown[0]
        found = f"; found {', '.join(p.name for p in unknown)}" if unknown else ""
        raise DataError(
            f"{self.directory}: missing {kind} file for subject {self.subject_id} "
            f"(expected a name ending in _{kind}.nii.gz or _{kind}.nii{found})"
        )

    def files(self, modalities: Sequence[str]) -> dict[str, Path]:
        """Paths of the chosen modalities and of the segmentation (key ``"seg"``), in order."""
        return {kind: self.find(kind) for kind in (*modalities, "seg")}


def _subject_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _grade_folders(root: Path) -> dict[str, Path]:
    return {p.name.upper(): p for p in root.iterdir() if p.is_dir() and p.name.upper() in GRADES}


def _subject_column(header: list[str], rows: list[list[str]], folders: set[str]) -> int | None:
    """Index of the subject column: the candidate whose values match most subject folders.

    Candidates are the columns named like a subject id; without any match (no folders yet,
    or ids that differ) the best-named one is taken.
    """
    named = [header.index(c) for c in _SUBJECT_COLUMNS if c in header]
    named += [i for i, h in enumerate(header) if ("subject" in h or "id" in h) and i not in named]
    if not named:
        return None

    def matches(column: int) -> int:
        return sum(1 for row in rows if len(row) > column and row[column].strip() in folders)

    return max(named, key=lambda c: (matches(c), -named.index(c)))


def _read_grades_csv(
    path: Path, folders: set[str]
) -> tuple[dict[str, str], list[tuple[str, DataError]]]:
    """Map subject id -> grade from a CSV; rows with an unknown grade become problems.

    ``folders`` are the names of the subject folders, to choose the subject column by.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the grades CSV ({exc})") from None
    if not rows:
        raise DataError(f"{path}: the grades CSV is empty")
    header = [h.strip().lower() for h in rows[0]]
    if "grade" not in header:
        raise DataError(f"{path}: no 'grade' column in the header {rows[0]}")
    subject_col = _subject_column(header, rows[1:], folders)
    if subject_col is None:
        raise DataError(f"{path}: no subject column (e.g. 'subject') in the header {rows[0]}")
    grade_col = header.index("grade")
    grades: dict[str, str] = {}
    problems: list[tuple[str, DataError]] = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(subject_col, grade_col):
            raise DataError(f"{path}, line {line}: expected subject and grade, got {row}")
        subject, grade = row[subject_col].strip(), row[grade_col].strip()
        if subject.lower() in _NO_SUBJECT:
            continue
        if subject in grades:
            raise DataError(f"{path}, line {line}: subject {subject!r} is listed twice")
        try:
            grades[subject] = to_grade(grade)
        except LabelError:
            problems.append(
                (
                    subject,
                    DataError(
                        f"{path}, line {line}: unknown grade {grade!r} for subject {subject!r} "
                        f"(expected {' or '.join(GRADES)})"
                    ),
                )
            )
    return grades, problems


def _find_csv(root: Path) -> Path | None:
    candidates = sorted(root.glob("*.csv"))
    with_grade = []
    for path in candidates:
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                header = next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        if "grade" in (h.strip().lower() for h in header):
            with_grade.append(path)
    if len(with_grade) > 1:
        names = ", ".join(p.name for p in with_grade)
        raise DataError(f"{root}: several CSV files with a grade column ({names}); pass one")
    return with_grade[0] if with_grade else None


def scan_subjects(
    root: str | Path, labels_csv: str | Path | None = None
) -> tuple[list[SubjectRecord], list[tuple[str, DataError]]]:
    """Discover subjects; return the good records and the per-subject problems found so far.

    Layout-level problems (missing or empty folder, no recognisable layout, unreadable CSV)
    raise `DataError` at once; a subject with an unknown grade, or a subject folder that the
    CSV does not list, is returned as a problem so that a preprocessing run can report it
    and go on.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: BraTS folder not found")
    if not any(root.iterdir()):
        raise DataError(f"{root}: the folder is empty (expected HGG/ and LGG/ or a CSV of grades)")
    folders = _grade_folders(root)
    records: list[SubjectRecord] = []
    problems: list[tuple[str, DataError]] = []
    if folders and labels_csv is None:
        for grade in ("HGG", "LGG"):
            if grade in folders:
                records += [SubjectRecord(d.name, grade, d) for d in _subject_dirs(folders[grade])]
    else:
        csv_path = Path(labels_csv) if labels_csv is not None else _find_csv(root)
        if csv_path is None:
            raise DataError(
                f"{root}: no BraTS layout found (expected HGG/ and LGG/ folders, "
                "or subject folders and a CSV with subject and grade columns)"
            )
        if not csv_path.is_file():
            raise DataError(f"{csv_path}: grades CSV not found")
        folders = {d.name: d for d in _subject_dirs(root)}
        grades, problems = _read_grades_csv(csv_path, set(folders))
        records = [SubjectRecord(s, g, root / s) for s, g in grades.items()]
        listed = set(grades) | {s for s, _ in problems}
        problems += [
            (name, DataError(f"{d}: subject folder not listed in {csv_path}; left out (add a row)"))
            for name, d in folders.items()
            if name not in listed
        ]
    if not records and not problems:
        raise DataError(f"{root}: no subject folders found")
    seen: dict[str, SubjectRecord] = {}
    for record in records:
        if record.subject_id in seen:
            raise DataError(
                f"{root}: subject id {record.subject_id!r} appears twice "
                f"({seen[record.subject_id].directory} and {record.directory})"
            )
        seen[record.subject_id] = record
    return records, problems


def discover_subjects(
    root: str | Path, labels_csv: str | Path | None = None
) -> list[SubjectRecord]:
    """Discover the subjects under ``root`` (see module docs); any problem raises `DataError`."""
    records, problems = scan_subjects(root, labels_csv)
    if problems:
        raise problems[0][1]
    return records


def load_volume(path: str | Path, *, segmentation: bool = False) -> np.ndarray:
    """Read a 3D NIfTI volume as float32 (uint8 for a segmentation), checked for problems.

    Raises `DataError` naming ``path`` for a missing, corrupt or truncated file, a volume
    that is not 3D (trailing axes of length 1 are dropped), NaN/Inf voxels, and for a
    segmentation with labels that are not integers in 0..255.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        image = nib.load(str(path))
        shape = image.shape
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 3:
            raise DataError(f"{path}: expected a 3D volume, got shape {tuple(image.shape)}")
        data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    except DataError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(f"{path}: cannot read NIfTI file, corrupt or truncated ({exc})") from None
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise DataError(f"{path}: {bad} voxels are NaN or Inf")
    if not segmentation:
        return data
    if data.min() < 0 or data.max() > 255 or not np.array_equal(data, np.round(data)):
        raise DataError(f"{path}: segmentation labels must be integers in 0..255")
    return data.astype(np.uint8)


@dataclass
class LoadedSubject:
    """The arrays of one subject: one (D,H,W) float32 array per modality, and the seg."""

    record: SubjectRecord
    paths: dict[str, Path]
    images: list[np.ndarray]
    seg: np.ndarray


def load_subject(
    record: SubjectRecord,
    modalities: Sequence[str] = ("flair",),
    paths: dict[str, Path] | None = None,
) -> LoadedSubject:
    """Read the chosen modalities and the segmentation of ``record``; shapes must agree.

    ``paths`` are the files that ``record.files(modalities)`` returned, when already known
    (so that they are not looked up, and warned about, twice).
    """
    modalities = check_modalities(modalities)
    paths = record.files(modalities) if paths is None else paths
    seg = load_volume(paths["seg"], segmentation=True)
    images = []
    for modality in modalities:
        image = load_volume(paths[modality])
        if image.shape != seg.shape:
            raise DataError(
                f"{paths[modality]}: shape {image.shape} differs from the segmentation "
                f"{paths['seg'].name} {seg.shape}"
            )
        images.append(image)
    return LoadedSubject(record, paths, images, seg)
