"""Items/s of the ways to feed ROIs to a DataLoader, with 0 and 2 workers in one run.

    python benchmarks/bench_serving.py --size 64 --n 32
    python benchmarks/bench_serving.py --size 128 --n 64 --model PATH   # a trained model

Paths, each through ``tio.SubjectsLoader(batch_size, num_workers=W)`` (persistent workers)
for each ``W`` of ``--workers`` (default ``0,2``): real ROIs read from NIfTI files
(``tio.ScalarImage`` per file), real ROIs from the ROI cache (`ROIDataset`), synthetic ROIs
from a bank (`SyntheticTumorDataset.from_bank`), synthetic ROIs generated on the fly
(`SyntheticTumorDataset`, model loaded in each worker); plus a bank read as whole batches,
once with float32 crossing from the workers (`BankBatches` through
``DataLoader(batch_size=None)``) and once with the stored int16 crossing and the main
process dequantising (`BankLoader`). One warm-up epoch (worker start, model load) is not
timed, then ``--epochs`` epochs are. Inputs are built in a temporary folder: phantom ROIs
(the same volumes as NIfTI and in the cache) and, without ``--model``, a random-weight
generator with the tiny preset at ``--size`` (real models cost more per ROI: the on-the-fly
row is a lower bound). Generation runs on ``--device`` (auto: CUDA when present; with CUDA
the workers are spawned, since CUDA cannot be used in forked workers).
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

from tumoraug.augment import BankBatches, BankLoader, SyntheticBank, SyntheticTumorDataset
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


def batches_per_second(
    bank: SyntheticBank, batch_size: int, workers: int, epochs: int, context: str, *, raw: bool
) -> float:
    """Items/s of whole batches: `BankBatches` (float32 from the workers) or, with ``raw``,
    `BankLoader` (int16 from the workers, dequantised in the main process)."""
    options = {
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "multiprocessing_context": context if workers > 0 else None,
    }
    if raw:
        loader = BankLoader(bank, batch_size, **options)
    else:
        loader = DataLoader(BankBatches(bank, batch_size), batch_size=None, **options)
    for _ in loader:
        pass
    start = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for _, labels in loader:
            count += len(labels)
    return count / (time.perf_counter() - start)


def times(ratio: float) -> str:
    """A speed ratio with one decimal, or two significant digits below 0.1."""
    return f"{ratio:.1f}×" if ratio >= 0.1 else f"{ratio:.2g}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="ROI edge length")
    parser.add_argument("--n", type=int, default=32, help="ROIs per dataset")
    parser.add_argument("--model", help="TumorGenerator folder (default: random tiny model)")
    parser.add_argument("--steps", type=int, default=12, help="decoding rounds")
    parser.add_argument("--device", default="auto", help="generation device: auto, cpu, cuda")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--workers", default="0,2", help="DataLoader worker counts, comma-separated"
    )
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (reading paths)")
    parser.add_argument(
        "--n-generate", type=int, default=4, help="ROIs of the on-the-fly row (1 timed epoch)"
    )
    args = parser.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    context = "spawn" if device == "cuda" else "fork"
    worker_counts = [int(v) for v in args.workers.split(",")]

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
        whole_batches = {  # name -> raw (int16 crosses from the workers)
            "synthetic ROIs from a bank, whole batches, float32 (BankBatches)": False,
            "synthetic ROIs from a bank, whole batches, int16 (BankLoader)": True,
        }
        rates: dict[str, dict[int, float]] = {}
        for workers in worker_counts:
            for name, (ds, epochs) in datasets.items():
                rate = items_per_second(ds, args.batch_size, workers, epochs, context)
                rates.setdefault(name, {})[workers] = rate
            for name, raw in whole_batches.items():
                rate = batches_per_second(
                    bank, args.batch_size, workers, args.epochs, context, raw=raw
                )
                rates.setdefault(name, {})[workers] = rate

    print(
        f"ROI {args.size}³, {len(files)} items, batch {args.batch_size}, workers {args.workers}, "
        f"{args.epochs} timed epochs, steps {args.steps}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    columns = "".join(f" {w} workers: items/s | vs NIfTI |" for w in worker_counts)
    print(f"| path |{columns}")
    print("|---|" + "---:|---:|" * len(worker_counts))
    base = next(iter(rates.values()))
    for name, by_workers in rates.items():
        cells = "".join(
            f" {by_workers[w]:.1f} | {times(by_workers[w] / base[w])} |" for w in worker_counts
        )
        print(f"| {name} |{cells}")
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    print(f"THP_MEM_ALLOC_ENABLE={thp} (1: torch allocates large tensors on huge pages)")


if __name__ == "__main__":
    main()
