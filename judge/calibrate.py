"""Fitting a pointwise judge's tie band (and probability scale) on labelled pairs
(`pandalm-judge calibrate`).

A banded judge calls Tie when its two scores' gap (`tie_gap`: |s1 - s2| for a reward model,
relative to the larger score for a rule) is at most `band`, else the higher score wins. The band
chosen is the one with the best macro-F1 over 1/2/Tie among 0 and the midpoints between the
observed gaps; where the judge also has a `scale` (reward models), the scale is the one under
which its probabilities give the gold verdicts the highest mean log-likelihood, the band fixed.
Out-of-fold figures come from refitting the band on all but one fold, the folds split by
instruction so that no instruction is both fitted and measured on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast, runtime_checkable

import numpy as np

from judge.io import LabelledPair
from judge.metrics import accuracy_and_macro_f1
from judge.pointwise import CLASSES, Task
from judge.prompt import Pair

MAX_CANDIDATES = 512
"""Bands tried at most (quantiles of the midpoints beyond that)."""
SCALE_GRID = 2.0 ** np.linspace(-6, 6, 49)
"""Scales tried, as multiples of the median absolute score gap."""


@runtime_checkable
class BandedJudge(Protocol):
    """A pointwise judge with a tie band (judge/backends/rules.py, judge/backends/reward.py)."""

    band: float

    def scores(self, tasks: Sequence[Task], responses: Sequence[str]) -> np.ndarray: ...

    def tie_gap(self, first: np.ndarray, second: np.ndarray) -> np.ndarray: ...

    def pair_probabilities(
        self, first: np.ndarray, second: np.ndarray, pairs: Sequence[Pair]
    ) -> np.ndarray: ...


class ScaledJudge(BandedJudge, Protocol):
    """A banded judge whose probabilities also have a scale (judge/backends/reward.py)."""

    scale: float


@dataclass(frozen=True)
class Calibration:
    """The fitted band (and scale), with how well it does in and out of fold."""

    band: float
    scale: float | None
    n: int
    folds: int
    f1_macro: float
    """With the band fitted on every item (optimistic)."""
    f1_macro_out_of_fold: float
    accuracy_out_of_fold: float
    fold_bands: list[float] = field(default_factory=list)


def predict(gap: np.ndarray, first_wins: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """Verdict codes (CLASSES' order), one row per band."""
    decisive = np.where(first_wins, CLASSES.index("1"), CLASSES.index("2"))
    return np.where(gap[None, :] <= bands[:, None], CLASSES.index("Tie"), decisive[None, :])


def best_band(gap: np.ndarray, first_wins: np.ndarray, gold: np.ndarray) -> float:
    """The band with the best macro-F1 (the smallest of equals)."""
    values = np.unique(gap)
    candidates = np.concatenate([[0.0], (values[1:] + values[:-1]) / 2])
    if len(candidates) > MAX_CANDIDATES:
        candidates = np.unique(np.quantile(candidates, np.linspace(0, 1, MAX_CANDIDATES)))
    scores = accuracy_and_macro_f1(gold, predict(gap, first_wins, candidates))[:, 1]
    return float(candidates[int(np.argmax(scores))])


def instruction_folds(pairs: Sequence[Pair], folds: int) -> np.ndarray:
    """Each item's fold: instructions shuffled (seed 0) and dealt round the folds."""
    instructions = list(dict.fromkeys(p.instruction for p in pairs))
    order = np.random.default_rng(0).permutation(len(instructions))
    fold_of = {instructions[i]: rank % folds for rank, i in enumerate(order)}
    return np.asarray([fold_of[p.instruction] for p in pairs])


def best_scale(
    judge: ScaledJudge, first: np.ndarray, second: np.ndarray, gold: np.ndarray, pairs: list[Pair]
) -> float:
    """The scale (on SCALE_GRID) whose probabilities give the gold verdicts the highest mean
    log-likelihood; leaves the judge with it."""
    spread = float(np.median(np.abs(first - second))) or 1.0
    likelihoods = []
    for scale in SCALE_GRID * spread:
        judge.scale = float(scale)
        rows = judge.pair_probabilities(first, second, pairs)
        likelihoods.append(np.mean(np.log(np.maximum(rows[np.arange(len(gold)), gold], 1e-300))))
    judge.scale = float(SCALE_GRID[int(np.argmax(likelihoods))] * spread)
    return judge.scale


def calibrate(
    judge: BandedJudge, items: Sequence[LabelledPair], folds: int = 5, fit_scale: bool = False
) -> Calibration:
    """Fit the band (and with `fit_scale` the scale) on `items`; the judge keeps them."""
    labelled = [item for item in items if item.gold in CLASSES]
    if len(labelled) < 2:
        raise ValueError("calibration needs at least two items labelled 1, 2 or Tie")
    pairs = [item.pair for item in labelled]
    gold = np.asarray([CLASSES.index(item.gold) for item in labelled])
    tasks = [(p.instruction, p.input) for p in pairs]
    first = judge.scores(tasks, [p.response1 for p in pairs])
    second = judge.scores(tasks, [p.response2 for p in pairs])
    gap, first_wins = judge.tie_gap(first, second), first > second
    fold = instruction_folds(pairs, max(1, min(folds, len({p.instruction for p in pairs}))))
    held_out = np.zeros(len(gold), dtype=int)
    fold_bands = []
    for k in range(int(fold.max()) + 1):
        train = fold != k if fold.max() > 0 else np.ones(len(gold), dtype=bool)
        band = best_band(gap[train], first_wins[train], gold[train])
        fold_bands.append(band)
        held_out[fold == k] = predict(gap[fold == k], first_wins[fold == k], np.asarray([band]))[0]
    judge.band = best_band(gap, first_wins, gold)
    fitted = accuracy_and_macro_f1(gold, predict(gap, first_wins, np.asarray([judge.band])))[0]
    out_of_fold = accuracy_and_macro_f1(gold, held_out)[0]
    return Calibration(
        band=judge.band,
        scale=best_scale(cast(ScaledJudge, judge), first, second, gold, pairs)
        if fit_scale
        else None,
        n=len(gold),
        folds=len(fold_bands),
        f1_macro=float(fitted[1]),
        f1_macro_out_of_fold=float(out_of_fold[1]),
        accuracy_out_of_fold=float(out_of_fold[0]),
        fold_bands=fold_bands,
    )
