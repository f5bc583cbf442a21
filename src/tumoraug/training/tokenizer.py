"""Training of the stage-1 tokenizer (`VQGAN3D` + `PatchDiscriminator3D`).

`train_tokenizer` builds the models from a `TokenizerConfig`, wraps them in a
`TokenizerTask` and hands it to the shared engine `tumoraug.training.loop.fit`, which does
devices, mixed precision, accumulation, checkpoints, resume, DDP and logging.

The loss of one batch ``x`` (ROIs) with tumor masks ``m``::

    nll    = recon_weight * |x - x_rec|_1 + perceptual_weight * P(x, x_rec)
    L_vq   = nll + codebook/commitment
           + importance_weight * mean_b (mean(s_b) - importance_budget)²
           + importance_tumor_weight * mean (s - tumor fraction per token)²
           + [step >= disc_start] * lambda * (-mean D(x_rec))
    L_D    = hinge(D(x), D(x_rec))                      (from disc_start on)

with ``lambda`` the adaptive weight of Taming Transformers (`adaptive_weight`). ``P`` is an
optional perceptual distance computed by a user-supplied feature network (`PerceptualLoss`):
no pretrained 3D network can be downloaded here, so it is off unless you pass one. Every
``restart_every`` steps, codes unused since the previous restart are moved onto encoder
outputs, and the share of the codebook used in that window is logged as ``codebook_used``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tumoraug.config import TokenizerConfig
from tumoraug.data import subject_tensors
from tumoraug.errors import ConfigError
from tumoraug.models.discriminator import (
    PatchDiscriminator3D,
    adaptive_weight,
    generator_loss,
    hinge_d_loss,
)
from tumoraug.models.vqgan import VQGAN3D
from tumoraug.training.loop import FitResult, StepContext, StepOutput, TrainingTask, fit
from tumoraug.viz import save_montage


def collate_rois(items: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack ROI dataset items into ``(image (B,C,S,S,S), seg (B,1,S,S,S), label (B,))``."""
    parts = [subject_tensors(item) for item in items]
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


class PerceptualLoss(nn.Module):
    """LPIPS-style distance from a frozen, user-supplied 3D feature network.

    ``features(x)`` must return one tensor or a sequence of feature maps; the loss is the
    mean over maps of the squared difference of channel-normalised features. The network
    is frozen (no gradients to its weights) and used in eval mode.
    """

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.features(x), self.features(y)
        if isinstance(fx, torch.Tensor):
            fx, fy = [fx], [fy]
        terms = [
            (F.normalize(a, dim=1, eps=1e-6) - F.normalize(b, dim=1, eps=1e-6)).pow(2).mean()
            for a, b in zip(fx, fy, strict=True)
        ]
        return torch.stack(terms).mean()


