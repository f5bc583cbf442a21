"""Sampling speed of `TumorGenerator`: ROIs/s, seconds per phase, network evaluations per ROI.

Weights are random (speed does not depend on them). Settings:

* 32³ and 64³: the ``tiny`` tokenizer at that ROI size (8³ / 16³ tokens) and a small
  transformer (dim 96, depth 3, 4 heads);
* 128³ (by default on CUDA only; ``--sizes 128`` runs it on the CPU too): the presets of
  both stages named by ``--presets``, side by side in one run: ``brats128`` (16³ = 4096
  tokens, the default) and ``paper128`` (the paper's 8³ = 512 tokens). ``--preset-size N``
  builds them at N³ instead (a smoke run of these rows on any machine).

Each row times the two halves of `TumorGenerator.volumes` apart, in seconds per ROI:
``sampling`` (`generate_tokens`: the transformer passes and the token draws between them)
and ``decode`` (the tokenizer's decoder, one grid at a time). Network evaluations are
counted with a forward hook on the transformer (rows evaluated per ROI): ``steps``, or
``2 * steps`` with classifier-free guidance. A first table lists each model's parameters and
the GFLOPs of one transformer pass and of one decode per ROI, counted on the meta device
(shapes only, nothing computed).

    OMP_NUM_THREADS=1 python benchmarks/bench_sampling.py            # CPU part
    python benchmarks/bench_sampling.py --sizes 128 --device cuda --presets brats128,paper128
    python benchmarks/bench_sampling.py --sizes 128 --device cpu --presets brats128,paper128 \\
        --steps 12 --guidance 1.5 --n 1 --batch-size 1              # 128³ on the CPU
    OMP_NUM_THREADS=1 python benchmarks/bench_sampling.py --sizes 128 \\
        --presets brats128,paper128 --preset-size 32 --steps 2 --n 2 --batch-size 2  # smoke
    python benchmarks/bench_sampling.py --model src/tumoraug/pretrained/demo --steps 12 \\
        --guidance 1.0 1.5 --batch-size 8 [--cpu-bf16]   # a trained model folder (the demo)

``--compile`` adds a table of one guided transformer pass (``2 * batch`` rows) per model,
eager against ``torch.compile`` on the same inputs: milliseconds per pass, the one-off
compile time and the largest difference of the logits.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from tumoraug import TumorGenerator
from tumoraug.config import TokenizerConfig, TransformerConfig
from tumoraug.models.transformer import MaskedTransformer
from tumoraug.models.vqgan import VQGAN3D
from tumoraug.sampling import SamplingConfig, per_sample_seeds

Configs = tuple[TokenizerConfig, TransformerConfig]


def configs(size: int, preset: str | None, preset_size: int | None) -> Configs:
    """Both stages' configs: the ``tiny`` pair at ``size``³, or a preset pair (at 128³, or at
    ``preset_size``³ when given); the transformer takes the tokenizer's grid and codebook."""
    if preset is None:
        tokenizer = TokenizerConfig.preset("tiny", roi_size=size)
        transformer = TransformerConfig.preset("tiny", dim=96, depth=3, heads=4)
    else:
        tokenizer = TokenizerConfig.preset(preset, roi_size=preset_size or size)
        transformer = TransformerConfig.preset(preset)
    return tokenizer, transformer.replace(
        codebook_size=tokenizer.codebook_size, token_grid=tokenizer.token_grid
    )


def costs(config: Configs) -> dict[str, float]:
    """Parameters (millions) of both stages and GFLOPs of one transformer pass and of one
    decode for one ROI, from models on the meta device (shapes only: free even at 128³)."""
    tokenizer_config, transformer_config = config
    with torch.device("meta"):
        tokenizer = VQGAN3D(tokenizer_config).eval()
        transformer = MaskedTransformer(transformer_config).eval()
        tokens = torch.zeros(1, *tokenizer_config.token_grid, dtype=torch.long)
        with FlopCounterMode(display=False) as one_pass:
            transformer(tokens, torch.zeros(1, dtype=torch.long))
        with FlopCounterMode(display=False) as decode:
            tokenizer.decode(tokens, check_ids=False)
    return {
        "tokenizer_m": sum(p.numel() for p in tokenizer.parameters()) / 1e6,
        "transformer_m": sum(p.numel() for p in transformer.parameters()) / 1e6,
        "pass_gflop": one_pass.get_total_flops() / 1e9,
        "decode_gflop": decode.get_total_flops() / 1e9,
    }


