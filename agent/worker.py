"""The site's job worker: trains candidates, generates their responses and judges comparisons.

It runs apart from the Flower SuperNode so that hours of training never hold up a message. All
its work is resumable: the trainer resumes from the last finished epoch, generation and the
judge keep caches, and per-item judgments are stored under a unique key, so a kill -9 at any
point loses nothing and counts nothing twice. A second worker on the same database (two agents
of one site) may judge a job twice but records it once: the first stored judgment of an item
stays, and only the first worker to finish a job tallies it. Its database rows are read and
written through agent/job_store.py. Torch, transformers and the trainer's training and
generation modules are imported where they are used, so that a worker starts in seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from agent.config import SiteConfig, check_judge_endpoint, judge_endpoint, resolve_data_path
from agent.db import open_database
from agent.job_store import JobStore
from common.protocol import Code
from judge.backends import load_backend
from judge.backends.base import GenerationSettings, JudgeBackend, PointwiseBackend
from judge.cache import JudgmentCache
from judge.engine import PairJudge, PairJudgment
from judge.prompt import Pair
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


def _training_progress(store: JobStore, run_key: str):  # type: ignore[no-untyped-def]
    """Training counts for the first 80% of a run's preparation, step by step."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self) -> None:
            self.position, self.total = 1, 1

        def enter(self, _run: object, position: int, total: int) -> None:
            self.position, self.total = position, total

        def on_step_end(self, args, state, control, **kwargs):
            done = (self.position - 1 + state.global_step / max(state.max_steps, 1)) / self.total
            store.update_run(run_key, progress=int(800 * done))

    return TrainingProgress()


