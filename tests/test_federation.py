"""The coordinator's run loop against real site agents over an in-process transport double:
the planted best is found, a silent site is left out and named, a restarted coordinator
resumes without asking again for what it recorded."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from agent.config import load_site_config
from agent.db import open_database as open_site_database
from agent.site import handle_message
from agent.worker import SiteWorker
from common.protocol import Code
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
        silent_from: dict[str, set[int]] | None = None,
    ) -> None:
        self.sites = sites
        self.silent = set(silent)
        self.pointwise = set(pointwise)  # sites whose judge says it is pointwise
        self.silent_from = dict(silent_from or {})
        """Sites that fall silent at the first message of a type (once: a test may wake them)."""
        self.exchanges: list[tuple[str, dict]] = []

    def node_ids(self) -> list[int]:
        return sorted(self.sites)

    def exchange(self, message_type: str, records: dict, timeout: float) -> dict:
        self.silent |= self.silent_from.pop(message_type, set())
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
    engine,
    transport,
    name: str,
    mode: str = "paper",
    secure_aggregation: str = "required",
    site_timeout: float = 0,
    baseline: int | None = None,
) -> FederatedSelection:
    settings = RunSettings(
        run_key=name,
        selection_mode=mode,
        secure_aggregation=secure_aggregation,
        min_sites=2,
        round_timeout=1,
        retry_seconds=0,
        patience=2,
        site_timeout=site_timeout,
        validation_items=6,
        blocks=2,
        chunk_items=3,
        result_timeout=2,
        baseline="" if baseline is None else CONFIGS[baseline].id,
    )
    return FederatedSelection(
        engine,
        transport,
        settings,
        [c.id for c in CONFIGS],
        [dict(c.params) for c in CONFIGS],
        baseline=baseline,
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
    transport = LoopbackTransport(sites, silent_from={"query.compare": {13}})
    selection = _selection(engine, transport, "run-drop", secure_aggregation="when-possible")
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
    from agent.db import SiteResult

    with Session(sites[11][0]) as session:
        told = json.loads(session.get(SiteResult, "run-drop").message)
    assert told["best"] == 2 and told["sites"] == 2
    assert told["best_tally"] == [], "two sites: a sum would give each the other's counts"


def test_every_site_learns_the_result_and_a_silent_one_when_it_answers_again(
    tmp_path: Path, sites: dict
) -> None:
    """The result reaches the answering sites, is stored and acknowledged; a silent site gets
    it from the restarted coordinator, which sends it to no site that acknowledged it; then
    nothing is sent again."""
    from agent.db import SiteResult, ledger

    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites, silent_from={"query.result": {13}})
    selection = _selection(engine, transport, "run-told", secure_aggregation="off")
    assert selection.run().best_index == 2
    sent = [records for t, records in transport.exchanges if t == "query.result"]
    assert len(sent) >= 2 and set(sent[0]) == {11, 12, 13} and set(sent[-1]) == {13}
    with Session(engine) as session:
        rows = {int(s.node_id): s for s in session.exec(select(RunSite))}
    assert rows[11].result_acknowledged and rows[12].result_acknowledged
    assert rows[13].result_acknowledged is None
    for node_id in (11, 12):
        with Session(sites[node_id][0]) as session:
            stored = session.get(SiteResult, "run-told")
        assert stored.best_id == CONFIGS[2].id
        best_tally = Tally(*json.loads(stored.message)["best_tally"])
        assert best_tally.items > 0 and best_tally.win > best_tally.loss, "3 sites: summed"
        (reply,) = [
            e for e in ledger(sites[node_id][0], "run-told") if e.message_type == "query.result"
        ]
        assert json.loads(reply.content)["status"] == 0

    for attempt in ("back", "all acknowledged"):
        transport = LoopbackTransport(sites)
        assert (
            _selection(engine, transport, "run-told", secure_aggregation="off").run().best_index
            == 2
        )
        sent = [set(records) for t, records in transport.exchanges if t == "query.result"]
        assert sent == ([{13}] if attempt == "back" else [])
    with Session(sites[13][0]) as session:
        assert session.get(SiteResult, "run-told").best_id == CONFIGS[2].id


def test_a_site_back_after_being_left_out_rejoins(tmp_path: Path, sites: dict) -> None:
    """Site 13 is silent until it is left out and the first comparisons are recorded without
    it; when it answers again it is offered the space, rejoins, and the later comparisons are
    summed over all three sites."""
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites)
    selection = _selection(engine, transport, "run-rejoin", secure_aggregation="when-possible")
    original = transport.exchange
    left_out_seen = []

    def silent_until_a_comparison_is_recorded(message_type, records, timeout):
        recorded = comparison_rows(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
        if message_type == "query.compare" and not recorded:
            transport.silent.add(13)
        elif recorded:
            transport.silent.discard(13)
        left_out_seen.append(13 in selection.sites.left_out())
        return original(message_type, records, timeout)

    transport.exchange = silent_until_a_comparison_is_recorded
    outcome = selection.run()
    assert any(left_out_seen), "site 13 was left out for a while"
    assert outcome.best_index == 2
    assert outcome.sites == [11, 12, 13] and outcome.left_out == {}
    spaces_to_13 = [r for t, r in transport.exchanges if t == "query.space" and 13 in r]
    assert len(spaces_to_13) >= 2, "the space at the start, offered again while it was out"
    by_round = sorted(comparison_rows(f"sqlite:///{tmp_path / 'coordinator.sqlite'}"),
                      key=lambda r: r.round)  # fmt: skip
    assert by_round[0].sites == 2 and by_round[-1].sites == 3


def test_when_every_site_has_left_it_waits_for_one_to_come_back(
    tmp_path: Path, sites: dict
) -> None:
    """Every site is silent, then offline (its SuperNode gone), until all are left out; the
    run waits (up to `site_timeout`) instead of failing, offers them the space again when they
    are back, and ends with all three."""
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites, silent_from={"query.compare": {11, 12, 13}})
    selection = _selection(
        engine, transport, "run-all-out", secure_aggregation="when-possible", site_timeout=2
    )
    original_node_ids = transport.node_ids
    all_left: list[float] = []

    def offline_for_half_a_second_once_all_are_out() -> list[int]:
        if len(selection.sites.left_out()) == 3 and not all_left:
            all_left.append(time.monotonic())
            transport.silent.clear()
        if all_left and time.monotonic() - all_left[0] < 0.5:
            return []
        return original_node_ids()

    transport.node_ids = offline_for_half_a_second_once_all_are_out
    outcome = selection.run()
    assert all_left, "every site was left out for a while"
    assert outcome.best_index == 2
    assert outcome.sites == [11, 12, 13] and outcome.left_out == {}
    offered = [set(r) for t, r in transport.exchanges if t == "query.space"]
    assert len(offered) >= 2 and offered[-1] == {11, 12, 13}


def test_when_no_site_comes_back_the_run_fails_after_site_timeout(
    tmp_path: Path, sites: dict
) -> None:
    from coordinator.db import FederatedRun

    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites, silent_from={"query.compare": {11, 12, 13}})
    selection = _selection(
        engine, transport, "run-gone", secure_aggregation="when-possible", site_timeout=1
    )
    transport.node_ids = lambda: sorted(set(sites) - transport.silent)  # silent: gone for good
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="every site has left the run"):
        selection.run()
    assert time.monotonic() - started < 30
    with Session(engine) as session:
        run = session.get(FederatedRun, "run-gone")
    assert run.status == "failed" and "every site has left" in run.reason


def test_silence_is_measured_in_time_not_rounds(tmp_path: Path) -> None:
    """Fast-failing rounds do not leave a site out before `site_timeout` seconds; then it is
    left out for silence and may rejoin, while a site that refused may not."""
    from coordinator.run_store import RunStore
    from coordinator.site_pool import SitePool

    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    store = RunStore(engine, "run-clock")
    now = [100.0]
    pool = SitePool(store, patience=3, site_timeout=60.0, clock=lambda: now[0])
    pool.join([1, 2])
    pool.seen(1, 0)
    for _ in range(20):  # 20 rounds whose questions came back at once, over 50 s
        now[0] += 2.5
        pool.silent(1)
    assert pool.active() == [1, 2]
    now[0] += 11.0
    pool.silent(1)
    assert pool.left_out() == {1: "no valid answer for 61 s (21 rounds)"}
    pool.leave_out(2, "compare FAILED code INTERNAL_ERROR")
    pool.join([3])
    for _ in range(3):
        now[0] += 30.0
        pool.note(3, "report rejected: IMPOSSIBLE_TALLY")
        pool.silent(3)
    assert pool.left_out()[3].endswith("(last: report rejected: IMPOSSIBLE_TALLY)")
    pool.note(1, "report rejected: IMPOSSIBLE_TALLY")  # a left-out site keeps its reason
    assert pool.returning([1, 2, 3]) == [1] and pool.returning([2, 3]) == []
    pool.rejoin(1)
    assert pool.active() == [1] and pool.returning([1, 2]) == []
    pool.silent(1)
    assert pool.active() == [1], "a rejoined site's silence starts again"


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


def _bad_data_site(folder: Path, tiny_llama: Path) -> tuple:
    """Site 14, whose validation file has invalid JSON on line 6 (its worker refuses the run
    before training: BAD_DATA); `fix` rewrites the file."""
    items = [json.dumps({"instruction": f"Task {i}.", "input": ""}) for i in range(8)]
    validation = folder / "val.jsonl"
    validation.write_text("\n".join([*items[:5], '{"instruction": "x",', *items[6:]]) + "\n")
    path = write_site_config(
        folder, tiny_llama, name="site-14", seed=14, settings={"data": {"validation": "val.jsonl"}}
    )
    config = load_site_config(path)
    worker = SiteWorker(config, judge_factory=planted_token_judge())
    return open_site_database(config.database_url), worker


def _fix_validation(folder: Path) -> None:
    items = [json.dumps({"instruction": f"Task {i}.", "input": ""}) for i in range(8)]
    (folder / "val.jsonl").write_text("\n".join(items) + "\n")


def test_summary_says_how_each_comparison_was_summed_and_why_a_site_left(
    tmp_path: Path, sites: dict, tiny_llama: Path
) -> None:
    """Measured before: after a site left, `aggregation` said "tallies in the clear: 2 sites"
    though the first comparisons were summed by SecAgg+ over 3; the comparisons carried
    neither, nor the left-out site's reason. Site 14 fails (bad data), site 13 falls silent
    after the first secure sum."""
    from rich.console import Console

    from coordinator.console import render
    from coordinator.report import write_report
    from coordinator.results import run_result

    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport({**sites, 14: _bad_data_site(tmp_path, tiny_llama)})
    original = transport.secure_sum

    def silence_13_after_the_first_sum(*args):
        result = original(*args)
        transport.silent.add(13)
        return result

    transport.secure_sum = silence_13_after_the_first_sum
    selection = _selection(engine, transport, "run-mix", secure_aggregation="when-possible")
    assert selection.run().best_index == 2
    summary = write_report(run_result(engine, "run-mix"), tmp_path / "report")

    secure = {"aggregation": "SecAgg+ over 3 sites", "sites": ["node-11", "node-12", "node-13"]}
    clear = {"aggregation": "in the clear over 2 sites", "sites": ["node-11", "node-12"]}
    ways = [{k: c[k] for k in ("aggregation", "sites")} for c in summary["comparisons"]]
    assert ways == [secure, secure, clear]
    assert summary["aggregation"] == (
        "SecAgg+ over 3 sites for 2 comparisons; in the clear over 2 sites for 1 comparison"
    )
    left = {site["site"]: site for site in summary["left_out"]}
    assert left["node-14"] == {
        "site": "node-14",
        "reason": "compare FAILED code BAD_DATA: the site's training or validation data is invalid",
        "code": "BAD_DATA",
        "meaning": "the site's training or validation data is invalid",
    }
    assert left["node-13"]["code"] is None and "no valid answer" in left["node-13"]["reason"]
    page = (tmp_path / "report" / "report.html").read_text()
    assert "SecAgg+ over 3 sites for 2 comparisons" in page
    console = Console(width=250, record=True)
    console.print(render(engine, "run-mix"))
    frame = console.export_text()
    assert "left_out: compare FAILED code BAD_DATA: the site's training or validation" in frame
    assert "SecAgg+ over 3 sites: node-11, node-12, node-13" in frame
    assert "in the clear over 2 sites: node-11, node-12" in frame
    assert "<td>BAD_DATA</td><td>the site&#39;s training or validation data is invalid" in page


def test_a_restarted_coordinator_numbers_each_round_once(tmp_path: Path, sites: dict) -> None:
    """Measured before: round 13 twice in round_log after a restart. The resumed loop counted
    from the last recorded comparison's round, not from the last round logged (a round of
    pending answers comes after it)."""
    from coordinator.db import RoundLog

    url = f"sqlite:///{tmp_path / 'coordinator.sqlite'}"
    transport = LoopbackTransport(sites)
    original, after_a_record = transport.exchange, []

    def killed_after_a_pending_round(message_type, records, timeout):
        if comparison_rows(url):
            after_a_record.append(message_type)
            if len(after_a_record) == 2:
                raise KeyboardInterrupt("coordinator killed")
        return original(message_type, records, timeout)

    transport.exchange = killed_after_a_pending_round
    first = _selection(open_coordinator_database(url), transport, "run-rounds", "paper", "off")
    with pytest.raises(KeyboardInterrupt):
        first.run()
    last_recorded = max(row.round for row in comparison_rows(url))
    engine = open_coordinator_database(url)
    with Session(engine) as session:
        before = [r.number for r in session.exec(select(RoundLog).order_by(RoundLog.id))]
    assert before[-1] > last_recorded, "a round was logged after the last comparison"

    _selection(engine, LoopbackTransport(sites), "run-rounds", "paper", "off").run()
    with Session(engine) as session:
        numbers = [r.number for r in session.exec(select(RoundLog).order_by(RoundLog.id))]
    assert numbers == list(range(1, len(numbers) + 1))


def test_a_failed_run_is_recorded_failed_and_resumes_after_the_fix(
    tmp_path: Path, sites: dict, tiny_llama: Path
) -> None:
    """Measured before: the run stayed `running` with no finish time, and starting it again
    failed again (the left-out site stayed out, its run stayed failed). Site 14's bad data
    leaves two sites, too few for required SecAgg+: the run fails; once the file is fixed, the
    same run resumes, site 14 prepares again and takes part."""
    from coordinator.db import FederatedRun

    url = f"sqlite:///{tmp_path / 'coordinator.sqlite'}"
    transport = LoopbackTransport(
        {11: sites[11], 12: sites[12], 14: _bad_data_site(tmp_path, tiny_llama)}
    )
    with pytest.raises(RuntimeError, match="secure_aggregation = required, but 2 sites"):
        _selection(open_coordinator_database(url), transport, "run-fails").run()
    engine = open_coordinator_database(url)
    with Session(engine) as session:
        run = session.get(FederatedRun, "run-fails")
        assert run.status == "failed" and run.finished is not None
        assert run.reason.startswith("secure_aggregation = required, but 2 sites are active")
        site = session.exec(select(RunSite).where(RunSite.node_id == "14")).one()
        assert (site.status, site.code) == ("left_out", Code.BAD_DATA)

    _fix_validation(tmp_path)
    outcome = _selection(engine, transport, "run-fails").run()
    assert outcome.best_index == 2 and outcome.left_out == {}
    with Session(engine) as session:
        run = session.get(FederatedRun, "run-fails")
        assert (run.status, run.reason) == ("done", "")
        rows = session.exec(select(ComparisonResult)).all()
        assert rows and all(r.secure and r.contributor_ids() == ["11", "12", "14"] for r in rows)


def test_a_stopped_run_is_recorded_and_restart_forgets_the_run(tmp_path: Path, sites: dict) -> None:
    """`flwr stop` kills the ServerApp, which writes nothing: `pandalm-coordinator start`
    records the run `stopped` from Flower's status (a run already ended keeps its record); a
    later start resumes it; `--restart` deletes the run's records so that it runs over."""
    from coordinator.db import FederatedRun, RoundLog
    from coordinator.launch import record_flower_end
    from coordinator.run_store import RunStore

    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    _selection(engine, LoopbackTransport(sites), "run-stop", "paper", "off").run()
    store = RunStore(engine, "run-stop")
    record_flower_end(store, {"status": "finished:failed", "status-details": "late"})
    with Session(engine) as session:
        assert session.get(FederatedRun, "run-stop").status == "done", "an ended run keeps it"
        session.get(FederatedRun, "run-stop").status = "running"  # as if killed mid-run
        session.commit()
    record_flower_end(store, {"status": "finished:stopped", "status-details": "stopped by user"})
    with Session(engine) as session:
        run = session.get(FederatedRun, "run-stop")
        assert (run.status, run.reason) == ("stopped", "stopped by user") and run.finished

    outcome = _selection(engine, LoopbackTransport(sites), "run-stop", "paper", "off").run()
    assert outcome.best_index == 2
    with Session(engine) as session:
        assert session.get(FederatedRun, "run-stop").status == "done"

    assert store.forget() and not store.forget()
    with Session(engine) as session:
        assert session.get(FederatedRun, "run-stop") is None
        for table in (RunSite, ComparisonResult, RoundLog):
            assert not session.exec(select(table).where(table.run_key == "run-stop")).all()
    transport = LoopbackTransport(sites)
    assert _selection(engine, transport, "run-stop", "paper", "off").run().best_index == 2
    assert [t for t, _ in transport.exchanges].count("query.compare") >= 2, "asked anew"
