"""The `openai:` judge against a real llama-cpp-python server process (`llama_cpp.server`)
serving the tiny GGUF on loopback: the same verdicts and probabilities as the in-process `gguf:`
backend on the same model file, concurrent requests, the judgment cache."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.processes import free_port
from judge.backends import SpecError, load_backend, parse_spec
from judge.backends.base import GenerationSettings
from judge.backends.openai import EndpointError, OpenAICompletionsBackend, completions_url
from judge.cache import JudgmentCache
from judge.engine import PairJudge
from judge.prompt import Pair

pytestmark = pytest.mark.slow

PAIRS = [
    Pair("What is the capital of France?", "", "Paris.", "The answer is 42."),
    Pair("Add 2 and 3.", "", "5", "Hallo."),
    Pair("Translate hello into German.", "hello", "Hallo.", "Paris"),
]
TOLERANCE = 0.02  # largest difference allowed from the gguf: backend's probabilities


@pytest.fixture(scope="module")
def server(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` on the tiny GGUF; yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("judge-server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(tiny_gguf)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    command += ["--n_threads", "1", "--n_threads_batch", "1", "--model_alias", "tiny-judge"]
    command += ["--interrupt_requests", "false"]  # else a new request cuts a stream short
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer in 90 s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def in_process(tiny_gguf: Path) -> Iterator:
    backend = load_backend(f"gguf:{tiny_gguf}?threads=1")
    yield backend
    del backend
    gc.collect()


def _probabilities(judgments) -> list[dict[str, float]]:
    return [o.probabilities for j in judgments for o in (j.forward, j.backward)]


@pytest.mark.parametrize("scoring", ["auto", "top"])
def test_score_mode_matches_the_gguf_backend(server, in_process, scoring: str) -> None:
    backend = load_backend(f"openai:{server}?scoring={scoring}")
    assert backend.model == "tiny-judge" and backend.identity.startswith("openai:")
    served = PairJudge(backend, "score").judge(PAIRS)
    local = PairJudge(in_process, "score").judge(PAIRS)
    assert backend.scoring in ("echo", "top")
    for got, expected in zip(_probabilities(served), _probabilities(local), strict=True):
        for verdict, probability in expected.items():
            assert got[verdict] == pytest.approx(probability, abs=TOLERANCE)
    assert [j.verdict for j in served] == [j.verdict for j in local]


def test_echo_scoring_where_the_server_gets_it_right(server, in_process) -> None:
    """`echo` scores `Tie` (several tokens here) over all its tokens; where the server's echo is
    off, `auto` must not have chosen it."""
    auto = load_backend(f"openai:{server}")
    echo = load_backend(f"openai:{server}?scoring=echo")
    prompts = [p.prompt() for p in PAIRS]
    expected = in_process.score(prompts, ["1", "2", "Tie"])
    echoed = echo.score(prompts, ["1", "2", "Tie"])
    auto.score(prompts[:1], ["1"])
    echo_right = all(
        abs(a - b) < 0.01
        for row, want in zip(echoed, expected, strict=True)
        for a, b in zip(row, want, strict=True)
    )
    assert (auto.scoring == "echo") == echo_right


def test_generate_mode_gives_the_same_verdicts(server, in_process) -> None:
    prompts = [p.prompt(swapped) for p in PAIRS for swapped in (False, True)]
    settings = GenerationSettings(max_new_tokens=12)
    backend = load_backend(f"openai:{server}?concurrency=3")
    served = backend.generate(prompts, settings)
    local = in_process.generate(prompts, settings)
    assert served == local
    assert any(text.strip() for text in served)
    with pytest.raises(ValueError, match="beam search is not available"):
        backend.generate(prompts[:1], GenerationSettings.reference())


def test_judgments_are_cached_and_requests_run_concurrently(server, tmp_path: Path) -> None:
    spec = f"openai:{server}?model=tiny-judge&concurrency=4"
    cache = JudgmentCache(tmp_path / "cache.sqlite")
    backend = load_backend(spec)
    first = PairJudge(backend, "generate", GenerationSettings(max_new_tokens=6), cache).judge(PAIRS)

    offline = load_backend(spec)

    def refuse(*args, **kwargs):
        raise AssertionError("a cached judgment went to the server again")

    offline._post = offline._generate_one = refuse  # test double at the edge: no requests
    again = PairJudge(offline, "generate", GenerationSettings(max_new_tokens=6), cache).judge(PAIRS)
    assert again == first

    in_flight, peak = 0, 0
    original = backend._post

    def counting(body):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return original(body)
        finally:
            in_flight -= 1

    backend._post = counting
    backend.score([p.prompt(s) for p in PAIRS for s in (False, True)], ["1", "2", "Tie"])
    assert peak > 1


def test_the_model_and_the_tokenizer_are_the_servers(server, in_process) -> None:
    backend = load_backend(f"openai:{server}")
    text = PAIRS[0].prompt()
    assert backend.count_tokens(text) == in_process.count_tokens(text)
    with pytest.raises(SpecError, match=r"serves \['tiny-judge'\], not 'pandalm-7b'"):
        load_backend(f"openai:{server}?model=pandalm-7b")


def test_bad_specs_and_unreachable_servers() -> None:
    with pytest.raises(SpecError, match="'gpt' is not an http"):
        parse_spec("openai:gpt")
    with pytest.raises(SpecError, match="unknown option 'beams' for openai"):
        parse_spec("openai:http://127.0.0.1:8000/v1?beams=4")
    port = free_port()  # nothing listens there
    with pytest.raises(SpecError, match=rf"127\.0\.0\.1:{port}/v1: cannot load a openai judge"):
        load_backend(f"openai:http://127.0.0.1:{port}/v1")
    with pytest.raises(SpecError, match="scoring must be one of"):
        load_backend(f"openai:http://127.0.0.1:{port}/v1?scoring=best")
    assert completions_url("http://h:1") == "http://h:1/v1/completions"
    assert completions_url("http://h:1/v1/") == "http://h:1/v1/completions"
    assert completions_url("http://h:1/api/v1/completions") == "http://h:1/api/v1/completions"


def test_a_server_without_logprobs_is_refused_in_score_mode(server) -> None:
    backend = OpenAICompletionsBackend(server, scoring="top")
    backend._post = lambda body: {"choices": [{"text": "1", "logprobs": None}]}  # edge double
    with pytest.raises(EndpointError, match="gives no token log-probabilities"):
        backend.score(["x"], ["1"])
