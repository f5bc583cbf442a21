"""The paper's 3D-Med-DDPM comparison: class-conditional DDPM in image space at the ROI size.

A model folder is ``tumoraug.json`` beside ``unet/`` (a `DiffusionUNet3D` trained to predict
the noise of a 1000-step forward process on ROIs, `tumoraug.training.diffusion.train_ddpm`).
`DDPMGenerator` samples it behind the interface of every tumoraug generator
(`tumoraug.generators.FolderGenerator`), with its own settings, `DiffusionSampling`:

* DDPM-1000: ``DiffusionSampling(scheduler="ddpm", steps=1000)``, ancestral sampling
  (Ho et al. 2020). MONAI's DDPM step takes ``t - 1`` as the previous step, so fewer
  steps than the model was trained with run (tests do) but are not the DDPM posterior:
  use DDIM for short schedules.
* DDIM-50 / DDIM-100: ``DiffusionSampling(scheduler="ddim", steps=50)`` (the default) or
  ``steps=100`` (Song et al. 2021), deterministic with ``eta=0``.
* Classifier-free guidance as in our sampler: ``uncond + guidance_scale * (cond - uncond)``
  (default 1.5; 1 turns it off), the two predictions in one batch of 2: ``2 * steps``
  network evaluations per ROI.

`denoise` is the one reverse-diffusion loop, shared with the latent baseline
(`tumoraug.baselines.latent_diffusion`): sample ``j`` starts from noise drawn on the CPU from
its own `torch.Generator` (its seed), which also draws every step's noise, and the UNet runs
on one sample at a time, so that a volume depends only on its label, its seed and the
settings, never on the batch (batched 3D convolutions differ in the last bits). The
scheduler's arithmetic runs in float32 on the CPU; the UNet runs under bf16 autocast on
CUDA (and on the CPU with ``cpu_bf16``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from tumoraug.config import Config, check
from tumoraug.device import autocast
from tumoraug.errors import CheckpointError, ConfigError
from tumoraug.generators import FolderGenerator
from tumoraug.models.diffusion import SCHEDULERS, DiffusionConfig, DiffusionUNet3D, noise_scheduler
from tumoraug.sampling import GuidedSteps, SamplingConfig, make_rngs

UNET_DIR = "unet"


@dataclasses.dataclass
class DiffusionSampling(GuidedSteps, Config):
    """How a diffusion baseline samples: the only place where its sampling defaults live.

    ``scheduler`` ``"ddpm"`` (ancestral, meant with ``steps`` = the model's 1000 training
    steps) or ``"ddim"``; ``steps`` reverse steps; ``guidance_scale`` of classifier-free
    guidance (1 turns it off; the default is our sampler's, `SamplingConfig`); ``eta`` the
    DDIM noise (0: deterministic given the initial noise; DDPM draws its own). Presets:
    ``"ddpm1000"``, ``"ddim50"``, ``"ddim100"``.
    """

    scheduler: str = "ddim"
    steps: int = 50
    guidance_scale: float = SamplingConfig.guidance_scale
    eta: float = 0.0

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "ddpm1000": {"scheduler": "ddpm", "steps": 1000},
        "ddim50": {"scheduler": "ddim", "steps": 50},
        "ddim100": {"scheduler": "ddim", "steps": 100},
    }

    def validate(self) -> None:
        name = type(self).__name__
        check(
            self.scheduler in SCHEDULERS,
            name, "scheduler", f"one of {', '.join(SCHEDULERS)}", self.scheduler,
        )  # fmt: skip
        check(
            isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 1,
            name, "steps", "an int >= 1", self.steps,
        )  # fmt: skip
        for field in ("guidance_scale", "eta"):
            value = getattr(self, field)
            check(
                isinstance(value, int | float) and math.isfinite(value) and value >= 0,
                name, field, "a finite number >= 0", value,
            )  # fmt: skip
        check(
            self.scheduler == "ddim" or self.eta == 0,
            name, "eta", "0 with scheduler='ddpm' (eta is the DDIM noise)", self.eta,
        )  # fmt: skip


@torch.no_grad()
def denoise(
    unet: nn.Module,
    labels: Sequence[int],
    rngs: Sequence[torch.Generator],
    sampling: DiffusionSampling,
    *,
    clip_sample: bool,
    cpu_bf16: bool = False,
) -> torch.Tensor:
    """Reverse diffusion from noise: ``(N, *unet.config.sample_shape)`` float32 on the CPU.

    ``unet`` a `DiffusionUNet3D`; ``labels`` class indices, one `torch.Generator` per sample
    in ``rngs`` (CPU: the initial noise and every step's noise); ``clip_sample`` clamps the
    clean-volume estimate of each step to [-1, 1]. See the module docstring for why samples
    run one at a time.
    """
    if len(rngs) != len(labels):
        raise ValueError(f"got {len(rngs)} rngs for {len(labels)} samples: one rng per sample")
    config: DiffusionConfig = unet.config
    device = next(unet.parameters()).device
    scheduler = noise_scheduler(config, sampling.scheduler, clip_sample=clip_sample)
    scheduler.set_timesteps(sampling.steps)
    extra = {"eta": sampling.eta} if sampling.scheduler == "ddim" else {}
    samples = [torch.zeros(0, *config.sample_shape)]
    for label, rng in zip(labels, rngs, strict=True):
        classes = [int(label), config.null_class] if sampling.guided else [int(label)]
        classes_t = torch.tensor(classes, device=device)
        x = torch.randn(1, *config.sample_shape, generator=rng)  # (1, C, S, S, S) on the CPU
        for t in scheduler.timesteps.tolist():
            inputs = x.to(device).repeat(len(classes), 1, 1, 1, 1)
            steps = torch.full((len(classes),), t, dtype=torch.long, device=device)
            with autocast(device, cpu_bf16=cpu_bf16):
                eps = unet(inputs, steps, classes_t).float().cpu()
            if sampling.guided:  # rows: (cond, uncond)
                eps = eps[1:] + sampling.guidance_scale * (eps[:1] - eps[1:])
            x, _ = scheduler.step(eps, t, x, generator=rng, **extra)
        samples.append(x)
    return torch.cat(samples)


class DiffusionGenerator(FolderGenerator):
    """What both diffusion baselines share: a ``unet/`` component, `DiffusionSampling`
    settings (checked against the model's training steps) and the `denoise` loop."""

    sampling_class = DiffusionSampling

    @property
    def unet_config(self) -> DiffusionConfig:
        """Architecture and noise schedule of the UNet (read without loading weights)."""
        return self._configs[UNET_DIR]

    @property
    def unet(self) -> DiffusionUNet3D:
        """The `DiffusionUNet3D` (loads the weights if needed)."""
        return self.models[UNET_DIR]  # type: ignore[return-value]

    def check_sampling(self, sampling: Any) -> DiffusionSampling:
        """This generator's `DiffusionSampling` for ``sampling`` (None: the defaults; a dict:
        overrides), with at most as many steps as the model was trained with."""
        sampling = super().check_sampling(sampling)
        limit = self.unet_config.num_train_timesteps
        if sampling.steps > limit:
            raise ConfigError(
                f"DiffusionSampling.steps: expected at most {limit} (the model's "
                f"num_train_timesteps), got {sampling.steps}"
            )
        return sampling

    def _manifest_extra(self) -> dict[str, Any]:
        return {"num_train_timesteps": self.unet_config.num_train_timesteps}

    def _denoise(
        self, labels: list[int], seeds: list[int], sampling: DiffusionSampling, *, clip: bool
    ) -> torch.Tensor:
        return denoise(
            self.unet, labels, make_rngs(seeds), sampling, clip_sample=clip,
            cpu_bf16=self.cpu_bf16,
        )  # fmt: skip


class DDPMGenerator(DiffusionGenerator):
    """Class-conditional ROIs from a `DiffusionUNet3D` trained in image space.

    Build it with `from_pretrained` (lazy) or from a live network
    ``DDPMGenerator(unet, device="auto")``; ``cpu_bf16=True`` runs the UNet under bf16
    autocast on the CPU too (CUDA always uses it). Its settings are a `DiffusionSampling`.
    """

    model_type = "ddpm_generator"

    def __init__(
        self, unet: DiffusionUNet3D, *, device: str | torch.device = "auto", cpu_bf16: bool = False
    ) -> None:
        super().__init__({UNET_DIR: unet}, device=device, cpu_bf16=cpu_bf16)

    @classmethod
    def _read_configs(cls, root: Path) -> dict[str, Config]:
        return {UNET_DIR: DiffusionUNet3D.load_config(root / UNET_DIR)}

    @classmethod
    def _check_configs(cls, configs: dict[str, Any], source: str) -> None:
        scale = configs[UNET_DIR].scale_factor
        if scale != 1:
            raise CheckpointError(
                f"{source}: the UNet has scale_factor {scale}, an image-space DDPM works on "
                "[-1, 1] ROIs (scale_factor 1); is it a latent diffusion UNet?"
            )

    def _load_models(self, root: Path) -> dict[str, nn.Module]:
        return {UNET_DIR: DiffusionUNet3D.from_pretrained(root / UNET_DIR, device=self._device)}

    def _shape(self) -> DiffusionConfig:
        return self.unet_config

    def _sample(self, labels: list[int], seeds: list[int], sampling: Any) -> torch.Tensor:
        return self._denoise(labels, seeds, sampling, clip=True)
