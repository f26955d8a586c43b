"""Databases of pandalm-fed (the agent's, the coordinator's, the judgment cache) on any
SQLAlchemy URL, their schemas kept by Alembic.

Each schema has its own Alembic script directory inside its package (agent/migrations,
coordinator/migrations, judge/migrations) and its own version table, so two schemas may share
one PostgreSQL database. Opening a database brings it to the code's schema: a brand-new one is
built by running every revision (the same path an old database takes, so the two cannot
differ), one made before Alembic was used (tables, no version table) is recognised as the
initial revision, an older one is upgraded in place, and one written by a newer version is
refused. This package imports none of the others: judge/ stays a library usable alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from filelock import FileLock
from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url

log = logging.getLogger(__name__)
POSTGRES_HINT = "PostgreSQL needs the driver: pip install 'pandalm-fed[postgres]' (psycopg)"


class SchemaError(RuntimeError):
    """A database this version cannot use: written by a newer one, or its driver is missing."""


@dataclass(frozen=True)
class Schema:
    """The tables of one database and the Alembic revisions that build them."""

    name: str  # "agent database", in messages
    scripts: Path  # the Alembic script directory (env.py, versions/)
    tables: tuple[Table, ...]
    version_table: str
    initial: str = "0001"  # the revision equal to the schema before Alembic managed it

    @classmethod
    def of_package(cls, name: str, module_file: str, models: Sequence[Any], key: str) -> Schema:
        """The schema of a package's table models: its Alembic scripts in the package's
        `migrations/` folder, its revision in its own version table `alembic_version_KEY` (so
        schemas can share one PostgreSQL database)."""
        return cls(
            name,
            Path(module_file).parent / "migrations",
            tuple(model.__table__ for model in models),
            f"alembic_version_{key}",
        )

    @property
    def metadata(self) -> MetaData:
        """This schema's tables alone (SQLModel keeps every table in one shared MetaData)."""
        metadata = MetaData()
        for table in self.tables:
            table.to_metadata(metadata)
        return metadata

    def owns(self, name: str | None, type_: str, _parent: Mapping[str, Any] | None = None) -> bool:
        """Alembic's include_name: compare only this schema's tables in a shared database."""
        return type_ != "table" or name in {t.name for t in self.tables}


@dataclass(frozen=True)
class Upgrade:
    """What opening a database did to its schema."""

    before: str | None  # None: a brand-new database
    after: str
    legacy: bool = False  # tables without a version table: recognised as the initial revision

    @property
    def changed(self) -> bool:
        return self.before != self.after or self.legacy

    def describe(self, schema: Schema, url: str) -> str:
        if self.before is None:
            return f"{schema.name} {url}: created at schema revision {self.after}"
        origin = f"{self.before} (made before schema versioning)" if self.legacy else self.before
        if self.before == self.after:
            return f"{schema.name} {url}: recorded as schema revision {origin}"
        return (
            f"{schema.name} {url}: upgraded in place from schema revision {origin} to {self.after}"
        )


