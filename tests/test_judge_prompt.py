"""The judge prompt must match PandaLM-7B's training format byte for byte."""

import pytest

from judge.prompt import build_prompt, build_target, clean_response


def test_prompt_with_input_matches_pandalm_format() -> None:
    expected = (
        "Below are two responses for a given task. The task is defined by the Instruction with an "
        "Input that provides further context. Evaluate the responses and generate a reference "
        "answer for the task.\n\n"
        "### Instruction:\nTranslate to German.\n\n"
        "### Input:\nGood morning\n\n"
        "### Response 1:\nGuten Morgen\n\n"
        "### Response 2:\nGuten Tag\n\n"
        "### Evaluation:\n"
    )
    assert build_prompt("Translate to German.", "Good morning", "Guten Morgen", "Guten Tag") == (
        expected
    )


def test_prompt_without_input_drops_the_input_block() -> None:
    expected = (
        "Below are two responses for a given task. The task is defined by the Instruction. "
        "Evaluate the responses and generate a reference answer for the task.\n\n"
        "### Instruction:\nName a prime number.\n\n"
        "### Response 1:\n7\n\n"
        "### Response 2:\n9\n\n"
        "### Evaluation:\n"
    )
    assert build_prompt("Name a prime number.", "", "7", "9") == expected


def test_special_tokens_and_whitespace_are_stripped_from_responses() -> None:
    prompt = build_prompt("Say hi.", "", "  <s>Hello</s> [PAD]\n", "<|endoftext|>Hi<unk>[gMASK]")
    assert "### Response 1:\nHello\n\n### Response 2:\nHi\n\n### Evaluation:\n" in prompt
    assert clean_response("<|startofpiece|> a [MASK] b <|endofpiece|>") == "a  b"


def test_training_target_format() -> None:
    assert build_target("Tie", "Both are right.", "Paris") == (
        "Tie\n\n### Reason: Both are right.\n\n### Reference: Paris\n"
    )
    with pytest.raises(ValueError, match="result must be one of"):
        build_target("3", "x", "y")
