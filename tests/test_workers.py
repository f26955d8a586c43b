"""Several workers on one site database: training jobs and comparison jobs are claimed exactly
once, a dead worker's job is taken over once its lease runs out, and two real worker processes
share a site run's training (tiny random model on the CPU), one of them killed with -9
mid-training."""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import Session, select

from agent.claims import ClaimStore, ask_training
from agent.config import load_site_config
from agent.db import ComparisonJob, SiteRun, TrainingJob, open_database
from agent.site import handle_message
from agent.supervisor import site_environment, worker_children, worker_devices
from common.protocol import COMPARE_MESSAGE, SPACE_MESSAGE, Code
from common.space import CandidateConfig, plan_training_runs
from dbschema.columns import utc_now
from tests.test_agent_site import compare_record, space_record, write_site_config

GROUPS = (("adamw", 2e-4), ("adamw", 1e-4), ("sgd", 2e-6), ("sgd", 1e-6))
CONFIGS = [
    CandidateConfig.from_params(
        {"optimizer": optimizer, "learning_rate": lr, "scheduler": "linear", "epochs": epochs}
    )
    for optimizer, lr in GROUPS
    for epochs in (1, 2)
]
RUNS = plan_training_runs(CONFIGS)  # four training runs of two epochs each


def _site_run(url: str) -> object:
    engine = open_database(url)
    assert handle_message(engine, SPACE_MESSAGE, space_record("run-1", CONFIGS))["status"] == 0
    return engine


