"""Selection procedures: tallies, the paper's blocks, round robin with Bradley-Terry, the adaptive
mode's sequential test, racing on planted tallies, `auto`, ask/tell bookkeeping and replay after
a restart."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from common.protocol import MAX_ITEMS, Comparison, TrainRequest
from common.settings import RunSettings
from common.space import load_space, training_run_indices
from coordinator.selection import (
    SELECTION_MODES,
    AdaptiveProcedure,
    DecidedComparison,
    HalvingProcedure,
    RacingProcedure,
    SelectionProcedure,
    Tally,
    TrainingProcedure,
    auto_mode,
    bradley_terry,
    bradley_terry_with_covariance,
    check_selection_mode,
    comparison_winner,
    describe_mode,
    implements,
    make_procedure,
    procedure_for_run,
    trains_on_request,
)

ITEMS_PER_SITE = 20
SITES = 3
REQUIRED = {
    "racing": {"items_per_site": ITEMS_PER_SITE},
    "halving": {"items_per_site": ITEMS_PER_SITE},
}
"""Settings a mode cannot do without."""


def items_in(request: Comparison) -> int:
    return SITES * max(min(request.item_stop, ITEMS_PER_SITE) - request.item_start, 0)


def oracle_tally(request: Comparison, quality: list[float]) -> Tally:
    """Three sites whose judge always prefers the config of higher quality."""
    items = items_in(request)
    if quality[request.a] > quality[request.b]:
        return Tally(win=items, items=items)
    return Tally(loss=items, items=items)


def random_tally(request: Comparison, rng: random.Random) -> Tally:
    counts = [0, 0, 0, 0]
    for _ in range(items_in(request)):
        counts[rng.choices(range(4), weights=[4, 2, 4, 1])[0]] += 1
    return Tally(*counts, items=sum(counts))


def train_asked(procedure: SelectionProcedure) -> list[TrainRequest]:
    """Complete the trainings a procedure that trains asks for now (none for the others)."""
    done = []
    while isinstance(procedure, TrainingProcedure) and procedure.training():
        for request in procedure.training():
            procedure.record_training(request)
            done.append(request)
    return done


def run_to_end(
    procedure: SelectionProcedure, answer: Callable[[Comparison], Tally]
) -> list[tuple[Comparison, Tally]]:
    history = []
    while not procedure.done:
        train_asked(procedure)
        requests = procedure.pending()
        assert requests, "a procedure that is not done must have something to ask"
        for request in requests:
            tally = answer(request)
            procedure.record(request, tally)
            history.append((request, tally))
    return history


# Tally and the winner rule


def test_tally_adds_reverses_and_keeps_its_identity() -> None:
    total = Tally(3, 1, 2, 1, 7) + Tally(0, 2, 5, 0, 7)
    assert total == Tally(3, 3, 7, 1, 14)
    assert total.reversed() == Tally(7, 3, 3, 1, 14)
    assert total.margin == pytest.approx(-4 / 14)
    assert Tally().margin == 0.0
    with pytest.raises(ValueError, match="items"):
        Tally(3, 1, 2, 0, 7)
    with pytest.raises(ValueError, match="negative"):
        Tally(-1, 1, 0, 0, 0)


def test_winner_has_more_wins_than_losses_and_the_incumbent_keeps_a_tie() -> None:
    assert comparison_winner(4, 9, Tally(5, 0, 3, 0, 8)) == 4
    assert comparison_winner(4, 9, Tally(3, 9, 5, 0, 17)) == 9
    assert comparison_winner(4, 9, Tally(3, 9, 3, 2, 17)) == 4


def test_requests_reject_impossible_slices() -> None:
    with pytest.raises(ValueError):
        Comparison(2, 2)
    with pytest.raises(ValueError):
        Comparison(0, 1, item_start=8, item_stop=8)


# The paper's procedure


def test_paper_runs_four_blocks_in_parallel_then_their_winners() -> None:
    quality = [-abs(i - 57) for i in range(80)]
    procedure = make_procedure("paper", 80)
    first = procedure.pending()
    assert [(r.a, r.b) for r in first] == [(0, 1), (20, 21), (40, 41), (60, 61)]
    assert all(r.item_start == 0 and r.item_stop == MAX_ITEMS for r in first), "all items"
    assert procedure.pending() == [], "outstanding requests are not listed twice"

    procedure.record(first[1], Tally(loss=10, items=10))
    (follow_up,) = procedure.pending()
    assert follow_up == Comparison(21, 22), "the winner meets the next config"
    for request in (first[0], first[2], first[3], follow_up):
        procedure.record(request, oracle_tally(request, quality))

    history = run_to_end(procedure, lambda r: oracle_tally(r, quality))
    assert procedure.best() == 57
    assert procedure.ranking()[0] == 57
    assert sorted(procedure.ranking()) == list(range(80))
    assert len(history) + 5 == 79, "n - 1 comparisons in all"
    assert [(r.a, r.b) for r, _ in history[-3:]] == [(19, 39), (39, 57), (57, 60)]


def test_paper_keeps_the_incumbent_on_equal_wins_and_losses() -> None:
    procedure = make_procedure("paper", 3, blocks=1)
    procedure.record(Comparison(0, 1), Tally(4, 2, 4, 1, 11))
    assert procedure.pending() == [Comparison(0, 2)]


@pytest.mark.parametrize(("n_configs", "blocks", "first"), [(10, 4, [0, 3, 6, 8]), (3, 4, [0])])
def test_paper_splits_uneven_blocks_as_equal_as_possible(
    n_configs: int, blocks: int, first: list[int]
) -> None:
    quality = [(i * 7) % n_configs for i in range(n_configs)]
    procedure = make_procedure("paper", n_configs, blocks=blocks)
    requests = procedure.pending()
    assert [request.a for request in requests] == first
    for request in requests:
        procedure.record(request, oracle_tally(request, quality))
    history = run_to_end(procedure, lambda r: oracle_tally(r, quality))
    assert len(requests) + len(history) == n_configs - 1
    assert procedure.best() == quality.index(max(quality))


@pytest.mark.parametrize("mode", list(SELECTION_MODES))
def test_a_single_config_is_selected_without_asking(mode: str) -> None:
    procedure = make_procedure(mode, 1, **REQUIRED.get(mode, {}))
    assert procedure.done
    assert procedure.best() == 0
    assert procedure.pending() == []


@pytest.mark.parametrize("mode", list(SELECTION_MODES))
def test_unknown_or_repeated_records_are_refused(mode: str) -> None:
    procedure = make_procedure(mode, 5, **REQUIRED.get(mode, {}))
    train_asked(procedure)
    request = procedure.pending()[0]
    with pytest.raises(ValueError):
        procedure.record(Comparison(3, 4, 100, 104), Tally())
    procedure.record(request, Tally(win=1, items=1))
    with pytest.raises(ValueError):
        procedure.record(request, Tally(win=1, items=1))


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="round-robin"):
        make_procedure("swiss", 8)


# Registering a mode


def test_the_registry_names_each_mode_and_its_class() -> None:
    assert list(SELECTION_MODES) == ["paper", "round-robin", "adaptive", "racing", "halving"]
    assert SELECTION_MODES["racing"].arguments == {
        "items_per_site": "validation_items",
        "budget": "budget",
    }
    check_selection_mode("auto")
    with pytest.raises(ValueError, match=r"'swiss' is not one of 'paper', .* or 'auto'"):
        check_selection_mode("swiss")


@pytest.fixture
def first_pair_mode() -> Iterator[str]:
    """A toy mode, `first-pair`, added as a new mode is: one registered class."""

    @implements("first-pair", items="validation_items")
    class FirstPair:
        """Config 0 against config 1 on each site's first `items` items; the winner is best."""

        def __init__(self, n_configs: int, items: int) -> None:
            self.n_configs = n_configs
            self.unasked = [Comparison(0, 1, 0, items)]
            self.winner: int | None = None

        def pending(self) -> list[Comparison]:
            asked, self.unasked = self.unasked, []
            return asked

        def record(self, request: Comparison, tally: Tally) -> None:
            self.winner = comparison_winner(request.a, request.b, tally)

        @property
        def done(self) -> bool:
            return self.winner is not None

        def best(self) -> int | None:
            return self.winner

        def ranking(self) -> list[int]:
            return sorted(range(self.n_configs), key=lambda i: (i != self.winner, i))

    yield "first-pair"
    del SELECTION_MODES["first-pair"]


