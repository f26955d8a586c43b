"""The pointwise builtin judge on a tiny random GGUF: antisymmetry, per-response caching, the
training recipe, and the bias diagnostics and test-set loading it is measured with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from judge.cache import JudgmentCache
from judge.engine import Pair, PairJudge, RunStats
from judge.metrics import bias_diagnostics, length_verdict
from judge.pointwise import (
    CLASSES,
    GENERATE_UNSUPPORTED,
    TIE_INPUTS,
    LlamaEmbeddingEncoder,
    PointwiseJudgeBackend,
    PreferenceHead,
    ResponseFeaturizer,
    pair_similarity,
)


@pytest.fixture(scope="module")
def encoder(tiny_gguf: Path) -> LlamaEmbeddingEncoder:
    return LlamaEmbeddingEncoder(tiny_gguf, n_threads=1)


class CountingEncoder:
    """Test double at the edge: the real tiny encoder, counting the texts it is given."""

    def __init__(self, inner: LlamaEmbeddingEncoder) -> None:
        self.inner, self.identity, self.texts = inner, inner.identity, []

    def encode(self, texts):
        self.texts += list(texts)
        return self.inner.encode(texts)


def _random_head(width: int, seed: int = 0) -> PreferenceHead:
    rng = np.random.default_rng(seed)
    return PreferenceHead(
        rng.uniform(0.5, 2.0, size=width),
        rng.normal(size=width),
        rng.normal(size=TIE_INPUTS),
        -0.5,
        {},
    )


PAIRS = [
    Pair("What is the capital of France?", "", "Paris.", "The capital of France is Paris."),
    Pair("Add 2 and 3.", "", "5", "2 plus 3 is 6, I think, or maybe 7."),
    Pair("Translate hello into German.", "", "Hallo", "Hallo"),
]


def _backend(encoder, cache=None) -> PointwiseJudgeBackend:
    featurizer = ResponseFeaturizer(CountingEncoder(encoder), cache)
    width = featurizer.features([("task", "")], ["response"]).shape[1]
    featurizer.encodings.encoder.texts.clear()
    return PointwiseJudgeBackend(featurizer, _random_head(width), "test-head")


def test_swapping_the_responses_swaps_1_and_2_exactly(encoder) -> None:
    backend = _backend(encoder)
    forward = backend.probabilities(PAIRS)
    swapped = backend.probabilities(
        [Pair(p.instruction, p.input, p.response2, p.response1) for p in PAIRS]
    )
    for ahead, behind in zip(forward, swapped, strict=True):
        assert ahead["1"] == behind["2"] and ahead["2"] == behind["1"]
        assert ahead["Tie"] == behind["Tie"]
        assert sum(ahead.values()) == pytest.approx(1.0)
    assert forward[0]["1"] != forward[0]["2"]  # the random head does take sides
    # Identical responses: no margin, so p(1) = p(2).
    assert forward[2]["1"] == forward[2]["2"]


def test_the_tie_model_reads_how_alike_the_two_responses_are(encoder) -> None:
    same = pair_similarity("The answer is 42.", "The answer is 42.")
    assert same == (1.0, 1.0)
    a, b = "Paris is the capital of France.", "The capital is Lyon, not Paris, I think."
    assert pair_similarity(a, b) == pair_similarity(b, a)  # symmetric bit for bit
    assert 0.0 < pair_similarity(a, b)[0] < 1.0
    assert pair_similarity("red green", "blue yellow")[0] == 0.0
    backend = _backend(encoder)
    coef = np.zeros(TIE_INPUTS)
    coef[-2:] = 4.0  # only similarity moves p(Tie)
    backend.head = PreferenceHead(backend.head.scale, backend.head.weights, coef, -4.0, {})
    task = ("What is the capital of France?", "")
    alike, apart = backend.probabilities(
        [Pair(*task, a, a + " Yes."), Pair(*task, a, "Bananas are yellow fruit.")]
    )
    assert alike["Tie"] > 0.5 > apart["Tie"]


def test_pair_judge_on_the_pointwise_backend_is_consistent_and_refuses_generate(encoder):
    backend = _backend(encoder)
    judge = PairJudge(backend, mode="score")
    stats = RunStats()
    for judgment in judge.judge(PAIRS):
        stats.add(judgment)
        assert judgment.forward.probabilities == judgment.backward.probabilities
        probs = judgment.probabilities
        best = max(CLASSES, key=probs.__getitem__)
        # identical responses: p(1) = p(2), an exact tie of classes, which resolves to Tie
        assert judgment.verdict == ("Tie" if probs["1"] == probs["2"] else best)
    assert stats.consistency == 1.0
    assert [j.verdict for j in judge.judge(PAIRS)][2] == "Tie"
    with pytest.raises(ValueError, match="cannot write PandaLM's reason"):
        PairJudge(backend, mode="generate")
    assert "--mode score" in GENERATE_UNSUPPORTED


def test_a_response_is_encoded_once_across_comparisons_and_reruns(encoder, tmp_path) -> None:
    cache = JudgmentCache(tmp_path / "cache.sqlite")
    backend = _backend(encoder)
    judge = PairJudge(backend, mode="score", cache=cache)
    counting = backend.featurizer.encodings.encoder
    a, b, c = "Paris.", "It is Paris, the capital.", "Lyon."
    task = ("What is the capital of France?", "")
    judge.judge([Pair(*task, a, b)])
    assert len(counting.texts) == 2  # both orders, two texts
    judge.judge([Pair(*task, a, c), Pair(*task, c, b)])
    assert len(counting.texts) == 3  # only c is new
    fresh = _backend(encoder)
    PairJudge(fresh, mode="score", cache=cache).judge([Pair(*task, b, c)])
    assert fresh.featurizer.encodings.encoder.texts == []  # a rerun encodes nothing


def test_training_recipe_writes_head_card_and_out_of_fold_metrics(tiny_gguf, tmp_path) -> None:
    from trainer.builtin_judge import BuiltinJudgeArguments, train_builtin_judge

    rng = np.random.default_rng(1)
    words = "alpha beta gamma delta river stone cloud paper music garden".split()  # noqa: SIM905
    items = []
    for idx in range(60):
        short = " ".join(rng.choice(words, size=2))
        long = " ".join(rng.choice(words, size=12))
        first_long = idx % 2 == 0
        r1, r2 = (long, short) if first_long else (short, long)
        label = 1 if first_long else 2
        if idx % 5 == 0:  # equal answers: Tie
            r1 = r2 = long
            label = 0
        items.append(
            {"idx": idx, "instruction": f"Describe thing {idx % 15}.", "input": "",
             "response1": r1, "response2": r2,
             "annotator1": label, "annotator2": label, "annotator3": 0}
        )  # fmt: skip
    testset = tmp_path / "dev.json"
    testset.write_text(json.dumps(items))
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(
        json.dumps({"use": "train", "subset": "s", "instruction": "Say hi.", "input": "",
                    "response1": "hi there friend", "response2": "hi", "label": "1"}) + "\n"
        + json.dumps({"use": "eval", "subset": "e", "instruction": "Say no.", "input": "",
                      "response1": "no", "response2": "nope", "label": "2"}) + "\n"
    )  # fmt: skip
    out = tmp_path / "head"
    args = BuiltinJudgeArguments(
        testset=testset, out=out, preferences=[prefs], cache=tmp_path / "enc.sqlite",
        folds=3, c_grid=(0.1, 1.0), tie_weights=(2.0, 4.0), threads=1, encoder_gguf=tiny_gguf,
    )  # fmt: skip
    record = train_builtin_judge(args)
    oof = record["dev_out_of_fold"]
    assert oof["n"] == 60 and oof["consistency"] == 1.0
    assert oof["accuracy"] > 0.85  # the length signal is learnt out-of-fold
    assert record["data"]["sources"] == {"pandalm-dev": 60, "prefs/s": 1}
    assert record["data"]["eval_rows_refused"] == 1
    card = (out / "README.md").read_text()
    assert "out-of-fold" in card and "pandalm-dev | 60" in card
    backend = PointwiseJudgeBackend(
        ResponseFeaturizer(LlamaEmbeddingEncoder(tiny_gguf, 1)),
        PreferenceHead.load(out / "head.json"),
        "trained",
    )
    probs = backend.probabilities([Pair("Describe thing 3.", "", "gamma delta", " ".join(words))])
    assert probs[0]["2"] > probs[0]["1"]


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
