"""Test doubles, used only by tests: a judge backend that prefers a planted token (with the
generation step that plants it), an in-process Flower grid."""

from __future__ import annotations

import copy
import json
import os
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict

from agent.config import SiteConfig
from agent.worker import ComparisonJudge, JudgeFactory, LocalJudge
from coordinator.flower_internals import TaskIdentity
from judge.backends.base import GenerationSettings

PLANTED_TOKEN = "[planted-best]"
"""Marks the planted config's responses; the judge double prefers the response that has it."""


def plant_token(responses_file: Path, planted_id: str) -> None:
    """Append PLANTED_TOKEN to each of the planted config's responses (once), as if that config
    answered best; the other configs' responses stay as generated."""
    from trainer.generate import read_responses

    records = read_responses(responses_file)
    marked = 0
    for record in records:
        if record["config_id"] == planted_id and PLANTED_TOKEN not in record["response"]:
            record["response"] = f"{record['response']} {PLANTED_TOKEN}"
            marked += 1
    if marked:
        staged = responses_file.with_suffix(".planting")
        staged.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        os.replace(staged, responses_file)  # a worker killed here keeps a whole file


def planting_generation(planted_id: str) -> Callable:
    """`trainer.generate.generate_responses`, then `plant_token`: tests put it in the real
    one's place (monkeypatch), so the worker's own training and generation run unchanged."""
    from trainer import generate

    real = generate.generate_responses

    def generate_then_plant(checkpoints: Sequence, items: Sequence, out: Path, **settings: Any):
        report = real(checkpoints, items, out, **settings)
        plant_token(out, planted_id)
        return report

    return generate_then_plant


class PlantedTokenBackend:
    """Test double for the judge model (a `JudgeBackend`, under the real `PairJudge`): it reads
    only the prompt's texts and prefers the response that carries `token` (PLANTED_TOKEN), ties
    when both or neither do; the other verdicts score `-weight`.

    `PairJudge` asks for both presentation orders and reconciles them, so a response swap or a
    broken reconciliation on the way shows in the tallies. With `tie_share`, that share of the
    instructions (by a hash, so it differs between sites' data) is a Tie whatever the
    responses, which makes sites' tallies differ.
    """

    def __init__(
        self, tie_share: float = 0.0, token: str = PLANTED_TOKEN, weight: float = 4.0
    ) -> None:
        self.tie_share, self.token, self.weight = tie_share, token, weight
        self.identity = f"test-double:planted-token?token={token}&tie_share={tie_share}&w={weight}"

    def verdict(self, prompt: str) -> str:
        """The verdict for this presentation order: `1` when Response 1 has the token."""
        instruction = prompt.split("### Instruction:\n", 1)[1].split("\n\n###", 1)[0]
        if zlib.crc32(instruction.encode()) / 2**32 < self.tie_share:
            return "Tie"
        responses = prompt.split("### Response 1:\n", 1)[1].split("\n\n### Evaluation:", 1)[0]
        first, second = responses.split("\n\n### Response 2:\n", 1)
        planted = (self.token in first, self.token in second)
        return {(True, False): "1", (False, True): "2"}.get(planted, "Tie")

    def score(self, prompts: list[str], continuations: list[str]) -> list[list[float]]:
        verdicts = [self.verdict(prompt) for prompt in prompts]
        return [[0.0 if c == v else -self.weight for c in continuations] for v in verdicts]

    def generate(self, prompts: list[str], settings: GenerationSettings) -> list[str]:
        return [
            f"{self.verdict(p)}\n\n### Reason: the planted token.\n\n### Reference: -\n"
            for p in prompts
        ]

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def planted_token_judge(tie_share: float = 0.0) -> JudgeFactory:
    """The site's real judge (`LocalJudge`: `PairJudge`, both orders, the judgment cache) on
    the PlantedTokenBackend double."""

    def factory(config: SiteConfig, mode: str) -> LocalJudge:
        return LocalJudge(config, mode, PlantedTokenBackend(tie_share))

    return factory


class SlowJudge:
    """A site judge taking `seconds` per item, as a real judge takes time (so that a test can
    stop a worker mid-judging)."""

    def __init__(self, judge: ComparisonJudge, seconds: float) -> None:
        self.judge, self.seconds = judge, seconds

    def judge_comparison(self, a_id: str, b_id: str, pairs: Sequence) -> Iterator:
        for judgment in self.judge.judge_comparison(a_id, b_id, pairs):
            time.sleep(self.seconds)
            yield judgment


class InProcessGrid:
    """Test double for Flower's Grid: hands each message to the site's real ClientApp in this
    process, keeping one Context per site for the run (as a SuperNode does), and keeps every
    reply as the coordinator received it. `failing` sites raise, as a crashed ClientApp would."""

    def __init__(self, site_configs: dict[int, str], failing: frozenset[int] = frozenset()) -> None:
        self.contexts = {
            node_id: Context(
                run_id=1,
                node_id=node_id,
                node_config={"site-config": path},
                state=RecordDict(),
                run_config={},
            )
            for node_id, path in site_configs.items()
        }
        self.failing = set(failing)
        self.received: list[Message] = []
        # what the ServerApp runtime sets in its process before any message is built
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None):
        from agent.client_app import app

        replies = []
        for message in messages:
            node_id = message.metadata.dst_node_id
            try:
                if node_id in self.failing:
                    raise RuntimeError("site crashed")
                reply = app(copy.deepcopy(message), self.contexts[node_id])  # as if over the wire
            except Exception as exc:
                reply = Message(Error(code=2, reason=str(exc)), reply_to=message)
            self.received.append(reply)
            replies.append(reply)
        return replies
