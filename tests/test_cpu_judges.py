"""The CPU judges: the rules as judges (`rule:`), the builtin judge (antisymmetry,
per-response scoring, truncation, its training recipe), the bootstrap behind every reported
standard error, and the bias diagnostics and test-set loading they are measured with."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from judge.backends import BACKENDS, SpecError, load_backend, parse_spec
from judge.backends.builtin import BuiltinJudge, BuiltinModel
from judge.backends.rules import RULES
from judge.cli import app
from judge.engine import PairJudge
from judge.features import (
    RESPONSE_CHARS,
    RESPONSE_FEATURES,
    TASK_CHARS,
    length_repetition_score,
    response_features,
)
from judge.metrics import bias_diagnostics, bootstrap_errors, length_verdict
from judge.pointwise import GENERATE_UNSUPPORTED, davidson_probabilities
from judge.prompt import Pair

PAIRS = [
    Pair("What is the capital of France?", "", "Paris.", "The capital of France is Paris."),
    Pair("Add 2 and 3.", "", "5", "2 plus 3 is 6, I think, or maybe 7."),
    Pair("Translate hello into German.", "", "Hallo", "Hallo"),
]


def _verdicts(spec: str, pairs: list[Pair]) -> list[str]:
    return [j.verdict for j in PairJudge(load_backend(spec), mode="score").judge(pairs)]


def test_length_rule_against_hand_counted_words() -> None:
    pairs = [
        Pair("q", "", "one two three four five six seven eight nine ten", "one two"),  # 10 vs 2
        Pair("q", "", "a b c d e f g h i j", "a b c d e f g h i"),  # 10 vs 9: within 10%
        Pair("q", "", "a b c", "a b c"),
    ]
    assert _verdicts("rule:length?band=0.1", pairs) == ["1", "Tie", "Tie"]
    assert _verdicts("rule:length?band=0", pairs) == ["1", "1", "Tie"]
    assert _verdicts("rule:length", pairs) == [
        length_verdict(p.response1, p.response2) for p in pairs
    ]


def test_length_repetition_rule_against_hand_computed_scores() -> None:
    looping = "la la la la la la"  # 6 tokens, 4 trigrams, 3 repeat the first: (1 - 3/4)^2 = 1/16
    plain = "the cat sat."  # 4 tokens (the dot is one), no repeated trigram
    assert length_repetition_score(looping) == pytest.approx(6 / 16)
    assert length_repetition_score(plain) == 4.0
    pair = Pair("q", "", looping, plain)
    assert _verdicts("rule:length-repetition?band=0", [pair]) == ["2"]
    assert _verdicts("rule:length", [pair]) == ["1"]  # the plain length rule prefers the loop
    # 6 tokens, 4 trigrams, 1 repeats: 6 x (3/4)^2 = 3.375 against 4, a gap of 0.156 of 4
    close = Pair("q", "", "a b c d", "a b c a b c")
    assert length_repetition_score(close.response2) == pytest.approx(3.375)
    assert _verdicts("rule:length-repetition?band=0.2", [close]) == ["Tie"]
    assert _verdicts("rule:length-repetition?band=0.1", [close]) == ["1"]


def test_rule_specs_are_checked() -> None:
    assert BACKENDS["rule"].names == tuple(RULES)  # the registry names every rule there is
    assert parse_spec("rule:length?band=0.25").options == {"band": 0.25}
    with pytest.raises(SpecError, match="rule must be one of length, length-repetition"):
        parse_spec("rule:brevity")
    with pytest.raises(SpecError, match="option 'band' wants a number"):
        parse_spec("rule:length?band=wide")
    with pytest.raises(SpecError, match=r"cannot load a rule judge .*band must be in"):
        load_backend("rule:length?band=1.5")


def _random_model(seed: int = 0) -> BuiltinModel:
    rng = np.random.default_rng(seed)
    width = len(RESPONSE_FEATURES)
    return BuiltinModel(
        RESPONSE_FEATURES,
        rng.uniform(0.5, 2.0, width),
        rng.normal(size=width),
        np.array([-1.0, 3.0]),
    )


def test_swapping_the_responses_swaps_1_and_2_exactly() -> None:
    judge = BuiltinJudge(_random_model(), "test")
    forward = judge.probabilities(PAIRS)
    backward = judge.probabilities(
        [Pair(p.instruction, p.input, p.response2, p.response1) for p in PAIRS]
    )
    for ahead, behind in zip(forward, backward, strict=True):
        assert (ahead["1"], ahead["2"], ahead["Tie"]) == (behind["2"], behind["1"], behind["Tie"])
        assert math.isclose(sum(ahead.values()), 1.0)
    judged = PairJudge(judge, mode="score").judge(PAIRS)
    assert all(j.consistent for j in judged)
    assert judged[2].verdict == "Tie"  # identical responses: margin 0, the tie weight at its top
    with pytest.raises(ValueError, match="pointwise scorer"):
        PairJudge(judge, mode="generate")
    assert "pointwise scorer" in GENERATE_UNSUPPORTED


def test_davidson_tie_weight_and_margin() -> None:
    rows = davidson_probabilities(np.array([0.0, 0.0, 4.0, -4.0]), np.array([0.0, 2.0, 0.0, 0.0]))
    assert rows[0] == pytest.approx([1 / 3, 1 / 3, 1 / 3])  # z = 0, nu = 1
    assert rows[1][2] > rows[0][2]  # a larger tie weight, more Tie
    assert rows[2][0] == rows[3][1] and rows[2][2] == rows[3][2]


def test_a_response_is_scored_once_across_comparisons() -> None:
    judge = BuiltinJudge(_random_model(), "test")
    task = ("Name a colour.", "")
    judge.probabilities([Pair(*task, "red", "blue"), Pair(*task, "red", "green")])
    assert judge.scored == 3  # red once
    judge.probabilities([Pair(*task, "green", "blue")])
    assert judge.scored == 3  # nothing new


def test_truncation_policy_on_a_long_input() -> None:
    """The measures read the first RESPONSE_CHARS of a response and the first TASK_CHARS of
    the task: what follows changes nothing, and a 200,000-character input stays cheap."""
    head = "word " * (RESPONSE_CHARS // 5)
    long_task = "Summarise this. " + "context " * 25_000
    cut = response_features("Summarise this.", long_task[:TASK_CHARS], head)
    assert response_features("Summarise this.", long_task, head + "tail " * 40_000) == cut
    assert response_features("Summarise this.", long_task, head) == cut
    shorter = response_features("Summarise this.", "", head[: RESPONSE_CHARS // 2])
    assert shorter[0] < cut[0]  # within the limit, length still counts


def test_bootstrap_standard_error_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    gold = list(rng.choice(["1", "2"], size=400))
    predicted = [g if rng.random() < 0.75 else ("2" if g == "1" else "1") for g in gold]
    rule = [g if rng.random() < 0.6 else "Tie" for g in gold]
    errors = bootstrap_errors(gold, predicted, {"rule": rule}, rounds=2000, seed=3)
    correct = np.array([g == p for g, p in zip(gold, predicted, strict=True)], dtype=float)
    reference = stats.bootstrap((correct,), np.mean, n_resamples=2000, random_state=4)
    assert errors["accuracy_se"] == pytest.approx(reference.standard_error, rel=0.1)
    p = correct.mean()
    assert errors["accuracy_se"] == pytest.approx(math.sqrt(p * (1 - p) / 400), rel=0.1)
    versus = errors["accuracy_versus_best_rule"]
    assert versus["rule"] == "rule" and versus["difference"] == pytest.approx(
        p - np.mean([g == r for g, r in zip(gold, rule, strict=True)])
    )
    assert 0 < versus["se"] < errors["accuracy_se"] + errors["baselines"]["rule"]["accuracy_se"]


def test_evaluate_json_carries_baselines_and_standard_errors(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Say hi.", "input": "", "response1": "Hello there, friend!",
         "response2": "hi", "label": "1"},
        {"instruction": "Say hi.", "input": "", "response1": "yo", "response2": "Hi, how are you?",
         "label": "2"},
        {"instruction": "Say hi.", "input": "", "response1": "Hi", "response2": "Hi",
         "label": "Tie"},
    ]  # fmt: skip
    testset = tmp_path / "pairs.jsonl"
    testset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(
        app, ["evaluate", "--testset", str(testset), "--judge", "builtin", "--json", "--no-cache"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(metrics["baselines"]) == {
        "rule:length?band=0.1", "rule:length?band=0", "rule:length-repetition?band=0",
        "rule:length-repetition?band=0.1",
    }  # fmt: skip
    assert metrics["baselines"]["rule:length?band=0.1"]["accuracy"] == 1.0
    errors = metrics["standard_errors"]
    assert errors["accuracy_se"] >= 0 and "f1_macro_versus_best_rule" in errors
    assert "length_baseline" in metrics and metrics["consistency"] == 1.0
    text = CliRunner().invoke(
        app,
        ["evaluate", "--testset", str(testset), "--judge", "rule:length"],
        env={"COLUMNS": "250"},
    )
    assert text.exit_code == 0 and "rule:length-repetition?band=0" in text.output


def _planted_preferences(path: Path, source_use: str, n: int, seed: int) -> None:
    """Pairs whose better response is the one that does not copy its input (plus noise)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        source = f"fact {i} is about topic {i % 7} and more words here"
        good, bad = f"Answer {i}: a fresh sentence of its own.", f"{source} {source}"
        first_good = rng.random() < 0.5
        lines.append({
            "use": source_use, "instruction": f"Rewrite item {i}.", "input": source,
            "response1": good if first_good else bad, "response2": bad if first_good else good,
            "label": "1" if first_good else "2",
        })  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_training_recipe_writes_model_card_with_held_out_table(tmp_path: Path) -> None:
    from trainer.arguments import BuiltinJudgeArguments
    from trainer.judges.builtin import train_builtin_judge

    dev = [
        {"idx": i, "instruction": f"Rewrite item {i}.", "input": f"fact {i} is old news here",
         "response1": f"Fresh answer {i}." if i % 2 else f"fact {i} is old news here",
         "response2": f"fact {i} is old news here" if i % 2 else f"Fresh answer {i}.",
         "annotator1": 1 if i % 2 else 2, "annotator2": 1 if i % 2 else 2, "annotator3": 0}
        for i in range(40)
    ]  # fmt: skip
    dev.append({**dev[0], "idx": 40, "response2": dev[0]["response1"], "annotator1": 0,
                "annotator2": 0})  # fmt: skip
    testset = tmp_path / "dev.json"
    testset.write_text(json.dumps(dev))
    a, b = tmp_path / "alpha.jsonl", tmp_path / "beta.jsonl"
    _planted_preferences(a, "train", 60, 1)
    _planted_preferences(b, "eval", 30, 2)
    args = BuiltinJudgeArguments(
        testset=testset, out=tmp_path / "out", preferences=[a, b], folds=3,
        features=("log_tokens", "copies_task"), length_nuisance=(), bootstrap_rounds=100,
    )  # fmt: skip
    record = train_builtin_judge(args)
    assert record["trained_on"] == ["alpha", "pandalm-dev"]  # eval rows never trained on
    table = record["held_out"]
    assert set(table) == {
        "dev out-of-fold",
        "left out: alpha",
        "left out: pandalm-dev",
        "eval: beta-eval",
    }
    assert table["eval: beta-eval"]["accuracy"] == 1.0  # the copy loses, as planted
    assert record["weights"]["copies_task"] < 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| eval: beta-eval | 30 (0) | 1.000 ± 0.000 |" in card
    judge = load_backend("builtin")  # the packaged one still loads; ours loads from its file
    from judge.backends.builtin import load_builtin

    ours = load_builtin(tmp_path / "out" / "head.json")
    assert ours.identity != judge.identity


