"""Data pipeline throughput: preprocessing, and reading ROIs from the cache versus from NIfTI.

Prints one table: subjects/s of `preprocess` (1 and N workers, and an unchanged re-run), and
ROIs/s of `ROIDataset` reads (in process and through a DataLoader with 2 workers) against
reading the NIfTI files and extracting the ROI each time (what a pipeline without the cache
does per item).

    OMP_NUM_THREADS=1 python benchmarks/bench_data.py --per-class 4 --shape 240 240 155
    python benchmarks/bench_data.py --brats /path/to/BraTS2019_Training  # real data
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from tumoraug.data import (
    ROIDataset,
    discover_subjects,
    extract_roi,
    load_subject,
    preprocess,
    write_phantom_dataset,
)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brats", type=Path, default=None, help="existing BraTS folder")
    parser.add_argument("--per-class", type=int, default=4, help="phantoms per grade")
    parser.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3, help="passes over the cache")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tumoraug-bench-"))
    try:
        brats = args.brats
        if brats is None:
            brats = work / "brats"
            t = timed(lambda: write_phantom_dataset(brats, args.per_class, 0, args.shape, 2))
            print(f"phantoms: {2 * args.per_class} at {tuple(args.shape)} in {t:.1f} s (2 workers)")
        records = discover_subjects(brats)
        n = len(records)
        rows = []
        t = timed(lambda: preprocess(brats, work / "rois1", size=args.size))
        rows.append(("preprocess, 1 worker", n, t))
        t = timed(lambda: preprocess(brats, work / "roisN", size=args.size, workers=args.workers))
        rows.append((f"preprocess, {args.workers} workers", n, t))
        t = timed(lambda: preprocess(brats, work / "roisN", size=args.size))
        rows.append(("preprocess re-run (all unchanged)", n, t))

        dataset = ROIDataset(work / "rois1")

        def read_cache() -> None:
            for _ in range(args.passes):
                for i in range(len(dataset)):
                    dataset[i]

        rows.append(("read cache: ROIDataset[i]", n * args.passes, timed(read_cache)))

        def read_loader(workers: int) -> float:
            loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers)
            start = time.perf_counter()
            for _ in range(args.passes):
                for _batch in loader:
                    pass
            return time.perf_counter() - start

        for workers in (0, 2):
            name = f"read cache: DataLoader, {workers} workers"
            rows.append((name, n * args.passes, read_loader(workers)))

        def read_nifti() -> None:
            for record in records:
                loaded = load_subject(record, ("flair",))
                extract_roi(loaded.images, loaded.seg, args.size)

        rows.append(("read NIfTI + extract ROI", n, timed(read_nifti)))

        shape = tuple(dataset[0]["image"].shape)
        print(f"\n{n} subjects from {brats}, ROI {shape}, torch threads {torch.get_num_threads()}")
        print(f"| {'operation':<36} | {'items':>5} | {'seconds':>7} | {'items/s':>8} |")
        print(f"|{'-' * 38}|{'-' * 6}:|{'-' * 8}:|{'-' * 9}:|")
        for name, items, seconds in rows:
            print(f"| {name:<36} | {items:>5} | {seconds:>7.2f} | {items / seconds:>8.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
