"""Judge-training data: PandaLM's record shape, the paper's filters, swap augmentation, masking.

A record is a pair of responses to one task and the evaluation the judge should write for it:
`instruction`, `input`, `response1`, `response2` and `evaluation_result` (`1`, `2`, `Tie`),
`evaluation_reason`, `reference_response`, either flat or nested under `inputs` / `outputs`
(PandaLM's published training-data shape). Prompt and target are the judge's own
(`judge.prompt.build_prompt` / `build_target`), so the trained model reads exactly what it is
asked at judging time.

Filtering (`filter_judge_records`), each drop counted in a `FilterReport`:
- the result is not a verdict, or the reason or the reference is empty;
- the same pair appears more than once and its results, mapped to one orientation, disagree:
  `1` in both orders (each order prefers a different response) or `1` against `2` in the same
  order is a contradiction; a win in one record against `Tie` in another is a weaker conflict
  that the judge itself would reconcile to `Tie` (see `judge.verdict`), but its reasons argue
  for different outcomes, so every record of such a pair is dropped as well;
- exact repeats of a record (same pair, same order, same result) are kept once.
Over-length records (prompt + target + EOS above `max_length` tokens) are dropped by default or
truncated at the end of the target (`over_length="truncate"`), in `tokenize_judge_records`.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from common.records import InputError, read_records
from judge.prompt import VERDICTS, build_prompt, build_target
from judge.verdict import swap_verdict
from trainer.data import IGNORE_INDEX, TokenizedData, tokenize_for_training

__all__ = [
    "IGNORE_INDEX",
    "OVER_LENGTH_RULES",
    "FilterReport",
    "JudgeRecord",
    "OverLength",
    "filter_judge_records",
    "load_judge_records",
    "prepare_judge_data",
    "swap_augment",
    "tokenize_judge_records",
    "write_judge_records",
]

OverLength = Literal["drop", "truncate"]
OVER_LENGTH_RULES: tuple[str, ...] = ("drop", "truncate")

INPUT_FIELDS = ("instruction", "input", "response1", "response2")
OUTPUT_FIELDS = ("evaluation_result", "evaluation_reason", "reference_response")
_RESPONSE_NAME = re.compile(r"\b([Rr]esponse) ?([12])\b")


@dataclass(frozen=True)
class JudgeRecord:
    """One training example for the judge: a pair and the evaluation to learn.

    `result` is kept as read (normalized `1`, `2`, `Tie` when it is one) so that the filter can
    count records whose result is not a verdict.
    """

    instruction: str
    input: str
    response1: str
    response2: str
    result: str
    reason: str
    reference: str

    def prompt(self) -> str:
        return build_prompt(self.instruction, self.input, self.response1, self.response2)

    @property
    def output(self) -> str:
        """The target text (named like `InstructionRecord.output`, so the trainer's masking
        tokenizes judge records unchanged)."""
        return build_target(self.result, self.reason.strip(), self.reference.strip())

    @property
    def task_key(self) -> tuple[str, str]:
        return (self.instruction.strip(), self.input.strip())

    def swapped(self) -> JudgeRecord:
        """The mirrored record: responses exchanged, the verdict and the reason's response
        names (`Response 1` <-> `Response 2`) with them."""
        return replace(
            self,
            response1=self.response2,
            response2=self.response1,
            result=swap_verdict(self.result),  # type: ignore[arg-type]
            reason=_RESPONSE_NAME.sub(
                lambda m: f"{m.group(1)} {'2' if m.group(2) == '1' else '1'}", self.reason
            ),
        )

    def to_json(self) -> dict[str, Any]:
        """PandaLM's nested training-data shape."""
        return {
            "inputs": {name: getattr(self, name) for name in INPUT_FIELDS},
            "outputs": {
                "evaluation_result": self.result,
                "evaluation_reason": self.reason,
                "reference_response": self.reference,
            },
        }


def _normalize_result(value: Any) -> str:
    """`1`, `2`, `Tie` from strings (any case for tie) or the ints 1 and 2; else the raw text."""
    if isinstance(value, int) and not isinstance(value, bool) and value in (1, 2):
        return str(value)
    text = str(value).strip()
    return "Tie" if text.lower() == "tie" else text


def _string(where: str, record: dict[str, Any], name: str, scope: str) -> str:
    if name not in record:
        raise InputError(f"{where}: field '{scope}{name}' is missing")
    value = record[name]
    if not isinstance(value, str):
        kind = type(value).__name__
        raise InputError(f"{where}: field '{scope}{name}' must be a string, not {kind}")
    return value


def judge_record_from_json(where: str, record: dict[str, Any]) -> JudgeRecord:
    """A record of either shape; a missing or mistyped field is an error naming file:line."""
    if "inputs" in record or "outputs" in record:
        inputs, outputs = record.get("inputs"), record.get("outputs")
        for name, part in (("inputs", inputs), ("outputs", outputs)):
            if not isinstance(part, dict):
                raise InputError(f"{where}: field '{name}' must be an object")
        scopes = ("inputs.", "outputs.")
    else:
        inputs = outputs = record
        scopes = ("", "")
    assert isinstance(inputs, dict) and isinstance(outputs, dict)
    texts = {name: _string(where, inputs, name, scopes[0]) for name in INPUT_FIELDS}
    if "evaluation_result" not in outputs:
        raise InputError(f"{where}: field '{scopes[1]}evaluation_result' is missing")
    return JudgeRecord(
        **texts,
        result=_normalize_result(outputs["evaluation_result"]),
        reason=_string(where, outputs, "evaluation_reason", scopes[1]),
        reference=_string(where, outputs, "reference_response", scopes[1]),
    )


