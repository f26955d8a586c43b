"""Selection by simulation with known ground truth (issue text: "the adaptive mode picks the true
best at least as often as the paper's procedure with at most half its judgments").

Each trial draws a latent quality per config (normal, sd `--quality-sd`). On every validation
item, config a's response is truly better than b's with probability sigmoid(q_a - q_b). The
simulated judge sees each item in both orders; per order it answers invalid with probability
`--invalid`, prefers whichever response comes first with probability `--position-bias`, answers
1/2/Tie uniformly at random with probability `--noise`, and is right otherwise. The two orders
are reconciled as in judge/verdict.py (agreement stands, a conflict is Tie, an invalid order
defers to the other), giving one verdict per item. Each order is one judgment: an item costs two.
A pair's verdicts on a site's items are drawn once per trial and then fixed (a real validation
set judged through the judgment cache), so all modes of a trial see the same verdicts and differ
only in which of them they ask for; adaptive and paper are compared trial by trial.

The real procedures from `coordinator.selection` are driven to completion: every request of
`pending()` is answered by summing the sites' tallies for its item slice. The "paper, N items"
row runs the paper's procedure with every site's validation set cut to a prefix so that it
spends what the adaptive mode spent: the paper's procedure at equal cost. Round robin is 40 times
dearer and runs fewer trials.

    python bench/bench_selection.py [--trials 200] [--round-robin-trials 10] [--seed 0]
        [--quality-sd 0.5] [--chunk-items N --delta D --alpha A]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from coordinator.selection import ComparisonRequest, Tally, make_procedure

# Outcome columns, from config a's point of view: a better, tie, b better, invalid.
WIN, TIE, LOSS, INVALID = range(4)


@dataclass(frozen=True)
class JudgeModel:
    """Per-order error rates of the simulated judge."""

    invalid: float
    position_bias: float
    noise: float

    def order_verdicts(self, a_better: bool, a_first: bool) -> np.ndarray:
        """Probabilities of the order's verdict (in a/b terms) over win, tie, loss, invalid."""
        right = 1 - self.invalid - self.position_bias - self.noise
        probs = np.full(4, self.noise / 3)
        probs[INVALID] = self.invalid
        probs[WIN if a_better else LOSS] += right
        probs[WIN if a_first else LOSS] += self.position_bias
        return probs

    def item_outcomes(self, a_better: bool) -> np.ndarray:
        """Probabilities of the reconciled verdict of both orders over win, tie, loss, invalid."""
        forward = self.order_verdicts(a_better, a_first=True)
        backward = self.order_verdicts(a_better, a_first=False)
        outcome = np.zeros(4)
        for f, pf in enumerate(forward):
            for b, pb in enumerate(backward):
                if f == b or b == INVALID:
                    combined = f
                elif f == INVALID:
                    combined = b
                else:
                    combined = TIE
                outcome[combined] += pf * pb
        return outcome


class Federation:
    """Sites with fixed validation sets, judging configs of known latent quality.

    The reconciled verdict of each (pair, site, item) is drawn once and then fixed, as with a real
    validation set and the judgment cache: every mode of a trial sees the same verdicts, a chunk
    of items is a slice of them, and a shorter validation set is a prefix of them."""

    def __init__(
        self, quality: np.ndarray, site_items: list[int], judge: JudgeModel, seed: list[int]
    ) -> None:
        self.quality = quality
        self.site_items = site_items
        self.seed = seed
        self.if_a_better = judge.item_outcomes(a_better=True)
        self.if_b_better = judge.item_outcomes(a_better=False)
        self.verdicts: dict[tuple[int, int], list[np.ndarray]] = {}
        self.judgments = 0

    def site_verdicts(self, low: int, high: int) -> list[np.ndarray]:
        """Per site, the outcome column of each item, from config `low`'s point of view."""
        if (low, high) not in self.verdicts:
            p_low_better = 1 / (1 + math.exp(self.quality[high] - self.quality[low]))
            probs = p_low_better * self.if_a_better + (1 - p_low_better) * self.if_b_better
            bounds = np.cumsum(probs)[:INVALID]
            draws = (
                np.random.default_rng([*self.seed, low, high, site]).random(n)
                for site, n in enumerate(self.site_items)
            )
            self.verdicts[low, high] = [np.searchsorted(bounds, draw) for draw in draws]
        return self.verdicts[low, high]

    def answer(self, request: ComparisonRequest) -> Tally:
        low, high = sorted((request.a, request.b))
        counts = np.zeros(4, dtype=int)
        for verdicts in self.site_verdicts(low, high):
            judged = verdicts[request.item_start : request.item_stop]
            counts += np.bincount(judged, minlength=4)
        win, tie, loss, invalid = (int(count) for count in counts)
        self.judgments += 2 * int(counts.sum())
        tally = Tally(win, tie, loss, invalid, int(counts.sum()))
        return tally if request.a == low else tally.reversed()


