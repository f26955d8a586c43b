"""Parsing judge output and reconciling the two presentation orders of a pair.

Rule table for combining the verdicts of the orders (A,B) and (B,A). The (B,A) verdict is first
mapped back to A/B terms (its `1` means B is better, so `1` and `2` swap). Then:

| (A,B)    | (B,A) mapped | combined | consistent |
|----------|--------------|----------|------------|
| x        | x            | x        | yes        |
| 1        | 2            | Tie      | no         |
| 1 or 2   | Tie          | Tie      | no         |
| Tie      | 1 or 2       | Tie      | no         |
| x        | invalid      | x        | no         |
| invalid  | x            | x        | no         |
| invalid  | invalid      | invalid  | no         |

Agreeing verdicts stand and any conflict becomes Tie, as in the PandaLM paper. When one order's
output is invalid the other order is the only evidence and stands alone; the pair still counts as
inconsistent, so the consistency rate shows it. Invalid outputs are never turned into Tie.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from judge.prompt import VERDICTS

Verdict = Literal["1", "2", "Tie", "invalid"]
INVALID: Verdict = "invalid"

_REASON_MARK = "### Reason:"
_REFERENCE_MARK = "### Reference:"


@dataclass(frozen=True)
class ParsedOutput:
    """One generated evaluation: the verdict and, when present, reason and reference."""

    verdict: Verdict
    reason: str
    reference: str


def parse_verdict(text: str) -> Verdict:
    """The verdict on the first line of `text`, or `invalid` when that line is not one."""
    stripped = text.lstrip()
    first_line = stripped.split("\n", 1)[0].strip() if stripped else ""
    if first_line in VERDICTS:
        return first_line  # type: ignore[return-value]
    if first_line.lower() == "tie":
        return "Tie"
    return INVALID


def parse_output(text: str) -> ParsedOutput:
    """Split a generated evaluation into verdict, reason and reference."""
    text = trim_runaway(text)
    verdict = parse_verdict(text)
    reason, reference = "", ""
    if _REASON_MARK in text:
        after_reason = text.split(_REASON_MARK, 1)[1]
        reason = after_reason.split(_REFERENCE_MARK, 1)[0].strip()
    if _REFERENCE_MARK in text:
        reference = text.split(_REFERENCE_MARK, 1)[1].strip()
    return ParsedOutput(verdict=verdict, reason=reason, reference=reference)


# A PandaLM evaluation has only Reason and Reference blocks; any of these starts a new task.
_RUNAWAY_MARKS = (
    "\n### Instruction:",
    "\n### Input:",
    "\n### Response 1:",
    "\n### Response 2:",
    "\n### Evaluation:",
)
_LONGEST_VERDICT_LINE = 8


def trim_runaway(text: str) -> str:
    """Cut generated text where the model starts writing a new prompt section."""
    cut = min((i for i in (text.find(m) for m in _RUNAWAY_MARKS) if i >= 0), default=len(text))
    return text[:cut]


def generation_settled(text: str) -> bool:
    """True once more tokens cannot change the parse: the verdict line is already invalid, or the
    model has started a new prompt section (which `trim_runaway` cuts off)."""
    if trim_runaway(text) != text:
        return True
    head = text.lstrip()
    first_line = head.split("\n", 1)[0]
    decided = "\n" in head or len(first_line) > _LONGEST_VERDICT_LINE
    return decided and parse_verdict(first_line) == INVALID


def swap_verdict(verdict: Verdict) -> Verdict:
    """Express a verdict given on (B,A) in (A,B) terms."""
    return {"1": "2", "2": "1"}.get(verdict, verdict)  # type: ignore[return-value]


def combine_verdicts(forward: Verdict, backward_swapped: Verdict) -> Verdict:
    """Combine the (A,B) verdict with the (B,A) verdict already mapped to A/B terms."""
    if forward == INVALID:
        return backward_swapped
    if backward_swapped == INVALID or forward == backward_swapped:
        return forward
    return "Tie"


def is_consistent(forward: Verdict, backward_swapped: Verdict) -> bool:
    """True when both orders gave the same valid verdict."""
    return forward != INVALID and forward == backward_swapped


def normalize_logprobs(logprobs: dict[str, float]) -> dict[str, float]:
    """Turn log-probabilities of the verdict continuations into probabilities over the three."""
    import math

    top = max(logprobs.values())
    weights = {k: math.exp(v - top) for k, v in logprobs.items()}
    total = sum(weights.values())
    return {k: weights[k] / total for k in VERDICTS}


def swap_probabilities(probs: dict[str, float]) -> dict[str, float]:
    """Express (B,A) probabilities in (A,B) terms."""
    return {"1": probs["2"], "2": probs["1"], "Tie": probs["Tie"]}


def argmax_verdict(probs: dict[str, float]) -> Verdict:
    """The most probable verdict; exact ties between classes resolve to Tie."""
    best = max(probs.values())
    winners = [k for k in VERDICTS if probs[k] == best]
    return winners[0] if len(winners) == 1 else "Tie"  # type: ignore[return-value]
