"""Candidate training on a tiny random LLaMA: the grid reaches the Trainer, checkpoints per epoch,
retention, resume after a kill, LoRA and QLoRA, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback
from typer.testing import CliRunner

from common.space import PARAMETERS, load_space, parse_space, plan_training_runs
from trainer.candidates import (
    OPTIM_NAMES,
    CandidateTrainingArguments,
    SettingsError,
    build_trainer,
    find_checkpoints,
    load_tokenizer,
    train_candidates,
    training_examples,
)
from trainer.cli import app
from trainer.data import InstructionRecord, tokenize_for_training
from trainer.generate import generate_responses

REPO = Path(__file__).resolve().parents[1]
RECORDS = [
    InstructionRecord(f"Add {a} and {b}.", "", str(a + b)) for a in range(4) for b in range(4)
]
STEPS_PER_EPOCH = 4  # 16 records, batch 4


def make_args(out: Path, base: Path, **settings) -> CandidateTrainingArguments:
    settings = {"max_length": 64, "per_device_train_batch_size": 4, **settings}
    return CandidateTrainingArguments(output_dir=out, base_model=base, **settings)


def grid(epochs: str = "[1, 2, 3]", extra: str = "") -> list:
    toml = f'[grid]\noptimizer="adamw"\nlearning_rate=1e-3\nscheduler="cosine"\nepochs={epochs}\n'
    return list(parse_space(toml + extra).configs)


def expected_lr(scheduler: str, peak: float, step: int, total: int) -> float:
    warmup = math.ceil(0.03 * total)
    if step < warmup:
        return peak * step / warmup
    progress = (step - warmup) / (total - warmup)
    if scheduler == "linear":
        return peak * (1 - progress)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def test_every_grid_dimension_reaches_optimizer_and_scheduler(
    tiny_llama: Path, tmp_path: Path
) -> None:
    args = make_args(tmp_path, tiny_llama)
    tokenizer = load_tokenizer(tiny_llama)
    data = tokenize_for_training(RECORDS, tokenizer, args.max_length)
    runs = plan_training_runs(load_space().configs)
    assert len(runs) == 16
    optimizers = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}
    for run in runs:
        trainer = build_trainer(run, data, tokenizer, args)
        assert trainer.args.num_train_epochs == run.epochs == 5
        trainer.create_optimizer_and_scheduler(num_training_steps=100)
        assert type(trainer.optimizer) is optimizers[run.params["optimizer"]]
        seen = {}
        for step in range(100):
            seen[step] = trainer.optimizer.param_groups[0]["lr"]
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
        for step in (0, 2, 3, 30, 50, 80, 99):
            want = expected_lr(run.params["scheduler"], run.params["learning_rate"], step, 100)
            assert seen[step] == pytest.approx(want, rel=1e-6, abs=1e-15), (run.params, step)


def test_batches_the_trainer_sees_carry_loss_only_on_responses(
    tiny_llama: Path, tmp_path: Path
) -> None:
    tokenizer = load_tokenizer(tiny_llama)
    data = tokenize_for_training(RECORDS, tokenizer, 64)
    (run,) = plan_training_runs(grid("1"))
    trainer = build_trainer(run, data, tokenizer, make_args(tmp_path, tiny_llama))
    batch = next(iter(trainer.get_train_dataloader()))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert (mask == 0).any()  # padded to a multiple of 8
    assert (labels[mask == 0] == -100).all()
    for row_ids, row_mask, row_labels in zip(ids, mask, labels, strict=True):
        answer = tokenizer.decode(row_labels[row_labels != -100])
        assert answer.endswith("</s>") and answer[:-4].isdigit()  # the sum and EOS, no prompt
        assert tokenizer.decode(row_ids[row_mask == 1]).startswith("Below is an instruction")


def test_data_fraction_takes_nested_subsets_and_max_steps_caps_an_epoch(
    tiny_llama: Path, tmp_path: Path
) -> None:
    data = tokenize_for_training(RECORDS, load_tokenizer(tiny_llama), 64)
    configs = grid("1", "data_fraction=[0.25, 0.5, 1.0]")
    runs = {run.get("data_fraction"): run for run in plan_training_runs(configs)}
    args = make_args(tmp_path, tiny_llama)
    subsets = {f: training_examples(data, run, args) for f, run in runs.items()}
    assert [len(subsets[f]) for f in (0.25, 0.5, 1.0)] == [4, 8, 16]
    assert subsets[0.5][:4] == subsets[0.25] and subsets[1.0][:8] == subsets[0.5]
    capped = make_args(tmp_path, tiny_llama, max_steps_per_epoch=3)
    assert len(training_examples(data, runs[1.0], capped)) == 12


def _files(checkpoint: Path) -> set[str]:
    return {path.name for path in checkpoint.iterdir()}


def _dtypes(checkpoint: Path) -> set[torch.dtype]:
    return {tensor.dtype for tensor in load_file(checkpoint / "model.safetensors").values()}


class SavedFiles(TrainerCallback):
    """The files of each checkpoint as the Trainer has just written it."""

    def __init__(self) -> None:
        self.seen: dict[int, set[str]] = {}

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.seen[state.global_step] = _files(path)


def test_one_checkpoint_per_epoch_maps_to_configs_and_keeps_only_weights(
    tiny_llama: Path, tmp_path: Path
) -> None:
    configs = grid()
    saved = SavedFiles()
    report = train_candidates(configs, RECORDS, make_args(tmp_path, tiny_llama), [saved])
    assert len(report.runs_trained) == 1 and report.examples == 16
    assert [(c.epoch, c.global_step) for c in report.checkpoints] == [(1, 4), (2, 8), (3, 12)]
    assert [c.config for c in report.checkpoints] == configs
    # epochs 1 and 2 were saved resumable; the last one as the model only (save_only_model)
    assert "optimizer.pt" in saved.seen[4] & saved.seen[8]
    assert "model.safetensors" in saved.seen[12] and "optimizer.pt" not in saved.seen[12]
    for checkpoint in report.checkpoints:
        assert checkpoint.path.name == f"checkpoint-{checkpoint.global_step}"
        files = _files(checkpoint.path)
        assert "model.safetensors" in files and "tokenizer.json" in files
        assert not files & {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
        assert _dtypes(checkpoint.path) == {torch.bfloat16}
        assert json.loads((checkpoint.path / "config.json").read_text())["dtype"] == "bfloat16"

    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    again = train_candidates(configs, RECORDS, make_args(tmp_path, tiny_llama))
    assert again.runs_skipped == report.runs_trained and not again.runs_trained
    assert again.checkpoints == report.checkpoints
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == stamps

    # killed after the last epoch's save but before its manifest: nothing is left to train
    manifest = tmp_path / "runs" / report.runs_trained[0] / "run.json"
    manifest.write_text(manifest.read_text().replace('"finished": true', '"finished": false'))
    finished = train_candidates(configs, RECORDS, make_args(tmp_path, tiny_llama))
    assert finished.runs_trained == report.runs_trained
    assert finished.checkpoints == report.checkpoints
    assert json.loads(manifest.read_text())["finished"]
    untouched = {p: t for p, t in stamps.items() if p != manifest and p.is_file()}
    assert untouched == {p: p.stat().st_mtime_ns for p in untouched}

    with pytest.raises(SettingsError, match="seed: 42 there, 7 now"):
        train_candidates(configs, RECORDS, make_args(tmp_path, tiny_llama, seed=7))
    with pytest.raises(SettingsError, match="data_sha256"):
        train_candidates(configs, RECORDS[:8], make_args(tmp_path, tiny_llama))
    longer = train_candidates(grid("[1, 2, 3, 4]"), RECORDS, make_args(tmp_path, tiny_llama))
    assert longer.runs_skipped == report.runs_trained and len(longer.runs_trained) == 1
    assert longer.checkpoints[:3] == report.checkpoints  # a config is trained once per directory
    assert (longer.checkpoints[3].epoch, longer.checkpoints[3].global_step) == (4, 16)
    assert len(list(tmp_path.rglob("checkpoint-*"))) == 4  # the new run keeps only its epoch 4


def test_resumable_retention_keeps_the_last_optimizer_state(
    tiny_llama: Path, tmp_path: Path
) -> None:
    args = make_args(tmp_path, tiny_llama, retention="resumable")
    first, second = train_candidates(grid("[1, 2]"), RECORDS, args).checkpoints
    assert "optimizer.pt" not in _files(first.path)
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= _files(second.path)
    assert _dtypes(first.path) == {torch.bfloat16} and _dtypes(second.path) == {torch.float32}


def _lr_log(checkpoint: Path) -> dict[int, float]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return {
        entry["step"]: entry["learning_rate"] for entry in state["log_history"] if "loss" in entry
    }


def test_schedule_horizon_is_the_run_or_the_config(tiny_llama: Path, tmp_path: Path) -> None:
    configs = grid("[1, 3]")
    over_run = train_candidates(configs, RECORDS, make_args(tmp_path / "run", tiny_llama))
    per_config = train_candidates(
        configs, RECORDS, make_args(tmp_path / "config", tiny_llama, schedule_horizon="config")
    )
    assert len(over_run.runs_trained) == 1 and len(per_config.runs_trained) == 2
    epoch_one = {c.config.params["epochs"]: c for c in per_config.checkpoints}[1]
    shared = over_run.checkpoints[0]
    assert shared.config == epoch_one.config and shared.global_step == epoch_one.global_step == 4
    # the last step of epoch 1: early in a 12-step cosine, the end of a 4-step one
    assert _lr_log(shared.path)[4] == pytest.approx(expected_lr("cosine", 1e-3, 3, 12))
    assert _lr_log(epoch_one.path)[4] == pytest.approx(expected_lr("cosine", 1e-3, 3, 4))
    assert _lr_log(epoch_one.path)[4] < 0.3 * _lr_log(shared.path)[4]
    # the config horizon keeps no checkpoint that stands for no config
    assert len(list((tmp_path / "config").rglob("checkpoint-*"))) == 2


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
import torch
from transformers import TrainerCallback
sys.path.insert(0, {tests!r})
from test_trainer_candidates import RECORDS, grid, make_args
from trainer.candidates import train_candidates

class KillInEpochTwo(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5:
            os.kill(os.getpid(), signal.SIGKILL)

torch.set_num_threads(1)
train_candidates(grid(), RECORDS, make_args(Path({out!r}), Path({base!r})), [KillInEpochTwo()])
"""


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_finished_epoch(
    tiny_llama: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    script = KILLED_RUN.format(tests=str(REPO / "tests"), out=str(out), base=str(tiny_llama))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, check=False)
    assert killed.returncode == -9
    (run_dir,) = (out / "runs").iterdir()
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-4"]
    assert not json.loads((run_dir / "run.json").read_text())["finished"]
    (run_dir / "checkpoint-6").mkdir()  # a save cut short by a kill: no trainer_state.json
    (run_dir / "checkpoint-6" / "config.json").write_text("{}")
    epoch_one = run_dir / "checkpoint-4" / "trainer_state.json"  # the weights become bf16 later
    before = epoch_one.stat().st_mtime_ns, epoch_one.read_bytes()
    assert {"optimizer.pt", "scheduler.pt"} <= _files(run_dir / "checkpoint-4")
    assert _dtypes(run_dir / "checkpoint-4") == {torch.float32}  # exact weights to resume from

    resumed = train_candidates(grid(), RECORDS, make_args(out, tiny_llama))
    assert resumed.runs_trained == [run_dir.name]
    assert (epoch_one.stat().st_mtime_ns, epoch_one.read_bytes()) == before
    assert not (run_dir / "checkpoint-6").exists()
    assert sorted(_lr_log(resumed.checkpoints[-1].path)) == list(range(1, 13))

    uninterrupted = train_candidates(grid(), RECORDS, make_args(tmp_path / "once", tiny_llama))
    for resumed_ckpt, once_ckpt in zip(resumed.checkpoints, uninterrupted.checkpoints, strict=True):
        assert _dtypes(resumed_ckpt.path) == {torch.bfloat16}
        a = load_file(resumed_ckpt.path / "model.safetensors")
        b = load_file(once_ckpt.path / "model.safetensors")
        assert all(torch.equal(a[name], b[name]) for name in b)


