"""The run report: summed pair tallies, superiority edges, wins per hyperparameter value, and the
files written (valid PNGs, summary JSON, HTML naming the best config)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from coordinator.report import (
    RunResult,
    pair_tallies,
    superiority_edges,
    wins_by_hyperparameter,
    write_report,
)
from coordinator.selection import Tally

IDS = ["a1b2c3d4e5f6", "0f9e8d7c6b5a", "123456789abc", "fedcba987654", "5a5a5a5a5a5a"]
PARAMS = [
    {"optimizer": "adamw", "learning_rate": 2e-5, "scheduler": "cosine", "epochs": 1},
    {"optimizer": "adamw", "learning_rate": 2e-5, "scheduler": "cosine", "epochs": 2},
    {"optimizer": "sgd", "learning_rate": 2e-4, "scheduler": "linear", "epochs": 1},
    {"optimizer": "sgd", "learning_rate": 1e-5, "scheduler": "cosine", "epochs": 3},
    {"optimizer": "adamw", "learning_rate": 1e-5, "scheduler": "linear", "epochs": 3},
]
# Pair totals and winners: (0,1) 3/3/9 -> 1; (1,2) 6/1/1 -> 1; (1,3) 3/2/3 -> 1 (incumbent);
# (2,4) asked both ways, 4/2/4 -> 2 (incumbent); (0,3) nothing judged; (1,4) 3/8/5 -> 4.
COMPARISONS = [
    (0, 1, Tally(2, 1, 5, 0, 8)),
    (0, 1, Tally(1, 2, 4, 1, 8)),
    (1, 2, Tally(6, 1, 1, 0, 8)),
    (1, 3, Tally(3, 2, 3, 0, 8)),
    (2, 4, Tally(4, 0, 3, 1, 8)),
    (4, 2, Tally(1, 2, 0, 0, 3)),
    (0, 3, Tally()),
    (1, 4, Tally(2, 3, 3, 0, 8)),
    (1, 4, Tally(1, 5, 2, 0, 8)),
]


def make_result(
    best: int | None = 4, comparisons: list[tuple[int, int, Tally]] = COMPARISONS
) -> RunResult:
    return RunResult(
        run_name="demo-run",
        selection_mode="adaptive",
        configs=list(zip(IDS, PARAMS, strict=True)),
        comparisons=comparisons,
        best=best,
        sites=["site-a", "site-b"],
        sites_left_out=["site-c"],
        judgments=2 * 83,
        wall_seconds=12.5,
    )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_chunks_and_both_orientations_of_a_pair_are_summed() -> None:
    totals = pair_tallies(make_result())
    assert list(totals) == [(0, 1), (1, 2), (1, 3), (2, 4), (0, 3), (1, 4)]
    assert totals[0, 1] == Tally(3, 3, 9, 1, 16)
    assert totals[2, 4] == Tally(4, 2, 4, 1, 11)
    assert totals[1, 4] == Tally(3, 8, 5, 0, 16)


@pytest.mark.parametrize(
    ("threshold", "edges"),
    [
        (0.1, {(1, 0), (1, 2), (4, 1)}),
        (0.125, {(1, 0), (1, 2), (4, 1)}),
        (0.2, {(1, 0), (1, 2)}),
        (0.625, {(1, 2)}),
        (0.63, set()),
    ],
)
def test_superiority_edges_follow_the_threshold(
    threshold: float, edges: set[tuple[int, int]]
) -> None:
    """Margins: 1 over 0 by 6/16, 1 over 2 by 5/8, 4 over 1 by 2/16; the rest by 0."""
    assert set(superiority_edges(make_result(), threshold)) == edges


def test_superiority_needs_a_positive_threshold() -> None:
    with pytest.raises(ValueError):
        superiority_edges(make_result(), 0.0)


def test_wins_are_counted_per_hyperparameter_value() -> None:
    """Config 1 won three comparisons, configs 2 and 4 one each; (0,3) judged nothing."""
    assert wins_by_hyperparameter(make_result()) == {
        "optimizer": {"adamw": 4, "sgd": 1},
        "learning_rate": {1e-5: 1, 2e-5: 3, 2e-4: 1},
        "scheduler": {"cosine": 3, "linear": 2},
        "epochs": {1: 1, 2: 3, 3: 1},
    }


def test_report_writes_figures_summary_and_html(tmp_path: Path) -> None:
    summary = write_report(make_result(), tmp_path / "report", threshold=0.1)
    out = tmp_path / "report"

    for name in ("matrix.png", "superiority.png", "hyperparameters.png"):
        width, height = png_size(out / name)
        assert width > 100 and height > 100
    assert json.loads((out / "summary.json").read_text()) == summary

    assert summary["best_config"] == {"index": 4, "id": IDS[4], "params": PARAMS[4]}
    assert summary["margin"] == pytest.approx(2 / 16), "4 beat 1 by 5 wins to 3 of 16 items"
    assert summary["deciding_comparison"] == {
        "opponent": IDS[1],
        "win": 5,
        "tie": 8,
        "loss": 3,
        "invalid": 0,
        "items": 16,
    }
    assert summary["selection_mode"] == "adaptive"
    assert summary["sites"] == ["site-a", "site-b"]
    assert summary["sites_left_out"] == ["site-c"]
    assert summary["judgments"] == 166
    assert summary["wall_seconds"] == 12.5
    assert len(summary["comparisons"]) == 6
    both_ways = summary["comparisons"][3]
    assert (both_ways["a"], both_ways["b"], both_ways["winner"]) == (IDS[2], IDS[4], IDS[2])
    assert (both_ways["win"], both_ways["loss"], both_ways["items"]) == (4, 4, 11)
    assert summary["comparisons"][4]["winner"] is None, "nothing judged, nobody won"
    assert summary["wins_by_hyperparameter"]["epochs"] == {"1": 1, "2": 3, "3": 1}

    page = (out / "report.html").read_text()
    assert IDS[4] in page
    assert all(f'src="{name}"' in page for name in ("matrix.png", "superiority.png"))


def test_report_without_a_winner_or_with_a_cycle(tmp_path: Path) -> None:
    cycle = [
        (0, 1, Tally(6, 0, 2, 0, 8)),
        (1, 2, Tally(6, 0, 2, 0, 8)),
        (2, 0, Tally(6, 0, 2, 0, 8)),
    ]
    summary = write_report(make_result(best=None, comparisons=cycle), tmp_path)
    assert summary["best_config"] is None
    assert summary["margin"] is None
    assert len(summary["superiority_edges"]) == 3
    assert png_size(tmp_path / "superiority.png")[0] > 100
    assert "No config has been selected" in (tmp_path / "report.html").read_text()


def test_result_with_an_unknown_config_index_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        make_result(comparisons=[(0, 7, Tally(1, 0, 0, 0, 1))])
