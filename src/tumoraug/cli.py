"""The ``tumoraug`` command line: it parses options, calls one library function, prints.

Defaults live in the library (`SamplingConfig`, `TrainConfig`, the recipes and presets):
an option left out here is left out of the config, so the config's own default applies.
Errors of the `TumorAugError` family are shown as one red line and exit code 1.
"""

from __future__ import annotations

import typer

from tumoraug import cli_options as o
from tumoraug import cli_train

app = typer.Typer(
    name="tumoraug",
    help="Synthetic 3D brain-tumor ROIs for data augmentation (HGG / LGG).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = o.console


def print_version(value: bool) -> None:
    """``--version``: print the version and stop."""
    if value:
        from tumoraug.version import __version__

        typer.echo(f"tumoraug {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Synthetic 3D brain-tumor ROIs for data augmentation (HGG / LGG)."""


@app.command()
def info() -> None:
    """Print the versions of tumoraug and its main dependencies."""
    from tumoraug.device import environment_report

    typer.echo("\n".join(environment_report()))


@app.command()
@o.friendly_errors
def phantom(
    out: str = typer.Argument(..., help="Output folder (created)."),
    per_class: int = o.opt("--per-class", "Phantoms per grade.", 20),
    seed: int = o.opt("--seed", "Seed; the same seed writes the same bytes.", 0),
    shape: tuple[int, int, int] = o.opt("--shape", "Volume shape D H W (1 mm).", (240, 240, 155)),
    workers: int = o.opt("--workers", "Parallel processes.", 1),
    layout: str = o.opt(
        "--layout", "brats2019 (HGG/ + LGG/) or brats2020 (flat + CSV).", "brats2019"
    ),
) -> None:
    """Write procedural brain-tumor phantoms (HGG-like and LGG-like) in a BraTS layout."""
    from tumoraug.data.phantom import write_phantom_dataset

    write_phantom_dataset(out, per_class, seed=seed, shape=shape, workers=workers, layout=layout)
    typer.echo(f"wrote {2 * per_class} phantoms ({per_class} HGG, {per_class} LGG) to {out}")


@app.command()
@o.friendly_errors
def preprocess(
    brats_dir: str = typer.Argument(..., help="BraTS folder (HGG/ + LGG/, or flat + CSV)."),
    out_dir: str = typer.Argument(..., help="ROI cache folder (created or updated)."),
    size: int = o.opt("--size", "ROI edge in voxels.", 128),
    modalities: str = o.opt("--modalities", "Channels, e.g. flair,t1ce.", "flair"),
    workers: int = o.opt("--workers", "Parallel processes.", 1),
    strict: bool = o.opt("--strict", "Stop at the first bad subject.", False),
    labels_csv: str | None = o.opt("--labels-csv", "CSV of subject,grade (found if omitted)."),
    overwrite: bool = o.opt("--overwrite", "Replace a cache built from another source.", False),
) -> None:
    """Crop tumor-centred ROIs into a cache folder (skips subjects that did not change)."""
    from tumoraug.data.cache import preprocess as run_preprocess

    report = run_preprocess(
        brats_dir, out_dir, size=size, modalities=modalities, workers=workers, strict=strict,
        labels_csv=labels_csv, overwrite=overwrite, progress=True,
    )  # fmt: skip
    for kind, subject, message in report.problems():
        style = "bold red" if kind == "failed" else "yellow"
        console.print(f"[{style}]{kind}:[/] {subject}: {message}", highlight=False)
    typer.echo(report.summary())
    if report.total == 0:
        raise typer.Exit(code=1)


@app.command()
@o.friendly_errors
def generate(
    model: str | None = o.opt("--model|-m", "Model folder or Hub id; default: the demo model."),
    label: str = o.opt("--label|-l", "HGG, LGG, 0 or 1; several as HGG,LGG (n of each).", ...),
    n: int = o.opt("--n|-n", "ROIs per label.", 8),
    out: str | None = o.opt("--out|-o", "Output folder of NIfTI files (created if needed)."),
    bank: str | None = o.opt("--bank", "Also or instead: a synthetic bank FILE.npy (+ FILE.json)."),
    bank_dtype: str = o.opt("--bank-dtype", "Bank storage: int16 or float16.", "int16"),
    seed: int = o.opt("--seed", "Base seed; sample j uses a seed derived from it.", 0),
    steps: int | None = o.STEPS,
    guidance: float | None = o.GUIDANCE,
    temperature: float | None = o.TEMPERATURE,
    scheduler: str | None = o.SCHEDULER,
    batch_size: int = o.opt("--batch-size", "ROIs per forward pass.", 4),
    device: str = o.DEVICE,
    fmt: str = o.opt("--format", "nii.gz or nii.", "nii.gz"),
    channels: str = o.opt(
        "--channels", "Several channels: split (a file per modality) or 4d (one file).", "split"
    ),
    overwrite: bool = o.opt("--overwrite", "Replace existing files.", False),
    cpu_bf16: bool | None = o.CPU_BF16,
) -> None:
    """Generate synthetic HGG / LGG ROIs as NIfTI files + manifest.json + preview.png,
    and/or into a synthetic bank (served by SyntheticTumorDataset.from_bank)."""
    from tumoraug.export import write_samples

    written = write_samples(
        model, label.split(","), n=n, out_dir=out, bank=bank, bank_dtype=bank_dtype, seed=seed,
        sampling=o.sampling_config(steps, guidance, temperature, scheduler=scheduler),
        batch_size=batch_size,
        device=device, fmt=fmt, channels=channels, overwrite=overwrite, progress=True,
        cpu_bf16=bool(cpu_bf16),
    )  # fmt: skip
    typer.echo("\n".join(written))


@app.command()
@o.friendly_errors
def evaluate(
    data: str = o.DATA,
    model: str | None = o.opt("--model|-m", "Model folder or Hub id making synthetic ROIs."),
    bank: str | None = o.opt("--bank", "Synthetic bank instead of a model."),
    synthetic: str | None = o.opt("--synthetic", "ROI cache of synthetic ROIs instead."),
    conditions: str | None = o.CONDITIONS,
    folds: int | None = o.opt("--folds", "Cross-validation folds (stratified by grade)."),
    run_folds: int | None = o.opt("--run-folds", "Run only the first N folds."),
    repeats: int | None = o.REPEATS,
    seeds: str | None = o.opt("--seeds", "Comma-separated training seeds."),
    ratios: str | None = o.RATIOS,
    train_size: int | None = o.TRAIN_SIZE,
    hgg_share: float | None = o.HGG_SHARE,
    class_ratio: float = o.opt("--class-ratio", "HGG fraction of generated ROIs.", 0.5),
    epochs: int | None = o.opt("--epochs", "Epochs on real data (and on the mix)."),
    pretrain_epochs: int | None = o.opt("--pretrain-epochs", "Epochs of pre-training."),
    batch_size: int | None = o.opt("--batch-size", "Classifier batch size."),
    lr: float | None = o.opt("--lr", "AdamW learning rate."),
    classifier: str | None = o.opt(
        "--classifier", "tumoraug (own ResNet3D; default) or MONAI's resnet10|resnet18|densenet121."
    ),
    width: int | None = o.opt("--width", "Channels of tumoraug's classifier's first stage."),
    steps: int | None = o.STEPS,
    guidance: str | None = o.GUIDANCES,
    scheduler: str | None = o.SCHEDULER,
    device: str = o.DEVICE,
    out: str = o.OUT,
) -> None:
    """Cross-validate an LGG/HGG classifier on real ROIs with and without synthetic ones."""
    from tumoraug.evaluation import evaluate_cache

    result, paths = evaluate_cache(
        data, out, model=model, bank=bank, synthetic=synthetic, conditions=o.word_list(conditions),
        protocol=o.given(
            folds=folds, run_folds=run_folds, repeats=repeats, epochs=epochs, device=device, lr=lr,
            pretrain_epochs=pretrain_epochs, batch_size=batch_size, train_size=train_size,
            hgg_share=hgg_share, ratios=o.number_list(ratios, "--ratios"),
            seeds=o.number_list(seeds, "--seeds", int),
        ),
        class_ratio=class_ratio, width=width, network=classifier,
        sampling=o.sampling_config(steps, None, None, scheduler=scheduler),
        guidance_values=o.number_list(guidance, "--guidance-values"), progress=True,
    )  # fmt: skip
    typer.echo(result.to_markdown(), nl=False)
    console.print(f"wrote {', '.join(str(p) for p in paths.values())} ({result.seconds:.0f} s)")


@app.command("evaluate-samples")
@o.friendly_errors
def evaluate_samples(
    data: str = o.DATA,
    model: list[str] = o.opt("--model|-m", "Model folder or Hub id; repeat it.", ...),  # noqa: B008
    n: int = o.opt("--n|-n", "Generated ROIs per grade and model.", 16),
    seed: int = o.opt("--seed", "Base seed of the generated ROIs.", 0),
    steps: int | None = o.STEPS,
    guidance: float | None = o.GUIDANCE,
    scheduler: str | None = o.SCHEDULER,
    feature_size: int = o.opt("--feature-size", "MMD features: pooled edge.", 16),
    max_pairs: int = o.opt("--max-pairs", "MS-SSIM pairs per set (at most).", 1000),
    device: str = o.DEVICE,
    cpu_bf16: bool | None = o.CPU_BF16,
    out: str = o.OUT,
) -> None:
    """Fidelity (MMD ×10⁴) and diversity (MS-SSIM) per grade of one or more models."""
    from tumoraug.evaluation import compare_models

    report, paths = compare_models(
        data, model, out, n_per_class=n, seed=seed, feature_size=feature_size,
        sampling=o.sampling_config(steps, guidance, None, scheduler=scheduler),
        max_pairs=max_pairs, device=device, cpu_bf16=bool(cpu_bf16),
    )  # fmt: skip
    typer.echo(report.to_markdown(), nl=False)
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}")


@app.command()
@o.friendly_errors
def push(
    model_dir: str = typer.Argument(..., help="Model folder (tumoraug.json, tokenizer/, ...)."),
    repo_id: str = typer.Argument(..., help="Hub repo OWNER/NAME (created if needed)."),
    private: bool = o.opt("--private", "Create the repo as private.", False),
    dry_run: bool = o.opt("--dry-run", "Print the plan and the model card; upload nothing.", False),
    token: str | None = o.opt("--token", "Hub token (default: HF_TOKEN or `hf auth login`)."),
    message: str | None = o.opt("--message", "Commit message."),
    license: str | None = o.opt("--license", "License id for the card, e.g. apache-2.0."),
) -> None:
    """Upload a model folder to the Hugging Face Hub with a model card from its metadata."""
    from tumoraug.hub import push_to_hub

    plan = push_to_hub(
        model_dir, repo_id, private=private, token=token, commit_message=message,
        license=license, dry_run=dry_run,
    )  # fmt: skip
    typer.echo(plan.describe())
    if dry_run:
        typer.echo(f"dry run, nothing written or uploaded; model card:\n\n{plan.card}", nl=False)
    else:
        typer.echo(f"uploaded: {plan.commit_url}")


app.command("train-tokenizer")(cli_train.train_tokenizer)
app.command("train-transformer")(cli_train.train_transformer)
app.command("train-baseline")(cli_train.train_baseline)
