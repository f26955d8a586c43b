"""A site that an operator stops cleanly and starts again, on real processes: a SuperLink over
TLS that admits registered sites only (so a site keeps its node id, as deployed), three
`pandalm-agent start` supervisors, a run in progress. Site 3 gets SIGTERM once the first
comparisons are recorded and is started again 20 s later: its SuperNode is admitted at once,
the site is not left out (silence is measured against `site_timeout`, not counted in rounds)
and the run finishes with its tallies counted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from agent.cli import app as agent_app
from common.processes import free_port, stop_process
from coordinator.cli import app as coordinator_app
from coordinator.config import load_federation_config
from coordinator.db import ComparisonResult, RunSite
from coordinator.db import open_database as open_coordinator_database
from coordinator.launch import follow_run, start_superlink, submit_run, write_connection
from tests.test_agent_site import write_site_config
from tests.test_flower_integration import SPACE

pytestmark = pytest.mark.slow
runner = CliRunner()


def _federation(folder: Path, superlink: str) -> Path:
    path = folder / "federation.toml"
    path.write_text(
        '[run]\nname = "rejoin"\nspace = "space.toml"\nstate_dir = "coordinator"\n'
        '[selection]\nselection_mode = "paper"\nmin_sites = 3\nround_timeout = 20.0\n'
        'secure_aggregation = "off"\nretry_seconds = 0.5\nmax_retry_seconds = 4.0\n'
        "patience = 2\nsite_timeout = 120.0\nvalidation_items = 6\nblocks = 2\n"
        f'[superlink]\naddress = "{superlink}"\ncertificates = "certs"\n'
    )
    return path


def _online(federation_toml: Path) -> dict[str, str]:
    listed = runner.invoke(coordinator_app, ["sites", "list", "--config", str(federation_toml)])
    return {n["name"]: n["status"] for n in json.loads(listed.stdout)}


def _agent(site_toml: Path, log: Path) -> subprocess.Popen:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "start", "--config", str(site_toml)],
            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def test_a_site_stopped_cleanly_and_restarted_is_counted(tmp_path: Path, tiny_llama: Path) -> None:
    (tmp_path / "space.toml").write_text(SPACE)
    superlink = f"127.0.0.1:{free_port()}"
    init = ["certs", "init", "--out", str(tmp_path / "certs"), "--san", "127.0.0.1"]
    assert runner.invoke(coordinator_app, init).exit_code == 0
    federation_toml = _federation(tmp_path, superlink)
    config = load_federation_config(federation_toml)
    sites = []
    for index in (1, 2, 3):
        flower = {
            "superlink": superlink,
            "clientappio_port": free_port(),
            "insecure": False,
            "root_certificates": "certs/ca.crt",
        }
        path = write_site_config(
            tmp_path, tiny_llama, name=f"site-{index}", seed=index, settings={"flower": flower}
        )
        enrolled = runner.invoke(agent_app, ["enroll", "--config", str(path)])
        assert enrolled.exit_code == 0, enrolled.output
        sites.append(path)
    link = start_superlink(config.superlink, config.state_dir)
    write_connection(config.superlink, config.state_dir)
    agents: list[subprocess.Popen] = []
    try:
        for index, path in enumerate(sites, start=1):
            key = tmp_path / f"site-{index}-data" / "keys" / "site_key.pub"
            add = ["sites", "add", f"site-{index}", str(key), "--config", str(federation_toml)]
            added = runner.invoke(coordinator_app, add)
            assert added.exit_code == 0, added.output
            agents.append(_agent(path, tmp_path / f"agent-{index}.log"))
        engine = open_coordinator_database(config.database_url)
        flower_run_id = submit_run(config.state_dir, config.run_config())

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with Session(engine) as session:
                if session.exec(select(ComparisonResult)).first() is not None:
                    break
            time.sleep(0.2)
        agents[2].send_signal(signal.SIGTERM)
        assert agents[2].wait(timeout=60) == 0
        assert _online(federation_toml)["site-3"] == "offline", "it said goodbye"
        time.sleep(20)
        restarted = time.monotonic()
        agents[2] = _agent(sites[2], tmp_path / "agent-3.log")
        while _online(federation_toml)["site-3"] != "online":
            assert time.monotonic() - restarted < 120, "the SuperNode was not admitted"
            time.sleep(0.25)
        reconnect = time.monotonic() - restarted
        print(f"restarted SuperNode online after {reconnect:.1f} s")
        assert reconnect < 30, "admitted at once (process start-up only), not after a minute"
        refused = (tmp_path / "site-3-data" / "logs" / "supernode.log").read_text()
        assert "Failed to activate SuperNode" not in refused

        status = follow_run(config, flower_run_id, live_view=False)
        assert status["status"] == "finished:completed", status.get("status-details")
    finally:
        for agent in agents:
            stop_process(agent, timeout=60)
        stop_process(link)
    with Session(engine) as session:
        rows = session.exec(select(RunSite).where(RunSite.run_key == "rejoin")).all()
        assert [s.status for s in rows] == ["active"] * 3
        results = session.exec(select(ComparisonResult)).all()
        assert len(results) == 3 and all(r.sites == 3 for r in results)
