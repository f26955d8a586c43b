"""Rules as judges (`rule:length[?band=X]`, `rule:length-repetition[?band=X]`): pointwise,
instant, reading no meaning. They are the baselines every judge is reported against
(judge.metrics.versus_rules): a learned judge that cannot beat them has learned nothing a
one-line rule does not know.

The higher score wins; when the two scores are within `band` of the larger one
(|a - b| <= band x max(a, b)) the verdict is Tie. `band = 0` calls a Tie only on equal scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from judge.features import length_repetition_score, length_score
from judge.pointwise import PointwiseJudge, Task

if TYPE_CHECKING:
    from judge.backends import JudgeSpec
    from judge.prompt import Pair

RULES: dict[str, Callable[[str], float]] = {
    "length": length_score,
    "length-repetition": length_repetition_score,
}
"""Each rule's response score (judge.features)."""

DEFAULT_BANDS: dict[str, float] = {"length": 0.10, "length-repetition": 0.0}
"""The band a spec without `?band=` gets: the length rule's 10% (judge.metrics' length
baseline), and none for length-repetition (the rule as measured in issue 19)."""


def rule_verdicts(scores1: np.ndarray, scores2: np.ndarray, band: float) -> list[str]:
    """`1`, `2` or `Tie` for each pair of scores."""
    tie = np.abs(scores1 - scores2) <= band * np.maximum(scores1, scores2)
    pairs = zip(scores1, scores2, tie, strict=True)
    return ["Tie" if t else "1" if a > b else "2" for a, b, t in pairs]


class RuleJudge(PointwiseJudge):
    """One rule with its tie band; its probabilities are one-hot."""

    def __init__(self, rule: str, band: float) -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}: use {' or '.join(RULES)}")
        if not 0 <= band < 1:
            raise ValueError(f"band must be in [0, 1), got {band}")
        self.rule, self.band = rule, band
        self.identity = f"rule:{rule}?band={band}"

    def score(self, task: Task, response: str) -> float:
        return RULES[self.rule](response)

    def tie_gap(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """What the band bounds: |a - b| / max(a, b), the verdict being Tie up to `band`."""
        top = np.maximum(first, second)
        return np.abs(first - second) / np.where(top > 0, top, 1.0)

    def pair_probabilities(
        self, first: np.ndarray, second: np.ndarray, pairs: Sequence[Pair]
    ) -> np.ndarray:
        index = {"1": 0, "2": 1, "Tie": 2}
        rows = np.zeros((len(first), 3))
        for row, verdict in enumerate(rule_verdicts(first, second, self.band)):
            rows[row, index[verdict]] = 1.0
        return rows


def from_spec(spec: JudgeSpec) -> RuleJudge:
    """The judge a `rule:NAME[?band=X]` spec names."""
    name = str(spec.path)
    return RuleJudge(name, float(spec.options.get("band", DEFAULT_BANDS.get(name, 0.0))))
