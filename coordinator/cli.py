"""`pandalm-coordinator`: run a federated hyperparameter selection, watch it, report on it."""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from common.cli import cli_app, user_errors
from common.processes import stop_process
from coordinator.config import FederationConfigError, load_federation_config
from coordinator.console import latest_run, render
from coordinator.db import SCHEMA, open_database
from coordinator.launch import run_federation, start_superlink, write_connection
from dbschema import create_database_engine, current_line, upgrade_line

app = cli_app(__doc__)
console = Console(stderr=True)
DatabaseOption = Annotated[
    str, typer.Option("--database", help="coordinator database URL or SQLite file")
]


USER_ERRORS = (FederationConfigError, FileNotFoundError, TimeoutError, RuntimeError)
"""What a coordinator command shows as one error line (dbschema.SchemaError is a RuntimeError:
a database from a newer version)."""


def _user_errors() -> AbstractContextManager[None]:
    return user_errors(console, *USER_ERRORS)


def _url(database: str) -> str:
    return database if "://" in database else f"sqlite:///{Path(database).resolve()}"


@app.command()
def start(
    config: Annotated[Path, typer.Option("--config", "-c", help="federation.toml")],
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="run it over: delete the run's recorded comparisons first (the sites reuse "
            "their checkpoints and judgments)",
        ),
    ] = False,
) -> None:
    """Run the selection described by federation.toml. A run started before resumes, a failed
    or stopped one too (its left-out sites are asked again); `--restart` runs it over."""
    with _user_errors():
        federation = load_federation_config(config)
        run_federation(federation, console, restart=restart)
    console.print(
        f"run {federation.run.run_key} finished; report: pandalm-coordinator report "
        f"{federation.run.run_key} --database {federation.database_url} --out DIR"
    )


@app.command("console")
def live_console(
    database: DatabaseOption = "coordinator-state/coordinator.sqlite",
    run: Annotated[str | None, typer.Option(help="run name (default: the latest)")] = None,
    once: Annotated[bool, typer.Option(help="print one frame and exit")] = False,
) -> None:
    """A live view of a run: sites, rounds, tallies, leaderboard, best config so far."""
    with _user_errors():
        engine = open_database(_url(database))
    name = run or latest_run(engine)
    if name is None:
        console.print("[red]error:[/red] no run in this database yet")
        raise typer.Exit(2)
    if once:
        Console().print(render(engine, name))
        return
    with Live(render(engine, name), refresh_per_second=1) as live:
        while True:
            time.sleep(1)
            live.update(render(engine, name))


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="run name")],
    out: Annotated[Path, typer.Option("--out", "-o")],
    database: DatabaseOption = "coordinator-state/coordinator.sqlite",
    threshold: Annotated[float, typer.Option(help="superiority edge threshold")] = 0.1,
) -> None:
    """Write report.html, PNG figures and summary.json for a run."""
    from coordinator.report import write_report
    from coordinator.results import run_result

    with _user_errors():
        summary = write_report(run_result(open_database(_url(database)), run), out, threshold)
    print(json.dumps(summary["best_config"]))


db_app = cli_app("The coordinator database and its schema.")
app.add_typer(db_app, name="db")
OptionalConfig = Annotated[
    Path | None, typer.Option("--config", "-c", help="federation.toml (instead of --database)")
]


def _database_url(config: Path | None, database: str) -> str:
    return load_federation_config(config).database_url if config else _url(database)


@db_app.command("upgrade")
def db_upgrade(
    config: OptionalConfig = None,
    database: DatabaseOption = "coordinator-state/coordinator.sqlite",
) -> None:
    """Bring the coordinator database to this version's schema (start does it too); a
    database from a newer version is refused."""
    with _user_errors():
        _changed, line = upgrade_line(
            create_database_engine(_database_url(config, database)), SCHEMA
        )
    Console().print(line, highlight=False, soft_wrap=True)


@db_app.command("current")
def db_current(
    config: OptionalConfig = None,
    database: DatabaseOption = "coordinator-state/coordinator.sqlite",
) -> None:
    """The coordinator database's schema revision; changes nothing."""
    with _user_errors():
        line = current_line(create_database_engine(_database_url(config, database)), SCHEMA)
    Console().print(line, highlight=False, soft_wrap=True)


certs_app = cli_app("TLS certificates for the SuperLink.")
sites_app = cli_app("The sites allowed to connect.")
app.add_typer(certs_app, name="certs")
app.add_typer(sites_app, name="sites")
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="federation.toml")]


@certs_app.command("init")
def certs_init(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for ca.crt, server.pem, ...")],
    san: Annotated[list[str], typer.Option("--san", help="DNS name or IP of the SuperLink")],
) -> None:
    """Create a CA and the SuperLink's certificate; give sites ca.crt only."""
    from coordinator.certs import init_certificates

    with _user_errors():
        try:
            files = init_certificates(out, san)
        except (FileExistsError, ValueError) as exc:
            raise RuntimeError(str(exc)) from exc
    for name, path in files.items():
        console.print(f"{name}: {path}")


@app.command()
def superlink(config: ConfigOption) -> None:
    """Run the SuperLink alone (register sites with `sites add` while it runs)."""
    with _user_errors():
        federation = load_federation_config(config)
        process = start_superlink(federation.superlink, federation.state_dir)
        write_connection(federation.superlink, federation.state_dir)
    console.print(f"SuperLink on {federation.superlink.address}; log in {federation.state_dir}")
    try:
        process.wait()
    except KeyboardInterrupt:
        stop_process(process)


@sites_app.command("add")
def sites_add(
    name: Annotated[str, typer.Argument(help="the site's name, shown in results and reports")],
    key_file: Annotated[Path, typer.Argument(help="the site's public key (pandalm-agent enroll)")],
    config: ConfigOption,
) -> None:
    """Register a site's public key with the running SuperLink, under a name."""
    from coordinator.sites import register_site

    with _user_errors():
        federation = load_federation_config(config)
        node_id = register_site(federation, name, key_file)
    console.print(f"registered {name}: node {node_id}")


@sites_app.command("list")
def sites_list(config: ConfigOption) -> None:
    """The registered sites, their names and whether they are online."""
    from coordinator.sites import list_sites

    with _user_errors():
        nodes = list_sites(load_federation_config(config))
    print(json.dumps(nodes, indent=2))


@sites_app.command("remove")
def sites_remove(site: Annotated[str, typer.Argument(help="the site's name or node id")],
                 config: ConfigOption) -> None:  # fmt: skip
    """Unregister a site: its SuperNode can no longer connect."""
    from coordinator.sites import remove_site

    with _user_errors():
        node_id = remove_site(load_federation_config(config), site)
    console.print(f"unregistered {site} (node {node_id})")
