"""A site's judging jobs on a real database, SQLite and PostgreSQL: a worker killed with
SIGKILL mid-judging is restarted and finishes with nothing lost or counted twice; two workers
of one site racing on the same jobs record every judgment and every tally once, and spend the
privacy budget once. The judge double decides from the response texts, through the real
PairJudge: a worker that swapped the responses or mis-reconciled the two orders would show."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from agent.config import load_site_config
from agent.db import ComparisonJob, ItemJudgment, SiteRun, open_database
from agent.site import handle_message
from agent.worker import ComparisonJudge, SiteWorker, validation_items
from common.protocol import COMPARE_MESSAGE, SPACE_MESSAGE, Status
from tests.doubles import SlowJudge, plant_token, planted_token_judge
from tests.test_agent_site import CONFIGS, compare_record, space_record, write_site_config

PLANTED = CONFIGS[1].id
REQUEST = compare_record((1, 0), (2, 3))  # 2 jobs of 6 items: config 1 wins 6, then 6 ties
EXPECTED = [6, 0, 0, 0, 6, 0, 6, 0, 0, 6]


def ready_site(folder: Path, url: str, settings: dict | None = None):  # type: ignore[no-untyped-def]
    """A site whose run is trained and generated (the responses written as generation writes
    them, the planted config's with the planted token: training is tested elsewhere), with
    REQUEST's two comparison jobs queued."""
    path = write_site_config(folder, "builtin", database=url, settings=settings)
    config = load_site_config(path)
    engine = open_database(config.database_url)
    assert handle_message(engine, SPACE_MESSAGE, space_record())["status"] == Status.OK
    config.responses_file.parent.mkdir(parents=True, exist_ok=True)
    with config.responses_file.open("w") as out:
        for item in validation_items(config):
            for candidate in CONFIGS:
                record = {"config_id": candidate.id, "item_id": item.id, "max_new_tokens": 8,
                          "instruction": item.instruction, "input": item.input,
                          "response": f"{candidate.id} answers {item.id}"}  # fmt: skip
                out.write(json.dumps(record) + "\n")
    plant_token(config.responses_file, PLANTED)
    with Session(engine) as session:
        run = session.get(SiteRun, "run-1")
        run.stage, run.progress = "ready", 1000
        session.commit()
    assert handle_message(engine, COMPARE_MESSAGE, REQUEST)["status"] == Status.PENDING
    return config, engine


def judgments(engine) -> list[tuple]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        rows = session.exec(select(ItemJudgment).order_by(ItemJudgment.id)).all()
        return [(r.id, r.a_id, r.b_id, r.item_id, r.verdict) for r in rows]


def test_a_worker_killed_mid_judging_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, new_database_url
) -> None:
    config, engine = ready_site(tmp_path, new_database_url("agent"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.planted_worker", str(config.source), PLANTED, "0", "0.3"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(judgments(engine)) < 3:
            assert worker.poll() is None, "the worker died on its own"
            assert time.monotonic() < deadline, "the worker judged nothing"
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    before_restart = judgments(engine)
    assert 3 <= len(before_restart) < 12
    with Session(engine) as session:
        assert session.exec(select(ComparisonJob.status)).all().count("done") < 2

    restarted = SiteWorker(config, judge_factory=planted_token_judge())
    while restarted.step():
        pass
    after = judgments(engine)
    assert after[: len(before_restart)] == before_restart  # kept, not judged again
    assert len(after) == len({row[1:4] for row in after}) == 12  # every item, once
    answer = handle_message(engine, COMPARE_MESSAGE, REQUEST)
    assert (answer["status"], answer["tallies"]) == (Status.OK, EXPECTED)


class RacingJudge:
    """A site judge held at a barrier until both workers are judging the same job (each has
    read which items are still to judge before either stores one); the `lag` of the second
    worker lets the first finish the job before the second stores its judgments."""

    def __init__(
        self, judge: ComparisonJudge, barrier: threading.Barrier, calls: list, lag: float
    ) -> None:
        self.judge, self.barrier, self.calls, self.lag = judge, barrier, calls, lag

    def judge_comparison(self, a_id, b_id, pairs):  # type: ignore[no-untyped-def]
        self.calls.append((a_id, b_id, len(pairs)))
        self.barrier.wait()
        time.sleep(self.lag)
        yield from SlowJudge(self.judge, 0.01).judge_comparison(a_id, b_id, pairs)


def test_two_workers_of_one_site_racing_on_the_same_jobs_record_them_once(
    tmp_path: Path, new_database_url
) -> None:
    config, engine = ready_site(
        tmp_path, new_database_url("agent"), {"privacy": {"epsilon": 1.0, "budget": 2.0}}
    )
    barrier, calls, errors = threading.Barrier(2, timeout=60), [], []

    def work(judge: RacingJudge) -> None:
        try:
            worker = SiteWorker(config, judge_factory=lambda _c, _m: judge)
            while worker.step():
                pass
        except BaseException as exc:
            errors.append(exc)

    # the judges (and so the site's judgment cache) exist before the workers race
    judges = [
        RacingJudge(planted_token_judge()(config, "score"), barrier, calls, lag)
        for lag in (0.0, 1.0)
    ]
    threads = [threading.Thread(target=work, args=(judge,)) for judge in judges]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(calls) == sorted(2 * [(CONFIGS[1].id, CONFIGS[0].id, 6),
                                        (CONFIGS[2].id, CONFIGS[3].id, 6)])  # fmt: skip
    rows = judgments(engine)
    assert len(rows) == len({row[1:4] for row in rows}) == 12
    with Session(engine) as session:
        jobs = session.exec(select(ComparisonJob).order_by(ComparisonJob.id)).all()
        assert [job.status for job in jobs] == ["done", "done"]  # not failed, not over budget
        assert session.get(SiteRun, "run-1").epsilon_spent == 2.0  # once per comparison
    answer = handle_message(engine, COMPARE_MESSAGE, REQUEST)
    assert answer["status"] == Status.OK
    assert handle_message(engine, COMPARE_MESSAGE, REQUEST) == answer


@pytest.mark.parametrize(
    ("bug", "tallies"),
    [
        ("worker swaps the responses", [0, 0, 6, 0, 6, 0, 6, 0, 0, 6]),  # config 1 loses all
        ("second order not mapped back", [0, 6, 0, 0, 6, 0, 6, 0, 0, 6]),  # orders disagree: Tie
    ],
)
def test_the_judge_double_catches_a_swap_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bug: str, tallies: list[int]
) -> None:
    """The judge double judges response texts in both orders, so a worker that hands the
    judge the responses the wrong way round, or a PairJudge that reconciles the two orders
    without mapping the swapped one back, no longer finds the planted config best."""
    import agent.worker
    import judge.engine

    config, engine = ready_site(tmp_path, f"sqlite:///{tmp_path / 'agent.sqlite'}")
    if bug == "worker swaps the responses":
        pair = judge.engine.Pair
        monkeypatch.setattr(agent.worker, "Pair", lambda i, x, r1, r2: pair(i, x, r2, r1))
    else:
        monkeypatch.setattr(judge.engine, "swap_probabilities", lambda probabilities: probabilities)
    worker = SiteWorker(config, judge_factory=planted_token_judge())
    while worker.step():
        pass
    answer = handle_message(engine, COMPARE_MESSAGE, REQUEST)
    assert (answer["status"], answer["tallies"]) == (Status.OK, tallies)


def test_a_config_keeps_one_reference_score_per_metric(new_database_url) -> None:
    """Exact match and the dense answer NLL of one config are two rows under the unique key
    (run, config, metric); storing a metric again replaces that metric's row only."""
    from agent.db import reference_scores
    from agent.job_store import JobStore

    engine = open_database(new_database_url("agent"))
    store = JobStore(engine)
    config_id = CONFIGS[0].id
    store.store_reference("run-1", config_id, "exact_match", 0.25, 8)
    store.store_reference("run-1", config_id, "answer_nll", 2.5, 8)
    store.store_reference("run-1", config_id, "answer_nll", 2.25, 8)  # a retried run
    store.store_reference("run-2", config_id, "answer_nll", 9.0, 8)
    rows = reference_scores(engine, "run-1")
    assert sorted((r.config_id, r.metric, r.value) for r in rows) == [
        (config_id, "answer_nll", 2.25),
        (config_id, "exact_match", 0.25),
    ]
