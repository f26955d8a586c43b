"""A reference check of the candidates that does not use the judge.

Where a validation item's answer is checkable (the builtin demo tasks; an `answer` field in a
validation file) there are two metrics: exact-match accuracy of the greedy response, and the
dense one, the mean per-token negative log-likelihood of the answer under the candidate (every
answer token counts, so candidates that all miss the exact answer still differ). Otherwise,
where an item has a reference `output`, the metric is that reference's NLL. Each site computes
them on its own items; they stay at the site.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data import ValidationItem, alpaca_prompt

EXACT_MATCH = "exact_match"
ANSWER_NLL = "answer_nll"
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ReferenceAnswer:
    """An item's known answer; `checkable` answers are compared exactly (after normalising)."""

    text: str
    checkable: bool


def normalize_answer(text: str) -> str:
    """Case, surrounding quotes and punctuation, and runs of whitespace do not count."""
    return _SPACE.sub(" ", text.strip().strip(".!?'\"`").strip()).lower()


def exact_match(response: str, answer: str) -> bool:
    return normalize_answer(response) == normalize_answer(answer)


def reference_answer(where: str, record: dict[str, Any]) -> ReferenceAnswer | None:
    """A validation record's `answer` (checkable) or `output` (a reference), if it has one."""
    from common.records import InputError

    for name, checkable in (("answer", True), ("output", False)):
        if name in record:
            if not isinstance(record[name], str):
                raise InputError(f"{where}: field '{name}' must be a string")
            return ReferenceAnswer(record[name], checkable)
    return None


def load_reference_answers(path: Path) -> dict[str, ReferenceAnswer]:
    """Answers of a validation file: `answer` (checkable) or `output` (a reference), per item."""
    from common.records import read_records

    answers = {}
    for where, record in read_records(path):
        answer = reference_answer(where, record)
        if answer is not None:
            item = ValidationItem(str(record.get("instruction", "")), str(record.get("input", "")))
            answers[item.id] = answer
    return answers


def metric_name(answers: Mapping[str, ReferenceAnswer]) -> str | None:
    """Exact match when every answer is checkable (the NLL is computed next to it), NLL when
    some are references, else None."""
    if not answers:
        return None
    return EXACT_MATCH if all(a.checkable for a in answers.values()) else ANSWER_NLL


def exact_match_accuracy(
    responses: Mapping[str, str], answers: Mapping[str, ReferenceAnswer]
) -> float:
    """Share of the items with an answer whose response (item id -> text) matches it."""
    scored = [exact_match(responses[i], a.text) for i, a in answers.items() if i in responses]
    if not scored:
        raise ValueError("no response to any item with an answer")
    return sum(scored) / len(scored)


def answer_nll(
    model: Any, tokenizer: Any, items: Sequence[ValidationItem], answers: Sequence[str]
) -> float:
    """Mean per-token negative log-likelihood of the reference answers given their prompts,
    over all answer tokens (the prompt is the one the candidate was trained and generates on)."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for item, answer in zip(items, answers, strict=True):
            prompt = alpaca_prompt(item.instruction, item.input)
            prompt_ids = tokenizer(prompt)["input_ids"]
            ids = tokenizer(prompt + answer)["input_ids"]
            if len(ids) <= len(prompt_ids):
                continue
            tensor = torch.tensor([ids], device=model.device)
            logits = model(input_ids=tensor).logits[0, :-1].float()
            targets = tensor[0, 1:]
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            answer_losses = losses[len(prompt_ids) - 1 :]
            total += float(answer_losses.sum())
            count += answer_losses.numel()
    if not count:
        raise ValueError("no answer tokens to score")
    return total / count
