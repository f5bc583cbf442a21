"""Sampling speed of `TumorGenerator.generate`: ROIs/s and network evaluations per ROI.

Weights are random (speed does not depend on them). Settings:

* 32³ and 64³ on CPU: the ``tiny`` tokenizer at that ROI size (8³ / 16³ tokens) and a small
  transformer (dim 96, depth 3, 4 heads);
* 128³ on CUDA when present: the ``brats128`` presets of both stages (16³ = 4096 tokens).

Network evaluations are counted with a forward hook on the transformer (rows evaluated per
ROI): ``steps``, or ``2 * steps`` with classifier-free guidance.

    OMP_NUM_THREADS=1 python benchmarks/bench_sampling.py            # CPU part
    python benchmarks/bench_sampling.py --sizes 128 --device cuda    # GPU part
"""

from __future__ import annotations

import argparse
import time

import torch

from tumoraug import TumorGenerator
from tumoraug.config import TokenizerConfig, TransformerConfig
from tumoraug.models.transformer import MaskedTransformer
from tumoraug.models.vqgan import VQGAN3D
from tumoraug.sampling import SamplingConfig


def build(size: int, device: str) -> TumorGenerator:
    """A random-weight generator for ``size``³ ROIs."""
    torch.manual_seed(0)
    if size == 128:
        tokenizer_config = TokenizerConfig.preset("brats128")
        transformer_config = TransformerConfig.preset("brats128")
    else:
        tokenizer_config = TokenizerConfig.preset("tiny", roi_size=size)
        transformer_config = TransformerConfig.preset("tiny", dim=96, depth=3, heads=4)
    transformer_config = transformer_config.replace(
        codebook_size=tokenizer_config.codebook_size, token_grid=tokenizer_config.token_grid
    )
    return TumorGenerator(
        VQGAN3D(tokenizer_config), MaskedTransformer(transformer_config), device=device
    )


def measure(generator: TumorGenerator, n: int, steps: int, guidance: float, batch: int) -> dict:
    rows: list[int] = []
    hook = generator.transformer.register_forward_hook(
        lambda module, args, out: rows.append(len(args[1]))
    )
    labels = ["HGG", "LGG"] * (n // 2) + ["HGG"] * (n % 2)
    try:
        warm_up = SamplingConfig(steps=2, guidance_scale=guidance)
        generator.generate(labels[:batch], seed=1, sampling=warm_up)
        rows.clear()
        if generator.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sampling = SamplingConfig(steps=steps, guidance_scale=guidance)
        generator.generate(labels, seed=0, sampling=sampling, batch_size=batch)
        if generator.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    finally:
        hook.remove()
    return {
        "rois_per_s": n / elapsed,
        "s_per_roi": elapsed / n,
        "evals_per_roi": sum(rows) / n,
        "forward_calls": len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="TumorGenerator sampling speed")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--n", type=int, default=None, help="ROIs per setting")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    device = "cuda" if cuda else "cpu"
    sizes = args.sizes or ([32, 64, 128] if cuda else [32, 64])
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"device: {name}; torch {torch.__version__}; batch size {args.batch_size}\n")
    print("| ROI | tokens | steps | guidance | ROIs/s | s/ROI | net evals/ROI | forward calls |")
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        if size == 128 and not cuda:
            continue
        generator = build(size, device)
        n = args.n or {32: 8, 64: 4, 128: 16}.get(size, 4)
        tokens = generator.transformer_config.num_tokens
        for steps in args.steps:
            for guidance in args.guidance:
                r = measure(generator, n, steps, guidance, args.batch_size)
                print(
                    f"| {size}³ | {tokens} | {steps} | {guidance:g} | {r['rois_per_s']:.2f} | "
                    f"{r['s_per_roi']:.3f} | {r['evals_per_roi']:.0f} | {r['forward_calls']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
