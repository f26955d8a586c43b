"""Pointwise judges: each response gets one score of its own, and a pair's p(1), p(2), p(Tie)
come from the two scores (and, for ties, from what the pair shares), so swapping A and B swaps
p(1) and p(2) exactly and both presentation orders always agree. A response is scored once
however many comparisons it enters (`PointwiseJudge.scores` keeps each score in memory).

The kinds: the rule judges (judge/backends/rules.py) and the builtin judge
(judge/backends/builtin.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from judge.prompt import VERDICTS

if TYPE_CHECKING:
    from judge.cache import JudgmentCache
    from judge.prompt import Pair

CLASSES = VERDICTS
"""The order of a probability row: judge.prompt's verdicts."""

GENERATE_UNSUPPORTED = (
    "this judge is a pointwise scorer: it gives verdict probabilities (--mode score) but "
    "cannot write PandaLM's reason and reference; for generate mode use a PandaLM judge "
    "(gguf:PATH or hf:PATH)"
)

Task = tuple[str, str]
"""A response's task: (instruction, input)."""


class PointwiseJudge:
    """A judge that scores each response on its own; subclasses say how (`score`) and how two
    scores become verdict probabilities (`pair_probabilities`)."""

    pointwise = True
    identity: str

    def __init__(self) -> None:
        self.memory: dict[tuple[str, str, str], float] = {}
        self.scored = 0
        """How many responses this judge has scored (the rest came from memory)."""

    def attach_cache(self, cache: JudgmentCache | None) -> None:
        """Scores cost microseconds and live in memory; the judgment cache is not needed."""

    def score(self, task: Task, response: str) -> float:
        raise NotImplementedError

    def pair_probabilities(
        self, first: np.ndarray, second: np.ndarray, pairs: Sequence[Pair]
    ) -> np.ndarray:
        """Rows of p(1), p(2), p(Tie) from each pair's two scores."""
        raise NotImplementedError

    def scores(self, tasks: Sequence[Task], responses: Sequence[str]) -> np.ndarray:
        """Each response's score, computed once per (task, response)."""
        values = []
        for (instruction, input), response in zip(tasks, responses, strict=True):
            key = (instruction, input, response)
            if key not in self.memory:
                self.memory[key] = self.score((instruction, input), response)
                self.scored += 1
            values.append(self.memory[key])
        return np.asarray(values, dtype=float)

    def probabilities(self, pairs: Sequence[Pair]) -> list[dict[str, float]]:
        """p(`1`), p(`2`), p(`Tie`) for each pair as presented (response1 first)."""
        if not pairs:
            return []
        tasks = [(p.instruction, p.input) for p in pairs]
        first = self.scores(tasks, [p.response1 for p in pairs])
        second = self.scores(tasks, [p.response2 for p in pairs])
        rows = self.pair_probabilities(first, second, pairs)
        return [dict(zip(CLASSES, map(float, row), strict=True)) for row in rows]
