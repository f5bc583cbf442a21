"""Training of the stage-1 tokenizer (`VQGAN3D` + `PatchDiscriminator3D`).

`train_tokenizer` builds the tokenizer from a `TokenizerConfig` (architecture), the
discriminator and the losses from a `TokenizerRecipe`, wraps them in a `TokenizerTask` and
hands it to the shared engine `tumoraug.training.loop.fit` with a `TrainConfig`; the engine
does devices, mixed precision, accumulation, checkpoints, resume, DDP and logging.

The loss of one batch ``x`` (ROIs) with tumor masks ``m`` and grades ``y`` (the weights
are recipe fields)::

    nll    = recon_weight * |x - x_rec|_1 + perceptual_weight * P(x, x_rec)
    L_rec  = nll + codebook + commitment_beta * commitment
           + [step >= disc_start] * lambda * (-mean D(x_rec))
    L_vq   = (1 - classifier_weight) * L_rec
           + classifier_weight * CE(grade logits, y; label_smoothing, class weights)
    L_D    = hinge(D(x), D(x_rec))                      (from disc_start on)

With ``balance_classes`` the cross-entropy weighs each grade by the inverse of its share of
the training data, so that a minority grade (LGG in BraTS 2019, about a quarter) is not
drowned by the majority.

with ``lambda`` the adaptive weight of Taming Transformers (`adaptive_weight`). ``P`` is an
optional perceptual distance computed by a user-supplied feature network (`PerceptualLoss`):
no pretrained 3D network can be downloaded here, so it is off unless you pass one. Every
``restart_every`` steps, codes unused since the previous restart are moved onto encoder
outputs, and the share of the codebook used in that window is logged as ``codebook_used``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tumoraug.config import C, Config, TokenizerConfig, check
from tumoraug.data import subject_tensors
from tumoraug.errors import ConfigError, DataError
from tumoraug.models.discriminator import (
    PatchDiscriminator3D,
    adaptive_weight,
    generator_loss,
    hinge_d_loss,
)
from tumoraug.models.vqgan import VQGAN3D
from tumoraug.training.checkpoints import data_fingerprint
from tumoraug.training.config import TrainConfig
from tumoraug.training.corpus import as_dataset
from tumoraug.training.grades import grade_weights, per_grade_means
from tumoraug.training.loop import FitResult, StepContext, StepOutput, TrainingTask, fit
from tumoraug.viz import save_montage


@dataclasses.dataclass
class TokenizerRecipe(Config):
    """How stage 1 is trained: loss weights, grade classification, discriminator, restarts.

    See the module docstring for the loss; ``disc_channels``/``disc_layers`` build the
    `PatchDiscriminator3D` (a training-only network: it is not saved with the tokenizer),
    which joins at step ``disc_start``; every ``restart_every`` steps unused codes are moved
    onto encoder outputs. Presets match the `TokenizerConfig` presets by name.
    """

    commitment_beta: float = 0.25
    restart_every: int = 100
    recon_weight: float = 1.0
    perceptual_weight: float = 0.0
    disc_channels: int = 32
    disc_layers: int = 3
    disc_weight: float = 0.5
    disc_start: int = 10000
    betas: tuple[float, float] = (0.5, 0.9)
    classifier_weight: float = 0.2
    label_smoothing: float = 0.1
    balance_classes: bool = True

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "brats128": {},
        "tiny": {"restart_every": 50, "disc_channels": 4, "disc_layers": 2, "disc_start": 1000},
    }

    def validate(self) -> None:
        name = type(self).__name__
        for field in ("disc_channels", "disc_layers"):
            value = getattr(self, field)
            check(isinstance(value, int) and value > 0, name, field, "a positive int", value)
        for field in ("restart_every", "disc_start"):
            value = getattr(self, field)
            check(isinstance(value, int) and value >= 0, name, field, "an int >= 0", value)
        for field in ("commitment_beta", "recon_weight", "perceptual_weight", "disc_weight"):
            value = getattr(self, field)
            check(value >= 0, name, field, "a number >= 0", value)
        for field in ("classifier_weight", "label_smoothing"):
            value = getattr(self, field)
            check(0 <= value < 1, name, field, "a number in [0, 1)", value)
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            name, "betas", "two numbers in [0, 1)", self.betas,
        )  # fmt: skip

    @classmethod
    def for_preset(cls, name: str) -> TokenizerRecipe:
        """The recipe preset of that name, or the default recipe for other architectures."""
        return cls.preset(name) if name in cls.presets else cls()


def collate_rois(items: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack ROI dataset items into ``(image (B,C,S,S,S), seg (B,1,S,S,S), label (B,))``."""
    parts = [subject_tensors(item) for item in items]
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def class_counts(data: Any, num_classes: int) -> list[int]:
    """Items per grade: from ``data.labels`` when the dataset has them, else item by item."""
    labels = getattr(data, "labels", None)
    if labels is None:
        labels = [int(subject_tensors(data[i])[2][0]) for i in range(len(data))]
    return [sum(1 for v in labels if int(v) == c) for c in range(num_classes)]


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
        recipe: TokenizerRecipe,
        *,
        lr: float,
        perceptual_net: nn.Module | None = None,
        class_counts: Sequence[int] | None = None,
    ) -> None:
        self.model = model
        self.config = model.config
        self.recipe = recipe
        self.lr = lr
        r = recipe
        self.class_weights = grade_weights(
            class_counts, model.config.num_classes, r.balance_classes
        )
        self.discriminator = PatchDiscriminator3D(
            model.config.in_channels, r.disc_channels, r.disc_layers
        )
        if r.perceptual_weight > 0 and perceptual_net is None:
            raise ConfigError(
                "TokenizerRecipe.perceptual_weight: > 0 needs a perceptual_net (a feature "
                "network with your own weights); none can be downloaded"
            )
        self.perceptual = PerceptualLoss(perceptual_net) if perceptual_net is not None else None
        self._last_z_e: torch.Tensor | None = None

    def describe(self) -> dict[str, Any]:
        return {"config": self.config.architecture(), "recipe": self.recipe.to_dict()}

    def modules(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"tokenizer": self.model}
        if self.recipe.disc_weight > 0:
            modules["discriminator"] = self.discriminator
        return modules

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        betas = tuple(self.recipe.betas)
        optimizers = {
            "tokenizer": torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=betas)
        }
        if "discriminator" in modules:
            optimizers["discriminator"] = torch.optim.Adam(
                self.discriminator.parameters(), lr=self.lr, betas=betas
            )
        return optimizers

    def training_step(self, batch: Any, ctx: StepContext) -> StepOutput:
        r = self.recipe
        image, _, labels = batch
        out = ctx.modules["tokenizer"](image)
        rec = out.reconstruction
        l1 = (image - rec.float()).abs().mean()
        nll = r.recon_weight * l1
        quant = out.codebook_loss + r.commitment_beta * out.commitment_loss
        metrics: dict[str, Any] = {"l1": l1, "quant": quant}
        if self.perceptual is not None and r.perceptual_weight > 0:
            perceptual = self.perceptual.to(image.device)(image, rec)
            nll = nll + r.perceptual_weight * perceptual
            metrics["perceptual"] = perceptual
        s = out.importance.float()
        loss = nll + quant
        metrics["importance_mean"] = s.mean()
        losses: dict[str, torch.Tensor] = {}
        if "discriminator" in ctx.modules and ctx.step >= r.disc_start:
            g_loss = generator_loss(self.discriminator(rec))
            weight = adaptive_weight(nll, g_loss, self.model.last_layer, r.disc_weight)
            loss = loss + weight * g_loss
            logits = ctx.modules["discriminator"](torch.cat([image, rec.detach()]))
            real, fake = logits.chunk(2)
            losses["discriminator"] = hinge_d_loss(real, fake)
            metrics |= {"g_loss": g_loss, "g_weight": weight}
        if out.grade_logits is not None:
            logits = out.grade_logits.float()
            weights = self.class_weights.to(logits.device)
            hit = (logits.argmax(-1) == labels).float()
            grade_loss = F.cross_entropy(
                logits, labels, weight=weights, label_smoothing=r.label_smoothing
            )
            loss = (1 - r.classifier_weight) * loss + r.classifier_weight * grade_loss
            metrics |= {"grade_loss": grade_loss, **per_grade_means(hit, labels, "grade_acc")}
        losses = {"tokenizer": loss, **losses}  # backward order: tokenizer, then discriminator
        metrics |= {"perplexity": out.perplexity, "batch_codes_used": out.fraction_used}
        self._last_z_e = out.z_e.detach()
        return StepOutput(losses, metrics)

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        every = self.recipe.restart_every
        if not every or (ctx.step + 1) % every or self._last_z_e is None:
            return {}
        quantizer = self.model.quantizer
        stats = torch.stack([(quantizer.usage > 0).float().mean(), torch.zeros(())]).to(
            quantizer.usage.device
        )
        if ctx.is_main:
            stats[1] = quantizer.restart_dead_codes(self._last_z_e, ctx.rng(salt=1))
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
    train: TrainConfig | None = None,
    recipe: TokenizerRecipe | None = None,
    *,
    resume: bool = True,
    perceptual_net: nn.Module | None = None,
    progress: bool = True,
) -> FitResult:
    """Train a `VQGAN3D` on ROIs; the final model is written to ``output_dir/tokenizer``.

    ``config`` is a `TokenizerConfig` or a preset name (which also picks the recipe preset
    of that name when ``recipe`` is None); ``data`` an ``ROIDataset``, a cache folder, or
    any dataset whose items `tumoraug.data.subject_tensors` understands; ``train`` defaults
    to ``TrainConfig.preset("tokenizer")``. The model is initialised from ``train.seed``;
    with ``resume`` the newest checkpoint in ``output_dir/checkpoints`` is continued exactly.
    A ROI cache's modality names are recorded in the saved config (`with_cache_modalities`).
    Load the result with ``VQGAN3D.from_pretrained(output_dir / "tokenizer")``.
    """
    if isinstance(config, str):
        recipe = recipe or TokenizerRecipe.for_preset(config)
        config = TokenizerConfig.preset(config)
    recipe = recipe or TokenizerRecipe()
    train = train or TrainConfig.preset("tokenizer")
    data, config = training_rois(
        data, config, "the TokenizerConfig", "set roi_size / in_channels (CLI: --roi-size)"
    )
    torch.manual_seed(train.seed)
    task = TokenizerTask(
        VQGAN3D(config), recipe, lr=train.lr, perceptual_net=perceptual_net,
        class_counts=class_counts(data, config.num_classes),
    )  # fmt: skip
    return fit(
        task, data, output_dir, train, resume=resume, collate_fn=collate_rois, progress=progress,
        identity={"data": data_fingerprint(data)},
    )  # fmt: skip