def test_a_registered_mode_is_a_setting_and_runs_with_its_settings(first_pair_mode: str) -> None:
    settings = RunSettings(run_key="toy", selection_mode=first_pair_mode, validation_items=6)
    check_selection_mode(settings.selection_mode)
    procedure = procedure_for_run(settings.selection_mode, 3, settings)
    (request,) = procedure.pending()
    assert request == Comparison(0, 1, 0, 6), "its items are the run's validation_items"
    procedure.record(request, Tally(1, 0, 5, 0, 6))
    assert procedure.done and procedure.best() == 1 and procedure.ranking() == [1, 0, 2]
    assert make_procedure(first_pair_mode, 2, items=4).pending() == [Comparison(0, 1, 0, 4)]


def test_a_mode_must_read_run_settings_that_exist() -> None:
    with pytest.raises(ValueError, match="no RunSettings field"):
        implements("typo", items="validation_item")
    assert "typo" not in SELECTION_MODES


# Round robin and Bradley-Terry


def test_round_robin_asks_every_pair_once_and_ranks_by_strength() -> None:
    quality = [0.3, 2.0, -1.0, 1.2, 0.0]
    procedure = make_procedure("round-robin", 5)
    requests = procedure.pending()
    all_pairs = [(a, b) for a in range(5) for b in range(a + 1, 5)]
    assert sorted((r.a, r.b) for r in requests) == all_pairs
    assert procedure.pending() == []
    for request in requests:
        wins = min(20, max(0, round(10 + 4 * (quality[request.a] - quality[request.b]))))
        procedure.record(request, Tally(wins, 4, 20 - wins, 1, 25))
    assert procedure.done
    assert procedure.ranking() == [1, 3, 0, 4, 2]
    assert procedure.best() == 1
    strengths = procedure.strengths()
    assert list(strengths.argsort()[::-1]) == [1, 3, 0, 4, 2]


