"""The site's job worker: trains candidates, generates their responses and judges comparisons.

It runs apart from the Flower SuperNode so that hours of training never hold up a message. All
its work is resumable: the trainer resumes from the last finished epoch, generation and the
judge keep caches, and per-item judgments are stored under a unique key, so a kill -9 at any
point loses nothing and counts nothing twice. A second worker on the same database (two agents
of one site) may judge a job twice but records it once: the first stored judgment of an item
stays, and only the first worker to finish a job tallies it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
from sqlalchemy import Engine, update
from sqlmodel import Session, select

from agent.config import SiteConfig, check_judge_endpoint, judge_endpoint, resolve_data_path
from agent.db import (
    ComparisonJob,
    ItemJudgment,
    LedgerEntry,
    ReferenceScore,
    SiteRun,
    add_new,
    open_database,
    record_egress,
)
from agent.privacy import noisy_tally
from common.protocol import Code

if TYPE_CHECKING:
    from judge.backends.base import JudgeBackend, PointwiseBackend
    from judge.engine import Pair, PairJudgment

log = logging.getLogger(__name__)
JUDGE_ENDPOINT = "judge.endpoint"
"""Ledger entry: the host of a judge server that this run's pairs are sent to (no content)."""
TALLY_OF_VERDICT = {"1": "win", "Tie": "tie", "2": "loss", "invalid": "invalid"}


class ComparisonJudge(Protocol):
    """Judges the responses of config a against config b, item by item."""

    def judge_comparison(
        self, a_id: str, b_id: str, pairs: Sequence[Pair]
    ) -> Iterator[PairJudgment]: ...


JudgeFactory = Callable[[SiteConfig, str], ComparisonJudge]
"""Builds the judge for a judge mode."""


class LocalJudge:
    """The site's PandaLM judge; it sees only the texts, never which config wrote them.
    `backend` replaces the model the site's judge spec names (tests pass a double here)."""

    def __init__(
        self, config: SiteConfig, mode: str, backend: JudgeBackend | PointwiseBackend | None = None
    ) -> None:
        from judge.backends import load_backend
        from judge.backends.base import GenerationSettings
        from judge.cache import JudgmentCache
        from judge.engine import PairJudge

        check_judge_endpoint(config)
        self.pair_judge = PairJudge(
            backend or load_backend(config.judge.spec),
            mode=mode,  # type: ignore[arg-type]
            settings=GenerationSettings(max_new_tokens=config.judge.max_new_tokens),
            cache=JudgmentCache(config.judge_cache),
        )

    def judge_comparison(
        self, a_id: str, b_id: str, pairs: Sequence[Pair]
    ) -> Iterator[PairJudgment]:
        return self.pair_judge.judge_iter(pairs)


def training_records(config: SiteConfig) -> list:
    from trainer.builtin_data import make_shard
    from trainer.data import load_instruction_data

    if config.data.train == "builtin":
        return make_shard(config.data.builtin_seed, config.data.train_examples)
    return load_instruction_data(resolve_data_path(config, config.data.train))


def validation_items(config: SiteConfig) -> list:
    from trainer.builtin_data import make_validation_set
    from trainer.data import load_validation_set

    if config.data.validation == "builtin":
        return make_validation_set(config.data.validation_items, seed=config.data.builtin_seed)
    return load_validation_set(resolve_data_path(config, config.data.validation))


def reference_answers(config: SiteConfig) -> dict:
    """Item id -> known answer: the builtin tasks are checkable; a validation file may give an
    `answer` (checkable) or an `output` (reference) per item."""
    from trainer.builtin_data import make_validation_set
    from trainer.reference import ReferenceAnswer, load_reference_answers

    if config.data.validation == "builtin":
        items = make_validation_set(config.data.validation_items, seed=config.data.builtin_seed)
        return {item.id: ReferenceAnswer(item.output, checkable=True) for item in items}
    return load_reference_answers(resolve_data_path(config, config.data.validation))


def _training_progress(worker: SiteWorker, run_key: str):  # type: ignore[no-untyped-def]
    """Training counts for the first 80% of a run's preparation, step by step. (transformers
    is imported here, not at module level: a worker that only judges starts in seconds.)"""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self) -> None:
            self.position, self.total = 1, 1

        def enter(self, _run: object, position: int, total: int) -> None:
            self.position, self.total = position, total

        def on_step_end(self, args, state, control, **kwargs):
            done = (self.position - 1 + state.global_step / max(state.max_steps, 1)) / self.total
            worker._set_run(run_key, progress=int(800 * done))

    return TrainingProgress()