class TokenizerTask(TrainingTask):
    """The stage-1 objective (see the module docstring) as a `TrainingTask`."""

    def __init__(
        self,
        model: VQGAN3D,
        *,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        perceptual_net: nn.Module | None = None,
    ) -> None:
        self.model = model
        self.config = model.config
        self.lr, self.betas = lr, betas
        c = self.config
        self.discriminator = PatchDiscriminator3D(c.in_channels, c.disc_channels, c.disc_layers)
        if c.perceptual_weight > 0 and perceptual_net is None:
            raise ConfigError(
                "TokenizerConfig.perceptual_weight: > 0 needs a perceptual_net (a feature "
                "network with your own weights); none can be downloaded"
            )
        self.perceptual = PerceptualLoss(perceptual_net) if perceptual_net is not None else None
        self._last_z_e: torch.Tensor | None = None

    def modules(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"tokenizer": self.model}
        if self.config.disc_weight > 0:
            modules["discriminator"] = self.discriminator
        return modules

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        optimizers = {
            "tokenizer": torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=self.betas)
        }
        if "discriminator" in modules:
            optimizers["discriminator"] = torch.optim.Adam(
                self.discriminator.parameters(), lr=self.lr, betas=self.betas
            )
        return optimizers

    def training_step(self, batch: Any, ctx: StepContext) -> StepOutput:
        c = self.config
        image, seg, _ = batch
        out = ctx.modules["tokenizer"](image)
        rec = out.reconstruction
        l1 = (image - rec.float()).abs().mean()
        nll = c.recon_weight * l1
        metrics: dict[str, Any] = {"l1": l1, "quant": out.quant_loss}
        if self.perceptual is not None and c.perceptual_weight > 0:
            perceptual = self.perceptual.to(image.device)(image, rec)
            nll = nll + c.perceptual_weight * perceptual
            metrics["perceptual"] = perceptual
        s = out.importance.float()
        budget = (s.mean(dim=(1, 2, 3)) - c.importance_budget).pow(2).mean()
        loss = nll + out.quant_loss + c.importance_weight * budget
        metrics |= {"budget": budget, "importance_mean": s.mean()}
        if c.importance_tumor_weight > 0:
            fraction = F.avg_pool3d((seg > 0).float(), c.downsample_factor).squeeze(1)
            align = (s - fraction).pow(2).mean()
            loss = loss + c.importance_tumor_weight * align
            metrics["align"] = align
        losses = {"tokenizer": loss}
        if "discriminator" in ctx.modules and ctx.step >= c.disc_start:
            g_loss = generator_loss(self.discriminator(rec))
            weight = adaptive_weight(nll, g_loss, self.model.last_layer, c.disc_weight)
            losses["tokenizer"] = loss + weight * g_loss
            logits = ctx.modules["discriminator"](torch.cat([image, rec.detach()]))
            real, fake = logits.chunk(2)
            losses["discriminator"] = hinge_d_loss(real, fake)
            metrics |= {"g_loss": g_loss, "g_weight": weight}
        metrics |= {"perplexity": out.perplexity, "batch_codes_used": out.fraction_used}
        self._last_z_e = out.z_e.detach()
        return StepOutput(losses, metrics)

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        every = self.config.restart_every
        if not every or (ctx.step + 1) % every or self._last_z_e is None:
            return {}
        quantizer = self.model.quantizer
        stats = torch.stack([(quantizer.usage > 0).float().mean(), torch.zeros(())]).to(
            quantizer.usage.device
        )
        if ctx.is_main:
            stats[1] = quantizer.restart_dead_codes(self._last_z_e, ctx.generator(salt=1))
        if ctx.world_size > 1:
            dist.broadcast(quantizer.codebook.data, 0)
            dist.broadcast(quantizer.usage, 0)
            dist.broadcast(stats, 0)
        return {"codebook_used": float(stats[0]), "codes_restarted": float(stats[1])}

    def save_images(self, batch: Any, ctx: StepContext, path: Path) -> None:
        image = batch[0][:4]
        rec = self.model(image).reconstruction.float().clamp(-1, 1)
        rows = [v for pair in zip(image, rec, strict=True) for v in pair]
        labels = [f"{kind} {i}" for i in range(len(image)) for kind in ("input", "recon")]
        save_montage(rows, path, row_labels=labels)


def train_tokenizer(
    config: TokenizerConfig | str,
    data: Dataset | str | Path,
    output_dir: str | Path,
    *,
    max_steps: int = 1000,
    batch_size: int = 2,
    lr: float = 1e-4,
    device: str | torch.device = "auto",
    seed: int = 0,
    resume: bool = True,
    grad_accum_steps: int = 1,
    gradient_checkpointing: bool = False,
    mixed_precision: bool = True,
    checkpoint_every: int = 500,
    log_every: int = 10,
    image_every: int = 100,
    num_workers: int = 0,
    max_grad_norm: float | None = None,
    warmup_steps: int = 0,
    perceptual_net: nn.Module | None = None,
    progress: bool = True,
) -> FitResult:
    """Train a `VQGAN3D` on ROIs; the final model is written to ``output_dir/tokenizer``.

    ``config`` is a `TokenizerConfig` or a preset name; ``data`` an ``ROIDataset``, a cache
    folder, or any dataset whose items `tumoraug.data.subject_tensors` understands. The
    model is initialised from ``seed``; with ``resume`` the newest checkpoint in
    ``output_dir/checkpoints`` is continued exactly. The other options are those of
    `tumoraug.training.loop.fit`. Load the result with
    ``VQGAN3D.from_pretrained(output_dir / "tokenizer")``.
    """
    if isinstance(config, str):
        config = TokenizerConfig.preset(config)
    if isinstance(data, str | Path):
        from tumoraug.data import ROIDataset

        data = ROIDataset(data)
    image, _, _ = subject_tensors(data[0])
    expected = (config.in_channels, *[config.roi_size] * 3)
    if tuple(image.shape[1:]) != expected:
        raise ConfigError(
            f"TokenizerConfig: expects ROIs of shape {expected} (in_channels, roi_size³), the "
            f"data has {tuple(image.shape[1:])}; set roi_size / in_channels (CLI: --roi-size)"
        )
    torch.manual_seed(seed)
    task = TokenizerTask(VQGAN3D(config), lr=lr, perceptual_net=perceptual_net)
    return fit(
        task,
        data,
        output_dir,
        max_steps=max_steps,
        batch_size=batch_size,
        seed=seed,
        device=device,
        grad_accum_steps=grad_accum_steps,
        max_grad_norm=max_grad_norm,
        warmup_steps=warmup_steps,
        mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        image_every=image_every,
        resume=resume,
        num_workers=num_workers,
        collate_fn=collate_rois,
        progress=progress,
    )
