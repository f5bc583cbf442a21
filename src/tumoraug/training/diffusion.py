"""Training of the diffusion baselines: noise prediction on ROIs or on tokenizer latents.

Both baselines train a `DiffusionUNet3D` with one `DiffusionTask` through the shared engine
`tumoraug.training.loop.fit` (devices, bf16 on CUDA, accumulation, checkpoints, exact resume,
DDP, progress, ``metrics.jsonl``). The loss of one batch ``x`` with grades ``y``: a step
``t`` is drawn uniformly from the ``num_train_timesteps`` of the forward process and noise
``eps`` from N(0, I); MONAI's ``DDPMScheduler.add_noise`` makes ``x_t``; each grade is
replaced by the null class with probability ``class_dropout`` (so that one network also
learns the unconditional model of classifier-free guidance); the loss is
``|eps - unet(x_t, t, y)|²`` (or ``|.|₁``, `DiffusionRecipe.loss`). All draws come from
``ctx.rng``, so a resumed run continues exactly.

* `train_ddpm`: image space, on the ROIs themselves (``tumoraug.baselines.ddpm``).
* `train_latent_diffusion`: on the continuous latents of a trained tokenizer
  (``tumoraug.baselines.latent_diffusion``): every ROI is encoded once, before training, into
  ``output_dir/latents.safetensors`` (re-used while the tokenizer and the data are
  unchanged), and the latents are scaled by ``1 / std`` of the training latents.

At the end ``output_dir`` is a complete generator folder: open it with
`tumoraug.generators.open_generator`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.utils.data import TensorDataset

from tumoraug.baselines.ddpm import DDPMGenerator
from tumoraug.baselines.latent_diffusion import LatentDiffusionGenerator
from tumoraug.checkpoint import atomic_save_tensors
from tumoraug.config import Config, check
from tumoraug.data import subject_tensors
from tumoraug.device import autocast, resolve_device
from tumoraug.errors import ConfigError, DataError
from tumoraug.generators import MANIFEST_NAME
from tumoraug.models.diffusion import DiffusionConfig, DiffusionUNet3D, noise_scheduler
from tumoraug.training.checkpoints import check_resume, data_fingerprint, run_record
from tumoraug.training.config import TrainConfig
from tumoraug.training.corpus import as_dataset, as_tokenizer, tokenizer_fingerprint
from tumoraug.training.grades import per_grade_means
from tumoraug.training.loop import FitResult, StepContext, StepOutput, TrainingTask, fit
from tumoraug.training.tokenizer import check_roi_shape, collate_rois, training_rois

LATENTS_NAME = "latents.safetensors"
LOSSES = ("mse", "l1")


@dataclasses.dataclass
class DiffusionRecipe(Config):
    """How a diffusion UNet is trained: class dropout, the noise-prediction loss, AdamW.

    ``class_dropout`` is the share of samples trained as the null class (classifier-free
    guidance); ``loss`` ``"mse"`` (Ho et al. 2020) or ``"l1"``; ``weight_decay`` and
    ``betas`` of AdamW.
    """

    class_dropout: float = 0.1
    loss: str = "mse"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)

    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def validate(self) -> None:
        name = type(self).__name__
        check(
            0 <= self.class_dropout <= 1,
            name, "class_dropout", "a number in [0, 1]", self.class_dropout,
        )  # fmt: skip
        check(self.loss in LOSSES, name, "loss", f"one of {', '.join(LOSSES)}", self.loss)
        check(self.weight_decay >= 0, name, "weight_decay", "a number >= 0", self.weight_decay)
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            name, "betas", "two numbers in [0, 1)", self.betas,
        )  # fmt: skip


class DiffusionTask(TrainingTask):
    """The noise-prediction objective (see the module docstring) as a `TrainingTask`.

    Batches are ``(x (B, C, S, S, S), labels (B,))``: ROIs, or unscaled latents (the task
    multiplies them by ``config.scale_factor``).
    """

    def __init__(self, unet: DiffusionUNet3D, recipe: DiffusionRecipe, *, lr: float) -> None:
        self.unet = unet
        self.config: DiffusionConfig = unet.config
        self.recipe = recipe
        self.lr = lr
        self.scheduler = noise_scheduler(self.config)

    def describe(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "recipe": self.recipe.to_dict()}

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(
            self.unet.parameters(), lr=self.lr, betas=tuple(self.recipe.betas),
            weight_decay=self.recipe.weight_decay,
        )  # fmt: skip
        return {"unet": optimizer}

    def training_step(self, batch: Any, ctx: StepContext) -> StepOutput:
        c, r = self.config, self.recipe
        x, labels = batch
        x = x.float() * c.scale_factor
        rng = ctx.rng(0)
        batch_size = x.shape[0]
        noise = torch.randn(x.shape, generator=rng).to(x.device)
        steps = torch.randint(c.num_train_timesteps, (batch_size,), generator=rng).to(x.device)
        drop = (torch.rand(batch_size, generator=rng) < r.class_dropout).to(x.device)
        noisy = self.scheduler.add_noise(x, noise, steps)
        predicted = ctx.modules["unet"](noisy, steps, labels.masked_fill(drop, c.null_class))
        error = predicted.float() - noise
        error = error.pow(2) if r.loss == "mse" else error.abs()
        per_sample = error.flatten(1).mean(1)  # (B,)
        metrics = per_grade_means(per_sample.detach(), labels, r.loss)
        return StepOutput({"unet": per_sample.mean()}, metrics)


def collate_images(items: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """ROI dataset items -> ``(image (B, C, S, S, S), label (B,))``: `collate_rois` without
    the segmentations."""
    image, _, label = collate_rois(items)
    return image, label


def _rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def train_ddpm(
    config: DiffusionConfig | str,
    data: Any,
    output_dir: str | Path,
    train: TrainConfig | None = None,
    recipe: DiffusionRecipe | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """Train the image-space DDPM baseline on ROIs; ``output_dir`` becomes a
    `tumoraug.baselines.ddpm.DDPMGenerator` folder.

    ``config``: a `DiffusionConfig` or a preset name (``"small32"``, ``"tiny"``) whose
    ``roi_size`` and ``in_channels`` must match the ROIs (a `ConfigError` names both);
    ``data``: a ROI cache folder, an ``ROIDataset``, or any dataset whose items
    `tumoraug.data.subject_tensors` reads; ``train`` defaults to ``TrainConfig()``. A ROI
    cache's modality names are recorded in the saved config.
    """
    if isinstance(config, str):
        config = DiffusionConfig.preset(config)
    recipe = recipe or DiffusionRecipe()
    train = train or TrainConfig()
    if config.scale_factor != 1:
        raise ConfigError(
            f"DiffusionConfig.scale_factor: expected 1 for the image-space DDPM (ROIs are in "
            f"[-1, 1]), got {config.scale_factor}; it is set by train_latent_diffusion"
        )
    data, config = training_rois(data, config, "the UNet")
    torch.manual_seed(train.seed)
    task = DiffusionTask(DiffusionUNet3D(config), recipe, lr=train.lr)
    result = fit(
        task, data, output_dir, train, resume=resume, collate_fn=collate_images,
        progress=progress, identity={"data": data_fingerprint(data)},
    )  # fmt: skip
    if _rank0():
        DDPMGenerator(task.unet, device="cpu").save_pretrained(output_dir)
    return result


def as_autoencoder(source: Any) -> Any:
    """A `VQGAN3D`: itself, loaded from a tokenizer folder (or Hub id), or the ``tokenizer/``
    of a `TumorGenerator` model folder."""
    if isinstance(source, str | Path) and (Path(source) / MANIFEST_NAME).is_file():
        from tumoraug.generator import TOKENIZER_DIR

        return as_tokenizer(Path(source) / TOKENIZER_DIR)
    return as_tokenizer(source)


@torch.no_grad()
def encode_latents(
    autoencoder: Any,
    data: Any,
    path: str | Path | None = None,
    *,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    cpu_bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ROI of ``data`` encoded once: ``(latents (N, embed_dim, d, h, w) float32, labels
    (N,) int64)``, the encoder's output before quantisation.

    With ``path`` they are written there, and an existing file is re-used when its key (the
    autoencoder's weights and the data's fingerprint) still matches; datasets without a
    manifest are always re-encoded, and so is a damaged file.
    """
    data_key = data_fingerprint(data)
    key = ""
    if data_key is not None:
        key = hashlib.sha256((tokenizer_fingerprint(autoencoder) + data_key).encode()).hexdigest()
    if path is not None and key and Path(path).is_file():
        try:
            with safe_open(str(path), framework="pt") as handle:
                if (handle.metadata() or {}).get("key") == key:
                    return handle.get_tensor("latents"), handle.get_tensor("labels")
        except (SafetensorError, OSError):
            pass  # a damaged file is encoded again
    device = resolve_device(device)
    was_training = autoencoder.training
    autoencoder.to(device).eval()
    latents, labels = [], []
    try:
        for start in range(0, len(data), batch_size):
            items = [
                subject_tensors(data[i]) for i in range(start, min(start + batch_size, len(data)))
            ]
            images = torch.cat([item[0] for item in items]).to(device)
            with autocast(device, cpu_bf16=cpu_bf16):
                latents.append(autoencoder.encoder(images).float().cpu())
            labels.append(torch.cat([item[2] for item in items]).long())
    finally:
        autoencoder.train(was_training)
    out = torch.cat(latents), torch.cat(labels)
    if path is not None:
        atomic_save_tensors({"latents": out[0], "labels": out[1]}, path, metadata={"key": key})
    return out


