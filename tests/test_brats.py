"""BraTS reading: both layouts, modality selection, file endings, and every bad input."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from tumoraug.data import check_modalities, discover_subjects, load_subject, load_volume
from tumoraug.data.phantom import save_nifti
from tumoraug.errors import ConfigError, DataError

SHAPE = (12, 12, 10)


def make_subject(folder, subject, *, kinds=("t1", "t1ce", "t2", "flair", "seg"), ext=".nii.gz"):
    """A tiny subject: a bright box of brain with a small tumor in its middle."""
    path = folder / subject
    path.mkdir(parents=True, exist_ok=True)
    brain = np.zeros(SHAPE, dtype=np.int16)
    brain[2:10, 2:10, 2:8] = np.arange(1, 8 * 8 * 6 + 1).reshape(8, 8, 6)
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[5:7, 5:7, 4:6] = 2
    for kind in kinds:
        save_nifti(seg if kind == "seg" else brain, path / f"{subject}_{kind}{ext}")
    return path


def flat_layout(root, grades: dict[str, str]):
    for subject in grades:
        make_subject(root, subject)
    lines = ["subject,grade"] + [f"{s},{g}" for s, g in grades.items()]
    (root / "grades.csv").write_text("\n".join(lines) + "\n")
    return root


def test_discovers_the_2019_layout(phantom_dir):
    records = discover_subjects(phantom_dir)
    assert [r.grade for r in records] == ["HGG"] * 3 + ["LGG"] * 3
    assert [r.label for r in records] == [1] * 3 + [0] * 3
    assert records[0].subject_id == "Phantom_HGG_000"
    files = records[0].files(("flair", "t1ce"))
    assert list(files) == ["flair", "t1ce", "seg"]
    assert files["flair"].name == "Phantom_HGG_000_flair.nii.gz"


def test_discovers_a_flat_layout_with_a_csv(tmp_path):
    flat_layout(tmp_path, {"s1": "HGG", "s2": "lgg", "s3": "LGG"})
    records = discover_subjects(tmp_path)
    assert [(r.subject_id, r.grade) for r in records] == [
        ("s1", "HGG"),
        ("s2", "LGG"),
        ("s3", "LGG"),
    ]
    assert records[1].directory == tmp_path / "s2"


def test_flat_layout_with_brats2020_column_names(tmp_path):
    for subject in ("a", "b"):
        make_subject(tmp_path, subject)
    (tmp_path / "grades.csv").write_text("Grade,BraTS_2020_subject_ID\nHGG,a\nLGG,b\n")
    assert [r.grade for r in discover_subjects(tmp_path)] == ["HGG", "LGG"]


def test_subject_column_is_the_one_whose_values_match_the_folders(tmp_path):
    for subject in ("new_a", "new_b"):
        make_subject(tmp_path, subject)
    (tmp_path / "grades.csv").write_text(
        "grade,subject_id,release_2_subject_id\nHGG,NA,new_a\nLGG,NA,new_b\nLGG,c,new_c\n"
    )
    assert [r.subject_id for r in discover_subjects(tmp_path)] == ["new_a", "new_b", "new_c"]


def test_explicit_csv_path(tmp_path):
    data = tmp_path / "data"
    for subject in ("x", "y"):
        make_subject(data, subject)
    csv = tmp_path / "labels.csv"
    csv.write_text("subject,grade\nx,LGG\ny,HGG\n")
    assert [r.label for r in discover_subjects(data, labels_csv=csv)] == [0, 1]


def test_finds_nii_and_nii_gz_and_brats2023_names(tmp_path):
    make_subject(tmp_path / "HGG", "plain", ext=".nii")
    folder = make_subject(tmp_path / "LGG", "new", kinds=())
    for alias in ("t2f", "t1c", "seg"):
        save_nifti(np.ones(SHAPE, np.int16), folder / f"BraTS-GLI-00001-000-{alias}.nii.gz")
    plain, new = discover_subjects(tmp_path)
    assert plain.find("flair").name == "plain_flair.nii"
    assert new.find("flair").name.endswith("-t2f.nii.gz")
    assert new.find("t1ce").name.endswith("-t1c.nii.gz")
    loaded = load_subject(plain, ("flair", "t2"))
    assert len(loaded.images) == 2 and loaded.images[0].shape == SHAPE
    assert loaded.images[0].dtype == np.float32 and loaded.seg.dtype == np.uint8


def test_t1_does_not_match_t1ce(tmp_path):
    folder = make_subject(tmp_path / "HGG", "s", kinds=("t1ce", "flair", "seg"))
    (record,) = discover_subjects(tmp_path)
    with pytest.raises(DataError, match="missing t1 file"):
        record.find("t1")
    assert record.find("t1ce") == folder / "s_t1ce.nii.gz"


def test_modality_selection():
    assert check_modalities("flair") == ("flair",)
    assert check_modalities("FLAIR, t1ce") == ("flair", "t1ce")
    assert check_modalities(["t1", "t2"]) == ("t1", "t2")
    with pytest.raises(ConfigError, match="unknown modality 'pd'"):
        check_modalities("flair,pd")
    with pytest.raises(ConfigError, match="twice"):
        check_modalities("flair,flair")
    with pytest.raises(ConfigError, match="at least one"):
        check_modalities("")


# ---- bad inputs: one clear DataError naming the file and the problem -----------------------


def test_corrupt_nii_gz(tmp_path):
    path = tmp_path / "bad_flair.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(DataError, match=r"bad_flair\.nii\.gz.*corrupt or truncated"):
        load_volume(path)


def test_truncated_nii_gz(tmp_path):
    path = tmp_path / "cut_flair.nii.gz"
    save_nifti(np.random.default_rng(0).integers(1, 999, SHAPE).astype(np.int16), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut_flair\.nii\.gz.*corrupt or truncated"):
        load_volume(path)


def test_missing_modality(tmp_path):
    make_subject(tmp_path / "HGG", "s", kinds=("t1", "seg"))
    (record,) = discover_subjects(tmp_path)
    with pytest.raises(DataError, match=r"s: missing flair file for subject s"):
        load_subject(record, ("flair",))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.nii\.gz: file not found"):
        load_volume(tmp_path / "nothing.nii.gz")


def test_modalities_of_different_shapes(tmp_path):
    folder = make_subject(tmp_path / "LGG", "s")
    save_nifti(np.ones((12, 12, 9), np.int16), folder / "s_flair.nii.gz")
    (record,) = discover_subjects(tmp_path)
    with pytest.raises(DataError, match=r"s_flair\.nii\.gz: shape \(12, 12, 9\) differs"):
        load_subject(record, ("flair",))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_voxels(tmp_path, bad):
    volume = np.ones(SHAPE, np.float32)
    volume[3, 3, 3] = bad
    save_nifti(volume, tmp_path / "x_flair.nii.gz")
    with pytest.raises(DataError, match=r"x_flair\.nii\.gz: 1 voxels are NaN or Inf"):
        load_volume(tmp_path / "x_flair.nii.gz")


def test_4d_file(tmp_path):
    save_nifti(np.ones((*SHAPE, 2), np.int16), tmp_path / "x_t1.nii.gz")
    with pytest.raises(DataError, match=r"x_t1\.nii\.gz: expected a 3D volume, got shape"):
        load_volume(tmp_path / "x_t1.nii.gz")


def test_trailing_singleton_axis_is_accepted(tmp_path):
    save_nifti(np.ones((*SHAPE, 1), np.int16), tmp_path / "x_t1.nii.gz")
    assert load_volume(tmp_path / "x_t1.nii.gz").shape == SHAPE


def test_segmentation_with_non_integer_labels(tmp_path):
    save_nifti(np.full(SHAPE, 0.5, np.float32), tmp_path / "x_seg.nii.gz")
    with pytest.raises(DataError, match=r"x_seg\.nii\.gz: segmentation labels must be integers"):
        load_volume(tmp_path / "x_seg.nii.gz", segmentation=True)


def test_unknown_grade_in_csv(tmp_path):
    flat_layout(tmp_path, {"s1": "HGG", "s2": "GBM"})
    with pytest.raises(DataError, match=r"grades\.csv, line 3: unknown grade 'GBM' for subject"):
        discover_subjects(tmp_path)


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="the folder is empty"):
        discover_subjects(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="BraTS folder not found"):
        discover_subjects(tmp_path / "nope")


def test_folder_without_a_layout(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="no BraTS layout found"):
        discover_subjects(tmp_path)


def test_grade_folders_without_subjects(tmp_path):
    (tmp_path / "HGG").mkdir()
    with pytest.raises(DataError, match="no subject folders found"):
        discover_subjects(tmp_path)


def test_csv_subject_without_folder(tmp_path):
    flat_layout(tmp_path, {"s1": "HGG"})
    (tmp_path / "grades.csv").write_text("subject,grade\ns1,HGG\nghost,LGG\n")
    ghost = discover_subjects(tmp_path)[1]
    with pytest.raises(DataError, match="subject folder of ghost not found"):
        ghost.files(("flair",))


def test_same_subject_in_both_grades(tmp_path):
    make_subject(tmp_path / "HGG", "s")
    make_subject(tmp_path / "LGG", "s")
    with pytest.raises(DataError, match="appears twice"):
        discover_subjects(tmp_path)


def test_uncompressed_and_compressed_read_the_same(tmp_path, phantom_dir):
    source = next(phantom_dir.rglob("*_flair.nii.gz"))
    plain = tmp_path / "copy_flair.nii"
    plain.write_bytes(gzip.decompress(source.read_bytes()))
    np.testing.assert_array_equal(load_volume(source), load_volume(plain))
    assert nib.load(plain).shape == (48, 48, 32)
    shutil.copy(source, tmp_path / "again_flair.nii.gz")
    np.testing.assert_array_equal(load_volume(tmp_path / "again_flair.nii.gz"), load_volume(plain))
