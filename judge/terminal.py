"""What the command-line tools (`pandalm-judge`, `pandalm-train`) show on the terminal: the one
rich progress display and the one-line error exit; here because `judge/` imports nothing of the
others and `trainer/` may import `judge/`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
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


@contextmanager
def user_errors(console: Console, *errors: type[Exception]) -> Iterator[None]:
    """Turn the known bad-input `errors` into one clear line on `console` and exit status 2."""
    try:
        yield
    except errors as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
