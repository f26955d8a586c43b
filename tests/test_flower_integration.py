"""The federation on real Flower processes: a SuperLink, three SuperNodes, site workers.

One run finds the planted best config while a site's worker is killed mid-training and
restarted (nothing recomputed) and another site's SuperNode is killed mid-run (the run completes
without it and names it). A second run, in mode `auto`, runs racing (site 2 says its judge is
not pointwise), is stopped mid-way and submitted again, and resumes.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from sqlmodel import Session, select

from agent.config import load_site_config
from agent.db import ComparisonJob, ItemJudgment, SiteRun, ledger
from agent.db import open_database as open_site_database
from agent.supervisor import guard_command, site_environment, supernode_command
from common.appbundle import app_pyproject
from common.processes import free_port, stop_process
from common.protocol import Code
from common.tally import Tally
from coordinator.config import load_federation_config
from coordinator.db import ComparisonResult, FederatedRun, RunSite
from coordinator.db import open_database as open_coordinator_database
from coordinator.launch import (
    flower_environment,
    follow_run,
    start_superlink,
    submit_run,
    write_connection,
)
from dbschema.columns import utc_now
from judge.backends import parse_spec
from tests.test_agent_site import CONFIGS, write_site_config

pytestmark = pytest.mark.slow
PLANTED = 2  # index of the config the judge double prefers
PAIRWISE_SITE = 2  # its judge spec names a pairwise judge; the others' the pointwise builtin

SPACE = """# the four configs of tests.test_agent_site.CONFIGS, in that order
[[grid]]
optimizer = "adamw"
learning_rate = 2e-4
scheduler = "linear"
epochs = [1, 2]

[[grid]]
optimizer = "sgd"
learning_rate = 2e-6
scheduler = "linear"
epochs = [1, 2]
"""


def _federation_toml(
    folder: Path,
    name: str,
    superlink: str,
    min_sites: int,
    secure_aggregation: str = "off",
    selection_mode: str = "paper",
    round_timeout: float = 20.0,
) -> Path:
    """These runs check tallies in the clear (the wire against the ledger) and sites dropping
    below three; test_flower_secure_aggregation.py runs SecAgg+ (so does the failed run)."""
    path = folder / f"{name}.toml"
    path.write_text(
        f'[run]\nname = "{name}"\nspace = "space.toml"\nstate_dir = "coordinator"\n'
        f'wire_log = "{name}-wire.jsonl"\n'
        f'[selection]\nselection_mode = "{selection_mode}"\nmin_sites = {min_sites}\n'
        f"round_timeout = {round_timeout}\n"
        f'secure_aggregation = "{secure_aggregation}"\n'
        "retry_seconds = 0.5\nmax_retry_seconds = 4.0\npatience = 2\nsite_timeout = 0.0\n"
        "validation_items = 6\nblocks = 2\nresult_timeout = 10.0\n"
        f'[superlink]\naddress = "{superlink}"\ninsecure = true\n'
    )
    return path


class Site:
    def __init__(
        self,
        folder: Path,
        base: Path,
        index: int,
        superlink: str,
        more: dict[str, dict[str, object]] | None = None,
    ) -> None:
        """Site `site-INDEX`; `more` sets more of its site.toml, table by table."""
        settings: dict[str, dict[str, object]] = {
            "flower": {"superlink": superlink, "clientappio_port": free_port()}
        }
        if index == PAIRWISE_SITE:  # the worker judges with the double whatever the spec says
            (folder / "pairwise.gguf").write_bytes(b"GGUF")
            settings["judge"] = {"spec": f"gguf:{folder / 'pairwise.gguf'}"}
        for table, values in (more or {}).items():
            settings.setdefault(table, {}).update(values)
        path = write_site_config(folder, base, name=f"site-{index}", seed=index, settings=settings)
        self.config = load_site_config(path)
        self.env = site_environment(self.config)
        self.supernode: subprocess.Popen | None = None
        self.guard: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None

    def _spawn(self, command: list[str], log: str) -> subprocess.Popen:
        logs = self.config.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / log).open("ab") as handle:
            return subprocess.Popen(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    def start_supernode(self) -> None:
        self.supernode = self._spawn(supernode_command(self.config), "supernode.log")
        self.guard = self._spawn(guard_command(self.config), "guard.log")

    def start_worker(self, tie_share: float = 0.0) -> None:
        command = [
            sys.executable,
            "-m",
            "tests.planted_worker",
            str(self.config.source),
            CONFIGS[PLANTED].id,
            str(tie_share),
        ]
        self.worker = self._spawn(command, "worker.log")

    def stop(self) -> None:
        stop_process(self.supernode)
        stop_process(self.guard)
        stop_process(self.worker)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path):
    folder = tmp_path_factory.mktemp("federation")
    (folder / "space.toml").write_text(SPACE)
    superlink = f"127.0.0.1:{free_port()}"
    first = load_federation_config(_federation_toml(folder, "run-one", superlink, 3))
    link = start_superlink(first.superlink, first.state_dir)
    write_connection(first.superlink, first.state_dir)
    sites = [Site(folder, tiny_llama, i, superlink) for i in (1, 2, 3)]
    for site in sites:
        site.start_supernode()
        site.start_worker()
    yield folder, superlink, sites
    for site in sites:
        site.stop()
    stop_process(link)


def _first_checkpoint(site: Site, timeout: float = 120.0) -> list[Path]:
    """The trainer state of the first finished epoch: training it again would rewrite it (its
    weights are rewritten in bf16 once the next epoch is saved)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finished = sorted(site.config.candidates_dir.glob("runs/*/checkpoint-*/trainer_state.json"))
        if finished:
            return finished[:1]
        time.sleep(0.05)
    raise TimeoutError("no checkpoint appeared")


