"""Reference rows for the `topk_ratio` ablation: what MMD / MS-SSIM do *real* ROIs get?

`tumoraug evaluate-samples` compares generated ROIs with a real set. To read its numbers we
need their floor and ceiling on the same data and the same computation, so this script runs
`tumoraug.evaluation.evaluate_samples` with two stand-ins for a generator:

* ``real (train phantoms)``: ROIs drawn (seeded, without replacement) from the ROI cache
  the generators were trained on: a perfect generator of that distribution would score
  like this (different phantoms from the same procedure as the compared real set);
* ``tokenizer reconstructions``: the same ROIs encoded and decoded by the tokenizer: the best
  any stage-2 model on this tokenizer can do, since it only chooses tokens.

    OMP_NUM_THREADS=1 python scripts/sample_references.py --data /tmp/exp/real_cache32 \\
        --train-data /tmp/tokq/cache32 --tokenizer /tmp/tokq/run_tw0.1_s900/tokenizer \\
        --n 32 --out /tmp/exp/eval_references
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from tumoraug.data import ROIDataset, subject_tensors
from tumoraug.evaluation import evaluate_samples
from tumoraug.labels import to_labels
from tumoraug.models.vqgan import VQGAN3D


class Pool:
    """Stands in for a generator: ``generate`` returns stored ROIs of the asked grade."""

    def __init__(self, volumes: torch.Tensor, labels: torch.Tensor) -> None:
        self.volumes, self.labels = volumes, labels
        self.roi_size = volumes.shape[-1]

    def generate(self, labels: Sequence[int | str], seed: int = 0, **_: object) -> torch.Tensor:
        wanted = to_labels(list(labels))
        if len(set(wanted)) != 1:
            raise ValueError("Pool.generate serves one grade per call")
        indices = torch.nonzero(self.labels == wanted[0]).flatten()
        order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))
        return self.volumes[indices[order[: len(wanted)]]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Real ROI cache to compare to.")
    parser.add_argument("--train-data", type=Path, required=True, help="Generators' ROI cache.")
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--n", type=int, default=32, help="ROIs per grade (as --n of the CLI).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    train = ROIDataset(args.train_data)
    items = [subject_tensors(train[i]) for i in range(len(train))]
    volumes = torch.cat([image for image, _, _ in items])
    labels = torch.cat([label for _, _, label in items])
    tokenizer = VQGAN3D.from_pretrained(args.tokenizer).eval()
    with torch.no_grad():
        recon = torch.cat([tokenizer.decode(tokenizer.encode(x)[0]) for x in volumes.split(16)])
    models = {
        "real (train phantoms)": Pool(volumes, labels),
        "tokenizer reconstructions": Pool(recon, labels),
    }
    report = evaluate_samples(ROIDataset(args.data), models, n_per_class=args.n, seed=args.seed)
    report.save(args.out)
    print(report.to_markdown())


if __name__ == "__main__":
    main()
