"""Training of the stage-2 `MaskedTransformer` on pre-computed token grids.

`train_transformer` encodes the ROIs once into a token corpus (`tumoraug.training.corpus`),
wraps the transformer in a `TransformerTask` with its `TransformerRecipe` and hands it to the
shared engine `tumoraug.training.loop.fit` with a `TrainConfig` (devices, bf16 on CUDA,
accumulation, checkpoints, exact resume, DDP, progress, ``metrics.jsonl``).

The loss of one batch: the token grids are corrupted with
`tumoraug.training.masking.corrupt` (hybrid importance masking, or plain MaskGIT masking),
the class of each sample is replaced by the null class with probability ``class_dropout``
(so that one network also learns the unconditional model used by classifier-free
guidance), and the loss is the cross-entropy between the predicted and the original tokens
at every corrupted position.

When the tokenizer is known, the output folder is also a complete `TumorGenerator` model
(``tumoraug.json`` + ``tokenizer/`` + ``transformer/``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from tumoraug.config import Config, TransformerConfig, check
from tumoraug.data import subject_tensors
from tumoraug.errors import ConfigError, DataError
from tumoraug.models.transformer import MaskedTransformer, PerClassTransformer, build_transformer
from tumoraug.training.checkpoints import check_resume, data_fingerprint, run_record
from tumoraug.training.config import TrainConfig
from tumoraug.training.corpus import (
    CORPUS_NAME,
    TokenCorpus,
    as_dataset,
    as_tokenizer,
    encode_corpus,
    tokenizer_fingerprint,
)
from tumoraug.training.grades import grade_weights, per_grade_means
from tumoraug.training.loop import FitResult, StepContext, StepOutput, TrainingTask, fit
from tumoraug.training.masking import MASKING_MODES, corrupt


@dataclasses.dataclass
class TransformerRecipe(Config):
    """How stage 2 is trained: token corruption, class dropout and the optimizer's shape.

    ``masking`` is ``"hybrid"`` (the method's importance masking on the MaskGIT budget, with
    ``topk_ratio`` and ``random_replace_ratio``, see `tumoraug.training.masking`) or
    ``"random"`` (plain MaskGIT); ``class_dropout`` is the share of samples trained as the
    null class (classifier-free guidance); with ``balance_classes`` every grade weighs the
    same in the loss, whatever its share of the training grids.
    """

    masking: str = "hybrid"
    topk_ratio: float = 0.25
    random_replace_ratio: float = 0.1
    class_dropout: float = 0.1
    balance_classes: bool = True
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)

    presets: ClassVar[dict[str, dict[str, Any]]] = {"brats128": {}, "tiny": {}}

    def validate(self) -> None:
        name = type(self).__name__
        check(
            self.masking in MASKING_MODES,
            name, "masking", f"one of {', '.join(MASKING_MODES)}", self.masking,
        )  # fmt: skip
        for field in ("topk_ratio", "random_replace_ratio", "class_dropout"):
            value = getattr(self, field)
            check(0 <= value <= 1, name, field, "a number in [0, 1]", value)
        check(self.weight_decay >= 0, name, "weight_decay", "a number >= 0", self.weight_decay)
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            name, "betas", "two numbers in [0, 1)", self.betas,
        )  # fmt: skip

    def corrupt(
        self,
        tokens: torch.Tensor,
        importance: torch.Tensor,
        rng: torch.Generator,
        *,
        codebook_size: int,
        mask_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`tumoraug.training.masking.corrupt` with this recipe's masking: what training
        draws for a batch of token grids, ``(corrupted, masked, replaced)``."""
        return corrupt(
            tokens, importance, rng, mode=self.masking, mask_id=mask_id,
            codebook_size=codebook_size, topk_ratio=self.topk_ratio,
            random_replace_ratio=self.random_replace_ratio,
        )  # fmt: skip

    def baseline(self) -> TransformerRecipe:
        """The recipe of the paper's 3D-VQGAN baseline: plain MaskGIT masking, no class
        dropout (a per-class network has no unconditional model)."""
        return self.replace(masking="random", class_dropout=0.0)

    @classmethod
    def for_preset(cls, name: str) -> TransformerRecipe:
        """The recipe preset of that name, or the default recipe for other architectures."""
        return cls.preset(name) if name in cls.presets else cls()


