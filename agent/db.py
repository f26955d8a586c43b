"""The agent's local state (sqlmodel): the runs it joined, comparison jobs, per-item judgments
and the egress ledger. SQLite in the data directory by default, PostgreSQL (or any SQLAlchemy
URL) by setting; Alembic keeps the schema (agent/migrations).

Everything is keyed so that a repeated request finds its stored answer and a crash at any point
loses nothing and counts nothing twice (unique constraints on the natural keys).
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Engine, UniqueConstraint
from sqlmodel import Field, Session, SQLModel, select

import dbschema
from common.tally import Tally
from dbschema import Schema
from dbschema.columns import SliceTallyColumns, SpaceColumns, utc_now


class SiteRun(SpaceColumns, table=True):
    """A coordinator run this site joined, with the search space it was sent."""

    __tablename__ = "site_run"
    run_key: str = Field(primary_key=True)
    space_hash: str
    validation_items: int
    judge_mode: str
    stage: str = "training"  # training | generating | ready | failed
    progress: int = 0  # permille of training + generation
    error_code: int = 0
    training_seconds: float = 0.0
    generation_seconds: float = 0.0
    epsilon_spent: float = 0.0
    train_on_request: bool = False
    """The space said so (`halving`): nothing is trained up front (the run is `ready` at once);
    only the configs of its `TrainingJob`s are trained and generated."""
    created: datetime = Field(default_factory=utc_now)


class TrainingJob(SQLModel, table=True):
    """A config whose checkpoint a `query.train` message asked for: its training run trained up
    to its epoch and its validation responses generated (`done`)."""

    __tablename__ = "training_job"
    __table_args__ = (UniqueConstraint("run_key", "config_id"),)
    id: int | None = Field(default=None, primary_key=True)
    run_key: str = Field(index=True)
    config_id: str
    status: str = "pending"  # pending | done | failed
    error_code: int = 0
    epochs_trained: int = 0
    """Epochs the trainer ran for this job: 0 where an earlier job had trained this far."""
    training_seconds: float = 0.0
    generation_seconds: float = 0.0
    created: datetime = Field(default_factory=utc_now)


class ComparisonJob(SliceTallyColumns, table=True):
    """One requested comparison on an item slice; its tally once judged."""

    __tablename__ = "comparison_job"
    __table_args__ = (UniqueConstraint("run_key", "a_id", "b_id", "item_start", "item_stop"),)
    id: int | None = Field(default=None, primary_key=True)
    run_key: str = Field(index=True)
    a_id: str
    b_id: str
    status: str = "pending"  # pending | done | failed
    error_code: int = 0
    judging_seconds: float = 0.0
    created: datetime = Field(default_factory=utc_now)

    def tally(self) -> Tally:
        return Tally.of(self)


class ItemJudgment(SQLModel, table=True):
    """The judge's verdict on one validation item of one config pair, both orders kept."""

    __tablename__ = "item_judgment"
    __table_args__ = (UniqueConstraint("run_key", "a_id", "b_id", "item_id"),)
    id: int | None = Field(default=None, primary_key=True)
    run_key: str = Field(index=True)
    a_id: str
    b_id: str
    item_id: str
    verdict: str  # in a/b terms: 1 = a better
    detail: str  # JSON of both orders: verdicts, reasons, references or probabilities


class ReferenceScore(SQLModel, table=True):
    """A config's reference metric on this site's validation items (trainer/reference.py): a
    check of the candidates that does not use the judge. It never leaves the site."""

    __tablename__ = "reference_score"
    __table_args__ = (UniqueConstraint("run_key", "config_id"),)
    id: int | None = Field(default=None, primary_key=True)
    run_key: str = Field(index=True)
    config_id: str
    metric: str  # exact_match (higher is better) | answer_nll (lower is better)
    value: float
    items: int


class LedgerEntry(SQLModel, table=True):
    """Every payload that leaves the site, written before it is sent."""

    __tablename__ = "ledger_entry"
    id: int | None = Field(default=None, primary_key=True)
    time: datetime = Field(default_factory=utc_now)
    run_key: str = Field(index=True)
    message_type: str
    bytes: int
    content: str  # JSON of the decoded payload


TABLES = (SiteRun, ComparisonJob, ItemJudgment, ReferenceScore, LedgerEntry, TrainingJob)
SCHEMA = Schema.of_package("agent database", __file__, TABLES, "agent")


def open_database(url: str) -> Engine:
    """The agent database at the code's schema (created, or upgraded in place, by Alembic);
    SQLite runs in WAL mode for the agent's processes."""
    return dbschema.open_database(url, SCHEMA)


def add_new(session: Session, row: SQLModel) -> None:
    """Insert the row unless one with the same unique key is there: processes racing on one
    key (two workers, two ClientApps) store it once instead of failing."""
    table = type(row).__table__
    values = {
        name: value
        for name, value in row.model_dump().items()
        if not (value is None and table.c[name].primary_key)  # the database numbers it
    }
    insert = dbschema.dialect_insert(session.get_bind().dialect.name)
    session.connection().execute(insert(table).values(**values).on_conflict_do_nothing())


def record_egress(engine: Engine, run_key: str, message_type: str, payload: dict) -> None:
    """Append an outgoing payload to the ledger (call before sending it)."""
    content = json.dumps(payload, sort_keys=True)
    with Session(engine) as session:
        session.add(
            LedgerEntry(
                run_key=run_key,
                message_type=message_type,
                bytes=len(content.encode()),
                content=content,
            )
        )
        session.commit()


def ledger(engine: Engine, run_key: str | None = None) -> list[LedgerEntry]:
    with Session(engine) as session:
        query = select(LedgerEntry).order_by(LedgerEntry.id)
        if run_key is not None:
            query = query.where(LedgerEntry.run_key == run_key)
        return list(session.exec(query))


def reference_scores(engine: Engine, run_key: str) -> list[ReferenceScore]:
    with Session(engine) as session:
        query = select(ReferenceScore).where(ReferenceScore.run_key == run_key)
        return list(session.exec(query.order_by(ReferenceScore.id)))
