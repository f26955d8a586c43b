"""Selection by simulation with known ground truth: how often each mode finds the true best
config, for how many judgments and federated rounds (issue 10: racing finds the true best far
more often than the paper's procedure for the same judging budget).

Each trial draws a latent quality per config (normal, sd `--quality-sd`). On every validation
item, config a's response is truly better than b's with probability sigmoid(q_a - q_b). The
simulated judge sees each item in both orders and the two verdicts are reconciled as in
judge/verdict.py (agreement stands, a conflict is Tie, an invalid order defers to the other),
giving one verdict per item. Each order is one judgment: an item costs two. A pair's verdicts on
a site's items are drawn once per trial and then fixed (a real validation set judged through the
judgment cache), so all modes of a trial see the same verdicts and differ only in which of them
they ask for; modes are compared with the paper's procedure trial by trial.

Judge models. "synthetic": per order it answers invalid with probability `--invalid`, prefers
whichever response comes first with probability `--position-bias`, answers 1/2/Tie uniformly at
random with probability `--noise`, and is right otherwise; the orders are independent. A fitted
model comes from a labelled test set in PandaLM's format and a prediction file on it (pairs whose
gold label is a tie are left out): with both orders (`pandalm-judge compare` output), the
reconciled verdict's distribution given the truth is counted directly, so errors shared by the
two orders stay shared; with one order (the released PandaLM-7B and GPT-3.5 files), the
per-order table is fitted and the orders drawn independently. Both print per-order invalid,
tie and error rates and the position bias, P(says first | second is better) - P(says second |
first is better). By default the PandaLM-7B predictions on the dev split are fitted when
../shared/data/pandalm/ (beside the repository) has them; the bench runs without them.

The real procedures from `coordinator.selection` are driven to completion: every request of
`pending()` is answered by summing the sites' tallies for its item slice. Rows: the paper's
procedure (and, at 0.25x, the same with every site's validation set cut to a quarter), the
adaptive mode, racing at budgets of 0.25x, 0.5x and 1x the paper's judgments, and round robin,
which costs 40x and runs on the first `--round-robin-trials` trials. For a pointwise judge
(each response scored on its own, judge/pointwise.py) a comparison costs no forward pass once
both responses are scored: those rows count forward passes, one per (config, site, item)
response scored, against the paper's with the same judge.

Rounds: sequential message rounds of compare requests (at most 256 comparisons a message, as
the coordinator sends them). With SecAgg+ each round adds four more (its stages); the wall they
imply is rounds x 8 s in the clear, rounds x (8 + 25) s with SecAgg+ (the measured ~8 s per
round and ~25 s per secure sum), judging time not included.

Training (issue 24). Every row counts epoch-trainings per site: the modes that train up front
train the paper grid whole (80: 16 runs x 5 epochs); `halving` trains each run up to the last
checkpoint it asked for (a run resumes where it stopped, so no epoch twice). GPU hours assume
EPOCH_GPU_HOURS (1.5) per epoch-training of a 7B LoRA run on the 52K Alpaca examples. The
learning-curve section draws quality per run and epoch instead of per config (`CurveModel`: a
run's best quality, its peak epoch, its gain from epoch 1 to the peak and its overfitting after
it) on the paper grid, at several gain sds (`--curve-gain-sd`), each printed with the Spearman
rank correlation between the runs' epoch-1 and best-epoch quality it implies, and runs paper,
racing and halving on the same trials.

    python bench/bench_selection.py [--trials 200] [--round-robin-trials 40] [--seed 0]
        [--curve-gain-sd 0.5 ...] [--json]
        [--testset FILE --predictions FILE [--predictions FILE ...] | --no-fitted]

`--json` rows carry `epoch_trainings` and `ratio_training_to_grid`; `learning_curves` holds each
gain sd's rank correlation and rows.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.protocol import MAX_COMPARISONS, Comparison
from common.space import load_space, training_run_indices
from coordinator.selection import Tally, TrainingProcedure, make_procedure
from judge.io import read_predictions, read_testset
from judge.verdict import INVALID, Verdict, combine_verdicts

# Outcome columns, from config a's point of view: a better, tie, b better, invalid.
WIN, TIE, LOSS, INVALID_COLUMN = range(4)
# Per-order columns in presentation terms: the first shown is preferred, tie, second, invalid.
FIRST, SECOND = WIN, LOSS
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "pandalm"
SECONDS_PER_ROUND = 8.0
SECONDS_PER_SECURE_SUM = 25.0
SECAGG_STAGES = 4
RACING_BUDGETS = (0.25, 0.5, 1.0)
EPOCH_GPU_HOURS = 1.5
"""GPU hours per epoch-training of a 7B LoRA run on the 52K Alpaca examples (about 14M tokens
at ~270 a record; ~4 x 7e9 FLOPs a token with frozen base weights: 3.9e17 FLOPs, 0.9 h on one
A100 at 40% of its 312 bf16 TFLOP/s, ~1.5 h with padding, evaluation and checkpointing): an
assumption the bench states, not a measurement."""
CURVE_GAIN_SDS = (0.25, 0.5, 1.0)
"""Learning-curve model settings shown: the sd of the quality a run gains from epoch 1 to its
best epoch (larger: the epoch-1 order says less about the best one)."""


COLUMN_VERDICT: tuple[Verdict, ...] = ("1", "Tie", "2", INVALID)
"""The verdict of each outcome column, in a/b terms."""


def reconcile(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Distribution of the reconciled verdict of two independent orders (both in a/b terms),
    by the judge's own rule (`judge.verdict.combine_verdicts`)."""
    outcome = np.zeros(4)
    for f, pf in enumerate(forward):
        for b, pb in enumerate(backward):
            combined = combine_verdicts(COLUMN_VERDICT[f], COLUMN_VERDICT[b])
            outcome[COLUMN_VERDICT.index(combined)] += pf * pb
    return outcome


