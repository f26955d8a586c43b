"""Export to GGUF: the llama.cpp model judges like the transformers model it came from."""

from __future__ import annotations

import gc

import pytest
from typer.testing import CliRunner

from judge.backends import load_backend
from judge.backends.base import GenerationSettings
from judge.engine import PairJudge
from judge.export import ExportError, export_gguf
from judge.prompt import Pair
from trainer.cli import app

PAIRS = [
    Pair("What is the capital of France?", "", "Paris.", "The answer is 42."),
    Pair("Add 2 and 3.", "", "5", "Hallo."),
    Pair("Translate hello into German.", "hello", "Hallo.", "Paris"),
]
# Largest difference allowed between a verdict's score-mode probability under transformers
# (fp32) and under llama.cpp, per export type.
TOLERANCE = {"f16": 0.01, "q8_0": 0.05}


def _scores(spec: str) -> list[dict[str, float]]:
    judged = PairJudge(load_backend(spec), "score", both_orders=False).judge(PAIRS)
    return [judgment.forward.probabilities for judgment in judged]


def _greedy_verdicts(spec: str) -> list[str]:
    """The first line of each greedy evaluation (where PandaLM writes its verdict)."""
    backend = load_backend(spec)
    texts = backend.generate([p.prompt() for p in PAIRS], GenerationSettings(max_new_tokens=4))
    del backend
    gc.collect()
    return [text.split("\n", 1)[0] for text in texts]


def _assert_same_judge(model_dir, gguf, quant):
    hf_scores, gguf_scores = _scores(f"hf:{model_dir}"), _scores(f"gguf:{gguf}?threads=1")
    for expected, got in zip(hf_scores, gguf_scores, strict=True):
        for verdict, probability in expected.items():
            assert got[verdict] == pytest.approx(probability, abs=TOLERANCE[quant])
        margin = sorted(expected.values())[-1] - sorted(expected.values())[-2]
        if margin > 2 * TOLERANCE[quant]:  # a near-tie may flip within the tolerance
            assert max(got, key=got.get) == max(expected, key=expected.get)


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_tiny_llama_round_trip(tiny_llama, tmp_path, quant):
    out = export_gguf(tiny_llama, tmp_path / f"tiny-{quant}.gguf", quant, threads=1)
    _assert_same_judge(tiny_llama, out, quant)
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_q4_k_m_is_smaller_and_loads(tiny_llama, tmp_path):
    q8 = export_gguf(tiny_llama, tmp_path / "q8.gguf", "q8_0", threads=1)
    q4 = export_gguf(tiny_llama, tmp_path / "q4.gguf", "q4_k_m", threads=1)
    assert q4.stat().st_size < q8.stat().st_size
    assert len(_scores(f"gguf:{q4}?threads=1")) == len(PAIRS)


def test_cli_export_and_refusals(tiny_llama, tmp_path):
    out = tmp_path / "judge.gguf"
    args = ["export", "--model", str(tiny_llama), "--to", "gguf", "--quant", "f16"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"GGUF"
    (tmp_path / "notllama").mkdir()
    (tmp_path / "notllama" / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(ExportError, match="not LLaMA-family"):
        export_gguf(tmp_path / "notllama", tmp_path / "x.gguf")
    result = CliRunner().invoke(app, ["export", "--model", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2 and "no config.json" in result.output


@pytest.mark.slow
def test_builtin_smollm2_round_trip(tmp_path):
    from judge.models import ModelNotFoundError, builtin_base_hf_dir

    try:
        base = builtin_base_hf_dir()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    for quant in ("f16", "q8_0"):
        out = export_gguf(base, tmp_path / f"smollm2-{quant}.gguf", quant, threads=2)
        _assert_same_judge(base, out, quant)
    # A random tiny model's greedy text hangs on near-ties; SmolLM2's is decisive.
    assert _greedy_verdicts(f"gguf:{out}?threads=2") == _greedy_verdicts(f"hf:{base}")
