"""The three databases (agent, coordinator, judgment cache) on SQLite and on a real PostgreSQL
server: Alembic builds a new one, upgrades an old one in place with every row intact,
recognises one made before Alembic, refuses one from a newer version."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Boolean, DateTime, Float, Integer, MetaData, String, insert, select, text
from typer.testing import CliRunner

import dbschema
from agent.db import SCHEMA as AGENT
from agent.db import ledger, open_database, record_egress
from common.settings import RunSettings
from common.tally import Tally
from coordinator.db import SCHEMA as COORDINATOR
from dbschema import Schema, SchemaError
from judge.cache import SCHEMA as JUDGE_CACHE
from judge.cache import JudgmentCache

SCHEMAS = {"agent": AGENT, "coordinator": COORDINATOR, "judge": JUDGE_CACHE}


def _revision(url: str, schema: Schema) -> str | None:
    engine = dbschema.create_database_engine(url)
    with engine.connect() as connection:
        return dbschema.stored_revision(connection, schema)[0]


def _sample(column, row: int):  # type: ignore[no-untyped-def]
    """A value of the column's type, different per row (unique keys stay unique)."""
    if column.nullable and row == 1:
        return None
    if isinstance(column.type, Boolean):
        return row % 2 == 0
    if isinstance(column.type, Integer):
        return 10 * row + 7
    if isinstance(column.type, Float):
        return row + 0.25
    if isinstance(column.type, DateTime):
        return datetime(2026, 1, 2, 3, 4, row)
    assert isinstance(column.type, String), column.type
    return f"{column.table.name}.{column.name} #{row} ü"


def _fill(url: str, schema: Schema) -> dict[str, list[tuple]]:
    """Three rows in every table of the schema as the database has it now (reflected); the
    integer surrogate keys come from the database, as they would in use."""
    engine = dbschema.create_database_engine(url)
    tables = _reflected(url, schema)
    with engine.begin() as connection:
        for table in tables.sorted_tables:
            for row in range(3):
                values = {
                    c.name: _sample(c, row)
                    for c in table.columns
                    if not (c.primary_key and isinstance(c.type, Integer))
                }
                connection.execute(insert(table).values(**values))
    return _rows(url, tables)


def _rows(url: str, tables: MetaData) -> dict[str, list[tuple]]:
    engine = dbschema.create_database_engine(url)
    with engine.connect() as connection:
        return {
            table.name: [
                tuple(row)
                for row in connection.execute(
                    select(*table.columns).order_by(*table.primary_key.columns)
                )
            ]
            for table in tables.sorted_tables
        }


def _reflected(url: str, schema: Schema) -> MetaData:
    """The schema's tables that the database has at its revision (later ones may be missing)."""
    names = {t.name for t in schema.tables}
    tables = MetaData()
    tables.reflect(dbschema.create_database_engine(url), only=lambda name, _metadata: name in names)
    return tables


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_a_new_database_is_built_by_the_migrations_and_matches_the_models(
    new_database_url, name: str
) -> None:
    schema = SCHEMAS[name]
    url = new_database_url(name)
    engine = dbschema.open_database(url, schema)
    assert _revision(url, schema) == dbschema.head(schema)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "version_table": schema.version_table,
                "include_name": schema.owns,
                "compare_type": True,
            },
        )
        assert compare_metadata(context, schema.metadata) == []  # no revision missing


@pytest.mark.parametrize("made_before_alembic", [False, True], ids=["initial", "pre-alembic"])
def test_an_initial_database_is_upgraded_to_head_with_every_row_intact(
    new_database_url, made_before_alembic: bool, caplog: pytest.LogCaptureFixture
) -> None:
    urls = {name: new_database_url(name) for name in SCHEMAS}
    before = {}
    for name, schema in SCHEMAS.items():
        engine = dbschema.create_database_engine(urls[name])
        dbschema.upgrade(engine, schema, schema.initial)
        if made_before_alembic:  # today's schema from create_all: tables, no version table
            with engine.begin() as connection:
                connection.execute(text(f"DROP TABLE {schema.version_table}"))
        before[name] = _fill(urls[name], schema)
        assert all(len(rows) == 3 for rows in before[name].values())

    with caplog.at_level(logging.WARNING, logger="dbschema"):
        agent = open_database(urls["agent"])
        from coordinator.db import open_database as open_coordinator_database

        open_coordinator_database(urls["coordinator"])
        cache = JudgmentCache(urls["judge"])
    for name, schema in SCHEMAS.items():
        assert _revision(urls[name], schema) == dbschema.head(schema)
        # by position: later revisions rename columns (coordinator 0003), keeping their order,
        # and add columns at the end (agent 0002: worker leases), which the rows are cut to
        after = _rows(urls[name], _reflected(urls[name], schema))
        kept = {
            table: [row[: len(rows[0])] for row in after[table]]
            for table, rows in before[name].items()
        }
        assert kept == before[name], name
    said = [r.getMessage() for r in caplog.records]
    if made_before_alembic:
        assert len(said) == 3 and all("made before schema versioning" in m for m in said), said

    # and the code works on them: new rows get fresh keys after the stored ones
    record_egress(agent, "run-x", "compare", {"status": 0})
    assert [e.run_key for e in ledger(agent, "run-x")] == ["run-x"]
    cache.put_many({"k": {"verdict": "1"}})
    assert cache.get_many(["k"]) == {"k": {"verdict": "1"}}

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dbschema"):
        open_database(urls["agent"])
    assert caplog.records == []  # said once


