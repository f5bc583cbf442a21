"""The ``tumoraug`` command line: a thin typer layer over the public API.

Every command parses its options, calls one or two library functions and prints a short
summary; errors of the `TumorAugError` family are shown as one red line and exit code 1.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from tumoraug import __version__
from tumoraug.errors import TumorAugError

app = typer.Typer(
    name="tumoraug",
    help="Synthetic 3D brain-tumor ROIs for data augmentation (HGG / LGG).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Turn a `TumorAugError` into one clear line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TumorAugError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main() -> None:
    """Synthetic 3D brain-tumor ROIs for data augmentation (HGG / LGG)."""


@app.command()
def info() -> None:
    """Print the versions of tumoraug and its main dependencies."""
    import torch
    import torchio

    typer.echo(f"tumoraug {__version__}")
    typer.echo(f"python {platform.python_version()}")
    typer.echo(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()})")
    typer.echo(f"torchio {torchio.__version__}")


@app.command()
@friendly_errors
def phantom(
    out: str = typer.Argument(..., help="Output folder (BraTS 2019 layout: HGG/ and LGG/)."),
    per_class: int = typer.Option(20, "--per-class", help="Phantoms per grade."),
    seed: int = typer.Option(0, "--seed", help="Seed; the same seed writes the same bytes."),
    shape: tuple[int, int, int] = typer.Option(
        (240, 240, 155), "--shape", help="Volume shape D H W (1 mm voxels)."
    ),
    workers: int = typer.Option(1, "--workers", help="Parallel processes."),
) -> None:
    """Write procedural brain-tumor phantoms (HGG-like and LGG-like) in the BraTS layout."""
    from tumoraug.data.phantom import write_phantom_dataset

    write_phantom_dataset(out, per_class, seed=seed, shape=shape, workers=workers)
    typer.echo(f"wrote {2 * per_class} phantoms ({per_class} HGG, {per_class} LGG) to {out}")


@app.command()
@friendly_errors
def preprocess(
    brats_dir: str = typer.Argument(..., help="BraTS folder (HGG/ + LGG/, or flat + CSV)."),
    out_dir: str = typer.Argument(..., help="ROI cache folder (created or updated)."),
    size: int = typer.Option(128, "--size", help="ROI edge in voxels."),
    modalities: str = typer.Option("flair", "--modalities", help="Channels, e.g. flair,t1ce."),
    workers: int = typer.Option(1, "--workers", help="Parallel processes."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad subject."),
    labels_csv: str | None = typer.Option(
        None, "--labels-csv", help="CSV of subject,grade (flat layouts; found if omitted)."
    ),
) -> None:
    """Crop tumor-centred ROIs into a cache folder (skips subjects that did not change)."""
    from tumoraug.data.cache import preprocess as run_preprocess

    report = run_preprocess(
        brats_dir, out_dir, size=size, modalities=modalities, workers=workers, strict=strict,
        labels_csv=labels_csv, progress=True,
    )  # fmt: skip
    for subject, message in report.warnings:
        console.print(f"[yellow]warning:[/] {subject}: {message}", highlight=False)
    for subject, message in report.failed:
        console.print(f"[bold red]failed:[/] {subject}: {message}", highlight=False)
    typer.echo(report.summary())
    if report.total == 0:
        raise typer.Exit(code=1)


@app.command()
@friendly_errors
def generate(
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Model folder or Hub id (owner/name); default: the embedded demo model "
        "(trained on phantoms, see tumoraug/pretrained/demo/README.md).",
    ),
    label: str = typer.Option(
        ..., "--label", "-l", help="Grade: HGG, LGG, 0 or 1; several as HGG,LGG (n of each)."
    ),
    n: int = typer.Option(8, "--n", "-n", help="ROIs per label."),
    out: str | None = typer.Option(None, "--out", "-o", help="Output folder (created if needed)."),
    bank: str | None = typer.Option(
        None, "--bank", help="Write a synthetic bank (FILE.npy + FILE.json) instead of NIfTI files."
    ),
    bank_dtype: str = typer.Option("int16", "--bank-dtype", help="Bank storage: int16 or float16."),
    seed: int = typer.Option(0, "--seed", help="Base seed; sample j uses a seed derived from it."),
    steps: int = typer.Option(12, "--steps", help="Decoding rounds."),
    guidance: float = typer.Option(1.5, "--guidance", help="Classifier-free guidance (1 = off)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    batch_size: int = typer.Option(4, "--batch-size", help="ROIs per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    fmt: str = typer.Option("nii.gz", "--format", help="nii.gz or nii."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
) -> None:
    """Generate synthetic HGG / LGG ROIs as NIfTI files + manifest.json + preview.png,
    or into a synthetic bank (--bank FILE.npy, served by SyntheticTumorDataset.from_bank)."""
    from tumoraug.errors import ConfigError
    from tumoraug.generator import TumorGenerator, generate_to_folder
    from tumoraug.labels import to_labels
    from tumoraug.pretrained import demo_model_path

    labels = to_labels([part for part in label.split(",") if part.strip()])
    if model is None:
        model = str(demo_model_path())
    if out is None and bank is None:
        raise ConfigError("give --out FOLDER (NIfTI files) and/or --bank FILE (synthetic bank)")
    generator = TumorGenerator.from_pretrained(model, device=device)
    if bank is not None:
        from tumoraug.bank import SyntheticBank

        items = [v for v in labels for _ in range(n)]
        built = SyntheticBank.build(
            generator, len(items), items, bank, seed, dtype=bank_dtype, batch_size=batch_size,
            steps=steps, guidance_scale=guidance, temperature=temperature, overwrite=overwrite,
            progress=True,
        )  # fmt: skip
        typer.echo(f"wrote a bank of {len(built)} ROIs to {built.path}")
        if out is None:
            return
    manifest = generate_to_folder(
        generator, labels, out, n=n, seed=seed, steps=steps, guidance_scale=guidance,
        temperature=temperature, batch_size=batch_size, fmt=fmt, overwrite=overwrite,
        progress=True,
    )  # fmt: skip
    typer.echo(f"wrote {len(manifest['samples'])} ROIs to {out}")


def _int_list(text: str, option: str) -> tuple[int, ...]:
    from tumoraug.errors import ConfigError

    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated integers, got {text!r}") from None


@app.command()
@friendly_errors
def evaluate(
    data: str = typer.Option(..., "--data", "-d", help="Real ROI cache folder (from preprocess)."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="TumorGenerator folder or Hub id making the synthetic ROIs."
    ),
    bank: str | None = typer.Option(None, "--bank", help="Synthetic bank instead of a model."),
    synthetic: str | None = typer.Option(
        None, "--synthetic", help="ROI cache folder of synthetic ROIs instead of a model."
    ),
    conditions: str | None = typer.Option(
        None,
        "--conditions",
        help="Among real,mixed,pretrain (default: all with a synthetic source, else real).",
    ),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds (stratified by grade)."),
    run_folds: int | None = typer.Option(None, "--run-folds", help="Run only the first N folds."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated training seeds."),
    ratio: float = typer.Option(1.0, "--ratio", help="Synthetic ROIs per real training ROI."),
    class_ratio: float = typer.Option(0.5, "--class-ratio", help="HGG fraction of generated ROIs."),
    epochs: int = typer.Option(30, "--epochs", help="Epochs on real data (and on the mix)."),
    pretrain_epochs: int = typer.Option(15, "--pretrain-epochs", help="Epochs of pre-training."),
    batch_size: int = typer.Option(8, "--batch-size", help="Classifier batch size."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    width: int = typer.Option(16, "--width", help="Channels of the classifier's first stage."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    out: str = typer.Option("evaluation", "--out", "-o", help="Output folder for the reports."),
) -> None:
    """Cross-validate an LGG/HGG classifier on real ROIs with and without synthetic ones."""
    from tumoraug.data import ROIDataset
    from tumoraug.evaluation import ClassifierConfig, ProtocolConfig, run_protocol, synthetic_source

    real = ROIDataset(data)
    source = synthetic_source(
        model=model, bank=bank, roi_dir=synthetic, count=max(1, round(ratio * len(real))),
        class_ratio=class_ratio, device=device, progress=True,
    )  # fmt: skip
    if conditions is None:
        conditions = "real" if source is None else "real,mixed,pretrain"
    config = ProtocolConfig(
        conditions=tuple(c.strip() for c in conditions.split(",") if c.strip()),
        folds=folds, run_folds=run_folds, seeds=_int_list(seeds, "--seeds"), ratio=ratio,
        epochs=epochs, pretrain_epochs=pretrain_epochs, batch_size=batch_size, lr=lr,
        device=device,
    )  # fmt: skip
    classifier = ClassifierConfig(in_channels=real[0]["image"].shape[0], base_width=width)
    result = run_protocol(real, source, config=config, classifier=classifier, progress=True)
    paths = result.save(out)
    typer.echo(result.to_markdown(), nl=False)
    console.print(f"wrote {', '.join(str(p) for p in paths.values())} ({result.seconds:.0f} s)")


@app.command("evaluate-samples")
@friendly_errors
def evaluate_samples(
    data: str = typer.Option(..., "--data", "-d", help="Real ROI cache folder (from preprocess)."),
    model: list[str] = typer.Option(  # noqa: B008 - typer reads the default
        ..., "--model", "-m", help="TumorGenerator folder or Hub id; repeat to compare models."
    ),
    n: int = typer.Option(16, "--n", "-n", help="Generated ROIs per grade and model."),
    seed: int = typer.Option(0, "--seed", help="Base seed of the generated ROIs."),
    steps: int = typer.Option(12, "--steps", help="Decoding rounds."),
    guidance: float = typer.Option(1.5, "--guidance", help="Classifier-free guidance (1 = off)."),
    feature_size: int = typer.Option(16, "--feature-size", help="MMD features: pooled edge."),
    max_pairs: int = typer.Option(1000, "--max-pairs", help="MS-SSIM pairs per set (at most)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    out: str = typer.Option("evaluation", "--out", "-o", help="Output folder for the reports."),
) -> None:
    """Fidelity (MMD ×10⁴) and diversity (MS-SSIM) per grade of one or more models."""
    from pathlib import Path

    from tumoraug.data import ROIDataset
    from tumoraug.evaluation import evaluate_samples as run_report
    from tumoraug.generator import TumorGenerator

    models = {}
    for index, source in enumerate(model):
        name = Path(source).name or source
        models[name if name not in models else f"{name}-{index}"] = TumorGenerator.from_pretrained(
            source, device=device
        )
    report = run_report(
        ROIDataset(data), models, n_per_class=n, seed=seed, feature_size=feature_size,
        max_pairs=max_pairs, generate_kwargs={"steps": steps, "guidance_scale": guidance},
    )  # fmt: skip
    paths = report.save(out)
    typer.echo(report.to_markdown(), nl=False)
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}")


@app.command("train-tokenizer")
@friendly_errors
def train_tokenizer(
    cache_dir: str = typer.Argument(..., help="ROI cache folder (tumoraug preprocess)."),
    out_dir: str = typer.Argument(..., help="Output folder (checkpoints, metrics, tokenizer/)."),
    preset: str = typer.Option("brats128", "--preset", help="Config preset: brats128 or tiny."),
    config: str | None = typer.Option(None, "--config", help="TokenizerConfig JSON file."),
    roi_size: int | None = typer.Option(None, "--roi-size", help="Override the preset ROI size."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(2, "--batch-size", help="ROIs per step and process."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Checkpoint interval."),
    image_every: int = typer.Option(100, "--image-every", help="Montage interval (0 = off)."),
    grad_checkpointing: bool = typer.Option(
        False, "--grad-checkpointing", help="Recompute activations (less memory at 128³)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and data order."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue the last checkpoint."),
) -> None:
    """Train the stage-1 VQGAN tokenizer on a ROI cache; the model lands in OUT_DIR/tokenizer."""
    from tumoraug.config import TokenizerConfig
    from tumoraug.training.tokenizer import train_tokenizer as run

    settings = TokenizerConfig.from_json(config) if config else TokenizerConfig.preset(preset)
    if roi_size is not None:
        settings = settings.replace(roi_size=roi_size)
    result = run(
        settings, cache_dir, out_dir, max_steps=steps, batch_size=batch_size,
        grad_accum_steps=grad_accum, lr=lr, checkpoint_every=checkpoint_every,
        image_every=image_every, gradient_checkpointing=grad_checkpointing, device=device,
        seed=seed, resume=resume,
    )  # fmt: skip
    typer.echo(f"trained {result.step} steps; tokenizer in {out_dir}/tokenizer")


@app.command("train-generator")
@friendly_errors
def train_generator(
    out: str = typer.Option(..., "--out", "-o", help="Output folder (checkpoints, final model)."),
    tokenizer: str | None = typer.Option(
        None, "--tokenizer", "-t", help="Trained tokenizer folder (<train out>/tokenizer)."
    ),
    data: str | None = typer.Option(None, "--data", "-d", help="ROI cache folder (preprocess)."),
    corpus: str | None = typer.Option(
        None, "--corpus", help="Pre-encoded token corpus file, instead of --data."
    ),
    preset: str = typer.Option("brats128", "--preset", help="Config preset: brats128 or tiny."),
    config: str | None = typer.Option(None, "--config", help="TransformerConfig JSON file."),
    masking: str | None = typer.Option(None, "--masking", help="hybrid or random (MaskGIT)."),
    baseline: bool = typer.Option(
        False, "--baseline", help="The 3D-VQGAN baseline: one unconditional network per grade."
    ),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Token grids per step and process."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    lr: float = typer.Option(3e-4, "--lr", help="AdamW learning rate."),
    warmup: int = typer.Option(0, "--warmup", help="Linear warm-up steps."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Checkpoint interval."),
    image_every: int = typer.Option(0, "--image-every", help="Sample montage interval (0 = off)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, masking and data order."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue the last checkpoint."),
) -> None:
    """Train the stage-2 masked transformer on the tokens of a trained tokenizer."""
    from tumoraug.config import TransformerConfig
    from tumoraug.errors import ConfigError
    from tumoraug.training.generator import train_generator as run

    settings = TransformerConfig.from_json(config) if config else TransformerConfig.preset(preset)
    if baseline:
        settings = settings.baseline()
    if masking is not None:
        settings = settings.replace(masking=masking)
    if (data is None) == (corpus is None):
        raise ConfigError("give exactly one of --data (with --tokenizer) or --corpus")
    if data is not None and tokenizer is None:
        raise ConfigError("--data needs --tokenizer: the folder of a trained tokenizer")
    source = corpus if corpus is not None else (tokenizer, data)
    result = run(
        settings, source, out, tokenizer=tokenizer, max_steps=steps, batch_size=batch_size,
        grad_accum_steps=grad_accum, lr=lr, warmup_steps=warmup, device=device, seed=seed,
        resume=resume, checkpoint_every=checkpoint_every, image_every=image_every,
    )  # fmt: skip
    typer.echo(f"trained {result.step} steps; model in {out}")