@dataclass(frozen=True)
class JudgeModel:
    """The simulated judge: the reconciled verdict's distribution when config a is truly better
    (b's case mirrors it) and, for the record, the per-order rates it came from."""

    name: str
    if_a_better: np.ndarray
    per_order: dict[str, float]

    @classmethod
    def from_order_table(cls, name: str, first_better: np.ndarray, second_better: np.ndarray):
        """Independent orders, each drawn from the per-order table in presentation terms."""
        forward = first_better  # a is shown first and is better
        backward = second_better[[SECOND, TIE, FIRST, INVALID_COLUMN]]  # b first, a better
        return cls(name, reconcile(forward, backward), order_rates(first_better, second_better))

    @classmethod
    def synthetic(cls, invalid: float, position_bias: float, noise: float) -> JudgeModel:
        right = 1 - invalid - position_bias - noise
        tables = []
        for better in (FIRST, SECOND):
            probs = np.full(4, noise / 3)
            probs[INVALID_COLUMN] = invalid
            probs[better] += right
            probs[FIRST] += position_bias
            tables.append(probs)
        return cls.from_order_table("synthetic", *tables)

    def outcomes(self, a_better: bool) -> np.ndarray:
        """Distribution of the reconciled verdict over win, tie, loss, invalid (a's view)."""
        if a_better:
            return self.if_a_better
        return self.if_a_better[[LOSS, TIE, WIN, INVALID_COLUMN]]


def order_rates(first_better: np.ndarray, second_better: np.ndarray) -> dict[str, float]:
    both = (first_better + second_better) / 2
    return {
        "invalid": float(both[INVALID_COLUMN]),
        "tie": float(both[TIE]),
        "error": float((first_better[SECOND] + second_better[FIRST]) / 2),
        "position_bias": float(second_better[FIRST] - first_better[SECOND]),
    }


VERDICT_COLUMN = {"Tie": TIE, INVALID: INVALID_COLUMN}