def run_selection(mode: str, federation: Federation, settings: dict[str, int | float]) -> int:
    """Drive a procedure to its end against the federation; the config it selects."""
    procedure = make_procedure(mode, len(federation.quality), **settings)
    while not procedure.done:
        for request in procedure.pending():
            procedure.record(request, federation.answer(request))
    best = procedure.best()
    assert best is not None
    return best


@dataclass
class ModeResult:
    label: str
    best_hits: np.ndarray
    top3_hits: np.ndarray
    judgments: np.ndarray


def simulate(
    label: str,
    mode: str,
    settings: dict[str, int | float],
    trials: int,
    args: argparse.Namespace,
    site_items: list[int],
) -> ModeResult:
    judge = JudgeModel(args.invalid, args.position_bias, args.noise)
    best_hits, top3_hits, judgments = [], [], []
    for trial in range(trials):
        quality = np.random.default_rng([args.seed, trial]).normal(0, args.quality_sd, args.configs)
        federation = Federation(quality, site_items, judge, [args.seed, trial])
        picked = run_selection(mode, federation, settings)
        rank = int((quality > quality[picked]).sum())
        best_hits.append(rank == 0)
        top3_hits.append(rank < 3)
        judgments.append(federation.judgments)
    return ModeResult(label, np.array(best_hits), np.array(top3_hits), np.array(judgments))


def split_items(total: int, sites: int) -> list[int]:
    return [len(part) for part in np.array_split(np.arange(total), sites)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--round-robin-trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", type=int, default=80)
    parser.add_argument("--items", type=int, default=170, help="validation items over all sites")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--quality-sd", type=float, default=0.5)
    parser.add_argument("--invalid", type=float, default=0.02)
    parser.add_argument("--position-bias", type=float, default=0.1)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--chunk-items", type=int, help="adaptive setting (default: its own)")
    parser.add_argument("--delta", type=float, help="adaptive setting (default: its own)")
    parser.add_argument("--alpha", type=float, help="adaptive setting (default: its own)")
    args = parser.parse_args()
    adaptive_settings = {
        name: value
        for name in ("chunk_items", "delta", "alpha")
        if (value := getattr(args, name)) is not None
    }

    site_items = split_items(args.items, args.sites)
    print(
        f"{args.configs} configs, quality sd {args.quality_sd}; sites {site_items}; judge per "
        f"order: invalid {args.invalid}, position bias {args.position_bias}, noise {args.noise}"
    )
    start = time.perf_counter()
    paper = simulate("paper", "paper", {}, args.trials, args, site_items)
    adaptive = simulate("adaptive", "adaptive", adaptive_settings, args.trials, args, site_items)
    spent = adaptive.judgments.mean() / paper.judgments.mean()
    cut_items = split_items(round(args.items * spent), args.sites)
    paper_cut = simulate(
        f"paper, {sum(cut_items)} items", "paper", {}, args.trials, args, cut_items
    )
    results = [paper, adaptive, paper_cut]
    if args.round_robin_trials:
        results.append(
            simulate("round-robin", "round-robin", {}, args.round_robin_trials, args, site_items)
        )

    print(f"{'mode':<22}{'trials':>7}{'P(best)':>14}{'P(top-3)':>10}{'judgments':>12}{'ratio':>7}")
    for result in results:
        p_best = result.best_hits.mean()
        stderr = math.sqrt(p_best * (1 - p_best) / len(result.best_hits))
        print(
            f"{result.label:<22}{len(result.best_hits):>7}{p_best:>8.3f} ±{stderr:.3f}"
            f"{result.top3_hits.mean():>10.3f}{result.judgments.mean():>12.0f}"
            f"{result.judgments.mean() / paper.judgments.mean():>7.3f}"
        )
    difference = adaptive.best_hits.astype(float) - paper.best_hits.astype(float)
    stderr = difference.std(ddof=1) / math.sqrt(args.trials)
    print(
        f"adaptive vs paper, same trials: found the true best where the paper missed it in "
        f"{(difference > 0).sum()}, missed it where the paper found it in {(difference < 0).sum()}"
        f"; P(best) {difference.mean():+.3f} ± {stderr:.3f}"
    )
    if spent > 0.5:
        verdict = f"NOT met, {spent:.3f}x the judgments"
    elif difference.mean() >= 0:
        verdict = "met"
    elif -difference.mean() < 2 * stderr:
        verdict = "NOT met on the point estimate, within 2 standard errors"
    else:
        verdict = "NOT met"
    print(f"target (P(best) >= paper's with <= 0.5x its judgments): {verdict}")
    print(f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
