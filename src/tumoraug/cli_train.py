"""The ``tumoraug`` training commands (``train-tokenizer``, ``train-transformer``,
``train-baseline``).

`tumoraug.cli` registers them on the app; like every command they parse options, call one
library function (`tumoraug.training`) and print.
"""

from __future__ import annotations

import typer

from tumoraug import cli_options as o


@o.friendly_errors
def train_tokenizer(
    cache_dir: str = typer.Argument(..., help="ROI cache folder (tumoraug preprocess)."),
    out_dir: str = typer.Argument(..., help="Output folder (checkpoints, metrics, tokenizer/)."),
    preset: str = o.PRESET,
    config: str | None = o.opt("--config", "TokenizerConfig JSON file."),
    roi_size: int | None = o.opt("--roi-size", "ROI edge; default: the cache's (must match)."),
    steps: int | None = o.TRAIN_STEPS,
    batch_size: int | None = o.BATCH,
    grad_accum: int | None = o.ACCUM,
    lr: float | None = o.LR,
    lr_schedule: str | None = o.LR_SCHEDULE,
    checkpoint_every: int | None = o.CHECKPOINT_EVERY,
    image_every: int | None = o.IMAGE_EVERY,
    grad_checkpointing: bool | None = o.opt("--grad-checkpointing", "Recompute activations."),
    cpu_bf16: bool | None = o.CPU_BF16,
    device: str | None = o.TRAIN_DEVICE,
    seed: int | None = o.SEED,
    resume: bool = o.RESUME,
) -> None:
    """Train the stage-1 VQGAN tokenizer on a ROI cache; the model lands in OUT_DIR/tokenizer.

    The ROI size and channels (modalities) come from the cache's manifest."""
    from tumoraug.training.tokenizer import run_tokenizer_training

    result = run_tokenizer_training(
        cache_dir, out_dir, preset=preset, config_file=config, roi_size=roi_size, resume=resume,
        train=o.given(
            steps=steps, batch_size=batch_size, grad_accum_steps=grad_accum, lr=lr, seed=seed,
            checkpoint_every=checkpoint_every, image_every=image_every, device=device,
            gradient_checkpointing=grad_checkpointing, lr_schedule=lr_schedule, cpu_bf16=cpu_bf16,
        ),
    )  # fmt: skip
    typer.echo(f"trained {result.step} steps; tokenizer in {out_dir}/tokenizer")


@o.friendly_errors
def train_transformer(
    out: str = o.opt("--out|-o", "Output folder (checkpoints, final model).", ...),
    data: str | None = o.opt("--data|-d", "ROI cache (with --tokenizer) or token corpus file."),
    tokenizer: str | None = o.opt("--tokenizer|-t", "Trained tokenizer folder."),
    preset: str = o.PRESET,
    config: str | None = o.opt("--config", "TransformerConfig JSON file."),
    masking: str | None = o.opt("--masking", "hybrid or random (MaskGIT)."),
    topk_ratio: float | None = o.opt("--topk-ratio", "Share of important tokens (hybrid)."),
    baseline: bool = o.opt("--baseline", "The 3D-VQGAN baseline: a network per grade.", False),
    validation: str | None = o.opt("--validation", "Held-out ROI cache or token corpus file."),
    steps: int | None = o.TRAIN_STEPS,
    batch_size: int | None = o.BATCH,
    grad_accum: int | None = o.ACCUM,
    lr: float | None = o.LR,
    lr_schedule: str | None = o.LR_SCHEDULE,
    cpu_bf16: bool | None = o.CPU_BF16,
    warmup: int | None = o.opt("--warmup", "Linear warm-up steps."),
    checkpoint_every: int | None = o.CHECKPOINT_EVERY,
    image_every: int | None = o.IMAGE_EVERY,
    device: str | None = o.TRAIN_DEVICE,
    seed: int | None = o.SEED,
    resume: bool = o.RESUME,
) -> None:
    """Train the stage-2 masked transformer on the tokens of a trained tokenizer."""
    from tumoraug.training.transformer import run_transformer_training

    result = run_transformer_training(
        data, out, tokenizer=tokenizer, preset=preset, config_file=config, baseline=baseline,
        recipe=o.given(masking=masking, topk_ratio=topk_ratio), resume=resume,
        validation=validation, train=o.given(
            steps=steps, batch_size=batch_size, grad_accum_steps=grad_accum, lr=lr, seed=seed,
            warmup_steps=warmup, checkpoint_every=checkpoint_every, image_every=image_every,
            device=device, lr_schedule=lr_schedule, cpu_bf16=cpu_bf16,
        ),
    )  # fmt: skip
    typer.echo(f"trained {result.step} steps; model in {out}")


@o.friendly_errors
def train_baseline(
    kind: str = typer.Argument(..., help="ddpm, latent-diffusion or alpha-wgan."),
    cache_dir: str = typer.Argument(..., help="ROI cache folder (tumoraug preprocess)."),
    out_dir: str = typer.Argument(..., help="Output folder (checkpoints, metrics, the model)."),
    autoencoder: str | None = o.opt(
        "--autoencoder", "latent-diffusion: tokenizer or model folder that encodes the latents."
    ),
    preset: str = o.opt("--preset", "Preset of the baseline: small32 or tiny.", "small32"),
    config: str | None = o.opt("--config", "The baseline's config JSON file."),
    recipe: list[str] | None = o.opt(  # noqa: B008
        "--recipe", "Override a field of the baseline's recipe: FIELD=VALUE (repeat it)."
    ),
    steps: int | None = o.TRAIN_STEPS,
    batch_size: int | None = o.BATCH,
    grad_accum: int | None = o.ACCUM,
    lr: float | None = o.LR,
    lr_schedule: str | None = o.LR_SCHEDULE,
    warmup: int | None = o.opt("--warmup", "Linear warm-up steps."),
    checkpoint_every: int | None = o.CHECKPOINT_EVERY,
    image_every: int | None = o.IMAGE_EVERY,
    cpu_bf16: bool | None = o.CPU_BF16,
    device: str | None = o.TRAIN_DEVICE,
    seed: int | None = o.SEED,
    resume: bool = o.RESUME,
) -> None:
    """Train a comparison system (docs/baselines.md); OUT_DIR becomes a model folder that
    generate, evaluate and evaluate-samples take like any tumoraug model."""
    from tumoraug.training.baselines import run_baseline_training

    result = run_baseline_training(
        kind, cache_dir, out_dir, autoencoder=autoencoder, preset=preset, config_file=config,
        recipe=o.assignments(recipe, "--recipe"), resume=resume, train=o.given(
            steps=steps, batch_size=batch_size, grad_accum_steps=grad_accum, lr=lr, seed=seed,
            warmup_steps=warmup, checkpoint_every=checkpoint_every, image_every=image_every,
            device=device, lr_schedule=lr_schedule, cpu_bf16=cpu_bf16,
        ),
    )  # fmt: skip
    typer.echo(f"trained {result.step} steps; model in {out_dir}")