class SiteWorker:
    """Works through the agent database's runs and comparison jobs, one at a time."""

    def __init__(self, config: SiteConfig, judge_factory: JudgeFactory = LocalJudge) -> None:
        self.config = config
        self.store = JobStore(open_database(config.database_url))
        self.judge_factory = judge_factory
        self._judges: dict[str, ComparisonJudge] = {}
        self._rng = np.random.default_rng()  # fresh OS entropy: the noise must not be guessable

    def run_forever(
        self, poll_seconds: float = 1.0, should_stop: Callable[[], bool] = bool
    ) -> None:
        while not should_stop():
            if not self.step():
                time.sleep(poll_seconds)

    def step(self) -> bool:
        """Do the next piece of work; False when there is none. Judging comes before training
        on request: a comparison asked now is of configs already trained."""
        run_key = self.store.run_to_prepare()
        if run_key is not None:
            self._prepare(run_key)
            return True
        job_id = self.store.next_job()
        if job_id is not None:
            self._judge(job_id)
            return True
        training = self.store.training_to_do()
        if training is not None:
            self._train_requested(*training)
            return True
        return False

    def _training_arguments(self) -> CandidateTrainingArguments:
        from trainer.candidates import CandidateTrainingArguments, resolve_base_model

        model = self.config.model
        return CandidateTrainingArguments(
            output_dir=self.config.candidates_dir,
            base_model=resolve_base_model(model.base),
            max_length=model.max_length,
            per_device_train_batch_size=model.batch_size,
            max_steps_per_epoch=model.max_steps_per_epoch or None,
            lora_top_layers=model.lora_top_layers or None,
        )

    def _generate(self, run_key: str, checkpoints: Sequence[CandidateCheckpoint]) -> None:
        """The checkpoints' validation responses (cached: only new ones are generated) and the
        reference scores that never leave the site."""
        from trainer.generate import generate_responses

        model = self.config.model
        items = validation_items(self.config)
        answers = reference_answers(self.config)
        generate_responses(
            checkpoints,
            items,
            self.config.responses_file,
            max_new_tokens=model.max_new_tokens,
            batch_size=model.generation_batch_size,
            delete_weights=not model.keep_weights,
            on_model=self._reference_nll(run_key, items, answers),
        )
        self._store_exact_match(run_key, [c.config.id for c in checkpoints], answers)

    def _prepare(self, run_key: str) -> None:
        """Train every config of the run's space, then generate their validation responses."""
        import torch

        from trainer.candidates import train_candidates as train

        torch.set_num_threads(self.config.model.torch_threads)
        self._record_judge_endpoint(run_key)
        configs = self.store.run_configs(run_key)
        try:
            args = self._training_arguments()
            progress = _training_progress(self.store, run_key)
            records = training_records(self.config)
            started = time.monotonic()
            report = train(configs, records, args, callbacks=[progress], on_run=progress.enter)
            self.store.update_run(
                run_key,
                stage="generating",
                progress=800,
                training_seconds=time.monotonic() - started,
            )
            started = time.monotonic()
            self._generate(run_key, report.checkpoints)
        except Exception:
            log.exception("preparing run %s failed", run_key)
            self.store.update_run(run_key, stage="failed", error_code=int(Code.TRAINING_FAILED))
            return
        self.store.update_run(
            run_key, stage="ready", progress=1000, generation_seconds=time.monotonic() - started
        )

    def _train_requested(self, run_key: str, config_ids: list[str]) -> None:
        """Train the runs of these configs up to their epochs (the runs planned from the whole
        space, so each keeps its full schedule; a run resumes where an earlier request left
        it), then generate the new checkpoints' responses."""
        import torch

        from trainer.candidates import train_candidates as train

        torch.set_num_threads(self.config.model.torch_threads)
        self._record_judge_endpoint(run_key)
        configs = self.store.run_configs(run_key)
        wanted = [config for config in configs if config.id in set(config_ids)]
        try:
            started = time.monotonic()
            records, args = training_records(self.config), self._training_arguments()
            report = train(configs, records, args, wanted=wanted)
            trained = time.monotonic() - started
            ready = [c for c in report.checkpoints if c.config.id in set(config_ids)]
            if len(ready) != len(config_ids):
                raise RuntimeError(f"no checkpoint for {len(config_ids) - len(ready)} configs")
            self._generate(run_key, ready)
        except Exception:
            log.exception("training on request for run %s failed", run_key)
            failed = Code.TRAINING_FAILED
            self.store.finish_training(run_key, config_ids, "failed", error_code=failed)
            return
        generated = time.monotonic() - started - trained
        self.store.finish_training(
            run_key, config_ids, "done", report.epochs_trained, trained, generated
        )

    def _record_judge_endpoint(self, run_key: str) -> None:
        """The run's pairs will go to a judge server: the ledger names its host (once)."""
        endpoint = judge_endpoint(self.config)
        if endpoint is not None:
            self.store.record_judge_endpoint(run_key, endpoint)

    def _reference_nll(
        self, run_key: str, items: Sequence[ValidationItem], answers: dict[str, ReferenceAnswer]
    ) -> Callable[[CandidateCheckpoint, Any, Any], None] | None:
        """The callback that scores reference outputs while a candidate's model is loaded."""
        if metric_name(answers) != ANSWER_NLL:
            return None
        scored = [item for item in items if item.id in answers]

        def score(checkpoint: CandidateCheckpoint, model: Any, tokenizer: Any) -> None:
            value = answer_nll(model, tokenizer, scored, [answers[i.id].text for i in scored])
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

        return {
            (r["config_id"], r["item_id"]): r["response"]
            for r in read_responses(self.config.responses_file)
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
        except Exception:
            log.exception("judging comparison job %s failed", job_id)
            self.store.fail_job(job_id, Code.JUDGING_FAILED)
            return
        seconds = time.monotonic() - started
        item_ids = [item.id for item in items]
        self.store.finish_job(job, item_ids, seconds, self.config.privacy, self._rng)

    def _judge_for(self, mode: str) -> ComparisonJudge:
        if mode not in self._judges:
            self._judges[mode] = self.judge_factory(self.config, mode)
        return self._judges[mode]
