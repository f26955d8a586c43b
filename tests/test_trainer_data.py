"""Alpaca data: the prompt, validated loading, loss masking and truncation, the demo set."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from trainer.data import (
    IGNORE_INDEX,
    InputError,
    InstructionRecord,
    alpaca_prompt,
    load_instruction_data,
    load_validation_set,
    tokenize_for_training,
)
from trainer.demo_tasks import is_validation_task, make_shard, make_validation_set


def test_alpaca_prompt_is_the_stanford_template() -> None:
    assert alpaca_prompt("Add the numbers.", "2, 3") == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2, 3\n\n### Response:\n"
    )
    assert alpaca_prompt("Say hi.") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    )


def test_loads_json_arrays_and_jsonl(tmp_path: Path) -> None:
    records = [
        {"instruction": "Add.", "input": "2, 3", "output": "5"},
        {"instruction": "Say hi.", "output": "Hi!", "source": "ignored"},
    ]
    array, lines = tmp_path / "data.json", tmp_path / "data.jsonl"
    array.write_text(json.dumps(records, indent=2))
    lines.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    expected = [InstructionRecord("Add.", "2, 3", "5"), InstructionRecord("Say hi.", "", "Hi!")]
    assert load_instruction_data(array) == expected
    assert load_instruction_data(lines) == expected
    assert [item.input for item in load_validation_set(lines)] == ["2, 3", ""]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"input": "x", "output": "y"}', "data.jsonl:2: field 'instruction' is missing"),
        ('{"instruction": "x", "input": 3, "output": "y"}', "field 'input' must be a string"),
        ('{"instruction": "x", "output": "  "}', "data.jsonl:2: field 'output' is empty"),
        ('{"instruction": "x", "output": "y"', "data.jsonl:2: invalid JSON"),
        ('["x", "y"]', "data.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_jsonl_records_name_file_line_and_field(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"instruction": "ok", "output": "fine"}\n' + line + "\n")
    with pytest.raises(InputError, match=re.escape(message)):
        load_instruction_data(path)


def test_bad_array_records_name_the_index(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(InputError, match=re.escape("data.json[1]: field 'output' is missing")):
        load_instruction_data(path)
    path.write_text("[]")
    with pytest.raises(InputError, match="no records"):
        load_validation_set(path)


def test_the_papers_validation_instructions_load(shared_data: Path) -> None:
    items = load_validation_set(shared_data / "pandalm" / "validation-instructions-170.json")
    assert len(items) == 170
    blank = [item for item in items if not item.instruction.strip()]
    assert [item.input for item in blank] == ["Truthfulness"]  # kept: the input says the task


def test_a_validation_item_needs_an_instruction_or_an_input(tmp_path: Path) -> None:
    path = tmp_path / "validation.jsonl"
    path.write_text('{"instruction": "Say hi."}\n{"instruction": " ", "input": ""}\n')
    with pytest.raises(InputError, match=re.escape("validation.jsonl:2: fields 'instruction' and")):
        load_validation_set(path)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path):
    return AutoTokenizer.from_pretrained(tiny_llama)


def test_loss_is_only_on_the_response_and_eos(tokenizer) -> None:
    record = InstructionRecord("What is the capital of France?", "", "Paris.")
    data = tokenize_for_training([record], tokenizer, max_length=1024)
    (example,) = data.examples
    ids, labels = example["input_ids"], example["labels"]
    prompt_length = len(tokenizer(record.prompt())["input_ids"])
    assert labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert labels[prompt_length:] == ids[prompt_length:]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(labels[prompt_length:]) == "Paris.</s>"
    assert tokenizer.decode(ids[:prompt_length]) == record.prompt()
    assert (data.truncated, data.dropped) == (0, 0)


def test_truncation_is_counted(tokenizer) -> None:
    short = InstructionRecord("Say hi.", "", "Hi!")
    long = InstructionRecord("Say hi.", "", "Hi! " * 50)
    huge_prompt = InstructionRecord("Say hi. " * 100, "", "Hi!")
    prompt_length = len(tokenizer(short.prompt())["input_ids"])
    max_length = prompt_length + 8
    data = tokenize_for_training([short, long, huge_prompt], tokenizer, max_length)
    assert (data.truncated, data.dropped) == (1, 1)
    assert len(data.examples) == 2
    assert all(len(e["input_ids"]) <= max_length for e in data.examples)
    kept = data.examples[1]["labels"]
    assert kept[-1] != tokenizer.eos_token_id  # cut before the EOS
    assert sum(label != IGNORE_INDEX for label in kept) == 8


def test_demo_shards_differ_by_site_and_never_hold_validation_tasks() -> None:
    shard = make_shard(site_seed=1, n=300)
    assert shard == make_shard(site_seed=1, n=300)
    assert shard != make_shard(site_seed=2, n=300)
    assert len({(r.instruction, r.input) for r in shard}) == 300
    validation = make_validation_set(100)
    assert all(is_validation_task(r.instruction, r.input) for r in validation)
    assert not any(is_validation_task(r.instruction, r.input) for r in shard)
    styles = {r.instruction.split()[0] for r in shard}
    assert len(styles) >= 10  # several tasks, several phrasings
    assert sum(bool(r.input) for r in shard) > 30  # with and without input


def test_demo_answers_are_checkable() -> None:
    checked = 0
    for record in make_shard(site_seed=3, n=400) + make_validation_set(100):
        if match := re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", record.instruction):
            a, op, b = match.groups()
            expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            assert record.output == str(expected)
            checked += 1
        elif match := re.fullmatch(
            r"Reverse the letters of the word '(\w+)'\.", record.instruction
        ):
            assert record.output == match.group(1)[::-1]
            checked += 1
        elif record.instruction == "Sort these words in alphabetical order.":
            assert record.output.split(", ") == sorted(record.input.split(", "))
            checked += 1
    assert checked > 30
