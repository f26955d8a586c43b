"""`reward:` judges on tiny random sequence-classification models built here: a LLaMA-style one
with a chat template and a DeBERTa-v2 one. The DeBERTa-v2 tokenizer needs a sentencepiece model
that cannot be built offline here, so the DeBERTa model reads a BERT-style WordPiece tokenizer
built from a small vocabulary (the pair encoding is the same: [CLS] question [SEP] answer [SEP]).
The served variant runs against RewardServerDouble, a local HTTP test double that speaks vLLM's
`/pooling` and text-embeddings-inference's `/predict` and scores with the same tiny model."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from judge.backends import SpecError, load_backend, parse_spec
from judge.cache import JudgmentCache
from judge.cli import app
from judge.engine import PairJudge
from judge.pointwise import CLASSES
from judge.prompt import Pair
from judge.verdict import argmax_verdict

PAIRS = [
    Pair("Add 2 and 3.", "", "5", "The answer is six, I think."),
    Pair("Translate hello into German.", "hello", "Hallo", "The quick brown fox jumps over it."),
    Pair("What is the capital of France?", "", "Paris.", "Paris is the capital of France."),
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}"
)
TEXTS = [t for p in PAIRS for t in (p.instruction, p.input, p.response1, p.response2)]
WORDS = sorted({w.strip(".,?").lower() for t in TEXTS for w in t.split()} | set("0123456789"))


TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_labels": 1}
"""The tiny reward models' shape: one output, 4 heads (4-bit bitsandbytes needs 64 wide)."""


