"""The coordinator's run loop against real site agents over an in-process transport double:
the planted best is found, a silent site is left out and named, a restarted coordinator
resumes without asking again for what it recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from agent.config import load_site_config
from agent.db import open_database as open_site_database
from agent.site import handle_message
from agent.worker import SiteWorker
from common.settings import RunSettings
from common.tally import Tally
from coordinator.db import ComparisonResult, RunSite, TrainingResult
from coordinator.db import open_database as open_coordinator_database
from coordinator.federation import FederatedSelection
from coordinator.secure_sum import SecureSum, secure_sum
from tests.doubles import InProcessGrid, planted_token_judge, planting_generation
from tests.test_agent_site import CONFIGS, site_tally, write_site_config


class LoopbackTransport:
    """Test double for Flower's Grid: calls each site's message handler in process and lets
    its worker do a step of work after every exchange; SecAgg+ runs over `InProcessGrid`."""

    def __init__(
        self,
        sites: dict[int, tuple],
        silent: set[int] = frozenset(),
        pointwise: set[int] = frozenset(),
    ) -> None:
        self.sites = sites
        self.silent = set(silent)
        self.pointwise = set(pointwise)  # sites whose judge says it is pointwise
        self.exchanges: list[tuple[str, dict]] = []

    def node_ids(self) -> list[int]:
        return sorted(self.sites)

    def exchange(self, message_type: str, records: dict, timeout: float) -> dict:
        self.exchanges.append((message_type, dict(records)))
        replies = {}
        for node_id, record in records.items():
            engine, worker = self.sites[node_id]
            replies[node_id] = (
                None
                if node_id in self.silent
                else handle_message(
                    engine, message_type, record, pointwise_judge=node_id in self.pointwise
                )
            )
            worker.step()
        return replies

    def secure_sum(self, request: dict, node_ids: list[int], round_number: int, timeout: float):
        self.exchanges.append(("secagg+", {n: request for n in node_ids}))
        configs = {n: str(self.sites[n][1].config.source) for n in node_ids}
        self.grid = InProcessGrid(configs, failing=frozenset(self.silent))
        return secure_sum(self.grid, request, node_ids, round_number, timeout)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Iterator[dict[int, tuple]]:
    """Three sites whose generation plants the token in config 2's responses."""
    folder = tmp_path_factory.mktemp("sites")
    result = {}
    for node_id in (11, 12, 13):
        config = load_site_config(
            write_site_config(folder, tiny_llama, name=f"site-{node_id}", seed=node_id)
        )
        worker = SiteWorker(config, judge_factory=planted_token_judge())
        result[node_id] = (open_site_database(config.database_url), worker)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("trainer.generate.generate_responses", planting_generation(CONFIGS[2].id))
        yield result


