"""Judge metrics: a hand-computed case and PandaLM's released dev-split predictions."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from judge.cli import app
from judge.io import read_predictions, read_testset
from judge.metrics import accuracy_and_macro_f1, judge_metrics, verdict_codes
from judge.verdict import INVALID


def test_hand_computed_case() -> None:
    gold = ["1", "1", "2", "Tie", "2", "1"]
    predicted = ["1", "2", "2", "Tie", "invalid", "1"]
    m = judge_metrics(gold, predicted, consistency=0.5)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class (Tie, 1, 2): precision 1, 1, 1/2; recall 1, 2/3, 1/2; F1 1, 0.8, 0.5
    assert m["precision_macro"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["recall_macro"] == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    assert m["f1_macro"] == pytest.approx((1 + 0.8 + 0.5) / 3)
    # supports Tie 1, "1" 3, "2" 2
    assert m["precision_weighted"] == pytest.approx((1 + 3 + 2 * 0.5) / 6)
    assert m["recall_weighted"] == pytest.approx((1 + 2 + 1) / 6)
    assert m["f1_weighted"] == pytest.approx((1 + 3 * 0.8 + 2 * 0.5) / 6)
    # p_o = 4/6, p_e = (1*1 + 3*2 + 2*2) / 36 = 11/36
    assert m["kappa"] == pytest.approx(13 / 25)
    assert m["invalid"] == 1
    assert m["consistency"] == 0.5
    assert m["confusion"]["matrix"] == [[1, 0, 0, 0], [0, 2, 1, 0], [0, 0, 1, 1]]


def test_invalid_is_a_wrong_answer_not_a_tie() -> None:
    as_invalid = judge_metrics(["Tie", "1"], ["invalid", "1"])
    as_tie = judge_metrics(["Tie", "1"], ["Tie", "1"])
    assert as_invalid["accuracy"] == 0.5
    assert as_tie["accuracy"] == 1.0


def _plain_accuracy_and_macro_f1(gold: list[str], predicted: list[str]) -> tuple[float, float]:
    accuracy = sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold)
    f1s = []
    for label in ("Tie", "1", "2"):
        tp = sum(g == p == label for g, p in zip(gold, predicted, strict=True))
        n_pred = sum(p == label for p in predicted)
        n_gold = sum(g == label for g in gold)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_gold if n_gold else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if tp else 0.0)
    return accuracy, sum(f1s) / 3


@pytest.mark.parametrize(
    ("filename", "field"),
    [
        ("pandalm-7b-predictions-dev.json", "pandalm_result"),
        ("gpt-3.5-turbo-predictions-dev.json", "gpt_result"),
    ],
)
def test_released_prediction_files(shared_data: Path, filename: str, field: str) -> None:
    testset = shared_data / "pandalm" / "testset-dev.json"
    predictions = shared_data / "pandalm" / filename
    items = read_testset(testset).items
    by_idx = read_predictions(predictions)
    gold = [item.gold for item in items]
    predicted = [by_idx[item.idx].verdict for item in items]
    raw = {r["idx"]: r[field] for r in json.loads(predictions.read_text())}
    expected_invalid = sum(
        str(v) not in ("0", "1", "2", "Tie") for v in (raw[item.idx] for item in items)
    )
    accuracy, macro_f1 = _plain_accuracy_and_macro_f1(gold, predicted)

    result = CliRunner().invoke(
        app, ["evaluate", "--testset", str(testset), "--predictions", str(predictions), "--json"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n"] == len(items) == 536
    assert metrics["accuracy"] == pytest.approx(accuracy)
    assert metrics["f1_macro"] == pytest.approx(macro_f1)
    assert metrics["invalid"] == expected_invalid
    assert metrics["consistency"] is None
    assert sum(map(sum, metrics["confusion"]["matrix"])) == 536
    # Both released judges agree with humans far more often than chance on this split.
    assert 0.5 < metrics["accuracy"] < 0.9
    assert metrics["kappa"] > 0.2


def test_vectorised_accuracy_and_macro_f1_match_judge_metrics() -> None:
    """The bootstrap and the band search score with accuracy_and_macro_f1: it must agree with
    judge_metrics, invalid answers and classes nobody predicted included."""
    rng = np.random.default_rng(7)
    choices = ["1", "2", "Tie", INVALID]
    gold = list(rng.choice(["1", "2", "Tie"], size=60))
    rows = [list(rng.choice(choices, size=60)), ["1"] * 60, gold]
    codes = np.stack([verdict_codes(row) for row in rows])
    fast = accuracy_and_macro_f1(verdict_codes(gold), codes)
    for (accuracy, f1), row in zip(fast, rows, strict=True):
        metrics = judge_metrics(gold, row)
        assert accuracy == pytest.approx(metrics["accuracy"])
        assert f1 == pytest.approx(metrics["f1_macro"])
