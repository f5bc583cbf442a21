"""Training of the 3D-αWGAN baseline (Kwon et al. 2019) on the shared engine.

`train_alpha_wgan` builds an `AlphaWGAN` from its `AlphaWGANConfig`, wraps it in an
`AlphaWGANTask` with its `AlphaWGANRecipe` and hands it to `tumoraug.training.loop.fit`
(devices, bf16, accumulation, checkpoints, exact resume, DDP, ``metrics.jsonl``); at the end
``output_dir`` is a complete `AlphaWGANGenerator` folder.

Updates alternate as in the paper's code: ``critic_steps`` engine steps train the critics,
then one trains the encoder and generator, each step on a fresh batch. With ROIs ``x`` of
grades ``y``, codes ``z_e = E(x)``, prior draws ``z_r ~ N(0, I)``, ``x_rec = G(z_e, y)`` and
``x_rand = G(z_r, y)`` (weights are recipe fields)::

    L_EG = -mean D(x_rec, y) - mean D(x_rand, y) - mean C(z_e, y)
           + recon_weight * mean |x - x_rec|
    L_D  = mean D(x_rec, y) + mean D(x_rand, y) - 2 mean D(x, y) + GP(x~x_rand) + GP(x~x_rec)
    L_C  = mean C(z_e, y) - mean C(z_r, y) + GP(z_e~z_r)

These are the paper's equations; its released code left ``C`` out of ``L_EG`` (so the codes
were never pulled towards the prior) and stepped ``G``'s optimizer twice: neither is copied.
``GP(a~b)`` is WGAN-GP's ``gp_weight * mean((||grad||_2 - 1)²)`` at random points between
paired samples (`tumoraug.models.alpha_wgan.gradient_penalty`). The penalty runs under the
step's autocast like the rest: its double backward works in bf16, and the gradient norm is
taken in float32.

Each wrapped module is called once per step (DDP): the critics score one concatenated
batch (real, fakes and interpolates), and the encoder-generator step reaches the critics
through the plain modules, which it does not train.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from tumoraug.baselines.alpha_wgan import AlphaWGANGenerator
from tumoraug.config import Config, check
from tumoraug.models.alpha_wgan import (
    AlphaWGAN,
    AlphaWGANConfig,
    gradient_penalty,
    interpolate,
)
from tumoraug.training.checkpoints import data_fingerprint
from tumoraug.training.config import TrainConfig
from tumoraug.training.loop import FitResult, StepContext, StepOutput, TrainingTask, fit
from tumoraug.training.tokenizer import cache_config, collate_rois, training_rois
from tumoraug.viz import save_montage

PARTS = ("encoder", "generator", "discriminator", "code_discriminator")
"""The networks of an `AlphaWGAN`, trained (and checkpointed) as separate modules."""


@dataclasses.dataclass
class AlphaWGANRecipe(Config):
    """How the 3D-αWGAN is trained (see the module docstring for the losses).

    ``recon_weight`` is the L1 weight λ (paper: 10), ``gp_weight`` the gradient-penalty
    weight of both critics (10); ``critic_steps`` critic updates alternate with one
    encoder-generator update (the paper's code: 1); the critics learn at
    ``critic_lr_ratio`` times the run's ``lr`` (the paper: all at 2e-4); ``betas`` of Adam
    (the paper's code keeps Adam's defaults).

    The defaults are the paper's. On a short CPU budget they train slowly: on 16³ phantom
    ROIs (widths (16, 32), batch 4, lr 2e-4), after 800 steps the reconstructions were no
    better than the mean ROI and the codes drifted from the prior, while
    ``recon_weight=100`` with ``critic_steps=2`` (or ``critic_lr_ratio=4``) reconstructed
    (L1 0.10) and kept the codes near N(0, I).
    """

    recon_weight: float = 10.0
    gp_weight: float = 10.0
    critic_steps: int = 1
    critic_lr_ratio: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)

    def validate(self) -> None:
        name = type(self).__name__
        for field in ("recon_weight", "gp_weight"):
            value = getattr(self, field)
            check(
                isinstance(value, int | float) and value >= 0, name, field, "a number >= 0", value
            )
        check(
            isinstance(self.critic_steps, int) and self.critic_steps >= 1,
            name, "critic_steps", "an int >= 1", self.critic_steps,
        )  # fmt: skip
        check(
            isinstance(self.critic_lr_ratio, int | float) and self.critic_lr_ratio > 0,
            name, "critic_lr_ratio", "a number > 0", self.critic_lr_ratio,
        )  # fmt: skip
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            name, "betas", "two numbers in [0, 1)", self.betas,
        )  # fmt: skip

    def trains_generator(self, step: int) -> bool:
        """Whether engine step ``step`` updates the encoder and generator (else the critics)."""
        return step % (self.critic_steps + 1) == self.critic_steps


class AlphaWGANTask(TrainingTask):
    """The 3D-αWGAN objective (see the module docstring) as a `TrainingTask`."""

    def __init__(self, model: AlphaWGAN, recipe: AlphaWGANRecipe, *, lr: float) -> None:
        self.model = model
        self.recipe = recipe
        self.lr = lr

    def describe(self) -> dict[str, Any]:
        return {"config": self.model.config.to_dict(), "recipe": self.recipe.to_dict()}

    def modules(self) -> dict[str, nn.Module]:
        return {name: getattr(self.model, name) for name in PARTS}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        betas = tuple(self.recipe.betas)
        critic_lr = self.lr * self.recipe.critic_lr_ratio
        autoencoder = [*modules["encoder"].parameters(), *modules["generator"].parameters()]
        return {
            "generator": torch.optim.Adam(autoencoder, lr=self.lr, betas=betas),
            "discriminator": torch.optim.Adam(
                modules["discriminator"].parameters(), lr=critic_lr, betas=betas
            ),
            "code_discriminator": torch.optim.Adam(
                modules["code_discriminator"].parameters(), lr=critic_lr, betas=betas
            ),
        }

    def training_step(self, batch: Any, ctx: StepContext) -> StepOutput:
        image, _, labels = batch
        prior = torch.randn(len(image), self.model.config.latent_dim, generator=ctx.rng(0))
        prior = prior.to(image.device)
        if self.recipe.trains_generator(ctx.step):
            return self._generator_step(image, labels, prior, ctx)
        return self._critic_step(image, labels, prior, ctx)

    def _generator_step(
        self, image: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor, ctx: StepContext
    ) -> StepOutput:
        codes = ctx.modules["encoder"](image).float()  # (B, latent)
        both = labels.repeat(2)
        fakes = ctx.modules["generator"](torch.cat([codes, prior]), both)  # (2B, C, S, S, S)
        l1 = (fakes[: len(image)].float() - image).abs().mean()
        image_scores = ctx.raw["discriminator"](fakes, both).float()  # trains E and G only
        code_scores = ctx.raw["code_discriminator"](codes, labels).float()
        adversarial = -2 * image_scores.mean() - code_scores.mean()
        loss = self.recipe.recon_weight * l1 + adversarial
        return StepOutput({"generator": loss}, {"l1": l1, "adversarial": adversarial})

    def _critic_step(
        self, image: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor, ctx: StepContext
    ) -> StepOutput:
        batch, weight = len(image), self.recipe.gp_weight
        with torch.no_grad():
            codes = ctx.raw["encoder"](image).float()
            fakes = ctx.raw["generator"](torch.cat([codes, prior]), labels.repeat(2)).float()
        rng = ctx.rng(1)
        mixes = interpolate(torch.cat([image, image]), fakes, rng)  # x~x_rec, x~x_rand
        scores = ctx.modules["discriminator"](
            torch.cat([image, fakes, mixes]), labels.repeat(5)
        ).float()  # (5B,): real, x_rec, x_rand, then the interpolates
        real, fake, mixed = scores[:batch], scores[batch : 3 * batch], scores[3 * batch :]
        penalty = gradient_penalty(mixed, mixes, weight)  # mean over both pairings
        d_loss = 2 * (fake.mean() - real.mean() + penalty)  # the paper's two fakes, two GPs
        code_mixes = interpolate(codes, prior, rng)
        code_scores = ctx.modules["code_discriminator"](
            torch.cat([codes, prior, code_mixes]), labels.repeat(3)
        ).float()
        encoded, drawn, code_mixed = code_scores.chunk(3)
        code_penalty = gradient_penalty(code_mixed, code_mixes, weight)
        c_loss = encoded.mean() - drawn.mean() + code_penalty
        metrics = {
            "wasserstein": real.mean() - fake.mean(),
            "gradient_penalty": penalty,
            "code_wasserstein": drawn.mean() - encoded.mean(),
            "code_penalty": code_penalty,
            "l1": (fakes[:batch] - image).abs().mean(),
        }
        return StepOutput({"discriminator": d_loss, "code_discriminator": c_loss}, metrics)

    def save_images(self, batch: Any, ctx: StepContext, path: Path) -> None:
        image, _, labels = batch
        image, labels = image[:4], labels[:4]
        rng = torch.Generator().manual_seed(0)  # the same draws at every step
        prior = torch.randn(len(image), self.model.config.latent_dim, generator=rng)
        rec = self.model(image, labels).float()
        drawn = self.model.generate(prior.to(image.device), labels).float()
        rows = [v for trio in zip(image, rec, drawn, strict=True) for v in trio]
        names = [f"{kind} {i}" for i in range(len(image)) for kind in ("input", "recon", "sample")]
        save_montage(rows, path, row_labels=names)


def train_alpha_wgan(
    config: AlphaWGANConfig | str,
    data: Dataset | str | Path,
    output_dir: str | Path,
    train: TrainConfig | None = None,
    recipe: AlphaWGANRecipe | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """Train a 3D-αWGAN on ROIs; ``output_dir`` becomes an `AlphaWGANGenerator` folder.

    ``config`` is an `AlphaWGANConfig` or a preset name; ``data`` an ``ROIDataset``, a
    cache folder, or any dataset whose items `tumoraug.data.subject_tensors` understands,
    of ROIs of the config's shape; ``train`` defaults to ``TrainConfig.preset("alpha_wgan")``
    (no gradient clipping), ``recipe`` to the paper's. The model is initialised from
    ``train.seed``; with ``resume`` the newest checkpoint in ``output_dir/checkpoints`` is
    continued exactly. Open the result with `tumoraug.open_generator`.
    """
    if isinstance(config, str):
        config = AlphaWGANConfig.preset(config)
    recipe = recipe or AlphaWGANRecipe()
    train = train or TrainConfig.preset("alpha_wgan")
    data, config = training_rois(
        data, config, "the AlphaWGANConfig",
        "pick a config of that size (presets: 'tiny' 16³, 'small32' 32³; "
        "roi_size = 4 * 2**len(widths))",
    )  # fmt: skip
    torch.manual_seed(train.seed)
    task = AlphaWGANTask(AlphaWGAN(config), recipe, lr=train.lr)  # type: ignore[arg-type]
    result = fit(
        task, data, output_dir, train, resume=resume, collate_fn=collate_rois, progress=progress,
        identity={"data": data_fingerprint(data)},
    )  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        AlphaWGANGenerator(task.model, device="cpu").save_pretrained(output_dir)
    return result


def run_alpha_wgan_training(
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
    """`train_alpha_wgan` on the ROI cache folder ``data`` from a preset (or a config file)
    and overrides of the recipe and the `TrainConfig`: what ``train-baseline alpha_wgan``
    runs.

    The input channels and modality names come from the cache (`cache_config`; a config
    file that sets them must agree), and so does ``roi_size``, which must fit the preset's
    ``widths`` (a `ConfigError` naming the cache and both sizes otherwise).
    """
    given: dict[str, tuple[str, Any]] = {}
    if config_file:
        config = AlphaWGANConfig.from_json(config_file)
        named = json.loads(Path(config_file).read_text())  # the fields the file sets itself
        given = {
            field: (str(config_file), getattr(config, field))
            for field in ("roi_size", "in_channels", "modalities")
            if field in named and (field != "modalities" or config.modalities)
        }
    else:
        config = AlphaWGANConfig.preset(preset)
    config = cache_config(config, data, given)
    run = TrainConfig.preset("alpha_wgan", **(train or {}))
    stage_recipe = AlphaWGANRecipe.from_dict(recipe or {})
    return train_alpha_wgan(
        config, data, output_dir, run, stage_recipe, resume=resume, progress=progress
    )
