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
