"""The options and option parsers that the ``tumoraug`` commands share, declared once.

An option whose default is None is left out of the config it feeds, so the library's own
default (`SamplingConfig`, `TrainConfig`, the recipes) applies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from tumoraug.errors import TumorAugError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def opt(flags: str, help: str, default: Any = None) -> Any:
    """A typer option; ``default=None`` leaves the library's default in charge."""
    return typer.Option(default, *flags.split("|"), help=help)


def given(**options: Any) -> dict[str, Any]:
    """The options the user set (None means: keep the config's default)."""
    return {name: value for name, value in options.items() if value is not None}


def sampling_config(
    steps: int | None, guidance: float | None, temperature: float | None, **more: Any
) -> dict[str, Any]:
    """The sampling options that were given, as overrides of the model's own defaults (each
    generator kind has its settings class); values are checked here so that errors name the
    option. ``more``: kind-specific settings (e.g. ``scheduler``), passed on as they are."""
    from tumoraug.errors import ConfigError
    from tumoraug.sampling import SamplingConfig

    flags = {"steps": "--steps", "guidance_scale": "--guidance", "temperature": "--temperature"}
    options = given(steps=steps, guidance_scale=guidance, temperature=temperature)
    try:
        SamplingConfig(**options)
        return {**options, **given(**more)}
    except ConfigError as exc:
        field = str(exc).partition(":")[0].removeprefix("SamplingConfig.")
        raise ConfigError(f"{exc} (CLI: {flags[field]})" if field in flags else str(exc)) from None


def number_list(
    text: str | None, option: str, kind: type[int] | type[float] = float
) -> tuple[Any, ...] | None:
    """Parse comma-separated integers or numbers (None stays None), or fail naming the option."""
    from tumoraug.errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ConfigError(f"{option}: expected comma-separated {what}, got {text!r}") from None


STEPS = opt("--steps", "Decoding rounds / denoising steps (default: the model's settings).")
SCHEDULER = opt("--scheduler", "Diffusion baselines: ddpm or ddim (default: the model's).")
TRAIN_STEPS = opt("--steps", "Optimizer steps (default: TrainConfig preset of the stage).")
BATCH = opt("--batch-size", "Items per step and process.")
ACCUM = opt("--grad-accum", "Micro-batches per optimizer step.")
LR = opt("--lr", "Learning rate.")
LR_SCHEDULE = opt("--lr-schedule", "constant or cosine (to min_lr_ratio at the last step).")
CPU_BF16 = opt("--cpu-bf16", "bf16 autocast on the CPU too (as on CUDA).")
CHECKPOINT_EVERY = opt("--checkpoint-every", "Checkpoint interval in steps.")
IMAGE_EVERY = opt("--image-every", "PNG montage interval in steps (0 = off).")
TRAIN_DEVICE = opt("--device", "auto, cpu or cuda.")
SEED = opt("--seed", "Seed of initialisation, data order and masking.")
RESUME = opt("--resume/--no-resume", "Continue the last checkpoint.", True)
PRESET = opt("--preset", "Preset: brats128, paper128, small32 or tiny.", "brats128")
OUT = opt("--out|-o", "Output folder for the reports.", "evaluation")
DATA = opt("--data|-d", "Real ROI cache folder (from preprocess).", ...)
GUIDANCE = opt("--guidance", "Classifier-free guidance, 1 = off.")
TEMPERATURE = opt("--temperature", "Sampling temperature.")


DEVICE = opt("--device", "auto, cpu or cuda.", "auto")


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


def assignments(items: list[str] | None, option: str) -> dict[str, Any] | None:
    """``FIELD=VALUE`` items (values as JSON, else as text) as a dict; None when none given."""
    import json

    from tumoraug.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items or []:
        field, sep, text = item.partition("=")
        if not sep or not field.strip():
            raise ConfigError(f"{option}: expected FIELD=VALUE, got {item!r}")
        try:
            out[field.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[field.strip()] = text
    return out or None


def word_list(text: str | None) -> tuple[str, ...] | None:
    """Comma-separated words, stripped (None stays None)."""
    return None if text is None else tuple(w.strip() for w in text.split(",") if w.strip())


CONDITIONS = opt("--conditions", "real,mixed,pretrain,balance,synthetic_only (default: 3 first).")
RATIOS = opt("--ratios|--ratio", "Synthetic ROIs per real training ROI; a sweep: 1,5,20.")
GUIDANCES = opt("--guidance-values|--guidance", "Guidance scales, a source each: 1,1.5,3.")
TRAIN_SIZE = opt("--train-size", "Real training ROIs per run, subsampled from each fold.")
HGG_SHARE = opt("--hgg-share", "HGG share of the training subsample (0.75 = 3:1).")
REPEATS = opt("--repeats", "Repeat the k-fold split with new split seeds.")
