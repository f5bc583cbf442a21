"""Peak memory of one training step of each stage, and the batch that fits a GPU, as Markdown.

A step is what the engine (`tumoraug.training.loop.fit`) does once per batch: forward under
autocast, every loss back-propagated into its own optimizer's parameters, gradient clipping
where the stage's `TrainConfig` preset clips, and every optimizer step. Stage 1 is
`TokenizerTask` (VQGAN3D + patch discriminator, GAN term and adaptive weight on, as after
``disc_start``); stage 2 is `TransformerTask` (hybrid masking, class dropout) on random token
grids of the grid the ROI size gives. Weights and inputs are random: memory does not depend
on them.

Every row runs in its own fresh process, so peaks never mix. The process imports torch,
builds the modules and optimizers and fills the optimizer state once (a zero-gradient step,
so that the measured step is a steady-state one); its RSS then is ``idle`` (torch, the
weights and Adam's moments). It runs ``--repeats`` steps and reports ``step`` = peak RSS
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``) minus ``idle``: gradients,
activations and workspaces. glibc's mmap threshold is fixed in the child, so that freed
tensors leave RSS at once and RSS follows the live tensors. On CUDA ``idle`` and ``peak``
are ``torch.cuda.memory_allocated`` / ``max_memory_allocated`` instead.

Precision ``bf16`` is the engine's bf16 autocast (on the CPU: ``TrainConfig.cpu_bf16``,
`tumoraug.device.autocast(device, cpu_bf16=True)`); ``ckpt`` calls
``set_gradient_checkpointing(True)`` on the modules that have it, as ``fit`` does (the
stage-2 transformer has none: its rows run without). A larger batch is skipped when
``idle + step`` of the smallest batch, scaled by the batch ratio, would pass ``--max-gib``
(a RAM guard on the CPU).

The second table is the batch per GPU that fits each card: from the batch-1/batch-2 rows,
``step(b) = fixed + b * slope``; a GPU needs ``context + 12 bytes * params + fixed + b *
slope`` (weights and Adam moments, then the step), within ``(1 - margin) * card`` (see
``docs/memory.md``).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_memory.py --json rows.json
    python benchmarks/bench_memory.py --load rows.json more.json     # tables of saved rows
    python benchmarks/bench_memory.py --sizes 32 --stages transformer --batch-sizes 1  # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tumoraug.config import TokenizerConfig, TransformerConfig
from tumoraug.device import autocast, resolve_device
from tumoraug.models.transformer import MaskedTransformer, build_transformer
from tumoraug.models.vqgan import VQGAN3D
from tumoraug.training.config import TrainConfig
from tumoraug.training.loop import StepContext
from tumoraug.training.tokenizer import TokenizerRecipe, TokenizerTask
from tumoraug.training.transformer import TransformerRecipe, TransformerTask

GIB = 2**30
STAGES = ("tokenizer", "transformer")
MMAP_THRESHOLD = 65536  # bytes
RESOLUTION_GIB = 0.01  # smallest per-sample slope RSS resolves
CHECKPOINTABLE = {
    stage: hasattr(model, "set_gradient_checkpointing")
    for stage, model in (("tokenizer", VQGAN3D), ("transformer", MaskedTransformer))
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One measurement: which stage, architecture, ROI size, batch, precision, checkpointing."""

    stage: str
    preset: str
    size: int
    batch: int
    bf16: bool
    ckpt: bool

    @property
    def group(self) -> tuple[str, str, int, bool, bool]:
        """Everything but the batch: the rows one per-sample slope is fitted over."""
        return self.stage, self.preset, self.size, self.bf16, self.ckpt


def configs(preset: str, size: int) -> tuple[TokenizerConfig, TransformerConfig]:
    """Both stages' presets at ``size``³; the transformer takes the tokenizer's grid and codes."""
    tokenizer = TokenizerConfig.preset(preset, roi_size=size)
    transformer = TransformerConfig.preset(preset).replace(
        codebook_size=tokenizer.codebook_size, token_grid=tokenizer.token_grid
    )
    return tokenizer, transformer