def test_lora_and_qlora_train_adapters_that_generate(tiny_llama: Path, tmp_path: Path) -> None:
    from bitsandbytes.nn import Linear4bit

    configs = grid("1", 'finetune=["lora", "qlora"]\nlora_rank=4')
    args = make_args(tmp_path, tiny_llama)
    runs = plan_training_runs(configs)
    tokenizer = load_tokenizer(tiny_llama)
    data = tokenize_for_training(RECORDS, tokenizer, args.max_length)
    qlora_model = build_trainer(runs[1], data, tokenizer, args).model
    assert any(isinstance(module, Linear4bit) for module in qlora_model.modules())
    trainable = [name for name, p in qlora_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)

    report = train_candidates(configs, RECORDS, args)
    assert [c.config.get("finetune") for c in report.checkpoints] == ["lora", "qlora"]
    for checkpoint in report.checkpoints:
        files = _files(checkpoint.path)
        assert "adapter_model.safetensors" in files and "model.safetensors" not in files
        assert json.loads((checkpoint.path / "adapter_config.json").read_text())["r"] == 4
        adapter = load_file(checkpoint.path / "adapter_model.safetensors")
        assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in adapter.items())
    out = tmp_path / "responses.jsonl"
    items = [InstructionRecord("Add 1 and 2.", "", "3")]
    assert generate_responses(report.checkpoints, items, out, max_new_tokens=4).generated == 2


