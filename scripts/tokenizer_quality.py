"""Training of a tokenizer preset on phantom ROIs, then held-out quality numbers.

Writes phantoms, caches 32³ ROIs, holds out a fixed set of ROIs, trains with
`train_tokenizer` and reports on the held-out ROIs: reconstruction PSNR, the share of the
codebook their tokens use, the mean importance of tokens inside vs outside the tumor, and
the grade accuracy of the importance head.

    OMP_NUM_THREADS=1 python scripts/tokenizer_quality.py --work /tmp/tokq --steps 1500
    OMP_NUM_THREADS=1 python scripts/tokenizer_quality.py --work /tmp/tokq --preset small32 \
        --steps 4500 --batch-size 4 --lr-schedule cosine
    OMP_NUM_THREADS=1 python scripts/tokenizer_quality.py --work /tmp/tokq --preset small32 \
        --steps 4000 --batch-size 4 --set codebook_size=1024 --set embed_dim=16

Results go to ``<run>/quality.json`` and are printed as a table; the first four held-out
ROIs and their reconstructions go to ``<run>/held_out_reconstructions.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset, Subset

from tumoraug.config import TokenizerConfig
from tumoraug.data import ROIDataset, preprocess, subject_tensors, write_phantom_dataset
from tumoraug.models.vqgan import VQGAN3D
from tumoraug.training import TokenizerRecipe, TrainConfig, train_tokenizer
from tumoraug.viz import save_montage


def held_out_quality(model: VQGAN3D, data: Subset) -> dict[str, float]:
    """PSNR, codebook share and importance inside/outside the tumor over ``data``."""
    model.eval()
    factor = model.config.downsample_factor
    psnrs, inside, outside, ratios, used, hits = [], [], [], [], set(), []
    with torch.no_grad():
        for i in range(len(data)):
            image, seg, label = subject_tensors(data[i])
            tokens, importance = model.encode(image)
            logits = model(image).grade_logits
            if logits is not None:
                hits.append(int(logits.argmax(-1).item() == int(label[0])))
            rec = model.decode(tokens)
            mse = F.mse_loss(rec, image).item()
            psnrs.append(10 * math.log10(4.0 / max(mse, 1e-12)))  # data range [-1, 1]
            used.update(tokens.flatten().tolist())
            fraction = F.avg_pool3d((seg > 0).float(), factor).squeeze(1)
            s_in, s_out = importance[fraction > 0], importance[fraction == 0]
            if s_in.numel() and s_out.numel():
                inside.append(s_in.mean().item())
                outside.append(s_out.mean().item())
                ratios.append(inside[-1] / outside[-1])
    return {
        "held_out_rois": len(data),
        "psnr_db": sum(psnrs) / len(psnrs),
        "codebook_fraction_used": len(used) / model.config.codebook_size,
        "importance_inside_tumor": sum(inside) / len(inside),
        "importance_outside_tumor": sum(outside) / len(outside),
        "importance_ratio_mean": sum(ratios) / len(ratios),
        "rois_with_ratio_above_1": sum(r > 1 for r in ratios) / len(ratios),
        **({"grade_accuracy": sum(hits) / len(hits)} if hits else {}),
    }


def reconstruction_montage(model: VQGAN3D, data: Subset, path: Path, n: int = 4) -> Path:
    """PNG of the first ``n`` ROIs of ``data``, each real then reconstructed (centre slices)."""
    model.eval()
    rows, names = [], []
    with torch.no_grad():
        for i in range(min(n, len(data))):
            image, _, label = subject_tensors(data[i])
            rows += [image[0], model.decode(model.encode(image)[0])[0]]
            grade = "HGG" if int(label[0]) else "LGG"
            names += [f"{grade} real", f"{grade} rec."]
    return save_montage(rows, path, row_labels=names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="Working folder.")
    parser.add_argument("--per-class", type=int, default=60, help="Phantoms per grade.")
    parser.add_argument("--held-out", type=int, default=20, help="ROIs kept for evaluation.")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--lr-schedule", default="constant", help="constant or cosine.")
    parser.add_argument("--preset", default="tiny", help="TokenizerConfig preset (roi 32).")
    parser.add_argument("--roi-size", type=int, default=32, help="ROI side in voxels.")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="Override one TokenizerConfig field of the preset (value as JSON); repeatable.",
    )  # fmt: skip
    parser.add_argument(
        "--extra-phantoms", type=int, default=0, metavar="N",
        help="Add N more training phantoms per grade (phantom seed --extra-seed); the "
        "held-out ROIs stay the same.",
    )  # fmt: skip
    parser.add_argument("--extra-seed", type=int, default=3, help="Phantom seed of the extra.")
    parser.add_argument(
        "--eval-cache", type=Path, help="Also report on this ROI cache (e.g. other phantoms)."
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}

    size = args.roi_size
    phantoms, cache = args.work / "phantoms", args.work / f"cache{size}"
    if not (phantoms / "HGG").is_dir():
        write_phantom_dataset(phantoms, args.per_class, seed=args.seed, shape=(64, 64, 64))
    preprocess(phantoms, cache, size=size)
    dataset = ROIDataset(cache)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    test = Subset(dataset, order[: args.held_out].tolist())
    train: Dataset = Subset(dataset, order[args.held_out :].tolist())
    extra = ""
    if args.extra_phantoms:
        name = f"phantoms_extra_s{args.extra_seed}_n{args.extra_phantoms}"
        if not (args.work / name / "HGG").is_dir():
            write_phantom_dataset(
                args.work / name, args.extra_phantoms, seed=args.extra_seed, shape=(64, 64, 64)
            )
        preprocess(args.work / name, args.work / f"cache{size}_{name}", size=size)
        train = ConcatDataset([train, ROIDataset(args.work / f"cache{size}_{name}")])
        extra = f"_extra{args.extra_phantoms}"

    config = TokenizerConfig.preset(args.preset, **{"roi_size": size, **overrides})
    recipe = TokenizerRecipe.for_preset(args.preset)
    schedule = "" if args.lr_schedule == "constant" else f"_{args.lr_schedule}"
    variant = "".join(f"_{k}{v}" for k, v in overrides.items())
    roi = "" if size == 32 else f"_roi{size}"
    run_dir = args.work / f"run_{args.preset}{roi}_s{args.steps}{schedule}{variant}{extra}"
    run = TrainConfig.preset(
        "tokenizer", steps=args.steps, batch_size=args.batch_size, lr=args.lr, device="cpu",
        lr_schedule=args.lr_schedule, seed=args.seed, checkpoint_every=250, image_every=250,
        log_every=25,
    )  # fmt: skip
    start = time.perf_counter()
    train_tokenizer(config, train, run_dir, run, recipe)
    minutes = (time.perf_counter() - start) / 60
    results = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr_schedule": args.lr_schedule,
        "roi_size": size,
        **overrides,
        "train_rois": len(train),
        "train_minutes": round(minutes, 2),
        **held_out_quality(model := VQGAN3D.from_pretrained(run_dir / "tokenizer"), test),
    }
    if args.eval_cache:
        other = held_out_quality(model, ROIDataset(args.eval_cache))
        results.update({f"{args.eval_cache.name}/{k}": v for k, v in other.items()})
    (run_dir / "quality.json").write_text(json.dumps(results, indent=2) + "\n")
    reconstruction_montage(model, test, run_dir / "held_out_reconstructions.png")
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(
            f"{key:<{width}}  {value:.4g}"
            if isinstance(value, float)
            else f"{key:<{width}}  {value}"
        )


if __name__ == "__main__":
    main()
