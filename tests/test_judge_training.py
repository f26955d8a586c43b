"""Judge training: data loading and filtering, label masking, CPU ZeRO-2 runs, synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.records import InputError
from judge.prompt import build_prompt, build_target
from trainer.cli import app
from trainer.judges.data import (
    IGNORE_INDEX,
    FilterReport,
    JudgeRecord,
    filter_judge_records,
    load_judge_records,
    prepare_judge_data,
    swap_augment,
    tokenize_judge_records,
    write_judge_records,
)

REPO = Path(__file__).resolve().parents[1]


def _record(r1="The answer is 5.", r2="Paris.", result="1", **fields) -> JudgeRecord:
    values = {
        "instruction": "Add 2 and 3.",
        "input": "",
        "response1": r1,
        "response2": r2,
        "result": result,
        "reason": "Response 1 is correct; response 2 is irrelevant.",
        "reference": "5",
    }
    return JudgeRecord(**{**values, **fields})


def _flat(record: JudgeRecord) -> dict:
    nested = record.to_json()
    return {**nested["inputs"], **nested["outputs"]}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- loading --------------------------------------------------------------------------------


def test_loads_flat_and_nested_records_from_jsonl_and_json(tmp_path):
    record = _record()
    jsonl = _write_jsonl(tmp_path / "a.jsonl", [_flat(record), record.to_json()])
    array = tmp_path / "b.json"
    array.write_text(json.dumps([record.to_json(), {**_flat(record), "evaluation_result": 2}]))
    assert load_judge_records(jsonl) == [record, record]
    loaded = load_judge_records(array)
    assert loaded[0] == record
    assert loaded[1].result == "2"  # PandaLM's files may hold ints


def test_tie_in_any_case_is_a_tie_and_unknown_results_are_kept_for_the_filter(tmp_path):
    rows = [{**_flat(_record()), "evaluation_result": value} for value in ("tie", "TIE", "3", 0)]
    loaded = load_judge_records(_write_jsonl(tmp_path / "t.jsonl", rows))
    assert [r.result for r in loaded] == ["Tie", "Tie", "3", "0"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"instruction": "x"}, "t.jsonl:2: field 'input' is missing"),
        ({"inputs": {}, "outputs": {}}, "t.jsonl:2: field 'inputs.instruction' is missing"),
        ({"inputs": [], "outputs": {}}, "t.jsonl:2: field 'inputs' must be an object"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, row, message):
    path = _write_jsonl(tmp_path / "t.jsonl", [_flat(_record()), row])
    with pytest.raises(InputError, match=message):
        load_judge_records(path)


def test_mistyped_reason_is_an_error(tmp_path):
    row = {**_flat(_record()), "evaluation_reason": 3}
    with pytest.raises(InputError, match=r"t.jsonl:1: field 'evaluation_reason' must be a string"):
        load_judge_records(_write_jsonl(tmp_path / "t.jsonl", [row]))


# --- filtering ------------------------------------------------------------------------------


def test_filter_counts_invalid_results_and_empty_reasons_and_references():
    records = [
        _record(),
        _record(r1="a", result="3"),
        _record(r1="b", reason="  "),
        _record(r1="c", reference=""),
    ]
    report = FilterReport()
    assert filter_judge_records(records, report) == [records[0]]
    assert (report.read, report.invalid_result, report.empty_reason, report.empty_reference) == (
        4,
        1,
        1,
        1,
    )


def test_consistent_orders_are_kept_and_the_same_number_in_both_orders_is_dropped():
    forward = _record("A", "B", "1")
    consistent = [forward, _record("B", "A", "2")]
    assert filter_judge_records(consistent) == consistent
    report = FilterReport()
    contradictory = [forward, _record("B", "A", "1"), _record("C", "D", "2")]
    assert filter_judge_records(contradictory, report) == [contradictory[2]]
    assert report.contradictory_orders == 2


def test_one_against_two_in_the_same_order_is_a_contradiction():
    report = FilterReport()
    assert filter_judge_records([_record("A", "B", "1"), _record("A", "B", "2")], report) == []
    assert report.contradictory_orders == 2


def test_a_win_against_tie_in_the_other_order_drops_both_records():
    report = FilterReport()
    kept = filter_judge_records([_record("A", "B", "2"), _record("B", "A", "Tie")], report)
    assert kept == []
    assert (report.win_against_tie, report.contradictory_orders) == (2, 0)
    ties = [_record("A", "B", "Tie"), _record("B", "A", "Tie")]
    assert filter_judge_records(ties) == ties


def test_exact_repeats_are_kept_once():
    report = FilterReport()
    assert filter_judge_records([_record(), _record()], report) == [_record()]
    assert report.duplicates == 1


def test_swap_augmentation_mirrors_responses_verdict_and_reason_names():
    record = _record("A", "B", "1", reason="Response 1 is right, response 2 is wrong.")
    report = FilterReport()
    augmented = swap_augment([record, _record("C", "D", "Tie")], report)
    mirror = augmented[2]
    assert (mirror.response1, mirror.response2, mirror.result) == ("B", "A", "2")
    assert mirror.reason == "Response 2 is right, response 1 is wrong."
    assert augmented[3].result == "Tie"
    assert report.swap_added == 2
    assert swap_augment([record, record.swapped()]) == [record, record.swapped()]  # present


# --- tokenization and masking ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_llama):
    from trainer.candidates import load_tokenizer

    return load_tokenizer(tiny_llama)


def test_loss_is_only_on_the_judge_target_and_eos(tiny_tokenizer):
    record = _record()
    data = tokenize_judge_records([record], tiny_tokenizer, max_length=4096)
    example = data.examples[0]
    masked = example["labels"].count(IGNORE_INDEX)
    prompt = build_prompt(record.instruction, record.input, record.response1, record.response2)
    assert masked == len(tiny_tokenizer(prompt)["input_ids"])
    assert tiny_tokenizer.decode(example["input_ids"][:masked]) == prompt
    trained = [t for t in example["labels"] if t != IGNORE_INDEX]
    target = build_target(record.result, record.reason, record.reference)
    assert tiny_tokenizer.decode(trained) == target + tiny_tokenizer.eos_token
    assert example["input_ids"][masked:] == trained


def test_over_length_records_are_dropped_or_truncated(tiny_tokenizer):
    short = _record()
    long = _record(r1="x", reference="five " * 300)
    full = tokenize_judge_records([short, long], tiny_tokenizer, max_length=4096).examples
    limit = len(full[0]["input_ids"]) + 5
    assert len(full[1]["input_ids"]) > limit
    report = FilterReport()
    dropped = tokenize_judge_records([short, long], tiny_tokenizer, limit, "drop", report)
    assert [len(e["input_ids"]) for e in dropped.examples] == [len(full[0]["input_ids"])]
    assert (report.over_length_dropped, report.kept, report.result_counts) == (1, 1, {"1": 1})
    cut = tokenize_judge_records([short, long], tiny_tokenizer, limit, "truncate").examples
    assert len(cut) == 2 and len(cut[1]["input_ids"]) == limit
    assert cut[1]["labels"] == full[1]["labels"][:limit]


def test_prepare_reports_every_step(tiny_tokenizer):
    records = [_record("A", "B", "1"), _record("B", "A", "1"), _record("C", "D", "Tie")]
    data, report = prepare_judge_data(records, tiny_tokenizer, 4096, swap=True)
    assert (report.contradictory_orders, report.swap_added, report.kept) == (2, 1, 2)
    assert len(data.examples) == 2
    assert any(line.startswith("contradictory orders") for line in report.lines())


# --- training -------------------------------------------------------------------------------


def _training_data(path: Path, count: int = 24) -> Path:
    records = [
        _record(f"The answer is {i + 3}.", "Paris.", "1" if i % 3 else "Tie", reference=str(i))
        for i in range(count)
    ]
    write_judge_records(records, path)
    return path


def _testset(path: Path) -> Path:
    items = [
        {
            "idx": i,
            "instruction": "Add 2 and 3.",
            "input": "",
            "response1": f"The answer is {i}.",
            "response2": "Paris.",
            "annotator1": 1,
            "annotator2": 1,
            "annotator3": i % 3,
        }
        for i in range(3)
    ]
    path.write_text(json.dumps(items))
    return path


def test_cli_names_the_bad_line_before_training(tmp_path, tiny_llama):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [_flat(_record()), {"instruction": 1}])
    result = CliRunner().invoke(
        app, ["judge", "--base", str(tiny_llama), "--data", str(bad), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "bad.jsonl:2" in result.output
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_lora_judge_is_saved_merged_and_evaluated(tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM

    from trainer.judges.training import JudgeTrainingArguments, train_judge

    out = tmp_path / "judge"
    args = JudgeTrainingArguments(
        base_model=tiny_llama,
        data=_training_data(tmp_path / "data.jsonl"),
        output_dir=out,
        lora=True,
        lora_rank=4,
        learning_rate=1e-3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=2,
        eval_testset=_testset(tmp_path / "testset.json"),
    )
    report = train_judge(args)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not list(out.glob("checkpoint-*"))
    merged = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not merged.state_dict()[name].equal(base.state_dict()[name])
    assert report.eval_metrics is not None and report.eval_metrics["n"] == 3
    saved = json.loads((out / "judge_training.json").read_text())
    assert saved["eval"]["consistency"] is not None
    assert saved["filter"]["kept"] == 24
    assert saved["train"]["world_size"] == 1


def test_the_verdict_weighted_loss_is_the_plain_loss_at_weight_one_and_counts_the_verdict():
    from types import SimpleNamespace

    import torch

    from trainer.judges.training import verdict_weighted_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5, 6], [-100, -100, -100, 7, 8, -100]])
    outputs = SimpleNamespace(logits=logits)
    token_loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
    )
    plain = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert verdict_weighted_loss(1.0)(outputs, labels) == pytest.approx(plain.item())
    verdicts = token_loss[0, 1] + token_loss[1, 2]  # the first target token of each example
    expected = (token_loss.sum() + 9 * verdicts) / 6
    assert verdict_weighted_loss(10.0)(outputs, labels) == pytest.approx(expected.item())
    assert verdict_weighted_loss(10.0)(outputs, labels, num_items_in_batch=12) == pytest.approx(
        expected.item() / 2
    )


def test_a_packaged_adapter_is_fp16_and_a_rank_cut_is_the_best_approximation(tmp_path, tiny_llama):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from trainer.judges.training import package_adapter

    def load():
        return AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True)

    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(load(), config).save_pretrained(tmp_path / "adapter")
    name = "model.layers.0.mlp.down_proj.weight"
    base = load().state_dict()[name]

    def update(adapter_dir: Path) -> torch.Tensor:
        merged = PeftModel.from_pretrained(load(), adapter_dir).merge_and_unload()
        return (merged.state_dict()[name] - base).double()

    trained = update(tmp_path / "adapter")
    u, s, vh = torch.linalg.svd(trained)
    best_rank_2 = (u[:, :2] * s[:2]) @ vh[:2]
    full = package_adapter(tmp_path / "adapter", tmp_path / "full")
    package_adapter(tmp_path / "adapter", tmp_path / "cut", rank=2)
    assert {t.dtype for t in load_file(str(full)).values()} == {torch.float16}
    assert json.loads((tmp_path / "cut" / "adapter_config.json").read_text())["r"] == 2
    scale = trained.abs().max()
    assert (update(tmp_path / "full") - trained).abs().max() < 1e-2 * scale
    assert (update(tmp_path / "cut") - best_rank_2).abs().max() < 1e-2 * scale
    assert (best_rank_2 - trained).abs().max() > 0.1 * scale  # the cut did change the update


@pytest.mark.slow
def test_two_cpu_processes_with_zero2_train_on_different_shards(tmp_path, tiny_llama):
    """`torchrun --nproc_per_node 2` (gloo) with the repo's ZeRO-2 config, through the CLI."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "judge"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--master_port", str(29500 + os.getpid() % 1000)),
        *("--no-python", str(Path(sys.executable).with_name("pandalm-train"))),
        *("judge", "--base", str(tiny_llama)),
        *("--data", str(_training_data(tmp_path / "data.jsonl"))),
        *("--out", str(out), "--deepspeed", str(REPO / "trainer/deepspeed/zero2.json")),
        *("--batch-size", "2", "--gradient-accumulation", "1", "--max-steps", "3"),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = [
        {
            int(i)
            for line in (out / "examples" / f"rank-{rank}.txt").read_text().split("\n")
            for i in line.split()
        }
        for rank in (0, 1)
    ]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    report = json.loads((out / "judge_training.json").read_text())
    assert report["train"]["world_size"] == 2
    assert report["train"]["deepspeed_zero_stage"] == 2
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True)
    name = "model.layers.0.mlp.up_proj.weight"
    assert not model.state_dict()[name].equal(base.state_dict()[name])