def test_bias_diagnostics_on_a_hand_computed_case() -> None:
    pairs = [
        ("one two three four five", "one"),  # 1 is longer
        ("one", "one two three four five"),  # 2 is longer
        ("a b c d e f g h i j", "a b c d e f g h i k"),  # same length
        ("a b", "a b c d e f"),  # 2 is longer
    ]
    gold = ["1", "1", "2", "Tie"]
    predicted = ["1", "2", "2", "1"]
    orders = [("1", "1"), ("1", "2"), ("2", "Tie"), ("2", "1")]
    result = bias_diagnostics(pairs, gold, predicted, orders)
    # Disagreeing two-order pairs: 3 of 4; same position in ("1","2") and ("2","1"): 2 of 3.
    assert result["position_bias"] == {"share": pytest.approx(2 / 3), "n": 3}
    # Judge's decisive verdicts on unequal lengths: pairs 0 (longer), 1 (longer), 3 (shorter).
    assert result["length_preference"]["judge"] == {"share": pytest.approx(2 / 3), "n": 3}
    # Human decisive labels on unequal lengths: pairs 0 (longer), 1 (shorter).
    assert result["length_preference"]["human"] == {"share": 0.5, "n": 2}
    # Decisive gold within 10%: only pair 2, judged right.
    assert result["length_controlled"] == {"accuracy": 1.0, "n": 1}
    assert [length_verdict(a, b) for a, b in pairs] == ["1", "2", "Tie", "2"]
    assert result["length_baseline"]["accuracy"] == pytest.approx(1 / 4)