def fit_judge_model(testset: Path, predictions: Path) -> JudgeModel:
    """A judge model from a prediction file on a labelled test set (see the module docstring)."""
    gold = {item.idx: item.gold for item in read_testset(testset).items if item.gold != "Tie"}
    by_idx = {i: p for i, p in read_predictions(predictions).items() if i in gold}
    if not by_idx:
        raise SystemExit(f"{predictions}: no prediction for a decided pair of {testset}")
    tables = {True: np.zeros(4), False: np.zeros(4)}  # by "the first shown is better"
    reconciled = np.zeros(4)  # in truth terms: right, tie, wrong, invalid
    both_orders = all(len(p.orders) == 2 for p in by_idx.values())

    def column(verdict: Verdict, first: str) -> int:
        return VERDICT_COLUMN.get(verdict, FIRST if verdict == first else SECOND)

    for idx, prediction in by_idx.items():
        orders = prediction.orders or (prediction.verdict,)
        for shown_first, verdict in zip(("1", "2"), orders, strict=False):
            tables[gold[idx] == shown_first][column(verdict, shown_first)] += 1
        if both_orders:
            verdict = combine_verdicts(*orders)
            reconciled[column(verdict, gold[idx])] += 1
    first_better = tables[True] / tables[True].sum()
    second_better = tables[False] / tables[False].sum()
    name = f"fitted: {predictions.name}" + (" (both orders)" if both_orders else " (one order)")
    if both_orders:
        return JudgeModel(
            name, reconciled / reconciled.sum(), order_rates(first_better, second_better)
        )
    return JudgeModel.from_order_table(name, first_better, second_better)


class Federation:
    """Sites with fixed validation sets, judging configs of known latent quality.

    The reconciled verdict of each (pair, site, item) is drawn once and then fixed, as with a real
    validation set and the judgment cache: every mode of a trial sees the same verdicts, a chunk
    of items is a slice of them, and a shorter validation set is a prefix of them. It counts
    judgments (two per item) and the forward passes a pointwise judge would make."""

    def __init__(
        self, quality: np.ndarray, site_items: list[int], judge: JudgeModel, seed: list[int]
    ) -> None:
        self.quality = quality
        self.site_items = site_items
        self.seed = seed
        self.if_a_better = judge.outcomes(a_better=True)
        self.if_b_better = judge.outcomes(a_better=False)
        self.verdicts: dict[tuple[int, int], list[np.ndarray]] = {}
        self.judgments = 0
        self.scored = np.zeros((len(quality), len(site_items), max(site_items)), dtype=bool)

    def site_verdicts(self, low: int, high: int) -> list[np.ndarray]:
        """Per site, the outcome column of each item, from config `low`'s point of view."""
        if (low, high) not in self.verdicts:
            p_low_better = 1 / (1 + math.exp(self.quality[high] - self.quality[low]))
            probs = p_low_better * self.if_a_better + (1 - p_low_better) * self.if_b_better
            bounds = np.cumsum(probs)[:INVALID_COLUMN]
            draws = (
                np.random.default_rng([*self.seed, low, high, site]).random(n)
                for site, n in enumerate(self.site_items)
            )
            self.verdicts[low, high] = [np.searchsorted(bounds, draw) for draw in draws]
        return self.verdicts[low, high]

    def answer(self, request: Comparison) -> Tally:
        low, high = sorted((request.a, request.b))
        counts = np.zeros(4, dtype=int)
        for site, verdicts in enumerate(self.site_verdicts(low, high)):
            judged = verdicts[request.item_start : request.item_stop]
            counts += np.bincount(judged, minlength=4)
            stop = request.item_start + len(judged)
            self.scored[[low, high], site, request.item_start : stop] = True
        win, tie, loss, invalid = (int(count) for count in counts)
        self.judgments += 2 * int(counts.sum())
        tally = Tally(win, tie, loss, invalid, int(counts.sum()))
        return tally if request.a == low else tally.reversed()

    @property
    def forward_passes(self) -> int:
        """Responses a pointwise judge scores: each (config, site, item) once, however many
        comparisons it enters."""
        return int(self.scored.sum())