def build(config: Configs | str, device: str, cpu_bf16: bool) -> TumorGenerator:
    """A random-weight generator of these configs, or the model folder ``config`` names."""
    if isinstance(config, str):
        return TumorGenerator.from_pretrained(config, device=device, cpu_bf16=cpu_bf16)
    torch.manual_seed(0)
    tokenizer_config, transformer_config = config
    return TumorGenerator(
        VQGAN3D(tokenizer_config),
        MaskedTransformer(transformer_config),
        device=device,
        cpu_bf16=cpu_bf16,
    )


def clock(device: torch.device) -> float:
    """Seconds on a monotonic clock, after the device's queued work has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def measure(generator: TumorGenerator, n: int, steps: int, guidance: float, batch: int) -> dict:
    """Sample and decode ``n`` ROIs of mixed grades as `TumorGenerator.volumes` does, timing
    the two phases apart, after a warm-up batch of one round."""
    rows: list[int] = []
    hook = generator.transformer.register_forward_hook(
        lambda module, args, out: rows.append(len(args[1]))
    )
    labels = [1, 0] * (n // 2) + [1] * (n % 2)
    seeds = per_sample_seeds(0, n)
    sampling = SamplingConfig(steps=steps, guidance_scale=guidance)
    seconds = {"sampling": 0.0, "decode": 0.0}
    try:
        warm_up = SamplingConfig(steps=1, guidance_scale=guidance)
        generator.decode(generator.generate_tokens(labels[:batch], seeds[:batch], warm_up))
        rows.clear()
        for lo in range(0, n, batch):
            part = slice(lo, lo + batch)
            start = clock(generator.device)
            tokens = generator.generate_tokens(labels[part], seeds[part], sampling)
            middle = clock(generator.device)
            generator.decode(tokens)
            seconds["sampling"] += middle - start
            seconds["decode"] += clock(generator.device) - middle
    finally:
        hook.remove()
    total = seconds["sampling"] + seconds["decode"]
    return {
        "rois_per_s": n / total,
        "s_per_roi": total / n,
        "sampling_s_per_roi": seconds["sampling"] / n,
        "decode_s_per_roi": seconds["decode"] / n,
        "evals_per_roi": sum(rows) / n,
        "forward_calls": len(rows),
    }


def compile_row(generator: TumorGenerator, batch: int, reps: int = 5) -> dict[str, float]:
    """One guided pass (``2 * batch`` rows) eager and under ``torch.compile``: mean ms per
    pass over ``reps`` after two warm-up passes, compile seconds and the max |difference|."""
    model, config = generator.transformer, generator.transformer_config
    tokens = torch.randint(0, config.codebook_size, (2 * batch, *config.token_grid))
    labels = torch.tensor([1, 0] * batch).to(generator.device)
    tokens = tokens.to(generator.device)

    def per_pass(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
        for _ in range(2):
            fn(tokens, labels)
        start = clock(generator.device)
        for _ in range(reps):
            fn(tokens, labels)
        return (clock(generator.device) - start) / reps * 1e3

    with torch.inference_mode():
        eager_ms, reference = per_pass(model), model(tokens, labels)
        start = clock(generator.device)
        compiled = torch.compile(model, dynamic=False)
        out = compiled(tokens, labels)
        compile_s = clock(generator.device) - start
        compiled_ms = per_pass(compiled)
    return {
        "eager_ms": eager_ms,
        "compiled_ms": compiled_ms,
        "compile_s": compile_s,
        "max_diff": (out.float() - reference.float()).abs().max().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="TumorGenerator sampling speed")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument(
        "--presets", default="brats128", help="comma-separated presets of the 128³ rows"
    )
    parser.add_argument(
        "--preset-size", type=int, default=None, help="build the presets at N³ (smoke run)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--n", type=int, default=None, help="ROIs per setting")
    parser.add_argument(
        "--model", action="append", default=[], help="a trained model folder; repeat it"
    )
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on the CPU")
    parser.add_argument(
        "--compile", action="store_true", help="also time one pass under torch.compile"
    )
    args = parser.parse_args()
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    for preset in presets:
        if preset not in TokenizerConfig.presets or preset not in TransformerConfig.presets:
            parser.error(f"--presets: {preset!r} is not a preset of both stages")
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    device = "cuda" if cuda else "cpu"
    sizes = args.sizes or ([] if args.model else [32, 64, 128] if cuda else [32, 64])
    models: list[tuple[str, Configs | str]] = []
    for size in sizes:
        if size == 128:
            models += [(p, configs(size, p, args.preset_size)) for p in presets]
        else:
            models.append(("tiny", configs(size, None, None)))
    models += [(path.rstrip("/").split("/")[-1], path) for path in args.model]
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    precision = "bf16 autocast" if args.cpu_bf16 and not cuda else "float32"
    print(f"device: {name}; torch {torch.__version__}; batch size {args.batch_size}; {precision}\n")
    print("| model | ROI | tokens | tokenizer params | transformer params "
          "| GFLOP per transformer pass | GFLOP per decode |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for label, config in models:
        if isinstance(config, str):
            opened = TumorGenerator.from_pretrained(config)
            config = (opened.tokenizer_config, opened.transformer_config)
        tokenizer, transformer = config
        c = costs(config)
        print(
            f"| {label} | {tokenizer.roi_size}³ | {transformer.num_tokens} "
            f"| {c['tokenizer_m']:.2f} M | {c['transformer_m']:.2f} M "
            f"| {c['pass_gflop']:.1f} | {c['decode_gflop']:.1f} |"
        )
    print("\n| model | ROI | tokens | steps | guidance | ROIs/s | s/ROI | sampling s/ROI "
          "| decode s/ROI | net evals/ROI | forward calls |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    compiled: list[tuple[str, int, int, dict[str, float]]] = []
    for label, config in models:
        generator = build(config, device, args.cpu_bf16)
        size = generator.tokenizer_config.roi_size
        tokens = generator.transformer_config.num_tokens
        n = args.n or {32: 8, 64: 4}.get(size, 16 if cuda else 1)
        for steps in args.steps:
            for guidance in args.guidance:
                r = measure(generator, n, steps, guidance, args.batch_size)
                print(
                    f"| {label} | {size}³ | {tokens} | {steps} | {guidance:g} "
                    f"| {r['rois_per_s']:.3f} | {r['s_per_roi']:.3f} "
                    f"| {r['sampling_s_per_roi']:.3f} | {r['decode_s_per_roi']:.3f} "
                    f"| {r['evals_per_roi']:.0f} | {r['forward_calls']} |",
                    flush=True,
                )
        if args.compile:
            compiled.append((label, size, tokens, compile_row(generator, args.batch_size)))
        del generator  # freed before the next model is built
    if compiled:
        print("\n| model | ROI | tokens | rows per pass | eager ms/pass | compiled ms/pass "
              "| speed-up | compile s | max abs diff |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for label, size, tokens, r in compiled:
            print(
                f"| {label} | {size}³ | {tokens} | {2 * args.batch_size} | {r['eager_ms']:.1f} "
                f"| {r['compiled_ms']:.1f} | {r['eager_ms'] / r['compiled_ms']:.2f}× "
                f"| {r['compile_s']:.0f} | {r['max_diff']:.1e} |"
            )


if __name__ == "__main__":
    main()
