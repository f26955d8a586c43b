"""On-disk judgment cache: a row per (judge identity, mode, settings, prompt); reruns are free.

SQLite by default, PostgreSQL (or any SQLAlchemy URL) by setting; Alembic keeps the schema
(judge/migrations, version table `alembic_version_judge_cache`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Field, Session, SQLModel, select

import dbschema
from dbschema import Schema


class CachedJudgment(SQLModel, table=True):
    """The raw outcome of judging one prompt (one order of one pair)."""

    __tablename__ = "cached_judgment"
    key: str = Field(primary_key=True)
    payload: str


SCHEMA = Schema.of_package("judgment cache", __file__, (CachedJudgment,), "judge_cache")


def judgment_key(identity: str, mode: str, settings: str, prompt: str) -> str:
    material = json.dumps([identity, mode, settings, prompt], ensure_ascii=False)
    return hashlib.sha256(material.encode()).hexdigest()


class JudgmentCache:
    """A SQLite file (or any SQLAlchemy URL) of per-order judge outputs."""

    def __init__(self, location: Path | str) -> None:
        url = str(location) if "://" in str(location) else f"sqlite:///{location}"
        self.engine: Engine = dbschema.open_database(url, SCHEMA)

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        if not keys:
            return {}
        with Session(self.engine) as session:
            rows = session.exec(select(CachedJudgment).where(CachedJudgment.key.in_(keys)))
            return {row.key: json.loads(row.payload) for row in rows}

    def put_many(self, entries: dict[str, dict]) -> None:
        """Store entries, replacing any under the same key (processes sharing the cache may
        write one key at once)."""
        if not entries:
            return
        insert = dbschema.dialect_insert(self.engine.dialect.name)
        table = CachedJudgment.__table__
        rows = [{"key": key, "payload": json.dumps(value)} for key, value in entries.items()]
        statement = insert(table)
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.key], set_={"payload": statement.excluded.payload}
        )
        with self.engine.begin() as connection:
            connection.execute(statement, rows)