def run_selection(
    mode: str, federation: Federation, settings: dict
) -> tuple[int, int, set[int] | None]:
    """Drive a procedure to its end against the federation: the config it selects, the message
    rounds it took (a train request is one) and, for a procedure that asks for training, the
    configs it had trained (None: every config, trained up front)."""
    procedure = make_procedure(mode, len(federation.quality), **settings)
    rounds = 0
    trained: set[int] | None = None
    while not procedure.done:
        if isinstance(procedure, TrainingProcedure):
            trained = trained or set()
            trainings = procedure.training()
            for request in trainings:
                rounds += 1
                trained.update(request.configs)
                procedure.record_training(request)
            if trainings:
                continue
        requests = procedure.pending()
        rounds += math.ceil(len(requests) / MAX_COMPARISONS)
        for request in requests:
            procedure.record(request, federation.answer(request))
    best = procedure.best()
    assert best is not None
    return best, rounds, trained


@dataclass
class ModeResult:
    mode: str
    budget: float | None
    best_hits: np.ndarray
    top3_hits: np.ndarray
    judgments: np.ndarray
    rounds: np.ndarray
    forward_passes: np.ndarray
    epoch_trainings: np.ndarray

    @property
    def p_best(self) -> float:
        return float(self.best_hits.mean())

    @property
    def se(self) -> float:
        return math.sqrt(self.p_best * (1 - self.p_best) / len(self.best_hits))


def simulate(
    mode: str,
    budget: float | None,
    settings: dict,
    trials: int,
    args: argparse.Namespace,
    judge: JudgeModel,
    site_items: list[int],
    space: Grid | None = None,
) -> ModeResult:
    """`trials` selections; quality drawn per config (iid) or, with `space`, from its
    learning-curve model (then epoch-trainings count what the mode had trained)."""
    hits, top3, judgments, rounds, passes, epochs = [], [], [], [], [], []
    for trial in range(trials):
        rng = np.random.default_rng([args.seed, trial])
        if space is None:
            quality = rng.normal(0, args.quality_sd, args.configs)
        else:
            quality = space.curve.draw(rng, space.runs, args.quality_sd)
        federation = Federation(quality, site_items, judge, [args.seed, trial])
        picked, trial_rounds, trained = run_selection(mode, federation, settings)
        rank = int((quality > quality[picked]).sum())
        hits.append(rank == 0)
        top3.append(rank < 3)
        judgments.append(federation.judgments)
        rounds.append(trial_rounds)
        passes.append(federation.forward_passes)
        epochs.append(epoch_trainings(space.runs, trained) if space else args.configs)
    columns = (hits, top3, judgments, rounds, passes, epochs)
    return ModeResult(mode, budget, *(np.array(v) for v in columns))


@dataclass(frozen=True)
class CurveModel:
    """Quality across a run's epochs. Each run has a best quality y ~ N(0, sd) at a peak epoch
    drawn uniformly from its epochs; epoch 1 sits `gain` below it (gain = |N(0, gain_sd)|, 0
    when the peak is epoch 1), the epochs between rise linearly, and after the peak the run
    overfits, losing |N(0, overfit_sd)| a epoch. Some runs thus gain a lot after epoch 1 and
    some peak early, and the epoch-1 order shows the best epochs' order only in part
    (`rank_correlation` measures how much)."""

    gain_sd: float
    overfit_sd: float = 0.1

    def draw(self, rng: np.random.Generator, runs: list[list[int]], sd: float) -> np.ndarray:
        quality = np.zeros(sum(len(run) for run in runs))
        for run in runs:
            best = rng.normal(0, sd)
            peak = int(rng.integers(len(run)))  # position of the best epoch
            gain = abs(rng.normal(0, self.gain_sd)) if peak else 0.0
            overfit = abs(rng.normal(0, self.overfit_sd))
            for position, config in enumerate(run):
                if position <= peak:
                    rise = position / peak if peak else 1.0
                    quality[config] = best - gain * (1 - rise)
                else:
                    quality[config] = best - overfit * (position - peak)
        return quality

    def rank_correlation(self, runs: list[list[int]], sd: float, draws: int = 2000) -> float:
        """Mean Spearman correlation over runs between epoch 1's quality and the best epoch's."""
        values = []
        for draw in range(draws):
            quality = self.draw(np.random.default_rng([7, draw]), runs, sd)
            first = [quality[run[0]] for run in runs]
            best = [max(quality[i] for i in run) for run in runs]
            values.append(np.corrcoef(_ranks(first), _ranks(best))[0, 1])
        return float(np.mean(values))


