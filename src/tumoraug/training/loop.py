"""The one training engine shared by both stages; it knows nothing about the models.

A *task* says what to train and how to compute the loss of one batch; `fit` does the rest:
device choice, bf16 autocast on CUDA, gradient accumulation, gradient clipping, linear
warm-up, DDP under ``torchrun``, atomic checkpoints, exact resume, a progress bar,
``metrics.jsonl`` and periodic PNGs.

API
---
Subclass `TrainingTask` (or write any object with the same methods)::

    class MyTask(TrainingTask):
        def modules(self) -> dict[str, nn.Module]          # required: everything to train/save
        def configure_optimizers(self, modules) -> dict[str, Optimizer]   # required
        def training_step(self, batch, ctx: StepContext) -> StepOutput | Tensor   # required
        def after_step(self, ctx) -> dict[str, float]      # optional, after the optimizer steps
        def save_images(self, batch, ctx, path) -> None    # optional, rank 0, under no_grad
        def export_names(self) -> list[str]                # optional, default: PretrainedMixins
        def state_dict(self) / load_state_dict(state)      # optional extra resumable state

    result = fit(task, dataset, output_dir, max_steps=1000, batch_size=4, seed=0)

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
  bf16 autocast on CUDA; the batch is already on the device.
* Randomness inside a task should come from ``ctx.generator(salt)`` (seeded by seed, step
  and salt) or the global torch RNG (checkpointed per rank); both keep resume exact.
* Under DDP call each wrapped module at most once per micro-step and let its output reach
  that step's loss (e.g. run a discriminator on ``cat([real, fake])``); for a forward that
  must not synchronise or train a module (a generator's adversarial term through the
  discriminator), call the plain module from ``ctx.raw``.
* Metrics (losses as ``loss/<name>``, ``StepOutput.metrics``, ``after_step`` results) are
  averaged over accumulation micro-batches, then over the steps of the logging window that
  reported them, then over ranks.
* Batches: ``batch_size`` items per rank and micro-step (``collate_fn`` builds them, default
  `torch.utils.data.default_collate`); with ``grad_accum_steps=a`` one optimizer step sees
  ``a`` micro-batches, so the effective batch is ``batch_size * a * world_size``. The data
  order is a function of ``(seed, epoch)`` only: each epoch is a seeded permutation, split
  between ranks as ``perm[rank::world_size]``; so resuming at step ``k`` sees exactly the
  batches an uninterrupted run would, and a 2-rank run sees the same items per step as one
  process with twice the batch size.
* Output folder::

      output_dir/
        checkpoints/step_00000100/   <module>/config.json + model.safetensors (PretrainedMixin)
                                     <module>/model.safetensors (other modules)
                                     training_state.{json,safetensors}: step, optimizers,
                                     RNG of every rank, task state
        metrics.jsonl                one JSON object per ``log_every`` steps
        samples/step_00000100.png    ``save_images`` every ``image_every`` steps
        <name>/                      final ``save_pretrained`` of each exported module

  A checkpoint is written into a temporary folder that is renamed into place, so a crash
  never leaves a half checkpoint; the last ``keep_checkpoints`` are kept. With
  ``resume=True`` (default) the newest checkpoint is loaded and training continues from its
  step; ``metrics.jsonl`` lines past that step are dropped.
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
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate

from tumoraug.checkpoint import (
    PretrainedMixin,
    atomic_save_tensors,
    atomic_write_text,
    load_state,
    load_state_dict_strict,
    load_weights,
    read_checkpoint_config,
    rng_state,
    save_state,
    set_rng_state,
)
from tumoraug.errors import CheckpointError, ConfigError

CHECKPOINT_DIR = "checkpoints"
METRICS_NAME = "metrics.jsonl"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


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

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from (seed, step, salt): reproducible and resume-safe."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.step) * 31 + salt)


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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda:<LOCAL_RANK>`` when CUDA is available, else CPU; ``"cuda"`` ->
    ``cuda:<LOCAL_RANK>`` (one GPU per torchrun process)."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device} requested but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


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


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    root = output_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``output_dir/checkpoints``, if any."""
    found = _checkpoints(Path(output_dir))
    return found[-1][1] if found else None


