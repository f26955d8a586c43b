"""The console leaderboard scores only comparisons decided by evidence: config 0's four
tie-breaks once showed as +4. Tallies are merged over orientations as in the report."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from rich.console import Console
from sqlalchemy import Engine
from sqlmodel import Session

from coordinator.console import render
from coordinator.db import (
    ComparisonResult,
    FederatedRun,
    RunSite,
    open_database,
    record_registration,
    record_removal,
)
from coordinator.report import write_report
from coordinator.results import run_result
from tests.test_report import IDS, PARAMS

# Config 0 keeps its place four times by the tie-break; 4 beats 3 by evidence; (1,2) asked both
# ways sums to 4 wins and 4 losses: a tie-break, though each row alone has a winner.
TIE_BREAKS = [
    (0, 1, 2, 4, 2),
    (0, 2, 0, 8, 0),
    (0, 3, 1, 6, 1),
    (0, 4, 3, 2, 3),
    (1, 2, 3, 0, 1),
    (2, 1, 3, 0, 1),
]
EVIDENCE = [(3, 4, 1, 2, 5)]


def planted(url: str, rows: list[tuple[int, int, int, int, int]]) -> Engine:
    engine = open_database(url)
    with Session(engine) as session:
        session.add(
            FederatedRun(
                run_key="planted",
                selection_mode="paper",
                config_ids=json.dumps(IDS),
                params=json.dumps(PARAMS),
                settings="{}",
                status="done",
                best_index=0,
            )
        )
        for a, b, win, tie, loss in rows:
            items = win + tie + loss
            session.add(
                ComparisonResult(
                    run_key="planted",
                    a=a,
                    b=b,
                    item_start=0,
                    item_stop=items,
                    win=win,
                    tie=tie,
                    loss=loss,
                    invalid=0,
                    items=items,
                    sites=2,
                    round=1,
                )
            )
        session.commit()
    return engine


def frame(engine: Engine) -> str:
    console = Console(width=240, record=True)
    console.print(render(engine, "planted"))
    return console.export_text()


def leaderboard(text: str) -> list[list[str]]:
    """The board's rows as cells: label, net, won, lost, undecided."""
    rows = [line.split("│") for line in text.splitlines() if re.search(r"│ #\d+ \w{8} ", line)]
    return [[cell.strip() for cell in row if cell.strip()] for row in rows]


def test_leaderboard_scores_only_comparisons_decided_by_evidence(new_database_url) -> None:
    text = frame(planted(new_database_url("coordinator"), TIE_BREAKS + EVIDENCE))
    board = {row[0].split()[0]: row[1:] for row in leaderboard(text)}
    assert list(board) == ["#4", "#0", "#1", "#2", "#3"]
    assert board["#4"] == ["+1", "1", "0", "1"]
    assert board["#0"] == ["+0", "0", "0", "4"]
    assert board["#1"] == board["#2"] == ["+0", "0", "0", "2"], "(1,2) merged over orientations"
    assert board["#3"] == ["-1", "0", "1", "1"]
    assert "#0 (tie-break)" in text
    assert "could not tell" not in text


def test_console_says_when_nothing_was_decided(new_database_url) -> None:
    text = frame(planted(new_database_url("coordinator"), TIE_BREAKS))
    assert "could not tell the configs apart" in text
    assert all(row[1] == "+0" for row in leaderboard(text))


def test_registered_sites_are_named_others_shown_by_node_id(new_database_url) -> None:
    """Names come from the registry `sites add` writes; an unregistered (insecure demo) node
    keeps its node id. The console, the result the report and summary.json use, agree."""
    engine = planted(new_database_url("coordinator"), EVIDENCE)
    registered, unregistered, removed = "18446744073709551615", "42", "7"
    with Session(engine) as session:
        for node_id, status in ((registered, "active"), (unregistered, "active"),
                                (removed, "left_out")):  # fmt: skip
            told = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC) if node_id == registered else None
            session.add(
                RunSite(run_key="planted", node_id=node_id, status=status, result_acknowledged=told)
            )
        session.commit()
    record_registration(engine, registered, "hospital-a", "ecdsa-sha2-nistp384 AAAA site")
    record_registration(engine, removed, "clinic.b", "ecdsa-sha2-nistp384 BBBB site")
    record_removal(engine, removed)  # unregistered later: earlier runs keep its name
    result = run_result(engine, "planted")
    assert result.sites == ["hospital-a", f"node-{unregistered}"]
    assert result.sites_left_out == ["clinic.b"]
    text = frame(engine)
    assert "hospital-a" in text and f"node-{unregistered}" in text and "clinic.b" in text
    assert registered not in text
    assert "2026-05-04T03:02:01" in text  # when hospital-a acknowledged the result


def test_console_and_report_show_the_same_standings(new_database_url, tmp_path) -> None:
    """Asked both ways, (1,2) counts once: 1 beats 2 by 7 wins to 2 over both rows, one
    comparison won (+1), not two (+2 from summing each row's winner). The console's board and
    the report's summary.json read the same standings."""
    both_ways = [(1, 2, 5, 0, 1), (2, 1, 1, 0, 2), (0, 1, 0, 2, 3)]
    engine = planted(new_database_url("coordinator"), both_ways + EVIDENCE)
    board = [[row[0].split()[0], *row[1:]] for row in leaderboard(frame(engine))]
    summary = write_report(run_result(engine, "planted"), tmp_path / "report")
    reported = [
        [f"#{IDS.index(s['config'])}", f"{s['net']:+d}", str(s["wins"]), str(s["losses"]),
         str(s["ties"])]
        for s in summary["standings"]
    ]  # fmt: skip
    assert board == reported
    assert board[0] == ["#1", "+2", "2", "0", "0"], "1 beat 0 and 2, each counted once"
    assert ["#2", "-1", "0", "1", "0"] in board