def train_latent_diffusion(
    config: DiffusionConfig | str,
    autoencoder: Any,
    data: Any,
    output_dir: str | Path,
    train: TrainConfig | None = None,
    recipe: DiffusionRecipe | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """Train the latent diffusion baseline; ``output_dir`` becomes a
    `tumoraug.baselines.latent_diffusion.LatentDiffusionGenerator` folder.

    ``autoencoder``: a trained `VQGAN3D`, its folder, or a `TumorGenerator` model folder
    (its ``tokenizer/``); ``data`` ROIs it encodes (a cache folder or dataset; their shape
    must be the autoencoder's, a `ConfigError` names both). ``config``: a `DiffusionConfig`
    or a preset name (``"latent_small32"``, ``"tiny"``); its ``in_channels`` and
    ``roi_size`` become the latents' ``embed_dim`` and token grid edge, its
    ``scale_factor`` 1 / std of the training latents. ``train`` defaults to
    ``TrainConfig()``.
    """
    if isinstance(config, str):
        config = DiffusionConfig.preset(config)
    recipe = recipe or DiffusionRecipe()
    train = train or TrainConfig()
    output_dir = Path(output_dir)
    source = str(autoencoder) if isinstance(autoencoder, str | Path) else "the autoencoder"
    autoencoder, data = as_autoencoder(autoencoder), as_dataset(data)
    a = autoencoder.config
    check_roi_shape(
        data, (a.in_channels, *[a.roi_size] * 3), str(getattr(data, "cache_dir", "data")), source
    )
    identity = {"data": data_fingerprint(data), "autoencoder": tokenizer_fingerprint(autoencoder)}
    check_resume(output_dir, run_record(None, train, identity), train, resume, partial=True)
    latents, labels = encode_latents(
        autoencoder, data, output_dir / LATENTS_NAME, batch_size=train.batch_size,
        device=train.device, cpu_bf16=train.cpu_bf16,
    )  # fmt: skip
    try:
        config = config.replace(
            in_channels=a.embed_dim, roi_size=a.token_grid[0],
            scale_factor=float(1 / latents.std().clamp_min(1e-6)), modalities=(),
        )  # fmt: skip
    except ConfigError as exc:
        raise ConfigError(
            f"{source}: latents {(a.embed_dim, *a.token_grid)} do not fit the UNet: {exc}"
        ) from None
    torch.manual_seed(train.seed)
    task = DiffusionTask(DiffusionUNet3D(config), recipe, lr=train.lr)
    result = fit(
        task, TensorDataset(latents, labels), output_dir, train, resume=resume,
        progress=progress, identity=identity,
    )  # fmt: skip
    if _rank0():
        LatentDiffusionGenerator(autoencoder, task.unet, device="cpu").save_pretrained(output_dir)
    return result


def _settings(
    preset: str,
    config_file: str | Path | None,
    recipe: dict[str, Any] | None,
    train: dict[str, Any] | None,
) -> tuple[DiffusionConfig, TrainConfig, DiffusionRecipe]:
    """The architecture (preset or file), the `TrainConfig` and the recipe of a CLI run."""
    config = (
        DiffusionConfig.from_json(config_file) if config_file else DiffusionConfig.preset(preset)
    )
    return config, TrainConfig.from_dict(train or {}), DiffusionRecipe.from_dict(recipe or {})


def _cache_dir(data: str | Path) -> Path:
    path = Path(data)
    if not path.is_dir():
        raise DataError(f"{path}: no ROI cache folder there (build one with tumoraug preprocess)")
    return path


def run_ddpm_training(
    data: str | Path,
    output_dir: str | Path,
    *,
    preset: str = "small32",
    config_file: str | Path | None = None,
    recipe: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """`train_ddpm` on a ROI cache folder from a preset (or a config file) and overrides of
    the `DiffusionRecipe` and the `TrainConfig`: what the CLI runs."""
    config, run, stage_recipe = _settings(preset, config_file, recipe, train)
    return train_ddpm(
        config, _cache_dir(data), output_dir, run, stage_recipe, resume=resume,
        progress=progress,
    )  # fmt: skip


def run_latent_diffusion_training(
    data: str | Path,
    output_dir: str | Path,
    *,
    autoencoder: str | Path,
    preset: str = "latent_small32",
    config_file: str | Path | None = None,
    recipe: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """`train_latent_diffusion` on a ROI cache folder with a trained tokenizer (its folder
    or a `TumorGenerator` folder), from a preset (or a config file) and overrides of the
    `DiffusionRecipe` and the `TrainConfig`: what the CLI runs."""
    config, run, stage_recipe = _settings(preset, config_file, recipe, train)
    return train_latent_diffusion(
        config, autoencoder, _cache_dir(data), output_dir, run, stage_recipe, resume=resume,
        progress=progress,
    )  # fmt: skip
