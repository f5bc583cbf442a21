"""The one training engine shared by both stages; it knows nothing about the models.

A *task* says what to train and how to compute the loss of one batch; a `TrainConfig` says
how long, how big and how often; `fit` does the rest:
device choice, bf16 autocast on CUDA (and on the CPU with ``cpu_bf16``), gradient
accumulation, gradient clipping, linear warm-up, DDP under ``torchrun``, atomic checkpoints,
exact resume, a progress bar, ``metrics.jsonl`` and periodic PNGs.

API
---
Subclass `TrainingTask` (or write any object with the same methods)::

    class MyTask(TrainingTask):
        def modules(self) -> dict[str, nn.Module]          # required: everything to train/save
        def configure_optimizers(self, modules) -> dict[str, Optimizer]   # required
        def training_step(self, batch, ctx: StepContext) -> StepOutput | Tensor   # required
        def after_step(self, ctx) -> dict[str, float]      # optional, after the optimizer steps
                                                           # (ctx.logged: a metrics line follows)
        def save_images(self, batch, ctx, path) -> None    # optional, rank 0, under no_grad
        def export_names(self) -> list[str]                # optional, default: PretrainedMixins
        def state_dict(self) / load_state_dict(state)      # optional extra resumable state
        def describe(self) -> dict                         # optional: configs saved with it

    result = fit(task, dataset, output_dir, TrainConfig(steps=1000, batch_size=4))

* ``modules()`` is called once; the engine moves the modules to the device, optionally turns
  on gradient checkpointing (``set_gradient_checkpointing(True)`` on modules that have it),
  and wraps modules with trainable parameters in `DistributedDataParallel` when running
  under ``torchrun``. ``ctx.modules`` holds these (possibly wrapped) modules: call them for
  forward passes whose gradients must be synchronised; ``ctx.raw`` holds the plain ones.
* ``configure_optimizers(raw_modules)`` returns optimizers by name, created after the
  modules are on the device.
* ``training_step`` returns a `StepOutput`: ``losses`` maps an optimizer name to the loss
  that optimizer minimises (several optimizers, e.g. generator and discriminator, are fine:
  each loss is back-propagated only into its optimizer's parameters, and only optimizers
  that received a loss in this step are stepped), ``metrics`` are extra scalars to log.
  A plain tensor means ``StepOutput({<the only optimizer>: loss})``. The call runs under
  bf16 autocast on CUDA (on the CPU too with ``train.cpu_bf16``; no grad scaling: bf16
  keeps float32's range); the batch is already on the device.
* Randomness inside a task should come from ``ctx.rng(salt)`` (seeded by seed, step,
  micro-step, rank and salt) or the global torch RNG (checkpointed per rank); both keep
  resume exact.
* Under DDP call each wrapped module at most once per micro-step and let its output reach
  that step's loss (e.g. run a discriminator on ``cat([real, fake])``); for a forward that
  must not synchronise or train a module (a generator's adversarial term through the
  discriminator), call the plain module from ``ctx.raw``.
* Metrics (losses as ``loss/<name>``, ``StepOutput.metrics``, ``after_step`` results) are
  averaged over accumulation micro-batches, then over the steps of the logging window that
  reported them, then over ranks.
* Batches: ``train.batch_size`` items per rank and micro-step (``collate_fn`` builds them,
  default `torch.utils.data.default_collate`); with ``train.grad_accum_steps=a`` one optimizer
  step sees ``a`` micro-batches, so the effective batch is ``batch_size * a * world_size``. The data
  order is a function of ``(seed, epoch)`` only: each epoch is a seeded permutation, split
  between ranks as ``perm[rank::world_size]``; so resuming at step ``k`` sees exactly the
  batches an uninterrupted run would, and a 2-rank run sees the same items per step as one
  process with twice the batch size.
* Output folder::

      output_dir/
        checkpoints/step_00000100/   <module>/config.json + model.safetensors (PretrainedMixin)
                                     <module>/model.safetensors (other modules)
                                     training_state.{json,safetensors}: step, optimizers,
                                     RNG of every rank, task state, the TrainConfig and the
                                     task's configs; run.json: the run record (resume check)
        metrics.jsonl                one JSON object per ``log_every`` steps
        samples/step_00000100.png    ``save_images`` every ``image_every`` steps
        <name>/                      final ``save_pretrained`` of each exported module

  A checkpoint is written into a temporary folder that is renamed into place, so a crash
  never leaves a half checkpoint; the last ``keep_checkpoints`` are kept. With
  ``resume=True`` (default) the newest checkpoint is loaded and training continues from its
  step, provided the run record matches (configs, result-changing options, data and
  tokenizer fingerprints; only ``steps`` may grow); ``metrics.jsonl`` lines past that step
  are dropped. A non-finite loss stops the run at that step, before its optimizer step,
  and weights holding NaN/Inf are never checkpointed.
* Distributed: launch the script with ``torchrun --nproc-per-node N``; `fit` initialises the
  process group (NCCL on CUDA, gloo on CPU) from the environment unless it is already
  initialised. Only rank 0 writes files; logged metrics are averaged over ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate

from tumoraug.checkpoint import (
    PretrainedMixin,
    rng_state,
    set_rng_state,
)
from tumoraug.device import autocast, resolve_device
from tumoraug.errors import ConfigError
from tumoraug.progress import progress_bar
from tumoraug.training.checkpoints import (
    METRICS_NAME,
    check_resume,
    first_non_finite,
    latest_checkpoint,
    load_checkpoint,
    run_record,
    save_checkpoint,
    truncate_metrics,
)
from tumoraug.training.config import TrainConfig


@dataclasses.dataclass
class StepOutput:
    """Result of one `TrainingTask.training_step`: losses per optimizer, scalars to log."""

    losses: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor | float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StepContext:
    """What a task sees of the engine during one micro-step."""

    step: int  # index of the optimizer step being computed (0-based)
    micro_step: int  # index of the micro-batch within gradient accumulation
    device: torch.device
    rank: int
    world_size: int
    seed: int
    modules: dict[str, nn.Module]  # possibly DDP-wrapped: use for synchronised forwards
    raw: dict[str, nn.Module]  # the plain modules
    logged: bool = False  # after_step only: this step writes a metrics line

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    def rng(self, salt: int = 0) -> torch.Generator:
        """A CPU `torch.Generator` for (seed, step, micro-step, rank, salt): distinct per
        micro-batch and rank, reproducible, and resume-safe."""
        entropy = [self.seed & 0xFFFFFFFF, self.step, self.micro_step, self.rank, salt]
        return torch.Generator().manual_seed(
            int(np.random.SeedSequence(entropy).generate_state(1)[0])
        )


class TrainingTask:
    """Base class of training tasks; see the module docstring for the contract."""

    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        raise NotImplementedError

    def training_step(self, batch: Any, ctx: StepContext) -> StepOutput | torch.Tensor:
        raise NotImplementedError

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        """Called on every rank after the optimizers stepped; may return scalars to log."""
        return {}

    def save_images(self, batch: Any, ctx: StepContext, path: Path) -> None:
        """Write a PNG for ``batch`` to ``path`` (rank 0 only, under ``no_grad``)."""

    def export_names(self) -> list[str]:
        """Modules saved with ``save_pretrained`` into ``output_dir/<name>`` at the end."""
        return [n for n, m in self.modules().items() if isinstance(m, PretrainedMixin)]

    def state_dict(self) -> dict[str, Any]:
        """Extra state to checkpoint (tensors, numbers, strings, nested dicts/lists)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The task's configs (architecture, recipe) as JSON, saved with every checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


