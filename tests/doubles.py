"""Test doubles, used only by tests: a site judge with a planted preference."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from judge.engine import OrderJudgment, Pair, PairJudgment


class PlantedPreferenceJudge:
    """Test double for the site judge: the planted config wins every item, others tie.

    It stands in for the PandaLM judge so that federated tests know the right answer.
    """

    def __init__(self, planted_id: str) -> None:
        self.planted_id = planted_id

    def judge_comparison(
        self, a_id: str, b_id: str, pairs: Sequence[Pair]
    ) -> Iterator[PairJudgment]:
        verdict = "1" if a_id == self.planted_id else "2" if b_id == self.planted_id else "Tie"
        for _ in pairs:
            order = OrderJudgment(verdict, reason="planted", reference="")
            yield PairJudgment(verdict, order, order)
