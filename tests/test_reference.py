"""The judge-free reference check (exact match, answer NLL) and the demo's one settings object."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trainer.data import ValidationItem, alpaca_prompt
from trainer.reference import (
    ANSWER_NLL,
    EXACT_MATCH,
    ReferenceAnswer,
    answer_nll,
    exact_match,
    exact_match_accuracy,
    load_reference_answers,
    metric_name,
)


def test_exact_match_ignores_case_quotes_and_final_punctuation() -> None:
    assert exact_match("  Paris. ", "paris")
    assert exact_match("'nomel'", "nomel")
    assert exact_match("5000   grams", "5000 grams")
    assert not exact_match("The answer is Paris.", "Paris")
    assert not exact_match("44", "44000")
    answers = {"a": ReferenceAnswer("Paris", True), "b": ReferenceAnswer("7", True)}
    assert exact_match_accuracy({"a": "paris.", "b": "8"}, answers) == 0.5
    assert metric_name(answers) == EXACT_MATCH
    assert metric_name({"a": ReferenceAnswer("a long reference", False)}) == ANSWER_NLL
    assert metric_name({}) is None


def test_answers_of_a_validation_file(tmp_path: Path) -> None:
    path = tmp_path / "val.jsonl"
    rows = [
        {"instruction": "Add 2 and 3.", "answer": "5"},
        {"instruction": "Describe Paris.", "output": "Paris is the capital of France."},
        {"instruction": "No answer here."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    answers = load_reference_answers(path)
    assert answers[ValidationItem("Add 2 and 3.").id] == ReferenceAnswer("5", True)
    assert not answers[ValidationItem("Describe Paris.").id].checkable
    assert len(answers) == 2


def test_answer_nll_equals_the_token_by_token_negative_log_likelihood(tiny_llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    items = [ValidationItem("What is the capital of France?"), ValidationItem("Add 2 and 3.")]
    answers = ["Paris.", "The answer is 5."]
    expected_total, expected_count = 0.0, 0
    with torch.inference_mode():
        for item, answer in zip(items, answers, strict=True):
            prompt = alpaca_prompt(item.instruction, item.input)
            start = len(tokenizer(prompt)["input_ids"])
            ids = tokenizer(prompt + answer)["input_ids"]
            for position in range(start, len(ids)):  # one forward pass per answer token
                logits = model(input_ids=torch.tensor([ids[:position]])).logits[0, -1]
                expected_total -= float(torch.log_softmax(logits, -1)[ids[position]])
                expected_count += 1
    value = answer_nll(model, tokenizer, items, answers)
    assert value == pytest.approx(expected_total / expected_count, rel=1e-4)
    assert value > 0 and math.isfinite(value)
    # A random model finds a repeated prompt token likelier than a rare answer: values differ.
    assert answer_nll(model, tokenizer, items[:1], ["Paris."]) != pytest.approx(value)


def test_the_demo_configuration_lives_in_one_place(tmp_path: Path) -> None:
    from agent.config import load_site_config
    from common.space import load_space
    from coordinator.config import load_federation_config
    from demo.settings import DEMO

    (tmp_path / "space.toml").write_text(DEMO.space_toml())
    space = load_space(tmp_path / "space.toml", None)
    assert len(space.configs) == DEMO.configs == 8
    assert {c.params["finetune"] for c in space.configs} == {"lora"}
    learning_rates = {c.params["learning_rate"] for c in space.configs}
    assert max(learning_rates) / min(learning_rates) >= 100  # two orders of magnitude
    assert {k for c in space.configs for k in c.params} >= {
        "optimizer", "learning_rate", "scheduler", "epochs",
    }  # fmt: skip
    site_path = tmp_path / "site.toml"
    ca_file = tmp_path / "ca.crt"
    site_path.write_text(DEMO.site_toml("site-1", 1, "127.0.0.1:9092", 9094, ca_file))
    site = load_site_config(site_path)
    assert site.model.max_steps_per_epoch == DEMO.steps_per_epoch
    assert site.data.validation_items == DEMO.validation_items
    assert site.model.max_new_tokens == DEMO.max_new_tokens
    assert site.flower.root_certificates == str(ca_file) and not site.flower.insecure
    fed_path = tmp_path / "federation.toml"
    fed_path.write_text(DEMO.federation_toml("paper", 3, "127.0.0.1:9092"))
    federation = load_federation_config(fed_path)
    assert federation.run.validation_items == DEMO.validation_items
    assert federation.run.secure_aggregation == "when-possible"
