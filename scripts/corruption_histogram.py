"""Histogram of the per-sample corrupted fraction that each stage-2 masking arm trains on.

Replays the corruption of the first ``--steps`` training steps of every ``topk_ratio`` arm
exactly as `tumoraug.training.transformer.TransformerTask` draws it (the same per-step RNG of
`tumoraug.training.loop.StepContext`, seed 0, batch 16) on a token corpus, and counts the share
of corrupted tokens ([MASK] or random code) per sample. Hybrid masking spends MaskGIT's budget,
so the arms must give the same histogram: the ablation then compares which tokens are
corrupted, not how many.

    python scripts/corruption_histogram.py /tmp/exp10/classifier_topk0/corpus.safetensors \\
        --ratios 0,0.25,0.5 --out docs/images/corrupted_fraction.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from tumoraug.evaluation import save_line_plot
from tumoraug.training import TransformerRecipe
from tumoraug.training.corpus import TokenCorpus
from tumoraug.training.loop import StepContext


def fractions(
    corpus: TokenCorpus, recipe: TransformerRecipe, steps: int, batch: int, seed: int
) -> np.ndarray:
    """Corrupted share of every sample of the first ``steps`` steps (batches cycle the corpus)."""
    out = []
    for step in range(steps):
        index = [(step * batch + i) % len(corpus) for i in range(batch)]
        rng = StepContext(step, 0, torch.device("cpu"), 0, 1, seed, {}, {}).rng(0)
        _, masked, replaced = recipe.corrupt(
            corpus.tokens[index], corpus.importance[index], rng,
            codebook_size=corpus.codebook_size, mask_id=corpus.codebook_size,
        )  # fmt: skip
        out.append((masked | replaced).flatten(1).float().mean(1).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="Token corpus (corpus.safetensors of a run).")
    parser.add_argument("--ratios", default="0,0.25,0.5", help="topk_ratio of each arm.")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bins", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="PNG of the histograms.")
    args = parser.parse_args()
    corpus = TokenCorpus.load(args.corpus)
    edges = np.linspace(0, 1, args.bins + 1)
    arms = {}
    for ratio in (float(r) for r in args.ratios.split(",")):
        recipe = TransformerRecipe(topk_ratio=ratio)
        values = fractions(corpus, recipe, args.steps, args.batch_size, args.seed)
        arms[f"topk_ratio {ratio:g}"] = (values, np.histogram(values, edges)[0])
    names = list(arms)
    print("bin          " + "  ".join(f"{n:>15}" for n in names))
    for b in range(args.bins):
        counts = "  ".join(f"{arms[n][1][b]:>15d}" for n in names)
        print(f"[{edges[b]:.2f}, {edges[b + 1]:.2f})  {counts}")
    print("mean         " + "  ".join(f"{arms[n][0].mean():>15.6f}" for n in names))
    first = arms[names[0]][0]
    same = all(np.array_equal(first, arms[n][0]) for n in names[1:])
    print(f"per-sample fractions identical across arms: {same}")
    if args.out is not None:
        centres = ((edges[:-1] + edges[1:]) / 2).tolist()
        curves = {n: (centres, (h / h.sum()).tolist()) for n, (_, h) in arms.items()}
        save_line_plot(curves, args.out, x_label="corrupted fraction", y_label="share of samples")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
