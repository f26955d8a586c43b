"""Preflight (agent/preflight.py): bad site inputs refused at `pandalm-agent check` and `start`
with file:line:field, one line each, exit 2, nothing started; the worker refusing a run before
it trains, with the protocol code for the cause and the text kept at the site for `status`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from agent.config import load_site_config
from agent.db import SiteRun, open_database
from agent.preflight import disk_estimate, failure_code, site_problems
from agent.site import handle_message
from agent.worker import SiteWorker
from common.protocol import CODE_MEANINGS, COMPARE_MESSAGE, SPACE_MESSAGE, Code, Status
from common.records import InputError
from tests.doubles import planted_token_judge
from tests.test_agent_site import compare_record, space_record, write_site_config

GOOD_TRAIN = {"instruction": "Say hi.", "input": "", "output": "hi"}
GOOD_ITEM = {"instruction": "Say hello.", "input": ""}


def _jsonl(path: Path, records: list[dict | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def _site(folder: Path, base: Path, **tables: dict[str, object]) -> Path:
    """A site with its own (good) data files; `tables` set more, table by table."""
    _jsonl(folder / "train.jsonl", [GOOD_TRAIN] * 50)
    _jsonl(folder / "val.jsonl", [GOOD_ITEM] * 8)
    data = {"train": "train.jsonl", "validation": "val.jsonl", **tables.pop("data", {})}
    return write_site_config(folder, base, settings={"data": data, **tables})


def _run(command: str, config: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(
        __import__("agent.cli", fromlist=["app"]).app, [command, "--config", str(config)]
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


@pytest.fixture
def no_supervisor(monkeypatch: pytest.MonkeyPatch) -> list:
    """`start` records instead of starting processes (nothing may start after a refusal)."""
    started: list = []
    monkeypatch.setattr("agent.supervisor.supervise", lambda site: started.append(site))
    return started


def test_a_good_site_passes_check_and_prints_the_disk_estimate(
    tmp_path: Path, tiny_llama: Path
) -> None:
    code, lines = _run("check", _site(tmp_path, tiny_llama))
    assert code == 0, lines
    assert lines[0].startswith("disk: about ") and "MiB free" in lines[0]
    assert lines[-1] == "site site-a: ready"
    assert not (tmp_path / "site-a-data").exists(), "check leaves nothing behind"


@pytest.mark.parametrize("command", ["check", "start"])
def test_each_bad_input_is_one_line_with_its_file_and_line(
    tmp_path: Path, tiny_llama: Path, no_supervisor: list, command: str
) -> None:
    """A missing GGUF, invalid JSON on line 6 of the validation file and a training record
    missing `output` on line 41: all three found at once, one line each, nothing started."""
    config = _site(tmp_path, tiny_llama, judge={"spec": f"gguf:{tmp_path / 'judge.gguf'}"})
    _jsonl(tmp_path / "val.jsonl", [GOOD_ITEM] * 5 + ['{"instruction": "x",'] + [GOOD_ITEM] * 2)
    records: list[dict | str] = [GOOD_TRAIN] * 50
    records[40] = {"instruction": "Say hi.", "input": ""}
    _jsonl(tmp_path / "train.jsonl", records)

    code, lines = _run(command, config)
    assert code == 2
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [
        f"error: {tmp_path / 'train.jsonl'}:41: field 'output' is missing",
        f"error: {tmp_path / 'val.jsonl'}:6: invalid JSON (Expecting property name enclosed in "
        "double quotes)",
        f"error: {config}: [judge].spec: judge spec 'gguf:{tmp_path / 'judge.gguf'}': no GGUF "
        f"file at {tmp_path / 'judge.gguf'}",
    ]
    assert no_supervisor == [] and not (tmp_path / "site-a-data").exists(), "nothing started"


def test_an_unwritable_data_dir_is_one_line_naming_it(
    tmp_path: Path, tiny_llama: Path, no_supervisor: list
) -> None:
    """Measured before: a 1,034-line traceback ending "unable to open database file", exit 1.
    A data_dir below a file cannot be made, even by root (a chmod would not stop root)."""
    (tmp_path / "blocker").write_text("a file, not a folder")
    config = _site(tmp_path, tiny_llama, site={"data_dir": "blocker/site-data"})
    code, lines = _run("start", config)
    assert code == 2 and no_supervisor == []
    assert lines[-1] == (
        f"error: {tmp_path / 'blocker/site-data'}: the data directory cannot be written (Not a "
        "directory)"
    )
    assert sum(line.startswith("error:") for line in lines) == 1


def test_a_missing_base_model_and_a_missing_data_file(
    tmp_path: Path, tiny_llama: Path, no_supervisor: list
) -> None:
    config = _site(tmp_path, tmp_path / "no-model")
    (tmp_path / "val.jsonl").unlink()  # removed after the config was written and checked
    problems = site_problems(_loaded(config, tmp_path))
    assert [(p.code, p.text) for p in problems] == [
        (Code.BAD_DATA, f"{config}: [data].validation: no file val.jsonl"),
        (
            Code.BAD_BASE_MODEL,
            f"{config}: [model].base: {tmp_path / 'no-model'} is not a local transformers model "
            "directory (no config.json)",
        ),
    ]


def _loaded(config: Path, folder: Path):
    """The site config read while its validation file was there (a running agent's view)."""
    (folder / "val.jsonl").write_text(json.dumps(GOOD_ITEM) + "\n")
    site = load_site_config(config)
    (folder / "val.jsonl").unlink()
    return site


def test_disk_estimate_grows_with_the_space_and_refuses_when_it_does_not_fit(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_agent_site import CONFIGS

    site = load_site_config(_site(tmp_path, tiny_llama))
    weights = sum(f.stat().st_size for f in tiny_llama.glob("*.safetensors"))
    one, four = disk_estimate(site), disk_estimate(site, CONFIGS)
    assert one.checkpoint_bytes == weights // 2  # the tiny model is stored in float32
    assert four.needed_bytes == 4 * one.checkpoint_bytes + one.resume_bytes
    usage = type("DiskUsage", (), {"free": four.needed_bytes - 1})  # double of the OS's answer
    monkeypatch.setattr("agent.preflight.shutil.disk_usage", lambda _path: usage)
    [problem] = site_problems(site, CONFIGS)
    assert problem.code == Code.NO_DISK and "not enough disk" in problem.text


def test_failures_while_preparing_get_their_code() -> None:
    assert failure_code(InputError("f:3: bad"), Code.TRAINING_FAILED) == Code.BAD_DATA
    full = OSError(28, "No space left on device")
    assert failure_code(full, Code.GENERATION_FAILED) == Code.NO_DISK
    assert failure_code(RuntimeError("nan loss"), Code.TRAINING_FAILED) == Code.TRAINING_FAILED
    assert set(CODE_MEANINGS) == set(Code), "every code has its meaning"


def test_the_worker_refuses_a_bad_validation_file_before_training(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured before: found only after all configs were trained, sent as TRAINING_FAILED,
    `status` said "failed". Now: BAD_DATA before any training, the line in `status`, and the
    run prepared again once the space comes again after the fix."""
    config_path = _site(tmp_path, tiny_llama)
    config = load_site_config(config_path)
    engine = open_database(config.database_url)
    assert handle_message(engine, SPACE_MESSAGE, space_record())["status"] == Status.OK
    _jsonl(tmp_path / "val.jsonl", [GOOD_ITEM] * 5 + ['{"instruction": "x",'])
    trained: list = []
    monkeypatch.setattr("trainer.candidates.train_candidates", lambda *a, **k: trained.append(a))

    worker = SiteWorker(config, judge_factory=planted_token_judge())
    assert worker.step() and not worker.step()
    assert trained == [], "nothing trained"
    with Session(engine) as session:
        run = session.get(SiteRun, "run-1")
        assert (run.stage, run.error_code) == ("failed", Code.BAD_DATA)
        assert run.error == f"{tmp_path / 'val.jsonl'}:6: invalid JSON (Expecting property " + (
            "name enclosed in double quotes)"
        )
    reply = handle_message(engine, COMPARE_MESSAGE, compare_record((0, 1)))
    assert (reply["status"], reply["code"]) == (Status.FAILED, Code.BAD_DATA)

    monkeypatch.setenv("COLUMNS", "400")
    code, lines = _run("status", config_path)
    assert code == 0
    [row] = [line for line in lines if "run-1" in line]
    assert "BAD_DATA: the site's training or validation data is invalid" in row
    assert any("val.jsonl:6: invalid JSON" in line for line in lines)

    _jsonl(tmp_path / "val.jsonl", [GOOD_ITEM] * 8)  # fixed; the coordinator sends the space
    assert handle_message(engine, SPACE_MESSAGE, space_record())["status"] == Status.OK
    with Session(engine) as session:
        run = session.get(SiteRun, "run-1")
        assert (run.stage, run.error_code, run.error) == ("training", 0, "")


def test_record_problems_reads_every_record_of_both_formats(tmp_path: Path) -> None:
    """Every bad record is named (a JSONL file goes on past a bad line), up to a limit; a JSON
    array that does not parse is one problem; an empty file has no records."""
    from common.records import record_problems
    from trainer.data import instruction_record

    lines: list[dict | str] = [GOOD_TRAIN, "[1]", {"instruction": 3, "output": "x"}]
    lines += [{"instruction": "a", "output": ""}] * 30
    jsonl = _jsonl(tmp_path / "t.jsonl", lines)
    problems = record_problems(jsonl, instruction_record, limit=4)
    assert problems == [
        f"{jsonl}:2: expected a JSON object",
        f"{jsonl}:3: field 'instruction' must be a string, not int",
        f"{jsonl}:4: field 'output' is empty",
        f"{jsonl}:5: field 'output' is empty",
        f"{jsonl}: 28 more bad records",
    ]
    array = tmp_path / "t.json"
    array.write_text(json.dumps([GOOD_TRAIN, {"instruction": "a"}]))
    assert record_problems(array, instruction_record) == [f"{array}[1]: field 'output' is missing"]
    array.write_text('[{"instruction": "a",\n]')
    assert record_problems(array, instruction_record) == [
        f"{array}:2: invalid JSON (Expecting property name enclosed in double quotes)"
    ]
    (tmp_path / "empty.jsonl").write_text("\n")
    assert record_problems(tmp_path / "empty.jsonl", instruction_record) == [
        f"{tmp_path / 'empty.jsonl'}: no records"
    ]


def test_agent_start_as_a_process_refuses_in_one_line(tmp_path: Path, tiny_llama: Path) -> None:
    """The measured case on a real process: `pandalm-agent start` with a data_dir it cannot
    write gave a 1,034-line traceback and exit 1; now one line naming the path, exit 2, and no
    worker, SuperNode or guard (their logs would be under the data directory)."""
    import subprocess
    import sys

    (tmp_path / "blocker").write_text("a file, not a folder")
    config = _site(tmp_path, tiny_llama, site={"data_dir": "blocker/site-data"})
    result = subprocess.run(
        [sys.executable, "-m", "agent", "start", "--config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {tmp_path / 'blocker/site-data'}: the data directory cannot be written (Not a "
        "directory)"
    ]
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 2
