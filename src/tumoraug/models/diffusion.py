"""The denoising network of the diffusion baselines: MONAI's 3D UNet, class-conditional.

`DiffusionUNet3D` predicts the noise ``eps`` added to a volume ``x_t`` at a diffusion step
``t``, given a class index (0 LGG, 1 HGG, ``config.null_class`` for "no class", the null
class of classifier-free guidance). It is MONAI's ``DiffusionModelUNet`` behind our
checkpoint format; `noise_scheduler` builds MONAI's DDPM / DDIM scheduler with the noise
schedule the network was trained with. Both baselines use it: in image space
(`tumoraug.baselines.ddpm`, on ROIs) and in latent space (`tumoraug.baselines.latent_diffusion`,
on the tokenizer's continuous latents).

MONAI is an optional dependency (``pip install "tumoraug[baselines]"``): this is the only
module that imports it, and only when a network or a scheduler is built, so the configs and
the sampling settings load without it.
"""

from __future__ import annotations

import dataclasses
import math
from types import ModuleType
from typing import Any, ClassVar

import torch
from torch import nn

from tumoraug.checkpoint import PretrainedMixin
from tumoraug.config import Config, channel_names, check, check_modalities
from tumoraug.models.conv import use_onednn_convs

SCHEDULES = ("linear_beta", "scaled_linear_beta")
"""MONAI noise schedules a `DiffusionConfig` may name (both take ``beta_start``/``beta_end``)."""
SCHEDULERS = ("ddpm", "ddim")
"""The reverse processes `noise_scheduler` builds."""


def _monai(what: str) -> ModuleType:
    """The ``monai`` package, or an ImportError saying how to install it."""
    try:
        import monai.networks.nets
        import monai.networks.schedulers
    except ImportError as error:
        raise ImportError(
            f'{what} comes from MONAI, which is not installed: pip install "tumoraug[baselines]"'
        ) from error
    return monai


@dataclasses.dataclass
class DiffusionConfig(Config):
    """A class-conditional diffusion UNet (`DiffusionUNet3D`) and its training noise schedule.

    The UNet sees ``(in_channels, roi_size, roi_size, roi_size)`` volumes: ROIs for the
    image-space baseline, latents ``(embed_dim, *token_grid)`` for the latent one (then
    `tumoraug.training.diffusion.train_latent_diffusion` fills both from the autoencoder).
    ``channels`` are the widths of the UNet levels (each level but the last halves the
    volume), ``attention_levels`` which levels have self-attention (the middle block always
    has it), ``num_res_blocks`` residual blocks per level, ``num_head_channels`` channels per
    attention head, ``norm_num_groups`` GroupNorm groups. The class embedding has
    ``num_classes`` grades plus the null class ``num_classes``. The forward process has
    ``num_train_timesteps`` steps with betas from ``beta_start`` to ``beta_end`` along
    ``schedule``. Latents are multiplied by ``scale_factor`` (1 / std of the training
    latents, set at training time) before diffusion; image space keeps 1. ``modalities``
    names the ROI channels (image space; see `tumoraug.config.TokenizerConfig`).
    """

    roi_size: int = 32
    in_channels: int = 1
    channels: tuple[int, ...] = (24, 32, 48)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 16
    norm_num_groups: int = 8
    num_classes: int = 2
    num_train_timesteps: int = 1000
    schedule: str = "linear_beta"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    scale_factor: float = 1.0
    modalities: tuple[str, ...] = ()

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # Image space at 32³, 1.30 M parameters: within 5 % of the demo generator's 1.24 M
        # (tokenizer 0.85 M + transformer 0.39 M), the matched size of the speed comparison.
        "small32": {},
        # The demo tokenizer's 8³ x 8 latents (32³ ROIs), 0.56 M parameters: with the
        # tokenizer (0.85 M) 1.41 M, 14 % above the demo generator. Scaled-linear schedule
        # of latent diffusion (Rombach et al. 2022).
        "latent_small32": {
            "roi_size": 8,
            "in_channels": 8,
            "channels": (24, 32),
            "attention_levels": (False, True),
            "schedule": "scaled_linear_beta",
            "beta_start": 0.0015,
            "beta_end": 0.0195,
        },
        "tiny": {
            "roi_size": 16,
            "channels": (8, 16),
            "attention_levels": (False, True),
            "num_head_channels": 8,
        },
    }

    @property
    def null_class(self) -> int:
        """Class index of the unconditional (null) class used for guidance."""
        return self.num_classes

    @property
    def channel_names(self) -> tuple[str, ...]:
        """The names of the input channels (see `tumoraug.config.channel_names`)."""
        return channel_names(self.modalities, self.in_channels)

    @property
    def sample_shape(self) -> tuple[int, int, int, int]:
        """Shape ``(C, S, S, S)`` of one volume the UNet denoises."""
        return (self.in_channels, *[self.roi_size] * 3)  # type: ignore[return-value]

    def validate(self) -> None:
        name = type(self).__name__
        for field in ("roi_size", "in_channels", "num_res_blocks", "num_head_channels",
                      "norm_num_groups", "num_classes", "num_train_timesteps"):  # fmt: skip
            value = getattr(self, field)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                name, field, "a positive int", value,
            )  # fmt: skip
        check(
            len(self.channels) >= 1
            and all(isinstance(c, int) and c > 0 and c % self.norm_num_groups == 0
                    for c in self.channels),
            name, "channels", f"positive multiples of norm_num_groups={self.norm_num_groups}",
            self.channels,
        )  # fmt: skip
        check(
            len(self.attention_levels) == len(self.channels)
            and all(isinstance(a, bool) for a in self.attention_levels),
            name, "attention_levels", f"{len(self.channels)} bools, one per level",
            self.attention_levels,
        )  # fmt: skip
        attended = [c for c, a in zip(self.channels, self.attention_levels, strict=True) if a]
        check(
            all(c % self.num_head_channels == 0 for c in [*attended, self.channels[-1]]),
            name, "num_head_channels",
            f"a divisor of the attention levels' widths {attended} and of the middle block's "
            f"{self.channels[-1]}", self.num_head_channels,
        )  # fmt: skip
        factor = 2 ** (len(self.channels) - 1)
        check(
            self.roi_size % factor == 0,
            name, "roi_size", f"a multiple of 2**(len(channels) - 1) = {factor}", self.roi_size,
        )  # fmt: skip
        check(
            self.schedule in SCHEDULES, name, "schedule", f"one of {', '.join(SCHEDULES)}",
            self.schedule,
        )  # fmt: skip
        check(
            isinstance(self.beta_start, int | float) and isinstance(self.beta_end, int | float)
            and 0 < self.beta_start < self.beta_end < 1,
            name, "beta_start/beta_end", "0 < beta_start < beta_end < 1",
            (self.beta_start, self.beta_end),
        )  # fmt: skip
        check(
            isinstance(self.scale_factor, int | float)
            and math.isfinite(self.scale_factor) and self.scale_factor > 0,
            name, "scale_factor", "a finite number > 0", self.scale_factor,
        )  # fmt: skip
        check_modalities(name, self.modalities, self.in_channels)


