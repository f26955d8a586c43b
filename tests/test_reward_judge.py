"""`reward:` judges on tiny random sequence-classification models built here: a LLaMA-style one
with a chat template and a DeBERTa-v2 one. The DeBERTa-v2 tokenizer needs a sentencepiece model
that cannot be built offline here, so the DeBERTa model reads a BERT-style WordPiece tokenizer
built from a small vocabulary (the pair encoding is the same: [CLS] question [SEP] answer [SEP]).
The served variant runs against RewardServerDouble, a local HTTP test double that speaks vLLM's
`/pooling` and text-embeddings-inference's `/predict` and scores with the same tiny model."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from judge.backends import SpecError, load_backend, parse_spec
from judge.backends.reward import RewardJudge
from judge.cli import app
from judge.engine import PairJudge
from judge.pointwise import CLASSES
from judge.prompt import Pair
from judge.verdict import argmax_verdict

PAIRS = [
    Pair("Add 2 and 3.", "", "5", "The answer is six, I think."),
    Pair("Translate hello into German.", "hello", "Hallo", "The quick brown fox jumps over it."),
    Pair("What is the capital of France?", "", "Paris.", "Paris is the capital of France."),
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}"
)
WORDS = sorted(
    {w.strip(".,?").lower() for p in PAIRS for t in (p.instruction, p.input, p.response1, p.response2)
     for w in t.split()} | {"2", "3", "5", "0", "1", "4", "6", "7", "8", "9"}
)  # fmt: skip


@pytest.fixture(scope="module")
def llama_reward(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForSequenceClassification (one output), chat template set."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    path = tmp_path_factory.mktemp("llama-reward")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def deberta_reward(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DebertaV2ForSequenceClassification with a WordPiece tokenizer."""
    import torch
    from transformers import BertTokenizerFast, DebertaV2Config, DebertaV2ForSequenceClassification

    path = tmp_path_factory.mktemp("deberta-reward")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (path / "vocab.txt").write_text("\n".join([*specials, *WORDS, ".", ",", "?"]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), model_max_length=128)
    torch.manual_seed(2)
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    DebertaV2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(params=["llama", "deberta"])
def reward_model(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"{request.param}_reward")


def _responses() -> tuple[list[tuple[str, str]], list[str]]:
    tasks = [(p.instruction, p.input) for p in PAIRS for _ in (1, 2)]
    return tasks, [r for p in PAIRS for r in (p.response1, p.response2)]


def test_batched_scores_equal_one_at_a_time(reward_model: Path) -> None:
    tasks, responses = _responses()
    batched = load_backend(f"reward:{reward_model}?batch=4")
    single = load_backend(f"reward:{reward_model}?batch=1")
    lengths = {
        len(batched.scorer._encode([t], [r])["input_ids"][0]) for t, r in zip(tasks, responses)
    }
    assert len(lengths) > 1, "inputs of different lengths exercise the padding"
    assert batched.scorer.chat == (reward_model.name.startswith("llama"))
    np.testing.assert_allclose(
        batched.scores(tasks, responses), single.scores(tasks, responses), atol=1e-4
    )
    assert len(set(np.round(batched.scores(tasks, responses), 6))) > 1


def test_the_chat_template_holds_the_task_and_the_response(llama_reward: Path) -> None:
    judge = load_backend(f"reward:{llama_reward}")
    ids = judge.scorer._encode([("Add 2 and 3.", "now")], ["5"])["input_ids"][0]
    text = judge.scorer.tokenizer.decode(ids)
    assert text == "<s><|user|>\nAdd 2 and 3.\n\nnow</s><|assistant|>\n5</s>"


def test_swapping_the_responses_swaps_the_probabilities_exactly(reward_model: Path) -> None:
    judge = load_backend(f"reward:{reward_model}?band=0.01&scale=0.5")
    swapped = [Pair(p.instruction, p.input, p.response2, p.response1) for p in PAIRS]
    for ahead, behind in zip(judge.probabilities(PAIRS), judge.probabilities(swapped)):
        assert (ahead["1"], ahead["2"], ahead["Tie"]) == (behind["2"], behind["1"], behind["Tie"])
        assert sum(ahead.values()) == pytest.approx(1.0)
    judgments = PairJudge(judge, mode="score").judge(PAIRS)
    assert all(j.consistent for j in judgments)


def test_a_response_is_scored_once_however_many_comparisons_it_enters(llama_reward) -> None:
    judge = load_backend(f"reward:{llama_reward}")
    seen: list[str] = []
    rewards = judge.scorer.rewards
    judge.scorer.rewards = lambda tasks, responses: (
        seen.extend(responses) or rewards(tasks, responses)
    )
    pair = PAIRS[0]
    PairJudge(judge, mode="score").judge([pair])
    assert sorted(seen) == sorted([pair.response1, pair.response2]) and judge.scored == 2
    PairJudge(judge, mode="score").judge([Pair(pair.instruction, "", pair.response1, "7")])
    assert seen[2:] == ["7"] and judge.scored == 3


def test_the_band_makes_ties_and_decides_the_argmax() -> None:
    from judge.backends.reward import band_probabilities

    rows = band_probabilities(np.asarray([0.0, 0.3, -0.3, 0.5, 0.51, -2.0]), band=0.5, scale=0.1)
    verdicts = [argmax_verdict(dict(zip(CLASSES, map(float, row)))) for row in rows]
    assert verdicts == ["Tie", "Tie", "Tie", "Tie", "1", "2"]
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_a_quantized_reward_model_scores_on_cpu(llama_reward: Path, quant: str) -> None:
    try:
        judge = load_backend(f"reward:{llama_reward}?quant={quant}")
        tasks, responses = _responses()
        quantized = judge.scores(tasks, responses)
    except Exception as exc:  # bitsandbytes' CPU support varies by version and build
        pytest.skip(f"bitsandbytes {quant} does not run on this CPU build: {exc}")
    classes = {type(m).__name__ for m in judge.scorer.model.modules()}
    assert {"Linear8bitLt", "Linear4bit"} & classes
    exact = load_backend(f"reward:{llama_reward}").scores(tasks, responses)
    np.testing.assert_allclose(quantized, exact, atol=0.25)