def _save_tiny(path: Path, tokenizer, model_class: type, config, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    model_class(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_reward(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForSequenceClassification, chat template set."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = CHAT_TEMPLATE
    shape = {**TINY, "num_attention_heads": 4, "num_key_value_heads": 2}
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **shape)
    path = tmp_path_factory.mktemp("llama-reward")
    return _save_tiny(path, tokenizer, LlamaForSequenceClassification, config, seed=1)


@pytest.fixture(scope="module")
def deberta_reward(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DebertaV2ForSequenceClassification with a WordPiece tokenizer."""
    from transformers import BertTokenizerFast, DebertaV2Config, DebertaV2ForSequenceClassification

    path = tmp_path_factory.mktemp("deberta-reward")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (path / "vocab.txt").write_text("\n".join([*specials, *WORDS, ".", ",", "?"]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), model_max_length=128)
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=128,
        num_attention_heads=4,
        **TINY,
    )
    return _save_tiny(path, tokenizer, DebertaV2ForSequenceClassification, config, seed=2)


@pytest.fixture(params=["llama", "deberta"])
def reward_model(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"{request.param}_reward")


def _responses() -> tuple[list[tuple[str, str]], list[str]]:
    tasks = [(p.instruction, p.input) for p in PAIRS for _ in (1, 2)]
    return tasks, [r for p in PAIRS for r in (p.response1, p.response2)]


def test_batched_scores_equal_one_at_a_time(reward_model: Path) -> None:
    tasks, responses = _responses()
    batched = load_backend(f"reward:{reward_model}?batch=4")
    single = load_backend(f"reward:{reward_model}?batch=1")
    lengths = {
        len(batched.scorer._encode([t], [r])["input_ids"][0])
        for t, r in zip(tasks, responses, strict=True)
    }
    assert len(lengths) > 1, "inputs of different lengths exercise the padding"
    assert batched.scorer.chat == (reward_model.name.startswith("llama"))
    np.testing.assert_allclose(
        batched.scores(tasks, responses), single.scores(tasks, responses), atol=1e-4
    )
    assert len(set(np.round(batched.scores(tasks, responses), 6))) > 1


def test_the_chat_template_holds_the_task_and_the_response(llama_reward: Path) -> None:
    judge = load_backend(f"reward:{llama_reward}")
    ids = judge.scorer._encode([("Add 2 and 3.", "now")], ["5"])["input_ids"][0]
    text = judge.scorer.tokenizer.decode(ids)
    assert text == "<s><|user|>\nAdd 2 and 3.\n\nnow</s><|assistant|>\n5</s>"


def test_swapping_the_responses_swaps_the_probabilities_exactly(reward_model: Path) -> None:
    judge = load_backend(f"reward:{reward_model}?band=0.01&scale=0.5")
    swapped = [Pair(p.instruction, p.input, p.response2, p.response1) for p in PAIRS]
    for ahead, behind in zip(judge.probabilities(PAIRS), judge.probabilities(swapped), strict=True):
        assert (ahead["1"], ahead["2"], ahead["Tie"]) == (behind["2"], behind["1"], behind["Tie"])
        assert sum(ahead.values()) == pytest.approx(1.0)
    judgments = PairJudge(judge, mode="score").judge(PAIRS)
    assert all(j.consistent for j in judgments)


def test_a_response_is_scored_once_however_many_comparisons_it_enters(llama_reward) -> None:
    judge = load_backend(f"reward:{llama_reward}")
    seen: list[str] = []
    rewards = judge.scorer.rewards
    judge.scorer.rewards = lambda tasks, responses: (
        seen.extend(responses) or rewards(tasks, responses)
    )
    pair = PAIRS[0]
    PairJudge(judge, mode="score").judge([pair])
    assert sorted(seen) == sorted([pair.response1, pair.response2]) and judge.scored == 2
    PairJudge(judge, mode="score").judge([Pair(pair.instruction, "", pair.response1, "7")])
    assert seen[2:] == ["7"] and judge.scored == 3


def test_scores_outlive_the_process_in_the_judgment_cache(llama_reward, tmp_path) -> None:
    """A restarted site (a fresh judge on the same cache) scores nothing it scored before."""
    cache = JudgmentCache(tmp_path / "cache.sqlite")
    first = load_backend(f"reward:{llama_reward}")
    before = PairJudge(first, mode="score", cache=cache).judge(PAIRS)
    again = load_backend(f"reward:{llama_reward}")
    after = PairJudge(again, mode="score", cache=cache).judge(PAIRS)
    assert first.scored > 0 and again.scored == 0
    assert [j.probabilities for j in after] == [j.probabilities for j in before]
    rule = load_backend("rule:length")
    PairJudge(rule, mode="score", cache=cache).judge(PAIRS)
    assert rule.cache is None  # a rule's scores are not worth a database row


def test_the_band_makes_ties_and_decides_the_argmax() -> None:
    from judge.backends.reward import band_probabilities

    rows = band_probabilities(np.asarray([0.0, 0.3, -0.3, 0.5, 0.51, -2.0]), band=0.5, scale=0.1)
    verdicts = [argmax_verdict(dict(zip(CLASSES, map(float, row), strict=True))) for row in rows]
    assert verdicts == ["Tie", "Tie", "Tie", "Tie", "1", "2"]
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_a_quantized_reward_model_scores_on_cpu(llama_reward: Path, quant: str) -> None:
    try:
        judge = load_backend(f"reward:{llama_reward}?quant={quant}")
        tasks, responses = _responses()
        quantized = judge.scores(tasks, responses)
    except Exception as exc:  # bitsandbytes' CPU support varies by version and build
        pytest.skip(f"bitsandbytes {quant} does not run on this CPU build: {exc}")
    classes = {type(m).__name__ for m in judge.scorer.model.modules()}
    assert {"Linear8bitLt", "Linear4bit"} & classes
    exact = load_backend(f"reward:{llama_reward}").scores(tasks, responses)
    np.testing.assert_allclose(quantized, exact, atol=0.25)


def _planted_testset(path: Path, judge, band: float, count: int = 60) -> tuple[float, float]:
    """A labelled file whose gold verdicts are `judge`'s with a tie band `band`; the band
    interval every fitted band must fall into: (largest gap <= band, smallest gap above it)."""
    rng = np.random.default_rng(0)
    records, gaps = [], []
    for index in range(count):
        task = (f"Question {index % 12}: name a number.", "")
        first, second = (" ".join(rng.choice(WORDS, rng.integers(1, 12))) for _ in (1, 2))
        a, b = judge.scores([task, task], [first, second])
        gap = float(judge.tie_gap(np.asarray([a]), np.asarray([b]))[0])
        label = "Tie" if gap <= band else "1" if a > b else "2"
        gaps.append(gap)
        texts = {"instruction": task[0], "input": "", "response1": first, "response2": second}
        records.append({**texts, "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return max(g for g in gaps if g <= band), min(g for g in gaps if g > band)


@pytest.mark.parametrize("kind", ["reward", "rule"])
def test_calibrate_recovers_a_planted_band(kind: str, llama_reward: Path, tmp_path: Path) -> None:
    spec = f"reward:{llama_reward}" if kind == "reward" else "rule:length"
    judge = load_backend(spec)
    probe = judge.tie_gap(*(judge.scores([("q", "")] * 2, [w, "a b c"]) for w in ("x", "y z")))
    planted = float(np.median(probe)) if kind == "reward" else 0.3
    low, high = _planted_testset(tmp_path / "planted.jsonl", judge, planted)
    args = ["calibrate", "--judge", spec, "--testset", str(tmp_path / "planted.jsonl"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    fitted = json.loads(result.stdout)
    assert low <= fitted["band"] < high
    assert fitted["f1_macro"] == 1.0 and fitted["folds"] == 5 and len(fitted["fold_bands"]) == 5
    assert 0.5 < fitted["f1_macro_out_of_fold"] <= 1.0
    assert (fitted["scale"] is not None) == (kind == "reward")
    assert fitted["spec"].startswith(f"{spec}?band=")
    refit = parse_spec(fitted["spec"])
    assert refit.options["band"] == pytest.approx(fitted["band"], rel=1e-5)
    plain = CliRunner().invoke(app, args[:-1])
    assert plain.exit_code == 0 and plain.stdout.strip().splitlines()[-1] == fitted["spec"]


def test_calibrate_refuses_a_judge_without_a_band(tmp_path: Path) -> None:
    record = {"instruction": "i", "input": "", "response1": "a", "response2": "b", "label": "1"}
    (tmp_path / "t.jsonl").write_text(json.dumps(record) + "\n")
    result = CliRunner().invoke(
        app, ["calibrate", "--judge", "builtin", "--testset", str(tmp_path / "t.jsonl")]
    )
    assert result.exit_code == 2 and "builtin has no band option to calibrate" in result.output


class RewardServerDouble:
    """Test double at the edge: an HTTP server speaking vLLM's `/pooling` (and `/v1/models`) or
    TEI's `/predict` (and `/info`), scoring with a local tiny reward model."""

    def __init__(self, model_dir: Path, api: str) -> None:
        from judge.backends.reward_hf import TransformersRewardModel

        self.model = TransformersRewardModel(model_dir)
        self.api, self.requests, self.fail = api, 0, False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, body: dict | None) -> tuple[int, object]:
        if body is None:
            known = {"/v1/models": {"data": [{"id": "tiny-reward"}]}, "/info": {"model_id": "t"}}
            return (200, known[path]) if path in known else (404, {"error": "no such path"})
        self.requests += 1
        if self.fail:
            return 500, {"error": "model crashed"}
        if self.api == "vllm" and path == "/pooling":
            user, response = (m["content"] for m in body["messages"])
            reward = self.model.rewards([(user, "")], [response])[0]
            return 200, {"object": "list", "data": [{"index": 0, "data": [reward]}]}
        if self.api == "tei" and path == "/predict":
            users, responses = zip(*body["inputs"], strict=True)
            scores = self.model.rewards([(u, "") for u in users], list(responses))
            return 200, [[{"score": s, "label": "LABEL_0"}] for s in scores]
        return 404, {"error": "no such path"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, body: dict | None) -> None:
                status, payload = double.answer(self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # http.server's name
                self._reply(None)

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                self._reply(json.loads(self.rfile.read(length)))

            def log_message(self, *args) -> None:
                pass

        return Handler


@pytest.fixture(params=["vllm", "tei"])
def served(request, llama_reward: Path, deberta_reward: Path) -> Iterator[RewardServerDouble]:
    model = llama_reward if request.param == "vllm" else deberta_reward
    double = RewardServerDouble(model, request.param)
    yield double
    double.server.shutdown()


def test_a_served_reward_model_judges_as_the_local_one(served, llama_reward, deberta_reward):
    local_dir = llama_reward if served.api == "vllm" else deberta_reward
    spec = f"reward:{served.url}?api={served.api}&band=0.01&concurrency=3"
    judge = load_backend(spec)
    assert parse_spec(spec).served and judge.identity.startswith(f"reward:{served.api}:")
    local = load_backend(f"reward:{local_dir}?band=0.01")
    tasks, responses = _responses()
    served_scores = judge.scores(tasks, responses)
    np.testing.assert_allclose(served_scores, local.scores(tasks, responses), atol=1e-4)
    assert served.requests == (len(responses) if served.api == "vllm" else 1)
    for remote, here in zip(judge.probabilities(PAIRS), local.probabilities(PAIRS), strict=True):
        assert remote == pytest.approx(here, abs=1e-4)
    served.fail = True
    with pytest.raises(RuntimeError, match=r"answered HTTP 500: .*model crashed"):
        judge.scores([("new", "")], ["never scored"])


def test_reward_spec_errors(llama_reward: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is not a transformers model directory"):
        parse_spec(f"reward:{tmp_path}")
    with pytest.raises(SpecError, match="option 'api' is for a served model"):
        load_backend(f"reward:{llama_reward}?api=tei")
    with pytest.raises(SpecError, match="option 'quant' is for a model directory only"):
        load_backend("reward:http://127.0.0.1:9?quant=8bit")
    with pytest.raises(
        SpecError, match=r"no reward server answers at http://127\.0\.0\.1:9/v1/models"
    ):
        load_backend("reward:http://127.0.0.1:9")
    with pytest.raises(SpecError, match="api must be one of"):
        load_backend("reward:http://127.0.0.1:9?api=triton")
    with pytest.raises(SpecError, match="option 'band' wants a number"):
        parse_spec(f"reward:{llama_reward}?band=wide")
    two = tmp_path / "two-labels"
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(llama_reward)
    config.num_labels = 2
    from transformers import LlamaForSequenceClassification

    LlamaForSequenceClassification(config).save_pretrained(two)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (two / name).write_bytes((llama_reward / name).read_bytes())
    with pytest.raises(SpecError, match=r"config.json: num_labels is 2; a reward model has one"):
        load_backend(f"reward:{two}")


def test_a_site_keeps_a_served_reward_model_on_its_network_and_bundles_a_local_one(
    llama_reward: Path, tmp_path: Path
) -> None:
    from agent.bundle import plan_models
    from agent.config import SiteConfigError, check_judge_endpoint, load_site_config
    from tests.test_agent_site import write_site_config

    def site(spec: str, **judge: object) -> object:
        settings = {"judge": {"spec": spec, **judge}}
        return load_site_config(write_site_config(tmp_path, tmp_path, settings=settings))

    check_judge_endpoint(site("reward:http://127.0.0.1:8000?api=tei"))
    with pytest.raises(SiteConfigError, match=r"the judge host 8\.8\.8\.8 is at 8\.8\.8\.8"):
        check_judge_endpoint(site("reward:https://8.8.8.8"))
    check_judge_endpoint(site("reward:https://8.8.8.8", allow_remote=True))
    plan = plan_models(f"reward:{llama_reward}?band=0.2")
    assert (llama_reward, f"judge/{llama_reward.name}") in plan.copies
    assert plan.judge_spec.endswith(f"/judge/{llama_reward.name}?band=0.2")
    assert plan_models("reward:http://10.0.0.5:8000").judge_spec == "reward:http://10.0.0.5:8000"


@pytest.mark.slow
def test_a_site_with_a_reward_judge_answers_a_real_flower_run(
    llama_reward: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    """One site, its real worker judging with `reward:`: it says its judge is pointwise, so
    `auto` runs round robin, and the run completes on the site's reward-model verdicts."""
    from sqlmodel import Session, select

    from agent.config import load_site_config
    from agent.db import ItemJudgment
    from agent.db import open_database as open_site_database
    from agent.supervisor import worker_command
    from common.processes import free_port, stop_process
    from coordinator.config import load_federation_config
    from coordinator.db import FederatedRun
    from coordinator.db import open_database as open_coordinator_database
    from coordinator.launch import follow_run, start_superlink, submit_run, write_connection
    from tests.test_flower_integration import Site, _federation_toml

    (tmp_path / "space.toml").write_text(
        '[[grid]]\noptimizer = "sgd"\nlearning_rate = 2e-6\nscheduler = "linear"\nepochs = [1, 2]\n'
    )
    superlink = f"127.0.0.1:{free_port()}"
    config = load_federation_config(
        _federation_toml(tmp_path, "reward-run", superlink, 1, selection_mode="auto")
    )
    link = start_superlink(config.superlink, config.state_dir)
    write_connection(config.superlink, config.state_dir)
    site = Site(tmp_path, tiny_llama, 1, superlink)
    site.config.source.write_text(
        site.config.source.read_text().replace(
            '\nspec = "builtin"', f'\nspec = "reward:{llama_reward}"'
        )
    )
    site.config = load_site_config(site.config.source)
    assert site.config.judge.spec == f"reward:{llama_reward}"
    try:
        site.start_supernode()
        site.worker = site._spawn(worker_command(site.config), "worker.log")
        status = follow_run(
            config, submit_run(config.state_dir, config.run_config()), live_view=False
        )
        assert status["status"] == "finished:completed", status.get("status-details")
        with Session(open_coordinator_database(config.database_url)) as session:
            run = session.get(FederatedRun, "reward-run")
            assert run.selection_mode == "round-robin" and run.best_index in (0, 1)
        with Session(open_site_database(site.config.database_url)) as session:
            assert session.exec(select(ItemJudgment)).all()
    finally:
        site.stop()
        stop_process(link)