def test_round_robin_breaks_equal_strengths_by_net_wins_then_index() -> None:
    """Every config takes 15 of its 30 points, so all strengths are equal; configs 2 and 3 win
    two comparisons each and configs 0 and 1 one each."""
    points = {(0, 1): 7, (0, 2): 4, (0, 3): 4, (1, 2): 8, (1, 3): 4, (2, 3): 7}
    procedure = make_procedure("round-robin", 4)
    for request in procedure.pending():
        wins = points[request.a, request.b]
        procedure.record(request, Tally(wins, 0, 10 - wins, 0, 10))
    assert procedure.strengths() == pytest.approx([0.0] * 4, abs=1e-6)
    assert procedure.net_wins() == [-1, -1, 1, 1]
    assert procedure.ranking() == [2, 3, 0, 1]


def bradley_terry_gap(tally: Tally) -> float:
    procedure = make_procedure("round-robin", 2)
    procedure.record(Comparison(0, 1), tally)
    strengths = procedure.strengths()
    return float(strengths[0] - strengths[1])


def test_bradley_terry_counts_ties_as_half_and_ignores_invalid() -> None:
    """300 wins, 400 ties, 100 losses: 500 points to 300, a log-strength gap of log(5/3)."""
    gap = bradley_terry_gap(Tally(300, 400, 100, 0, 800))
    assert gap == pytest.approx(math.log(5 / 3), rel=0.01)
    assert bradley_terry_gap(Tally(300, 400, 100, 5000, 5800)) == pytest.approx(gap)
    assert bradley_terry_gap(Tally(100, 400, 300, 0, 800)) == pytest.approx(-gap)


# The adaptive mode