def _ranks(values: Sequence[float]) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(float)


@dataclass(frozen=True)
class Grid:
    """The paper's grid (16 runs x 5 epochs) as config indices by run, with a curve model."""

    runs: list[list[int]]
    curve: CurveModel

    @property
    def epochs(self) -> int:
        return sum(len(run) for run in self.runs)


def paper_runs() -> list[list[int]]:
    return training_run_indices([dict(c.params) for c in load_space().configs])


def epoch_trainings(runs: list[list[int]], trained: set[int] | None) -> int:
    """Epochs a site trains: per run up to its last checkpoint asked for (all without a set),
    each epoch once (a run resumes where it stopped)."""
    if trained is None:
        return sum(len(run) for run in runs)
    return sum(max((p + 1 for p, i in enumerate(run) if i in trained), default=0) for run in runs)


def split_items(total: int, sites: int) -> list[int]:
    return [len(part) for part in np.array_split(np.arange(total), sites)]


@dataclass(frozen=True)
class Row:
    mode: str
    budget: float | None
    p_best: float
    se: float
    judgments: float
    ratio_to_paper: float
    rounds: float
    trials: int
    top3: float
    epoch_trainings: float
    ratio_training_to_grid: float


def _row(
    label: str,
    budget: float | None,
    r: ModeResult,
    cost: np.ndarray,
    paper_cost: np.ndarray,
    grid_epochs: int,
) -> Row:
    """One table row for a mode's trials; `cost` per trial (judgments or forward passes)."""
    return Row(
        label,
        budget,
        r.p_best,
        r.se,
        float(cost.mean()),
        float(cost.mean() / paper_cost.mean()),
        float(r.rounds.mean()),
        len(r.best_hits),
        float(r.top3_hits.mean()),
        float(r.epoch_trainings.mean()),
        float(r.epoch_trainings.mean() / grid_epochs),
    )


def bench_judge(args: argparse.Namespace, judge: JudgeModel) -> tuple[list[Row], list[str]]:
    """Every mode under one judge model: its rows and the lines comparing them to the paper."""
    site_items = split_items(args.items, args.sites)
    per_site = max(site_items)
    run = {}
    run["paper"] = simulate("paper", 1.0, {}, args.trials, args, judge, site_items)
    quarter = split_items(round(args.items * 0.25), args.sites)
    run["paper 0.25"] = simulate("paper", 0.25, {}, args.trials, args, judge, quarter)
    run["adaptive"] = simulate("adaptive", None, {}, args.trials, args, judge, site_items)
    for budget in RACING_BUDGETS:
        settings = {"items_per_site": per_site, "budget": budget}
        run[f"racing {budget}"] = simulate(
            "racing", budget, settings, args.trials, args, judge, site_items
        )
    if args.round_robin_trials:
        run["round-robin"] = simulate(
            "round-robin", None, {}, args.round_robin_trials, args, judge, site_items
        )
    paper = run["paper"]
    rows = [
        _row(r.mode, r.budget, r, r.judgments, paper.judgments, args.configs) for r in run.values()
    ]
    pointwise = [("paper (pointwise judge)", paper)]
    if "round-robin" in run:
        pointwise.append(("round-robin (pointwise judge)", run["round-robin"]))
    for label, r in pointwise:  # costed in forward passes
        rows.append(_row(label, None, r, r.forward_passes, paper.forward_passes, args.configs))
    lines = []
    for key, result in run.items():
        if key == "paper" or len(result.best_hits) != len(paper.best_hits):
            continue
        difference = result.best_hits.astype(float) - paper.best_hits.astype(float)
        stderr = difference.std(ddof=1) / math.sqrt(len(difference))
        larger = "larger" if abs(difference.mean()) > stderr else "not larger"
        lines.append(
            f"{key:<14} vs paper, same trials: found the true best where the paper missed it in "
            f"{(difference > 0).sum():>3}, missed it where the paper found it in "
            f"{(difference < 0).sum():>3}; P(best) {difference.mean():+.3f} ± {stderr:.3f} "
            f"({larger} than the standard error)"
        )
    return rows, lines


