"""Parsing judge output and the two-order rule table."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from judge.verdict import (
    argmax_verdict,
    combine_verdicts,
    generation_settled,
    is_consistent,
    normalize_logprobs,
    parse_output,
    parse_verdict,
    swap_probabilities,
    swap_verdict,
)


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("1\n\n### Reason: r\n\n### Reference: x\n", "1"),
        ("2", "2"),
        ("Tie\n\n### Reason: same", "Tie"),
        ("  \n tie \nrest", "Tie"),
        ("", "invalid"),
        ("Response 1 is better.\n1", "invalid"),
        ("12\n", "invalid"),
        ("1 and 2\n", "invalid"),
        ("The answer 4 is correct.", "invalid"),
    ],
)
def test_parse_verdict(text: str, verdict: str) -> None:
    assert parse_verdict(text) == verdict


def test_parse_output_splits_reason_and_reference() -> None:
    parsed = parse_output("2\n\n### Reason: Response 2 is shorter.\n\n### Reference: Hi there.\n")
    assert (parsed.verdict, parsed.reason, parsed.reference) == (
        "2",
        "Response 2 is shorter.",
        "Hi there.",
    )


def test_invalid_output_is_not_turned_into_tie() -> None:
    parsed = parse_output("I think both are fine.\n\n### Reason: meh")
    assert parsed.verdict == "invalid"
    assert parsed.reason == "meh"


@given(st.text())
def test_parser_never_crashes(text: str) -> None:
    parsed = parse_output(text)
    assert parsed.verdict in ("1", "2", "Tie", "invalid")
    assert isinstance(parsed.reason, str) and isinstance(parsed.reference, str)


# (forward, backward mapped to A/B terms) -> (combined, consistent): the docstring's table.
RULE_TABLE = [
    ("1", "1", "1", True),
    ("2", "2", "2", True),
    ("Tie", "Tie", "Tie", True),
    ("1", "2", "Tie", False),
    ("2", "1", "Tie", False),
    ("1", "Tie", "Tie", False),
    ("2", "Tie", "Tie", False),
    ("Tie", "1", "Tie", False),
    ("Tie", "2", "Tie", False),
    ("1", "invalid", "1", False),
    ("Tie", "invalid", "Tie", False),
    ("invalid", "2", "2", False),
    ("invalid", "Tie", "Tie", False),
    ("invalid", "invalid", "invalid", False),
]


@pytest.mark.parametrize(("forward", "backward", "combined", "consistent"), RULE_TABLE)
def test_rule_table(forward: str, backward: str, combined: str, consistent: bool) -> None:
    assert combine_verdicts(forward, backward) == combined
    assert is_consistent(forward, backward) is consistent


def test_swapped_order_maps_back() -> None:
    assert [swap_verdict(v) for v in ("1", "2", "Tie", "invalid")] == ["2", "1", "Tie", "invalid"]
    assert swap_probabilities({"1": 0.7, "2": 0.2, "Tie": 0.1}) == {"1": 0.2, "2": 0.7, "Tie": 0.1}


def test_probabilities_normalize_over_the_three_verdicts() -> None:
    probs = normalize_logprobs({"1": -1.0, "2": -2.0, "Tie": -1000.0})
    assert sum(probs.values()) == pytest.approx(1.0)
    assert probs["1"] == pytest.approx(1 / (1 + pow(2.718281828459045, -1)))
    assert argmax_verdict(probs) == "1"
    assert argmax_verdict({"1": 0.4, "2": 0.4, "Tie": 0.2}) == "Tie"


@pytest.mark.parametrize(
    ("text", "settled"),
    [
        ("1", False),
        ("Tie\n\n### Reason: both", False),
        ("1\n\n### Reason: r\n\n### Reference: x", False),
        ("The answer", True),
        ("Sure\n", True),
        ("2\n\n### Reason: r\n\n### Instruction:\nanother task", True),
        ("  ", False),
    ],
)
def test_generation_settles_when_more_tokens_cannot_change_the_parse(
    text: str, settled: bool
) -> None:
    assert generation_settled(text) is settled


def test_runaway_sections_are_cut_from_the_reference() -> None:
    parsed = parse_output("1\n\n### Reason: r\n\n### Reference: 42\n\n### Instruction:\nnext")
    assert parsed.reference == "42"


@given(st.text())
def test_a_settled_output_keeps_its_verdict_whatever_follows(text: str) -> None:
    if generation_settled(text):
        assert parse_output(text + "\n1\n2 Tie").verdict == parse_output(text).verdict
