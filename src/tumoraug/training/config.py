"""`TrainConfig`: the options of one training run, shared by both stages.

A run is described by three things saved with it: the architecture config of the network
(`tumoraug.config`), the recipe of its stage (`TokenizerRecipe` / `TransformerRecipe`:
losses, masking, discriminator schedule) and this `TrainConfig` (how long, how big a batch,
how fast, where, how often to checkpoint). The API and the CLI build it once;
`tumoraug.training.loop.fit` reads it and stores it in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from tumoraug.config import Config, check

SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class TrainConfig(Config):
    """Optimisation and bookkeeping of a training run (the defaults of every stage live here).

    ``steps`` optimizer steps of ``batch_size`` items per process and micro-batch, with
    ``grad_accum_steps`` micro-batches per step; ``lr`` after ``warmup_steps`` of linear
    warm-up, then held (``lr_schedule="constant"``) or lowered along a half cosine to
    ``min_lr_ratio·lr`` at the last step (``"cosine"``: the last steps refine at a small
    rate; a resume to more ``steps`` stretches the rest of the curve); gradients clipped to
    ``max_grad_norm`` (None: no clipping); a checkpoint every
    ``checkpoint_every`` steps (the last ``keep_checkpoints`` kept), a metrics line every
    ``log_every`` and a PNG every ``image_every`` steps (0: never); bf16 autocast on CUDA
    when ``mixed_precision``, and on the CPU too with ``cpu_bf16`` (the CPU twin of the CUDA
    path, to run it without a GPU; float32 on the CPU otherwise); activation recomputation
    with ``gradient_checkpointing``.
    The presets ``"tokenizer"`` and ``"transformer"`` are each stage's defaults,
    ``"alpha_wgan"`` the 3D-αWGAN baseline's (the diffusion baselines use the defaults).
    """

    steps: int = 1000
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr: float = 3e-4
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    image_every: int = 0
    device: str = "auto"
    seed: int = 0
    mixed_precision: bool = True
    cpu_bf16: bool = False
    gradient_checkpointing: bool = False
    num_workers: int = 0

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tokenizer": {"batch_size": 2, "lr": 1e-4, "max_grad_norm": None, "image_every": 100},
        "transformer": {},
        # 3D-alphaWGAN: Kwon et al. 2019's batch and learning rate, no clipping
        "alpha_wgan": {"batch_size": 4, "lr": 2e-4, "max_grad_norm": None, "image_every": 100},
    }

    def validate(self) -> None:
        name = type(self).__name__
        for field, low in (
            ("steps", 0), ("batch_size", 1), ("grad_accum_steps", 1), ("warmup_steps", 0),
            ("checkpoint_every", 0), ("keep_checkpoints", 1), ("log_every", 1),
            ("image_every", 0), ("num_workers", 0), ("seed", 0),
        ):  # fmt: skip
            value = getattr(self, field)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= low,
                name, field, f"an int >= {low}", value,
            )  # fmt: skip
        check(
            isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0,
            name, "lr", "a finite number > 0", self.lr,
        )  # fmt: skip
        check(
            self.max_grad_norm is None
            or (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0),
            name, "max_grad_norm", "None or a finite number > 0", self.max_grad_norm,
        )  # fmt: skip
        check(
            self.lr_schedule in SCHEDULES,
            name,
            "lr_schedule",
            " or ".join(SCHEDULES),
            self.lr_schedule,
        )
        check(
            isinstance(self.min_lr_ratio, int | float) and 0 <= self.min_lr_ratio <= 1,
            name, "min_lr_ratio", "a number in [0, 1]", self.min_lr_ratio,
        )  # fmt: skip
        check(isinstance(self.device, str), name, "device", "a device name", self.device)
        check(isinstance(self.cpu_bf16, bool), name, "cpu_bf16", "a bool", self.cpu_bf16)
        check(
            self.mixed_precision or not self.cpu_bf16,
            name, "cpu_bf16", "False when mixed_precision is False (float32 everywhere)",
            self.cpu_bf16,
        )  # fmt: skip

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at optimizer step ``step`` (0-based): warm-up, then the schedule."""
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant" or self.steps <= self.warmup_steps + 1:
            return 1.0
        progress = (step - self.warmup_steps) / (self.steps - self.warmup_steps - 1)
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine
