"""Pre-train a small 3D CNN on a synthetic bank, fine-tune it on real ROIs, print the AUC.

    python examples/pretrain_on_synthetic.py --model PATH_OR_HUB_ID --data ROI_CACHE

Steps: generate a synthetic bank once (`SyntheticBank.build`), serve it without the model
(`SyntheticTumorDataset.from_bank`), run the `SyntheticThenReal` epoch schedule (synthetic
epochs first, then real ones), and score LGG/HGG on held-out real ROIs. The same network is
also trained on real ROIs only, for comparison. Without ``--model`` it uses the embedded
demo model (32³, trained on phantoms); without ``--data`` phantom ROIs are built in a
temporary folder (with so few ROIs and epochs the AUCs are noisy: the example shows the
pipeline, not a result).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torchio as tio
from torch import nn
from torch.utils.data import Subset

from tumoraug.augment import SyntheticBank, SyntheticThenReal, SyntheticTumorDataset
from tumoraug.data import ROIDataset, subject_tensors
from tumoraug.metrics import roc_auc
from tumoraug.pretrained import demo_model_path


def phantom_rois(workdir: Path) -> Path:
    """A small phantom ROI cache (32³, the demo model's size), standing in for real data."""
    from tumoraug.data.cache import preprocess
    from tumoraug.data.phantom import write_phantom_dataset

    write_phantom_dataset(workdir / "brats", per_class=10, seed=0, shape=(48, 48, 48))
    preprocess(workdir / "brats", workdir / "cache", size=32)
    return workdir / "cache"


def small_cnn(channels: int) -> nn.Module:
    """A 3D CNN small enough for CPU: two conv blocks, global pooling, a linear head."""
    return nn.Sequential(
        nn.Conv3d(channels, 8, 3, padding=1),
        nn.BatchNorm3d(8),
        nn.ReLU(),
        nn.MaxPool3d(2),
        nn.Conv3d(8, 16, 3, padding=1),
        nn.BatchNorm3d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


def train_epoch(net: nn.Module, dataset, optimizer, workers: int) -> float:
    net.train()
    loader = tio.SubjectsLoader(dataset, batch_size=8, shuffle=True, num_workers=workers)
    losses = []
    for batch in loader:
        image, _, label = subject_tensors(batch)
        loss = nn.functional.cross_entropy(net(image), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / max(len(losses), 1)


@torch.no_grad()
def evaluate(net: nn.Module, dataset) -> float:
    net.eval()
    batch = tio.SubjectsLoader(dataset, batch_size=len(dataset)).__iter__().__next__()
    image, _, label = subject_tensors(batch)
    scores = net(image).softmax(1)[:, 1]
    return roc_auc(label.numpy(), scores.numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="TumorGenerator folder or Hub id")
    parser.add_argument("--data", help="ROI cache folder (tumoraug preprocess)")
    parser.add_argument("--bank-size", type=int, default=64)
    parser.add_argument("--synthetic-epochs", type=int, default=3)
    parser.add_argument("--real-epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(demo_model_path())
        data = args.data or phantom_rois(Path(tmp))
        real = ROIDataset(data)
        # hold out every other ROI of each class for testing
        per_class = {c: [i for i, v in enumerate(real.labels) if v == c] for c in (0, 1)}
        test_ids = sorted(i for ids in per_class.values() for i in ids[1::2])
        train = Subset(real, [i for i in range(len(real)) if i not in set(test_ids)])
        test = Subset(real, test_ids)

        bank = SyntheticBank.build(model, args.bank_size, None, Path(tmp) / "bank.npy", seed=0)
        synthetic = SyntheticTumorDataset.from_bank(bank)
        print(f"bank: {len(bank)} ROIs of {bank.item_shape} ({bank.dtype}) at {bank.path.name}")

        channels = bank.item_shape[0]
        results = {}
        for name, synthetic_epochs in (
            ("real only", 0),
            ("synthetic then real", args.synthetic_epochs),
        ):
            torch.manual_seed(args.seed)
            net = small_cnn(channels)
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
            schedule = SyntheticThenReal(
                synthetic, train, synthetic_epochs=synthetic_epochs, real_epochs=args.real_epochs
            )
            for epoch, phase, dataset in schedule:
                loss = train_epoch(net, dataset, optimizer, args.workers)
                print(f"  [{name}] epoch {epoch} ({phase}): loss {loss:.3f}")
            results[name] = evaluate(net, test)
        for name, auc in results.items():
            print(f"AUC on {len(test)} held-out real ROIs, {name}: {auc:.3f}")


if __name__ == "__main__":
    main()