def _save_checkpoint(
    output_dir: Path,
    step: int,
    raw: dict[str, nn.Module],
    optimizers: dict[str, Any],
    task: Any,
    rngs: list[dict[str, Any]],
    keep: int,
) -> Path:
    root = output_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_step_{step:08d}_", dir=root))
    try:
        for name, module in raw.items():
            if isinstance(module, PretrainedMixin):
                module.save_pretrained(tmp / name)
            else:
                atomic_save_tensors(module.state_dict(), tmp / name / "model.safetensors")
        state = {
            "step": step,
            "rng": rngs,
            "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
            "task": task.state_dict() if hasattr(task, "state_dict") else {},
        }
        save_state(state, tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for _, old in _checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(
    directory: Path, raw: dict[str, nn.Module], optimizers: dict[str, Any], task: Any
) -> dict[str, Any]:
    for name, module in raw.items():
        sub = directory / name
        if isinstance(module, PretrainedMixin):
            meta = read_checkpoint_config(sub, module.model_type)
            state = load_weights(sub, meta.get("weights_sha256"))
        else:
            state = load_weights(sub, None)
        load_state_dict_strict(module, state, str(sub))
    state = load_state(directory)
    missing = sorted(set(optimizers) - set(state["optimizers"]))
    if missing:
        raise CheckpointError(f"{directory}: no optimizer state for {', '.join(missing)}")
    for name, optimizer in optimizers.items():
        try:
            optimizer.load_state_dict(state["optimizers"][name])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{directory}: optimizer {name!r} state: {exc}") from None
    if hasattr(task, "load_state_dict"):
        task.load_state_dict(state.get("task", {}))
    return state


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past the resumed step, and a line cut short by a crash."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
            if json.loads(line)["step"] <= step:
                kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _gather_rng(world: int) -> list[dict[str, Any]]:
    mine = rng_state()
    if world == 1:
        return [mine]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    return gathered


class _Progress:
    """A rich progress bar on stderr showing the loss (no-op when disabled)."""

    def __init__(self, enabled: bool, start: int, total: int) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
            )
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, info: str | None = None) -> None:
        if self.bar is not None:
            fields = {"info": info} if info is not None else {}
            self.bar.update(self.task, advance=1, **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def fit(
    task: Any,
    dataset: Dataset,
    output_dir: str | Path,
    *,
    max_steps: int,
    batch_size: int,
    seed: int = 0,
    device: str | torch.device = "auto",
    grad_accum_steps: int = 1,
    max_grad_norm: float | None = None,
    warmup_steps: int = 0,
    mixed_precision: bool = True,
    gradient_checkpointing: bool = False,
    checkpoint_every: int = 500,
    keep_checkpoints: int = 2,
    log_every: int = 10,
    image_every: int = 0,
    resume: bool = True,
    shuffle: bool = True,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``task`` on ``dataset`` for ``max_steps`` optimizer steps; see the module doc."""
    for name, value, low in (
        ("max_steps", max_steps, 0),
        ("batch_size", batch_size, 1),
        ("grad_accum_steps", grad_accum_steps, 1),
        ("checkpoint_every", checkpoint_every, 0),
        ("keep_checkpoints", keep_checkpoints, 1),
        ("log_every", log_every, 1),
        ("image_every", image_every, 0),
        ("warmup_steps", warmup_steps, 0),
    ):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"fit.{name}: expected an int >= {low}, got {value!r}")
    output_dir = Path(output_dir)
    device = resolve_device(device)
    rank, world, own_group = _init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        return _fit(
            task, dataset, output_dir, device, rank, world, max_steps=max_steps,
            batch_size=batch_size, seed=seed, grad_accum_steps=grad_accum_steps,
            max_grad_norm=max_grad_norm, warmup_steps=warmup_steps,
            mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing,
            checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
            log_every=log_every, image_every=image_every, resume=resume, shuffle=shuffle,
            num_workers=num_workers, collate_fn=collate_fn, progress=progress,
        )  # fmt: skip
    finally:
        if own_group:
            dist.destroy_process_group()


def _fit(
    task: Any,
    dataset: Dataset,
    output_dir: Path,
    device: torch.device,
    rank: int,
    world: int,
    **opt: Any,
) -> FitResult:
    seed, accum = opt["seed"], opt["grad_accum_steps"]
    raw: dict[str, nn.Module] = task.modules()
    for module in raw.values():
        module.to(device).train()
        if opt["gradient_checkpointing"] and hasattr(module, "set_gradient_checkpointing"):
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
    latest = latest_checkpoint(output_dir) if opt["resume"] else None
    if latest is not None:
        state = _load_checkpoint(latest, raw, optimizers, task)
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

    sampler = _BatchSampler(len(dataset), opt["batch_size"], seed, rank, world, opt["shuffle"])  # type: ignore[arg-type]
    sampler.start = start * accum
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,  # type: ignore[arg-type]
        num_workers=opt["num_workers"],
        collate_fn=opt["collate_fn"] or default_collate,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed + start),  # keeps the global RNG untouched
    )
    batches = iter(loader)
    is_main = rank == 0
    metrics_path = output_dir / METRICS_NAME
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, start)
    amp = opt["mixed_precision"] and device.type == "cuda"
    bar = _Progress(opt["progress"] and is_main, start, opt["max_steps"])
    sums: dict[str, torch.Tensor] = {}  # per metric: sum over the steps that reported it
    counts: dict[str, int] = {}
    last_metrics, checkpoint, t0 = {}, None, time.perf_counter()
    step = start
    try:
        while step < opt["max_steps"]:
            factor = min(1.0, (step + 1) / opt["warmup_steps"]) if opt["warmup_steps"] else 1.0
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
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
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
            for name in stepped:
                if opt["max_grad_norm"]:
                    torch.nn.utils.clip_grad_norm_(params_of[name], opt["max_grad_norm"])
                optimizers[name].step()
            ctx = StepContext(step, accum - 1, device, rank, world, seed, modules, raw)
            for key, value in (task.after_step(ctx) or {}).items():
                current[key] = torch.tensor(float(value))
            for key, value in current.items():
                sums[key] = sums.get(key, torch.zeros(())) + value
                counts[key] = counts.get(key, 0) + 1
            step += 1

            if step % opt["log_every"] == 0 or step == opt["max_steps"]:
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
                bar.update(info)
            else:
                bar.update()

            if is_main and opt["image_every"] and step % opt["image_every"] == 0:
                with torch.no_grad():
                    task.save_images(batch, ctx, output_dir / "samples" / f"step_{step:08d}.png")

            every = opt["checkpoint_every"]
            if (every and step % every == 0) or step == opt["max_steps"]:
                rngs = _gather_rng(world)
                if is_main:
                    checkpoint = _save_checkpoint(
                        output_dir, step, raw, optimizers, task, rngs, opt["keep_checkpoints"]
                    )
                if world > 1:
                    dist.barrier()
    finally:
        bar.close()

    if is_main:
        for name in task.export_names():
            raw[name].save_pretrained(output_dir / name)
    if world > 1:
        dist.barrier()
    return FitResult(step, output_dir, checkpoint, resumed_from, last_metrics)
