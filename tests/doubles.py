"""Test doubles, used only by tests: a site judge with a planted preference, an in-process
Flower grid."""

from __future__ import annotations

import copy
import zlib
from collections.abc import Iterator, Sequence

from flwr.app import Context, Error, Message, RecordDict

from coordinator.flower_internals import TaskIdentity
from judge.engine import OrderJudgment, Pair, PairJudgment


class PlantedPreferenceJudge:
    """Test double for the site judge: the planted config wins every item, others tie.

    It stands in for the PandaLM judge so that federated tests know the right answer. With
    `tie_share`, that share of the instructions (by a hash, so it differs between sites' data)
    is a Tie even for the planted config, which makes sites' tallies differ.
    """

    def __init__(self, planted_id: str, tie_share: float = 0.0) -> None:
        self.planted_id = planted_id
        self.tie_share = tie_share

    def judge_comparison(
        self, a_id: str, b_id: str, pairs: Sequence[Pair]
    ) -> Iterator[PairJudgment]:
        verdict = "1" if a_id == self.planted_id else "2" if b_id == self.planted_id else "Tie"
        for pair in pairs:
            tie = zlib.crc32(pair.instruction.encode()) / 2**32 < self.tie_share
            order = OrderJudgment("Tie" if tie else verdict, reason="planted", reference="")
            yield PairJudgment(order.verdict, order, order)


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