def check_roi_shape(
    data: Any, expected: tuple[int, ...], source: str, what: str, hint: str | None = None
) -> None:
    """Raise `ConfigError` naming both shapes unless the ROIs of ``data`` are ``expected``
    (``(in_channels, roi_size, roi_size, roi_size)``); ``hint`` says what to change."""
    if len(data) == 0:
        raise DataError(f"{source}: the dataset is empty")
    shape = tuple(subject_tensors(data[0])[0].shape[1:])
    if shape != tuple(expected):
        hint = hint or (
            "preprocess the data to that size (tumoraug preprocess --size) or choose a model "
            "of the data's size"
        )
        raise ConfigError(
            f"{source}: ROIs of shape {shape}, but {what} expects {tuple(expected)} "
            f"(in_channels, roi_size³); {hint}"
        )


def training_rois(data: Any, config: C, what: str, hint: str | None = None) -> tuple[Any, C]:
    """The training ROIs for ``config`` (a config with ``in_channels``, ``roi_size`` and
    ``modalities``): ``data`` opened (a ROI cache folder) or as it is, its ROI shape checked
    (`check_roi_shape`), and ``config`` naming the cache's modalities
    (`with_cache_modalities`). What every image-space trainer starts with."""
    data = as_dataset(data)
    expected = (config.in_channels, *[config.roi_size] * 3)  # type: ignore[attr-defined]
    check_roi_shape(data, expected, str(getattr(data, "cache_dir", "data")), what, hint)
    return data, with_cache_modalities(config, data)