def database_url(url: str) -> URL:
    """A SQLAlchemy URL; a plain `postgresql://` gets the psycopg (3) driver."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def shown(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _sqlite_file(url: URL) -> str | None:
    """The file of a SQLite URL (None for in-memory or another database)."""
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return url.database
    return None


def create_database_engine(url: str) -> Engine:
    """An engine for the URL. A SQLite file gets its folder, WAL mode and a 30 s busy timeout
    (a site's worker and its ClientApps write to it from separate processes)."""
    parsed = database_url(url)
    sqlite_file = _sqlite_file(parsed)
    if sqlite_file:
        Path(sqlite_file).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(parsed, connect_args={"timeout": 30} if sqlite_file else {})
    except ModuleNotFoundError as exc:
        shown_url = parsed.render_as_string(hide_password=True)
        raise SchemaError(f"{shown_url}: {POSTGRES_HINT}") from exc
    if sqlite_file:

        @event.listens_for(engine, "connect")
        def _wal(connection, _record) -> None:  # type: ignore[no-untyped-def]
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")

    return engine


def alembic_config(schema: Schema, connection: Connection) -> Config:
    """Alembic's configuration for the schema's scripts, on an open connection (env.py uses
    it instead of making its own)."""
    config = Config()
    config.set_main_option("script_location", str(schema.scripts))
    config.attributes["connection"] = connection
    return config


def _scripts(schema: Schema) -> ScriptDirectory:
    return ScriptDirectory(str(schema.scripts))


def head(schema: Schema) -> str:
    return _scripts(schema).get_current_head()


def stored_revision(connection: Connection, schema: Schema) -> tuple[str | None, bool]:
    """(revision, legacy): the version table's revision, else the initial one if the schema's
    tables are there without it (a database made before Alembic), else None (brand new)."""
    context = MigrationContext.configure(connection, opts={"version_table": schema.version_table})
    revision = context.get_current_revision()
    if revision is not None:
        return revision, False
    present = set(inspect(connection).get_table_names())
    if present & {t.name for t in schema.tables}:
        return schema.initial, True
    return None, False


def _known(revision: str, schema: Schema) -> bool:
    try:
        return _scripts(schema).get_revision(revision) is not None
    except CommandError:
        return False


def _check_known(revision: str | None, schema: Schema, url: str) -> None:
    if revision is not None and not _known(revision, schema):
        raise SchemaError(
            f"{schema.name} {url} is at schema revision {revision}, which this version of "
            f"pandalm-fed does not know (its newest is {head(schema)}): a newer version wrote "
            "it. Install that version (or newer), or use another database; databases are "
            "never downgraded."
        )


@contextmanager
def _migrating(engine: Engine, schema: Schema) -> Iterator[Connection]:
    """A transaction in which one process at a time migrates: PostgreSQL's advisory lock for
    the transaction, or a lock file beside a SQLite file held until the transaction has
    committed (released before the commit, a second process would read the old revision and
    build tables the first one had made); the revision is read again once the lock is held."""
    sqlite_file = _sqlite_file(engine.url)
    lock = FileLock(f"{sqlite_file}.migrate.lock") if sqlite_file else nullcontext()
    with lock, engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                               {"name": schema.version_table})  # fmt: skip
        yield connection


def upgrade(engine: Engine, schema: Schema, revision: str = "head") -> Upgrade:
    """Bring the database to `revision` (the code's head by default); refuse a newer one."""
    url = shown(engine)
    with engine.connect() as connection:
        before, legacy = stored_revision(connection, schema)
    _check_known(before, schema, url)
    target = head(schema) if revision == "head" else revision
    if before == target and not legacy:
        return Upgrade(before, target)
    with _migrating(engine, schema) as connection:
        before, legacy = stored_revision(connection, schema)
        _check_known(before, schema, url)
        if before != target or legacy:
            config = alembic_config(schema, connection)
            if legacy:
                command.stamp(config, schema.initial)
            command.upgrade(config, target)
    return Upgrade(before, target, legacy)


def open_database(url: str, schema: Schema) -> Engine:
    """An engine on the URL whose database is at the code's schema (upgraded in place, and
    logged, if it was older)."""
    engine = create_database_engine(url)
    outcome = upgrade(engine, schema)
    if outcome.changed and outcome.before is not None:
        log.warning(outcome.describe(schema, shown(engine)))
    return engine


def upgrade_line(engine: Engine, schema: Schema) -> tuple[bool, str]:
    """Upgrade to head; (whether anything changed, one line saying what), for the CLIs."""
    outcome = upgrade(engine, schema)
    if outcome.changed:
        return True, outcome.describe(schema, shown(engine))
    return False, f"{schema.name} {shown(engine)}: at schema revision {outcome.after} (up to date)"


def current_line(engine: Engine, schema: Schema) -> str:
    """One line on the database's schema revision against this version's, changing nothing."""
    with engine.connect() as connection:
        revision, legacy = stored_revision(connection, schema)
    newest = head(schema)
    if revision is None:
        state = "empty (opening it creates the schema)"
    elif legacy:
        state = f"made before schema versioning, i.e. revision {revision}; upgrade records it"
    elif revision == newest:
        state = f"schema revision {revision}, up to date"
    elif _known(revision, schema):
        state = f"schema revision {revision}, older than {newest}: `db upgrade` (or start) does it"
    else:
        state = f"schema revision {revision}, newer than this version's {newest}: refused"
    return f"{schema.name} {shown(engine)}: {state}"


def dialect_insert(dialect: str):  # type: ignore[no-untyped-def]
    """The dialect's INSERT with ON CONFLICT (SQLite and PostgreSQL): writers racing on one
    unique key store it once instead of failing."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise SchemaError(f"the {dialect} dialect is not supported (use SQLite or PostgreSQL)")
    return insert