class DiffusionUNet3D(PretrainedMixin, nn.Module):
    """Class-conditional noise-prediction UNet: ``(x_t, t, label) -> eps``.

    MONAI's ``DiffusionModelUNet`` (Pinaya et al. 2023, "Generative AI for Medical
    Imaging: extending the MONAI Framework", arXiv:2307.15208) in 3D, with a class embedding
    of ``num_classes + 1`` entries so that one network is both the conditional and the
    unconditional model of classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598),
    trained to predict the noise of the DDPM forward process (Ho et al. 2020,
    arXiv:2006.11239).

    Args:
        config: the architecture and noise schedule, a `DiffusionConfig`.
    """

    config_class = DiffusionConfig
    model_type = "diffusion_unet3d"

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        nets = _monai("DiffusionUNet3D").networks.nets
        self.config = config
        self.unet = use_onednn_convs(
            nets.DiffusionModelUNet(
                spatial_dims=3,
                in_channels=config.in_channels,
                out_channels=config.in_channels,
                num_res_blocks=config.num_res_blocks,
                channels=tuple(config.channels),
                attention_levels=tuple(config.attention_levels),
                norm_num_groups=config.norm_num_groups,
                num_head_channels=config.num_head_channels,
                num_class_embeds=config.num_classes + 1,
            )
        )

    @property
    def null_class(self) -> int:
        """Class index meaning "no class" (classifier-free guidance)."""
        return self.config.null_class

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Noisy volumes ``(B, C, S, S, S)``, steps ``(B,)`` and classes ``(B,)`` -> the
        predicted noise ``(B, C, S, S, S)``."""
        if tuple(x.shape[1:]) != self.config.sample_shape:
            raise ValueError(
                f"DiffusionUNet3D: input of shape {tuple(x.shape[1:])}, the network denoises "
                f"{self.config.sample_shape} (in_channels, roi_size³)"
            )
        return self.unet(x, timesteps, class_labels=labels)


def noise_scheduler(
    config: DiffusionConfig, kind: str = "ddpm", *, clip_sample: bool = True
) -> Any:
    """MONAI's ``DDPMScheduler`` (Ho et al. 2020) or ``DDIMScheduler`` (Song et al. 2021,
    arXiv:2010.02502) with the noise schedule of ``config``, predicting noise.

    ``clip_sample`` clamps each step's estimate of the clean volume to [-1, 1] (right for
    ROIs; latents have no fixed range). Training only needs its ``add_noise``.
    """
    if kind not in SCHEDULERS:
        raise ValueError(
            f"noise_scheduler: kind must be one of {', '.join(SCHEDULERS)}, got {kind!r}"
        )
    schedulers = _monai("the diffusion scheduler").networks.schedulers
    cls = schedulers.DDPMScheduler if kind == "ddpm" else schedulers.DDIMScheduler
    return cls(
        num_train_timesteps=config.num_train_timesteps,
        schedule=config.schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        clip_sample=clip_sample,
    )