def test_adaptive_asks_chunks_until_the_lead_is_decisive() -> None:
    procedure = make_procedure("adaptive", 8, blocks=2, chunk_items=4)
    assert isinstance(procedure, AdaptiveProcedure)
    lead = procedure.decisive_lead
    assert procedure.pending() == [Comparison(0, 1, 0, 4), Comparison(4, 5, 0, 4)]

    procedure.record(Comparison(0, 1, 0, 4), Tally(3, 4, 5, 0, 12))
    assert procedure.pending() == [Comparison(0, 1, 4, 8)], "undecided: next chunk"
    procedure.record(Comparison(0, 1, 4, 8), Tally(0, 12 - lead, lead, 0, 12))
    assert procedure.pending() == [Comparison(1, 2, 0, 4)], "b led by enough: decided"
    decided = procedure.comparisons[0]
    assert (decided.a, decided.b, decided.winner) == (0, 1, 1)
    assert decided.tally == Tally(3, 16 - lead, 5 + lead, 0, 24)


def test_adaptive_decides_on_the_totals_when_sites_run_out_of_items() -> None:
    procedure = make_procedure("adaptive", 3, blocks=1, chunk_items=4)
    procedure.record(Comparison(0, 1, 0, 4), Tally(2, 7, 3, 0, 12))
    procedure.record(Comparison(0, 1, 4, 8), Tally(1, 1, 1, 0, 3))
    assert procedure.pending() == [Comparison(0, 1, 8, 12)]
    procedure.record(Comparison(0, 1, 8, 12), Tally())
    assert procedure.pending() == [Comparison(1, 2, 0, 4)], "4 losses to 3 wins"


def test_adaptive_stops_at_the_item_cap() -> None:
    procedure = make_procedure("adaptive", 2, chunk_items=4, max_items=6)
    procedure.record(Comparison(0, 1, 0, 4), Tally(2, 8, 2, 0, 12))
    assert procedure.pending() == [Comparison(0, 1, 4, 6)]
    procedure.record(Comparison(0, 1, 4, 6), Tally(3, 3, 0, 0, 6))
    assert procedure.done
    assert procedure.best() == 0


def test_adaptive_finds_the_best_with_fewer_items_than_the_paper() -> None:
    quality = [((i * 37) % 29) / 29 for i in range(24)]
    spent = {}
    for mode in ("paper", "adaptive"):
        procedure = make_procedure(mode, 24)
        history = run_to_end(procedure, lambda r: oracle_tally(r, quality))
        assert procedure.best() == quality.index(max(quality))
        spent[mode] = sum(tally.items for _, tally in history)
    assert spent["adaptive"] <= spent["paper"] / 4


def test_adaptive_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError):
        make_procedure("adaptive", 4, delta=0.5)
    with pytest.raises(ValueError):
        make_procedure("adaptive", 4, chunk_items=0)


# Racing


def planted_tally(request: Comparison, planted: dict[tuple[int, int], float]) -> Tally:
    """Three sites; `planted` gives the share of items the lower index wins against the higher
    (no ties), every other pair ties on every item."""
    items = items_in(request)
    low, high = sorted((request.a, request.b))
    share = planted.get((low, high))
    if share is None:
        return Tally(tie=items, items=items)
    wins = round(share * items)
    tally = Tally(win=wins, loss=items - wins, items=items)
    return tally if request.a == low else tally.reversed()


def beats_everyone(best: int, n_configs: int) -> dict[tuple[int, int], float]:
    return {(min(best, i), max(best, i)): 1.0 if best < i else 0.0 for i in range(n_configs)}


def test_racing_finds_a_clear_best_with_few_judgments() -> None:
    """Config 17 wins every item, the rest tie: the others fall more than z standard errors
    behind after the first batches and the budget is mostly left unspent."""
    procedure = make_procedure("racing", 40, items_per_site=ITEMS_PER_SITE)
    assert isinstance(procedure, RacingProcedure)
    first_batch = procedure.pending()
    assert {i for r in first_batch for i in (r.a, r.b)} == set(range(40)), "all asked at once"
    planted = beats_everyone(17, 40)
    history = [(r, planted_tally(r, planted)) for r in first_batch]
    for request, tally in history:
        procedure.record(request, tally)
    history += run_to_end(procedure, lambda r: planted_tally(r, planted))
    assert procedure.best() == 17
    assert procedure.ranking()[0] == 17
    spent = sum(tally.items for _, tally in history) / SITES
    paper = 39 * ITEMS_PER_SITE
    assert spent == procedure.spent_items
    assert spent <= paper / 3, f"{spent} items per site of the paper's {paper}"