class SiteWorker:
    """Works through the agent database's runs and comparison jobs, one at a time."""

    def __init__(self, config: SiteConfig, judge_factory: JudgeFactory = LocalJudge) -> None:
        self.config = config
        self.engine: Engine = open_database(config.database_url)
        self.judge_factory = judge_factory
        self._judges: dict[str, ComparisonJudge] = {}
        self._rng = np.random.default_rng()  # fresh OS entropy: the noise must not be guessable

    def run_forever(self, poll_seconds: float = 1.0, should_stop: Callable[[], bool] = bool):
        while not should_stop():
            if not self.step():
                time.sleep(poll_seconds)

    def step(self) -> bool:
        """Do the next piece of work; False when there is none."""
        with Session(self.engine) as session:
            run = session.exec(
                select(SiteRun).where(SiteRun.stage.in_(("training", "generating")))
            ).first()
            job = None
            if run is None:
                job = session.exec(
                    select(ComparisonJob)
                    .join(SiteRun, SiteRun.run_key == ComparisonJob.run_key)
                    .where(ComparisonJob.status == "pending", SiteRun.stage == "ready")
                    .order_by(ComparisonJob.id)
                ).first()
        if run is not None:
            self._prepare(run.run_key)
            return True
        if job is not None:
            self._judge(job.id)
            return True
        return False

    def _set_run(self, run_key: str, **values) -> None:
        with Session(self.engine) as session:
            run = session.get(SiteRun, run_key)
            for name, value in values.items():
                setattr(run, name, value)
            session.commit()

    def _prepare(self, run_key: str) -> None:
        """Train every config of the run's space, then generate their validation responses."""
        import torch

        from common.space import CandidateConfig
        from trainer.candidates import CandidateTrainingArguments, resolve_base_model
        from trainer.candidates import train_candidates as train
        from trainer.generate import generate_responses

        torch.set_num_threads(self.config.model.torch_threads)
        self._record_judge_endpoint(run_key)
        with Session(self.engine) as session:
            run = session.get(SiteRun, run_key)
            configs = [
                CandidateConfig(i, p) for i, p in zip(run.ids(), run.param_list(), strict=True)
            ]
        try:
            model = self.config.model
            args = CandidateTrainingArguments(
                output_dir=self.config.candidates_dir,
                base_model=resolve_base_model(model.base),
                max_length=model.max_length,
                per_device_train_batch_size=model.batch_size,
                max_steps_per_epoch=model.max_steps_per_epoch or None,
                lora_top_layers=model.lora_top_layers or None,
            )

            progress = _training_progress(self, run_key)
            records = training_records(self.config)
            started = time.monotonic()
            report = train(configs, records, args, callbacks=[progress], on_run=progress.enter)
            self._set_run(
                run_key,
                stage="generating",
                progress=800,
                training_seconds=time.monotonic() - started,
            )
            started = time.monotonic()
            items = validation_items(self.config)
            answers = reference_answers(self.config)
            generate_responses(
                report.checkpoints,
                items,
                self.config.responses_file,
                max_new_tokens=model.max_new_tokens,
                batch_size=model.generation_batch_size,
                delete_weights=not model.keep_weights,
                on_model=self._reference_nll(run_key, items, answers),
            )
            self._store_exact_match(run_key, [c.config.id for c in report.checkpoints], answers)
        except Exception:
            log.exception("preparing run %s failed", run_key)
            self._set_run(run_key, stage="failed", error_code=int(Code.TRAINING_FAILED))
            return
        self._set_run(
            run_key, stage="ready", progress=1000, generation_seconds=time.monotonic() - started
        )

    def _record_judge_endpoint(self, run_key: str) -> None:
        """The run's pairs will go to a judge server: the ledger names its host (once)."""
        endpoint = judge_endpoint(self.config)
        if endpoint is None:
            return
        with Session(self.engine) as session:
            recorded = session.exec(
                select(LedgerEntry).where(
                    LedgerEntry.run_key == run_key, LedgerEntry.message_type == JUDGE_ENDPOINT
                )
            ).first()
        if recorded is None:
            record_egress(self.engine, run_key, JUDGE_ENDPOINT, {"judge_host": endpoint})

    def _reference_nll(self, run_key: str, items: Sequence, answers: dict):
        """The callback that scores reference outputs while a candidate's model is loaded."""
        from trainer.reference import ANSWER_NLL, answer_nll, metric_name

        if metric_name(answers) != ANSWER_NLL:
            return None
        scored = [item for item in items if item.id in answers]

        def score(checkpoint, model, tokenizer) -> None:
            value = answer_nll(model, tokenizer, scored, [answers[i.id].text for i in scored])
            self._store_reference(run_key, checkpoint.config.id, ANSWER_NLL, value, len(scored))

        return score

    def _store_exact_match(self, run_key: str, config_ids: list[str], answers: dict) -> None:
        from trainer.reference import EXACT_MATCH, exact_match_accuracy, metric_name

        if metric_name(answers) != EXACT_MATCH:
            return
        responses = self._responses()
        for config_id in config_ids:
            mine = {item: text for (c, item), text in responses.items() if c == config_id}
            value = exact_match_accuracy(mine, answers)
            self._store_reference(run_key, config_id, EXACT_MATCH, value, len(answers))

    def _store_reference(
        self, run_key: str, config_id: str, metric: str, value: float, items: int
    ) -> None:
        with Session(self.engine) as session:
            row = session.exec(
                select(ReferenceScore).where(
                    ReferenceScore.run_key == run_key, ReferenceScore.config_id == config_id
                )
            ).first() or ReferenceScore(run_key=run_key, config_id=config_id, metric=metric,
                                        value=value, items=items)  # fmt: skip
            row.metric, row.value, row.items = metric, value, items
            session.add(row)
            session.commit()

    def _responses(self) -> dict[tuple[str, str], str]:
        from trainer.generate import read_responses

        return {
            (r["config_id"], r["item_id"]): r["response"]
            for r in read_responses(self.config.responses_file)
            if r["max_new_tokens"] == self.config.model.max_new_tokens
        }

    def _judge(self, job_id: int) -> None:
        """Judge the job's item slice in both orders, storing every item's judgment."""
        from judge.engine import Pair

        with Session(self.engine) as session:
            job = session.get(ComparisonJob, job_id)
            run = session.get(SiteRun, job.run_key)
            mode, key = run.judge_mode, (job.run_key, job.a_id, job.b_id)
            start, stop = job.item_start, job.item_stop
        items = validation_items(self.config)[: run.validation_items][start:stop]
        started = time.monotonic()
        try:
            responses = self._responses()
            done = self._judged_items(*key)
            todo = [item for item in items if item.id not in done]
            pairs = [
                Pair(
                    item.instruction,
                    item.input,
                    responses[(key[1], item.id)],
                    responses[(key[2], item.id)],
                )
                for item in todo
            ]
            judged = self._judge_for(mode).judge_comparison(key[1], key[2], pairs)
            for item, judgment in zip(todo, judged, strict=True):
                self._store_judgment(key, item.id, judgment)
        except Exception:
            log.exception("judging comparison job %s failed", job_id)
            with Session(self.engine) as session:
                session.connection().execute(
                    update(ComparisonJob)
                    .where(ComparisonJob.id == job_id, ComparisonJob.status == "pending")
                    .values(status="failed", error_code=int(Code.JUDGING_FAILED))
                )
                session.commit()
            return
        self._finish(job_id, key, [item.id for item in items], time.monotonic() - started)

    def _judge_for(self, mode: str) -> ComparisonJudge:
        if mode not in self._judges:
            self._judges[mode] = self.judge_factory(self.config, mode)
        return self._judges[mode]

    def _judged_items(self, run_key: str, a_id: str, b_id: str) -> set[str]:
        with Session(self.engine) as session:
            rows = session.exec(
                select(ItemJudgment.item_id).where(
                    ItemJudgment.run_key == run_key,
                    ItemJudgment.a_id == a_id,
                    ItemJudgment.b_id == b_id,
                )
            )
            return set(rows)

    def _store_judgment(self, key: tuple[str, str, str], item_id: str, judgment) -> None:
        detail = json.dumps(judgment.as_record())
        with Session(self.engine) as session:
            add_new(  # a worker racing on the same job may have stored it: the first one stays
                session,
                ItemJudgment(
                    run_key=key[0],
                    a_id=key[1],
                    b_id=key[2],
                    item_id=item_id,
                    verdict=judgment.verdict,
                    detail=detail,
                ),
            )
            session.commit()

    def _finish(
        self, job_id: int, key: tuple[str, str, str], item_ids: Sequence[str], seconds: float
    ) -> None:
        with Session(self.engine) as session:
            # Finishing claims the job first (the transaction's first statement, so it holds
            # the write lock): a second worker racing on the job finds it finished and records
            # nothing, neither a second noisy tally nor a second share of the privacy budget.
            claimed = session.connection().execute(
                update(ComparisonJob)
                .where(ComparisonJob.id == job_id, ComparisonJob.status == "pending")
                .values(status="done")
            )
            if claimed.rowcount == 0:
                return
            rows = session.exec(
                select(ItemJudgment).where(
                    ItemJudgment.run_key == key[0],
                    ItemJudgment.a_id == key[1],
                    ItemJudgment.b_id == key[2],
                    ItemJudgment.item_id.in_(list(item_ids)),
                )
            ).all()
            job = session.get(ComparisonJob, job_id)
            counts = {name: 0 for name in TALLY_OF_VERDICT.values()}
            for row in rows:
                counts[TALLY_OF_VERDICT[row.verdict]] += 1
            tally = (counts["win"], counts["tie"], counts["loss"], counts["invalid"], len(rows))
            privacy = self.config.privacy
            if privacy.epsilon > 0:
                run = session.exec(
                    select(SiteRun).where(SiteRun.run_key == key[0]).with_for_update()
                ).one()
                if privacy.budget and run.epsilon_spent + privacy.epsilon > privacy.budget + 1e-9:
                    job.status, job.error_code = "failed", int(Code.PRIVACY_BUDGET)
                    session.commit()
                    return
                run.epsilon_spent += privacy.epsilon
                tally = noisy_tally(tally[:4], privacy.epsilon, len(item_ids), self._rng)
            job.win, job.tie, job.loss, job.invalid, job.items = tally
            job.status, job.judging_seconds = "done", seconds
            session.commit()
