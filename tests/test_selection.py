"""Selection procedures: tallies, the paper's blocks, round robin with Bradley-Terry, the adaptive
mode's sequential test, ask/tell bookkeeping and replay after a restart."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.selection import (
    MODES,
    AdaptiveProcedure,
    ComparisonRequest,
    SelectionProcedure,
    Tally,
    comparison_winner,
    make_procedure,
)

ITEMS_PER_SITE = 20
SITES = 3


def items_in(request: ComparisonRequest) -> int:
    stop = ITEMS_PER_SITE if request.item_stop is None else min(request.item_stop, ITEMS_PER_SITE)
    return SITES * max(stop - request.item_start, 0)


def oracle_tally(request: ComparisonRequest, quality: list[float]) -> Tally:
    """Three sites whose judge always prefers the config of higher quality."""
    items = items_in(request)
    if quality[request.a] > quality[request.b]:
        return Tally(win=items, items=items)
    return Tally(loss=items, items=items)


def random_tally(request: ComparisonRequest, rng: random.Random) -> Tally:
    counts = [0, 0, 0, 0]
    for _ in range(items_in(request)):
        counts[rng.choices(range(4), weights=[4, 2, 4, 1])[0]] += 1
    return Tally(*counts, items=sum(counts))


def run_to_end(
    procedure: SelectionProcedure, answer: Callable[[ComparisonRequest], Tally]
) -> list[tuple[ComparisonRequest, Tally]]:
    history = []
    while not procedure.done:
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
        ComparisonRequest(2, 2)
    with pytest.raises(ValueError):
        ComparisonRequest(0, 1, item_start=8, item_stop=8)


# The paper's procedure


def test_paper_runs_four_blocks_in_parallel_then_their_winners() -> None:
    quality = [-abs(i - 57) for i in range(80)]
    procedure = make_procedure("paper", 80)
    first = procedure.pending()
    assert [(r.a, r.b) for r in first] == [(0, 1), (20, 21), (40, 41), (60, 61)]
    assert all(r.item_start == 0 and r.item_stop is None for r in first), "all items"
    assert procedure.pending() == [], "outstanding requests are not listed twice"

    procedure.record(first[1], Tally(loss=10, items=10))
    (follow_up,) = procedure.pending()
    assert follow_up == ComparisonRequest(21, 22), "the winner meets the next config"
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
    procedure.record(ComparisonRequest(0, 1), Tally(4, 2, 4, 1, 11))
    assert procedure.pending() == [ComparisonRequest(0, 2)]


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


@pytest.mark.parametrize("mode", MODES)
def test_a_single_config_is_selected_without_asking(mode: str) -> None:
    procedure = make_procedure(mode, 1)
    assert procedure.done
    assert procedure.best() == 0
    assert procedure.pending() == []


@pytest.mark.parametrize("mode", MODES)
def test_unknown_or_repeated_records_are_refused(mode: str) -> None:
    procedure = make_procedure(mode, 5)
    request = procedure.pending()[0]
    with pytest.raises(ValueError):
        procedure.record(ComparisonRequest(3, 4, 100, 104), Tally())
    procedure.record(request, Tally(win=1, items=1))
    with pytest.raises(ValueError):
        procedure.record(request, Tally(win=1, items=1))


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="round-robin"):
        make_procedure("swiss", 8)


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
    procedure.record(ComparisonRequest(0, 1), tally)
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
    assert procedure.pending() == [ComparisonRequest(0, 1, 0, 4), ComparisonRequest(4, 5, 0, 4)]

    procedure.record(ComparisonRequest(0, 1, 0, 4), Tally(3, 4, 5, 0, 12))
    assert procedure.pending() == [ComparisonRequest(0, 1, 4, 8)], "undecided: next chunk"
    procedure.record(ComparisonRequest(0, 1, 4, 8), Tally(0, 12 - lead, lead, 0, 12))
    assert procedure.pending() == [ComparisonRequest(1, 2, 0, 4)], "b led by enough: decided"
    decided = procedure.comparisons[0]
    assert (decided.a, decided.b, decided.winner) == (0, 1, 1)
    assert decided.tally == Tally(3, 16 - lead, 5 + lead, 0, 24)


def test_adaptive_decides_on_the_totals_when_sites_run_out_of_items() -> None:
    procedure = make_procedure("adaptive", 3, blocks=1, chunk_items=4)
    procedure.record(ComparisonRequest(0, 1, 0, 4), Tally(2, 7, 3, 0, 12))
    procedure.record(ComparisonRequest(0, 1, 4, 8), Tally(1, 1, 1, 0, 3))
    assert procedure.pending() == [ComparisonRequest(0, 1, 8, 12)]
    procedure.record(ComparisonRequest(0, 1, 8, 12), Tally())
    assert procedure.pending() == [ComparisonRequest(1, 2, 0, 4)], "4 losses to 3 wins"


def test_adaptive_stops_at_the_item_cap() -> None:
    procedure = make_procedure("adaptive", 2, chunk_items=4, max_items=6)
    procedure.record(ComparisonRequest(0, 1, 0, 4), Tally(2, 8, 2, 0, 12))
    assert procedure.pending() == [ComparisonRequest(0, 1, 4, 6)]
    procedure.record(ComparisonRequest(0, 1, 4, 6), Tally(3, 3, 0, 0, 6))
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


# Replay after a restart


@settings(max_examples=30, deadline=None)
@given(mode=st.sampled_from(MODES), n_configs=st.integers(2, 9), seed=st.integers(0, 2**16))
def test_replaying_the_history_restores_the_state(mode: str, n_configs: int, seed: int) -> None:
    """Sites answer in any order; a fresh procedure fed the recorded history in the order it was
    recorded asks the same questions as the original, including those left unanswered."""
    rng = random.Random(seed)
    options = {"blocks": 3} if mode == "paper" else {}
    original = make_procedure(mode, n_configs, **options)
    history: list[tuple[ComparisonRequest, Tally]] = []
    outstanding: list[ComparisonRequest] = []
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

    def answer(request: ComparisonRequest) -> Tally:
        return random_tally(request, random.Random(hash((request, seed))))

    for procedure in (original, replayed):
        for request in asked:
            procedure.record(request, answer(request))
    assert run_to_end(original, answer) == run_to_end(replayed, answer)
    assert original.best() == replayed.best()