def test_racing_sends_a_near_tie_of_the_top_two_to_a_playoff() -> None:
    """Configs 4 and 9 beat everyone, and 4 beats 9 on 60% of the items: both reach the
    playoff, which asks the pair on all its fresh items, and 4 is chosen."""
    planted = beats_everyone(4, 30) | beats_everyone(9, 30) | {(4, 9): 0.6}
    procedure = make_procedure("racing", 30, items_per_site=ITEMS_PER_SITE)
    assert isinstance(procedure, RacingProcedure)
    playoff: list[Comparison] = []
    while not procedure.done:
        requests = procedure.pending()
        if len(procedure.survivors) <= procedure.playoff:
            playoff = requests
            assert {4, 9} <= set(procedure.survivors)
        for request in requests:
            procedure.record(request, planted_tally(request, planted))
    head_to_head = [r for r in playoff if {r.a, r.b} == {4, 9}]
    assert head_to_head and head_to_head[0].item_stop == ITEMS_PER_SITE
    assert procedure.best() == 4
    assert procedure.ranking()[:2] == [4, 9]


def test_racing_keeps_to_its_budget_and_asks_each_pair_fresh_items() -> None:
    rng = random.Random(3)
    procedure = make_procedure("racing", 25, items_per_site=ITEMS_PER_SITE, budget=0.5)
    history = run_to_end(procedure, lambda r: random_tally(r, rng))
    by_pair: dict[tuple[int, int], list[Comparison]] = {}
    for request, _ in history:
        by_pair.setdefault((request.a, request.b), []).append(request)
    for asked in by_pair.values():
        assert asked[0].item_start == 0
        assert all(done.item_stop == then.item_start for done, then in itertools.pairwise(asked))
    spent = sum(request.item_stop - request.item_start for request, _ in history)
    assert 0.4 * 24 * ITEMS_PER_SITE <= spent <= 0.5 * 24 * ITEMS_PER_SITE


def test_racing_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="items_per_site"):
        make_procedure("racing", 4, items_per_site=0)
    with pytest.raises(ValueError, match="budget"):
        make_procedure("racing", 4, items_per_site=8, budget=0)


def test_newton_bradley_terry_matches_the_logistic_regression_fit() -> None:
    rng = random.Random(5)
    totals = {}
    for a, b in [(0, 1), (0, 2), (1, 2), (2, 3), (1, 4), (3, 4)]:
        counts = [rng.randrange(30) for _ in range(4)]
        totals[(a, b)] = Tally(*counts, items=sum(counts))
    strengths, covariance = bradley_terry_with_covariance(5, totals)
    # the same penalized likelihood as a logistic regression (C = 1) on mirrored +1/-1 pair rows
    rows, labels, weights = [], [], []
    for (a, b), tally in totals.items():
        row = np.zeros(5)
        row[a], row[b] = 1.0, -1.0
        a_points, b_points = tally.win + tally.tie / 2, tally.loss + tally.tie / 2
        rows += [row, row, -row, -row]
        labels += [1, 0, 0, 1]
        weights += [a_points, b_points, a_points, b_points]
    reference = LogisticRegression(C=1.0, fit_intercept=False, tol=1e-10, max_iter=1000)
    reference.fit(np.array(rows), np.array(labels), sample_weight=np.array(weights))
    assert strengths == pytest.approx(reference.coef_[0], abs=1e-5)
    decided = [
        DecidedComparison(a, b, tally, comparison_winner(a, b, tally))
        for (a, b), tally in totals.items()
    ]
    assert bradley_terry(5, decided) == pytest.approx(strengths)
    assert covariance == pytest.approx(covariance.T)
    assert all(covariance[i, i] > 0 for i in range(5))


# auto