@dataclasses.dataclass
class ScoredBatch:
    """Stage-2 predictions at the corrupted positions of a batch (see `TransformerTask.score`)."""

    per_token: torch.Tensor  # (M,) cross-entropy of each corrupted token
    hit: torch.Tensor  # (M,) 1.0 where the prediction is the original token
    grade: torch.Tensor  # (M,) class label of each corrupted token's grid
    masked: torch.Tensor  # (B, d, h, w) bool: [MASK] positions
    corrupted: torch.Tensor  # (B, d, h, w) bool: [MASK] or random-code positions


VALIDATION_CORPUS_NAME = "validation_corpus.safetensors"
VALIDATION_SEED = 20_231
VALIDATION_BATCH = 32


class TransformerTask(TrainingTask):
    """The stage-2 objective (see the module docstring) as a `TrainingTask`; with
    ``validation`` (held-out token grids) ``val_loss`` and ``val_accuracy`` (per grade too)
    are added to every metrics line."""

    def __init__(
        self,
        model: MaskedTransformer | PerClassTransformer,
        recipe: TransformerRecipe,
        *,
        lr: float,
        tokenizer: nn.Module | None = None,
        class_counts: Sequence[int] | None = None,
        validation: TokenCorpus | None = None,
    ) -> None:
        if model.config.conditioning == "per_class" and recipe.class_dropout != 0:
            raise ConfigError(
                "TransformerRecipe.class_dropout: expected 0 with conditioning='per_class' "
                f"(the baseline has no unconditional model), got {recipe.class_dropout}"
            )
        self.model = model
        self.config: TransformerConfig = model.config
        self.recipe = recipe
        self.lr = lr
        self.tokenizer = tokenizer
        self.class_weights = grade_weights(
            class_counts, self.config.num_classes, recipe.balance_classes
        )
        self.validation = validation

    def describe(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "recipe": self.recipe.to_dict()}

    def modules(self) -> dict[str, nn.Module]:
        return {"transformer": self.model}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            (decay if param.ndim >= 2 and "embedding" not in name else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=tuple(self.recipe.betas))
        return {"transformer": optimizer}

    def training_step(self, batch: Any, ctx: StepContext) -> StepOutput:
        scored = self.score(ctx.modules["transformer"], batch, ctx.rng(0))
        metrics: dict[str, Any] = {
            "masked_fraction": scored.masked.float().mean(),
            "corrupted_fraction": scored.corrupted.float().mean(),
            **per_grade_means(scored.hit, scored.grade, "accuracy"),
        }
        loss = self.weighted_loss(scored.per_token, scored.grade)
        return StepOutput({"transformer": loss}, metrics)

    def score(
        self, model: nn.Module, batch: Any, rng: torch.Generator, *, train: bool = True
    ) -> ScoredBatch:
        """Corrupt a batch with the recipe's masking and score the predictions at the
        corrupted positions. ``train=False``: no class dropout (held-out grids are scored
        with their own grade)."""
        c, r = self.config, self.recipe
        tokens, importance, labels = batch
        corrupted, masked, replaced = r.corrupt(
            tokens, importance, rng, codebook_size=c.codebook_size, mask_id=c.mask_id
        )
        dropout = r.class_dropout if train else 0.0
        drop = (torch.rand(labels.shape[0], generator=rng) < dropout).to(labels.device)
        devices = [tokens.device] if tokens.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=tokens.device.type):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=rng)))  # dropout noise
            logits = model(corrupted, labels.masked_fill(drop, c.null_class))
        target_mask = masked | replaced
        grade = labels[:, None, None, None].expand_as(tokens)[target_mask]  # (M,)
        chosen, target = logits[target_mask].float(), tokens[target_mask]
        with torch.no_grad():
            hit = (chosen.argmax(-1) == target).float()
        return ScoredBatch(
            F.cross_entropy(chosen, target, reduction="none"), hit, grade, masked, target_mask
        )

    def weighted_loss(self, per_token: torch.Tensor, grade: torch.Tensor) -> torch.Tensor:
        """Mean of the per-token cross-entropy, each grade weighed by `grade_weights`."""
        weight = self.class_weights.to(per_token.device)[grade]
        return (per_token * weight).sum() / weight.sum()

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        if self.validation is None or not ctx.logged:
            return {}
        return self.validate(ctx.raw["transformer"], ctx.device)

    @torch.no_grad()
    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Loss and token accuracy (overall and per grade, over all corrupted tokens) on the
        held-out grids, under the same corruption draws at every call (a fixed seed), so
        that the curve moves only when the model does."""
        assert self.validation is not None
        corpus = self.validation
        was_training = model.training
        model.eval()
        rng = torch.Generator(device).manual_seed(VALIDATION_SEED)
        parts: list[ScoredBatch] = []
        try:
            for start in range(0, len(corpus), VALIDATION_BATCH):
                index = list(range(start, min(start + VALIDATION_BATCH, len(corpus))))
                batch = tuple(
                    t[index].to(device) for t in (corpus.tokens, corpus.importance, corpus.labels)
                )
                parts.append(self.score(model, batch, rng, train=False))
        finally:
            model.train(was_training)
        per_token, hit, grade = (
            torch.cat([getattr(part, name) for part in parts])
            for name in ("per_token", "hit", "grade")
        )
        metrics = per_grade_means(hit, grade, "val_accuracy")
        return {"val_loss": float(self.weighted_loss(per_token, grade))} | {
            k: float(v) for k, v in metrics.items()
        }

    def save_images(self, batch: Any, ctx: StepContext, path: Path) -> None:
        if self.tokenizer is None:
            return
        from tumoraug.sampling import SamplingConfig, make_rngs, sample_tokens
        from tumoraug.viz import save_montage

        was_training = self.model.training
        self.model.eval()
        try:
            labels = torch.tensor([1, 1, 0, 0])
            tokens = sample_tokens(self.model, labels, make_rngs(range(4)), SamplingConfig(steps=8))
            self.tokenizer.to(tokens.device).eval()
            volumes = self.tokenizer.decode(tokens).float()
        finally:
            self.model.train(was_training)
        save_montage(volumes, path, row_labels=["HGG", "HGG", "LGG", "LGG"])


def resolve_corpus(
    source: Any, output_dir: Path, train: TrainConfig, tokenizer: Any = None, *, resume: bool
) -> tuple[TokenCorpus, Any, dict[str, Any]]:
    """Accept a corpus, a corpus file, or ``(tokenizer, data)``; return (corpus, tokenizer,
    identity), ``identity`` being the data and tokenizer fingerprints of the run record.

    Before anything is encoded or written it checks that the tokenizer fits the data (ROI
    shape, or the corpus's codebook and grid) and that a resume in ``output_dir`` matches
    the data, the tokenizer and ``train`` (`check_resume`), so that a refused run leaves the
    folder as it was. ``tokenizer``: the one the model is saved with (default: the pair's).
    """
    tokenizer = as_tokenizer(tokenizer) if tokenizer is not None else None
    if isinstance(source, tuple | list) and len(source) == 2:
        encoder, data = as_tokenizer(source[0]), as_dataset(source[1])
        tokenizer, corpus = tokenizer or encoder, None
        c = encoder.config
        expected = (c.in_channels, c.roi_size, c.roi_size, c.roi_size)
        shape = tuple(subject_tensors(data[0])[0].shape[1:]) if len(data) else expected
        if shape != expected:
            raise ConfigError(
                f"{source[1]}: ROIs of shape {shape}, but the tokenizer {source[0]} encodes "
                f"{expected} (in_channels, roi_size³); give the tokenizer trained on this data "
                "(CLI: --tokenizer)"
            )
        cached = tuple(getattr(data, "modalities", None) or ())
        if c.modalities and cached and tuple(c.modalities) != cached:
            raise ConfigError(
                f"{source[1]}: ROIs of the modalities {', '.join(cached)}, but the tokenizer "
                f"{source[0]} was trained on {', '.join(c.modalities)} (in this order); give "
                "the tokenizer trained on this data (CLI: --tokenizer)"
            )
    elif isinstance(source, TokenCorpus | str | Path):
        corpus = source if isinstance(source, TokenCorpus) else TokenCorpus.load(source)
        data = corpus
        if tokenizer is not None and (
            tokenizer.config.codebook_size != corpus.codebook_size
            or tuple(tokenizer.config.token_grid) != corpus.token_grid
        ):
            raise ConfigError(
                f"train_transformer: the tokenizer (codebook_size "
                f"{tokenizer.config.codebook_size}, token grid {tuple(tokenizer.config.token_grid)}"
                f") does not match the corpus ({corpus.codebook_size}, {corpus.token_grid})"
            )
    else:
        raise ConfigError(
            "train_transformer: expected a TokenCorpus, a corpus file, or a (tokenizer, data) "
            f"pair, got {type(source).__name__}"
        )
    identity = {
        "data": data_fingerprint(data),
        "tokenizer": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
    }
    check_resume(output_dir, run_record(None, train, identity), train, resume, partial=True)
    if corpus is None:
        corpus = encode_corpus(
            encoder, data, output_dir / CORPUS_NAME, batch_size=train.batch_size,
            device=train.device, cpu_bf16=train.cpu_bf16,
        )  # fmt: skip
    return corpus, tokenizer, identity


def validation_corpus(
    validation: Any, corpus: TokenCorpus, tokenizer: Any, output_dir: Path, train: TrainConfig
) -> TokenCorpus | None:
    """Held-out grids as a corpus that fits the training ``corpus``: a `TokenCorpus`, a corpus
    file, or ROI data (a cache folder or dataset) encoded once with ``tokenizer`` into
    ``output_dir/validation_corpus.safetensors``. None stays None."""
    if validation is None:
        return None
    if isinstance(validation, TokenCorpus):
        held_out = validation
    elif isinstance(validation, str | Path) and Path(validation).is_file():
        held_out = TokenCorpus.load(validation)
    elif tokenizer is None:
        raise ConfigError(
            f"train_transformer: held-out ROIs ({validation}) are encoded with the tokenizer, "
            "which is unknown here; give the tokenizer (CLI: --tokenizer) or a token corpus file"
        )
    else:
        held_out = encode_corpus(
            tokenizer, as_dataset(validation), output_dir / VALIDATION_CORPUS_NAME,
            batch_size=train.batch_size, device=train.device, cpu_bf16=train.cpu_bf16,
        )  # fmt: skip
    if (held_out.codebook_size, held_out.token_grid) != (corpus.codebook_size, corpus.token_grid):
        raise ConfigError(
            f"{validation}: held-out tokens (codebook_size {held_out.codebook_size}, grid "
            f"{held_out.token_grid}) do not match the training corpus ({corpus.codebook_size}, "
            f"{corpus.token_grid}); encode both with the same tokenizer"
        )
    return held_out


def train_transformer(
    config: TransformerConfig | str,
    data: Any,
    output_dir: str | Path,
    train: TrainConfig | None = None,
    recipe: TransformerRecipe | None = None,
    *,
    tokenizer: Any = None,
    validation: Any = None,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """Train the stage-2 model; it goes to ``output_dir/transformer``.

    The model is a `MaskedTransformer`, or the per-class baseline (`PerClassTransformer`)
    when ``config.conditioning == "per_class"`` (see `TransformerConfig.baseline` and
    `TransformerRecipe.baseline`).

    ``config``: a `TransformerConfig` or a preset name (which also picks the recipe preset
    of that name when ``recipe`` is None); its ``codebook_size`` and ``token_grid`` are
    replaced by those of the corpus. ``data``: a `TokenCorpus`, a corpus file, or a
    ``(tokenizer, roi_data)`` pair (tokenizer a `VQGAN3D` or its folder; the corpus is then
    encoded once into ``output_dir/corpus.safetensors``). ``train`` defaults to
    ``TrainConfig.preset("transformer")``. When the tokenizer is known (from the pair or the
    ``tokenizer`` argument), ``output_dir`` also becomes a complete `TumorGenerator` folder.
    ``validation``: held-out ROIs or tokens (`validation_corpus`), scored at every metrics
    line (``val_loss``, ``val_accuracy``): the curve that says when training stops helping.
    """
    if isinstance(config, str):
        recipe = recipe or TransformerRecipe.for_preset(config)
        config = TransformerConfig.preset(config)
    recipe = recipe or TransformerRecipe()
    train = train or TrainConfig.preset("transformer")
    output_dir = Path(output_dir)
    corpus, tokenizer, identity = resolve_corpus(data, output_dir, train, tokenizer, resume=resume)
    held_out = validation_corpus(validation, corpus, tokenizer, output_dir, train)
    config = config.replace(codebook_size=corpus.codebook_size, token_grid=corpus.token_grid)
    torch.manual_seed(train.seed)
    counts = [int((corpus.labels == c).sum()) for c in range(config.num_classes)]
    task = TransformerTask(
        build_transformer(config), recipe, lr=train.lr, tokenizer=tokenizer,
        class_counts=counts, validation=held_out,
    )  # fmt: skip
    result = fit(
        task, corpus, output_dir, train, resume=resume, progress=progress, identity=identity
    )
    if tokenizer is not None and int(os.environ.get("RANK", "0")) == 0:
        from tumoraug.checkpoint import atomic_write_text
        from tumoraug.export import model_card
        from tumoraug.generator import TumorGenerator

        generator = TumorGenerator(tokenizer, task.model, device="cpu")
        generator.save_pretrained(output_dir)
        if not (output_dir / "README.md").exists():
            atomic_write_text(
                output_dir / "README.md", model_card(generator.roi_size, generator.in_channels)
            )
    return result


def run_transformer_training(
    data: str | Path | None,
    output_dir: str | Path,
    *,
    tokenizer: str | Path | None = None,
    preset: str = "brats128",
    config_file: str | Path | None = None,
    baseline: bool = False,
    recipe: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    validation: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """`train_transformer` from a preset (or a config file) and overrides of the recipe and
    the `TrainConfig`: what ``tumoraug train-transformer`` runs.

    ``data`` is a token corpus file, or a ROI cache folder together with ``tokenizer`` (the
    corpus is then encoded once). ``baseline`` switches to the 3D-VQGAN baseline (one
    network per grade, plain MaskGIT masking).
    """
    if data is None:
        raise ConfigError(
            "train_transformer: give the data: a ROI cache folder (with --tokenizer) or a "
            "token corpus file (--data)"
        )
    path = Path(data)
    if path.is_dir():
        if tokenizer is None:
            raise ConfigError(
                f"{path}: a ROI cache folder needs the trained tokenizer that encodes it "
                "(--tokenizer <stage-1 output>/tokenizer)"
            )
        source: Any = (tokenizer, path)
    elif path.is_file():
        source = path
    else:
        raise DataError(f"{path}: no ROI cache folder or token corpus file there")
    config = (
        TransformerConfig.from_json(config_file)
        if config_file
        else TransformerConfig.preset(preset)
    )
    stage_recipe = TransformerRecipe.for_preset(preset)
    if baseline:
        config, stage_recipe = config.baseline(), stage_recipe.baseline()
    stage_recipe = stage_recipe.replace(**(recipe or {}))
    run = TrainConfig.preset("transformer", **(train or {}))
    return train_transformer(
        config, source, output_dir, run, stage_recipe, resume=resume, progress=progress,
        tokenizer=tokenizer if path.is_file() else None, validation=validation,
    )  # fmt: skip
