"""End-to-end check of stage 2 on CPU: do generated HGG and LGG ROIs differ like the data do?

Pipeline at 32³ on phantoms: write HGG/LGG phantoms, build the ROI cache, train a tiny
tokenizer (or re-use one with ``--tokenizer``), train a tiny masked transformer, generate
``--n`` ROIs per grade and compare per-grade statistics of real, reconstructed and generated
ROIs. The primary statistic is the *tumor-like hyperintense volume*: the fraction of voxels
brighter than 0.5 (on the [-1, 1] scale) in the central 16³ of the tumor-centred ROI; on
the phantoms it is larger for HGG (bigger tumors, wider edema). Each stage is skipped when
its output exists (training resumes from its last checkpoint).

    OMP_NUM_THREADS=1 python scripts/generator_e2e.py --work /tmp/gen_e2e

Prints a table and writes ``<work>/results.json`` and ``<work>/generated.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from scipy.stats import mannwhitneyu

from tumoraug import TumorGenerator
from tumoraug.config import TokenizerConfig, TransformerConfig
from tumoraug.data import ROIDataset, preprocess, subject_tensors, write_phantom_dataset
from tumoraug.models.vqgan import VQGAN3D
from tumoraug.sampling import SamplingConfig
from tumoraug.training import TrainConfig, TransformerRecipe, train_tokenizer, train_transformer
from tumoraug.viz import save_montage


def statistics(volumes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-ROI statistics of (N, C, S, S, S) volumes (first channel, central half-cube)."""
    s = volumes.shape[-1]
    centre = volumes[:, 0, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4]
    return {
        "hyper_0.5": (centre > 0.5).float().mean((1, 2, 3)),
        "hyper_0.7": (centre > 0.7).float().mean((1, 2, 3)),
        "centre_mean": centre.mean((1, 2, 3)),
    }


def compare(name: str, volumes: torch.Tensor, labels: torch.Tensor) -> dict[str, dict]:
    """Per-grade means of every statistic, HGG - LGG and a one-sided Mann-Whitney p-value."""
    rows = {}
    for key, values in statistics(volumes).items():
        hgg, lgg = values[labels == 1], values[labels == 0]
        p = mannwhitneyu(hgg.numpy(), lgg.numpy(), alternative="greater").pvalue
        rows[key] = {
            "HGG": float(hgg.mean()),
            "LGG": float(lgg.mean()),
            "diff": float(hgg.mean() - lgg.mean()),
            "p_HGG_greater": float(p),
        }
        print(
            f"{name:24s} {key:12s} HGG {rows[key]['HGG']:+.4f}  LGG {rows[key]['LGG']:+.4f}  "
            f"HGG-LGG {rows[key]['diff']:+.4f}  p(HGG>LGG) {p:.2g}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gen_e2e"))
    parser.add_argument("--per-class", type=int, default=48)
    parser.add_argument("--roi", type=int, default=32)
    parser.add_argument("--tokenizer", type=Path, default=None, help="re-use a trained one")
    parser.add_argument("--tokenizer-steps", type=int, default=250)
    parser.add_argument("--generator-steps", type=int, default=500)
    parser.add_argument("--masking", default="hybrid", choices=["hybrid", "random"])
    parser.add_argument("--n", type=int, default=32, help="generated ROIs per grade")
    parser.add_argument("--steps", type=int, default=12, help="decoding rounds")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 3.0])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work: Path = args.work
    times = {}

    t = time.perf_counter()
    raw, cache = work / "raw", work / "cache"
    if not raw.is_dir():
        write_phantom_dataset(raw, per_class=args.per_class, seed=args.seed, shape=(64, 64, 48))
    preprocess(raw, cache, size=args.roi)
    data = ROIDataset(cache)
    real = torch.cat([subject_tensors(data[i])[0] for i in range(len(data))])
    real_labels = torch.tensor(data.labels)
    times["data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None:
        train = TrainConfig.preset(
            "tokenizer", steps=args.tokenizer_steps, batch_size=4, lr=5e-4, device="cpu",
            seed=args.seed, image_every=0, checkpoint_every=100,
        )  # fmt: skip
        config = TokenizerConfig.preset("tiny", roi_size=args.roi)
        train_tokenizer(config, data, work / "stage1", train, progress=False)
        tokenizer_dir = work / "stage1" / "tokenizer"
    times["tokenizer_s"] = time.perf_counter() - t

    t = time.perf_counter()
    model_dir = work / f"model_{args.masking}"
    config = TransformerConfig.preset("tiny", dim=96, depth=3, heads=4, dropout=0.1)
    train = TrainConfig(
        steps=args.generator_steps, batch_size=16, lr=1e-3, warmup_steps=50, device="cpu",
        seed=args.seed, checkpoint_every=100,
    )  # fmt: skip
    recipe = TransformerRecipe(masking=args.masking)
    train_transformer(config, (tokenizer_dir, data), model_dir, train, recipe, progress=False)
    times["generator_s"] = time.perf_counter() - t
    metrics = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]

    generator = TumorGenerator.from_pretrained(model_dir, device="cpu")
    tokenizer = VQGAN3D.from_pretrained(tokenizer_dir)
    with torch.no_grad():
        recon = torch.cat([tokenizer.decode(tokenizer.encode(x)[0]) for x in real.split(16)])
    results = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "final_metrics": metrics[-1],
        "real": compare("real", real, real_labels),
        "reconstructed": compare("tokenizer reconstruction", recon, real_labels),
        "generated": {},
    }
    labels = torch.tensor([1] * args.n + [0] * args.n)
    for guidance in args.guidance:
        t = time.perf_counter()
        rois = generator.generate(
            labels.tolist(), seed=args.seed, batch_size=16, sampling=SamplingConfig(
                steps=args.steps, guidance_scale=guidance, temperature=args.temperature
            ),
        )  # fmt: skip
        elapsed = time.perf_counter() - t
        results["generated"][str(guidance)] = {
            "stats": compare(f"generated (guidance {guidance})", rois, labels),
            "rois_per_s": 2 * args.n / elapsed,
        }
        if guidance == args.guidance[-1]:
            picks = [*range(4), *range(args.n, args.n + 4)]
            save_montage(rois[picks], work / "generated.png", row_labels=["HGG"] * 4 + ["LGG"] * 4)
    results["times_s"] = times
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"times_s": times, "final_metrics": metrics[-1]}, indent=2))


if __name__ == "__main__":
    main()
