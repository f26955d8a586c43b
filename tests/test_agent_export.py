"""A site learns the run's result and exports the chosen model: the result stored, acknowledged
in the ledger and shown by `status`; adapters kept and full fine-tuning weights deleted after
generation; the export of a LoRA winner merged (transformers loads it and generates) and as a
GGUF (llama.cpp loads it); a full fine-tuning winner whose weights were deleted trained again
bit for bit; bad inputs refused in one line, exit status 2."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

import trainer.generate
from agent.cli import app
from agent.config import load_site_config
from agent.db import SiteResult, ledger, open_database
from agent.results import WEIGHT_FILES, disk_use, site_result
from agent.site import handle_message
from agent.worker import SiteWorker, validation_items
from common.protocol import (
    RESULT_MESSAGE,
    SPACE_MESSAGE,
    Code,
    ResultMessage,
    Status,
    encode_result,
)
from common.space import CandidateConfig
from common.tally import Tally
from tests.test_agent_site import CONFIGS, space_record, write_site_config

LORA = CandidateConfig.from_params(
    {
        "optimizer": "adamw",
        "learning_rate": 2e-3,
        "scheduler": "linear",
        "epochs": 1,
        "finetune": "lora",
        "lora_rank": 4,
    }
)
SPACE = [CONFIGS[0], CONFIGS[1], LORA]  # full fine-tuning, epochs 1 and 2 of one run; LoRA
runner = CliRunner()


def result_record(run_key: str, best: int) -> dict:
    return encode_result(
        ResultMessage(
            run_key=run_key,
            best=best,
            ranking=(best, *(i for i in range(len(SPACE)) if i != best)),
            sites=3,
            decided=2,
            tie_breaks=1,
            best_record=(2, 0, 0),
            best_tally=Tally(9, 2, 1, 0, 12),
            baseline=0 if best != 0 else 1,
            versus_baseline=Tally(5, 1, 0, 0, 6),
        )
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path):
    """A site that trained and generated run-1 with keep_weights off; the full fine-tuning
    weights' hashes are taken just before generation deletes them (a spy on the deletion)."""
    folder = tmp_path_factory.mktemp("export-site")
    path = write_site_config(
        folder, tiny_llama, name="site-x", settings={"model": {"keep_weights": False}}
    )
    config = load_site_config(path)
    engine = open_database(config.database_url)
    deleted: dict[str, str] = {}
    original = trainer.generate._delete_weights

    def hash_then_delete(checkpoint) -> None:
        deleted[checkpoint.config.id] = _sha256(checkpoint.path / "model.safetensors")
        original(checkpoint)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer.generate, "_delete_weights", hash_then_delete)
        assert handle_message(engine, SPACE_MESSAGE, space_record("run-1", SPACE))["status"] == 0
        worker = SiteWorker(config)
        while worker.step():
            pass
    return path, config, engine, deleted


def test_adapters_are_kept_and_full_weights_deleted_after_generation(site) -> None:
    _path, config, _engine, deleted = site
    assert set(deleted) == {CONFIGS[0].id, CONFIGS[1].id}
    use = disk_use(config.candidates_dir)
    assert (use.with_weights, use.without_weights) == (1, 2)  # the LoRA adapter alone
    assert 0 < use.bytes < 2 * 2**20


def test_the_weight_patterns_are_the_trainers() -> None:
    from trainer.candidates import WEIGHT_FILES as TRAINER_WEIGHT_FILES

    assert WEIGHT_FILES == TRAINER_WEIGHT_FILES