# --- synthetic seed-task data ---------------------------------------------------------------


def test_synthetic_records_have_known_verdicts_and_respects_the_exclusion(tmp_path):
    from trainer.judges.synthetic import build_synthetic_records, load_seed_tasks

    tasks_file = _write_jsonl(
        tmp_path / "seeds.jsonl",
        [
            {
                "instruction": f"Task {i}: describe item {i}.",
                "instances": [
                    {
                        "input": "",
                        "output": f"Item {i} is a fine and useful thing to have at home, really.",
                    }
                ],
            }
            for i in range(4)
        ],
    )
    tasks = load_seed_tasks(tasks_file)
    records = build_synthetic_records(tasks, seed=1, exclude=["Task 0: describe item 0."])
    assert {r.instruction for r in records} == {f"Task {i}: describe item {i}." for i in (1, 2, 3)}
    assert filter_judge_records(records) == records  # valid, consistent, no repeats
    for record in records:
        good = record.reference
        if record.result == "1":
            assert record.response1 == good and record.response2 != good
        elif record.result == "2":
            assert record.response2 == good and record.response1 != good
    assert {r.result for r in records} == {"1", "2", "Tie"}
    again = build_synthetic_records(tasks, seed=1, exclude=["Task 0: describe item 0."])
    assert again == records  # seeded


def test_synthetic_records_from_the_alpaca_seed_tasks(shared_data, tmp_path):
    out = tmp_path / "mini.jsonl"
    testset = shared_data / "pandalm" / "testset-dev.json"
    result = CliRunner().invoke(
        app,
        [
            "judge-data",
            "--seed-tasks",
            str(shared_data / "alpaca" / "seed_tasks.jsonl"),
            "--exclude-testset",
            str(testset),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    records = load_judge_records(out)
    assert len(records) > 1000
    test_instructions = {item["instruction"].strip() for item in json.loads(testset.read_text())}
    assert not {r.instruction for r in records} & test_instructions
    assert filter_judge_records(records) == records
