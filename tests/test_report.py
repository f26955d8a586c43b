"""The run report: summed pair tallies, superiority edges, wins/ties/losses per hyperparameter
value, tie-breaks told apart from evidence, the reference check, and the files written (valid
PNGs, summary JSON, HTML naming the best config)."""

from __future__ import annotations

import dataclasses
import html
import json
import math
import struct
from pathlib import Path

import pytest

from common.tally import Tally
from coordinator.report import (
    ReferenceMetric,
    judge_strengths,
    superiority_edges,
    wins_by_hyperparameter,
    write_report,
)
from coordinator.results import CANNOT_TELL, Record, RunResult, pair_tallies

IDS = ["a1b2c3d4e5f6", "0f9e8d7c6b5a", "123456789abc", "fedcba987654", "5a5a5a5a5a5a"]
PARAMS = [
    {"optimizer": "adamw", "learning_rate": 2e-5, "scheduler": "cosine", "epochs": 1},
    {"optimizer": "adamw", "learning_rate": 2e-5, "scheduler": "cosine", "epochs": 2},
    {"optimizer": "sgd", "learning_rate": 2e-4, "scheduler": "linear", "epochs": 1},
    {"optimizer": "sgd", "learning_rate": 1e-5, "scheduler": "cosine", "epochs": 3},
    {"optimizer": "adamw", "learning_rate": 1e-5, "scheduler": "linear", "epochs": 3},
]
# Pair totals and winners: (0,1) 3/3/9 -> 1; (1,2) 6/1/1 -> 1; (1,3) 3/2/3 -> 1 by tie-break;
# (2,4) asked both ways, 4/2/4 -> 2 by tie-break; (0,3) nothing judged, tie-break; (1,4) 3/8/5 -> 4.
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
    best: int | None = 4,
    comparisons: list[tuple[int, int, Tally]] = COMPARISONS,
    n_configs: int = 5,
) -> RunResult:
    return RunResult(
        run_key="demo-run",
        selection_mode="adaptive",
        configs=list(zip(IDS, PARAMS, strict=True))[:n_configs],
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


def test_wins_ties_and_losses_are_counted_per_hyperparameter_value() -> None:
    """By evidence 1 beat 0 and 2, 4 beat 1; (1,3), (2,4) and the unjudged (0,3) are ties for
    both sides, so config 1 has 2 wins (not 3) and config 2 none (not 1)."""
    assert wins_by_hyperparameter(make_result()) == {
        "optimizer": {"adamw": Record(3, 3, 2), "sgd": Record(0, 3, 1)},
        "learning_rate": {1e-5: Record(1, 3, 0), 2e-5: Record(2, 2, 2), 2e-4: Record(0, 1, 1)},
        "scheduler": {"cosine": Record(2, 4, 2), "linear": Record(1, 2, 1)},
        "epochs": {1: Record(0, 2, 2), 2: Record(2, 1, 1), 3: Record(1, 3, 0)},
    }


def test_report_writes_figures_summary_and_html(tmp_path: Path) -> None:
    summary = write_report(make_result(), tmp_path / "report", threshold=0.1)
    out = tmp_path / "report"

    for name in ("matrix.png", "superiority.png", "hyperparameters.png"):
        width, height = png_size(out / name)
        assert width > 100 and height > 100
    assert json.loads((out / "summary.json").read_text()) == summary

    assert summary["best_config"] == {
        "index": 4,
        "id": IDS[4],
        "params": PARAMS[4],
        "comparisons": 2,
        "decided_by_evidence": 1,
    }
    assert summary["margin"] == pytest.approx(2 / 16), "4 beat 1 by 5 wins to 3 of 16 items"
    assert summary["deciding_comparison"] == {
        "opponent": IDS[1],
        "win": 5,
        "tie": 8,
        "loss": 3,
        "invalid": 0,
        "items": 16,
        "decided_by": "evidence",
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
    assert both_ways["decided_by"] == "tie-break"
    assert summary["comparisons"][4]["winner"] is None, "nothing judged, nobody won"
    assert [c["decided_by"] for c in summary["comparisons"]] == [
        "evidence",
        "evidence",
        "tie-break",
        "tie-break",
        "tie-break",
        "evidence",
    ]
    assert summary["wins_by_hyperparameter"]["epochs"] == {
        "1": {"wins": 0, "ties": 2, "losses": 2},
        "2": {"wins": 2, "ties": 1, "losses": 1},
        "3": {"wins": 1, "ties": 3, "losses": 0},
    }
    assert summary["tie_share"] == pytest.approx(16 / 59)
    assert summary["decided"] is True

    page = (out / "report.html").read_text()
    assert IDS[4] in page
    assert all(f'src="{name}"' in page for name in ("matrix.png", "superiority.png"))


def test_report_says_which_mode_auto_chose(tmp_path: Path) -> None:
    result = dataclasses.replace(make_result(), selection_mode="racing", requested_mode="auto")
    summary = write_report(result, tmp_path / "report")
    said = "racing (auto: not every active site's judge is pointwise)"
    assert (summary["selection_mode"], summary["selection"]) == ("racing", said)
    page = (tmp_path / "report" / "report.html").read_text()
    assert f"Selection mode {said}" in html.unescape(page)
    assert write_report(make_result(), tmp_path / "plain")["selection"] == "adaptive"


def test_names_go_into_the_page_as_text_never_as_markup(tmp_path: Path) -> None:
    """A run key, config id, parameter value or site name that holds markup is escaped."""
    script = "<script>alert('x')</script>"
    result = make_result()
    configs = [(config_id, {**params, "optimizer": script}) for config_id, params in result.configs]
    configs[4] = (script, configs[4][1])
    result = dataclasses.replace(
        result, run_key=script, configs=configs, sites=[script], sites_left_out=[script]
    )
    write_report(dataclasses.replace(result, aggregation=script), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page
    text = html.unescape(page)
    assert f"<title>{script}</title>" in text and f"<h1>Run {script}</h1>" in text
    assert f"<p>Config <code>{script}</code></p>" in text
    assert f"<tr><th>optimizer</th><td>{script}</td></tr>" in text
    assert f"Sites: {script}. Left out: {script}.\nAggregation: {script}." in text


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


# One comparison decided by evidence (0 beats 1 by 5 wins to 2), one all ties (0 stays against 2
# by the tie-break alone).
EVIDENCE_AND_TIE = [(0, 1, Tally(5, 1, 2, 0, 8)), (0, 2, Tally(0, 8, 0, 0, 8))]


def html_row(page: str, a: str, b: str) -> str:
    start = page.index(f"<tr><td><code>{a}</code></td><td><code>{b}</code></td>")
    return page[start : page.index("</tr>", start)]


def test_tie_breaks_are_marked_and_never_count_as_wins(tmp_path: Path) -> None:
    result = make_result(best=0, comparisons=EVIDENCE_AND_TIE, n_configs=3)
    summary = write_report(result, tmp_path, threshold=0.1)

    assert [(c["b"], c["winner"], c["decided_by"]) for c in summary["comparisons"]] == [
        (IDS[1], IDS[0], "evidence"),
        (IDS[2], IDS[0], "tie-break"),
    ]
    assert summary["best_config"]["comparisons"] == 2
    assert summary["best_config"]["decided_by_evidence"] == 1
    # Configs 0 and 1 use adamw, 2 sgd; 0 and 2 (the tie-broken pair) both train 1 epoch.
    assert summary["wins_by_hyperparameter"]["optimizer"] == {
        "adamw": {"wins": 1, "ties": 1, "losses": 1},
        "sgd": {"wins": 0, "ties": 1, "losses": 0},
    }
    assert summary["wins_by_hyperparameter"]["epochs"] == {
        "1": {"wins": 1, "ties": 2, "losses": 0},
        "2": {"wins": 0, "ties": 0, "losses": 1},
    }
    assert summary["superiority_edges"] == [[IDS[0], IDS[1]]]
    assert superiority_edges(result, threshold=1e-9) == [(0, 1)], "no edge from a tie-break"
    assert summary["tie_share"] == pytest.approx(9 / 16)
    assert summary["decided"] is True
    assert summary["conclusion"].startswith("1 of 2 comparisons were decided by evidence; the rest")
    evidence_only = write_report(make_result(0, EVIDENCE_AND_TIE[:1], 3), tmp_path / "evidence")
    assert evidence_only["conclusion"] == "Every comparison was decided by evidence (1 of 1)."

    page = (tmp_path / "report.html").read_text()
    assert html_row(page, IDS[0], IDS[1]).endswith("<td>evidence</td><td>-</td><td>-</td>")
    assert html_row(page, IDS[0], IDS[2]).endswith("<td>tie-break</td><td>-</td><td>-</td>")
    assert "Decided by evidence in 1 of its 2 comparisons." in page
    assert "could not tell" not in page
    assert png_size(tmp_path / "hyperparameters.png")[0] > 100


def test_a_run_of_tie_breaks_says_it_could_not_tell_the_configs_apart(tmp_path: Path) -> None:
    """Config 0 stayed in both comparisons with equal wins and losses: no evidence at all."""
    all_ties = [(0, 1, Tally(1, 6, 1, 0, 8)), (0, 2, Tally(0, 4, 0, 0, 4))]
    summary = write_report(make_result(best=0, comparisons=all_ties, n_configs=3), tmp_path)

    assert summary["decided"] is False
    assert summary["conclusion"] == CANNOT_TELL
    assert "could not tell the configs apart" in CANNOT_TELL
    assert summary["best_config"]["decided_by_evidence"] == 0
    assert summary["superiority_edges"] == []
    assert summary["tie_share"] == pytest.approx(10 / 12)
    records = summary["wins_by_hyperparameter"]["optimizer"].values()
    assert sum(record["wins"] for record in records) == 0
    page = (tmp_path / "report.html").read_text()
    assert f"<strong>{CANNOT_TELL}</strong>" in page
    assert "chosen by the tie-break alone" in page


# 0 beats 1 and 2, 1 beats 2 (Bradley-Terry order 0 > 1 > 2); config 3 is never compared.
ORDERED = [
    (0, 1, Tally(6, 0, 2, 0, 8)),
    (1, 2, Tally(6, 0, 2, 0, 8)),
    (0, 2, Tally(7, 0, 1, 0, 8)),
]


def test_judge_strengths_follow_bradley_terry_and_skip_configs_never_compared() -> None:
    strengths = judge_strengths(make_result(best=0, comparisons=ORDERED, n_configs=4))
    assert strengths[0] > strengths[1] > strengths[2]
    assert math.isnan(strengths[3])


@pytest.mark.parametrize(
    ("values", "higher_is_better", "rank", "tau"),
    [
        ([0.9, 0.5, 0.1, 0.0], True, 1, 1.0),
        ([0.9, 0.5, 0.1, 0.0], False, 4, -1.0),
        ([0.1, 0.5, 0.9, 0.0], False, 2, 1.0),
        ([0.1, 0.5, 0.9], True, 3, -1.0),
    ],
)
def test_reference_check_ranks_the_best_and_orients_kendall_tau(
    tmp_path: Path, values: list[float], higher_is_better: bool, rank: int, tau: float
) -> None:
    """Config 3 has no strength, so it is left out of tau but ranked when it has a value."""
    by_id = dict(zip(IDS, values, strict=False))
    reference = ReferenceMetric("accuracy", by_id, higher_is_better)
    result = make_result(best=0, comparisons=ORDERED, n_configs=4)
    summary = write_report(result, tmp_path, reference=reference)

    assert summary["reference_metric"] == {
        "name": "accuracy",
        "higher_is_better": higher_is_better,
        "values": by_id,
    }
    assert summary["reference_rank_of_best"] == rank
    assert summary["kendall_tau"] == pytest.approx(tau)
    assert summary["judge_strength"][IDS[3]] is None
    assert summary["judge_strength"][IDS[0]] > summary["judge_strength"][IDS[2]]
    assert png_size(tmp_path / "reference.png")[0] > 100
    page = (tmp_path / "report.html").read_text()
    assert "Reference check: accuracy" in page and 'src="reference.png"' in page


def test_report_without_a_reference_has_no_reference_fields(tmp_path: Path) -> None:
    summary = write_report(make_result(best=0, comparisons=ORDERED, n_configs=4), tmp_path)
    assert "kendall_tau" not in summary and not (tmp_path / "reference.png").exists()


def test_reference_with_an_unknown_config_id_is_refused(tmp_path: Path) -> None:
    reference = ReferenceMetric("accuracy", {"not-a-config": 0.5}, True)
    with pytest.raises(ValueError, match="not-a-config"):
        write_report(make_result(), tmp_path, reference=reference)


def test_a_reference_that_cannot_tell_the_configs_apart_never_ranks_the_choice_first(
    tmp_path: Path,
) -> None:
    reference = ReferenceMetric("exact_match", dict.fromkeys(IDS[:4], 0.0), True)
    result = make_result(best=0, comparisons=ORDERED, n_configs=4)
    summary = write_report(result, tmp_path, reference=reference)
    assert summary["reference_rank_of_best"] == 4  # tied with all four: no evidence it is best
    assert summary["kendall_tau"] is None