def build_task(spec: Spec) -> TokenizerTask | TransformerTask:
    """The stage's training task on random weights (lr is irrelevant to memory)."""
    tokenizer_config, transformer_config = configs(spec.preset, spec.size)
    torch.manual_seed(0)
    if spec.stage == "tokenizer":
        recipe = TokenizerRecipe.for_preset(spec.preset).replace(disc_start=0)
        return TokenizerTask(VQGAN3D(tokenizer_config), recipe, lr=1e-4)
    recipe = TransformerRecipe.for_preset(spec.preset)
    return TransformerTask(build_transformer(transformer_config), recipe, lr=1e-4)


def random_batch(spec: Spec, device: torch.device) -> tuple[torch.Tensor, ...]:
    """A batch as the stage's collate builds it: ROIs (image, seg, grade) or token grids
    (tokens, importance, grade)."""
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(spec.batch) % 2
    tokenizer_config, _ = configs(spec.preset, spec.size)
    if spec.stage == "tokenizer":
        shape = (spec.batch, tokenizer_config.in_channels, *[spec.size] * 3)
        image = torch.rand(shape, generator=g) * 2 - 1
        batch = (image, (image[:, :1] > 0.5).long(), labels)
    else:
        grid = (spec.batch, *tokenizer_config.token_grid)
        tokens = torch.randint(tokenizer_config.codebook_size, grid, generator=g)
        batch = (tokens, torch.rand(grid, generator=g), labels)
    return tuple(t.to(device) for t in batch)


def train_step(spec: Spec, device: torch.device) -> tuple[Callable[[], None], int]:
    """``(step, trained parameters)``: ``step()`` runs one engine step on a fixed batch. The
    optimizer state is filled first (one zero-gradient step, which leaves Adam's weights
    unchanged) so that every measured step is a steady-state one."""
    task = build_task(spec)
    modules = {name: m.to(device).train() for name, m in task.modules().items()}
    if spec.ckpt:
        for module in modules.values():
            if hasattr(module, "set_gradient_checkpointing"):
                module.set_gradient_checkpointing(True)
    optimizers = task.configure_optimizers(modules)
    params = {n: [p for g in o.param_groups for p in g["params"]] for n, o in optimizers.items()}
    for name, optimizer in optimizers.items():
        for p in params[name]:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    clip = TrainConfig.preset(spec.stage).max_grad_norm
    batch = random_batch(spec, device)
    ctx = StepContext(0, 0, device, 0, 1, 0, modules, modules)

    def step() -> None:
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        with autocast(device, cpu_bf16=spec.bf16):
            losses = task.training_step(batch, ctx).losses
        for i, (name, loss) in enumerate(losses.items()):
            loss.float().backward(inputs=params[name], retain_graph=i < len(losses) - 1)
        for name in losses:
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params[name], clip)
            optimizers[name].step()

    return step, sum(p.numel() for group in params.values() for p in group)


