"""Train on synthetic ROIs only, test on held-out real ROIs: how much grade signal do they carry?

A diagnostic next to the downstream protocol: for each source, the protocol's `ResNet3D`
classifier is trained (same defaults: width 16, 30 epochs, AdamW 1e-3, batch 8) on ``--n``
ROIs of that source, half HGG, and tested on every ROI of ``--data``. Sources: generator
folders (``--model``, ROIs generated once with seed 0, guidance 1.5) and, as the reference,
real ROIs of another cache (``--real-reference``: the generators' own training phantoms).

    OMP_NUM_THREADS=1 python scripts/synthetic_to_real.py --data /tmp/exp/real_cache32 \\
        --real-reference /tmp/tokq/cache32 --model /tmp/exp/demo_s2000 \\
        --model /tmp/exp/gen_topk0 --n 100 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from tumoraug.data import ROIDataset
from tumoraug.evaluation import (
    ClassifierConfig,
    ProtocolConfig,
    ResNet3D,
    materialize,
    predict,
    synthetic_source,
    train_classifier,
)
from tumoraug.metrics import classification_metrics


def balanced(dataset: ROIDataset, n: int) -> Subset:
    """The first ``n // 2`` ROIs of each grade."""
    labels = dataset.labels
    picks = [i for g in (1, 0) for i in [j for j, y in enumerate(labels) if y == g][: n // 2]]
    return Subset(dataset, picks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Held-out real ROI cache.")
    parser.add_argument("--real-reference", type=Path, default=None, help="Other real cache.")
    parser.add_argument("--model", type=Path, action="append", default=[])
    parser.add_argument("--n", type=int, default=100, help="Training ROIs per source.")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",")]
    defaults = ProtocolConfig()
    test = materialize(ROIDataset(args.data))
    sources = {}
    if args.real_reference is not None:
        sources["real (train phantoms)"] = materialize(
            balanced(ROIDataset(args.real_reference), args.n)
        )
    for model in args.model:
        sources[model.name] = synthetic_source(model=model, count=args.n, seed=0, device="cpu")

    print("| Training source | n | AUC | Acc | F1 | seconds |")
    print("|---|---|---|---|---|---|")
    for name, train in sources.items():
        start = time.perf_counter()
        scores = []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = ResNet3D(ClassifierConfig())
                train_classifier(
                    model, train, epochs=defaults.epochs, batch_size=defaults.batch_size,
                    lr=defaults.lr, weight_decay=defaults.weight_decay, seed=seed, device="cpu",
                )  # fmt: skip
            labels, probs = predict(model, test, device="cpu")
            scores.append(classification_metrics(labels, probs))

        def cell(key: str, rows: list[dict] = scores) -> str:
            values = [row[key] for row in rows]
            return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"

        seconds = time.perf_counter() - start
        print(
            f"| {name} | {len(train)} | {cell('auc')} | {cell('accuracy')} | {cell('f1')} | "
            f"{seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
