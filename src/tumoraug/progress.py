"""The one progress bar: rich on stderr, so that stdout stays clean for results."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class ProgressBar:
    """Handle of a running bar: `advance` it, change its `info` text or its description."""

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self._bar, self._task = bar, task

    def advance(self, k: int = 1, info: str | None = None) -> None:
        """Move ``k`` items forward; ``info`` replaces the text shown after the bar."""
        if self._bar is not None:
            fields = {} if info is None else {"info": info}
            self._bar.update(self._task, advance=k, **fields)

    def describe(self, description: str) -> None:
        """Replace the label in front of the bar."""
        if self._bar is not None:
            self._bar.update(self._task, description=description)


@contextlib.contextmanager
def progress_bar(
    description: str, total: int, *, enabled: bool = True, completed: int = 0
) -> Iterator[ProgressBar]:
    """Yield a `ProgressBar` over ``total`` items on stderr; a silent handle when disabled."""
    if not enabled:
        yield ProgressBar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total, completed=completed, info="")
        yield ProgressBar(bar, task)