def test_a_0002_coordinator_database_upgrades_to_run_key_and_selection_mode(
    new_database_url,
) -> None:
    """0003 renames a run's key and mode columns (and the keys of its recorded settings): a run
    recorded at 0002 reads the same afterwards, and resumes with the same settings."""
    url = new_database_url("coordinator")
    engine = dbschema.create_database_engine(url)
    dbschema.upgrade(engine, COORDINATOR, "0002")
    settings = RunSettings(run_key="old-run", selection_mode="auto")
    recorded = {**asdict(settings), "name": "old-run", "mode": "auto"}
    del recorded["run_key"], recorded["selection_mode"]  # as 0002's code wrote them
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO federated_run (name, mode, config_ids, params, settings, status, "
                "aggregation, started) VALUES ('old-run', 'racing', '[\"a\", \"b\"]', '[{}, {}]', "
                ":settings, 'running', '', '2026-01-02 03:04:05')"
            ),
            {"settings": json.dumps(recorded)},
        )
        connection.execute(
            text("INSERT INTO run_site (run_name, node_id, status, reason, progress) "
                 "VALUES ('old-run', '7', 'active', '', 1000)")
        )  # fmt: skip
        connection.execute(
            text(
                "INSERT INTO comparison_result (run_name, a, b, item_start, item_stop, win, tie, "
                "loss, invalid, items, sites, secure, round, recorded) VALUES ('old-run', 1, 0, "
                "0, 4, 3, 1, 0, 0, 4, 2, false, 3, '2026-01-02 03:04:06')"
            )
        )
    from coordinator.db import open_database as open_coordinator_database
    from coordinator.results import run_result
    from coordinator.run_store import RunStore

    engine = open_coordinator_database(url)
    assert _revision(url, COORDINATOR) == dbschema.head(COORDINATOR)
    result = run_result(engine, "old-run")
    assert (result.run_key, result.selection_mode, result.requested_mode) == (
        "old-run", "racing", "auto",
    )  # fmt: skip
    assert result.comparisons == [(1, 0, Tally(3, 1, 0, 0, 4))] and result.sites == ["node-7"]
    store = RunStore(engine, "old-run")
    assert store.open(settings, ["a", "b"], [{}, {}]) == "racing", "resumes as recorded"
    assert [row.round for row in store.recorded()] == [3]


NEW_COLUMN_REVISION = '''"""A column added after the schema's head (test only).

Revision ID: {revision}
Revises: {down_revision}
"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("comparison_job") as batch:
        batch.add_column(sa.Column("note", sa.String(), nullable=False, server_default="none"))


def downgrade() -> None:
    with op.batch_alter_table("comparison_job") as batch:
        batch.drop_column("note")
'''


def _initial_revision_only(folder: str, names: list[str]) -> list[str]:
    """What copying the agent's scripts leaves out: caches and every revision after 0001."""
    later = [n for n in names if Path(folder).name == "versions" and not n.startswith("0001")]
    return [n for n in names if n == "__pycache__"] + later


