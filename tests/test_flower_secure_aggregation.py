"""SecAgg+ on real Flower processes: a SuperLink, three SuperNodes with the app guard, site
workers whose (planted) judges give each site different tallies. The coordinator finds the
planted best from sums alone; its database, its logs and the wire hold no site's own tally."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.common import bytes_to_ndarray
from sqlmodel import Session, select

from agent.db import ledger
from agent.db import open_database as open_site_database
from agent.flower_internals import RECORD_KEY_CONFIGS
from agent.flower_internals import SecAggPlusKey as Key
from common.processes import free_port, stop_process
from common.tally import Tally
from coordinator.config import load_federation_config
from coordinator.db import ComparisonResult, FederatedRun
from coordinator.db import open_database as open_coordinator_database
from coordinator.launch import (
    follow_run,
    start_superlink,
    submit_run,
    write_connection,
)
from tests.test_agent_site import site_tally
from tests.test_flower_integration import PLANTED, SPACE, Site, _federation_toml, _node_id

pytestmark = pytest.mark.slow
TIE_SHARES = (0.0, 0.35, 0.7)  # per site: share of items the planted judge calls a Tie


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path):
    folder = tmp_path_factory.mktemp("secure-federation")
    (folder / "space.toml").write_text(SPACE)
    superlink = f"127.0.0.1:{free_port()}"
    config = load_federation_config(
        _federation_toml(folder, "run-secure", superlink, 3, secure_aggregation="required")
    )
    link = start_superlink(config.superlink, config.state_dir)
    write_connection(config.superlink, config.state_dir)
    sites = [Site(folder, tiny_llama, i, superlink) for i in (1, 2, 3)]
    for site, tie_share in zip(sites, TIE_SHARES, strict=True):
        site.start_supernode()
        site.start_worker(tie_share)
    yield config, sites
    for site in sites:
        site.stop()
    stop_process(link)


def test_secure_aggregation_over_real_supernodes(federation) -> None:
    config, sites = federation
    engine = open_coordinator_database(config.database_url)
    status = follow_run(config, submit_run(config.state_dir, config.run_config()), False)
    assert status["status"] == "finished:completed", status.get("status-details")

    with Session(engine) as session:
        run = session.get(FederatedRun, "run-secure")
        rows = session.exec(select(ComparisonResult)).all()
    assert run.best_index == PLANTED and run.aggregation == "SecAgg+ over 3 sites"
    site_engines = [open_site_database(site.config.database_url) for site in sites]
    per_site = {row.id: [site_tally(e, row) for e in site_engines] for row in rows}
    assert any(len(set(t)) == 3 for t in per_site.values()), "the sites' tallies differ"
    for row in rows:  # the coordinator recorded exactly the sums
        assert row.secure and row.sites == 3
        assert Tally.of(row) == sum(per_site[row.id], Tally())

    # Nowhere on the coordinator's side is one site's own tally: database, logs, the wire.
    wire = Path(config.wire_log).read_text()
    coordinator_text = "\n".join(
        [wire, *(str(row.model_dump()) for row in rows)]
        + [p.read_text(errors="replace") for p in config.state_dir.rglob("*.log")]
    )
    for tallies in per_site.values():
        for tally in tallies:
            if tally not in [Tally.of(r) for r in rows]:
                assert json.dumps(list(tally.values())) not in coordinator_text

    # What arrived: compare answers without tallies, and masked vectors equal to what each
    # site's ledger says it sent.
    received = [json.loads(line) for line in wire.splitlines()]
    compare = [r for r in received if r["message_type"] == "query.compare"]
    assert compare and all(r["content"]["pandalm"]["fields"]["tallies"] == [] for r in compare)
    for site in sites:
        node_id = _node_id(site)
        masked_arrived = [
            r["content"][RECORD_KEY_CONFIGS]["fields"][Key.MASKED_PARAMETERS]
            for r in received
            if r["node"] == node_id
            and Key.MASKED_PARAMETERS in r["content"].get(RECORD_KEY_CONFIGS, {}).get("fields", {})
        ]
        sent = [
            json.loads(e.content)[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
            for e in ledger(open_site_database(site.config.database_url))
            if e.message_type == "secagg.collect_masked_vectors"
        ]
        assert masked_arrived and masked_arrived == sent
        for vector in masked_arrived:
            masked = bytes_to_ndarray(bytes.fromhex(vector[-1]))
            assert masked.dtype.kind in "iu" and masked.size % 5 == 0
