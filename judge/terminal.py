"""The one rich progress display of the command-line tools (`pandalm-judge`, `pandalm-train`);
here because `judge/` imports nothing of the others but `common/` and `trainer/` may import
`judge/`. Their one-line error exit is `common/cli.py`'s."""

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
    """A progress display on `console`: description, bar, done/total, elapsed and remaining
    time; with `detail`, every task carries a `detail` field (`add_task(..., detail="")`) shown
    after the count, e.g. the current epoch and loss."""
    columns: list[ProgressColumn] = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *([TextColumn("{task.fields[detail]}")] if detail else []),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    return Progress(*columns, console=console)
