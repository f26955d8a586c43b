"""Reward models as pointwise judges (`reward:PATH` or `reward:URL`, `?band=X&scale=S`).

A reward model (a transformers sequence-classification model with one output: Skywork-Reward,
InternLM2-reward, OpenAssistant's DeBERTa rewards) gives each response one score s. For a pair
with gap d = s(A) - s(B), the probabilities are Davidson's tie model with the tie weight fixed
by the band:
    p(1) : p(2) : p(Tie) = exp(d / 2S) : exp(-d / 2S) : exp(band / 2S),
so the most probable verdict is Tie exactly when |d| <= band, and the scale S only sets how
sure the probabilities are (S = 1 reads a reward gap as a Bradley-Terry log-odds, as such
models are trained). Swapping A and B negates d, so p(1) and p(2) swap bit for bit.
`pandalm-judge calibrate` fits band and scale on a labelled file (judge/calibrate.py).

The model runs in this process (judge/backends/reward_hf.py) or on a server on the site's
network (judge/backends/reward_http.py: vLLM's `/pooling` or text-embeddings-inference's
`/predict`); either scores a batch of responses in one go, each response once (judge/pointwise.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from judge.pointwise import PointwiseJudge, Task, davidson_probabilities

if TYPE_CHECKING:
    from judge.backends import JudgeSpec
    from judge.prompt import Pair

SERVED_ONLY = ("api", "model", "concurrency", "timeout")
LOCAL_ONLY = ("dtype", "batch", "quant")


class RewardScorer(Protocol):
    """Scores responses with a reward model, a batch at a time."""

    identity: str

    def rewards(self, tasks: Sequence[Task], responses: Sequence[str]) -> list[float]: ...


def band_probabilities(margin: np.ndarray, band: float, scale: float) -> np.ndarray:
    """Rows of p(1), p(2), p(Tie) for reward gaps `margin`: Davidson's model on the gap over
    `scale` with log nu = (band / scale) / 2, so a gap of exactly `band` ties p(1) and p(Tie)
    bit for bit."""
    return davidson_probabilities(margin / scale, np.full(len(margin), (band / scale) / 2))


class RewardJudge(PointwiseJudge):
    """A reward model's scores with a tie band; a response is scored once (PointwiseJudge), and
    its score kept in the judgment cache, so a restarted site scores nothing twice."""

    persistent = True

    def __init__(self, scorer: RewardScorer, band: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        if band < 0 or scale <= 0:
            raise ValueError(f"band must be >= 0 and scale > 0, got band={band}, scale={scale}")
        self.scorer, self.band, self.scale = scorer, band, scale
        self.identity = f"reward:{scorer.identity}"

    def score_many(self, tasks: Sequence[Task], responses: Sequence[str]) -> list[float]:
        return self.scorer.rewards(tasks, responses)

    def tie_gap(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """What the band bounds: the verdict is Tie when |s1 - s2| <= band."""
        return np.abs(first - second)

    def pair_probabilities(
        self, first: np.ndarray, second: np.ndarray, pairs: Sequence[Pair]
    ) -> np.ndarray:
        return band_probabilities(first - second, self.band, self.scale)


def from_spec(spec: JudgeSpec) -> RewardJudge:
    """`reward:PATH[?dtype=..&batch=N&quant=..]` or `reward:URL[?api=vllm|tei&model=NAME]`,
    both with `band` and `scale` (judge.backends' registry loads it through this)."""
    options = spec.options
    wrong = [k for k in (LOCAL_ONLY if spec.served else SERVED_ONLY) if k in options]
    if wrong:
        where = "a model directory" if spec.served else "a served model (a URL)"
        raise ValueError(f"option {wrong[0]!r} is for {where} only")
    scorer: RewardScorer
    if spec.served:
        from judge.backends.reward_http import ServedRewardModel

        scorer = ServedRewardModel(
            str(spec.path),
            api=str(options.get("api", "vllm")),
            model=str(options["model"]) if options.get("model") else None,
            concurrency=int(options.get("concurrency", 4)),
            timeout=float(options.get("timeout", 600)),
        )
    else:
        from judge.backends.reward_hf import TransformersRewardModel

        quant = options.get("quant")
        scorer = TransformersRewardModel(
            Path(spec.path),
            dtype=str(options.get("dtype", "fp32")),
            batch_size=int(options.get("batch", 8)),
            quant=str(quant) if quant else None,
        )
    return RewardJudge(scorer, float(options.get("band", 0.0)), float(options.get("scale", 1.0)))
