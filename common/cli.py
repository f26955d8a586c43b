"""What the command-line tools share: bad input shown as one line, exit status 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape


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
