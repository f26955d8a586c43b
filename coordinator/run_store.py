"""Everything one selection run keeps in the coordinator database: the run row, its sites, the
summed comparison results and the round log. The run loop (federation.py) and the site pool
(site_pool.py) write and read through it; no other part of the loop opens a `Session`."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from sqlalchemy import Engine, delete
from sqlmodel import Session, func, select

from common.protocol import MAX_ITEMS, Comparison, TrainRequest
from common.settings import RunSettings
from common.tally import Tally
from coordinator.db import (
    BaselineComparison,
    ComparisonResult,
    FederatedRun,
    RoundLog,
    RunSite,
    TrainingResult,
    baseline_comparison,
    comparisons,
    sites,
    trainings,
)
from dbschema.columns import utc_now

log = logging.getLogger(__name__)

ENDED_UNFINISHED = ("failed", "stopped")
"""A run's statuses that a later start resumes (`done` runs keep their result)."""


class RunStore:
    """The database rows of the run `run_key`."""

    def __init__(self, engine: Engine, run_key: str) -> None:
        self.engine = engine
        self.run_key = run_key

    # -- the run row ------------------------------------------------------------------------
    def open(self, settings: RunSettings, config_ids: list[str], params: list[dict]) -> str:
        """Create the run, or check a recorded one asked for the same space and selection mode;
        the selection mode it runs (under `auto`, the one chosen when it was first run)."""
        with Session(self.engine) as session:
            run = session.get(FederatedRun, self.run_key)
            if run is None:
                session.add(
                    FederatedRun(
                        run_key=self.run_key,
                        selection_mode=settings.selection_mode,
                        config_ids=json.dumps(config_ids),
                        params=json.dumps(params),
                        settings=json.dumps(asdict(settings)),
                    )
                )
                session.commit()
                return settings.selection_mode
            if run.ids() != config_ids or run.requested_selection_mode() != settings.selection_mode:
                raise ValueError(
                    f"run {self.run_key!r} exists with another space or selection mode: "
                    "choose another run name"
                )
            if run.status in ENDED_UNFINISHED:
                self._reopen(session, run)
            return run.selection_mode

    def _reopen(self, session: Session, run: FederatedRun) -> None:
        """Resume a failed or stopped run: running again, and every site left out is active
        again (asked for the space again: its inputs may have been fixed)."""
        log.warning("run %s %s (%s): resuming it", self.run_key, run.status, run.reason)
        run.status, run.reason, run.finished = "running", "", None
        for site in session.exec(select(RunSite).where(RunSite.run_key == self.run_key)):
            site.status, site.reason, site.code = "active", "", 0
        session.commit()

    def forget(self) -> bool:
        """Delete the run's rows (run, sites, comparisons, rounds) so that the next start runs
        it over (`pandalm-coordinator start --restart`); whether there was such a run. The
        sites keep theirs: checkpoints, responses and judgments are reused."""
        with Session(self.engine) as session:
            found = session.get(FederatedRun, self.run_key) is not None
            for table in (RunSite, ComparisonResult, RoundLog):
                session.exec(delete(table).where(table.run_key == self.run_key))
            session.exec(delete(FederatedRun).where(FederatedRun.run_key == self.run_key))
            session.commit()
        return found

    def set_selection_mode(self, selection_mode: str) -> None:
        with Session(self.engine) as session:
            session.get(FederatedRun, self.run_key).selection_mode = selection_mode
            session.commit()

    def set_aggregation(self, decision: str) -> bool:
        """Record how tallies are summed now; whether that changed."""
        with Session(self.engine) as session:
            run = session.get(FederatedRun, self.run_key)
            if run.aggregation == decision:
                return False
            run.aggregation = decision
            session.commit()
            return True

    def end(self, status: str, reason: str) -> None:
        """Record that the run ended without a result (`failed`, or `stopped` by the operator),
        why, and when; a run already ended keeps its record."""
        with Session(self.engine) as session:
            run = session.get(FederatedRun, self.run_key)
            if run is None or run.status != "running":
                return
            run.status, run.reason, run.finished = status, reason, utc_now()
            session.commit()

    def finish(self, best: int | None) -> str:
        """Mark the run done with its best config; how its tallies were summed."""
        with Session(self.engine) as session:
            run = session.get(FederatedRun, self.run_key)
            run.status, run.best_index, run.finished = "done", best, utc_now()
            aggregation = run.aggregation
            session.commit()
        return aggregation

    # -- sites ------------------------------------------------------------------------------
    def sites(self) -> list[RunSite]:
        return sites(self.engine, self.run_key)

    def add_sites(self, node_ids: list[int]) -> None:
        with Session(self.engine) as session:
            for node_id in node_ids:
                session.add(RunSite(run_key=self.run_key, node_id=str(node_id)))
            session.commit()

    def _site_row(self, session: Session, node_id: int) -> RunSite:
        query = select(RunSite).where(
            RunSite.run_key == self.run_key, RunSite.node_id == str(node_id)
        )
        return session.exec(query).one()

    def site(self, node_id: int) -> RunSite:
        with Session(self.engine) as session:
            return self._site_row(session, node_id)

    def update_site(self, node_id: int, **values: object) -> None:
        """Set these columns of the site's row."""
        with Session(self.engine) as session:
            site = self._site_row(session, node_id)
            for column, value in values.items():
                setattr(site, column, value)
            session.commit()

    def site_seen(self, node_id: int, progress: int) -> None:
        self.update_site(node_id, progress=progress, last_seen=utc_now())

    # -- comparisons and rounds -------------------------------------------------------------
    def recorded(self) -> list[ComparisonResult]:
        return comparisons(self.engine, self.run_key)

    def record_comparison(
        self,
        comparison: Comparison,
        tally: Tally,
        contributors: list[int],
        secure: bool,
        round_number: int,
    ) -> None:
        """The comparison's tally summed over `contributors` (node ids), by SecAgg+ if
        `secure`, recorded in `round_number`."""
        with Session(self.engine) as session:
            session.add(
                ComparisonResult(
                    run_key=self.run_key,
                    a=comparison.a,
                    b=comparison.b,
                    item_start=comparison.item_start,
                    item_stop=comparison.item_stop,
                    **asdict(tally),
                    sites=len(contributors),
                    contributors=json.dumps([str(n) for n in sorted(contributors)]),
                    secure=secure,
                    round=round_number,
                )
            )
            session.commit()

    def trainings(self) -> list[TrainRequest]:
        """The completed train requests, in order."""
        return [TrainRequest(tuple(row.indices())) for row in trainings(self.engine, self.run_key)]

    def record_training(self, request: TrainRequest, sites: int, round_number: int) -> None:
        with Session(self.engine) as session:
            session.add(
                TrainingResult(
                    run_key=self.run_key,
                    configs=json.dumps(list(request.configs)),
                    sites=sites,
                    round=round_number,
                )
            )
            session.commit()

    def last_round(self) -> int:
        """The number of the run's last logged round (0: none yet)."""
        with Session(self.engine) as session:
            query = select(func.max(RoundLog.number)).where(RoundLog.run_key == self.run_key)
            return session.exec(query).one() or 0

    # -- chosen vs baseline -----------------------------------------------------------------
    def versus_baseline(self) -> BaselineComparison | None:
        """The recorded comparison of the chosen config with the baseline, if it was asked."""
        return baseline_comparison(self.engine, self.run_key)

    def record_versus_baseline(
        self, chosen: int, baseline: int, tally: Tally, sites: int, secure: bool, round_number: int
    ) -> None:
        """Record chosen vs baseline on all items, apart from the selection's comparisons (an
        empty tally from no site where the chosen config is the baseline)."""
        with Session(self.engine) as session:
            session.add(
                BaselineComparison(
                    run_key=self.run_key,
                    chosen=chosen,
                    baseline=baseline,
                    item_start=0,
                    item_stop=MAX_ITEMS,
                    **asdict(tally),
                    sites=sites,
                    secure=secure,
                    round=round_number,
                )
            )
            session.commit()

    def log_round(self, entry: RoundLog) -> None:
        """Record one exchange with the sites under this run's key."""
        entry.run_key = self.run_key
        with Session(self.engine) as session:
            session.add(entry)
            session.commit()