def test_cli_trains_candidates_and_prints_a_json_summary(tiny_llama: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.toml"
    space.write_text(
        '[grid]\noptimizer=["sgd", "adamw"]\nlearning_rate=1e-3\nscheduler="linear"\nepochs=[1,2]'
    )
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(asdict(r)) + "\n" for r in RECORDS))
    out = tmp_path / "out"
    command = ["candidates", "--base", str(tiny_llama), "--data", str(data), "--space", str(space)]
    command += ["--out", str(out), "--lora", "--max-steps", "2", "--max-length", "64"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    listed = CliRunner().invoke(app, ["space", "--space", str(space), "--lora", "--json"])
    assert {c["id"] for c in summary["checkpoints"]} == {c["id"] for c in json.loads(listed.stdout)}
    assert {c["global_step"] for c in summary["checkpoints"]} == {2, 4}
    assert len(summary["runs_trained"]) == 2 and summary["truncated"] == 0
    assert {c.config.id for c in find_checkpoints(out)} == {c["id"] for c in summary["checkpoints"]}


def test_bad_data_stops_the_cli_before_any_training(tiny_llama: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 7}\n')
    out = tmp_path / "out"
    command = ["candidates", "--base", str(tiny_llama), "--data", str(data), "--out", str(out)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2
    assert f"{data}:2: field 'output' must be a string, not int" in result.output
    assert not out.exists()
    data.write_text('{"instruction": "a", "output": "b"}\n')
    command[2] = str(tmp_path / "nothing")
    missing = CliRunner().invoke(app, command)
    assert missing.exit_code == 2 and "not a local transformers model directory" in missing.output


def test_lora_on_the_top_layers_only_adapts_those_layers(tiny_llama: Path, tmp_path: Path) -> None:
    (config,) = grid("1", 'finetune=["lora"]\nlora_rank=4')
    args = make_args(tmp_path, tiny_llama, lora_top_layers=1)
    (run,) = plan_training_runs([config])
    tokenizer = load_tokenizer(tiny_llama)
    data = tokenize_for_training(RECORDS, tokenizer, args.max_length)
    model = build_trainer(run, data, tokenizer, args).model
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    # the tiny model has 2 layers: every adapted linear module sits in the last one
    assert trainable and all(".layers.1." in name and "lora_" in name for name in trainable)
    modules = {name.split(".layers.1.")[1].split(".")[1] for name in trainable}
    assert {"q_proj", "down_proj"} <= modules


def test_every_choice_of_the_shared_schema_is_one_the_trainer_can_run() -> None:
    """common/space.py's PARAMETERS is the one list of optimizers and schedulers; the trainer
    maps each to transformers' names (a new choice there must get its mapping here)."""
    from transformers import SchedulerType
    from transformers.training_args import OptimizerNames

    assert set(OPTIM_NAMES) == set(PARAMETERS["optimizer"].choices)
    assert {OptimizerNames(name) for name in OPTIM_NAMES.values()}
    assert {SchedulerType(name) for name in PARAMETERS["scheduler"].choices}


def test_training_on_request_stops_early_and_continues_bit_for_bit(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """`wanted` trains a run only up to the epoch asked for, on the full run's schedule; a later
    request continues from there and ends with the weights of an uninterrupted run."""
    configs = grid()  # one run, epochs 1-3
    by_epoch = {c.params["epochs"]: c for c in configs}
    out = tmp_path / "asked"
    first = train_candidates(configs, RECORDS, make_args(out, tiny_llama), wanted=[by_epoch[1]])
    assert first.epochs_trained == 1
    assert [c.epoch for c in first.checkpoints] == [1]
    (run_dir,) = (out / "runs").iterdir()
    assert not json.loads((run_dir / "run.json").read_text())["finished"]
    # epoch 1 of the 12-step schedule, not the end of a 4-step one
    assert _lr_log(first.checkpoints[0].path)[4] == pytest.approx(
        expected_lr("cosine", 1e-3, 3, 12)
    )
    again = train_candidates(configs, RECORDS, make_args(out, tiny_llama), wanted=[by_epoch[1]])
    assert again.epochs_trained == 0 and again.runs_skipped == [run_dir.name]
    rest = train_candidates(configs, RECORDS, make_args(out, tiny_llama), wanted=[by_epoch[3]])
    assert rest.epochs_trained == 2
    assert [c.epoch for c in rest.checkpoints] == [1, 2, 3]
    assert json.loads((run_dir / "run.json").read_text())["finished"]

    once = train_candidates(configs, RECORDS, make_args(tmp_path / "once", tiny_llama))
    assert once.epochs_trained == 3
    for asked, uninterrupted in zip(rest.checkpoints, once.checkpoints, strict=True):
        a = load_file(asked.path / "model.safetensors")
        b = load_file(uninterrupted.path / "model.safetensors")
        assert all(torch.equal(a[name], b[name]) for name in b)
