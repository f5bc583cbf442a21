"""Add synthetic-ROI replacement to a TorchIO augmentation pipeline.

    python examples/torchio_pipeline.py --model PATH_OR_HUB_ID --data ROI_CACHE

`RandomSyntheticReplace` swaps a subject's image for a synthetic ROI of the same grade with
probability ``p``; it sits in `tio.Compose` like any TorchIO transform and records itself in
the subject history, so that ``subject.get_composed_history()`` replays the same output.
Without ``--model`` it uses the embedded demo model (32³, trained on phantoms); without
``--data`` phantom ROIs are built in a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torchio as tio
from torch.utils.data import DataLoader

from tumoraug.augment import RandomSyntheticReplace
from tumoraug.data import ROIDataset
from tumoraug.pretrained import demo_model_path
from tumoraug.sampling import SamplingConfig


def phantom_rois(workdir: Path) -> Path:
    """A small phantom ROI cache (32³, the demo model's size), standing in for real data."""
    from tumoraug.data.cache import preprocess
    from tumoraug.data.phantom import write_phantom_dataset

    write_phantom_dataset(workdir / "brats", per_class=6, seed=0, shape=(48, 48, 48))
    preprocess(workdir / "brats", workdir / "cache", size=32)
    return workdir / "cache"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="TumorGenerator folder or Hub id")
    parser.add_argument("--data", help="ROI cache folder (tumoraug preprocess)")
    parser.add_argument("--p", type=float, default=0.5, help="replacement probability")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(demo_model_path())
        data = args.data or phantom_rois(Path(tmp))

        transform = tio.Compose(
            [
                tio.RandomFlip(axes=(0, 1, 2)),
                RandomSyntheticReplace(
                    model, p=args.p, sampling=SamplingConfig(steps=4), include=["image"]
                ),
                tio.RandomNoise(std=0.02),
            ]
        )
        dataset = ROIDataset(data, transform=transform)
        # collate_fn=list keeps the Subjects (and their histories) of each batch
        loader = DataLoader(dataset, batch_size=4, num_workers=args.workers, collate_fn=list)
        replaced = total = 0
        for batch in loader:
            for subject in batch:
                replaced += any(t.name == "SyntheticReplace" for t in subject.history)
                total += 1
        print(f"{replaced} of {total} subjects got a synthetic ROI (p={args.p})")

        original = ROIDataset(data)[0]
        for seed in range(100):  # find a draw where the replacement happened, to show it
            torch.manual_seed(seed)
            augmented = transform(original)
            if any(t.name == "SyntheticReplace" for t in augmented.history):
                break
        print("history:", [t.name for t in augmented.history])
        replayed = augmented.get_composed_history()(original)
        same = torch.equal(replayed.image.data, augmented.image.data)
        print(f"history replay reproduces the augmented image: {same}")


if __name__ == "__main__":
    main()