def test_the_result_is_stored_acknowledged_and_shown(site) -> None:
    path, _config, engine, _deleted = site
    unknown = handle_message(engine, RESULT_MESSAGE, result_record("run-9", 2))
    assert (unknown["status"], unknown["code"]) == (Status.REFUSED, Code.UNKNOWN_RUN)
    forged = {**result_record("run-1", 2), "best": 3}  # past the stored space of 3 configs
    refused = handle_message(engine, RESULT_MESSAGE, forged)
    assert (refused["status"], refused["code"]) == (Status.REFUSED, Code.OUT_OF_RANGE)
    for _ in range(2):  # a resent result is acknowledged again
        assert handle_message(engine, RESULT_MESSAGE, result_record("run-1", 2))["status"] == 0
    changed = handle_message(engine, RESULT_MESSAGE, result_record("run-1", 1))
    assert (changed["status"], changed["code"]) == (Status.REFUSED, Code.RESULT_CHANGED)
    with Session(engine) as session:
        stored = session.get(SiteResult, "run-1")
    assert (stored.best_id, stored.baseline_id) == (LORA.id, CONFIGS[0].id)
    replies = [json.loads(e.content) for e in ledger(engine) if e.message_type == RESULT_MESSAGE]
    assert [(r["status"], r["code"]) for r in replies] == [
        (2, Code.UNKNOWN_RUN), (2, Code.OUT_OF_RANGE), (0, 0), (0, 0), (2, Code.RESULT_CHANGED),
    ]  # fmt: skip
    shown = runner.invoke(app, ["status", "--config", str(path)], env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    assert LORA.id in shown.output and "lora_rank=4" in shown.output
    assert f"vs {CONFIGS[0].id}: 5 wins, 1 ties, 0 losses" in shown.output
    assert "candidates:" in shown.output and "1 checkpoints with weights, 2 without" in shown.output


def test_a_two_site_result_stored_with_sums_is_shown_without_them(site) -> None:
    """A result stored before two-site results withheld their summed counts: `status` still
    reads it, and shows no counts a site could subtract its own from."""
    path, _config, engine, _deleted = site
    handle_message(engine, RESULT_MESSAGE, result_record("run-1", 2))

    def store(message: str) -> None:
        with Session(engine) as session:
            stored = session.get(SiteResult, "run-1")
            stored.message = message
            session.add(stored)
            session.commit()

    with Session(engine) as session:
        sent = session.get(SiteResult, "run-1").message
    try:  # the site is the module's: the later tests read the result as sent
        store(json.dumps({**json.loads(sent), "sites": 2}))
        shown = runner.invoke(app, ["status", "--config", str(path)], env={"COLUMNS": "400"})
    finally:
        store(sent)
    assert shown.exit_code == 0, shown.output
    assert LORA.id in shown.output and "withheld" in shown.output
    assert "5 wins" not in shown.output and "9 wins" not in shown.output


def test_export_merges_the_lora_winner_and_writes_a_gguf(site, tmp_path: Path) -> None:
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, config, engine, _deleted = site
    handle_message(engine, RESULT_MESSAGE, result_record("run-1", 2))
    out = tmp_path / "merged"
    done = runner.invoke(
        app, ["export", "-c", str(path), "--run", "run-1", "--out", str(out), "--merge",
              "--gguf", "f16"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert not any("lora" in name for name, _ in model.named_parameters())
    prompt = validation_items(config)[0].prompt()
    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**encoded, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > encoded["input_ids"].shape[1]

    llama = Llama(model_path=str(out / "model-f16.gguf"), n_ctx=512, n_threads=1, verbose=False)
    completion = llama(prompt, max_tokens=2, temperature=0.0)
    assert completion["usage"]["completion_tokens"] >= 1

    card = (out / "README.md").read_text()
    for expected in ("run-1", LORA.id, "lora_rank | 4", "training examples: 16",
                     "validation items judged: 6", "3 (this site: `site-x`)",
                     "decided by evidence: 2", "margin +0.667"):  # fmt: skip
        assert expected in card, expected


def test_export_of_the_adapter_alone(site, tmp_path: Path) -> None:
    path, _config, engine, _deleted = site
    handle_message(engine, RESULT_MESSAGE, result_record("run-1", 2))
    out = tmp_path / "adapter"
    done = runner.invoke(app, ["export", "-c", str(path), "--run", "run-1", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "trainer_state.json").exists() and "adapter of config" in done.output


def test_a_deleted_full_finetuning_winner_is_trained_again_bit_for_bit(
    site, tmp_path: Path
) -> None:
    """Run 2 has the same space: nothing is trained or generated again, and the coordinator
    chose the epoch-1 checkpoint of the full fine-tuning run, whose weights are gone."""
    path, config, engine, deleted = site
    handle_message(engine, SPACE_MESSAGE, space_record("run-2", SPACE))
    SiteWorker(config).step()
    handle_message(engine, RESULT_MESSAGE, result_record("run-2", 0))
    assert site_result(engine, "run-2").best_id == CONFIGS[0].id
    out = tmp_path / "full"
    done = runner.invoke(app, ["export", "-c", str(path), "--run", "run-2", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "retrained from the run's seed" in done.output
    assert _sha256(out / "model.safetensors") == deleted[CONFIGS[0].id]
    assert "retrained from the run's seed" in (out / "README.md").read_text()


def test_bad_exports_get_one_line_and_exit_2(site, tmp_path: Path) -> None:
    path, _config, engine, _deleted = site
    handle_message(engine, SPACE_MESSAGE, space_record("run-3", SPACE))
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    cases = {
        "no run 'run-7'": ["--run", "run-7", "--out", str(tmp_path / "a")],
        "no result from the coordinator yet": ["--run", "run-3", "--out", str(tmp_path / "b")],
        "not an empty directory": ["--run", "run-1", "--out", str(full)],
        "not one of f16": ["--run", "run-1", "--out", str(tmp_path / "c"), "--gguf", "q2"],
    }
    for message, arguments in cases.items():
        result = runner.invoke(app, ["export", "-c", str(path), *arguments])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_an_export_without_the_space_for_it_is_refused(
    site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _config, engine, _deleted = site
    handle_message(engine, RESULT_MESSAGE, result_record("run-1", 2))
    monkeypatch.setattr("agent.export.free_bytes", lambda _path: 1024)  # a full disk (double)
    out = tmp_path / "nospace"
    result = runner.invoke(app, ["export", "-c", str(path), "--run", "run-1", "--out", str(out)])
    assert result.exit_code == 2 and "not enough free space" in result.output
    assert not out.exists()
