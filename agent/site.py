"""The site's side of the protocol: answers coordinator messages from the local database.

Answers are quick: a compare request whose judgments are not finished yet is answered
`pending` with progress, and the worker does the work; so is a train request (`query.train`,
for a space sent with `train_on_request`) whose configs are not trained and generated yet.
Whatever goes wrong, only a status code goes back; the details stay in the local log. Every
reply is written to the egress ledger before it is returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import Session, select

from agent.claims import ask_training, epochs_ready
from agent.db import ComparisonJob, SiteResult, SiteRun, add_new, record_egress
from common.protocol import (
    COMPARE_MESSAGE,
    NO_BASELINE,
    RESULT_MESSAGE,
    SPACE_MESSAGE,
    TRAIN_MESSAGE,
    Code,
    CompareMessage,
    ProtocolError,
    Reply,
    Status,
    decode_compare,
    decode_result,
    decode_space,
    decode_train,
    encode_reply,
)
from common.space import CandidateConfig, SpaceError

log = logging.getLogger(__name__)


def _space_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(record), sort_keys=True).encode()).hexdigest()


def accept_space(engine: Engine, record: Mapping[str, Any], pointwise_judge: bool = False) -> Reply:
    """Store the run's search space after checking every config id against its parameters; the
    reply says whether this site's judge is pointwise (the coordinator's `auto` mode reads it)."""
    message = decode_space(record)
    for config_id, params in zip(message.config_ids, message.params, strict=True):
        try:
            expected = CandidateConfig.from_params(params).id
        except SpaceError as exc:
            raise ProtocolError(Code.OUT_OF_RANGE, f"config {config_id}: {exc}") from exc
        if expected != config_id:
            raise ProtocolError(Code.CONFIG_ID_MISMATCH, f"{config_id} != {expected}")
    space_hash = _space_hash(record)
    with Session(engine) as session:
        add_new(  # a repeated (or concurrent) request finds the stored run
            session,
            SiteRun(
                run_key=message.run_key,
                space_hash=space_hash,
                config_ids=json.dumps(list(message.config_ids)),
                params=json.dumps(list(message.params)),
                validation_items=message.validation_items,
                judge_mode=message.judge_mode,
                train_on_request=message.train_on_request,
            ),
        )
        session.commit()
        if session.get(SiteRun, message.run_key).space_hash != space_hash:
            raise ProtocolError(Code.SPACE_CHANGED, f"run {message.run_key} changed space")
    _retry_failed(engine, message.run_key)
    return Reply(Status.OK, pointwise_judge=int(pointwise_judge))


def _retry_failed(engine: Engine, run_key: str) -> None:
    """The space sent again (a coordinator resuming a failed or stopped run): a run whose
    preparation failed is prepared again, and failed comparison jobs are judged again, after the
    operator fixed the inputs. A job refused for the privacy budget stays refused."""
    with Session(engine) as session:
        reset = session.connection().execute(
            update(SiteRun)
            .where(SiteRun.run_key == run_key, SiteRun.stage == "failed")
            .values(stage="training", progress=0, error_code=0, error="", planned=False)
        )
        session.connection().execute(
            update(ComparisonJob)
            .where(
                ComparisonJob.run_key == run_key,
                ComparisonJob.status == "failed",
                ComparisonJob.error_code != int(Code.PRIVACY_BUDGET),
            )
            .values(status="pending", error_code=0)
        )
        session.commit()
    if reset.rowcount:
        log.warning("run %s: preparing it again (it had failed)", run_key)


def _known_run(
    session: Session, record: Mapping[str, Any], decode: Callable[[Mapping[str, Any]], object]
) -> SiteRun:
    """The run a message names; a malformed message is refused as such (by `decode`) before
    an unknown run is refused as UNKNOWN_RUN."""
    run_key = record.get("run_key")
    run = session.get(SiteRun, run_key) if isinstance(run_key, str) else None
    if run is None:
        decode(record)
        raise ProtocolError(Code.UNKNOWN_RUN, "no space received for this run")
    return run


def _jobs(
    engine: Engine, record: Mapping[str, Any]
) -> tuple[CompareMessage, SiteRun, list[ComparisonJob]]:
    """The decoded request, its run and its judging jobs (queued where new), read for use
    after the session; refused for an unknown run."""
    with Session(engine) as session:
        run = _known_run(session, record, decode_compare)
        ids = run.ids()
        message = decode_compare(record, n_configs=len(ids))
        if run.train_on_request and run.stage != "failed":
            _check_trained(session, run, message)
        jobs = []
        for comparison in message.comparisons:
            stop = min(comparison.item_stop, run.validation_items)
            key = dict(
                run_key=run.run_key,
                a_id=ids[comparison.a],
                b_id=ids[comparison.b],
                item_start=comparison.item_start,
                item_stop=max(stop, comparison.item_start),
            )
            add_new(session, ComparisonJob(**key))
            jobs.append(session.exec(select(ComparisonJob).filter_by(**key)).one())
        session.commit()
        for row in (run, *jobs):
            session.refresh(row)
        session.expunge_all()
        return message, run, jobs


def answer_compare(engine: Engine, record: Mapping[str, Any]) -> Reply:
    """Tallies when every comparison is judged (or, for a secure request, `ok` without them:
    they go out masked by SecAgg+); otherwise queue the missing ones, `pending`."""
    message, run, jobs = _jobs(engine, record)
    if run.stage == "failed":
        return Reply(Status.FAILED, Code(run.error_code or Code.INTERNAL_ERROR))
    failed = [job for job in jobs if job.status == "failed"]
    if failed:
        return Reply(Status.FAILED, Code(failed[0].error_code or Code.JUDGING_FAILED))
    done = sum(job.status == "done" for job in jobs)
    if done == len(jobs):
        return Reply(Status.OK, tallies=() if message.secure else tuple(j.tally() for j in jobs))
    preparation = run.progress if run.stage != "ready" else 1000
    return Reply(Status.PENDING, progress=(preparation + 1000 * done // len(jobs)) // 2)


def _check_trained(session: Session, run: SiteRun, message: CompareMessage) -> None:
    """A run trained on request compares only configs a train request made ready: any other
    has no responses to judge (NOT_READY, before a job for it is queued)."""
    ids = run.ids()
    asked = {ids[index] for c in message.comparisons for index in (c.a, c.b)}
    if not asked <= _trained_configs(session, run.run_key):
        raise ProtocolError(Code.NOT_READY, "a compared config has not been trained on request")


def _trained_configs(session: Session, run_key: str) -> set[str]:
    """The site run's configs whose checkpoints are trained and their responses generated."""
    return {
        config.id
        for run, ready in epochs_ready(session, run_key)
        for config in run.configs
        if config.params["epochs"] <= ready
    }