def with_cache_modalities(config: C, data: Any) -> C:
    """``config`` (any config with ``modalities``: a tokenizer's, a baseline's) naming its
    channels after the modalities of a ROI cache ``data``.

    Data that does not name them (not an ``ROIDataset``) leaves ``config`` as it is; a
    config that names other modalities than the cache holds is a `ConfigError` naming both.
    """
    cached = tuple(getattr(data, "modalities", None) or ())
    if not cached:
        return config
    if config.modalities and tuple(config.modalities) != cached:
        raise ConfigError(
            f"{type(config).__name__}.modalities: {', '.join(config.modalities)}, but the ROI "
            f"cache {getattr(data, 'cache_dir', '')} holds {', '.join(cached)} (in this order)"
        )
    return config.replace(modalities=cached)  # type: ignore[attr-defined]


def cache_config(config: C, cache_dir: str | Path, given: dict[str, tuple[str, Any]]) -> C:
    """``config`` (a tokenizer's or a baseline's: any config with ``roi_size``,
    ``in_channels`` and ``modalities``) with the input shape of the ROI cache in
    ``cache_dir``: ``roi_size`` from its ``size``, ``in_channels`` and ``modalities`` from
    its ``modalities``.

    ``given``: the fields the user chose, as ``field: (where, value)``; one that disagrees
    with the cache is a `ConfigError` naming the cache, where the value came from and both
    values.
    """
    from tumoraug.data.cache import MANIFEST_NAME, read_manifest

    path = Path(cache_dir) / MANIFEST_NAME
    manifest = read_manifest(cache_dir)
    modalities = tuple(manifest.get("modalities") or ())
    cached = {
        "roi_size": manifest.get("size"),
        "in_channels": len(modalities),
        "modalities": modalities,
    }
    for field, (where, value) in given.items():
        if value != cached[field]:
            raise ConfigError(
                f"{path}: the cache holds {cached['roi_size']}³ ROIs of {len(modalities)} "
                f"channel(s) ({', '.join(modalities)}), but {where} sets {field}={value!r}, "
                f"not {cached[field]!r}; leave it out (it is read from the cache) "
                "or preprocess the data again to that shape (tumoraug preprocess --size, "
                "--modalities)"
            )
    try:
        return config.replace(**cached)
    except ConfigError as exc:
        raise ConfigError(f"{path}: the cache's ROIs do not fit the architecture: {exc}") from None


