"""Tokenizer throughput: training steps/s and encode/decode ROIs/s, as a Markdown table.

CPU rows: the ``tiny`` preset at 32³ and 64³ (and ``brats128`` at 32³ with
``--brats128-cpu``). CUDA rows (when a GPU is present): ``brats128`` at 128³ with bf16
autocast, with and without gradient checkpointing, plus peak GPU memory. A training step is
the full stage-1 step (VQGAN forward, all losses including GAN and adaptive weight,
discriminator loss, both backward passes and both Adam updates).

    OMP_NUM_THREADS=1 python benchmarks/bench_tokenizer.py
"""

from __future__ import annotations

import argparse
import time

import torch

from tumoraug.config import TokenizerConfig
from tumoraug.device import autocast
from tumoraug.models.vqgan import VQGAN3D
from tumoraug.training.loop import StepContext
from tumoraug.training.tokenizer import TokenizerRecipe, TokenizerTask


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, repeats: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` (after one warm-up call)."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def bench(
    preset: str, size: int, batch: int, device: torch.device, repeats: int, checkpointing: bool
) -> dict[str, str]:
    config = TokenizerConfig.preset(preset, roi_size=size)
    torch.manual_seed(0)
    model = VQGAN3D(config).to(device)
    model.set_gradient_checkpointing(checkpointing)
    task = TokenizerTask(model, TokenizerRecipe.for_preset(preset).replace(disc_start=0), lr=1e-4)
    modules = {k: m.to(device).train() for k, m in task.modules().items()}
    optimizers = task.configure_optimizers(modules)
    params = {n: [p for g in o.param_groups for p in g["params"]] for n, o in optimizers.items()}
    x = torch.rand(batch, config.in_channels, size, size, size, device=device) * 2 - 1
    seg = (x[:, :1] > 0.5).long()
    batch_data = (x, seg, torch.zeros(batch, dtype=torch.long, device=device))
    amp = device.type == "cuda"
    ctx = StepContext(0, 0, device, 0, 1, 0, modules, modules)

    def train_step() -> None:
        for o in optimizers.values():
            o.zero_grad(set_to_none=True)
        with autocast(device):
            losses = task.training_step(batch_data, ctx).losses
        for i, (name, loss) in enumerate(losses.items()):
            loss.float().backward(inputs=params[name], retain_graph=i < len(losses) - 1)
            optimizers[name].step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s = _timed(train_step, repeats, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    model.eval()
    with torch.no_grad(), autocast(device):
        tokens, _ = model.encode(x)
        encode_s = _timed(lambda: model.encode(x), repeats, device)
        decode_s = _timed(lambda: model.decode(tokens), repeats, device)
    return {
        "preset": preset,
        "ROI": f"{size}³",
        "device": device.type + (" bf16" if amp else ""),
        "grad ckpt": "yes" if checkpointing else "no",
        "batch": str(batch),
        "params": f"{sum(p.numel() for p in model.parameters()) / 1e6:.3f} M",
        "train steps/s": f"{1 / step_s:.2f}",
        "encode ROIs/s": f"{batch / encode_s:.1f}",
        "decode ROIs/s": f"{batch / decode_s:.1f}",
        "peak GPU mem": f"{peak:.1f} GiB" if peak is not None else "-",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-batch", type=int, default=4)
    parser.add_argument("--gpu-batch", type=int, default=2)
    parser.add_argument("--brats128-cpu", action="store_true", help="Add brats128 at 32³ on CPU.")
    parser.add_argument("--no-cpu", action="store_true", help="Only the CUDA rows.")
    args = parser.parse_args()
    cpu = torch.device("cpu")
    rows = []
    if not args.no_cpu:
        rows += [bench("tiny", s, args.cpu_batch, cpu, args.repeats, False) for s in (32, 64)]
        if args.brats128_cpu:
            rows.append(bench("brats128", 32, 1, cpu, args.repeats, False))
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        for checkpointing in (False, True):
            rows.append(bench("brats128", 128, args.gpu_batch, gpu, args.repeats, checkpointing))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(row.values()) + " |")


if __name__ == "__main__":
    main()