def _selection(
    engine, transport, name: str, mode: str = "paper", secure_aggregation: str = "required"
) -> FederatedSelection:
    settings = RunSettings(
        run_key=name,
        selection_mode=mode,
        secure_aggregation=secure_aggregation,
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


@pytest.mark.parametrize("mode", ["paper", "round-robin", "adaptive", "racing", "halving"])
def test_every_mode_finds_the_planted_best(tmp_path: Path, sites: dict, mode: str) -> None:
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    outcome = _selection(engine, LoopbackTransport(sites), f"run-{mode}", mode).run()
    assert outcome.best_index == 2
    assert outcome.sites == [11, 12, 13] and outcome.left_out == {}
    assert outcome.judgments > 0


@pytest.mark.parametrize(
    ("pointwise", "chosen"), [({11, 12, 13}, "round-robin"), ({11, 13}, "racing")]
)
def test_auto_runs_round_robin_only_when_every_site_is_pointwise(
    tmp_path: Path, sites: dict, pointwise: set[int], chosen: str
) -> None:
    """The choice is stored as the run's selection mode (said by the report) and kept on a
    restart."""
    from coordinator.results import run_result

    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites, pointwise=pointwise)
    selection = _selection(engine, transport, "run-auto", "auto")
    outcome = selection.run()
    assert selection.selection_mode == chosen and outcome.best_index == 2
    result = run_result(engine, "run-auto")
    assert result.selection_mode == chosen and result.selection.startswith(f"{chosen} (auto: ")
    recorded = len(comparison_rows(f"sqlite:///{tmp_path / 'coordinator.sqlite'}"))
    restarted = _selection(engine, LoopbackTransport(sites), "run-auto", "auto")
    assert restarted.run().best_index == 2, "replayed with the stored mode, not chosen again"
    assert restarted.selection_mode == chosen
    assert len(comparison_rows(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")) == recorded


def test_a_silent_site_is_left_out_and_named(tmp_path: Path, sites: dict) -> None:
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites)
    selection = _selection(engine, transport, "run-drop", secure_aggregation="when-possible")
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
        assert {(r.sites, r.secure) for r in session.exec(select(ComparisonResult))} == {(2, False)}
    assert outcome.aggregation == (
        "tallies in the clear: 2 sites, SecAgg+ needs 3 (secure_aggregation = when-possible)"
    )


def test_a_restarted_coordinator_resumes(sites: dict, new_database_url) -> None:
    url, name = new_database_url("coordinator"), f"run-resume-{new_database_url.backend}"
    first = _selection(open_coordinator_database(url), LoopbackTransport(sites), name)
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
    outcome = _selection(open_coordinator_database(url), transport, name).run()
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


def test_halving_trains_on_request_and_a_restart_asks_no_training_again(
    sites: dict, new_database_url
) -> None:
    """The space goes out with train_on_request; the loop completes each train request on every
    site before comparing; a coordinator killed after its first training resumes without
    sending that request again."""
    url, name = new_database_url("coordinator"), f"run-halving-{new_database_url.backend}"
    first = _selection(open_coordinator_database(url), LoopbackTransport(sites), name, "halving")

    def crash_at_the_first_comparison(requests):
        raise KeyboardInterrupt("coordinator killed")

    first._compare = crash_at_the_first_comparison
    with pytest.raises(KeyboardInterrupt):
        first.run()
    with Session(open_coordinator_database(url)) as session:
        (trained,) = session.exec(select(TrainingResult)).all()
    assert [CONFIGS[i].params["epochs"] for i in trained.indices()] == [1, 1]
    assert trained.sites == 3

    transport = LoopbackTransport(sites)
    outcome = _selection(open_coordinator_database(url), transport, name, "halving").run()
    assert outcome.best_index == 2
    spaces = [r for t, rs in transport.exchanges if t == "query.space" for r in rs.values()]
    assert spaces and all(record["train_on_request"] == 1 for record in spaces)
    asked = [
        tuple(record["configs"])
        for message_type, records in transport.exchanges
        if message_type == "query.train"
        for record in records.values()
    ]
    assert tuple(trained.indices()) not in asked, "the recorded training is not asked again"
    with Session(open_coordinator_database(url)) as session:
        requests = [row.indices() for row in session.exec(select(TrainingResult))]
    assert len(requests) == 2 and sorted(i for r in requests for i in r) == [0, 1, 2, 3]


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


def test_federation_config_names_a_missing_space_file(tmp_path: Path) -> None:
    from coordinator.config import FederationConfigError, load_federation_config

    path = tmp_path / "federation.toml"
    path.write_text('[run]\nname = "x"\nspace = "nope.toml"\n')
    with pytest.raises(FederationConfigError, match=r"\[run\]\.space: no file nope\.toml"):
        load_federation_config(path)


@pytest.mark.parametrize(
    ("selection", "error"),
    [
        ('selection_mode = "papr"', r"\[selection\]\.selection_mode: 'papr' is not one of 'paper'"),
        ('mode = "paper"', r"\[selection\]\.mode: renamed to selection_mode; write selection_mode"),
        ('judge_mode = "scroe"', r"\[selection\]\.judge_mode: 'scroe' is not one of 'generate'"),
        ('secure_aggregation = "on"', r"\[selection\]\.secure_aggregation: 'on' is not one of"),
        (
            "min_site = 2",
            r"\[selection\]\.min_site: unknown setting \(known: selection_mode, min_sites",
        ),
        ('round_timeout = "60"', r"\[selection\]\.round_timeout: must be float, got '60'"),
        ("patience = true", r"\[selection\]\.patience: must be int, got True"),
        ("blocks = 2.5", r"\[selection\]\.blocks: must be int, got 2\.5"),
        ('name = "y"', r"\[selection\]\.name: unknown setting"),
        ('run_key = "y"', r"\[selection\]\.run_key: unknown setting"),
        ('[superlink]\nstart = "yes"', r"\[superlink\]\.start: must be bool, got 'yes'"),
        ("[superlink]\ninsecure = 1", r"\[superlink\]\.insecure: must be bool, got 1"),
        ("[selections]", r"\[selections\]: unknown table"),
        ('min_sites = "three"', r"\[selection\]\.min_sites: must be int"),
        ('selection_mode = "racing"\nbudget = 0.0', r"\[selection\]\.budget: must be above 0"),
        ('[superlink]\nadress = "127.0.0.1:1"', r"\[superlink\]\.adress: unknown setting"),
    ],
)
def test_federation_config_refuses_typos_and_wrong_types(
    tmp_path: Path, selection: str, error: str
) -> None:
    """Every setting is checked when the file is read, with file and key in one line."""
    from coordinator.config import FederationConfigError, load_federation_config

    path = tmp_path / "federation.toml"
    path.write_text(f'[run]\nname = "x"\n[selection]\n{selection}\n')
    with pytest.raises(FederationConfigError, match=rf"^{path}: {error}"):
        load_federation_config(path)


def test_coordinator_start_refuses_a_bad_config_before_starting_anything(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from coordinator.cli import app

    path = tmp_path / "federation.toml"
    path.write_text(
        '[run]\nname = "x"\n[selection]\nselection_mode = "paper"\njudge_mode = "scroe"\n'
    )
    result = CliRunner().invoke(app, ["start", "--config", str(path)])
    assert result.exit_code == 2
    assert "[selection].judge_mode: 'scroe' is not one of" in result.output
    assert list(tmp_path.iterdir()) == [path]  # no state folder, SuperLink or database


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
    outcome = _selection(engine, transport, "run-impossible", secure_aggregation="off").run()
    assert outcome.best_index == 2
    assert outcome.sites == [11, 12]
    assert "report rejected: IMPOSSIBLE_TALLY" in outcome.left_out[13]
    with Session(engine) as session:
        site_12 = session.exec(select(RunSite).where(RunSite.node_id == "12")).one()
        assert site_12.status == "active" and site_12.reason == "report rejected: IMPOSSIBLE_TALLY"
        for row in session.exec(select(ComparisonResult)):
            assert row.items == row.sites * 6  # only reports that added up were summed


def test_with_secure_aggregation_the_coordinator_holds_only_sums(
    tmp_path: Path, sites: dict, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites)
    outcome = _selection(engine, transport, "run-secure").run()
    assert outcome.best_index == 2 and outcome.aggregation == "SecAgg+ over 3 sites"
    compare_replies = [
        handle_message(sites[n][0], message_type, record)
        for message_type, records in transport.exchanges
        if message_type == "query.compare"
        for n, record in records.items()
    ]
    assert compare_replies and all(r["tallies"] == [] for r in compare_replies)
    with Session(engine) as session:
        rows = session.exec(select(ComparisonResult)).all()
    dump = "\n".join(str(row.model_dump()) for row in rows) + caplog.text
    for row in rows:
        per_site = [site_tally(site_engine, row) for site_engine, _worker in sites.values()]
        assert row.secure and row.sites == 3
        assert Tally.of(row) == sum(per_site, Tally())
        for tally in per_site:  # no site's own tally is stored or logged anywhere
            values = tally.values()
            assert str(list(values)) not in dump and str(values) not in dump


def test_required_secure_aggregation_stops_below_three_sites(tmp_path: Path, sites: dict) -> None:
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport({n: sites[n] for n in (11, 12)})
    with pytest.raises(RuntimeError, match="secure_aggregation = required, but 2 sites"):
        _selection(engine, transport, "run-two-sites").run()
    assert [t for t, _ in transport.exchanges] == ["query.space"], "no compare was sent"


def test_an_impossible_secure_sum_is_rejected_and_asked_again(tmp_path: Path, sites: dict) -> None:
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites)
    original = transport.secure_sum
    corrupted = [1]

    def inflate_once(request, node_ids, round_number, timeout):
        result = original(request, node_ids, round_number, timeout)
        if corrupted.pop() if corrupted else 0:
            return SecureSum(result.contributors, [v * 5 for v in result.values])
        return result

    transport.secure_sum = inflate_once
    outcome = _selection(engine, transport, "run-bad-sum").run()
    assert outcome.best_index == 2
    with Session(engine) as session:
        assert all(row.items == 18 for row in session.exec(select(ComparisonResult)))
