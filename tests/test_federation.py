"""The coordinator's run loop against real site agents over an in-process transport double:
the planted best is found, a silent site is left out and named, a restarted coordinator
resumes without asking again for what it recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, select

from agent.config import load_site_config
from agent.db import open_database as open_site_database
from agent.site import handle_message
from agent.worker import SiteWorker
from coordinator.db import ComparisonResult, RunSite
from coordinator.db import open_database as open_coordinator_database
from coordinator.federation import FederatedSelection, RunSettings
from tests.doubles import PlantedPreferenceJudge
from tests.test_agent_site import CONFIGS, write_site_config


class LoopbackTransport:
    """Test double for Flower's Grid: calls each site's message handler in process and lets
    its worker do a step of work after every exchange."""

    def __init__(self, sites: dict[int, tuple], silent: set[int] = frozenset()) -> None:
        self.sites = sites
        self.silent = set(silent)
        self.exchanges: list[tuple[str, dict]] = []

    def node_ids(self) -> list[int]:
        return sorted(self.sites)

    def exchange(self, message_type: str, records: dict, timeout: float) -> dict:
        self.exchanges.append((message_type, dict(records)))
        replies = {}
        for node_id, record in records.items():
            engine, worker = self.sites[node_id]
            replies[node_id] = (
                None if node_id in self.silent else handle_message(engine, message_type, record)
            )
            worker.step()
        return replies


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict[int, tuple]:
    folder = tmp_path_factory.mktemp("sites")
    planted = CONFIGS[2].id
    result = {}
    for node_id in (11, 12, 13):
        config = load_site_config(
            write_site_config(folder, tiny_llama, name=f"site-{node_id}", seed=node_id)
        )
        worker = SiteWorker(config, judge_factory=lambda _c, _m: PlantedPreferenceJudge(planted))
        result[node_id] = (open_site_database(config.database_url), worker)
    return result


def _selection(engine, transport, name: str, mode: str = "paper") -> FederatedSelection:
    settings = RunSettings(
        name=name,
        mode=mode,
        min_sites=2,
        round_timeout=1,
        retry_seconds=0,
        patience=2,
        validation_items=6,
        blocks=2,
        chunk_items=3,
    )
    return FederatedSelection(
        engine, transport, settings, [c.id for c in CONFIGS], [dict(c.params) for c in CONFIGS]
    )


@pytest.mark.parametrize("mode", ["paper", "round-robin", "adaptive"])
def test_every_mode_finds_the_planted_best(tmp_path: Path, sites: dict, mode: str) -> None:
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    outcome = _selection(engine, LoopbackTransport(sites), f"run-{mode}", mode).run()
    assert outcome.best_index == 2
    assert outcome.sites == [11, 12, 13] and outcome.left_out == {}
    assert outcome.judgments > 0


def test_a_silent_site_is_left_out_and_named(tmp_path: Path, sites: dict) -> None:
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites)
    selection = _selection(engine, transport, "run-drop")
    original = transport.exchange

    def drop_site_13_after_the_space(message_type, records, timeout):
        if message_type == "query.compare":
            transport.silent.add(13)
        return original(message_type, records, timeout)

    transport.exchange = drop_site_13_after_the_space
    outcome = selection.run()
    assert outcome.best_index == 2
    assert outcome.sites == [11, 12]
    assert 13 in outcome.left_out and "no valid answer" in outcome.left_out[13]
    with Session(engine) as session:
        site = session.exec(select(RunSite).where(RunSite.node_id == "13")).one()
        assert site.status == "left_out"
        assert {r.sites for r in session.exec(select(ComparisonResult))} == {2}


def test_a_restarted_coordinator_resumes(tmp_path: Path, sites: dict) -> None:
    url = f"sqlite:///{tmp_path / 'coordinator.sqlite'}"
    first = _selection(open_coordinator_database(url), LoopbackTransport(sites), "run-resume")
    calls = 0
    original = first._compare

    def crash_before_the_final(requests):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt("coordinator killed")
        original(requests)

    first._compare = crash_before_the_final
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert {(r.a, r.b) for r in comparison_rows(url)} == {(0, 1), (2, 3)}

    transport = LoopbackTransport(sites)
    outcome = _selection(open_coordinator_database(url), transport, "run-resume").run()
    assert outcome.best_index == 2
    rows = comparison_rows(url)
    keys = [(r.a, r.b, r.item_start, r.item_stop) for r in rows]
    assert len(keys) == len(set(keys)) == 3, "no comparison is recorded twice"
    asked = {
        (a, b)
        for message_type, records in transport.exchanges
        if message_type == "query.compare"
        for record in records.values()
        for a, b in zip(record["a"], record["b"], strict=True)
    }
    assert asked == {(keys[2][0], keys[2][1])}, "only the final was asked after the restart"


def comparison_rows(url: str) -> list[ComparisonResult]:
    with Session(open_coordinator_database(url)) as session:
        return list(session.exec(select(ComparisonResult)))


def test_console_and_report_read_the_run(tmp_path: Path, sites: dict) -> None:
    from rich.console import Console
    from typer.testing import CliRunner

    from coordinator.cli import app
    from coordinator.console import render

    database = tmp_path / "coordinator.sqlite"
    engine = open_coordinator_database(f"sqlite:///{database}")
    _selection(engine, LoopbackTransport(sites), "run-view").run()
    console = Console(width=160, record=True)
    console.print(render(engine, "run-view"))
    frame = console.export_text()
    assert "status done" in frame and f"best config: #2 {CONFIGS[2].id[:8]}" in frame
    result = CliRunner().invoke(
        app, ["report", "run-view", "--database", str(database), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    assert CONFIGS[2].id in result.stdout
    assert (tmp_path / "r" / "report.html").is_file()


def test_federation_config_errors_name_the_field(tmp_path: Path) -> None:
    from coordinator.config import FederationConfigError, load_federation_config

    path = tmp_path / "federation.toml"
    path.write_text('[run]\nname = "x"\n[selection]\nmode = "paper"\nmin_sites = "three"\n')
    with pytest.raises(FederationConfigError, match=r"\[selection\]\.min_sites: must be int"):
        load_federation_config(path)
    path.write_text('[run]\nname = "x"\n[superlink]\nadress = "127.0.0.1:1"\n')
    with pytest.raises(FederationConfigError, match=r"\[superlink\]\.adress: unknown setting"):
        load_federation_config(path)
    path.write_text('[run]\nname = "x"\nspace = "nope.toml"\n')
    with pytest.raises(FederationConfigError, match=r"\[run\]\.space: no file nope\.toml"):
        load_federation_config(path)


def test_impossible_tallies_are_rejected_for_the_round(tmp_path: Path, sites: dict) -> None:
    """A site whose report does not add up is not counted that round and is named; one that
    keeps doing it is left out; the run goes on with the others."""
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites)
    original = transport.exchange
    corrupted = {12: 1, 13: 99}  # rounds of bad reports per site

    def inflate_tallies(message_type, records, timeout):
        replies = original(message_type, records, timeout)
        for node_id, reply in replies.items():
            if reply and reply["tallies"] and corrupted.get(node_id, 0) > 0:
                corrupted[node_id] -= 1
                reply["tallies"] = [v * 5 for v in reply["tallies"]]  # more items than asked
        return replies

    transport.exchange = inflate_tallies
    outcome = _selection(engine, transport, "run-impossible").run()
    assert outcome.best_index == 2
    assert outcome.sites == [11, 12]
    assert "report rejected: IMPOSSIBLE_TALLY" in outcome.left_out[13]
    with Session(engine) as session:
        site_12 = session.exec(select(RunSite).where(RunSite.node_id == "12")).one()
        assert site_12.status == "active" and site_12.reason == "report rejected: IMPOSSIBLE_TALLY"
        for row in session.exec(select(ComparisonResult)):
            assert row.items == row.sites * 6  # only reports that added up were summed
