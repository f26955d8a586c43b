"""Alpaca-format instruction data: validated loading, the Stanford Alpaca prompt, tokenization."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.records import InputError, read_records

__all__ = [
    "IGNORE_INDEX",
    "InputError",
    "InstructionRecord",
    "TokenizedData",
    "ValidationItem",
    "alpaca_prompt",
    "data_fingerprint",
    "instruction_record",
    "load_instruction_data",
    "load_validation_set",
    "tokenize_for_training",
    "validation_item",
]

IGNORE_INDEX = -100  # label of a token that carries no loss

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Stanford Alpaca prompt; the response follows it directly."""
    if input.strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


@dataclass(frozen=True)
class ValidationItem:
    """A task candidates answer: an instruction and its optional input."""

    instruction: str
    input: str = ""

    @property
    def id(self) -> str:
        """Content hash, so responses stay matched to items whatever the file order."""
        text = json.dumps([self.instruction, self.input], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def prompt(self) -> str:
        return alpaca_prompt(self.instruction, self.input)


@dataclass(frozen=True)
class InstructionRecord(ValidationItem):
    """A training example: a task and the response to learn."""

    output: str = ""


def _text_field(where: str, record: dict[str, Any], name: str, default: str | None = None) -> str:
    """A string field; a missing one is an error unless it has a default."""
    if name not in record:
        if default is None:
            raise InputError(f"{where}: field '{name}' is missing")
        return default
    value = record[name]
    if not isinstance(value, str):
        raise InputError(f"{where}: field '{name}' must be a string, not {type(value).__name__}")
    return value


def _non_empty(where: str, record: dict[str, Any], name: str) -> str:
    value = _text_field(where, record, name)
    if not value.strip():
        raise InputError(f"{where}: field '{name}' is empty")
    return value


def _read(path: Path) -> list[tuple[str, dict[str, Any]]]:
    records = list(read_records(path))
    if not records:
        raise InputError(f"{path}: no records")
    return records


def instruction_record(where: str, record: dict[str, Any]) -> InstructionRecord:
    """One training record, its fields checked (`where` names its file and line)."""
    return InstructionRecord(
        _non_empty(where, record, "instruction"),
        _text_field(where, record, "input", default=""),
        _non_empty(where, record, "output"),
    )


def validation_item(where: str, record: dict[str, Any]) -> ValidationItem:
    """One validation task, its fields checked; a blank instruction is accepted when the input
    says the task (the paper's own validation set has one such item)."""
    item = ValidationItem(
        _text_field(where, record, "instruction"), _text_field(where, record, "input", "")
    )
    if not (item.instruction.strip() or item.input.strip()):
        raise InputError(f"{where}: fields 'instruction' and 'input' are both empty")
    return item


def load_instruction_data(path: Path) -> list[InstructionRecord]:
    """Every record of an Alpaca JSON array or JSONL file, all validated before any is used."""
    return [instruction_record(where, record) for where, record in _read(path)]


def load_validation_set(path: Path) -> list[ValidationItem]:
    """Validation tasks (`instruction`, optional `input`); other fields are ignored."""
    return [validation_item(where, record) for where, record in _read(path)]


def data_fingerprint(records: Sequence[InstructionRecord]) -> str:
    """Content hash of the training data: a finished run is reused only for the same data."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(asdict(record), ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class TokenizedData:
    """Training features; `truncated` responses were cut at max length, `dropped` prompts left
    no room for a single response token and are not trained on."""

    examples: list[dict[str, list[int]]]
    truncated: int
    dropped: int


def tokenize_for_training(
    records: Sequence[InstructionRecord], tokenizer: Any, max_length: int
) -> TokenizedData:
    """Token ids of prompt + response + EOS, with labels only on the response and EOS.

    As in Stanford Alpaca, the whole text is tokenized at once and the prompt's own token count
    is masked, so prompt tokens are those the model sees when it generates.
    """
    prompts = [record.prompt() for record in records]
    prompt_ids = tokenizer(prompts)["input_ids"]
    full_ids = tokenizer([p + r.output for p, r in zip(prompts, records, strict=True)])["input_ids"]
    eos = tokenizer.eos_token_id
    examples, truncated, dropped = [], 0, 0
    for prompt, ids in zip(prompt_ids, full_ids, strict=True):
        ids = ids if ids[-1] == eos else [*ids, eos]
        if len(ids) > max_length:
            ids = ids[:max_length]
            if len(prompt) >= max_length:
                dropped += 1
                continue
            truncated += 1
        labels = [IGNORE_INDEX] * len(prompt) + ids[len(prompt) :]
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return TokenizedData(examples, truncated, dropped)
