"""The data pipeline end to end: phantoms -> ROI cache -> ROIDataset -> DataLoader.

    python examples/data_pipeline.py                       # small phantoms in a temp folder
    python examples/data_pipeline.py --brats /data/BraTS2019_Training --size 128 --out rois

With ``--brats`` the same code reads a real BraTS folder instead of writing phantoms.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torchio as tio
from torch.utils.data import DataLoader

from tumoraug.data import ROIDataset, preprocess, subject_tensors, write_phantom_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brats", type=Path, default=None, help="a BraTS folder (optional)")
    parser.add_argument("--out", type=Path, default=None, help="ROI cache folder (kept)")
    parser.add_argument("--size", type=int, default=32, help="ROI edge in voxels")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tumoraug-example-") as tmp:
        brats = args.brats
        if brats is None:
            brats = write_phantom_dataset(Path(tmp) / "brats", 3, seed=0, shape=(64, 64, 42))
            print(f"phantoms: {brats}")
        run(brats, args.out or Path(tmp) / "rois", args.size)


def run(brats: Path, out: Path, size: int) -> None:
    """Preprocess ``brats`` into ``out`` and iterate once over a DataLoader of the ROIs."""
    report = preprocess(brats, out, size=size, modalities=("flair",), workers=2)
    print(report.summary())
    for subject, message in report.failed:
        print(f"  bad subject {subject}: {message}")

    # A TorchIO augmentation runs on every item; the cache stays untouched.
    augment = tio.Compose([tio.RandomFlip(axes=(0,)), tio.RandomGamma(log_gamma=0.1)])
    dataset = ROIDataset(out, transform=augment)
    print(f"dataset: {len(dataset)} ROIs, labels {dataset.labels}")

    loader = DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2)
    for batch in loader:
        image, seg, label = subject_tensors(batch)
        print(
            f"batch: image {tuple(image.shape)} in [{image.min():.2f}, {image.max():.2f}], "
            f"seg {tuple(seg.shape)}, labels {label.tolist()}, grades {batch['grade']}"
        )


if __name__ == "__main__":
    main()
