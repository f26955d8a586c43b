"""Pointwise judges: each response gets one score of its own, and a pair's p(1), p(2), p(Tie)
come from the two scores (and, for ties, from what the pair shares), so swapping A and B swaps
p(1) and p(2) exactly and both presentation orders always agree. A response is scored once
however many comparisons it enters (`PointwiseJudge.scores` keeps each score in memory).

The kinds: the rule judges (judge/backends/rules.py), `builtin` (judge/backends/builtin.py)
and the reward models (judge/backends/reward.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from judge.cache import JudgmentCache, judgment_key
from judge.prompt import VERDICTS

if TYPE_CHECKING:
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


def user_text(task: Task) -> str:
    """A task as one user turn, for judges that read a chat (the reward models): the
    instruction, and the input after a blank line when there is one."""
    instruction, input = task
    return f"{instruction}\n\n{input}" if input else instruction


def davidson_probabilities(margin: np.ndarray, log_tie: np.ndarray) -> np.ndarray:
    """Rows of p(1), p(2), p(Tie) for margins z = s(A) - s(B) and log tie weights log(nu):
    Davidson's tie extension of Bradley-Terry (JASA 65, 1970), p(1) : p(2) : p(Tie) =
    exp(z/2) : exp(-z/2) : nu, which every pointwise judge with scores uses. Written so that
    (z, nu) and (-z, nu) give p(1) and p(2) swapped bit for bit."""
    top = np.maximum(np.abs(margin) / 2, log_tie)
    first, second, tie = (
        np.exp(margin / 2 - top),
        np.exp(-margin / 2 - top),
        np.exp(log_tie - top),
    )
    total = (first + second) + tie
    return np.column_stack([first / total, second / total, tie / total])


class PointwiseJudge:
    """A judge that scores each response on its own; subclasses say how (`score`) and how two
    scores become verdict probabilities (`pair_probabilities`)."""

    pointwise = True
    identity: str
    persistent = False
    """Whether scores are worth keeping in the judgment cache across runs (a model's are; a
    rule's cost microseconds and live in memory only)."""

    def __init__(self) -> None:
        self.memory: dict[tuple[str, str, str], float] = {}
        self.cache: JudgmentCache | None = None
        self.scored = 0
        """How many responses this judge has scored (the rest came from memory or the cache)."""

    def attach_cache(self, cache: JudgmentCache | None) -> None:
        """Keep scores in `cache` too, when they are worth it (`persistent`)."""
        self.cache = cache if self.persistent else None

    def score(self, task: Task, response: str) -> float:
        raise NotImplementedError

    def pair_probabilities(
        self, first: np.ndarray, second: np.ndarray, pairs: Sequence[Pair]
    ) -> np.ndarray:
        """Rows of p(1), p(2), p(Tie) from each pair's two scores."""
        raise NotImplementedError

    def score_many(self, tasks: Sequence[Task], responses: Sequence[str]) -> list[float]:
        """Scores of responses not yet in memory, all at once: a model judge overrides it to
        run them as batches; the rules score one at a time."""
        pairs = zip(tasks, responses, strict=True)
        return [self.score(task, response) for task, response in pairs]

    def scores(self, tasks: Sequence[Task], responses: Sequence[str]) -> np.ndarray:
        """Each response's score, computed once per (task, response)."""
        keys = [(t[0], t[1], r) for t, r in zip(tasks, responses, strict=True)]
        missing = [key for key in dict.fromkeys(keys) if key not in self.memory]
        if missing and self.cache is not None:
            stored = self.cache.get_many([self._cache_key(key) for key in missing])
            for key in missing:
                if self._cache_key(key) in stored:
                    self.memory[key] = float(stored[self._cache_key(key)]["score"])
            missing = [key for key in missing if key not in self.memory]
        if missing:
            fresh = self.score_many([k[:2] for k in missing], [k[2] for k in missing])
            self.memory.update(zip(missing, fresh, strict=True))
            self.scored += len(missing)
            if self.cache is not None:
                self.cache.put_many(
                    {self._cache_key(k): {"score": v} for k, v in zip(missing, fresh, strict=True)}
                )
        return np.asarray([self.memory[key] for key in keys], dtype=float)

    def _cache_key(self, key: tuple[str, str, str]) -> str:
        return judgment_key(self.identity, "pointwise-score", key[0] + "\n" + key[1], key[2])

    def probabilities(self, pairs: Sequence[Pair]) -> list[dict[str, float]]:
        """p(`1`), p(`2`), p(`Tie`) for each pair as presented (response1 first)."""
        if not pairs:
            return []
        tasks = [(p.instruction, p.input) for p in pairs]
        first = self.scores(tasks, [p.response1 for p in pairs])
        second = self.scores(tasks, [p.response2 for p in pairs])
        rows = self.pair_probabilities(first, second, pairs)
        return [dict(zip(CLASSES, map(float, row), strict=True)) for row in rows]