@dataclasses.dataclass
class FitResult:
    """What `fit` returns."""

    step: int  # optimizer steps done in total
    output_dir: Path
    checkpoint: Path | None  # last checkpoint written (None on ranks > 0)
    resumed_from: int | None  # step of the checkpoint training resumed from
    metrics: dict[str, float]  # the last logged metrics


def _init_distributed(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world_size, initialised_here); uses torchrun's environment when present."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


class _BatchSampler:
    """Infinite, resumable batch sampler: batch ``m`` depends only on (seed, m, rank)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int, shuffle: bool):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self.per_epoch = math.ceil(n / world) // batch_size
        if self.per_epoch == 0:
            raise ConfigError(
                f"batch_size: {batch_size} per rank x {world} rank(s) needs at least "
                f"{batch_size * world} items, the dataset has {n}"
            )
        self.start = 0

    def shard(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        perm += perm[: (-self.n) % self.world]
        return perm[self.rank :: self.world]

    def __iter__(self) -> Iterator[list[int]]:
        m, epoch, shard = self.start, -1, []
        while True:
            e, b = divmod(m, self.per_epoch)
            if e != epoch:
                epoch, shard = e, self.shard(e)
            yield shard[b * self.batch_size : (b + 1) * self.batch_size]
            m += 1


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _gather_rng(world: int) -> list[dict[str, Any]]:
    mine = rng_state()
    if world == 1:
        return [mine]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    return gathered


def _diverged(output_dir: Path, step: int, what: str, train: TrainConfig) -> ConfigError:
    """The error that stops a run at its first non-finite loss or weight."""
    last = latest_checkpoint(output_dir)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
    return ConfigError(
        f"{output_dir}: training stopped at step {step}: {what} is NaN or infinite; nothing of "
        f"this step was saved and {kept}; lower the learning rate (lr={train.lr:g}, CLI: --lr) "
        "or check the data for NaN, and train into a new folder"
    )


def fit(
    task: Any,
    dataset: Dataset,
    output_dir: str | Path,
    train: TrainConfig,
    *,
    resume: bool = True,
    shuffle: bool = True,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    progress: bool = True,
    identity: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``task`` on ``dataset`` for ``train.steps`` optimizer steps; see the module doc.

    ``resume`` continues the newest checkpoint in ``output_dir`` if its run record matches
    (`tumoraug.training.checkpoints.check_resume`); ``identity`` adds fingerprints to the
    record (the data, a stage-2 tokenizer). The run stops with a `ConfigError` naming the
    step at the first non-finite loss, and never saves non-finite weights. ``progress``
    shows a bar on stderr (rank 0).
    """
    if not isinstance(train, TrainConfig):
        raise ConfigError(f"fit: expected a TrainConfig, got {type(train).__name__}")
    output_dir = Path(output_dir)
    device = resolve_device(train.device)
    rank, world, own_group = _init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        return _fit(
            task, dataset, output_dir, train, device, rank, world,
            resume=resume, shuffle=shuffle, collate_fn=collate_fn, progress=progress,
            run=run_record(task, train, identity),
        )  # fmt: skip
    finally:
        if own_group:
            dist.destroy_process_group()


