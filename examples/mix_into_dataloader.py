"""Mix synthetic ROIs into an existing Dataset with one line, inside a multi-worker DataLoader.

    python examples/mix_into_dataloader.py --model PATH_OR_HUB_ID --data ROI_CACHE

Without ``--model`` it uses the embedded demo model (32³, trained on phantoms); without
``--data`` it builds a small phantom ROI cache in a temporary folder, so that it runs
anywhere in seconds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torchio as tio
from torch.utils.data import DataLoader, Dataset

from tumoraug.augment import SyntheticTumorDataset, mix
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


class Pairs(Dataset):
    """An existing (tensor, label) Dataset, as many training loops have."""

    def __init__(self, rois: ROIDataset) -> None:
        self.rois = rois

    def __len__(self) -> int:
        return len(self.rois)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        item = self.rois[i]
        return item.image.data, item.label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="TumorGenerator folder or Hub id")
    parser.add_argument("--data", help="ROI cache folder (tumoraug preprocess)")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of synthetic items")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(demo_model_path())
        data = args.data or phantom_rois(Path(tmp))
        real = ROIDataset(data)
        # The generator is given as a path: each worker loads it lazily, once.
        synthetic = SyntheticTumorDataset(
            model, length=1000, seed=0, sampling=SamplingConfig(steps=4), device="cpu"
        )

        mixed = mix(real, synthetic, ratio=args.ratio, seed=0)  # <- the one line
        loader = tio.SubjectsLoader(mixed, batch_size=4, shuffle=True, num_workers=args.workers)
        for epoch in range(args.epochs):
            mixed.set_epoch(epoch)
            n_syn = n_all = 0
            for batch in loader:
                n_syn += int(batch["synthetic"].sum())
                n_all += len(batch["label"])
            print(f"epoch {epoch}: {n_all} items, {n_syn} synthetic ({n_syn / n_all:.0%})")

        pairs = mix(Pairs(real), synthetic, ratio=args.ratio, seed=0)
        images, labels = next(iter(DataLoader(pairs, batch_size=4, num_workers=args.workers)))
        print(f"(tensor, label) dataset: batch {tuple(images.shape)}, labels {labels.tolist()}")


if __name__ == "__main__":
    main()