def run_tokenizer_training(
    cache_dir: str | Path,
    output_dir: str | Path,
    *,
    preset: str = "brats128",
    config_file: str | Path | None = None,
    roi_size: int | None = None,
    train: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """`train_tokenizer` from a preset (or a config file) and `TrainConfig` overrides.

    The architecture is the ``preset`` (or ``config_file``) with the input shape of the ROI
    cache (`cache_config`: its size overrides the preset's ``roi_size``; ``roi_size`` or a
    config file's ``roi_size`` / ``in_channels`` / ``modalities`` must agree with it), the
    recipe the preset's, the training options ``TrainConfig.preset("tokenizer")`` with
    ``train`` applied: what ``tumoraug train-tokenizer`` runs.
    """
    given: dict[str, tuple[str, Any]] = {}
    if config_file:
        config = TokenizerConfig.from_json(config_file)
        named = json.loads(Path(config_file).read_text())  # the fields the file sets itself
        given = {
            field: (str(config_file), getattr(config, field))
            for field in ("roi_size", "in_channels", "modalities")
            if field in named and (field != "modalities" or config.modalities)
        }
    else:
        config = TokenizerConfig.preset(preset)
    if roi_size is not None:
        given["roi_size"] = ("--roi-size", roi_size)
    config = cache_config(config, cache_dir, given)
    run = TrainConfig.preset("tokenizer", **(train or {}))
    recipe = TokenizerRecipe.for_preset(preset)
    return train_tokenizer(
        config, cache_dir, output_dir, run, recipe, resume=resume, progress=progress
    )
