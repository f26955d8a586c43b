"""Response generation: greedy and deterministic, batched with left padding, cached per response."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import trainer.generate
from common.space import parse_space
from trainer.candidates import (
    CandidateCheckpoint,
    CandidateTrainingArguments,
    find_checkpoints,
    train_candidates,
)
from trainer.cli import app
from trainer.data import InputError, InstructionRecord, ValidationItem
from trainer.generate import generate_responses, read_responses

RECORDS = [
    InstructionRecord(f"Add {a} and {b}.", "", str(a + b)) for a in range(4) for b in range(4)
]
ITEMS = [
    ValidationItem("What is the capital of France?"),
    ValidationItem("Add the numbers.", "2 and 3"),
    ValidationItem("Translate hello into German."),
    ValidationItem("Say the quick brown fox jumps over the lazy dog, twice."),
    ValidationItem("Count to five."),
]


def train(out: Path, base: Path, epochs: str) -> list[CandidateCheckpoint]:
    space = parse_space(
        f'[grid]\noptimizer="adamw"\nlearning_rate=1e-4\nscheduler="linear"\nepochs={epochs}\n'
    )
    args = CandidateTrainingArguments(out, base, max_length=64, per_device_train_batch_size=8)
    return train_candidates(space.configs, RECORDS, args).checkpoints


@pytest.fixture(scope="module")
def trained(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("candidates")
    train(out, tiny_llama, "[1, 2]")
    return out


@pytest.fixture(scope="module")
def checkpoints(trained: Path) -> list[CandidateCheckpoint]:
    return find_checkpoints(trained)


def responses(path: Path) -> dict[tuple[str, str], str]:
    return {(r["config_id"], r["item_id"]): r["response"] for r in read_responses(path)}


def test_greedy_responses_do_not_depend_on_batching_or_reruns(checkpoints, tmp_path: Path) -> None:
    batched, single, again = (tmp_path / f"{name}.jsonl" for name in ("batched", "single", "again"))
    report = generate_responses(checkpoints, ITEMS, batched, max_new_tokens=12, batch_size=4)
    assert (report.generated, report.cached) == (10, 0)
    generate_responses(checkpoints, ITEMS, single, max_new_tokens=12, batch_size=1)
    generate_responses(checkpoints, ITEMS, again, max_new_tokens=12, batch_size=4)
    assert responses(batched) == responses(single) == responses(again)
    assert len(responses(batched)) == 10 and all(responses(batched).values())
    by_config = [
        [responses(single)[(checkpoint.config.id, item.id)] for item in ITEMS]
        for checkpoint in checkpoints
    ]
    assert by_config[0] != by_config[1]  # each checkpoint answers with its own weights
    record = read_responses(single)[0]
    assert set(record) == {
        "config_id",
        "item_id",
        "max_new_tokens",
        "instruction",
        "input",
        "response",
    }


def test_reruns_load_no_model_and_generate_only_what_is_new(
    checkpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "responses.jsonl"
    generate_responses(checkpoints, ITEMS[:3], out, max_new_tokens=8)
    before = out.read_bytes()
    loaded = []
    original = trainer.generate.load_candidate_model
    monkeypatch.setattr(
        trainer.generate, "load_candidate_model", lambda c: loaded.append(c) or original(c)
    )
    report = generate_responses(checkpoints, ITEMS[:3] + ITEMS[:1], out, max_new_tokens=8)
    assert (report.generated, report.cached, loaded) == (0, 6, [])
    assert out.read_bytes() == before
    report = generate_responses(checkpoints, ITEMS, out, max_new_tokens=8)
    assert (report.generated, report.cached, len(loaded)) == (4, 6, 2)
    report = generate_responses(checkpoints[:1], ITEMS[:1], out, max_new_tokens=9)
    assert report.generated == 1  # other decoding settings are other responses
    assert len(read_responses(out)) == 11


def test_an_append_cut_short_is_dropped_and_redone(checkpoints, tmp_path: Path) -> None:
    out = tmp_path / "responses.jsonl"
    generate_responses(checkpoints[:1], ITEMS[:2], out, max_new_tokens=4)
    complete = out.read_text()
    *kept, last = complete.splitlines(keepends=True)
    out.write_text("".join(kept) + last[:20])
    assert len(read_responses(out)) == 1
    assert out.read_text() == "".join(kept)
    assert generate_responses(checkpoints[:1], ITEMS[:2], out, max_new_tokens=4).generated == 1
    out.write_text(complete + '{"config_id": "x"}\n')
    with pytest.raises(InputError, match=r"responses.jsonl:3: field 'item_id' is missing"):
        read_responses(out)


def test_delete_weights_keeps_what_judging_needs(tiny_llama: Path, tmp_path: Path) -> None:
    (checkpoint,) = train(tmp_path / "candidates", tiny_llama, "1")
    out = tmp_path / "responses.jsonl"
    report = generate_responses([checkpoint], ITEMS[:2], out, max_new_tokens=4, delete_weights=True)
    assert report.weights_deleted == 1 and not checkpoint.has_weights
    (listed,) = find_checkpoints(tmp_path / "candidates")
    assert listed.config == checkpoint.config
    assert generate_responses([listed], ITEMS[:2], out, max_new_tokens=4).cached == 2
    with pytest.raises(InputError, match=r"weights of config \w+ were deleted"):
        generate_responses([listed], ITEMS, out, max_new_tokens=4)


def test_cli_generate_writes_jsonl_and_reruns_for_free(trained: Path, tmp_path: Path) -> None:
    validation = tmp_path / "validation.json"
    validation.write_text(
        json.dumps([{"instruction": i.instruction, "input": i.input, "app": "x"} for i in ITEMS])
    )
    out = tmp_path / "responses.jsonl"
    command = ["generate", "--checkpoints", str(trained), "--validation", str(validation)]
    command += ["--out", str(out), "--max-new-tokens", "6", "--batch-size", "2"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "10 responses generated, 0 already" in result.output
    assert {r["item_id"] for r in read_responses(out)} == {item.id for item in ITEMS}
    result = CliRunner().invoke(app, command)
    assert "0 responses generated, 10 already" in result.output
    command[2] = str(tmp_path)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2 and "not an output of `train_candidates`" in result.output
