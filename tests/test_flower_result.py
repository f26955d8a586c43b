"""The run's result on real Flower processes: a TLS SuperLink that admits registered sites only
(so a site's node id survives a restart of its SuperNode), three sites.

Site 1's worker is killed (-9) mid-training and restarted; it keeps no full fine-tuning weights.
Site 3's SuperNode is killed mid-run, so the run ends without it; it is restarted once the other
two acknowledged the result, and gets it then. Every site stores the result, its ledger holds the
acknowledgement that arrived, `status` shows the chosen config, and site 1 exports the chosen
model (trained again from the run's seed) as a transformers directory that loads and generates.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from agent.cli import app as agent_app
from agent.db import SiteResult, ledger
from agent.db import open_database as open_site_database
from agent.identity import enroll
from common.processes import free_port, stop_process
from coordinator.certs import init_certificates
from coordinator.config import load_federation_config
from coordinator.db import FederatedRun, RunSite
from coordinator.db import open_database as open_coordinator_database
from coordinator.launch import follow_run, start_superlink, submit_run, write_connection
from coordinator.sites import register_site
from tests.test_agent_site import CONFIGS
from tests.test_flower_integration import PLANTED, SPACE, Site, _first_checkpoint, _node_id

pytestmark = pytest.mark.slow
RUN = "run-told"
OFFLINE_SECONDS = 75.0
"""After this long without a heartbeat the SuperLink counts a SuperNode offline (Flower 1.42:
HEARTBEAT_PATIENCE x the default interval), and it may connect again under its node id."""


def _federation_toml(folder: Path, superlink: str) -> Path:
    path = folder / "federation.toml"
    path.write_text(
        f'[run]\nname = "{RUN}"\nspace = "space.toml"\nstate_dir = "coordinator"\n'
        f'wire_log = "{RUN}-wire.jsonl"\n'
        '[selection]\nselection_mode = "paper"\nmin_sites = 3\nround_timeout = 30.0\n'
        'secure_aggregation = "off"\nretry_seconds = 0.5\nmax_retry_seconds = 4.0\n'
        "patience = 4\nsite_timeout = 0.0\nvalidation_items = 6\nblocks = 2\n"
        "result_timeout = 300.0\n"
        f'[superlink]\naddress = "{superlink}"\ncertificates = "certs"\n'
    )
    return path


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path):
    folder = tmp_path_factory.mktemp("result-federation")
    (folder / "space.toml").write_text(SPACE)
    init_certificates(folder / "certs", ["127.0.0.1"])
    superlink = f"127.0.0.1:{free_port()}"
    config = load_federation_config(_federation_toml(folder, superlink))
    link = start_superlink(config.superlink, config.state_dir)
    write_connection(config.superlink, config.state_dir)
    tls = {"insecure": False, "root_certificates": "certs/ca.crt"}
    sites = [
        Site(folder, tiny_llama, i, superlink,
             {"flower": tls, "model": {"keep_weights": i != 1}})
        for i in (1, 2, 3)
    ]  # fmt: skip
    for site in sites:
        key = enroll(site.config.keys_dir, comment=site.config.name)
        register_site(config, site.config.name, key)
        site.start_supernode()
        site.start_worker()
    yield config, sites
    for site in sites:
        site.stop()
    stop_process(link)


def _site_rows(engine) -> list[RunSite]:
    with Session(engine) as session:
        return list(session.exec(select(RunSite).where(RunSite.run_key == RUN)))


def test_every_site_learns_the_result_and_exports_the_chosen_model(
    federation, tmp_path: Path
) -> None:
    config, sites = federation
    engine = open_coordinator_database(config.database_url)
    flower_run_id = submit_run(config.state_dir, config.run_config())

    _first_checkpoint(sites[0])
    sites[0].worker.send_signal(signal.SIGKILL)  # as soon as its first epoch is saved
    sites[0].worker.wait()
    sites[0].start_worker()

    def site_three_offline_at_the_end() -> None:
        while not any(s.progress > 0 for s in _site_rows(engine)):
            time.sleep(0.2)
        sites[2].supernode.send_signal(signal.SIGKILL)
        sites[2].supernode.wait()
        killed = time.monotonic()
        while sum(s.result_acknowledged is not None for s in _site_rows(engine)) < 2:
            time.sleep(0.2)
        # the SuperLink activates the node again once it has marked it offline (about 60 s)
        time.sleep(max(0.0, killed + OFFLINE_SECONDS - time.monotonic()))
        sites[2].start_supernode()  # its registered key: the same node id as before

    reconnect = threading.Thread(target=site_three_offline_at_the_end, daemon=True)
    reconnect.start()
    status = follow_run(config, flower_run_id, live_view=False)
    assert status["status"] == "finished:completed", status.get("status-details")
    reconnect.join(timeout=5)

    with Session(engine) as session:
        assert session.get(FederatedRun, RUN).best_index == PLANTED
    rows = {int(row.node_id): row for row in _site_rows(engine)}
    site_three = rows[_node_id(sites[2])]
    assert site_three.status == "left_out", "site 3 was offline when the selection ended"
    assert all(row.result_acknowledged is not None for row in rows.values())
    assert site_three.result_acknowledged == max(r.result_acknowledged for r in rows.values())

    wire = [json.loads(line) for line in Path(config.wire_log).read_text().splitlines()]
    for site in sites:
        site_engine = open_site_database(site.config.database_url)
        with Session(site_engine) as session:
            assert session.get(SiteResult, RUN).best_id == CONFIGS[PLANTED].id
        sent = [json.loads(e.content) for e in ledger(site_engine, RUN)
                if e.message_type == "query.result"]  # fmt: skip
        arrived = [r["content"]["pandalm"]["fields"] for r in wire
                   if r["node"] == _node_id(site) and r["message_type"] == "query.result"
                   and "pandalm" in r["content"]]  # fmt: skip
        assert arrived and arrived[-1] == {"status": 0, "code": 0, "progress": 0, "tallies": []}
        assert arrived[-1] in sent
        shown = CliRunner().invoke(
            agent_app, ["status", "-c", str(site.config.source)], env={"COLUMNS": "300"}
        )
        assert CONFIGS[PLANTED].id in shown.output and "learning_rate=2e-06" in shown.output

    out = tmp_path / "chosen"
    exported = CliRunner().invoke(
        agent_app, ["export", "-c", str(sites[0].config.source), "--run", RUN, "--out", str(out)]
    )
    assert exported.exit_code == 0, exported.output
    assert "retrained from the run's seed" in exported.output
    _assert_loads_and_generates(out)
    assert (
        "sites that took part to the end: 2 (this site: `site-1`)"
        in (out / "README.md").read_text()
    )


def _assert_loads_and_generates(model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    encoded = tokenizer("Reverse the word cat.", return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**encoded, max_new_tokens=3, do_sample=False)
    assert output.shape[1] > encoded["input_ids"].shape[1]
