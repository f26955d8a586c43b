"""What the four command-line tools share: how a command group is made, bad input shown as one
line with exit status 2, and the one rich progress display."""

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


@contextmanager
def user_errors(console: Console, *kinds: type[Exception]) -> Iterator[None]:
    """Turn these errors into one `error:` line and exit status 2; the message is escaped, as
    file names and settings may hold [brackets] that rich would take for markup."""
    try:
        yield
    except kinds as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def cli_app(help: str | None) -> typer.Typer:
    """A pandalm command (or command group): its help when run without a command, no
    shell-completion options."""
    return typer.Typer(help=help, no_args_is_help=True, add_completion=False)


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
