"""`pandalm-coordinator`, the console script: the coordinator's commands (coordinator/cli.py)
and `demo`. The demo starts sites as well as the coordinator, so it joins the command line
here, above both, and the coordinator never imports the site's code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from common.cli import cli_app, user_errors
from common.settings import AUTO
from coordinator import cli as coordinator_cli
from coordinator.selection import SELECTION_MODES

app = cli_app(coordinator_cli.__doc__)
app.add_typer(coordinator_cli.app)  # no name: its commands and groups join this one's
console = Console(stderr=True)


@app.command()
def demo(
    sites: Annotated[int, typer.Option(min=1, max=8, help="number of sites")] = 3,
    out: Annotated[Path, typer.Option("--out", help="keeps everything of the run")] = Path(
        "pandalm-demo"
    ),
    selection_mode: Annotated[
        str, typer.Option(help=" | ".join((*SELECTION_MODES, AUTO)))
    ] = "paper",
) -> None:
    """The whole federation on loopback with the embedded defaults."""
    # imported when run: the launcher loads torch and the report's plotting, which the
    # coordinator's own commands do without
    from demo.launcher import run_demo

    with user_errors(console, *coordinator_cli.USER_ERRORS):
        run_demo(sites, out, selection_mode, console)
