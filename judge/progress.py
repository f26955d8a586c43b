"""The one rich progress display of the command-line tools (`pandalm-judge`, `pandalm-train`):
description, bar, done/total, elapsed and remaining time; here because `judge/` imports nothing of
the others and `trainer/` may import `judge/`."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(console: Console, detail: bool = False) -> Progress:
    """A progress display on `console`; with `detail`, every task carries a `detail` field
    (`add_task(..., detail="")`) shown after the count, e.g. the current epoch and loss."""
    columns: list[ProgressColumn] = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *([TextColumn("{task.fields[detail]}")] if detail else []),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    return Progress(*columns, console=console)
