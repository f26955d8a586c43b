"""`pandalm-judge compare` as a user runs it: output lines, bad input, resume after a kill."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from judge.cli import app

runner = CliRunner()


def _write_pairs(path: Path, count: int) -> list[dict]:
    records = [
        {
            "instruction": f"Add {i} and {i + 1}.",
            "input": "" if i % 2 else f"numbers {i}, {i + 1}",
            "response1": str(2 * i + 1),
            "response2": f"The sum is {2 * i}.",
            "id": i,
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_compare_writes_verdicts_and_keeps_extra_fields(tmp_path: Path, tiny_llama: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    records = _write_pairs(pairs, 5)
    out = tmp_path / "out.jsonl"
    cache = tmp_path / "cache.sqlite"
    args = ["compare", str(pairs), "-o", str(out), "--judge", f"hf:{tiny_llama}"]
    result = runner.invoke(app, [*args, "--mode", "score", "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    assert "consistency rate" in result.output
    lines = _lines(out)
    assert [line["id"] for line in lines] == [r["id"] for r in records]
    for line in lines:
        assert line["verdict"] in ("1", "2", "Tie")
        assert [o["order"] for o in line["orders"]] == ["12", "21"]
        forward, backward = (o["probabilities"] for o in line["orders"])
        for verdict in ("1", "2", "Tie"):
            assert line["probabilities"][verdict] == pytest.approx(
                (forward[verdict] + backward[verdict]) / 2
            )

    one = tmp_path / "one.jsonl"
    result = runner.invoke(
        app,
        [
            "compare",
            str(pairs),
            "-o",
            str(one),
            "--judge",
            f"hf:{tiny_llama}",
            "--one-order",
            "--mode",
            "generate",
            "--max-new-tokens",
            "4",
            "--no-cache",
        ],
    )
    assert result.exit_code == 0, result.output
    for line in _lines(one):
        assert line["consistent"] is None and len(line["orders"]) == 1
        assert {"reason", "reference"} <= set(line)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"instruction": "a", "input": "", "response1": "x", "response2": "y"}\n'
            '{"instruction": "a", "input": "", "response1": "x"}\n',
            "pairs.jsonl:2: field 'response2' is missing",
        ),
        (
            '{"instruction": "a", "input": 3, "response1": "x", "response2": "y"}\n',
            "pairs.jsonl:1: field 'input' must be a string, not int",
        ),
        (
            '{"instruction": "a", "input": "", "response1": "x", "response2": "y"}\n{oops\n',
            "pairs.jsonl:2: invalid JSON",
        ),
    ],
)
def test_bad_pairs_file_exits_with_one_clear_line(
    tmp_path: Path, content: str, message: str
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(content)
    out = tmp_path / "out.jsonl"
    out.write_text("earlier results\n")
    result = runner.invoke(app, ["compare", str(pairs), "-o", str(out)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert out.read_text() == "earlier results\n"


def test_an_error_keeps_square_brackets_of_its_file_name(tmp_path: Path) -> None:
    """rich would swallow `[set]` as markup; errors are printed escaped."""
    pairs = tmp_path / "pairs[set].jsonl"
    pairs.write_text("{oops\n")
    result = runner.invoke(app, ["compare", str(pairs), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 2
    assert "pairs[set].jsonl:1: invalid JSON" in " ".join(result.output.split())


def test_bad_judge_specs_exit_cleanly(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    _write_pairs(pairs, 1)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"\0" * 64)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there
    for spec, message in [
        ("vllm:gpt-4", "unknown judge spec 'vllm:gpt-4'"),
        ("openai:gpt-4", "judge spec 'openai:gpt-4': 'gpt-4' is not an http(s) URL"),
        (f"gguf:{broken}", "broken.gguf: cannot load a gguf judge"),
        (f"openai:http://127.0.0.1:{port}/v1", f"{port}/v1: cannot load a openai judge (no judge"),
    ]:
        result = runner.invoke(
            app, ["compare", str(pairs), "-o", str(tmp_path / "o.jsonl"), "--judge", spec]
        )
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())


def test_killed_compare_resumes_without_recomputing(tmp_path: Path, tiny_llama: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    _write_pairs(pairs, 160)
    judge = f"hf:{tiny_llama}?batch=16"
    common = ["--judge", judge, "--mode", "generate", "--max-new-tokens", "24"]
    out = tmp_path / "out.jsonl"
    cache = tmp_path / "cache.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "judge",
        "compare",
        str(pairs),
        "-o",
        str(out),
        "--cache",
        str(cache),
        *common,
    ]
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 8:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    with out.open("a") as handle:
        handle.write('{"torn": ')  # a line cut in half by the kill
    written = len(_lines_prefix(out))
    assert 8 <= written < 160

    resumed = runner.invoke(
        app, ["compare", str(pairs), "-o", str(out), "--cache", str(cache), *common]
    )
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming: {written} of 160" in resumed.output
    assert f"{160 - written} pairs judged" in resumed.output

    reference = tmp_path / "reference.jsonl"
    fresh = runner.invoke(app, ["compare", str(pairs), "-o", str(reference), "--no-cache", *common])
    assert fresh.exit_code == 0, fresh.output
    assert _lines(out) == _lines(reference)


def _lines_prefix(path: Path) -> list[str]:
    """Complete lines only (a torn last line is left out)."""
    return path.read_text().split("\n")[:-1]


def test_the_shared_progress_bar_shows_count_and_detail() -> None:
    from rich.console import Console

    from common.cli import progress_bar

    out = Console(record=True, width=120, force_terminal=False)
    with progress_bar(out, detail=True) as progress:
        task = progress.add_task("runs", total=4, detail="epoch 1.00 loss 0.5000")
        progress.advance(task, 3)
    text = out.export_text()
    assert "runs" in text and "3/4" in text and "epoch 1.00 loss 0.5000" in text
