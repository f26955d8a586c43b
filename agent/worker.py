"""The site's job worker: trains candidates, generates their responses and judges comparisons.

It runs apart from the Flower SuperNode so that hours of training never hold up a message. All
its work is resumable: the trainer resumes from the last finished epoch, generation and the
judge keep caches, and per-item judgments are stored under a unique key, so a kill -9 at any
point loses nothing and counts nothing twice. Several workers may share one site database
(`[site] workers`, each on its own device): a site run's preparation is split into training
jobs, one per training run (trained, then its configs' responses generated), which the workers
claim one at a time, as they claim comparison jobs, under a lease (agent/claims.py); a run is
ready when all its training jobs are done. Should two workers still judge one job, the first
stored judgment of an item stays and only the first to finish the job tallies it. Its database
rows are read and written through agent/job_store.py and agent/claims.py. Torch, transformers
and the trainer's training and generation modules are imported where they are used, so that a
worker starts in seconds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from filelock import FileLock

from agent.claims import ClaimStore
from agent.config import SiteConfig, check_judge_endpoint, judge_endpoint, resolve_data_path
from agent.db import ComparisonJob, TrainingJob, open_database
from agent.job_store import JobStore
from agent.preflight import failure_code, site_problems
from common.protocol import Code
from common.space import CandidateConfig
from judge.backends import SpecError, load_backend
from judge.backends.base import GenerationSettings, JudgeBackend, PointwiseBackend
from judge.cache import JudgmentCache
from judge.engine import PairJudge, PairJudgment
from judge.models import ModelNotFoundError
from judge.prompt import Pair
from trainer.arguments import CandidateTrainingArguments
from trainer.data import (
    InstructionRecord,
    ValidationItem,
    load_instruction_data,
    load_validation_set,
)
from trainer.demo_tasks import make_shard, make_validation_set
from trainer.reference import (
    ANSWER_NLL,
    EXACT_MATCH,
    ReferenceAnswer,
    answer_nll,
    exact_match_accuracy,
    load_reference_answers,
    metric_name,
)

if TYPE_CHECKING:
    from common.space import TrainingRun
    from trainer.arguments import CandidateTrainingArguments
    from trainer.candidates import CandidateCheckpoint

log = logging.getLogger(__name__)


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


def training_records(config: SiteConfig) -> list[InstructionRecord]:
    if config.data.train == "builtin":
        return make_shard(config.data.builtin_seed, config.data.train_examples)
    return load_instruction_data(resolve_data_path(config, config.data.train))


def validation_items(config: SiteConfig) -> Sequence[ValidationItem]:
    if config.data.validation == "builtin":
        return make_validation_set(config.data.validation_items, seed=config.data.builtin_seed)
    return load_validation_set(resolve_data_path(config, config.data.validation))


def reference_answers(config: SiteConfig) -> dict[str, ReferenceAnswer]:
    """Item id -> known answer: the builtin tasks are checkable; a validation file may give an
    `answer` (checkable) or an `output` (reference) per item."""
    if config.data.validation == "builtin":
        items = make_validation_set(config.data.validation_items, seed=config.data.builtin_seed)
        return {item.id: ReferenceAnswer(item.output, checkable=True) for item in items}
    return load_reference_answers(resolve_data_path(config, config.data.validation))


def candidate_arguments(config: SiteConfig) -> CandidateTrainingArguments:
    """How this site trains its candidates, from site.toml's [model]: the worker's, export's
    rebuild of a winner (the same run, data and seed give the same weights) and the demo-choice
    bench's, so all three train the same candidates."""
    from trainer.candidates import resolve_base_model

    model = config.model
    return CandidateTrainingArguments(
        output_dir=config.candidates_dir,
        base_model=resolve_base_model(model.base),
        max_length=model.max_length,
        per_device_train_batch_size=model.batch_size,
        max_steps_per_epoch=model.max_steps_per_epoch or None,
        lora_top_layers=model.lora_top_layers or None,
    )


