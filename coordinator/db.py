"""The coordinator's state (sqlmodel): runs, their sites, comparisons with summed tallies and
rounds. It holds no text, model or data of any site, and only summed tallies (never one site's).
Flower's SuperLink keeps its own database beside it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Engine, UniqueConstraint
from sqlmodel import Field, Session, SQLModel, select

import dbschema
from dbschema import Schema
from dbschema.columns import SliceTallyColumns, SpaceColumns, utc_now


class FederatedRun(SpaceColumns, table=True):
    __tablename__ = "federated_run"
    run_key: str = Field(primary_key=True)
    """federation.toml's [run] name."""
    selection_mode: str
    """The procedure run: the one set, or under `auto` the one chosen."""
    settings: str  # JSON of the run's settings
    status: str = "running"  # running | done | failed | stopped
    reason: str = ""
    """Why a failed or stopped run ended (its finish time in `finished`); empty otherwise."""
    aggregation: str = ""  # how tallies are summed now: SecAgg+ or in the clear, and why
    best_index: int | None = None
    started: datetime = Field(default_factory=utc_now)
    finished: datetime | None = None

    def requested_selection_mode(self) -> str:
        """The selection mode the operator set (`auto`, say; `selection_mode` is the one run)."""
        return json.loads(self.settings).get("selection_mode", self.selection_mode)


class RunRow(SQLModel):
    """A row of one run's: a surrogate key and the run's key, indexed."""

    id: int | None = Field(default=None, primary_key=True)
    run_key: str = Field(index=True)


class RunSite(RunRow, table=True):
    """A site (Flower node) of a run: active, or left out with the code that says why."""

    __tablename__ = "run_site"
    __table_args__ = (UniqueConstraint("run_key", "node_id"),)
    node_id: str  # Flower's node ids are unsigned 64-bit: beyond SQL's BIGINT
    status: str = "active"  # active | left_out
    reason: str = ""
    code: int = 0
    """The protocol code of the refusal or failure that left the site out (common/protocol.py
    CODE_MEANINGS says what it means); 0 when it was left out for silence, or is active."""
    progress: int = 0
    last_seen: datetime | None = None
    result_acknowledged: datetime | None = None
    """When the site acknowledged the run's result (`query.result`); None: not yet."""


class ComparisonResult(RunRow, SliceTallyColumns, table=True):
    """A comparison on an item slice with its tally summed over the contributing sites."""

    __tablename__ = "comparison_result"
    __table_args__ = (UniqueConstraint("run_key", "a", "b", "item_start", "item_stop"),)
    a: int
    b: int
    sites: int
    secure: bool = False  # summed by SecAgg+: the coordinator never saw one site's tally
    contributors: str = "[]"
    """JSON list of the node ids (as text) whose tallies are in the sum."""
    round: int
    recorded: datetime = Field(default_factory=utc_now)

    def contributor_ids(self) -> list[str]:
        return json.loads(self.contributors)


class TrainingResult(RunRow, table=True):
    """A train request (`halving`) that every active site answered `ok`: its configs trained
    and their responses generated there, in the order the requests were completed."""

    __tablename__ = "training_result"
    configs: str  # JSON list of config indices, ascending
    sites: int
    round: int
    recorded: datetime = Field(default_factory=utc_now)

    def indices(self) -> list[int]:
        return json.loads(self.configs)


class RoundLog(RunRow, table=True):
    """One exchange with the sites: what was asked and how long it took."""

    __tablename__ = "round_log"
    number: int
    message_type: str
    comparisons: int
    answered: int
    pending: int
    seconds: float
    bytes_in: int
    started: datetime = Field(default_factory=utc_now)


# --- Site registry. Schema change (issue 14, site names): the table `registered_site` is new;
# nothing else of the schema changed with it. -----------------------------------------------
class RegisteredSite(SQLModel, table=True):
    """A site the operator registered (`pandalm-coordinator sites add NAME KEY.pub`): the name
    the operator gave it and its public key, under the node id the SuperLink assigned. Results,
    the console and reports name sites by it. A removed site keeps its row (`removed` set), so
    earlier runs still show its name."""

    __tablename__ = "registered_site"
    node_id: str = Field(primary_key=True)
    name: str = Field(index=True)
    public_key: str  # the OpenSSH line, as registered with the SuperLink
    registered: datetime = Field(default_factory=utc_now)
    removed: datetime | None = None