def test_pandalm_test_set_with_boolean_responses_loads(tmp_path) -> None:
    from typer.testing import CliRunner

    from judge.cli import app

    base = {"instruction": "Is water wet?", "input": "", "annotator1": 1, "annotator2": 1,
            "annotator3": 2}  # fmt: skip
    items = [
        {**base, "idx": 0, "response1": True, "response2": "Yes, it is."},
        {**base, "idx": 1, "response1": "No.", "response2": "Yes, water is wet."},
    ]
    testset = tmp_path / "testset-v1.json"
    testset.write_text(json.dumps(items))
    predictions = tmp_path / "pred.json"
    predictions.write_text(
        json.dumps([{"idx": 0, "pandalm_result": 1}, {"idx": 1, "pandalm_result": 2}])
    )
    result = CliRunner().invoke(
        app, ["evaluate", "--testset", str(testset), "--predictions", str(predictions), "--json"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 2 and metrics["accuracy"] == 0.5
    assert metrics["coerced_responses"] == [f"{testset}[0].response1"]
    assert "length_baseline" in metrics and metrics["position_bias"] is None
    items[1]["response2"] = ["a", "list"]
    testset.write_text(json.dumps(items))
    result = CliRunner().invoke(
        app, ["evaluate", "--testset", str(testset), "--predictions", str(predictions)]
    )
    assert result.exit_code == 2
    assert f"{testset}[1]: field 'response2' must be a string, not list" in result.output


def test_a_preference_row_must_say_train_or_eval(tmp_path: Path) -> None:
    from common.records import InputError
    from judge.io import read_testset

    row = {"instruction": "q", "input": "", "response1": "a", "response2": "b", "label": "1"}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({**row, "use": "train"}) + "\n" + json.dumps({**row, "use": "test"}))
    with pytest.raises(InputError, match=r"pairs.jsonl:2: field 'use' must be train or eval"):
        read_testset(path)
    path.write_text(json.dumps({**row, "use": "eval"}) + "\n")
    assert [item.use for item in read_testset(path).items] == ["eval"]
