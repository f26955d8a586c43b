"""`pandalm-agent`: run a data-owner site of a pandalm-fed federation."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlmodel import Session, func, select

from agent.config import (
    SiteConfig,
    SiteConfigError,
    check_judge_endpoint,
    load_site_config,
    site_toml,
)
from agent.db import SCHEMA, ComparisonJob, ReferenceScore, SiteRun, ledger, open_database
from common.cli import cli_app, user_errors
from common.protocol import Code, code_meaning
from dbschema import (
    Schema,
    SchemaError,
    create_database_engine,
    current_line,
    upgrade_line,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

app = cli_app(__doc__)
console = Console(stderr=True)
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="the site's site.toml")]


@contextmanager
def _site(config_path: Path) -> Iterator[SiteConfig]:
    """The site's config; a SiteConfigError while loading it or in the command's body (a judge
    server off the site's network) is one error line and exit status 2."""
    with user_errors(console, SiteConfigError):
        yield load_site_config(config_path)


@app.command()
def init(
    name: Annotated[str, typer.Option(help="the site's name")],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("site.toml"),
    seed: Annotated[int, typer.Option(help="shard seed of the builtin demo data")] = 0,
) -> None:
    """Write a site.toml to start from."""
    if out.exists():
        console.print(f"[red]error:[/red] {escape(str(out))} exists")
        raise typer.Exit(2)
    out.write_text(site_toml(name, seed))
    console.print(f"wrote {out}")


@app.command()
def enroll(config: ConfigOption) -> None:
    """Create this site's key pair (once) and print the public key for the coordinator."""
    from agent.identity import enroll as create_keys

    with _site(config) as site:
        public = create_keys(site.keys_dir, comment=site.name)
    console.print(f"public key: {public} (send it to the coordinator's operator)")
    print(public.read_text().strip())


def _preflight(site: SiteConfig) -> None:
    """Preflight (agent/preflight.py): the disk estimate, then one `error:` line per problem
    and exit status 2 if there is any."""
    from agent.preflight import disk_estimate, site_problems

    problems = site_problems(site)
    estimate = disk_estimate(site)
    if estimate is not None:
        console.print(estimate.line(), highlight=False, soft_wrap=True)
    for problem in problems:
        console.print(f"[red]error:[/red] {escape(problem.text)}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)


@app.command()
def check(config: ConfigOption) -> None:
    """Check everything the site needs without starting anything: the config, every record of
    its data files, the judge, the base model, that its data directory and databases can be
    written, and the disk its checkpoints take (estimated). One line per problem, exit 2."""
    with _site(config) as site:
        _preflight(site)
    console.print(f"site {site.name}: ready")


@app.command()
def start(
    config: ConfigOption,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Job workers, each on one device (default: [site] workers)."),
    ] = None,
) -> None:
    """Run the site: the job workers and the Flower SuperNode, restarted if they exit; the
    checks of `check` come first, and nothing starts if one fails."""
    from dataclasses import replace

    from agent.supervisor import supervise

    with _site(config) as site:
        if workers is not None:
            site = replace(site, workers=workers)
        _preflight(site)
    with _schema_errors():
        for changed, line in _upgrade(site):
            if changed:
                console.print(line, highlight=False, soft_wrap=True)
    console.print(f"site {site.name}: data in {site.data_dir}, logs in {site.data_dir / 'logs'}")
    supervise(site)


def _schema_errors() -> AbstractContextManager[None]:
    return user_errors(console, SchemaError)


def _databases(site: SiteConfig) -> list[tuple[Engine, Schema]]:
    """The site's databases: its state and its judgment cache."""
    from judge.cache import SCHEMA as JUDGE_CACHE

    return [
        (create_database_engine(site.database_url), SCHEMA),
        (create_database_engine(site.judge_cache), JUDGE_CACHE),
    ]


def _upgrade(site: SiteConfig) -> list[tuple[bool, str]]:
    return [upgrade_line(engine, schema) for engine, schema in _databases(site)]


db_app = cli_app("The site's databases and their schema.")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption) -> None:
    """Bring the site's database and judgment cache to this version's schema (start does it
    too); a database from a newer version is refused."""
    with _site(config) as site, _schema_errors():
        for _changed, line in _upgrade(site):
            Console().print(line, highlight=False, soft_wrap=True)