def _fit(
    task: Any,
    dataset: Dataset,
    output_dir: Path,
    train: TrainConfig,
    device: torch.device,
    rank: int,
    world: int,
    *,
    resume: bool,
    shuffle: bool,
    collate_fn: Callable[[list[Any]], Any] | None,
    progress: bool,
    run: dict[str, Any],
) -> FitResult:
    seed, accum = train.seed, train.grad_accum_steps
    latest = check_resume(output_dir, run, train, resume)
    raw: dict[str, nn.Module] = task.modules()
    for module in raw.values():
        module.to(device).train()
        if train.gradient_checkpointing and hasattr(module, "set_gradient_checkpointing"):
            module.set_gradient_checkpointing(True)
    optimizers = task.configure_optimizers(raw)
    params_of = {
        name: [p for group in o.param_groups for p in group["params"]]
        for name, o in optimizers.items()
    }
    for o in optimizers.values():
        for group in o.param_groups:
            group.setdefault("initial_lr", group["lr"])

    start, resumed_from = 0, None
    if latest is not None:
        state = load_checkpoint(latest, raw, optimizers, task)
        start = resumed_from = int(state["step"])
        rngs = state["rng"]
        if len(rngs) == world:
            set_rng_state(rngs[rank])
        else:
            torch.manual_seed(seed + 7919 * rank + start)
    else:
        torch.manual_seed(seed + 7919 * rank)

    modules: dict[str, nn.Module] = dict(raw)
    if world > 1:
        for name, module in raw.items():
            if any(p.requires_grad for p in module.parameters()):
                ids = [device.index] if device.type == "cuda" else None
                modules[name] = DistributedDataParallel(module, device_ids=ids)

    sampler = _BatchSampler(len(dataset), train.batch_size, seed, rank, world, shuffle)  # type: ignore[arg-type]
    sampler.start = start * accum
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,  # type: ignore[arg-type]
        num_workers=train.num_workers,
        collate_fn=collate_fn or default_collate,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed + start),  # keeps the global RNG untouched
    )
    batches = iter(loader)
    is_main = rank == 0
    metrics_path = output_dir / METRICS_NAME
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(metrics_path, start)
    sums: dict[str, torch.Tensor] = {}  # per metric: sum over the steps that reported it
    counts: dict[str, int] = {}
    last_metrics, checkpoint, t0 = {}, None, time.perf_counter()
    step = start
    with progress_bar("train", train.steps, enabled=progress and is_main, completed=start) as bar:
        while step < train.steps:
            factor = train.lr_factor(step)
            for o in optimizers.values():
                o.zero_grad(set_to_none=True)
                for group in o.param_groups:
                    group["lr"] = group["initial_lr"] * factor
            stepped: set[str] = set()
            current: dict[str, torch.Tensor] = {}  # this step's metrics
            for micro in range(accum):
                batch = _to_device(next(batches), device)
                ctx = StepContext(step, micro, device, rank, world, seed, modules, raw)
                with contextlib.ExitStack() as stack:
                    if world > 1 and micro < accum - 1:
                        for m in modules.values():
                            if isinstance(m, DistributedDataParallel):
                                stack.enter_context(m.no_sync())
                    with autocast(device, train.mixed_precision, cpu_bf16=train.cpu_bf16):
                        out = task.training_step(batch, ctx)
                    if isinstance(out, torch.Tensor):
                        (only,) = optimizers
                        out = StepOutput({only: out})
                    losses = {n: v for n, v in out.losses.items() if v.requires_grad}
                    for i, (name, loss) in enumerate(losses.items()):
                        if name not in optimizers:
                            raise ConfigError(f"training_step: loss for unknown optimizer {name!r}")
                        (loss.float() / accum).backward(
                            inputs=params_of[name] if len(optimizers) > 1 else None,
                            retain_graph=i < len(losses) - 1,
                        )
                        stepped.add(name)
                for key, value in {
                    **{f"loss/{n}": v for n, v in out.losses.items()},
                    **out.metrics,
                }.items():
                    value = torch.as_tensor(value).detach().float().cpu()
                    current[key] = current.get(key, torch.zeros(())) + value / accum
            bad = [k for k, v in current.items() if k.startswith("loss/") and not v.isfinite()]
            if world > 1:  # every rank stops at the same step
                flag = torch.tensor(float(bool(bad)), device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                bad = bad or (["a loss on another rank"] if flag.item() else [])
            if bad:
                raise _diverged(output_dir, step + 1, ", ".join(bad), train)
            for name in stepped:
                if train.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params_of[name], train.max_grad_norm)
                optimizers[name].step()
            logged = (step + 1) % train.log_every == 0 or step + 1 == train.steps
            ctx = StepContext(step, accum - 1, device, rank, world, seed, modules, raw, logged)
            for key, value in (task.after_step(ctx) or {}).items():
                current[key] = torch.tensor(float(value))
            for key, value in current.items():
                sums[key] = sums.get(key, torch.zeros(())) + value
                counts[key] = counts.get(key, 0) + 1
            step += 1

            if logged:
                names = sorted(sums)
                values = torch.stack([sums[k] / counts[k] for k in names]) if names else None
                if world > 1 and values is not None:
                    values = values.to(device)
                    dist.all_reduce(values)
                    values = values.cpu() / world
                last_metrics = dict(zip(names, values.tolist(), strict=True)) if names else {}
                sums, counts = {}, {}
                if is_main:
                    record = {
                        "step": step,
                        "lr": next(iter(optimizers.values())).param_groups[0]["lr"],
                        "time_s": round(time.perf_counter() - t0, 3),
                        **{k: round(v, 6) for k, v in last_metrics.items()},
                    }
                    with open(metrics_path, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
                info = "  ".join(
                    f"{k.removeprefix('loss/')}={v:.4f}"
                    for k, v in last_metrics.items()
                    if k.startswith("loss/")
                )
                bar.advance(1, info)
            else:
                bar.advance()

            if is_main and train.image_every and step % train.image_every == 0:
                with torch.no_grad():
                    task.save_images(batch, ctx, output_dir / "samples" / f"step_{step:08d}.png")

            every = train.checkpoint_every
            if (every and step % every == 0) or step == train.steps:
                broken = first_non_finite(raw)  # the same on every rank: weights are in sync
                if broken is not None:
                    raise _diverged(output_dir, step, f"weight {broken}", train)
                rngs = _gather_rng(world)
                if is_main:
                    checkpoint = save_checkpoint(
                        output_dir, step, raw, optimizers, task, rngs, train, run
                    )
                if world > 1:
                    dist.barrier()

    if is_main:
        for name in task.export_names():
            raw[name].save_pretrained(output_dir / name)
    if world > 1:
        dist.barrier()
    return FitResult(step, output_dir, checkpoint, resumed_from, last_metrics)