def registered_site(engine: Engine, name_or_node_id: str) -> RegisteredSite | None:
    """The registered (not removed) site with this name or node id."""
    with Session(engine) as session:
        query = select(RegisteredSite).where(
            RegisteredSite.removed.is_(None),  # type: ignore[union-attr]
            (RegisteredSite.name == name_or_node_id) | (RegisteredSite.node_id == name_or_node_id),
        )
        return session.exec(query).first()


def record_registration(engine: Engine, node_id: str, name: str, public_key: str) -> None:
    with Session(engine) as session:
        session.merge(RegisteredSite(node_id=node_id, name=name, public_key=public_key))
        session.commit()


def record_removal(engine: Engine, node_id: str) -> None:
    with Session(engine) as session:
        site = session.get(RegisteredSite, node_id)
        if site is not None:
            site.removed = utc_now()
            session.commit()


def site_names(engine: Engine) -> dict[str, str]:
    """Node id -> name of every site ever registered here."""
    with Session(engine) as session:
        return {s.node_id: s.name for s in session.exec(select(RegisteredSite))}


def node_label(node_id: str | int, names: dict[str, str]) -> str:
    """A site's name when registered, else `node-<id>` (unregistered insecure demo nodes)."""
    return names.get(str(node_id), f"node-{node_id}")


# --- end of the site registry ---------------------------------------------------------------


# --- Chosen vs baseline (issue 20). Schema change: the table `baseline_comparison` is new. ---
class BaselineComparison(RunRow, SliceTallyColumns, table=True):
    """The chosen config against the run's baseline (federation.toml's `[selection] baseline`),
    asked once the selection named its best, with its tally summed over the sites from the
    chosen config's side. Kept apart from comparison_result: it is no step of the selection, so
    a resumed run's replay never feeds it to the procedure, and finds it asked already."""

    __tablename__ = "baseline_comparison"
    __table_args__ = (UniqueConstraint("run_key"),)
    chosen: int
    baseline: int
    sites: int
    secure: bool = False
    round: int
    recorded: datetime = Field(default_factory=utc_now)


def baseline_comparison(engine: Engine, run_key: str) -> BaselineComparison | None:
    with Session(engine) as session:
        query = select(BaselineComparison).where(BaselineComparison.run_key == run_key)
        return session.exec(query).first()


# --- end of chosen vs baseline -------------------------------------------------------------

TABLES = (
    FederatedRun,
    RunSite,
    ComparisonResult,
    RoundLog,
    RegisteredSite,
    TrainingResult,
    BaselineComparison,
)


SCHEMA = Schema.of_package("coordinator database", __file__, TABLES, "coordinator")


def open_database(url: str) -> Engine:
    """The coordinator database at the code's schema (created, or upgraded in place, by
    Alembic: coordinator/migrations)."""
    return dbschema.open_database(url, SCHEMA)


def comparisons(engine: Engine, run_key: str) -> list[ComparisonResult]:
    with Session(engine) as session:
        query = select(ComparisonResult).where(ComparisonResult.run_key == run_key)
        return list(session.exec(query.order_by(ComparisonResult.id)))


def judgments(rows: Iterable[ComparisonResult]) -> int:
    """The judge's verdicts behind recorded comparisons: every item is judged in both orders."""
    return sum(2 * row.items for row in rows)


def sites(engine: Engine, run_key: str) -> list[RunSite]:
    with Session(engine) as session:
        query = select(RunSite).where(RunSite.run_key == run_key).order_by(RunSite.id)
        return list(session.exec(query))


def run_finished(engine: Engine, run_key: str) -> bool:
    """Whether the run's record says it ended (done or failed)."""
    with Session(engine) as session:
        run = session.get(FederatedRun, run_key)
        return run is not None and run.status != "running"


def trainings(engine: Engine, run_key: str) -> list[TrainingResult]:
    """The run's completed train requests, in the order they were completed."""
    with Session(engine) as session:
        query = select(TrainingResult).where(TrainingResult.run_key == run_key)
        return list(session.exec(query.order_by(TrainingResult.id)))
