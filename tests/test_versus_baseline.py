"""Chosen vs baseline (issue 20): federation.toml names a baseline config; once the selection
named its best, the coordinator asks the sites for one more comparison, best vs baseline on every
item, summed like the rest (SecAgg+ here), recorded apart from the selection's comparisons (a
resumed run neither replays nor asks it again), and shown by the summary, the report, the console
and the demo's line. Real site agents over the in-process transport of tests/test_federation.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from sqlmodel import Session, select

from common.space import PAPER_SPACE_TOML, SpaceError, parse_space
from common.tally import Tally
from coordinator.console import render
from coordinator.db import BaselineComparison, ComparisonResult, TrainingResult
from coordinator.db import open_database as open_coordinator_database
from coordinator.report import ReferenceMetric, write_report
from coordinator.results import run_result
from demo.launcher import versus_baseline_text
from tests.test_agent_site import CONFIGS
from tests.test_federation import LoopbackTransport, _selection
from tests.test_federation import sites as federation_sites

sites = federation_sites  # the fixture: three sites whose generation plants config 2's token

PLANTED = 2  # the sites' generation plants the judge's token in config 2's responses
ITEMS = 6  # validation items per site; three sites


def _asked(transport: LoopbackTransport) -> list[tuple[int, int]]:
    """The comparisons asked, in order, once each (a site still working is asked again)."""
    asked = [
        (a, b)
        for message_type, records in transport.exchanges
        if message_type == "query.compare"
        for record in records.values()
        for a, b in zip(record["a"], record["b"], strict=True)
    ]
    return list(dict.fromkeys(asked))


def _rows(engine, table):
    with Session(engine) as session:
        return list(session.exec(select(table)))


# -- settings --------------------------------------------------------------------------------
def _federation(tmp_path: Path, baseline: str, space: str | None = None) -> Path:
    if space is not None:
        (tmp_path / "space.toml").write_text(space)
    run = '[run]\nname = "x"\n' + ('space = "space.toml"\n' if space is not None else "")
    path = tmp_path / "federation.toml"
    path.write_text(f'{run}[selection]\nbaseline = "{baseline}"\n')
    return path


def test_a_baseline_is_a_named_config_or_a_config_id(tmp_path: Path) -> None:
    from coordinator.config import load_federation_config

    paper = parse_space(PAPER_SPACE_TOML)
    alpaca = paper.named("alpaca-baseline")
    assert paper.index_of("alpaca-baseline") == paper.configs.index(alpaca)
    assert paper.index_of(alpaca.id) == paper.configs.index(alpaca)
    loaded = load_federation_config(_federation(tmp_path, "alpaca-baseline"))
    assert loaded.run.baseline == "alpaca-baseline"
    demo_space = '[grid]\noptimizer = "sgd"\nlearning_rate = [1e-3, 1e-2]\nscheduler = "cosine"\n'
    demo_space += "epochs = 1\n"
    config_id = parse_space(demo_space).configs[1].id
    assert load_federation_config(_federation(tmp_path, config_id, demo_space)).run.baseline
    with pytest.raises(SpaceError, match="'nope' is no named config"):
        paper.index_of("nope")


def test_an_unknown_baseline_is_refused_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from coordinator.cli import app

    space = '[grid]\noptimizer = "sgd"\nlearning_rate = 1e-3\nscheduler = "cosine"\nepochs = 1\n'
    path = _federation(tmp_path, "alpaca-baseline", space)
    result = CliRunner().invoke(app, ["start", "--config", str(path)])
    assert result.exit_code == 2
    line = " ".join(result.output.split())
    assert f"{path}: [selection].baseline: 'alpaca-baseline' is no named config (named: -)" in line
    assert not (tmp_path / "coordinator-state").exists(), "nothing was started"


# -- the coordinator's comparison --------------------------------------------------------------
def test_the_chosen_config_is_compared_with_the_baseline_on_every_item(
    tmp_path: Path, sites: dict
) -> None:
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites)
    outcome = _selection(engine, transport, "run-baseline", baseline=0).run()
    assert outcome.best_index == PLANTED and outcome.baseline_index == 0
    # the planted config wins every item of all three sites, summed by SecAgg+
    assert outcome.versus_baseline == Tally(win=3 * ITEMS, items=3 * ITEMS)
    assert _asked(transport)[-1] == (PLANTED, 0), "asked once the best was known"
    assert "secagg+" in [message_type for message_type, _ in transport.exchanges[-2:]]
    (row,) = _rows(engine, BaselineComparison)
    assert (row.chosen, row.baseline, row.sites, row.secure) == (PLANTED, 0, 3, True)
    selection_rows = _rows(engine, ComparisonResult)
    assert len(selection_rows) == len(CONFIGS) - 1, "not one of the selection's comparisons"
    result = run_result(engine, "run-baseline")
    assert (result.baseline, result.versus_baseline) == (0, outcome.versus_baseline)


def test_when_the_baseline_is_chosen_nothing_more_is_asked(tmp_path: Path, sites: dict) -> None:
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites)
    outcome = _selection(engine, transport, "run-chosen", baseline=PLANTED).run()
    assert outcome.best_index == outcome.baseline_index == PLANTED
    assert outcome.versus_baseline is None
    assert len(_asked(transport)) == len(CONFIGS) - 1
    summary = write_report(run_result(engine, "run-chosen"), tmp_path / "report")
    versus = summary["versus_baseline"]
    assert versus["chosen_is_baseline"] and versus["baseline"] == CONFIGS[PLANTED].id
    assert "win" not in versus
    assert "no comparison needed" in versus_baseline_text(versus)
    page = (tmp_path / "report/report.html").read_text()
    assert "The selection chose the baseline itself" in page


def test_a_resumed_run_neither_replays_nor_asks_the_baseline_comparison_again(
    sites: dict, new_database_url
) -> None:
    """Killed while the baseline comparison is asked: the restart replays the selection's
    comparisons (only those) and asks the baseline comparison alone; a third start of the
    finished run asks nothing."""
    url, name = new_database_url("coordinator"), f"run-baseline-{new_database_url.backend}"
    first = _selection(open_coordinator_database(url), LoopbackTransport(sites), name, baseline=0)
    original = first._sum_over_sites

    def killed_at_the_baseline(requests):
        if first.procedure.done:  # the selection is over: this is the baseline comparison
            raise KeyboardInterrupt("coordinator killed")
        return original(requests)

    first._sum_over_sites = killed_at_the_baseline
    with pytest.raises(KeyboardInterrupt):
        first.run()
    engine = open_coordinator_database(url)
    assert _rows(engine, BaselineComparison) == []

    transport = LoopbackTransport(sites)
    outcome = _selection(engine, transport, name, baseline=0).run()
    assert _asked(transport) == [(PLANTED, 0)]
    assert outcome.versus_baseline == Tally(win=3 * ITEMS, items=3 * ITEMS)

    again = LoopbackTransport(sites)
    resumed = _selection(engine, again, name, baseline=0).run()
    assert _asked(again) == [] and resumed.versus_baseline == outcome.versus_baseline
    assert len(_rows(engine, BaselineComparison)) == 1
    assert len(_rows(engine, ComparisonResult)) == len(CONFIGS) - 1


def test_another_baseline_on_a_recorded_run_is_refused(tmp_path: Path, sites: dict) -> None:
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    _selection(engine, LoopbackTransport(sites), "run-switch", baseline=0).run()
    with pytest.raises(ValueError, match="choose another run name"):
        _selection(engine, LoopbackTransport(sites), "run-switch", baseline=1).run()


# -- what the operator reads ---------------------------------------------------------------------
def test_summary_report_console_and_demo_line_show_chosen_vs_baseline(
    tmp_path: Path, sites: dict
) -> None:
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    _selection(engine, LoopbackTransport(sites), "run-shown", baseline=1).run()
    result = run_result(engine, "run-shown")
    nll = ReferenceMetric("answer_nll", {c.id: 2.0 + i for i, c in enumerate(CONFIGS)}, False)
    exact = ReferenceMetric("exact_match", {CONFIGS[PLANTED].id: 0.5}, True)
    summary = write_report(result, tmp_path / "report", reference=nll, other_references=[exact])
    versus = json.loads((tmp_path / "report/summary.json").read_text())["versus_baseline"]
    assert versus == summary["versus_baseline"]
    n = 3 * ITEMS
    assert {k: versus[k] for k in ("win", "tie", "loss", "invalid", "items")} == {
        "win": n, "tie": 0, "loss": 0, "invalid": 0, "items": n,
    }  # fmt: skip
    assert versus["margin"] == 1.0 and versus["baseline"] == CONFIGS[1].id
    assert versus["chosen"] == CONFIGS[PLANTED].id and not versus["chosen_is_baseline"]
    # a reference is shown for both configs only where it has both
    assert versus["reference"] == {"answer_nll": {"chosen": 4.0, "baseline": 3.0,
                                                  "higher_is_better": False}}  # fmt: skip
    assert [c["reference_metric"]["name"] for c in summary["other_reference_checks"]] == [
        "exact_match"
    ]
    assert versus_baseline_text(versus) == (
        f"chosen vs baseline: {n} wins, 0 ties, 0 losses (baseline {CONFIGS[1].id}, {n} items, "
        "margin +1.000); reference answer_nll 4 vs 3"
    )
    page = (tmp_path / "report/report.html").read_text()
    assert "Chosen vs baseline" in page and f"{n} wins, 0 ties, 0 losses" in page
    assert "Reference check: answer_nll" in page and "Reference check: exact_match" in page
    console = Console(width=200, record=True)
    console.print(render(engine, "run-shown"))
    assert (
        f"chosen vs baseline #1 {CONFIGS[1].id[:8]}: {n} wins, 0 ties, 0 losses, 0 invalid of "
        f"{n} items (margin +1.000)"
    ) in console.export_text()


def test_without_a_baseline_nothing_more_is_asked_or_shown(tmp_path: Path, sites: dict) -> None:
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites)
    outcome = _selection(engine, transport, "run-none", baseline=None).run()
    assert outcome.baseline_index is None and outcome.versus_baseline is None
    assert len(_asked(transport)) == len(CONFIGS) - 1
    assert write_report(run_result(engine, "run-none"), tmp_path / "r")["versus_baseline"] is None


# -- the demo ----------------------------------------------------------------------------------
def test_the_demo_names_a_baseline_of_its_grid(tmp_path: Path) -> None:
    """alpaca-lora's recipe in the demo's grid: AdamW, cosine, the lower learning rate, the most
    epochs; one of the grid's configs (naming it adds none), accepted by the coordinator."""
    from coordinator.config import load_federation_config
    from demo.settings import DEMO

    (tmp_path / "space.toml").write_text(DEMO.space_toml())
    (tmp_path / "federation.toml").write_text(DEMO.federation_toml("paper", 3, "127.0.0.1:1"))
    federation = load_federation_config(tmp_path / "federation.toml")
    space = parse_space(DEMO.space_toml())
    assert len(space.configs) == DEMO.configs
    baseline = space.configs[space.index_of(federation.run.baseline)]
    assert baseline.get("optimizer") == "adamw" and baseline.get("scheduler") == "cosine"
    assert baseline.get("learning_rate") == min(DEMO.learning_rates)
    assert baseline.get("epochs") == max(DEMO.epochs)


