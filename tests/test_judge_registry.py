"""The judge backend registry: a kind registered here is parsed, loaded, judged through
`PairJudge`, run by `pandalm-judge compare` and carried into an offline bundle without any other
change; unknown kinds and options fail with the same messages as before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import judge.backends
from agent.bundle import MODELS_PLACEHOLDER, plan_models
from judge.backends import (
    BACKENDS,
    BackendKind,
    JudgeSpec,
    Location,
    SpecError,
    load_backend,
    parse_spec,
    register,
)
from judge.cli import app as judge_app
from judge.engine import PairJudge
from judge.models import BUILTIN_GGUF_NAME
from judge.prompt import Pair
from tests.doubles import PlantedTokenBackend


def _load_keyword(spec: JudgeSpec) -> PlantedTokenBackend:
    """The kind's loader: the planted-token double, its token read from the spec's file."""
    token = Path(spec.path).read_text().strip()
    return PlantedTokenBackend(token=token, weight=int(spec.options.get("weight", 5)))


@pytest.fixture
def keyword_kind(monkeypatch: pytest.MonkeyPatch) -> BackendKind:
    """The `keyword:PATH[?weight=N]` kind, registered the way a new backend module would be."""
    monkeypatch.setattr(judge.backends, "BACKENDS", dict(BACKENDS))  # undone after the test
    return register(
        BackendKind(
            "keyword", Location.FILE, _load_keyword, form="keyword:PATH",
            options={"weight": int}, file_label="keyword",
        )
    )  # fmt: skip


@pytest.fixture
def keyword_file(tmp_path: Path) -> Path:
    path = tmp_path / "kw.txt"
    path.write_text("PLANTED\n")
    return path


def test_a_registered_kind_is_parsed_and_judged(keyword_kind: BackendKind, keyword_file: Path):
    spec = parse_spec(f"keyword:{keyword_file}?weight=7")
    assert (spec.kind, spec.path, spec.options) == ("keyword", keyword_file, {"weight": 7})
    assert spec.backend is keyword_kind and not spec.pointwise
    pairs = [Pair("Say it.", "", "plain", "PLANTED text"), Pair("Say it.", "", "PLANTED", "no")]
    judged = PairJudge(load_backend(spec), mode="score").judge(pairs)
    assert [j.verdict for j in judged] == ["2", "1"]
    assert all(j.consistent for j in judged)  # the swapped order was mapped back


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("keyword:{file}?beams=4", "unknown option 'beams' for keyword"),
        ("keyword:{file}?weight=heavy", "option 'weight' wants a number"),
        ("keyword:{folder}/missing.txt", "no keyword file at"),
        ("vllm:gpt", r"unknown judge spec 'vllm:gpt': use builtin, .*keyword"),
    ],
)
def test_a_registered_kind_refuses_bad_specs(
    keyword_kind: BackendKind, keyword_file: Path, spec: str, error: str
) -> None:
    with pytest.raises(SpecError, match=error):
        parse_spec(spec.format(file=keyword_file, folder=keyword_file.parent))


def test_pandalm_judge_compare_runs_a_registered_kind(
    keyword_kind: BackendKind, keyword_file: Path, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps(
            {"instruction": "Say it.", "input": "", "response1": "PLANTED", "response2": "x"}
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    spec = f"keyword:{keyword_file}"
    args = ["compare", str(pairs), "-o", str(out), "--judge", spec, "--no-cache"]
    result = CliRunner().invoke(judge_app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["verdict"] == "1"  # generate mode: not pointwise


def test_a_registered_kind_travels_in_a_bundle(
    keyword_kind: BackendKind,
    keyword_file: Path,
    fake_home: Path,
) -> None:
    plan = plan_models(f"keyword:{keyword_file}?weight=3")
    assert plan.copies == [
        (fake_home / "models" / BUILTIN_GGUF_NAME, BUILTIN_GGUF_NAME),  # the builtin base model
        (keyword_file, "judge/kw.txt"),
    ]
    assert plan.judge_spec == f"keyword:{MODELS_PLACEHOLDER}/judge/kw.txt?weight=3"


def test_importing_the_registry_loads_no_model_library() -> None:
    code = (
        "import sys, judge.backends; "
        "print([m for m in ('llama_cpp', 'torch', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reference_decoding_is_refused_in_one_line_by_a_kind_without_beam_search(
    tmp_path: Path,
) -> None:
    """The registry says which kinds beam-search; a served judge is refused before any request."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"instruction": "Say hi.", "input": "", "response1": "hi", "response2": "yo"})
    )
    for spec in ("openai:http://127.0.0.1:9/v1", f"gguf:{pairs}"):
        result = CliRunner().invoke(
            judge_app,
            ["compare", str(pairs), "--judge", spec, "--mode", "generate", "--reference-decoding",
             "-o", str(tmp_path / "out.jsonl")],
        )  # fmt: skip
        assert result.exit_code == 2, result.output
        assert "--reference-decoding uses beam search, which needs an hf: judge" in result.output