def _training_progress(store: JobStore, claims: ClaimStore, run_keys: list[str]):  # type: ignore[no-untyped-def]
    """Training counts for the first 80% of a run's preparation: its done training jobs plus
    this one's share of steps (written at most once a second)."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        written = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.written < 1.0:
                return
            self.written = time.monotonic()
            share = state.global_step / max(state.max_steps, 1)
            for run_key in run_keys:
                done, total = claims.progress(run_key)
                store.update_run(run_key, progress=int(800 * (done + share) / max(total, 1)))

    return TrainingProgress()


def worker_name(slot: int) -> str:
    """A worker's name in leases: the host and its slot, so a restarted worker takes back the
    jobs it held at once (one process per slot; the supervisor restarts it)."""
    return f"{socket.gethostname()}/worker-{slot}"


def _seed_responses(shared: Path, private: Path, config_ids: set[str]) -> None:
    """Start a training job's own responses file from what the site's file holds for its
    configs (a rerun generates nothing twice)."""
    if private.is_file():
        return
    from trainer.generate import read_responses

    private.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in read_responses(shared)
             if r["config_id"] in config_ids]  # fmt: skip
    staged = private.with_suffix(".seed")
    staged.write_text("".join(lines), encoding="utf-8")
    os.replace(staged, private)


def _merge_responses(private: Path, shared: Path) -> None:
    """Append the job's responses that the site's file lacks (under the file's lock)."""
    from trainer.generate import read_responses

    have = {(r["config_id"], r["item_id"], r["max_new_tokens"]) for r in read_responses(shared)}
    new = [r for r in read_responses(private)
           if (r["config_id"], r["item_id"], r["max_new_tokens"]) not in have]  # fmt: skip
    with shared.open("a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in new)


class SiteWorker:
    """Works through the agent database's training and comparison jobs, one at a time,
    alongside any other workers of the site (`slot` names this one in its leases)."""

    def __init__(
        self, config: SiteConfig, judge_factory: JudgeFactory = LocalJudge, slot: int = 1
    ) -> None:
        self.config = config
        engine = open_database(config.database_url)
        self.store = JobStore(engine)
        self.claims = ClaimStore(engine, worker_name(slot), config.worker_lease)
        self.judge_factory = judge_factory
        self._judges: dict[str, ComparisonJudge] = {}
        self._rng = np.random.default_rng()  # fresh OS entropy: the noise must not be guessable
        self._failure = Code.TRAINING_FAILED
        """The code of a failure in the step under way: training, or generating responses."""

    def run_forever(
        self, poll_seconds: float = 1.0, should_stop: Callable[[], bool] = bool
    ) -> None:
        while not should_stop():
            if not self.step():
                time.sleep(poll_seconds)

    def step(self) -> bool:
        """Do the next piece of work: plan a new run, train a training run (to its last epoch,
        or to the epoch a `query.train` asked for), or judge a comparison job; False when there
        is none."""
        run_key = self.claims.run_to_plan()
        if run_key is not None:
            self._prepare(run_key)
            return True
        run = self.claims.claim_training()
        if run is not None:
            self._train(run)
            return True
        job_id = self.claims.claim_judging()
        if job_id is not None:
            with self.claims.holding(ComparisonJob, job_id):
                self._judge(job_id)
            return True
        return False

    def _training_arguments(self) -> CandidateTrainingArguments:
        return candidate_arguments(self.config)

    def _prepare(self, run_key: str) -> None:
        """Plan the run's training jobs: the configs of its space grouped into training runs,
        each then trained and generated by whichever worker claims it."""
        from trainer.candidates import check_training_settings, plan_candidate_runs

        configs = self.store.run_configs(run_key)
        if self._refused_by_preflight(run_key, configs):
            return
        self._record_judge_endpoint(run_key)
        try:
            args = self._training_arguments()
            check_training_settings(training_records(self.config), args)
            runs = plan_candidate_runs(configs, args)
        except Exception as exc:
            log.exception("planning run %s failed", run_key)
            code = failure_code(exc, Code.TRAINING_FAILED)
            self.store.update_run(run_key, stage="failed", error_code=int(code), error=str(exc))
            return
        if self.claims.plan(run_key, runs):
            log.info("run %s: %d training runs to share out", run_key, len(runs))

    def _train(self, run: TrainingRun) -> None:
        """Train one training run (up to its job's `until_epoch`) and generate the responses of
        its configs trained so far, under its lease."""
        started = time.monotonic()
        until = self.claims.until_epoch(run.id)
        with self.claims.holding(TrainingJob, run.id):
            try:
                trained = self._train_and_generate(run, until)
            except Exception as exc:
                log.exception("training run %s failed", run.id)
                code = failure_code(exc, self._failure)
                self.claims.fail_training(run.id, code, str(exc))
                return
        reached = run.epochs if until is None else min(until, run.epochs)
        seconds = time.monotonic() - started
        self.claims.finish_training(run.id, seconds, (reached, run.epochs), trained)

    def _train_and_generate(self, run: TrainingRun, until: int | None) -> int:
        """The epochs trained now (an epoch a killed worker had finished is not counted)."""
        import torch

        from trainer.candidates import train_one_run, trained_epochs
        from trainer.generate import generate_responses

        torch.set_num_threads(self.config.model.torch_threads)
        run_keys = self.claims.run_keys_of(run.id)
        progress = _training_progress(self.store, self.claims, run_keys)
        started = time.monotonic()
        args = self._training_arguments()
        self._failure = Code.TRAINING_FAILED
        before = trained_epochs(args.output_dir, run)
        records = training_records(self.config)
        checkpoints = train_one_run(run, records, args, [progress], until_epoch=until)
        trained = max(0, trained_epochs(args.output_dir, run) - before)
        self._add_seconds(run_keys, "training_seconds", time.monotonic() - started)
        started, self._failure = time.monotonic(), Code.GENERATION_FAILED
        items = validation_items(self.config)
        answers = reference_answers(self.config)
        shared = self.config.responses_file
        private = self.config.data_dir / "generation" / f"{run.id}.jsonl"
        with self._responses_lock():
            _seed_responses(shared, private, {config.id for config in run.configs})
        model = self.config.model
        generate_responses(
            checkpoints,
            items,
            private,
            max_new_tokens=model.max_new_tokens,
            batch_size=model.generation_batch_size,
            delete_weights=not model.keep_weights,
            on_model=self._reference_nll(run_keys, items, answers),
        )
        with self._responses_lock():
            _merge_responses(private, shared)
        private.unlink()
        for run_key in run_keys:
            self._store_exact_match(run_key, [c.config.id for c in checkpoints], answers)
        self._add_seconds(run_keys, "generation_seconds", time.monotonic() - started)
        return trained

    def _add_seconds(self, run_keys: list[str], column: str, seconds: float) -> None:
        from agent.db import SiteRun

        for run_key in run_keys:
            self.store.update_run(run_key, **{column: getattr(SiteRun, column) + seconds})

    def _responses_lock(self) -> FileLock:
        """The site's responses file is read and appended by every worker: one at a time."""
        return FileLock(f"{self.config.responses_file}.lock")

    def _refused_by_preflight(self, run_key: str, configs: list[CandidateConfig]) -> bool:
        """Check data, judge, base model and disk before training (agent/preflight.py): a
        problem fails the run at once with its code, its text kept for `status`."""
        problems = site_problems(self.config, configs, reach_judge=False)
        for problem in problems:
            log.error("run %s refused before training: %s", run_key, problem.text)
        if problems:
            text = "\n".join(problem.text for problem in problems)
            self.store.update_run(
                run_key, stage="failed", error_code=int(problems[0].code), error=text
            )
        return bool(problems)

    def _record_judge_endpoint(self, run_key: str) -> None:
        """The run's pairs will go to a judge server: the ledger names its host (once)."""
        endpoint = judge_endpoint(self.config)
        if endpoint is not None:
            self.store.record_judge_endpoint(run_key, endpoint)

    def _reference_nll(
        self,
        run_keys: list[str],
        items: Sequence[ValidationItem],
        answers: dict[str, ReferenceAnswer],
    ) -> Callable[[CandidateCheckpoint, Any, Any], None] | None:
        """The callback that scores the reference answers while a candidate's model is loaded:
        the dense reference (every answer token counts), stored next to exact match where the
        answers are checkable, and the only reference where they are not."""
        if not answers:
            return None
        scored = [item for item in items if item.id in answers]

        def score(checkpoint: CandidateCheckpoint, model: Any, tokenizer: Any) -> None:
            value = answer_nll(model, tokenizer, scored, [answers[i.id].text for i in scored])
            for run_key in run_keys:
                self.store.store_reference(
                    run_key, checkpoint.config.id, ANSWER_NLL, value, len(scored)
                )

        return score

    def _store_exact_match(
        self, run_key: str, config_ids: list[str], answers: dict[str, ReferenceAnswer]
    ) -> None:
        if metric_name(answers) != EXACT_MATCH:
            return
        responses = self._responses()
        for config_id in config_ids:
            mine = {item: text for (c, item), text in responses.items() if c == config_id}
            value = exact_match_accuracy(mine, answers)
            self.store.store_reference(run_key, config_id, EXACT_MATCH, value, len(answers))

    def _responses(self) -> dict[tuple[str, str], str]:
        """(config id, item id) -> the response generated at this site's max_new_tokens."""
        from trainer.generate import read_responses

        with self._responses_lock():
            records = read_responses(self.config.responses_file)
        return {
            (r["config_id"], r["item_id"]): r["response"]
            for r in records
            if r["max_new_tokens"] == self.config.model.max_new_tokens
        }

    def _judge(self, job_id: int) -> None:
        """Judge the job's item slice in both orders, storing every item's judgment."""
        job = self.store.job(job_id)
        run_items = validation_items(self.config)[: job.validation_items]
        items = run_items[job.item_start : job.item_stop]
        started = time.monotonic()
        try:
            responses = self._responses()
            done = self.store.judged_items(job.key)
            todo = [item for item in items if item.id not in done]
            a_id, b_id = job.key.a_id, job.key.b_id
            pairs = [
                Pair(
                    item.instruction,
                    item.input,
                    responses[(a_id, item.id)],
                    responses[(b_id, item.id)],
                )
                for item in todo
            ]
            judged = self._judge_for(job.judge_mode).judge_comparison(a_id, b_id, pairs)
            for item, judgment in zip(todo, judged, strict=True):
                self.store.store_judgment(job.key, item.id, judgment)
        except Exception as exc:
            log.exception("judging comparison job %s failed", job_id)
            missing = isinstance(exc, (SpecError, ModelNotFoundError))  # a judge model gone
            self.store.fail_job(job_id, Code.BAD_JUDGE if missing else Code.JUDGING_FAILED)
            return
        seconds = time.monotonic() - started
        item_ids = [item.id for item in items]
        self.store.finish_job(job, item_ids, seconds, self.config.privacy, self._rng)

    def _judge_for(self, mode: str) -> ComparisonJudge:
        if mode not in self._judges:
            self._judges[mode] = self.judge_factory(self.config, mode)
        return self._judges[mode]
