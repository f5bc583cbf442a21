"""Items/s of the ways to feed ROIs to a DataLoader with 2 workers.

    python benchmarks/bench_serving.py --size 64 --n 32
    python benchmarks/bench_serving.py --size 128 --n 64 --model PATH   # a trained model

Paths, each through ``tio.SubjectsLoader(batch_size, num_workers=2, persistent_workers=True)``:
real ROIs read from NIfTI files (``tio.ScalarImage`` per file), real ROIs from the ROI cache
(`ROIDataset`), synthetic ROIs from a bank (`SyntheticTumorDataset.from_bank`), synthetic
ROIs generated on the fly (`SyntheticTumorDataset`, model loaded in each worker); plus a bank
read as whole batches (`BankBatches` through ``DataLoader(batch_size=None)``). One warm-up
epoch (worker start, model load) is not timed, then ``--epochs`` epochs are. Inputs are
built in a temporary folder: phantom ROIs (the same volumes as NIfTI and in the cache) and,
without ``--model``, a random-weight generator with the tiny preset at ``--size`` (real
models cost more per ROI: the on-the-fly row is a lower bound). Generation runs on
``--device`` (auto: CUDA when present; with CUDA the workers are spawned, since CUDA cannot
be used in forked workers).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio
from torch.utils.data import DataLoader

from tumoraug.augment import BankBatches, SyntheticBank, SyntheticTumorDataset
from tumoraug.data import ROIDataset
from tumoraug.sampling import SamplingConfig


def build_inputs(workdir: Path, size: int, n: int) -> tuple[Path, Path]:
    """A phantom ROI cache of ``n`` ROIs and the same ROIs as NIfTI files."""
    from tumoraug.data.cache import preprocess
    from tumoraug.data.phantom import write_phantom_dataset

    shape = (size + 16,) * 3
    write_phantom_dataset(
        workdir / "brats", per_class=max(1, n // 2), seed=0, shape=shape, workers=2
    )
    preprocess(workdir / "brats", workdir / "cache", size=size, workers=2)
    nifti = workdir / "nifti"
    nifti.mkdir()
    rois = ROIDataset(workdir / "cache")
    for i in range(len(rois)):
        volume = rois[i].image.data[0].numpy()
        nib.save(nib.Nifti1Image(volume, np.eye(4)), nifti / f"{i:04d}_{rois.labels[i]}.nii.gz")
    return workdir / "cache", nifti


def random_model(workdir: Path, size: int) -> Path:
    from tumoraug.config import TokenizerConfig, TransformerConfig
    from tumoraug.generator import TumorGenerator
    from tumoraug.models.transformer import MaskedTransformer
    from tumoraug.models.vqgan import VQGAN3D

    torch.manual_seed(0)
    # one more downsampling level above 64³ keeps the token grid at 16³ (4096 tokens, as the
    # brats128 preset), so that attention stays affordable
    mult = {"channel_mult": (1, 1, 2, 2)} if size > 64 else {}
    tokenizer = VQGAN3D(TokenizerConfig.preset("tiny", roi_size=size, **mult))
    grid = tokenizer.config.token_grid
    transformer = MaskedTransformer(TransformerConfig.preset("tiny", token_grid=grid))
    return TumorGenerator(tokenizer, transformer, device="cpu").save_pretrained(workdir / "model")


def items_per_second(dataset, batch_size: int, workers: int, epochs: int, context: str) -> float:
    loader = tio.SubjectsLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        multiprocessing_context=context if workers > 0 else None,
    )
    for _ in loader:  # warm-up: worker start, model load, page cache
        pass
    start = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for batch in loader:
            count += len(batch["label"])
    return count / (time.perf_counter() - start)


def batches_per_second(dataset: BankBatches, workers: int, epochs: int, context: str) -> float:
    """Items/s of a Dataset of whole batches (``batch_size=None``)."""
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        multiprocessing_context=context if workers > 0 else None,
    )
    for _ in loader:
        pass
    start = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for _, labels in loader:
            count += len(labels)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="ROI edge length")
    parser.add_argument("--n", type=int, default=32, help="ROIs per dataset")
    parser.add_argument("--model", help="TumorGenerator folder (default: random tiny model)")
    parser.add_argument("--steps", type=int, default=12, help="decoding rounds")
    parser.add_argument("--device", default="auto", help="generation device: auto, cpu, cuda")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (reading paths)")
    parser.add_argument(
        "--n-generate", type=int, default=4, help="ROIs of the on-the-fly row (1 timed epoch)"
    )
    args = parser.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    context = "spawn" if device == "cuda" else "fork"

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cache, nifti = build_inputs(workdir, args.size, args.n)
        model = args.model or str(random_model(workdir, args.size))
        files = sorted(nifti.glob("*.nii.gz"))
        from_nifti = tio.SubjectsDataset(
            [tio.Subject(image=tio.ScalarImage(p), label=int(p.name[5])) for p in files]
        )
        # Reading speed does not depend on the contents: the bank is filled cheaply (one
        # decoding round, no guidance); generation is timed by the on-the-fly row.
        bank = SyntheticBank.build(
            model, len(files), None, workdir / "bank.npy",
            sampling=SamplingConfig(steps=1, guidance_scale=1.0),
            batch_size=args.batch_size, device=device,
        )  # fmt: skip
        on_the_fly = SyntheticTumorDataset(
            model,
            args.n_generate,
            sampling=SamplingConfig(steps=args.steps),
            device=device,
            block_size=args.batch_size,
        )
        datasets = {
            "real ROIs from NIfTI (.nii.gz)": (from_nifti, args.epochs),
            "real ROIs from the ROI cache": (ROIDataset(cache), args.epochs),
            "synthetic ROIs from a bank (int16)": (
                SyntheticTumorDataset.from_bank(bank),
                args.epochs,
            ),
            f"synthetic ROIs generated on the fly ({device}, {args.steps} steps)": (on_the_fly, 1),
        }
        rates = {
            name: items_per_second(ds, args.batch_size, args.workers, epochs, context)
            for name, (ds, epochs) in datasets.items()
        }
        rates["synthetic ROIs from a bank, whole batches (BankBatches)"] = batches_per_second(
            BankBatches(bank, args.batch_size), args.workers, args.epochs, context
        )

    print(
        f"ROI {args.size}³, {len(files)} items, batch {args.batch_size}, {args.workers} workers, "
        f"{args.epochs} timed epochs, steps {args.steps}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| path | items/s | ms/item | vs NIfTI |")
    print("|---|---:|---:|---:|")
    base = next(iter(rates.values()))
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {1000 / rate:.1f} | {rate / base:.1f}× |")
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    print(f"THP_MEM_ALLOC_ENABLE={thp} (1: torch allocates large tensors on huge pages)")


if __name__ == "__main__":
    main()
