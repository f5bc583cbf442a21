"""Are phantom grades learnable but not trivial? The acceptance check of the phantom data.

Runs ``tumoraug phantom`` + ``tumoraug preprocess`` (20 phantoms per grade at 240×240×155 ->
40 ROIs of 128³ by default), computes three simple features of every ROI (log tumor volume,
mean FLAIR in the tumor, edema fraction of the tumor), and evaluates a logistic regression on
held-out phantoms with repeated stratified 5-fold cross-validation. The AUC must land in
[0.75, 0.95], and no single feature may separate the grades with a threshold.

    OMP_NUM_THREADS=1 python scripts/phantom_separability.py --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tumoraug.data import ROIDataset

FEATURES = ("log tumor volume", "mean FLAIR in tumor", "edema fraction")
AUC_RANGE = (0.75, 0.95)


def roi_features(dataset: ROIDataset) -> np.ndarray:
    """(N, 3) features of every ROI: log tumor volume, mean FLAIR in tumor, edema fraction."""
    rows = []
    for index in range(len(dataset)):
        image, seg = dataset.read(index)
        tumor = seg[0] > 0
        rows.append(
            [np.log(tumor.sum()), image[0][tumor].mean(), (seg[0] == 2).sum() / tumor.sum()]
        )
    return np.asarray(rows, dtype=np.float64)


def cross_validated_auc(x: np.ndarray, y: np.ndarray, repeats: int, seed: int) -> np.ndarray:
    """Held-out AUC of a standardised logistic regression, one per 5-fold CV repetition."""
    model = make_pipeline(StandardScaler(), LogisticRegression())
    aucs = []
    for r in range(repeats):
        cv = StratifiedKFold(5, shuffle=True, random_state=seed + r)
        scores = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
        aucs.append(roc_auc_score(y, scores))
    return np.asarray(aucs)


def tumoraug(*args: str) -> None:
    """Run the ``tumoraug`` command of this environment."""
    script = Path(sys.executable).with_name("tumoraug")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tumoraug.cli"]
    subprocess.run([*command, *args], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the data here")
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tumoraug-separability-"))
    brats, rois = work / "brats", work / "rois"
    shape = [str(s) for s in args.shape]
    try:
        t0 = time.perf_counter()
        workers = ["--workers", str(args.workers)]
        tumoraug("phantom", str(brats), "--per-class", str(args.per_class),
                 "--seed", str(args.seed), "--shape", *shape, *workers)  # fmt: skip
        t1 = time.perf_counter()
        tumoraug("preprocess", str(brats), str(rois), "--size", str(args.size), *workers)
        t2 = time.perf_counter()
        dataset = ROIDataset(rois)
        x, y = roi_features(dataset), np.asarray(dataset.labels)
        shapes = {tuple(e["shape"]) for e in dataset.manifest["subjects"]}
        n_hgg = int(y.sum())
        print(f"\n{len(dataset)} ROIs {sorted(shapes)}: {n_hgg} HGG, {len(y) - n_hgg} LGG")
        print(f"phantom: {t1 - t0:.1f} s   preprocess: {t2 - t1:.1f} s")
        print("\nfeature               HGG mean±sd        LGG mean±sd        AUC alone  perfect?")
        perfect = False
        for j, name in enumerate(FEATURES):
            auc = roc_auc_score(y, x[:, j])
            separable = max(auc, 1 - auc) == 1.0
            perfect |= separable
            print(f"{name:<21} {x[y == 1, j].mean():7.3f}±{x[y == 1, j].std():.3f}    "
                  f"{x[y == 0, j].mean():7.3f}±{x[y == 0, j].std():.3f}    "
                  f"{max(auc, 1 - auc):.3f}      {'yes' if separable else 'no'}")  # fmt: skip
        aucs = cross_validated_auc(x, y, args.repeats, args.seed)
        print(f"\nlogistic regression, {args.repeats}× stratified 5-fold CV, held-out AUC: "
              f"{aucs.mean():.3f} ± {aucs.std():.3f} "
              f"(min {aucs.min():.3f}, max {aucs.max():.3f})")  # fmt: skip
        ok = AUC_RANGE[0] <= aucs.mean() <= AUC_RANGE[1] and not perfect
        print(f"acceptance (AUC in {list(AUC_RANGE)}, no single feature perfect): "
              f"{'PASS' if ok else 'FAIL'}   total {time.perf_counter() - t0:.1f} s")  # fmt: skip
        return 0 if ok else 1
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
