"""The builtin judge (`builtin`): a Bradley-Terry score on response measures that mean the same
thing on every dataset (judge/features.py), with Davidson's tie parameter.

Each response gets a score s = w . (features / scale), a Bradley-Terry strength (R. A. Bradley
and M. E. Terry, "Rank analysis of incomplete block designs", Biometrika 39, 1952). For a pair
with margin z = s(A) - s(B),
Davidson's extension of the Bradley-Terry model (R. R. Davidson, "On extending the
Bradley-Terry model to accommodate ties in paired comparison experiments", JASA 65, 1970) gives
    p(1) : p(2) : p(Tie) = exp(z/2) : exp(-z/2) : nu,
with a tie weight nu = exp(a + b * r**16) that grows with r, the two responses' matching-character
ratio (judge.features.pair_similarity): human annotators call a tie when two answers say nearly
the same thing. Swapping A and B negates z and leaves r, so p(1) and p(2) swap exactly.

Trained on human preference pairs by `pandalm-train builtin-judge` (trainer/judges/builtin.py),
which also measures it leave-one-source-out; see the model card beside the weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from judge.features import RESPONSE_FEATURES, pair_similarity, response_features
from judge.models import ModelNotFoundError
from judge.pointwise import PointwiseJudge, Task, davidson_probabilities

if TYPE_CHECKING:
    from judge.backends import JudgeSpec
    from judge.prompt import Pair

BUILTIN_HEAD = Path(__file__).parent.parent / "builtin_judge" / "head.json"
TIE_SHARPNESS = 16
"""r**16: a tie weight that stays near its floor until the responses are nearly the same."""


def tie_inputs(similarity: np.ndarray) -> np.ndarray:
    """The tie model's inputs from `pair_similarity` values r: 1 and r**TIE_SHARPNESS."""
    return np.column_stack([np.ones(len(similarity)), similarity**TIE_SHARPNESS])


@dataclass(frozen=True)
class BuiltinModel:
    """The fitted numbers: which measures, their scale, their weights, the tie model."""

    features: tuple[str, ...]
    scale: np.ndarray
    weights: np.ndarray
    tie: np.ndarray
    """(a, b) of log nu = a + b * r**TIE_SHARPNESS."""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.features) - set(RESPONSE_FEATURES))
        if unknown:
            raise ValueError(f"unknown response features {unknown}")

    @property
    def columns(self) -> list[int]:
        return [RESPONSE_FEATURES.index(name) for name in self.features]

    @classmethod
    def load(cls, path: Path) -> BuiltinModel:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            tuple(data["features"]),
            np.asarray(data["scale"], dtype=float),
            np.asarray(data["weights"], dtype=float),
            np.asarray(data["tie"], dtype=float),
            data.get("meta", {}),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "features": list(self.features),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "tie": self.tie.tolist(),
            "meta": self.meta,
        }
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

    def score_rows(self, measures: np.ndarray) -> np.ndarray:
        """s(response) for rows of judge.features.response_features (all columns)."""
        return (measures[:, self.columns] / self.scale) @ self.weights

    def probabilities(self, margin: np.ndarray, similarity: np.ndarray) -> np.ndarray:
        return davidson_probabilities(margin, tie_inputs(similarity) @ self.tie)


class BuiltinJudge(PointwiseJudge):
    """The `builtin` spec: a BuiltinModel on judge.features' measures."""

    def __init__(self, model: BuiltinModel, model_id: str) -> None:
        super().__init__()
        self.model = model
        self.identity = f"builtin:{model_id}"

    def score(self, task: Task, response: str) -> float:
        row = np.asarray([response_features(task[0], task[1], response)])
        return float(self.model.score_rows(row)[0])

    def pair_probabilities(
        self, first: np.ndarray, second: np.ndarray, pairs: Sequence[Pair]
    ) -> np.ndarray:
        similarity = np.asarray([pair_similarity(p.response1, p.response2) for p in pairs])
        return self.model.probabilities(first - second, similarity)


def load_builtin(path: Path = BUILTIN_HEAD) -> BuiltinJudge:
    """The shipped builtin judge (or one trained elsewhere, from its head.json)."""
    if not path.is_file():
        raise ModelNotFoundError(f"the builtin judge's weights are missing: {path}")
    model_id = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return BuiltinJudge(BuiltinModel.load(path), model_id)


def from_spec(spec: JudgeSpec) -> BuiltinJudge:
    """The `builtin` judge (judge.backends' registry loads it through this)."""
    return load_builtin(Path(spec.path))