def answer_train(engine: Engine, record: Mapping[str, Any]) -> Reply:
    """Raise the training jobs of the requested configs' runs to those configs' epochs (the
    worker trains them); `ok` once every config is trained and its responses generated,
    `pending` with the permille of them done until then (and before the run's training jobs
    are planned: the coordinator sends the request again)."""
    with Session(engine) as session:
        run = _known_run(session, record, decode_train)
        ids = run.ids()
        message = decode_train(record, n_configs=len(ids))
        if not run.train_on_request:
            raise ProtocolError(Code.OUT_OF_RANGE, "this run's space trains every config")
        if run.stage == "failed":
            return Reply(Status.FAILED, Code(run.error_code or Code.TRAINING_FAILED))
        wanted = {ids[index] for index in message.request.configs}
        jobs = epochs_ready(session, run.run_key)
    targets: dict[str, int] = {}
    for training_run, _ready in jobs:
        for config in training_run.configs:
            if config.id in wanted:
                epoch = max(targets.get(training_run.id, 0), config.params["epochs"])
                targets[training_run.id] = epoch
    ask_training(engine, targets)
    with Session(engine) as session:  # a failed job fails the site run: the next reply says so
        trained = _trained_configs(session, run.run_key)
    done = len(wanted & trained)
    if done == len(wanted):
        return Reply(Status.OK, progress=1000)
    return Reply(Status.PENDING, progress=1000 * done // len(wanted))


def secure_tallies(engine: Engine, record: Mapping[str, Any]) -> list[int]:
    """The flat tallies of a secure compare request, for SecAgg+ to mask; all must be judged."""
    message, _run, jobs = _jobs(engine, record)
    if not message.secure:
        raise ProtocolError(Code.OUT_OF_RANGE, "tallies in a train message only when secure")
    if any(job.status != "done" for job in jobs):
        raise ProtocolError(Code.NOT_READY, "the comparisons are not judged yet")
    return [value for job in jobs for value in job.tally().values()]


def accept_result(engine: Engine, record: Mapping[str, Any]) -> Reply:
    """Store the run's outcome after checking it against the stored space; the `ok` reply is
    the acknowledgement. The same result sent again is acknowledged again; another one for a
    run that has one is refused (a coordinator's result does not change)."""
    with Session(engine) as session:
        run = _known_run(session, record, decode_result)
        ids = run.ids()
        message = decode_result(record, n_configs=len(ids))
        content = json.dumps(dict(record), sort_keys=True)
        baseline = ids[message.baseline] if message.baseline != NO_BASELINE else None
        add_new(  # a repeated (or concurrent) delivery finds the stored result
            session,
            SiteResult(
                run_key=run.run_key,
                best_id=ids[message.best],
                baseline_id=baseline,
                message=content,
            ),
        )
        session.commit()
        if session.get(SiteResult, run.run_key).message != content:
            raise ProtocolError(Code.RESULT_CHANGED, f"run {run.run_key} has another result")
    return Reply(Status.OK)


def handle_message(
    engine: Engine, message_type: str, record: Mapping[str, Any], pointwise_judge: bool = False
) -> dict:
    """Answer one coordinator message; never raises, never lets text out. `pointwise_judge`:
    whether this site's judge scores each response on its own (said in the reply to space)."""
    try:
        if message_type == SPACE_MESSAGE:
            reply = accept_space(engine, record, pointwise_judge)
        elif message_type == COMPARE_MESSAGE:
            reply = answer_compare(engine, record)
        elif message_type == TRAIN_MESSAGE:
            reply = answer_train(engine, record)
        elif message_type == RESULT_MESSAGE:
            reply = accept_result(engine, record)
        else:
            raise ProtocolError(Code.UNKNOWN_MESSAGE, f"message type {message_type!r}")
    except ProtocolError as exc:
        log.warning("refused %s: %s", message_type, exc)
        reply = Reply(Status.REFUSED, exc.code)
    except Exception:
        log.exception("failed to answer %s", message_type)
        reply = Reply(Status.FAILED, Code.INTERNAL_ERROR)
    payload = encode_reply(reply)
    run_key = record.get("run_key") if isinstance(record.get("run_key"), str) else ""
    record_egress(engine, str(run_key)[:64], message_type, payload)
    return payload