CURVE_MODES = (
    ("paper", 1.0, "paper"),
    ("racing", 1.0, "racing 1.0"),
    ("halving", 1.0, "halving 1.0"),
    ("halving", 0.5, "halving 0.5"),
)


def bench_curves(
    args: argparse.Namespace, judge: JudgeModel, gain_sd: float
) -> tuple[float, list[Row], list[str]]:
    """Paper, racing and halving on the paper grid with quality from the learning-curve model:
    the rank correlation it implies, its rows, and halving against racing trial by trial."""
    grid = Grid(paper_runs(), CurveModel(gain_sd))
    site_items = split_items(args.items, args.sites)
    per_site = max(site_items)
    run = {}
    for mode, budget, label in CURVE_MODES:
        settings = {} if mode == "paper" else {"items_per_site": per_site, "budget": budget}
        if mode == "halving":
            settings["training_runs"] = grid.runs
        run[label] = simulate(mode, budget, settings, args.trials, args, judge, site_items, grid)
    paper = run["paper"]
    rows = [
        _row(label, r.budget, r, r.judgments, paper.judgments, grid.epochs)
        for label, r in run.items()
    ]
    racing = run["racing 1.0"]
    lines = []
    for label in ("halving 1.0", "halving 0.5"):
        difference = run[label].best_hits.astype(float) - racing.best_hits.astype(float)
        stderr = difference.std(ddof=1) / math.sqrt(len(difference))
        lines.append(
            f"{label:<14} vs racing 1.0, same trials: found the true best where racing missed "
            f"it in {(difference > 0).sum():>3}, missed it where racing found it in "
            f"{(difference < 0).sum():>3}; P(best) {difference.mean():+.3f} ± {stderr:.3f}"
        )
    correlation = grid.curve.rank_correlation(grid.runs, args.quality_sd)
    return correlation, rows, lines


def halving_target_lines(rows: Sequence[Row]) -> list[str]:
    """The halving issue's targets on one learning-curve setting's rows."""
    by_mode = {row.mode: row for row in rows}
    racing, halving = by_mode["racing 1.0"], by_mode["halving 1.0"]
    gap = halving.p_best - racing.p_best
    p_ok = gap >= 0
    cost_ok = halving.ratio_training_to_grid <= 0.5 and halving.ratio_to_paper <= 1.0
    moon = halving.ratio_training_to_grid <= 0.35
    rounds_ok = halving.rounds <= 2 * racing.rounds
    return [
        f"target P(best) >= racing 1x's with <= 0.5x the grid's training and <= 1x the paper's "
        f"judgments: {'met' if p_ok and cost_ok else 'NOT met'}: {halving.p_best:.3f} ± "
        f"{halving.se:.3f} against {racing.p_best:.3f} ± {racing.se:.3f}, "
        f"{halving.ratio_training_to_grid:.3f}x the training, "
        f"{halving.ratio_to_paper:.3f}x the judgments",
        f"moonshot <= 0.35x the training at that P(best): "
        f"{'met' if moon and p_ok else 'NOT met'} ({halving.ratio_training_to_grid:.3f}x)",
        f"target rounds <= 2x racing's: {'met' if rounds_ok else 'NOT met'}: "
        f"{halving.rounds:.1f} against {racing.rounds:.1f}",
    ]