def _proc_status_gib(field: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(spec: Spec, repeats: int, device: torch.device) -> dict[str, Any]:
    """Run ``repeats`` steps of ``spec`` in this process; idle and peak memory in GiB."""
    step, n_params = train_step(spec, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        idle = torch.cuda.memory_allocated(device) / GIB
    else:
        idle = _proc_status_gib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / GIB
    else:
        peak = _proc_status_gib("VmHWM")
    return {
        **dataclasses.asdict(spec),
        "device": device.type,
        "params": n_params,
        "idle_gib": idle,
        "peak_gib": peak,
        "step_gib": peak - idle,
        "seconds": statistics.median(seconds),
    }


def run_isolated(spec: Spec, repeats: int, device: str, timeout: float) -> dict[str, Any]:
    """`measure` in a fresh Python process; on failure the row says why."""
    command = [sys.executable, __file__, "--child", json.dumps(dataclasses.asdict(spec))]
    command += ["--repeats", str(repeats), "--device", device]
    # A fixed mmap threshold makes glibc return every freed tensor to the OS at once, so
    # that RSS follows the live tensors (the dynamic threshold keeps freed blocks cached).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**dataclasses.asdict(spec), "error": f"timeout after {timeout:g} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {**dataclasses.asdict(spec), "error": last}
    return json.loads(done.stdout.strip().splitlines()[-1])


def specs(args: argparse.Namespace) -> list[Spec]:
    """Every combination the flags ask for, larger batches last within a group."""
    out = []
    for stage in args.stages:
        for preset in args.presets:
            for size in args.sizes:
                for precision in args.precisions:
                    for ckpt in (c == "yes" for c in args.checkpointing):
                        if ckpt and not CHECKPOINTABLE[stage]:
                            continue  # the engine's flag changes nothing for this stage
                        for batch in sorted(args.batch_sizes):
                            out.append(Spec(stage, preset, size, batch, precision == "bf16", ckpt))
    return out


def spec_of(row: dict[str, Any]) -> Spec:
    """The `Spec` a result row was measured for."""
    return Spec(**{field.name: row[field.name] for field in dataclasses.fields(Spec)})


def fixed_and_slope(rows: list[dict[str, Any]]) -> tuple[float, float] | None:
    """``(fixed, slope)`` GiB of ``step(b) = fixed + b * slope`` from the smallest and the
    largest batch measured; None with fewer than two."""
    done = sorted((r["batch"], r["step_gib"]) for r in rows if "error" not in r)
    if len(done) < 2:
        return None
    (b1, m1), (b2, m2) = done[0], done[-1]
    slope = (m2 - m1) / (b2 - b1)
    return m1 - b1 * slope, slope


def fit_batch(
    fixed: float, slope: float, params: int, card: float, context: float, margin: float
) -> int:
    """The largest batch per GPU of ``card`` GiB: ``context + idle + fixed + b * slope``
    within ``(1 - margin) * card``, idle being the float32 weights and Adam's two moments
    (12 bytes per parameter); 0 if not even one sample fits."""
    room = (1 - margin) * card - context - 12 * params / GIB - fixed
    return max(0, math.floor(room / slope))


def fit_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, str]]:
    """Batch per GPU of each measured group. A group with one batch size only takes the
    ``fixed`` part of the same setting at the largest smaller ROI that has two, and the
    rest of its smallest batch's step as ``batch * slope`` (marked ``≈``). A slope under
    `RESOLUTION_GIB` gives lower bounds (``>``)."""
    groups: dict[tuple[str, str, int, bool, bool], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(spec_of(row).group, []).append(row)
    lines = {group: fixed_and_slope(members) for group, members in groups.items()}
    table = []
    for group, members in groups.items():
        stage, preset, size, bf16, ckpt = group
        done = sorted((r for r in members if "error" not in r), key=lambda r: r["batch"])
        line, mark = lines[group], ""
        if line is None and done:
            smaller = [g for g, fit in lines.items() if fit and g[2] < size
                       and (g[:2], g[3:]) == (group[:2], group[3:])]  # fmt: skip
            if smaller:
                fixed = lines[max(smaller, key=lambda g: g[2])][0]  # type: ignore[index]
                line, mark = (fixed, (done[0]["step_gib"] - fixed) / done[0]["batch"]), "≈ "
        if line is None:
            continue
        fixed, slope = line
        per_sample, bound = f"{mark}{slope:.2f}", mark
        if slope < RESOLUTION_GIB:  # below what RSS resolves: a lower bound on the batch
            slope, per_sample, bound = RESOLUTION_GIB, f"< {RESOLUTION_GIB:g}", "> "
        table.append(
            {
                "stage": stage,
                "preset": preset,
                "ROI": f"{size}³",
                "precision": "bf16" if bf16 else "fp32",
                "grad ckpt": "yes" if ckpt else "no",
                "fixed GiB": f"{mark}{fixed:.2f}",
                "GiB / sample": per_sample,
                **{
                    f"{card:g} GB": bound + str(fit_batch(
                        fixed, slope, done[0]["params"], card, args.context_gib, args.margin
                    ))
                    for card in args.gpu_gib
                },
            }
        )  # fmt: skip
    return table


def row_cells(row: dict[str, Any]) -> dict[str, str]:
    """A measurement as table cells."""
    cells = {
        "stage": row["stage"],
        "preset": row["preset"],
        "ROI": f"{row['size']}³",
        "precision": "bf16" if row["bf16"] else "fp32",
        "grad ckpt": "yes" if row["ckpt"] else "no",
        "batch": str(row["batch"]),
    }
    if "error" in row:
        return (
            cells
            | dict.fromkeys(("params", "idle GiB", "peak GiB", "s / step"), "-")
            | {"step GiB": row["error"]}
        )
    return cells | {
        "params": f"{row['params'] / 1e6:.1f} M",
        "idle GiB": f"{row['idle_gib']:.2f}",
        "peak GiB": f"{row['peak_gib']:.2f}",
        "step GiB": f"{row['step_gib']:.2f}",
        "s / step": f"{row['seconds']:.1f}",
    }


def markdown(table: list[dict[str, str]]) -> str:
    """A Markdown table of rows sharing the first row's columns."""
    if not table:
        return "(no rows)"
    head = list(table[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.get(k, "") for k in head) + " |" for r in table]
    return "\n".join(lines)


def measure_all(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Every row the flags ask for, one process each; progress on stderr, rows saved to
    ``--json`` after each one (a stopped run keeps what it measured)."""
    rows: list[dict[str, Any]] = []
    for spec in specs(args):
        smaller = [r for r in rows if "error" not in r and spec_of(r).group == spec.group]
        first = min(smaller, key=lambda r: r["batch"], default=None)
        scale = 0.0 if first is None else spec.batch / first["batch"]
        guess = 0.0 if first is None else first["idle_gib"] + scale * first["step_gib"]
        if guess > args.max_gib:
            rows.append({**dataclasses.asdict(spec), "error": f"skipped: > {args.max_gib:g} GiB"})
        else:
            rows.append(run_isolated(spec, args.repeats, str(device), args.timeout))
        print(markdown([row_cells(rows[-1])]).splitlines()[-1], file=sys.stderr, flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--presets", nargs="+", default=["brats128"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"]
    )
    parser.add_argument("--checkpointing", nargs="+", choices=("no", "yes"), default=["no", "yes"])
    parser.add_argument("--repeats", type=int, default=1, help="Steps timed per row (median).")
    parser.add_argument("--timeout", type=float, default=900, help="Seconds per row.")
    parser.add_argument("--max-gib", type=float, default=18, help="Skip larger batches above.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--gpu-gib", type=float, nargs="+", default=[24, 48, 80])
    parser.add_argument("--context-gib", type=float, default=1.0, help="CUDA context + kernels.")
    parser.add_argument("--margin", type=float, default=0.1, help="Allocator headroom share.")
    parser.add_argument("--json", type=Path, help="Also write the raw rows here.")
    parser.add_argument("--load", type=Path, nargs="+", help="Print the tables of --json files.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.child:
        print(json.dumps(measure(Spec(**json.loads(args.child)), args.repeats, device)))
        return

    if args.load:
        rows = [row for path in args.load for row in json.loads(path.read_text())]
        print(f"Rows of {', '.join(map(str, args.load))}\n")
    else:
        rows = measure_all(args, device)
        memory = "CUDA max_memory_allocated" if device.type == "cuda" else "CPU peak RSS"
        threads = torch.get_num_threads()
        print(f"torch {torch.__version__}, {device}, {threads} thread(s), {memory}\n")
    print(markdown([row_cells(r) for r in rows]) + "\n")
    print(f"Batch per GPU: {args.context_gib:g} GiB context, {args.margin:.0%} margin\n")
    print(markdown(fit_table(rows, args)))


if __name__ == "__main__":
    main()
