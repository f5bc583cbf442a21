"""Every generator side by side: network evaluations, seconds and memory per ROI, quality.

One run, the same ROI size and batch for every row:

* ``tumoraug``: our generator (MaskGIT decoding, 12 rounds, guidance 1.5, and without
  guidance); at 32³ the embedded demo model (its weights are trained; speed does not depend
  on them), at other sizes the ``paper128`` presets with random weights;
* ``ddpm``: the 3D-Med-DDPM-style baseline (`tumoraug.baselines.ddpm`), with DDPM-1000 and
  DDIM at 100 and 50 steps, guidance 1.5;
* ``latent-diffusion``: the Med-Diffusion-C-style baseline on the demo tokenizer's
  continuous latents, DDIM-50, guidance 1.5;
* ``alpha-wgan``: the 3D-αWGAN baseline, one generator pass.

Without ``--model KIND=FOLDER`` a baseline has random weights at its ``small32`` preset
(speed and memory do not depend on the weights). Columns: parameters of the whole model
folder and of the network evaluated per step; network evaluations per ROI (the sampler's
count: steps, doubled with guidance, which a forward hook confirms on the first ROI);
seconds per ROI and ROIs/s over ``--n`` ROIs after one warm-up ROI; peak memory (on the
CPU the peak RSS of the row's own process above its RSS after loading, on CUDA
``torch.cuda.max_memory_allocated``). DDPM-1000 is timed over ``--ddpm-probe`` of its
steps and scaled to 1000 (its cost is linear in the steps: every step is one UNet pass and
a scheduler update); ``--full`` times it whole. Each row runs in its own process.

With ``--data REAL_CACHE`` and trained ``--model`` folders, a second table gives MMD ×10⁴
and MS-SSIM per grade (`tumoraug.evaluation.evaluate_samples`, ``--quality-n`` ROIs per
grade, the default settings of each generator).

    OMP_NUM_THREADS=1 python benchmarks/bench_generators.py                    # 32³, CPU
    python benchmarks/bench_generators.py --size 128 --device cuda --batch-size 8   # GPU, bf16
    python benchmarks/bench_generators.py --model ddpm=/tmp/exp12/ddpm \\
        --model alpha-wgan=/tmp/exp12/alpha_wgan --data /tmp/exp12/real_cache32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import torch

ROWS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "tumoraug": ("tumoraug, 12 rounds", "tumoraug", {}),
    "tumoraug-g1": ("tumoraug, 12 rounds, guidance 1", "tumoraug", {"guidance_scale": 1.0}),
    "ddpm-1000": ("DDPM, DDPM-1000", "ddpm", {"scheduler": "ddpm", "steps": 1000}),
    "ddim-100": ("DDPM, DDIM-100", "ddpm", {"scheduler": "ddim", "steps": 100}),
    "ddim-50": ("DDPM, DDIM-50", "ddpm", {"scheduler": "ddim", "steps": 50}),
    "ldm": ("latent diffusion, DDIM-50", "latent-diffusion", {"scheduler": "ddim", "steps": 50}),
    "alpha-wgan": ("3D-αWGAN", "alpha-wgan", {}),
}
"""Row key -> (shown name, generator kind, overrides of its default sampling settings)."""


def build(kind: str, folder: str | None, size: int, device: str) -> Any:
    """The generator of ``kind``: opened from ``folder``, else random weights (demo for ours)."""
    from tumoraug import TumorGenerator, open_generator
    from tumoraug.pretrained import demo_model_path

    if folder is not None:
        return open_generator(folder, device=device)
    if kind == "tumoraug":
        if size == 32:
            return TumorGenerator.from_pretrained(demo_model_path(), device=device)
        from tumoraug.config import TokenizerConfig, TransformerConfig
        from tumoraug.models.transformer import MaskedTransformer
        from tumoraug.models.vqgan import VQGAN3D

        tokenizer = VQGAN3D(TokenizerConfig.preset("paper128").replace(roi_size=size))
        grid = tuple(tokenizer.config.token_grid)
        transformer = MaskedTransformer(
            TransformerConfig.preset("paper128").replace(
                token_grid=grid, codebook_size=tokenizer.config.codebook_size
            )
        )
        return TumorGenerator(tokenizer, transformer, device=device)
    if kind == "ddpm":
        from tumoraug.baselines.ddpm import DDPMGenerator
        from tumoraug.models.diffusion import DiffusionConfig, DiffusionUNet3D

        config = DiffusionConfig.preset("small32").replace(roi_size=size)
        return DDPMGenerator(DiffusionUNet3D(config), device=device)
    if kind == "latent-diffusion":
        from tumoraug.baselines.latent_diffusion import LatentDiffusionGenerator
        from tumoraug.models.diffusion import DiffusionConfig, DiffusionUNet3D

        autoencoder = build("tumoraug", None, size, device).tokenizer
        tokens = autoencoder.config
        config = DiffusionConfig.preset("latent_small32").replace(
            roi_size=tokens.token_grid[0], in_channels=tokens.embed_dim
        )
        return LatentDiffusionGenerator(autoencoder, DiffusionUNet3D(config), device=device)
    if kind == "alpha-wgan":
        from tumoraug.baselines.alpha_wgan import AlphaWGANGenerator
        from tumoraug.models.alpha_wgan import AlphaWGAN, AlphaWGANConfig

        config = AlphaWGANConfig.preset("small32").replace(roi_size=size)
        return AlphaWGANGenerator(AlphaWGAN(config), device=device)
    raise SystemExit(f"unknown generator kind {kind!r}")


STEP_NETWORK = {
    "tumor_generator": "transformer",
    "ddpm_generator": "unet",
    "latent_diffusion_generator": "unet",
    "alpha_wgan_generator": "model",
}
"""Model type -> the component whose forward passes are the network evaluations."""


def rss_mib() -> float:
    """Current resident set size of this process in MiB (from /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time and measure one row in this process."""
    torch.manual_seed(0)
    _, kind, overrides = ROWS[row]
    folder = dict(args.model).get(kind)
    generator = build(kind, folder, args.size, args.device).load()
    settings = generator.check_sampling(overrides)
    models = generator.models
    stepper = models[STEP_NETWORK[generator.model_type]]
    if generator.model_type == "alpha_wgan_generator":
        stepper = stepper.generator
    full_params = sum(p.numel() for m in models.values() for p in m.parameters())
    step_params = sum(p.numel() for p in stepper.parameters())
    evaluations = generator.network_evaluations(settings)
    probe = None
    if row == "ddpm-1000" and not args.full:
        probe = args.ddpm_probe
        settings = settings.replace(steps=probe)
    rows_seen = []
    hook = stepper.register_forward_hook(lambda m, a, o: rows_seen.append(len(a[0])))
    labels = [j % 2 for j in range(args.n)]
    stepped = hasattr(settings, "steps")
    warm = settings.replace(steps=min(settings.steps, 2)) if stepped else settings
    generator.volumes(labels[:1], [10**6], sampling=warm, batch_size=1)  # warm-up
    hook.remove()
    counted = sum(rows_seen) * (settings.steps / warm.steps if stepped else 1)
    cuda = generator.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = rss_mib()
    start = time.perf_counter()
    generator.volumes(labels, list(range(args.n)), sampling=settings, batch_size=args.batch_size)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.n
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    if probe is not None:
        seconds *= 1000 / probe
        counted = counted * 1000 // probe
    return {
        "row": row,
        "params_m": full_params / 1e6,
        "step_params_m": step_params / 1e6,
        "evaluations": evaluations,
        "counted": int(counted),
        "seconds": seconds,
        "peak_mib": max(peak, 0.0),
        "extrapolated": probe is not None,
        "settings": settings.to_dict(),
    }


def child(row: str, argv: list[str]) -> dict[str, Any]:
    """Run ``measure(row)`` in a fresh process (peaks do not mix) and return its record."""
    command = [sys.executable, __file__, *argv, "--child", row]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"row {row!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def quality(args: argparse.Namespace) -> str:
    """MMD ×10⁴ and MS-SSIM per grade of the trained models (and ours) as Markdown."""
    from tumoraug.data import ROIDataset
    from tumoraug.evaluation import evaluate_samples
    from tumoraug.generators import open_generator
    from tumoraug.pretrained import demo_model_path

    models = {"tumoraug": open_generator(demo_model_path(), device=args.device)}
    models.update({kind: open_generator(f, device=args.device) for kind, f in args.model})
    report = evaluate_samples(
        ROIDataset(args.data), models, n_per_class=args.quality_n, seed=args.quality_seed
    )
    return report.to_markdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="ROI edge (32: the demo's).")
    parser.add_argument("--batch-size", type=int, default=1, help="ROIs per volumes() call.")
    parser.add_argument("--n", type=int, default=2, help="Timed ROIs per row.")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    parser.add_argument("--rows", default=",".join(ROWS), help="Comma-separated row keys.")
    parser.add_argument(
        "--model", action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
        metavar="KIND=FOLDER", help="A trained model for a kind (repeat).",
    )  # fmt: skip
    parser.add_argument("--ddpm-probe", type=int, default=20, help="DDPM steps timed.")
    parser.add_argument("--full", action="store_true", help="Time DDPM-1000 whole.")
    parser.add_argument("--data", help="Real ROI cache: also the quality table.")
    parser.add_argument("--quality-n", type=int, default=16, help="ROIs per grade (quality).")
    parser.add_argument("--quality-seed", type=int, default=0, help="Seed (quality).")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return
    argv = [a for a in sys.argv[1:]]
    records = [child(row, argv) for row in args.rows.split(",")]
    ours = next(r for r in records if r["row"] == "tumoraug")
    device = (
        "cuda (bf16 autocast)"
        if torch.cuda.is_available() and args.device != "cpu"
        else (f"cpu, {torch.get_num_threads()} thread(s)")
    )
    print(f"ROI {args.size}³, batch {args.batch_size}, {args.n} timed ROIs per row, {device}\n")
    print(
        "| generator, sampler | params (M), of which per step | net evals/ROI (hook) | "
        "s/ROI | ROIs/s | peak memory (MiB) | ours faster by | fewer evals by |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        mark = " (scaled from a probe)" if r["extrapolated"] else ""
        print(
            f"| {ROWS[r['row']][0]} | {r['params_m']:.2f}, {r['step_params_m']:.2f} | "
            f"{r['evaluations']} ({r['counted']}) | {r['seconds']:.3f}{mark} | "
            f"{1 / r['seconds']:.3g} | {r['peak_mib']:.0f} | "
            f"{r['seconds'] / ours['seconds']:.1f}× | "
            f"{r['evaluations'] / ours['evaluations']:.1f}× |"
        )
    if args.data:
        print()
        print(quality(args), end="")


if __name__ == "__main__":
    main()