def test_a_new_column_is_one_revision_file(new_database_url, tmp_path: Path) -> None:
    """The mechanism for the next schema change: a revision file beside the head upgrades a
    filled database in place (SQLite copies the table in batch mode; PostgreSQL alters it)."""
    head = dbschema.head(AGENT)
    revision = f"{int(head) + 1:04d}"
    scripts = tmp_path / "migrations"
    shutil.copytree(AGENT.scripts, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / f"{revision}_note.py").write_text(
        NEW_COLUMN_REVISION.format(revision=revision, down_revision=head)
    )
    schema = Schema(AGENT.name, scripts, AGENT.tables, AGENT.version_table)
    url = new_database_url("agent")
    dbschema.upgrade(dbschema.create_database_engine(url), schema, head)
    before = _fill(url, schema)

    outcome = dbschema.upgrade(dbschema.create_database_engine(url), schema)
    assert (outcome.before, outcome.after) == (head, revision)
    after = _rows(url, _reflected(url, schema))
    jobs = after.pop("comparison_job")
    assert after == {k: v for k, v in before.items() if k != "comparison_job"}
    assert [row[:-1] for row in jobs] == before["comparison_job"]
    assert [row[-1] for row in jobs] == ["none"] * 3
    # the code of 0001 refuses the database it can no longer read
    with pytest.raises(SchemaError, match=rf"revision {revision}, which .* newest is {head}"):
        open_database(url)


def test_a_database_from_a_newer_version_is_refused(new_database_url) -> None:
    url = new_database_url("agent")
    engine = open_database(url)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {AGENT.version_table} SET version_num = '0099'"))
    with pytest.raises(SchemaError, match=r"agent database .* revision 0099, .*a newer version"):
        open_database(url)
    assert _revision(url, AGENT) == "0099"  # left alone


def test_processes_opening_a_new_database_at_once_build_it_once(new_database_url) -> None:
    url = new_database_url("agent")
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            open_database(url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _revision(url, AGENT) == dbschema.head(AGENT)


def test_judgment_cache_stores_and_replaces(new_database_url) -> None:
    cache = JudgmentCache(new_database_url("cache"))
    cache.put_many({"a": {"v": 1}, "b": {"v": 2}})
    cache.put_many({"a": {"v": 3}})
    assert cache.get_many(["a", "b", "c"]) == {"a": {"v": 3}, "b": {"v": 2}}


def test_db_verbs_of_both_clis(new_database_url, tmp_path: Path) -> None:
    from agent.cli import app as agent_cli
    from coordinator.cli import app as coordinator_cli

    agent_url, coordinator_url = new_database_url("agent"), new_database_url("coordinator")
    site = tmp_path / "site.toml"
    site.write_text(f'[site]\nname = "s"\ndatabase = "{agent_url}"\n')
    runner = CliRunner()
    dbschema.upgrade(dbschema.create_database_engine(agent_url), AGENT, AGENT.initial)

    current = runner.invoke(agent_cli, ["db", "current", "-c", str(site)])
    assert current.exit_code == 0, current.output
    assert "agent database" in current.output and "0001" in current.output

    done = runner.invoke(agent_cli, ["db", "upgrade", "-c", str(site)])
    assert done.exit_code == 0, done.output
    head = dbschema.head(AGENT)
    upgraded = f"from schema revision {AGENT.initial} to {head}"
    assert (f"at schema revision {head}" if head == AGENT.initial else upgraded) in " ".join(
        done.output.split()
    )

    result = runner.invoke(coordinator_cli, ["db", "upgrade", "--database", coordinator_url])
    assert result.exit_code == 0 and "created at schema revision" in result.output, result.output
    result = runner.invoke(coordinator_cli, ["db", "current", "--database", coordinator_url])
    assert result.exit_code == 0 and "up to date" in result.output, result.output

    with dbschema.create_database_engine(coordinator_url).begin() as connection:
        connection.execute(text(f"UPDATE {COORDINATOR.version_table} SET version_num = '0099'"))
    refused = runner.invoke(coordinator_cli, ["db", "upgrade", "--database", coordinator_url])
    assert refused.exit_code == 2 and "newer version" in refused.output, refused.output


def test_a_bare_postgresql_url_gets_the_psycopg_driver() -> None:
    url = dbschema.database_url("postgresql://pandalm:secret@db.internal/pandalm")
    assert url.drivername == "postgresql+psycopg" and url.database == "pandalm"


def test_without_a_server_ci_fails_and_elsewhere_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import postgres

    monkeypatch.setattr(postgres, "BIN_GLOB", "/nonexistent/*/bin")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(postgres.PostgresUnavailable, match="apt-get install postgresql") as why:
        postgres.PostgresServer()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needs a PostgreSQL server: no PostgreSQL"):
        postgres.unavailable(str(why.value))
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="needs a PostgreSQL server: no PostgreSQL"):
        postgres.unavailable(str(why.value))