def test_auto_runs_round_robin_only_when_every_site_is_pointwise() -> None:
    assert auto_mode([True, True, True]) == "round-robin"
    assert auto_mode([True, False, True]) == "racing"
    assert auto_mode([False]) == "racing"
    assert auto_mode([]) == "racing"
    assert describe_mode("auto", "round-robin") == (
        "round-robin (auto: every active site's judge is pointwise)"
    )
    assert describe_mode("auto", "racing").startswith("racing (auto: not every")
    assert describe_mode("paper", "paper") == "paper"
    with pytest.raises(ValueError, match="auto"):
        make_procedure("auto", 4)


# Replay after a restart


@settings(max_examples=30, deadline=None)
@given(
    mode=st.sampled_from([mode for mode, m in SELECTION_MODES.items() if not m.trains]),
    n_configs=st.integers(2, 9),
    seed=st.integers(0, 2**16),
)
def test_replaying_the_history_restores_the_state(mode: str, n_configs: int, seed: int) -> None:
    """Sites answer in any order; a fresh procedure fed the recorded history in the order it was
    recorded asks the same questions as the original, including those left unanswered."""
    rng = random.Random(seed)
    options = {"blocks": 3} if mode == "paper" else REQUIRED.get(mode, {})
    original = make_procedure(mode, n_configs, **options)
    history: list[tuple[Comparison, Tally]] = []
    outstanding: list[Comparison] = []
    stop_after = rng.randint(0, 40)
    while not original.done and len(history) < stop_after:
        outstanding += original.pending()
        request = outstanding.pop(rng.randrange(len(outstanding)))
        tally = random_tally(request, rng)
        original.record(request, tally)
        history.append((request, tally))

    replayed = make_procedure(mode, n_configs, **options)
    for request, tally in history:
        replayed.record(request, tally)
    asked = outstanding + original.pending()
    assert sorted(replayed.pending(), key=repr) == sorted(asked, key=repr)
    assert replayed.done == original.done
    assert replayed.best() == original.best()
    assert replayed.ranking() == original.ranking()

    def answer(request: Comparison) -> Tally:
        return random_tally(request, random.Random(hash((request, seed))))

    for procedure in (original, replayed):
        for request in asked:
            procedure.record(request, answer(request))
    assert run_to_end(original, answer) == run_to_end(replayed, answer)
    assert original.best() == replayed.best()


# Successive halving over training runs

PAPER_PARAMS = [dict(c.params) for c in load_space().configs]
PAPER_RUNS = training_run_indices(PAPER_PARAMS)


def curve_quality(seed: int) -> list[float]:
    """Quality of the paper grid's configs: a run's level plus a bump peaking at some epoch."""
    rng = np.random.default_rng(seed)
    quality = [0.0] * len(PAPER_PARAMS)
    for run in PAPER_RUNS:
        level, peak = rng.normal(), int(rng.integers(1, 6))
        for index in run:
            quality[index] = level - 0.5 * abs(PAPER_PARAMS[index]["epochs"] - peak)
    return quality