def target_lines(rows: Sequence[Row]) -> list[str]:
    """The issue's targets, judged on these rows: racing at 1x and at 0.25x."""
    paper = next(r for r in rows if r.mode == "paper" and r.budget == 1.0)
    racing = {r.budget: r for r in rows if r.mode == "racing"}

    def verdict(budget: float, goal: float) -> str:
        row = racing.get(budget)
        if row is None:
            return f"NOT measured: no racing row at {budget}x"
        gap = row.p_best - goal
        state = "met" if gap >= 0 and row.ratio_to_paper <= budget else "NOT met"
        margin = "more" if abs(gap) > row.se else "not more"
        return (
            f"{state}: P(best) {row.p_best:.3f} ± {row.se:.3f} ({margin} than one standard "
            f"error from {goal}) with {row.ratio_to_paper:.3f}x the judgments"
        )

    rounds = "NOT measured: no racing row at 1x"
    if 1.0 in racing:
        state = "met" if racing[1.0].rounds <= 1.5 * paper.rounds else "NOT met"
        rounds = f"{state}: {racing[1.0].rounds:.1f} rounds against the paper's {paper.rounds:.1f}"
    return [
        f"target P(best) >= 0.75 at <= 1x the paper's judgments: {verdict(1.0, 0.75)}",
        f"stretch P(best) >= 0.80 at <= 1x: {verdict(1.0, 0.80)}",
        f"target P(best) >= 0.66 at <= 0.25x: {verdict(0.25, 0.66)}",
        f"target rounds at 1x <= 1.5x the paper's: {rounds}",
    ]


def print_table(judge: JudgeModel, rows: Sequence[Row], lines: Sequence[str]) -> None:
    rates = ", ".join(f"{name} {value:.3f}" for name, value in judge.per_order.items())
    outcome = ", ".join(
        f"{name} {value:.3f}"
        for name, value in zip(("right", "tie", "wrong", "invalid"), judge.if_a_better, strict=True)
    )
    print(f"\njudge {judge.name}\n  per order: {rates}\n  reconciled item verdict: {outcome}")
    header = (
        f"{'mode':<30}{'budget':>7}{'trials':>7}{'P(best)':>15}{'P(top-3)':>9}"
        f"{'judgments':>11}{'ratio':>7}{'rounds':>8}{'wall':>8}{'SecAgg+':>9}"
        f"{'epochs':>8}{'train':>7}{'GPU h':>7}"
    )
    print(header)
    for row in rows:
        budget = "-" if row.budget is None else f"{row.budget:g}x"
        clear = row.rounds * SECONDS_PER_ROUND / 60
        secure = row.rounds * (SECONDS_PER_ROUND + SECONDS_PER_SECURE_SUM) / 60
        print(
            f"{row.mode:<30}{budget:>7}{row.trials:>7}{row.p_best:>8.3f} ±{row.se:.3f}"
            f"{row.top3:>9.3f}{row.judgments:>11.0f}{row.ratio_to_paper:>7.3f}"
            f"{row.rounds:>8.1f}{clear:>6.1f}m{secure:>8.1f}m"
            f"{row.epoch_trainings:>8.1f}{row.ratio_training_to_grid:>7.3f}"
            f"{row.epoch_trainings * EPOCH_GPU_HOURS:>7.0f}"
        )
    for line in lines:
        print(line)


def row_json(row: Row) -> dict:
    return {
        "mode": row.mode,
        "budget": row.budget,
        "p_best": round(row.p_best, 4),
        "se": round(row.se, 4),
        "judgments": round(row.judgments, 1),
        "ratio_to_paper": round(row.ratio_to_paper, 4),
        "rounds": round(row.rounds, 2),
        "epoch_trainings": round(row.epoch_trainings, 2),
        "ratio_training_to_grid": round(row.ratio_training_to_grid, 4),
    }