@db_app.command("current")
def db_current(config: ConfigOption) -> None:
    """The schema revision of the site's database and judgment cache; changes nothing."""
    with _site(config) as site, _schema_errors():
        for engine, schema in _databases(site):
            Console().print(current_line(engine, schema), highlight=False, soft_wrap=True)


@app.command(hidden=True)
def worker(
    config: ConfigOption,
    slot: Annotated[int, typer.Option(min=1, help="This worker's slot (its lease name).")] = 1,
) -> None:
    """A job worker (started by `start`, one per slot)."""
    from agent.worker import SiteWorker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with _site(config) as site:
        check_judge_endpoint(site)
    SiteWorker(site, slot=slot).run_forever()


@app.command(hidden=True)
def guard(config: ConfigOption) -> None:
    """The app guard (started by `start`): runs only this version's own app bundle."""
    from agent.guard import AppGuard, trusted_fab_hash

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with _site(config) as site, _schema_errors():
        engine = open_database(site.database_url)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one request per poll
    trusted = trusted_fab_hash()
    logging.info("trusted app bundle %s", trusted)
    AppGuard(f"127.0.0.1:{site.flower.clientappio_port}", engine, trusted).run_forever()


@app.command()
def status(config: ConfigOption) -> None:
    """The runs this site joined and how far their work is."""
    with _site(config) as site, _schema_errors():
        engine = open_database(site.database_url)
    table = Table(title=f"site {site.name}")
    for column in ("run", "configs", "stage", "progress", "comparisons done", "pending"):
        table.add_column(column)
    table.add_column("reason", overflow="fold")
    with Session(engine) as session:
        for run in session.exec(select(SiteRun).order_by(SiteRun.created)):
            counts = dict(
                session.exec(
                    select(ComparisonJob.status, func.count())
                    .where(ComparisonJob.run_key == run.run_key)
                    .group_by(ComparisonJob.status)
                ).all()
            )
            table.add_row(
                run.run_key,
                str(len(run.ids())),
                run.stage,
                f"{run.progress / 10:.0f}%",
                str(counts.get("done", 0)),
                str(counts.get("pending", 0)),
                escape(_failure_reason(run)),
            )
    Console().print(table)
    _print_results(engine)
    _print_reference_scores(engine)
    _print_disk_use(site)


def _print_results(engine: Engine) -> None:
    """Each run's outcome as the coordinator sent it: the chosen config and its parameters."""
    from agent.results import site_results

    results = site_results(engine)
    if not results:
        return
    table = Table(title="chosen configs (sent by the coordinator)")
    for column in ("run", "chosen", "hyperparameters", "evidence", "versus baseline"):
        table.add_column(column, overflow="fold")
    for result in results:
        table.add_row(
            result.run_key,
            result.best_id,
            result.describe_params(),
            result.describe_evidence(),
            result.describe_baseline(),
        )
    Console().print(table)


def _print_disk_use(site: SiteConfig) -> None:
    from agent.results import disk_use

    use = disk_use(site.candidates_dir)
    Console().print(
        f"candidates: {use.bytes / 2**20:.1f} MiB in {site.candidates_dir} "
        f"({use.with_weights} checkpoints with weights, {use.without_weights} without)",
        highlight=False,
        soft_wrap=True,
    )


def _failure_reason(run: SiteRun) -> str:
    """Why a run failed: the code sent to the coordinator, its meaning, and the text that
    stays at the site (file, line and field)."""
    if not run.error_code:
        return ""
    head = f"{Code(run.error_code).name}: {code_meaning(run.error_code)}"
    return f"{head}\n{run.error}" if run.error else head


