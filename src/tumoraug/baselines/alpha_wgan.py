"""The 3D-αWGAN baseline as a generator: one `AlphaWGAN` folder behind the shared interface.

A model folder holds ``tumoraug.json`` and ``model/`` (``config.json`` +
``model.safetensors`` of `tumoraug.models.alpha_wgan.AlphaWGAN`: all four networks, so that
the folder is also the trained state of the baseline; sampling runs the generator only).
Sample ``j`` is ``G(noise_scale * z_j, y_j)`` with ``z_j ~ N(0, I)`` drawn on the CPU from
sample ``j``'s own `torch.Generator`, and each sample goes through the network on its own
(a batched 3D convolution differs in the last float bits with the batch size): a volume
depends only on its label, its seed and the `LatentSampling` settings.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tumoraug.config import Config, check
from tumoraug.device import autocast
from tumoraug.generators import FolderGenerator
from tumoraug.models.alpha_wgan import AlphaWGAN, AlphaWGANConfig
from tumoraug.sampling import make_rngs

MODEL_DIR = "model"


@dataclasses.dataclass
class LatentSampling(Config):
    """How an `AlphaWGANGenerator` samples: ``noise_scale`` is the standard deviation of the
    latent draw (1 is the prior the model was trained on; below 1 trades diversity for
    typicality, like the truncation trick)."""

    noise_scale: float = 1.0

    def validate(self) -> None:
        check(
            isinstance(self.noise_scale, int | float)
            and not isinstance(self.noise_scale, bool)
            and math.isfinite(self.noise_scale)
            and self.noise_scale > 0,
            type(self).__name__, "noise_scale", "a finite number > 0", self.noise_scale,
        )  # fmt: skip

    @property
    def network_evaluations(self) -> int:
        """Network evaluations per sample: one pass of the generator."""
        return 1


class AlphaWGANGenerator(FolderGenerator):
    """Class-conditional ROIs from a trained 3D-αWGAN (Kwon et al. 2019).

    Build it from a live model, ``AlphaWGANGenerator(model, device="auto")``, or open a
    folder with `from_pretrained` / `tumoraug.open_generator`; ``cpu_bf16=True`` runs the
    generator under bf16 autocast on the CPU too (CUDA always uses it). Its sampling
    settings are a `LatentSampling`.
    """

    model_type = "alpha_wgan_generator"
    format_version = 1
    sampling_class = LatentSampling

    def __init__(
        self,
        model: AlphaWGAN,
        *,
        device: str | torch.device = "auto",
        cpu_bf16: bool = False,
    ) -> None:
        super().__init__({MODEL_DIR: model}, device=device, cpu_bf16=cpu_bf16)

    @classmethod
    def _read_configs(cls, root: Path) -> dict[str, Config]:
        return {MODEL_DIR: AlphaWGAN.load_config(root / MODEL_DIR)}

    def _load_models(self, root: Path) -> dict[str, nn.Module]:
        return {MODEL_DIR: AlphaWGAN.from_pretrained(root / MODEL_DIR, device=self._device)}

    def _shape(self) -> AlphaWGANConfig:
        return self.config

    def _manifest_extra(self) -> dict[str, Any]:
        return {"latent_dim": self.config.latent_dim}

    @property
    def config(self) -> AlphaWGANConfig:
        """The architecture (read from the folder without loading weights)."""
        return self._configs[MODEL_DIR]

    @property
    def model(self) -> AlphaWGAN:
        """The `AlphaWGAN` (loads the weights if needed)."""
        return self.models[MODEL_DIR]  # type: ignore[return-value]

    @torch.no_grad()
    def _sample(
        self, labels: list[int], seeds: list[int], sampling: LatentSampling
    ) -> torch.Tensor:
        model = self.model
        latent = self.config.latent_dim
        volumes = []
        with autocast(self._device, cpu_bf16=self._cpu_bf16):
            for label, rng in zip(labels, make_rngs(seeds), strict=True):
                z = torch.randn(1, latent, generator=rng) * sampling.noise_scale  # CPU draw
                y = torch.tensor([label], dtype=torch.long)
                volume = model.generate(z.to(self._device), y.to(self._device))
                volumes.append(volume.float().cpu())  # (1, C, S, S, S)
        return torch.cat([self._no_volumes(), *volumes])