def parse_arguments() -> argparse.Namespace:
    """The bench's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--round-robin-trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", type=int, default=80)
    parser.add_argument("--items", type=int, default=170, help="validation items over all sites")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--quality-sd", type=float, default=0.5)
    parser.add_argument("--invalid", type=float, default=0.02)
    parser.add_argument("--position-bias", type=float, default=0.1)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--testset", type=Path, default=SHARED / "testset-dev.json")
    parser.add_argument(
        "--predictions",
        type=Path,
        action="append",
        help="prediction file to fit a judge model from (repeatable; default: the PandaLM-7B "
        "dev predictions in ../shared when present)",
    )
    parser.add_argument("--no-fitted", action="store_true", help="only the synthetic judge")
    parser.add_argument(
        "--curve-gain-sd",
        type=float,
        action="append",
        help="learning-curve model: sd of a run's gain from epoch 1 to its best epoch "
        f"(repeatable; default {', '.join(map(str, CURVE_GAIN_SDS))})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args()


def json_document(rows: list, curves: list, fitted: list) -> dict:
    """The `--json` output: the synthetic judge's rows, each learning-curve setting's rows and
    each fitted judge's rows."""
    document: dict = {"rows": [row_json(row) for row in rows]}
    document["learning_curves"] = [
        {
            "gain_sd": gain_sd,
            "rank_correlation": round(correlation, 3),
            "epoch_gpu_hours": EPOCH_GPU_HOURS,
            "rows": [row_json(row) for row in curve_rows],
        }
        for gain_sd, correlation, curve_rows, _ in curves
    ]
    if fitted:
        document["fitted_judges"] = [
            {
                "judge": judge.name,
                "per_order": judge.per_order,
                "rows": [row_json(r) for r in rs],
            }
            for judge, rs, _ in fitted
        ]
    return document


def main() -> None:
    args = parse_arguments()
    args.curve_gain_sd = args.curve_gain_sd or list(CURVE_GAIN_SDS)
    predictions = args.predictions
    if predictions is None:
        default = SHARED / "pandalm-7b-predictions-dev.json"
        predictions = [default] if default.is_file() and args.testset.is_file() else []
    if args.no_fitted:
        predictions = []

    start = time.perf_counter()
    synthetic = JudgeModel.synthetic(args.invalid, args.position_bias, args.noise)
    rows, lines = bench_judge(args, synthetic)
    fitted = []
    for path in predictions:
        judge = fit_judge_model(args.testset, path)
        fitted.append((judge, *bench_judge(args, judge)))
    curves = [(gain_sd, *bench_curves(args, synthetic, gain_sd)) for gain_sd in args.curve_gain_sd]
    if args.json:
        document = json_document(rows, curves, fitted)
        print(json.dumps(document))
        return
    print(
        f"{args.configs} configs, quality sd {args.quality_sd}; sites "
        f"{split_items(args.items, args.sites)}; {args.trials} trials (round robin "
        f"{args.round_robin_trials}); wall = rounds x {SECONDS_PER_ROUND:g} s in the clear, "
        f"x {SECONDS_PER_ROUND + SECONDS_PER_SECURE_SUM:g} s with SecAgg+ "
        f"({SECAGG_STAGES} more rounds each); judging time not included"
    )
    print_table(synthetic, rows, lines)
    for line in target_lines(rows):
        print(line)
    for judge, judge_rows, judge_lines in fitted:
        print_table(judge, judge_rows, judge_lines)
        for line in target_lines(judge_rows):
            print(line)
    for gain_sd, correlation, curve_rows, curve_lines in curves:
        print(
            f"\nlearning curves, paper grid (16 runs x 5 epochs), gain sd {gain_sd:g}: Spearman "
            f"rank correlation of epoch 1 and the best epoch over runs {correlation:.2f}; "
            f"GPU h at {EPOCH_GPU_HOURS:g} h a 7B LoRA epoch-training, per site"
        )
        print_table(synthetic, curve_rows, curve_lines)
        for line in halving_target_lines(curve_rows):
            print(line)
    print(f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