def test_each_training_job_is_claimed_once_and_taken_over_after_its_lease(
    new_database_url,
) -> None:
    engine = _site_run(new_database_url("agent"))
    planner = ClaimStore(engine, "host/worker-1", lease=60.0)
    assert planner.run_to_plan() == "run-1"
    assert planner.plan("run-1", RUNS) and not planner.plan("run-1", RUNS), "planned once"

    workers = [ClaimStore(engine, f"host/worker-{n}", lease=60.0) for n in range(2, 10)]
    claimed: list[str | None] = []
    start = threading.Barrier(len(workers))

    def claim(store: ClaimStore) -> None:
        start.wait()
        run = store.claim_training()
        claimed.append(None if run is None else run.id)

    threads = [threading.Thread(target=claim, args=(store,)) for store in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = [run_id for run_id in claimed if run_id is not None]
    assert sorted(won) == sorted(run.id for run in RUNS), "each job to exactly one worker"
    assert planner.claim_training() is None, "no free job while every lease is live"

    # a worker dies: its heartbeat stops, and once the lease has run out another takes over
    dead = won[0]
    with Session(engine) as session:
        session.connection().execute(
            update(TrainingJob)
            .where(TrainingJob.training_run_id == dead)
            .values(heartbeat=utc_now() - timedelta(seconds=61))
        )
        session.commit()
    taken = planner.claim_training()
    assert taken == next(run for run in RUNS if run.id == dead)
    with Session(engine) as session:
        job = session.exec(select(TrainingJob).where(TrainingJob.training_run_id == dead)).one()
        assert (job.worker, job.attempts) == ("host/worker-1", 2)

    for run in RUNS:
        planner.finish_training(run.id, 1.0)
    with Session(engine) as session:
        assert session.get(SiteRun, "run-1").stage == "ready"


def test_a_train_request_raises_a_jobs_target_epoch_even_while_it_is_trained(
    new_database_url,
) -> None:
    """A run trained on request plans its jobs with nothing to train; `query.train` raises a
    job's `until_epoch` (pending again); a request that arrives while a worker trains the job
    to a lower epoch leaves it pending when that worker finishes; a plain site run sharing the
    job wants it to its last epoch."""
    engine = open_database(new_database_url("agent"))
    record = space_record("run-1", CONFIGS, train_on_request=True)
    assert handle_message(engine, SPACE_MESSAGE, record)["status"] == 0
    worker = ClaimStore(engine, "w1", 60.0)
    assert worker.plan("run-1", RUNS) and worker.claim_training() is None, "nothing asked yet"
    assert [(job.until_epoch, job.status) for job in _jobs(engine)] == [(0, "done")] * 4
    with Session(engine) as session:
        assert session.get(SiteRun, "run-1").stage == "ready"

    first, other = RUNS[0].id, RUNS[1].id
    ask_training(engine, {first: 1})
    assert worker.claim_training() == RUNS[0] and worker.until_epoch(first) == 1
    ask_training(engine, {first: 2, other: 1})  # while w1 trains the first to epoch 1
    worker.finish_training(first, 1.0, reached=(1, 2), trained=1)
    jobs = {job.training_run_id: job for job in _jobs(engine)}
    assert (jobs[first].status, jobs[first].epochs_ready, jobs[first].until_epoch) == (
        "pending",
        1,
        2,
    )
    assert (jobs[other].status, jobs[other].until_epoch) == ("pending", 1)
    ask_training(engine, {first: 1})  # asking for less changes nothing
    assert worker.until_epoch(first) == 2

    plain = space_record("run-2", CONFIGS)
    assert handle_message(engine, SPACE_MESSAGE, plain)["status"] == 0
    assert worker.plan("run-2", RUNS)
    assert {job.until_epoch for job in _jobs(engine)} == {None}, "run-2 wants every epoch"


def test_a_comparison_job_is_judged_by_one_worker_at_a_time(new_database_url) -> None:
    engine = _site_run(new_database_url("agent"))
    ClaimStore(engine, "w1", 60.0).plan("run-1", [])  # nothing to train: ready at once
    handle_message(engine, COMPARE_MESSAGE, compare_record((0, 1)))
    first, second = ClaimStore(engine, "w1", 60.0), ClaimStore(engine, "w2", 60.0)
    job_id = first.claim_judging()
    assert job_id is not None and second.claim_judging() is None
    assert first.claim_judging() == job_id, "a restarted worker takes back its own job"
    with Session(engine) as session:
        session.connection().execute(
            update(ComparisonJob).values(heartbeat=utc_now() - timedelta(seconds=61))
        )
        session.commit()
    assert second.claim_judging() == job_id


def _jobs(engine) -> list[TrainingJob]:
    with Session(engine) as session:
        return list(session.exec(select(TrainingJob).order_by(TrainingJob.id)))


def _first_checkpoint_of(config, run_id: str, timeout: float = 300.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(config.candidates_dir.glob(f"runs/{run_id}/checkpoint-*/trainer_state.json"))
        if found:
            return found[0]
        time.sleep(0.05)
    raise TimeoutError(f"training run {run_id} wrote no checkpoint")


@pytest.mark.slow
def test_two_worker_processes_share_training_and_take_over_a_killed_one(
    tmp_path: Path, tiny_llama: Path
) -> None:
    settings = {
        "site": {"workers": 2, "worker_lease": 4.0},
        "data": {"train_examples": 64},
        "model": {"batch_size": 2},
    }
    config = load_site_config(write_site_config(tmp_path, tiny_llama, settings=settings))
    engine = _site_run(config.database_url)
    assert worker_devices(2, []) == ["", ""] and worker_devices(3, ["0", "1"]) == ["0", "1", "0"]
    children = worker_children(config, config.data_dir / "logs")
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in children] == ["", ""]  # both on the CPU
    env = site_environment(config)
    for child in children:
        child.start(env)
    try:
        # both work at once: two jobs held by two different workers
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            held = {j.worker for j in _jobs(engine) if j.status == "claimed"}
            if len(held) == 2:
                break
            time.sleep(0.1)
        assert len(held) == 2, "the work never spread over both workers"
        victim = next(j for j in _jobs(engine) if j.status == "claimed" and j.worker.endswith("-1"))
        saved = _first_checkpoint_of(config, victim.training_run_id)
        before = saved.stat().st_mtime_ns
        children[0].process.send_signal(signal.SIGKILL)
        children[0].process.wait()

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with Session(engine) as session:
                stage = session.get(SiteRun, "run-1").stage
            if stage != "training":
                break
            time.sleep(0.5)
        assert stage == "ready"
    finally:
        for child in children:
            child.stop()

    jobs = {j.training_run_id: j for j in _jobs(engine)}
    assert sorted(jobs) == sorted(run.id for run in RUNS)
    assert all(j.status == "done" for j in jobs.values())
    taken_over = jobs[victim.training_run_id]
    assert taken_over.attempts == 2 and taken_over.worker.endswith("-2")
    assert all(j.attempts == 1 for i, j in jobs.items() if i != victim.training_run_id)
    assert saved.stat().st_mtime_ns == before, "the finished epoch was not trained again"
    records = [json.loads(line) for line in config.responses_file.read_text().splitlines()]
    keys = [(r["config_id"], r["item_id"]) for r in records]
    assert len(keys) == len(set(keys)) == len(CONFIGS) * 6, "every response generated once"


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("workers = 0", r"\[site\]\.workers: must be at least 1, got 0"),
        ("worker_lease = 0.0", r"\[site\]\.worker_lease: must be above 0, got 0\.0"),
        ('workers = "2"', r"\[site\]\.workers: must be int, got '2'"),
    ],
)
def test_bad_worker_settings_are_named(tmp_path: Path, line: str, said: str) -> None:
    from agent.config import SiteConfigError

    path = tmp_path / "site.toml"
    path.write_text(f'[site]\nname = "s"\n{line}\n')
    with pytest.raises(SiteConfigError, match=said):
        load_site_config(path)


def test_a_run_whose_training_failed_is_planned_and_trained_again_when_its_space_returns(
    new_database_url,
) -> None:
    """A coordinator resuming a failed run sends the space again: the site run is planned
    again and its failed training job is back to pending, so a worker trains it."""
    engine = _site_run(new_database_url("agent"))
    worker = ClaimStore(engine, "host/worker-1", lease=60.0)
    assert worker.plan("run-1", RUNS)
    failed = worker.claim_training()
    assert failed is not None
    worker.fail_training(failed.id, Code.TRAINING_FAILED, "out of memory")
    with Session(engine) as session:
        assert session.get(SiteRun, "run-1").stage == "failed"
    assert worker.run_to_plan() is None

    assert handle_message(engine, SPACE_MESSAGE, space_record("run-1", CONFIGS))["status"] == 0
    assert worker.run_to_plan() == "run-1", "planned again"
    assert worker.plan("run-1", RUNS)
    with Session(engine) as session:
        job = session.exec(
            select(TrainingJob).where(TrainingJob.training_run_id == failed.id)
        ).one()
        assert (job.status, job.error_code) == ("pending", 0)
        assert session.get(SiteRun, "run-1").stage == "training"
    retried = worker.claim_training()  # the oldest free job: the one that failed
    assert retried is not None and retried.id == failed.id
