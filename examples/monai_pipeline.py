"""Add synthetic-ROI replacement to a MONAI pipeline, and serve synthetic ROIs as MONAI dicts.

    pip install "tumoraug[monai]"
    python examples/monai_pipeline.py --model PATH_OR_HUB_ID --data ROI_CACHE

`RandSyntheticReplaced` swaps ``d["image"]`` for a synthetic ROI of the item's grade with
probability ``prob``; it sits in ``monai.transforms.Compose`` like any dictionary transform
and draws from MONAI's random state, so ``set_random_state`` (direct calls) and
``monai.utils.set_determinism`` (through ``monai.data.DataLoader``) reproduce a run.
`SyntheticTumorDataset(..., output="dict")` yields MONAI-style dict items.

The ROIs come from a small `SyntheticBank` generated once (fast to serve; passing the model
itself to `RandSyntheticReplaced` works too, and generates one ROI per replacement). Without
``--model`` it uses the embedded demo model (32³, trained on phantoms); without ``--data``
phantom ROIs are built in a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import monai
import torch
from monai.data import CacheDataset, DataLoader, MetaTensor, list_data_collate
from monai.transforms import Compose, EnsureTyped, RandFlipd, RandGaussianNoised

from tumoraug.augment import SyntheticBank, SyntheticTumorDataset
from tumoraug.augment.monai import RandSyntheticReplaced
from tumoraug.data import ROIDataset, preprocess, subject_tensors, write_phantom_dataset
from tumoraug.pretrained import demo_model_path
from tumoraug.sampling import SamplingConfig


def phantom_rois(workdir: Path) -> Path:
    """A small phantom ROI cache (32³, the demo model's size), standing in for real data."""
    write_phantom_dataset(workdir / "brats", per_class=3, seed=0, shape=(64, 64, 64))
    preprocess(workdir / "brats", workdir / "cache", size=32)
    return workdir / "cache"


def roi_dicts(cache: Path) -> list[dict]:
    """The real ROIs as MONAI dicts: a MetaTensor image (with its affine) and the label."""
    items = []
    for subject in ROIDataset(cache):
        image, _, label = subject_tensors(subject)
        affine = torch.as_tensor(subject.image.affine)
        items.append({"image": MetaTensor(image[0], affine=affine), "label": int(label[0])})
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="TumorGenerator folder or Hub id")
    parser.add_argument("--data", help="ROI cache folder (tumoraug preprocess)")
    parser.add_argument("--prob", type=float, default=0.5, help="replacement probability")
    parser.add_argument("--bank-size", type=int, default=4, help="synthetic ROIs to generate")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(demo_model_path())
        real = roi_dicts(Path(args.data) if args.data else phantom_rois(Path(tmp)))
        bank = SyntheticBank.build(
            model, args.bank_size, None, Path(tmp) / "bank.npy", sampling=SamplingConfig(steps=4)
        )
        print(f"{len(real)} real ROIs, bank of {len(bank)} synthetic ROIs {bank.item_shape}")

        transform = Compose(
            [
                EnsureTyped(keys="image", dtype=torch.float32),  # deterministic: cached
                RandSyntheticReplaced(keys="image", generator=bank, prob=args.prob),
                RandFlipd(keys="image", prob=0.5, spatial_axis=0),
                RandGaussianNoised(keys="image", prob=1.0, std=0.02),
            ]
        )
        dataset = CacheDataset(real, transform=transform, progress=False)

        def epoch() -> list[dict]:
            monai.utils.set_determinism(seed=args.seed)  # seeds the loader's transform states
            return list(DataLoader(dataset, batch_size=4, num_workers=args.workers))

        batches, again = epoch(), epoch()
        replaced = sum(int(batch["synthetic"].sum()) for batch in batches)
        print(f"{replaced} of {len(real)} items replaced by a synthetic ROI (prob={args.prob})")
        image = batches[0]["image"]
        print(f"batch: image {tuple(image.shape)} ({type(image).__name__})")
        pairs = zip(batches, again, strict=True)
        same = all(torch.equal(a["image"], b["image"]) for a, b in pairs)
        print(f"set_determinism reproduces the epoch: {same}")

        always = RandSyntheticReplaced(keys="image", generator=bank, prob=1.0)
        first = always.set_random_state(args.seed)(real[0])
        second = always.set_random_state(args.seed)(real[0])
        same = torch.equal(first["image"], second["image"])
        print(f"set_random_state reproduces the replaced image: {same}")
        kept = torch.equal(first["image"].affine, real[0]["image"].affine)
        print(f"the replaced image keeps its affine: {kept}")
        print(f"recorded: synthetic={first['synthetic']}, synthetic_seed={first['synthetic_seed']}")

        synthetic = SyntheticTumorDataset.from_bank(bank, output="dict")
        loader = DataLoader(
            synthetic, batch_size=4, num_workers=args.workers, collate_fn=list_data_collate
        )
        batch = next(iter(loader))
        print(f"synthetic dicts: batch {tuple(batch['image'].shape)}, grades {batch['grade']}")


if __name__ == "__main__":
    main()