def test_the_demo_averages_both_reference_metrics_over_its_sites(tmp_path: Path) -> None:
    from agent.db import open_database as open_site_database
    from agent.job_store import JobStore
    from demo.launcher import demo_references

    folders = [tmp_path / "site-1", tmp_path / "site-2"]
    a, b = CONFIGS[0].id, CONFIGS[1].id
    for folder, shift in zip(folders, (0.0, 1.0), strict=True):
        folder.mkdir()
        store = JobStore(open_site_database(f"sqlite:///{folder / 'agent.sqlite'}"))
        for config_id, nll, exact in ((a, 2.0, 0.5), (b, 3.0, 0.0)):
            store.store_reference("demo", config_id, "exact_match", exact + shift / 4, 8)
            store.store_reference("demo", config_id, "answer_nll", nll + shift, 8)
    dense, exact = demo_references(folders, "demo")
    assert (dense.name, dense.higher_is_better, dict(dense.values)) == (
        "answer_nll", False, {a: 2.5, b: 3.5},
    )  # fmt: skip
    assert (exact.name, exact.higher_is_better, dict(exact.values)) == (
        "exact_match", True, {a: 0.625, b: 0.125},
    )  # fmt: skip


def test_halving_trains_a_baseline_it_left_untrained_once(tmp_path: Path, sites: dict) -> None:
    """Halving may stop the baseline's run before the baseline's epoch: before the chosen vs
    baseline comparison the sites train it (a train request recorded like a rung, so the
    training cost counts it), and a baseline already trained is not asked for again."""
    engine = open_coordinator_database(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    transport = LoopbackTransport(sites)
    selection = _selection(engine, transport, "run-halving", baseline=1, mode="halving")
    selection._resume()
    selection._join_sites()  # the space goes out with train_on_request: nothing is trained
    selection._train_baseline()
    trains = [
        record["configs"]
        for message_type, records in transport.exchanges
        if message_type == "query.train"
        for record in records.values()
    ]
    assert trains and all(configs == [1] for configs in trains)
    (row,) = _rows(engine, TrainingResult)
    assert (row.indices(), row.sites) == ([1], 3)
    asked = len(transport.exchanges)
    selection._train_baseline()
    assert len(transport.exchanges) == asked, "a trained baseline is not asked for again"