def test_full_run_with_a_killed_worker_and_a_lost_supernode(federation) -> None:
    folder, superlink, sites = federation
    config = load_federation_config(_federation_toml(folder, "run-one", superlink, 3))
    engine = open_coordinator_database(config.database_url)
    flower_run_id = submit_run(config.state_dir, config.run_config())

    # Site 1's worker dies mid-training and comes back: finished epochs are not trained again.
    saved = _first_checkpoint(sites[0])
    sites[0].worker.send_signal(signal.SIGKILL)
    sites[0].worker.wait()
    before = {path: path.stat().st_mtime_ns for path in saved}
    sites[0].start_worker()

    # Site 3's SuperNode dies once the comparisons have started.
    def kill_site_three() -> None:
        while True:
            with Session(engine) as session:
                started = session.exec(select(RunSite).where(RunSite.run_key == "run-one")).all()
            if len(started) == 3 and any(s.progress > 0 for s in started):
                break
            time.sleep(0.2)
        sites[2].supernode.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_site_three, daemon=True)
    killer.start()
    status = follow_run(config, flower_run_id, live_view=False)
    assert status["status"] == "finished:completed", status.get("status-details")

    with Session(engine) as session:
        run = session.get(FederatedRun, "run-one")
        assert run.best_index == PLANTED
        site_rows = session.exec(select(RunSite).where(RunSite.run_key == "run-one")).all()
        left_out = [s for s in site_rows if s.status == "left_out"]
        assert len(left_out) == 1 and "no valid answer" in left_out[0].reason
        told = [s.status for s in site_rows if s.result_acknowledged is not None]
        assert told == ["active", "active"], "the result reached the sites still up"
        results = session.exec(select(ComparisonResult)).all()
        assert results and all(r.sites in (2, 3) for r in results)
        assert results[-1].sites == 2

    assert saved and {p: p.stat().st_mtime_ns for p in saved} == before
    site_engine = open_site_database(sites[0].config.database_url)
    with Session(site_engine) as session:
        jobs = session.exec(select(ComparisonJob).where(ComparisonJob.status == "done")).all()
        judged = session.exec(select(ItemJudgment)).all()
        assert sum(job.items for job in jobs) == len(judged)
        for job in jobs:
            planted_side = CONFIGS[PLANTED].id in (job.a_id, job.b_id)
            assert job.tally() == (
                Tally(6, 0, 0, 0, 6)
                if job.a_id == CONFIGS[PLANTED].id
                else Tally(0, 0, 6, 0, 6)
                if planted_side
                else Tally(0, 6, 0, 0, 6)
            )
    _assert_only_tallies_arrived(folder / "run-one-wire.jsonl", sites, lost=sites[2])


