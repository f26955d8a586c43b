"""Backends on real models: a tiny random LLaMA (transformers, bitsandbytes), the builtin GGUF."""

from pathlib import Path

import pytest
import torch

from judge.backends import SpecError, load_backend, parse_spec
from judge.backends.base import GenerationSettings
from judge.backends.tokens import PROMPT_END
from judge.engine import PairJudge
from judge.models import ModelNotFoundError, builtin_base_gguf
from judge.prompt import Pair

PAIRS = [
    Pair("Add 2 and 3.", "", "5", "6"),
    Pair("Translate hello into German.", "hello", "Hallo", "The quick brown fox jumps over it."),
    Pair("What is the capital of France?", "", "Paris.", "Paris is the capital of France."),
]
VERDICT_TEXTS = ["1", "2", "Tie"]


def _brute_force_logprob(model, tokenizer, prompt: str, continuation: str) -> float:
    """Sum of log-probabilities of the continuation tokens, one full unpadded forward pass."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    head = tokenizer(PROMPT_END, add_special_tokens=False)["input_ids"]
    tail = tokenizer(PROMPT_END + continuation, add_special_tokens=False)["input_ids"][len(head) :]
    ids = torch.tensor([prompt_ids + tail])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(float(logprobs[len(prompt_ids) - 1 + k, t]) for k, t in enumerate(tail))


def test_hf_score_matches_brute_force_with_left_padding(tiny_llama: Path) -> None:
    backend = load_backend(f"hf:{tiny_llama}?batch=3")
    prompts = [p.prompt() for p in PAIRS]
    lengths = {backend.count_tokens(p) for p in prompts}
    assert len(lengths) == 3, "prompts of different lengths exercise the left padding"
    # "Tie" spans several tokens in the tiny tokenizer, exercising the cached extra steps.
    assert (
        len(backend._tokenize_plain(PROMPT_END + "Tie")) - len(backend._tokenize_plain(PROMPT_END))
        > 1
    )
    scores = backend.score(prompts, VERDICT_TEXTS)
    for prompt, row in zip(prompts, scores, strict=True):
        for continuation, value in zip(VERDICT_TEXTS, row, strict=True):
            expected = _brute_force_logprob(backend.model, backend.tokenizer, prompt, continuation)
            assert value == pytest.approx(expected, abs=1e-4)


def test_hf_batched_generation_equals_one_at_a_time(tiny_llama: Path) -> None:
    prompts = [p.prompt() for p in PAIRS]
    settings = GenerationSettings(max_new_tokens=12)
    batched = load_backend(f"hf:{tiny_llama}?batch=3").generate(prompts, settings)
    single = load_backend(f"hf:{tiny_llama}?batch=1").generate(prompts, settings)
    assert batched == single
    assert any(text.strip() for text in batched)


@pytest.mark.parametrize(
    ("quant", "layer_class"), [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")]
)
def test_bitsandbytes_quantized_judge_scores_on_cpu(
    tiny_llama: Path, quant: str, layer_class: str
) -> None:
    backend = load_backend(f"hf:{tiny_llama}?quant={quant}")
    classes = {type(m).__name__ for m in backend.model.modules()}
    assert layer_class in classes
    judgments = PairJudge(backend, mode="score").judge(PAIRS)
    for judgment in judgments:
        assert judgment.probabilities is not None
        assert sum(judgment.probabilities.values()) == pytest.approx(1.0)
    full = PairJudge(load_backend(f"hf:{tiny_llama}"), mode="score").judge(PAIRS)
    for quantized, exact in zip(judgments, full, strict=True):
        for verdict in VERDICT_TEXTS:
            assert quantized.probabilities[verdict] == pytest.approx(
                exact.probabilities[verdict], abs=0.25
            )


@pytest.fixture(scope="module")
def builtin_gguf() -> Path:
    try:
        return builtin_base_gguf()
    except ModelNotFoundError as exc:
        pytest.skip(f"builtin model not installed (run make setup): {exc}")


def test_llamacpp_prefix_reuse_gives_the_same_scores(builtin_gguf: Path) -> None:
    backend = load_backend(f"gguf:{builtin_gguf}?threads=1")
    prompts = [p.prompt(swapped) for p in PAIRS for swapped in (False, True)]
    reused = backend.score(prompts, VERDICT_TEXTS)
    fresh = []
    for prompt in prompts:
        backend.llm.reset()
        fresh.extend(backend.score([prompt], VERDICT_TEXTS))
    for reused_row, fresh_row in zip(reused, fresh, strict=True):
        assert reused_row == pytest.approx(fresh_row, abs=1e-3)
    # The swapped order shares the header and instruction with the forward order.
    backend.llm.reset()
    backend.score([prompts[0]], VERDICT_TEXTS)
    forward_tokens = backend._tokens(prompts[0])
    swapped_tokens = backend._tokens(prompts[1])
    pairs = zip(forward_tokens, swapped_tokens, strict=False)
    shared = next(i for i, (a, b) in enumerate(pairs) if a != b)
    assert shared > 30


def test_llamacpp_generation_is_deterministic(builtin_gguf: Path) -> None:
    backend = load_backend(f"gguf:{builtin_gguf}?threads=1")
    settings = GenerationSettings(max_new_tokens=16)
    first = backend.generate([PAIRS[0].prompt()], settings)
    backend.llm.reset()
    again = backend.generate([PAIRS[0].prompt()], settings)
    assert first == again and first[0].strip()
    with pytest.raises(ValueError, match="beam search"):
        backend.generate([PAIRS[0].prompt()], GenerationSettings.reference())


def test_the_shipped_builtin_judge_prefers_the_right_answer_in_both_orders() -> None:
    """`builtin` is the packaged judge and `rule:length-repetition` a rule: both pointwise,
    neither needs a model file."""
    for spec in ("builtin", "rule:length-repetition"):
        backend = load_backend(spec)
        assert backend.identity.startswith(spec.partition(":")[0] + ":")
        _prefers_the_answer(backend)


def _prefers_the_answer(backend) -> None:
    pairs = [
        Pair(
            "Explain why the sky is blue.",
            "",
            "Sunlight is scattered by the molecules of the air, and blue light, with its "
            "shorter wavelength, is scattered much more than red light, so the sky looks blue.",
            "blue blue blue blue blue blue",
        ),
    ]
    judged = PairJudge(backend, mode="score").judge(pairs)
    swapped = PairJudge(backend, mode="score").judge(
        [Pair(p.instruction, p.input, p.response2, p.response1) for p in pairs]
    )
    assert [j.verdict for j in judged] == ["1"] and [j.verdict for j in swapped] == ["2"]
    assert all(j.consistent for j in judged + swapped)


def test_spec_errors(tmp_path: Path, tiny_llama: Path) -> None:
    with pytest.raises(SpecError, match="unknown judge spec 'vllm:gpt'"):
        parse_spec("vllm:gpt")
    with pytest.raises(SpecError, match="unknown option 'beams'"):
        parse_spec(f"hf:{tiny_llama}?beams=4")
    with pytest.raises(SpecError, match="no GGUF file"):
        parse_spec(f"gguf:{tmp_path / 'missing.gguf'}")
    with pytest.raises(SpecError, match="not a transformers model directory"):
        parse_spec(f"hf:{tmp_path}")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really")
    with pytest.raises(SpecError, match=r"broken\.gguf: cannot load a gguf judge"):
        load_backend(f"gguf:{broken}")
