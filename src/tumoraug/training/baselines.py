"""``train-baseline KIND``: one entry point for the comparison systems of `tumoraug.baselines`.

Every kind trains through the shared engine (`tumoraug.training.loop.fit`: resume, DDP,
progress, ``metrics.jsonl``) on a ROI cache, and leaves a complete generator folder in the
output folder, which `tumoraug.open_generator` opens and every consumer accepts:

* ``ddpm``: class-conditional DDPM in image space (3D-Med-DDPM-style), MONAI UNet;
* ``latent-diffusion``: class-conditional diffusion on the continuous latents of a trained
  tokenizer (Med-Diffusion-C-style); needs ``autoencoder``;
* ``alpha-wgan``: class-conditional 3D-αWGAN (Kwon et al. 2019).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from tumoraug.errors import ConfigError
from tumoraug.training.loop import FitResult

BASELINES: dict[str, str] = {
    "ddpm": "tumoraug.training.diffusion:run_ddpm_training",
    "latent-diffusion": "tumoraug.training.diffusion:run_latent_diffusion_training",
    "alpha-wgan": "tumoraug.training.alpha_wgan:run_alpha_wgan_training",
}
"""Baseline kind -> the function that trains it from a ROI cache."""


def run_baseline_training(
    kind: str,
    data: str | Path,
    output_dir: str | Path,
    *,
    autoencoder: str | Path | None = None,
    preset: str = "small32",
    config_file: str | Path | None = None,
    recipe: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """Train the baseline ``kind`` on the ROI cache ``data`` into ``output_dir``.

    ``autoencoder`` (``latent-diffusion`` only): a tokenizer folder or a `TumorGenerator`
    folder whose tokenizer encodes the latents. ``recipe`` / ``train``: overrides of the
    kind's recipe and of its `TrainConfig`.
    """
    if kind not in BASELINES:
        raise ConfigError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")
    if (autoencoder is None) == (kind == "latent-diffusion"):
        raise ConfigError(
            "latent-diffusion needs the autoencoder whose latents it models (--autoencoder)"
            if autoencoder is None
            else f"--autoencoder is for latent-diffusion only, not {kind}"
        )
    module_name, _, name = BASELINES[kind].partition(":")
    try:
        run = getattr(importlib.import_module(module_name), name)
    except ImportError as exc:
        raise ConfigError(
            f"baseline {kind!r} needs an optional dependency that is missing ({exc}): "
            'pip install "tumoraug[baselines]"'
        ) from None
    extra = {"autoencoder": autoencoder} if autoencoder is not None else {}
    return run(
        data, output_dir, preset=preset, config_file=config_file, recipe=recipe, train=train,
        resume=resume, progress=progress, **extra,
    )  # fmt: skip