def _node_id(site: Site) -> int:
    log = (site.config.data_dir / "logs" / "supernode.log").read_text()
    return int(re.findall(r"SuperNode ID: (\d+)", log)[-1])


def _assert_only_tallies_arrived(
    wire_log: Path, sites: list[Site], lost: Site | None = None
) -> None:
    """Every reply the coordinator received holds the protocol's integer fields and nothing
    else, and each one is in the sending site's egress ledger, in the same order. The one
    exception: for a `lost` site's node, the SuperLink itself may answer with Flower's error
    record (code and reason) once it notices the node is gone; that carries nothing of the
    site's."""
    received = [json.loads(line) for line in wire_log.read_text().splitlines()]
    assert received
    by_node = {_node_id(site): site for site in sites}
    for node_id, site in by_node.items():
        sent = [json.loads(e.content) for e in ledger(open_site_database(site.config.database_url))]
        arrived = [(r["message_type"], r["content"]) for r in received if r["node"] == node_id]
        pointwise = int(parse_spec(site.config.judge.spec).pointwise)
        position = 0
        for message_type, content in arrived:
            if site is lost and set(content) == {"error"}:
                assert set(content["error"]) == {"code", "reason"}
                continue
            assert set(content) == {"pandalm"} and content["pandalm"]["type"] == "ConfigRecord"
            fields = content["pandalm"]["fields"]
            flag = {"pointwise_judge"} if message_type == "query.space" else set()
            assert set(fields) == {"status", "code", "progress", "tallies"} | flag
            if flag:  # the capability flag: this site's judge is pointwise, or not
                assert fields["pointwise_judge"] == pointwise
            values = [fields["status"], fields["code"], fields["progress"], *fields["tallies"]]
            assert all(type(v) is int for v in values)
            position = sent.index(fields, position) + 1  # raises if the ledger lacks it


def test_a_stopped_coordinator_resumes_the_run(federation) -> None:
    folder, superlink, _sites = federation
    config = load_federation_config(
        _federation_toml(folder, "run-two", superlink, 2, selection_mode="auto")
    )
    engine = open_coordinator_database(config.database_url)
    flower_run_id = submit_run(config.state_dir, config.run_config())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        with Session(engine) as session:
            if session.exec(
                select(ComparisonResult).where(ComparisonResult.run_key == "run-two")
            ).first():
                break
        time.sleep(0.2)
    subprocess.run(
        [str(Path(sys.executable).parent / "flwr"), "stop", flower_run_id, "pandalm"],
        env=flower_environment(config.state_dir),
        check=True,
        capture_output=True,
    )
    with Session(engine) as session:
        early = {
            (r.a, r.b)
            for r in session.exec(
                select(ComparisonResult).where(ComparisonResult.run_key == "run-two")
            )
        }
    assert early

    flower_run_id = submit_run(config.state_dir, config.run_config())
    status = follow_run(config, flower_run_id, live_view=False)
    assert status["status"] == "finished:completed", status.get("status-details")
    with Session(engine) as session:
        rows = session.exec(
            select(ComparisonResult).where(ComparisonResult.run_key == "run-two")
        ).all()
        keys = [(r.a, r.b, r.item_start, r.item_stop) for r in rows]
        assert len(keys) == len(set(keys)) >= 6  # every pair, then the playoff
        assert early <= {(r.a, r.b) for r in rows}
        run = session.get(FederatedRun, "run-two")
        assert run.best_index == PLANTED
        assert run.selection_mode == "racing" and run.requested_selection_mode() == "auto"