def test_halving_trains_every_run_to_epoch_one_then_only_the_best_further() -> None:
    quality = curve_quality(3)
    procedure = make_procedure(
        "halving", 80, items_per_site=ITEMS_PER_SITE, training_runs=PAPER_RUNS
    )
    assert isinstance(procedure, HalvingProcedure) and trains_on_request("halving")
    assert procedure.pending() == [], "nothing to compare before anything is trained"
    (first,) = procedure.training()
    assert [PAPER_PARAMS[i]["epochs"] for i in first.configs] == [1] * 16
    with pytest.raises(ValueError, match="not a training"):
        procedure.record_training(TrainRequest((0, 1)))
    asked: list[TrainRequest] = []
    while not procedure.done:
        asked += train_asked(procedure)
        for request in procedure.pending():
            assert request.a in procedure.trained and request.b in procedure.trained
            procedure.record(request, oracle_tally(request, quality))
    trained = [i for request in asked for i in request.configs]
    assert len(trained) == len(set(trained)), "no config is trained twice"
    runs_per_request = [
        len(
            {
                PAPER_PARAMS[i]["optimizer"]
                + str(PAPER_PARAMS[i]["learning_rate"])
                + PAPER_PARAMS[i]["scheduler"]
                for i in r.configs
            }
        )
        for r in asked
    ]
    assert runs_per_request == [16, 8, 4], "halved, then the last runs to their end"
    epochs = sum(max(PAPER_PARAMS[i]["epochs"] for i in run if i in procedure.trained)
                 for run in PAPER_RUNS if set(run) & procedure.trained)  # fmt: skip
    assert epochs == 16 + 8 + 4 * 3 == 36
    best = max(procedure.trained, key=lambda i: quality[i])
    assert procedure.best() == best == procedure.ranking()[0]
    assert quality[best] == max(quality), "a noise-free judge keeps the best run"
    assert set(procedure.ranking()[len(procedure.trained) :]) == set(range(80)) - procedure.trained


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), stop_after=st.integers(0, 120))
def test_halving_replays_its_trainings_and_comparisons(seed: int, stop_after: int) -> None:
    """A fresh procedure fed the recorded trainings and comparisons (a training before the
    comparisons that follow it) asks the same as the original and ends the same."""
    rng = random.Random(seed)
    options = {"items_per_site": ITEMS_PER_SITE, "training_runs": PAPER_RUNS}
    original = make_procedure("halving", 80, **options)
    history: list[tuple[Comparison, Tally] | TrainRequest] = []
    outstanding: list[Comparison] = []
    while not original.done and len(history) < stop_after:
        history += train_asked(original)
        outstanding += original.pending()
        if outstanding:
            request = outstanding.pop(rng.randrange(len(outstanding)))
            tally = random_tally(request, rng)
            original.record(request, tally)
            history.append((request, tally))
    replayed = make_procedure("halving", 80, **options)
    for entry in history:
        if isinstance(entry, TrainRequest):
            replayed.record_training(entry)  # type: ignore[union-attr]
        else:
            replayed.record(*entry)
    assert replayed.training() == original.training()  # type: ignore[union-attr]
    asked = outstanding + original.pending()
    assert sorted(replayed.pending(), key=repr) == sorted(asked, key=repr)
    assert (replayed.done, replayed.best()) == (original.done, original.best())


def test_halving_without_runs_treats_each_config_as_one() -> None:
    procedure = make_procedure("halving", 6, items_per_site=ITEMS_PER_SITE)
    (request,) = procedure.training()
    assert request == TrainRequest(tuple(range(6)))
    with pytest.raises(ValueError, match="exactly once"):
        make_procedure("halving", 4, items_per_site=8, training_runs=[[0, 1], [1, 2, 3]])


def test_halving_racing_leaves_out_what_the_rungs_put_clearly_behind() -> None:
    """Racing starts among the checkpoints the rungs did not put more than z standard errors
    behind the leader, and the ones the last rung trained (not compared yet) all race."""
    runs = [[0, 4], [1, 5], [2, 6], [3, 7]]
    quality = [0.0, 0.2, 0.4, -3.0, 0.1, 0.3, 0.5, -3.1]
    procedure = make_procedure("halving", 8, items_per_site=50, training_runs=runs)

    def tally(request: Comparison) -> Tally:
        """The better config wins 60% of the items, or every item against a run of -3."""
        items = 3 * (request.item_stop - request.item_start)
        low, high = sorted((request.a, request.b), key=lambda i: quality[i])
        share = 1.0 if quality[low] < -2 else 0.6
        win = round(share * items)
        result = Tally(win=win, loss=items - win, items=items)
        return result if request.a == high else result.reversed()

    assert procedure.training() == [TrainRequest((0, 1, 2, 3))]
    procedure.record_training(procedure.training()[0])
    rung = procedure.pending()
    assert {3} & {i for r in rung for i in (r.a, r.b)}, "the rung compares the weak run too"
    for request in rung:
        procedure.record(request, tally(request))
    (last,) = procedure.training()
    procedure.record_training(last)
    racing = {i for r in procedure.pending() for i in (r.a, r.b)}
    assert 3 not in racing, "a checkpoint the rung put clearly behind does not race"
    assert set(last.configs) <= racing, "checkpoints not compared yet all race"
    strengths, covariance = bradley_terry_with_covariance(8, procedure._totals)
    variance = covariance[2, 2] + covariance[3, 3] - 2 * covariance[2, 3]
    assert strengths[3] < strengths[2] - 3 * math.sqrt(variance)
