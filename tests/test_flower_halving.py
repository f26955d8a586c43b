"""The `halving` selection mode on real Flower processes: a SuperLink, two SuperNodes, site
workers that really train (a tiny LLaMA) and judge with the planted-token double.

The space has four training runs of two epochs. The coordinator asks both sites to train every
run to epoch 1, compares those checkpoints, and asks for epoch 2 of the two best runs only: the
losing runs are never trained further. The coordinator is stopped after its first training and
submitted again; it resumes from its database without asking any site to train anything twice.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from agent.claims import run_from_json
from agent.db import LedgerEntry, TrainingJob
from agent.db import open_database as open_site_database
from common.processes import free_port, stop_process
from common.space import parse_space
from coordinator.config import load_federation_config
from coordinator.db import ComparisonResult, FederatedRun, TrainingResult
from coordinator.db import open_database as open_coordinator_database
from coordinator.launch import (
    flower_environment,
    follow_run,
    start_superlink,
    submit_run,
    write_connection,
)
from coordinator.results import run_result
from tests.test_flower_integration import Site, _federation_toml

pytestmark = pytest.mark.slow

SPACE = """# four runs (optimizer x learning rate) of two epochs each
[grid]
optimizer = ["adamw", "sgd"]
learning_rate = [2e-4, 2e-6]
scheduler = "linear"
epochs = [1, 2]
"""
CONFIGS = parse_space(SPACE).configs
RUN_OF = {c.id: (c.params["optimizer"], c.params["learning_rate"]) for c in CONFIGS}
PLANTED = next(
    i for i, c in enumerate(CONFIGS) if RUN_OF[c.id] == ("sgd", 2e-6) and c.params["epochs"] == 1
)
"""Epoch 1 of the last run: its checkpoint wins rung 1, so that run goes on with the first of
the others (their strengths tie), and the two runs between never reach epoch 2."""


class PlantedSite(Site):
    def start_worker(self, tie_share: float = 0.0) -> None:
        command = [
            sys.executable, "-m", "tests.planted_worker", str(self.config.source),
            CONFIGS[PLANTED].id,
        ]  # fmt: skip
        self.worker = self._spawn(command, "worker.log")


@pytest.fixture(scope="module")
def halving_federation(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path):
    folder = tmp_path_factory.mktemp("halving")
    (folder / "space.toml").write_text(SPACE)
    superlink = f"127.0.0.1:{free_port()}"
    config = load_federation_config(
        _federation_toml(folder, "halving-run", superlink, 2, selection_mode="halving")
    )
    link = start_superlink(config.superlink, config.state_dir)
    write_connection(config.superlink, config.state_dir)
    sites = [PlantedSite(folder, tiny_llama, i, superlink) for i in (1, 3)]
    for site in sites:
        site.start_supernode()
        site.start_worker()
    yield config, sites
    for site in sites:
        site.stop()
    stop_process(link)


def _wait_for(engine, table, timeout: float = 300.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Session(engine) as session:
            if session.exec(select(table).where(table.run_key == "halving-run")).first():
                return
        time.sleep(0.2)
    raise TimeoutError(f"no {table.__tablename__} row appeared")


def test_halving_trains_only_the_best_runs_further_and_resumes(halving_federation) -> None:
    config, sites = halving_federation
    engine = open_coordinator_database(config.database_url)
    flower_run_id = submit_run(config.state_dir, config.run_config())
    _wait_for(engine, TrainingResult)
    _wait_for(engine, ComparisonResult)
    subprocess.run(
        [str(Path(sys.executable).parent / "flwr"), "stop", flower_run_id, "pandalm"],
        env=flower_environment(config.state_dir), check=True, capture_output=True,
    )  # fmt: skip

    flower_run_id = submit_run(config.state_dir, config.run_config())
    status = follow_run(config, flower_run_id, live_view=False)
    assert status["status"] == "finished:completed", status.get("status-details")

    with Session(engine) as session:
        run = session.get(FederatedRun, "halving-run")
        assert run.best_index == PLANTED
        requests = [
            row.indices()
            for row in session.exec(
                select(TrainingResult).where(TrainingResult.run_key == "halving-run")
            )
        ]
    epochs = [[CONFIGS[i].params["epochs"] for i in request] for request in requests]
    assert epochs == [[1, 1, 1, 1], [2, 2]], "every run to epoch 1, then two runs to epoch 2"
    second = {RUN_OF[CONFIGS[i].id] for i in requests[1]}
    assert ("sgd", 2e-6) in second
    cost = run_result(engine, "halving-run").training
    assert cost is not None
    assert (cost.epoch_trainings, cost.grid_epoch_trainings, cost.runs_alive) == (6, 8, 2)

    trained = {CONFIGS[i].id for request in requests for i in request}
    for site in sites:
        site_engine = open_site_database(site.config.database_url)
        with Session(site_engine) as session:
            jobs = session.exec(select(TrainingJob)).all()
            replies = session.exec(
                select(LedgerEntry).where(LedgerEntry.message_type == "query.train")
            ).all()
        ready = {
            config.id
            for job in jobs
            for config in run_from_json(job.training_run_id, job.run).configs
            if config.params["epochs"] <= job.epochs_ready
        }
        assert ready == trained
        assert all(job.status == "done" for job in jobs)
        assert sum(job.epochs_trained for job in jobs) == 6, "no epoch is trained twice"
        assert replies, "train replies go to the ledger"
        checkpoints = sorted(
            len(list(run.glob("checkpoint-*")))
            for run in (site.config.candidates_dir / "runs").iterdir()
        )
        assert checkpoints == [1, 1, 2, 2], "the losing runs stopped after epoch 1"