def load_judge_records(path: Path) -> list[JudgeRecord]:
    """Every record of a JSON array or JSONL file, all validated before any is used."""
    records = [judge_record_from_json(where, record) for where, record in read_records(path)]
    if not records:
        raise InputError(f"{path}: no records")
    return records


def write_judge_records(records: Iterable[JudgeRecord], path: Path) -> int:
    """Write records as JSONL in PandaLM's nested shape; returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as sink:
        for record in records:
            sink.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


@dataclass
class FilterReport:
    """How many records each step read, dropped, added and kept."""

    read: int = 0
    invalid_result: int = 0
    empty_reason: int = 0
    empty_reference: int = 0
    duplicates: int = 0
    contradictory_orders: int = 0
    win_against_tie: int = 0
    swap_added: int = 0
    over_length_dropped: int = 0
    over_length_truncated: int = 0
    kept: int = 0
    result_counts: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as `name: count` lines, in the order the steps run."""
        counts = {k: v for k, v in asdict(self).items() if k != "result_counts"}
        width = max(map(len, counts))
        lines = [f"{name.replace('_', ' '):<{width}}  {value}" for name, value in counts.items()]
        results = ", ".join(f"{k}: {v}" for k, v in sorted(self.result_counts.items()))
        return [*lines, f"{'kept by result':<{width}}  {results}"]


def _pair_key(record: JudgeRecord) -> tuple[str, str, frozenset[str]]:
    return (*record.task_key, frozenset((record.response1.strip(), record.response2.strip())))


def _oriented_result(record: JudgeRecord, first: str) -> str:
    """The record's result in terms of the pair's first-seen orientation."""
    return record.result if record.response1.strip() == first else swap_verdict(record.result)  # type: ignore[arg-type]


def filter_judge_records(
    records: Sequence[JudgeRecord], report: FilterReport | None = None
) -> list[JudgeRecord]:
    """Records that pass the paper's filters (module docstring), in input order."""
    report = report if report is not None else FilterReport()
    report.read += len(records)
    valid = []
    for record in records:
        if record.result not in VERDICTS:
            report.invalid_result += 1
        elif not record.reason.strip():
            report.empty_reason += 1
        elif not record.reference.strip():
            report.empty_reference += 1
        else:
            valid.append(record)
    by_pair: dict[tuple, list[JudgeRecord]] = defaultdict(list)
    for record in valid:
        by_pair[_pair_key(record)].append(record)
    dropped: set[tuple] = set()
    for key, group in by_pair.items():
        first = group[0].response1.strip()
        results = {_oriented_result(record, first) for record in group}
        if {"1", "2"} <= results:
            report.contradictory_orders += len(group)
            dropped.add(key)
        elif len(results) > 1:
            report.win_against_tie += len(group)
            dropped.add(key)
    kept, seen = [], set()
    for record in valid:
        if _pair_key(record) in dropped:
            continue
        if record in seen:
            report.duplicates += 1
            continue
        seen.add(record)
        kept.append(record)
    return kept


def swap_augment(
    records: Sequence[JudgeRecord], report: FilterReport | None = None
) -> list[JudgeRecord]:
    """The records followed by each one's mirror, unless the data already holds that order."""
    report = report if report is not None else FilterReport()
    present = {(*r.task_key, r.response1.strip(), r.response2.strip()) for r in records}
    mirrors = []
    for record in records:
        mirror = record.swapped()
        key = (*mirror.task_key, mirror.response1.strip(), mirror.response2.strip())
        if key not in present:
            present.add(key)
            mirrors.append(mirror)
    report.swap_added += len(mirrors)
    return [*records, *mirrors]


def tokenize_judge_records(
    records: Sequence[JudgeRecord],
    tokenizer: Any,
    max_length: int = 1024,
    over_length: OverLength = "drop",
    report: FilterReport | None = None,
) -> TokenizedData:
    """Token ids of prompt + target + EOS with labels only on target and EOS.

    The masking is the candidate trainer's (`trainer.data.tokenize_for_training`); records over
    `max_length` are dropped, or with `truncate` cut at the end of the target (a record whose
    prompt leaves no room for a target token is dropped either way).
    """
    if over_length not in OVER_LENGTH_RULES:
        raise ValueError(f"over_length must be one of {OVER_LENGTH_RULES}, got {over_length!r}")
    report = report if report is not None else FilterReport()
    full = tokenize_for_training(records, tokenizer, 1 << 30)  # type: ignore[arg-type]
    examples, truncated, dropped = [], 0, 0
    counts: dict[str, int] = defaultdict(int)
    for record, example in zip(records, full.examples, strict=True):
        if len(example["input_ids"]) > max_length:
            prompt_length = example["labels"].count(IGNORE_INDEX)
            if over_length == "drop" or prompt_length >= max_length:
                dropped += 1
                continue
            example = {name: values[:max_length] for name, values in example.items()}
            truncated += 1
        examples.append(example)
        counts[record.result] += 1
    report.over_length_dropped += dropped
    report.over_length_truncated += truncated
    report.kept = len(examples)
    report.result_counts = dict(counts)
    return TokenizedData(examples, truncated, dropped)


def prepare_judge_data(
    records: Sequence[JudgeRecord],
    tokenizer: Any,
    max_length: int = 1024,
    over_length: OverLength = "drop",
    swap: bool = False,
) -> tuple[TokenizedData, FilterReport]:
    """Filter, optionally swap-augment, and tokenize; the report counts every step."""
    report = FilterReport()
    kept = filter_judge_records(records, report)
    if swap:
        kept = swap_augment(kept, report)
    return tokenize_judge_records(kept, tokenizer, max_length, over_length, report), report