def test_a_site_refuses_an_app_bundle_it_did_not_install(federation, tmp_path: Path) -> None:
    """A coordinator submitting a modified app gets refusals; its code never runs at a site."""
    folder, superlink, sites = federation
    marker = tmp_path / "modified-app-ran"
    app = tmp_path / "modified-app"
    app.mkdir()
    (app / "pyproject.toml").write_text(
        app_pyproject().replace('"agent.client_app:app"', '"sneaky_client:app"')
    )
    (app / "sneaky_client.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from agent.client_app import app as _app\napp = _app\n"
    )
    config = load_federation_config(_federation_toml(folder, "run-sneaky", superlink, 2))
    overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in config.run_config().items())
    submitted = subprocess.run(
        [str(Path(sys.executable).parent / "flwr"), "run", str(app), "pandalm", "--run-config",
         overrides, "--format", "json"],
        env=flower_environment(config.state_dir), capture_output=True, text=True, check=True,
    )  # fmt: skip
    status = follow_run(config, json.loads(submitted.stdout)["run-id"], live_view=False)
    assert status["status"] == "finished:failed"
    assert not marker.exists()
    for site in sites[:2]:
        refusals = [
            e for e in ledger(open_site_database(site.config.database_url))
            if e.message_type == "app-refused"
        ]  # fmt: skip
        assert refusals and json.loads(refusals[-1].content)["code"] == 20
        assert "refused an app bundle" in (site.config.data_dir / "logs" / "guard.log").read_text()


def test_a_failed_run_is_recorded_failed_and_resumes_after_the_fix(federation) -> None:
    """Measured before: a failed run stayed `running` in the coordinator database with no
    finish time, and started again after the inputs were fixed it failed again (the left-out
    site stayed out, its run stayed failed). Here site 2's judge model goes missing: its worker
    refuses the run before training (BAD_JUDGE, the path kept at the site), the site is left out
    with that code, two sites are too few for required SecAgg+ and the run is recorded failed.
    With the model back, the same run started again resumes: site 2 is asked again, prepares
    and is in every sum. `--restart` then runs it over with fresh comparisons."""
    from rich.console import Console

    from coordinator.launch import run_federation

    folder, superlink, sites = federation
    if sites[2].supernode.poll() is not None:  # the first test killed it
        stop_process(sites[2].guard)
        sites[2].start_supernode()
    judge = folder / "pairwise.gguf"
    judge.rename(folder / "pairwise.gguf.away")
    toml = _federation_toml(  # each SecAgg+ stage starts a ClientApp per site: time for it
        folder, "run-three", superlink, 3, secure_aggregation="required", round_timeout=60.0
    )
    config = load_federation_config(toml)
    engine = open_coordinator_database(config.database_url)
    status = follow_run(config, submit_run(config.state_dir, config.run_config()), live_view=False)
    assert status["status"] == "finished:failed"
    site_two = str(_node_id(sites[1]))
    with Session(engine) as session:
        run = session.get(FederatedRun, "run-three")
        assert run.status == "failed" and run.finished is not None
        assert run.reason.startswith("secure_aggregation = required, but 2 sites are active")
        query = select(RunSite).where(RunSite.run_key == "run-three", RunSite.status == "left_out")
        assert [(s.node_id, s.code) for s in session.exec(query)] == [(site_two, Code.BAD_JUDGE)]
    with Session(open_site_database(sites[1].config.database_url)) as session:
        site_run = session.get(SiteRun, "run-three")
        assert (site_run.stage, site_run.error_code) == ("failed", Code.BAD_JUDGE)
        assert f"no GGUF file at {judge}" in site_run.error

    (folder / "pairwise.gguf.away").rename(judge)
    status = follow_run(config, submit_run(config.state_dir, config.run_config()), live_view=False)
    assert status["status"] == "finished:completed", status.get("status-details")
    first = _secure_rows(engine, site_two)

    restarted = utc_now().replace(tzinfo=None)  # SQLite gives naive UTC times back
    run_federation(config, Console(quiet=True), restart=True)
    again = _secure_rows(engine, site_two)
    assert [key for key, _time in again] == [key for key, _time in first], "the same comparisons"
    assert all(t.replace(tzinfo=None) >= restarted for _key, t in again), "recorded anew"


def _secure_rows(engine, site: str) -> list[tuple[tuple[int, int, int, int], datetime]]:
    """The run's comparisons, each summed by SecAgg+ over 3 sites including `site`; the run is
    done with the planted best."""
    with Session(engine) as session:
        run = session.get(FederatedRun, "run-three")
        assert (run.status, run.reason, run.best_index) == ("done", "", PLANTED)
        rows = session.exec(
            select(ComparisonResult).where(ComparisonResult.run_key == "run-three")
        ).all()
        assert rows and all(r.secure and site in r.contributor_ids() for r in rows)
        return [((r.a, r.b, r.item_start, r.item_stop), r.recorded) for r in rows]
