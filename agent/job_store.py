"""Everything the site's job worker keeps in the agent database: its runs' stage and progress,
the judge server named in the ledger, reference scores, per-item judgments and the finished
jobs' tallies. The worker (worker.py) reads and writes through it; it opens no `Session`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
from sqlalchemy import Engine, update
from sqlmodel import Session, select

from agent.config import PrivacySettings
from agent.db import (
    ComparisonJob,
    ItemJudgment,
    LedgerEntry,
    ReferenceScore,
    SiteRun,
    add_new,
    record_egress,
)
from agent.privacy import noisy_tally
from common.protocol import Code
from common.space import CandidateConfig
from common.tally import Tally
from judge.engine import PairJudgment

JUDGE_ENDPOINT = "judge.endpoint"
"""Ledger entry: the host of a judge server that this run's pairs are sent to (no content)."""
TALLY_OF_VERDICT = {"1": "win", "Tie": "tie", "2": "loss", "invalid": "invalid"}


class ComparisonKey(NamedTuple):
    """A config pair of a run: the key its item judgments are stored under."""

    run_key: str
    a_id: str
    b_id: str


@dataclass(frozen=True)
class JobToJudge:
    """A comparison job as the worker judges it: the pair, its item slice and the judge mode,
    within the run's first `validation_items` items."""

    id: int
    key: ComparisonKey
    item_start: int
    item_stop: int
    judge_mode: str
    validation_items: int


def tally_of_verdicts(verdicts: Iterable[str]) -> Tally:
    """The exact tally of these item verdicts (a/b terms: 1 = a better)."""
    counts = {name: 0 for name in TALLY_OF_VERDICT.values()}
    for verdict in verdicts:
        counts[TALLY_OF_VERDICT[verdict]] += 1
    return Tally(**counts, items=sum(counts.values()))


class JobStore:
    """The worker's rows of the agent database `engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- runs -------------------------------------------------------------------------------
    def update_run(self, run_key: str, **values: object) -> None:
        """Set these columns of the run's row (stage, progress, timings, error code)."""
        with Session(self.engine) as session:
            session.connection().execute(
                update(SiteRun).where(SiteRun.run_key == run_key).values(**values)
            )
            session.commit()

    def run_configs(self, run_key: str) -> list[CandidateConfig]:
        """The configs of the run's space, in the coordinator's order."""
        with Session(self.engine) as session:
            run = session.get(SiteRun, run_key)
            return [CandidateConfig(i, p) for i, p in zip(run.ids(), run.param_list(), strict=True)]

    def record_judge_endpoint(self, run_key: str, host: str) -> None:
        """Name the judge server's host in the run's ledger, once (a restarted worker finds it)."""
        with Session(self.engine) as session:
            recorded = session.exec(
                select(LedgerEntry).where(
                    LedgerEntry.run_key == run_key, LedgerEntry.message_type == JUDGE_ENDPOINT
                )
            ).first()
        if recorded is None:
            record_egress(self.engine, run_key, JUDGE_ENDPOINT, {"judge_host": host})

    def store_reference(
        self, run_key: str, config_id: str, metric: str, value: float, items: int
    ) -> None:
        """Set the config's score by `metric` (a retried run overwrites its earlier one)."""
        with Session(self.engine) as session:
            row = session.exec(
                select(ReferenceScore).where(
                    ReferenceScore.run_key == run_key,
                    ReferenceScore.config_id == config_id,
                    ReferenceScore.metric == metric,
                )
            ).first() or ReferenceScore(run_key=run_key, config_id=config_id, metric=metric)
            row.value, row.items = value, items
            session.add(row)
            session.commit()

    # -- comparison jobs --------------------------------------------------------------------
    def job(self, job_id: int) -> JobToJudge:
        with Session(self.engine) as session:
            job = session.get(ComparisonJob, job_id)
            run = session.get(SiteRun, job.run_key)
            return JobToJudge(
                id=job_id,
                key=ComparisonKey(job.run_key, job.a_id, job.b_id),
                item_start=job.item_start,
                item_stop=job.item_stop,
                judge_mode=run.judge_mode,
                validation_items=run.validation_items,
            )

    def judged_items(self, key: ComparisonKey) -> set[str]:
        """The items of the pair already judged (by this worker before a restart, or another)."""
        with Session(self.engine) as session:
            return set(session.exec(select(ItemJudgment.item_id).where(*_pair_is(key))))

    def store_judgment(self, key: ComparisonKey, item_id: str, judgment: PairJudgment) -> None:
        detail = json.dumps(judgment.as_record())
        with Session(self.engine) as session:
            add_new(  # a worker racing on the same job may have stored it: the first one stays
                session,
                ItemJudgment(
                    run_key=key.run_key,
                    a_id=key.a_id,
                    b_id=key.b_id,
                    item_id=item_id,
                    verdict=judgment.verdict,
                    detail=detail,
                ),
            )
            session.commit()

    def fail_job(self, job_id: int, code: Code) -> None:
        """Mark the job failed with `code`, unless a racing worker has finished it."""
        with Session(self.engine) as session:
            session.connection().execute(
                update(ComparisonJob)
                .where(ComparisonJob.id == job_id, ComparisonJob.status == "pending")
                .values(status="failed", error_code=int(code))
            )
            session.commit()

    def finish_job(
        self,
        job: JobToJudge,
        item_ids: Sequence[str],
        seconds: float,
        privacy: PrivacySettings,
        rng: np.random.Generator,
    ) -> None:
        """Tally the job's stored judgments, with privacy noise and its budget spent when
        `privacy.epsilon` is set. Claiming the job, spending the budget and storing the tally
        are one transaction, so a job is tallied and paid for once."""
        with Session(self.engine) as session:
            # Finishing claims the job first (the transaction's first statement, so it holds
            # the write lock): a second worker racing on the job finds it finished and records
            # nothing, neither a second noisy tally nor a second share of the privacy budget.
            claimed = session.connection().execute(
                update(ComparisonJob)
                .where(ComparisonJob.id == job.id, ComparisonJob.status == "pending")
                .values(status="done")
            )
            if claimed.rowcount == 0:
                return
            query = select(ItemJudgment.verdict).where(
                *_pair_is(job.key), ItemJudgment.item_id.in_(list(item_ids))
            )
            tally = tally_of_verdicts(session.exec(query).all())
            row = session.get(ComparisonJob, job.id)
            if privacy.epsilon > 0:
                run = session.exec(
                    select(SiteRun).where(SiteRun.run_key == job.key.run_key).with_for_update()
                ).one()
                if privacy.budget and run.epsilon_spent + privacy.epsilon > privacy.budget + 1e-9:
                    row.status, row.error_code = "failed", int(Code.PRIVACY_BUDGET)
                    session.commit()
                    return
                run.epsilon_spent += privacy.epsilon
                tally = noisy_tally(tally, privacy.epsilon, len(item_ids), rng)
            for column, value in asdict(tally).items():
                setattr(row, column, value)
            row.status, row.judging_seconds = "done", seconds
            session.commit()


def _pair_is(key: ComparisonKey) -> tuple:
    """The conditions that select the pair's item judgments."""
    return (
        ItemJudgment.run_key == key.run_key,
        ItemJudgment.a_id == key.a_id,
        ItemJudgment.b_id == key.b_id,
    )