def _print_reference_scores(engine) -> None:
    """The site's own judge-free check of its candidates (it never leaves the site)."""
    with Session(engine) as session:
        rows = session.exec(select(ReferenceScore).order_by(ReferenceScore.run_key)).all()
    if not rows:
        return
    table = Table(title="reference check (this site's validation items; never sent)")
    for column in ("run", "config", "metric", "value", "items"):
        table.add_column(column)
    for row in sorted(  # per run and metric, the best first
        rows,
        key=lambda r: (r.run_key, r.metric, -r.value if r.metric == "exact_match" else r.value),
    ):
        table.add_row(row.run_key, row.config_id, row.metric, f"{row.value:.3f}", str(row.items))
    Console().print(table)


@app.command()
def export(
    config: ConfigOption,
    run: Annotated[str, typer.Option(help="the run whose chosen config to export")],
    out: Annotated[Path, typer.Option("--out", "-o", help="a new (or empty) directory")],
    merge: Annotated[
        bool, typer.Option(help="merge a LoRA adapter into the base: a transformers model")
    ] = False,
    gguf: Annotated[
        str | None, typer.Option(help="also write a GGUF for llama.cpp: f16, q8_0 or q4_k_m")
    ] = None,
) -> None:
    """Write the model of the config the run chose, with a model card (README.md); a full
    fine-tuning winner whose weights were deleted is trained again from the run's seed."""
    from agent.export import ExportError, export_model
    from common.records import InputError
    from judge.models import ModelNotFoundError
    from trainer.arguments import SettingsError

    errors = (ExportError, InputError, ModelNotFoundError, SettingsError)
    with _site(config) as site, user_errors(console, *errors):
        report = export_model(site, run, out, merge=merge, gguf=gguf)
    console.print(
        f"wrote {report.out} ({report.form} of config {report.config_id}"
        + (", retrained from the run's seed" if report.rebuilt else "")
        + (f", {report.gguf.name}" if report.gguf else "")
        + f"; {report.bytes / 2**20:.1f} MiB)",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def audit(
    config: Annotated[Path | None, typer.Option("--config", "-c")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="the site's data directory")] = None,
    run: Annotated[str | None, typer.Option(help="only this run")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Everything this site has sent, from its egress ledger."""
    if config is not None:
        with _site(config) as site:
            url = site.database_url
    elif data_dir is not None:
        url = f"sqlite:///{data_dir / 'agent.sqlite'}"
    else:
        console.print("[red]error:[/red] give --config or --data-dir")
        raise typer.Exit(2)
    with _schema_errors():
        entries = ledger(open_database(url), run)
    if as_json:
        rows = [
            {
                "time": e.time.isoformat(),
                "run": e.run_key,
                "message_type": e.message_type,
                "bytes": e.bytes,
                "content": json.loads(e.content),
            }
            for e in entries
        ]
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    table = Table(title=f"egress ledger ({len(entries)} payloads)")
    for column in ("time", "run", "message", "bytes", "content"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            e.time.isoformat(timespec="seconds"), e.run_key, e.message_type, str(e.bytes), e.content
        )
    Console().print(table)


@app.command()
def bundle(
    out: Annotated[Path, typer.Option("--out", "-o", help="the bundle (.tar.gz or .tar)")] = Path(
        "site-bundle.tar.gz"
    ),
    judge: Annotated[str, typer.Option(help="judge spec whose model the bundle carries")] = (
        "builtin"
    ),
    base: Annotated[
        Path | None,
        typer.Option(help="base model directory (default: the builtin SmolLM2's GGUF)"),
    ] = None,
    wheels: Annotated[
        list[Path] | None,
        typer.Option("--wheels", help="folder of locally built wheels (llama-cpp-python)"),
    ] = None,
) -> None:
    """Pack an offline install bundle for an air-gapped site of this platform: wheels for this
    project and every dependency, the models, a site.toml template and install.sh."""
    from agent.bundle import BundleError, build_bundle

    with user_errors(console, BundleError):
        result = build_bundle(out, judge=judge, base=base, wheels=wheels or [], log=console.print)
    console.print(
        f"wrote {result.path} ({result.size / 1e6:.0f} MB: {result.wheels} wheels, "
        f"models {', '.join(result.models)}; llama.cpp CPU baseline {result.cpu_baseline}); "
        f"on the site: tar xzf {result.path.name} && "
        "pandalm-bundle/install.sh --help"
    )
