"""The paper's Med-Diffusion-C comparison: class-conditional diffusion on continuous latents.

Latent diffusion (Rombach et al. 2022, arXiv:2112.10752; in 3D brain MRI, Pinaya et al.
2022, arXiv:2209.07162) with our stage-1 tokenizer as the autoencoder. A model folder is
``tumoraug.json`` beside two components:

    autoencoder/   a `tumoraug.models.vqgan.VQGAN3D` (the tokenizer the latents come from)
    unet/          a `DiffusionUNet3D` on latents ``(embed_dim, *token_grid)``

The latent of a ROI is the encoder's continuous output *before* quantisation, multiplied by
the UNet's ``scale_factor`` (1 / std of the training latents, set by
`tumoraug.training.diffusion.train_latent_diffusion`). Sampling is the image-space
baseline's: `tumoraug.baselines.ddpm.denoise` with the same `DiffusionSampling` and the same
per-sample determinism, without clipping (latents have no fixed range); then each latent
is divided by ``scale_factor`` and decoded on its own.

Decoding: the VQGAN decoder was trained on unit-norm codes (the quantiser compares on the
unit sphere), so a latent is projected onto the unit sphere per position and decoded
*without* snapping to the nearest code, which keeps the baseline continuous end to end.
Measured on the demo tokenizer (``tumoraug.pretrained``) with 8 phantom ROIs of 32³ (seed
12345, not its training phantoms): normalised latents decode to L1 0.0754 / PSNR 25.2 dB,
the nearest codes (the tokenizer's own reconstruction) to 0.0797 / 24.7 dB, the raw
latents to 0.1088 / 22.4 dB; with latent noise of 0.25 std the normalised decode still
leads (0.0783 vs 0.0828).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tumoraug.baselines.ddpm import UNET_DIR, DiffusionGenerator
from tumoraug.config import Config, TokenizerConfig
from tumoraug.device import autocast
from tumoraug.errors import CheckpointError
from tumoraug.models.diffusion import DiffusionConfig, DiffusionUNet3D

AUTOENCODER_DIR = "autoencoder"


def latent_shape(autoencoder: TokenizerConfig) -> tuple[int, int, int, int]:
    """Shape ``(embed_dim, d, h, w)`` of one ROI's latent."""
    return (autoencoder.embed_dim, *autoencoder.token_grid)


class LatentDiffusionGenerator(DiffusionGenerator):
    """Class-conditional ROIs from a `DiffusionUNet3D` on a `VQGAN3D`'s continuous latents.

    Build it with `from_pretrained` (lazy) or from live networks
    ``LatentDiffusionGenerator(autoencoder, unet, device="auto")``; ``cpu_bf16=True`` runs
    both under bf16 autocast on the CPU too (CUDA always uses it). Its settings are a
    `DiffusionSampling`.
    """

    model_type = "latent_diffusion_generator"

    def __init__(
        self,
        autoencoder: nn.Module,
        unet: DiffusionUNet3D,
        *,
        device: str | torch.device = "auto",
        cpu_bf16: bool = False,
    ) -> None:
        super().__init__(
            {AUTOENCODER_DIR: autoencoder, UNET_DIR: unet}, device=device, cpu_bf16=cpu_bf16
        )

    @classmethod
    def _read_configs(cls, root: Path) -> dict[str, Config]:
        from tumoraug.models.vqgan import VQGAN3D

        return {
            AUTOENCODER_DIR: VQGAN3D.load_config(root / AUTOENCODER_DIR),
            UNET_DIR: DiffusionUNet3D.load_config(root / UNET_DIR),
        }

    @classmethod
    def _check_configs(cls, configs: dict[str, Any], source: str) -> None:
        expected = latent_shape(configs[AUTOENCODER_DIR])
        unet: DiffusionConfig = configs[UNET_DIR]
        if unet.sample_shape != expected:
            raise CheckpointError(
                f"{source}: the UNet denoises {unet.sample_shape} (in_channels, roi_size³), the "
                f"autoencoder's latents are {expected} (embed_dim, token grid)"
            )

    def _load_models(self, root: Path) -> dict[str, nn.Module]:
        from tumoraug.models.vqgan import VQGAN3D

        return {
            AUTOENCODER_DIR: VQGAN3D.from_pretrained(root / AUTOENCODER_DIR, device=self._device),
            UNET_DIR: DiffusionUNet3D.from_pretrained(root / UNET_DIR, device=self._device),
        }

    def _shape(self) -> TokenizerConfig:
        return self.autoencoder_config

    @property
    def autoencoder_config(self) -> TokenizerConfig:
        """Architecture of the autoencoder (read without loading weights)."""
        return self._configs[AUTOENCODER_DIR]

    @property
    def autoencoder(self) -> Any:
        """The `VQGAN3D` whose latents are diffused (loads the weights if needed)."""
        return self.models[AUTOENCODER_DIR]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents ``(N, embed_dim, d, h, w)`` -> raw ROIs ``(N, C, S, S, S)`` on the
        CPU, each decoded on its own after projection onto the unit sphere (module docstring)."""
        decoder = self.autoencoder.decoder
        volumes = [self._no_volumes()]
        for latent in latents:
            z = F.normalize(latent[None].to(self._device).float(), dim=1)
            with autocast(self._device, cpu_bf16=self._cpu_bf16):
                volumes.append(decoder(z).float().cpu())
        return torch.cat(volumes)

    def _manifest_extra(self) -> dict[str, Any]:
        return {
            **super()._manifest_extra(),
            "latent_shape": list(latent_shape(self.autoencoder_config)),
        }

    def _sample(self, labels: list[int], seeds: list[int], sampling: Any) -> torch.Tensor:
        latents = self._denoise(labels, seeds, sampling, clip=False)
        return self.decode(latents / self.unet_config.scale_factor)
