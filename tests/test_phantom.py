"""Phantoms: BraTS layout, brain-like contrasts, determinism, learnable-but-not-trivial grades."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from tumoraug.cli import app
from tumoraug.data import ROIDataset, make_phantom, preprocess, write_phantom_dataset
from tumoraug.errors import ConfigError

KINDS = ("t1", "t1ce", "t2", "flair", "seg")


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_layout_is_brats_2019(phantom_dir):
    for grade in ("HGG", "LGG"):
        subjects = sorted(p.name for p in (phantom_dir / grade).iterdir())
        assert subjects == [f"Phantom_{grade}_{i:03d}" for i in range(3)]
        for subject in subjects:
            for kind in KINDS:
                image = nib.load(phantom_dir / grade / subject / f"{subject}_{kind}.nii.gz")
                assert image.shape == (48, 48, 32)
                np.testing.assert_array_equal(image.affine, np.eye(4))
    seg = np.asarray(nib.load(next(phantom_dir.rglob("*_seg.nii.gz"))).dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 4}
    assert set(np.unique(seg)) >= {0, 1, 2}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = write_phantom_dataset(tmp_path / "a", 1, seed=7, shape=(24, 24, 16))
    b = write_phantom_dataset(tmp_path / "b", 1, seed=7, shape=(24, 24, 16), workers=2)
    c = write_phantom_dataset(tmp_path / "c", 1, seed=8, shape=(24, 24, 16))
    files_a, files_b = _files(a), _files(b)
    assert [p.relative_to(a) for p in files_a] == [p.relative_to(b) for p in files_b]
    assert len(files_a) == 10
    for fa, fb in zip(files_a, files_b, strict=True):
        assert fa.read_bytes() == fb.read_bytes(), fa.name
    flair_a = next(a.rglob("*HGG_000_flair.nii.gz")).read_bytes()
    assert flair_a != next(c.rglob("*HGG_000_flair.nii.gz")).read_bytes()


def test_subject_does_not_depend_on_dataset_size():
    one = make_phantom("LGG", seed=3, index=1, shape=(24, 24, 16))
    again = make_phantom("LGG", seed=3, index=1, shape=(24, 24, 16))
    other = make_phantom("LGG", seed=3, index=2, shape=(24, 24, 16))
    np.testing.assert_array_equal(one.images["flair"], again.images["flair"])
    assert not np.array_equal(one.images["flair"], other.images["flair"])


def test_contrasts_look_like_brain_mri():
    p = make_phantom("HGG", seed=0, index=0, shape=(64, 64, 42))
    flair, t2, t1ce = (p.images[k].astype(float) for k in ("flair", "t2", "t1ce"))
    seg = p.seg
    head = flair > 0
    assert flair[0, 0, 0] == 0 and 0.2 < head.mean() < 0.7  # background 0 around a head
    brain = head & (seg == 0)
    assert flair[seg == 2].mean() > 1.3 * np.median(flair[brain])  # hyperintense edema
    assert t2[seg == 2].mean() > np.median(t2[brain])
    assert p.params["rim"]
    assert t1ce[seg == 4].mean() > 1.3 * np.median(t1ce[brain])  # enhancing rim
    # CSF (dark in FLAIR, bright in T2) exists inside the head
    csf = head & (flair < 0.5 * np.median(flair[brain])) & (t2 > np.median(t2[brain]))
    assert csf.sum() > 50


def test_grades_differ_on_average_but_overlap():
    shape = (32, 32, 24)
    volumes = {
        g: [int((make_phantom(g, 0, i, shape).seg > 0).sum()) for i in range(8)]
        for g in ("HGG", "LGG")
    }
    assert np.mean(volumes["HGG"]) > np.mean(volumes["LGG"])
    assert min(volumes["HGG"]) < max(volumes["LGG"])  # no clean threshold on size


@pytest.mark.parametrize("shape", [(8, 32, 32), (32, 32)])
def test_bad_shape_is_a_config_error(tmp_path, shape):
    with pytest.raises(ConfigError, match="shape"):
        write_phantom_dataset(tmp_path, 1, shape=shape)


def test_bad_per_class_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="per_class"):
        write_phantom_dataset(tmp_path, 0)


def _features(dataset: ROIDataset) -> np.ndarray:
    rows = []
    for i in range(len(dataset)):
        image, seg = dataset.read(i)
        tumor = seg[0] > 0
        edema = (seg[0] == 2).sum() / tumor.sum()
        rows.append([np.log(tumor.sum()), image[0][tumor].mean(), edema])
    return np.asarray(rows)


def test_grades_are_learnable_but_not_trivial(tmp_path):
    """Small-size version of scripts/phantom_separability.py (looser bounds: fewer subjects)."""
    brats = write_phantom_dataset(tmp_path / "brats", 14, seed=0, shape=(48, 48, 32))
    preprocess(brats, tmp_path / "rois", size=28)
    dataset = ROIDataset(tmp_path / "rois")
    x, y = _features(dataset), np.asarray(dataset.labels)
    model = make_pipeline(StandardScaler(), LogisticRegression())
    cv = StratifiedKFold(4, shuffle=True, random_state=0)
    scores = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
    auc = roc_auc_score(y, scores)
    assert 0.65 <= auc <= 0.99, auc
    for column in range(x.shape[1]):  # no single feature thresholds the grades perfectly
        single = roc_auc_score(y, x[:, column])
        assert max(single, 1 - single) < 1.0


def test_cli_phantom_writes_the_layout(tmp_path):
    out = tmp_path / "brats"
    args = ["phantom", str(out), "--per-class", "1", "--seed", "1", "--shape", "24", "24", "16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 2 phantoms" in result.stdout
    assert len(_files(out)) == 10


def test_cli_phantom_writes_the_brats2020_layout(tmp_path):
    out = tmp_path / "brats2020"
    args = ["phantom", str(out), "--per-class", "1", "--shape", "24", "24", "16"]
    result = CliRunner().invoke(app, [*args, "--layout", "brats2020"])
    assert result.exit_code == 0, result.output
    assert not (out / "HGG").exists() and list(out.glob("*.csv"))
    bad = CliRunner().invoke(app, [*args, "--layout", "brats2018"])
    assert bad.exit_code == 1 and "layout" in bad.output


def test_cli_phantom_bad_shape_is_one_clear_line(tmp_path):
    args = ["phantom", str(tmp_path), "--per-class", "1", "--shape", "4", "24", "16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "error:" in result.output and "shape" in result.output
