"""Choosing the best candidate config from pairwise judge tallies: five selection procedures.

The coordinator never sees text, models or data: a procedure deals only in config indices and
integer tallies. It is driven ask/tell: `pending()` lists the comparisons that can be asked now
(several at once where the procedure allows, so sites judge them in parallel; each a
common.protocol `Comparison`, the form a compare message carries), and `record()`
takes each comparison's tally summed over sites. A procedure's state is a function of the
recorded history alone, so a restarted coordinator resumes by feeding a fresh procedure its
stored (request, tally) history in the original order. A request that was asked but never
recorded is simply listed again by `pending()`; one request is never listed twice while it is
outstanding.

Tally. Counts from config a's point of view over validation items: each item is judged in both
presentation orders, the two verdicts are reconciled into one (judge/verdict.py), and the item
counts once as a win, tie, loss or invalid. Hence win + tie + loss + invalid == items, for one
site's report and for any sum of reports over sites or item chunks.

Winner of a comparison: the config with more wins than losses on the tally; on equal wins and
losses config a, the incumbent, stays (`comparison_winner`). Ties and invalid items never count.

Modes. Each mode is registered once, by the class that runs it: `@implements(name, argument=
"run_setting", ...)` names the mode and the RunSettings field behind each keyword argument of its
constructor (`SELECTION_MODES`); federation.toml's `selection_mode` is checked against it when the
coordinator reads the file (`check_selection_mode`), and `procedure_for_run` builds the class from
a run's settings. A new mode is one class here plus its test:
- "paper": PandaLM's procedure. The configs are split into `blocks` (default 4) contiguous
  blocks, as equal in size as possible. Inside each block the current best meets the next config
  (the block's first config starts as the best); the blocks run in parallel. The block winners
  then meet the same way in block order. Every comparison is asked once on all validation items
  of every site: n_configs - 1 comparisons in all.
- "round-robin": every pair (a < b) once, on all items. The ranking orders configs by
  Bradley-Terry strength fitted on the item-level outcomes (each side gets its wins plus half of
  the ties; invalid items are left out), ties broken by comparisons won minus lost, then by lower
  index. The strengths maximise the Bradley-Terry likelihood of the outcome counts (Newton's
  method, `bradley_terry_with_covariance`) with a small L2 penalty (1/4 |theta|^2, negligible
  against hundreds of items per pair) that keeps them finite when a config wins every item.
- "racing": a fixed budget of judgments, `budget` times the paper procedure's (n_configs - 1)
  comparisons of `items_per_site` items, spent in batches of comparisons asked all at once
  (few federated rounds). It is Sequential Halving (Karnin, Koren & Somekh, "Almost Optimal
  Exploration in Multi-Armed Bandits", ICML 2013) on pairwise comparisons, with the action
  elimination of racing (Even-Dar, Mannor & Mansour, JMLR 7, 2006) and a final playoff. Each
  halving batch gets an equal share of the budget left (share = left / (halvings left + 1), the
  playoff counting as one): every survivor meets `opponents` others in random perfect matchings
  (seeded by the batch number; all pairs once that is as many), each pair on its next fresh
  item slice [cursor, cursor + chunk) of every site. After each batch the Bradley-Terry
  strengths are refitted on all recorded tallies (`bradley_terry_with_covariance`, the
  round-robin fit, with a Laplace covariance); a survivor whose strength is more than `z`
  standard errors below the leader's is dropped, and of the rest the strongest `keep` share
  goes on. Once at most `playoff` contenders remain, one playoff batch spends what is left:
  every pair of contenders on all its fresh items, and each contender against the strongest
  eliminated configs (common opponents) until the budget is filled. The best is the strongest
  survivor; the ranking orders configs by how long they survived, then by strength. A clear
  best is thus found with few judgments (the others fall more than `z` standard errors behind
  early and the rest of the budget is not spent), and a near-tie of the top two goes to the
  playoff. bench/bench_selection.py measures it (80 configs, 3 sites, 170 items, 200 trials,
  its synthetic judge): P(true best) 0.73 ± 0.03 at budget 0.25, 0.85 ± 0.03 at budget 1 (0.9x
  the judgments spent) against the paper procedure's 0.66 ± 0.03, in 6 rounds instead of 22.
- "adaptive": the paper's blocks and order of comparisons, but each comparison is asked in
  chunks of `chunk_items` validation items per site (items [k*chunk, (k+1)*chunk) in chunk k)
  and stops as soon as a sequential test on the running totals is decided. The test is Wald's
  sequential probability ratio test on the decisive items (wins and losses; ties and invalid
  items carry no evidence of direction) for p = P(a wins | decisive), H0: p = 1/2 - `delta`
  against H1: p = 1/2 + `delta`, with both error probabilities `alpha`. Its log-likelihood ratio
  is (wins - losses) * log((1/2 + delta) / (1/2 - delta)), so it stops once
  |wins - losses| >= ceil(log((1 - alpha) / alpha) / log((1 + 2 delta) / (1 - 2 delta))),
  checked after each chunk. With the defaults (chunk_items=4, delta=0.1, alpha=0.01) that is a
  lead of 12 decisive items. A comparison also stops when a chunk comes back with no items
  (the sites have no more) or when it reaches item `max_items` per site (default: no cap); the
  winner is then `comparison_winner` on the totals so far, exactly as in the paper mode.
  bench/bench_selection.py measures it against the paper mode.

- "halving": a multi-fidelity mode that decides what the sites train as well as what they
  judge: successive halving (Jamieson & Talwalkar, "Non-stochastic Best Arm Identification and
  Hyperparameter Optimization", AISTATS 2016), the subroutine of Hyperband (Li et al., JMLR
  18, 2018), run synchronously as in ASHA's rungs (Li et al., "A System for Massively Parallel
  Hyperparameter Tuning", MLSys 2020), with the space's training runs as the arms and epochs as
  the resource: the epoch-k checkpoint of a run is the config `epochs = k` (sites keep the
  run's full schedule when they stop it early, docs/TRAINER.md), so every checkpoint trained
  is a config of the space. It is also a `TrainingProcedure`: `training()` lists a
  `TrainRequest` (config indices whose runs the sites train up to those epochs) that every
  active site completes before `pending()` lists comparisons again. Rung 1 trains every run to
  its first checkpoint; a rung's comparisons are `rung_opponents` random perfect matchings of
  the runs' newest checkpoints plus each new checkpoint against its run's previous one, on
  fresh item slices (the rungs share `rung_share`, 0.3, of the judging budget equally); the
  Bradley-Terry strengths refitted on all tallies (racing's fit) rank the runs by their newest
  checkpoint, and the best 1/`eta` go on to the next rung, at checkpoint position 1, eta,
  eta^2, ...; once at most `finalists` of the runs (a quarter, at least 2) are left, the next
  rung trains them to their last epoch (the checkpoints between included). Then racing (the
  class above, reusing every tally) chooses among all checkpoints trained with the rest of the
  budget; those the rungs already put more than `z` standard errors behind the leader start
  out eliminated, as racing's own batches would drop them (the checkpoints the last rung
  trained, not compared yet, all race). The final near-ties between neighbouring epochs of the
  best runs need the judgments more than the rungs do: with `rung_share` 0.5 and no such start
  the bench found the true best 0.078 ± 0.015 less often than racing, with 0.3 and it 0.045 ±
  0.015 less often (1,000 trials, rank correlation 0.81). On the paper's 16 x 5 grid that is
  16 + 8 + 4 x 3 = 36 epoch-trainings per site instead of 80, in 3 train requests. State
  comes from the history as for the others: a restarted coordinator feeds the recorded
  trainings and comparisons in order (a training when the procedure asks for it).
  bench/bench_selection.py measures it under a learning-curve model against racing on the
  same trials.

`auto` is no procedure: the coordinator runs round robin when every active site's judge is
pointwise (`auto_mode`; a comparison then costs no forward pass once both configs' responses are
scored) and racing otherwise.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from common.protocol import Comparison, TrainRequest
from common.settings import AUTO, RunSettings
from common.tally import Tally


@dataclass(frozen=True)
class DecidedComparison:
    """A finished comparison: its total tally over all chunks and sites, and the winner."""

    a: int
    b: int
    tally: Tally
    winner: int


class SelectionProcedure(Protocol):
    """What the coordinator drives: ask `pending()`, `record()` each answer, until `done`."""

    def pending(self) -> list[Comparison]: ...

    def record(self, request: Comparison, tally: Tally) -> None: ...

    @property
    def done(self) -> bool: ...

    def best(self) -> int | None: ...

    def ranking(self) -> list[int]: ...


@runtime_checkable
class TrainingProcedure(SelectionProcedure, Protocol):
    """A procedure that also decides what the sites train (a multi-fidelity one): while
    `training()` lists requests, `pending()` lists no comparison; the coordinator has every
    active site train each request, then calls `record_training()` with it."""

    def training(self) -> list[TrainRequest]: ...

    def record_training(self, request: TrainRequest) -> None: ...


def comparison_winner(a: int, b: int, tally: Tally) -> int:
    """b if it has more wins than losses on `tally` (a's point of view), else a: the incumbent
    keeps its place on equal wins and losses."""
    return b if tally.loss > tally.win else a


ProcedureClass = TypeVar("ProcedureClass", bound=Callable[..., SelectionProcedure])


@dataclass(frozen=True)
class SelectionMode:
    """A registered mode: the class that runs it, and the RunSettings field behind each keyword
    argument of its constructor (after the number of configs)."""

    name: str
    procedure: Callable[..., SelectionProcedure]
    arguments: Mapping[str, str]
    trains: bool = False
    """The procedure asks for training (a `TrainingProcedure`): its constructor also takes
    `training_runs`, the space's runs as config indices by epoch, and the sites train only what
    it asks for (the space goes out with `train_on_request`)."""

    def build(
        self, n_configs: int, settings: RunSettings, training_runs: Sequence[Sequence[int]] = ()
    ) -> SelectionProcedure:
        values = {argument: getattr(settings, name) for argument, name in self.arguments.items()}
        if self.trains:
            values["training_runs"] = training_runs
        return self.procedure(n_configs, **values)


SELECTION_MODES: dict[str, SelectionMode] = {}
"""Every selection mode by name, in the order error messages list them."""


def implements(
    mode: str, *, trains: bool = False, **arguments: str
) -> Callable[[ProcedureClass], ProcedureClass]:
    """Class decorator: the class runs `mode`; each keyword names the RunSettings field that
    gives that constructor argument (`budget="budget"`); `trains`: see `SelectionMode`."""
    unknown = set(arguments.values()) - {f.name for f in fields(RunSettings)}
    if unknown:
        raise ValueError(f"selection mode {mode}: no RunSettings field {sorted(unknown)}")

    def bind(procedure: ProcedureClass) -> ProcedureClass:
        SELECTION_MODES[mode] = SelectionMode(mode, procedure, arguments, trains)
        return procedure

    return bind


def check_selection_mode(mode: str) -> None:
    """Refuse a `selection_mode` that is neither a registered mode nor auto."""
    names = [*SELECTION_MODES, AUTO]
    if mode not in names:
        expected = ", ".join(map(repr, names[:-1])) + f" or {names[-1]!r}"
        raise ValueError(f"{mode!r} is not one of {expected}")


class _Procedure(ABC):
    """Ask/tell bookkeeping shared by the modes: outstanding requests and decided comparisons."""

    def __init__(self, n_configs: int) -> None:
        if n_configs < 1:
            raise ValueError(f"n_configs must be at least 1, got {n_configs}")
        self.n_configs = n_configs
        self._outstanding: set[Comparison] = set()
        self._decided: list[DecidedComparison] = []

    @property
    def comparisons(self) -> list[DecidedComparison]:
        """The decided comparisons, in the order they were decided."""
        return list(self._decided)

    def pending(self) -> list[Comparison]:
        """Requests that can be asked now and are not already outstanding; marks them asked."""
        fresh = [request for request in self._askable() if request not in self._outstanding]
        self._outstanding.update(fresh)
        return fresh

    def record(self, request: Comparison, tally: Tally) -> None:
        """Take the summed tally of a request that is outstanding or could be asked now."""
        if request not in self._askable():
            raise ValueError(f"{request} is not a comparison this procedure is waiting for")
        self._outstanding.discard(request)
        self._apply(request, tally)

    def net_wins(self) -> list[int]:
        """Per config: comparisons won minus comparisons lost so far."""
        net = [0] * self.n_configs
        for comparison in self._decided:
            loser = comparison.b if comparison.winner == comparison.a else comparison.a
            net[comparison.winner] += 1
            net[loser] -= 1
        return net

    @abstractmethod
    def _askable(self) -> Collection[Comparison]:
        """The requests that can be asked now (outstanding ones included)."""

    @abstractmethod
    def _apply(self, request: Comparison, tally: Tally) -> None: ...

    def _decide(self, a: int, b: int, tally: Tally) -> int:
        winner = comparison_winner(a, b, tally)
        self._decided.append(DecidedComparison(a, b, tally, winner))
        return winner


@dataclass
class _Ladder:
    """One group's sequential comparisons: the current best meets the next entrant."""

    entrants: list[int]
    incumbent: int = field(init=False)
    next_entrant: int = 1
    total: Tally = field(default_factory=Tally)
    item_start: int = 0

    def __post_init__(self) -> None:
        self.incumbent = self.entrants[0]

    @property
    def done(self) -> bool:
        return self.next_entrant >= len(self.entrants)

    @property
    def challenger(self) -> int:
        return self.entrants[self.next_entrant]

    def advance(self, winner: int) -> None:
        self.incumbent = winner
        self.next_entrant += 1
        self.total = Tally()
        self.item_start = 0


@implements("paper", blocks="blocks")
class PaperProcedure(_Procedure):
    """Blocks of sequential comparisons, then the block winners; each comparison on all items."""

    def __init__(self, n_configs: int, blocks: int = 4) -> None:
        super().__init__(n_configs)
        if blocks < 1:
            raise ValueError(f"blocks must be at least 1, got {blocks}")
        groups = np.array_split(np.arange(n_configs), blocks)
        self._blocks = [_Ladder([int(i) for i in group]) for group in groups if len(group)]
        self._final: _Ladder | None = None
        self._start_final_when_blocks_done()

    @property
    def done(self) -> bool:
        return self._final is not None and self._final.done

    def best(self) -> int | None:
        return self._final.incumbent if self._final is not None and self._final.done else None

    def ranking(self) -> list[int]:
        """The winner first (once known), then by comparisons won minus lost, then by the sum of
        their wins minus losses over items, then by lower index. Configs not yet compared sit
        between those that won more than they lost and those that lost more."""
        net = self.net_wins()
        item_net = [0] * self.n_configs
        for comparison in self._decided:
            item_net[comparison.a] += comparison.tally.win - comparison.tally.loss
            item_net[comparison.b] += comparison.tally.loss - comparison.tally.win
        best = self.best()
        return sorted(range(self.n_configs), key=lambda i: (i != best, -net[i], -item_net[i], i))

    def _active(self) -> list[_Ladder]:
        ladders = self._blocks if self._final is None else [self._final]
        return [ladder for ladder in ladders if not ladder.done]

    def _request(self, ladder: _Ladder) -> Comparison:
        return Comparison(ladder.incumbent, ladder.challenger)

    def _settled(self, request: Comparison, ladder: _Ladder, chunk: Tally) -> bool:
        return True

    def _askable(self) -> list[Comparison]:
        return [self._request(ladder) for ladder in self._active()]

    def _apply(self, request: Comparison, tally: Tally) -> None:
        ladder = next(ladder for ladder in self._active() if self._request(ladder) == request)
        ladder.total += tally
        if self._settled(request, ladder, tally):
            ladder.advance(self._decide(request.a, request.b, ladder.total))
            self._start_final_when_blocks_done()
        else:
            ladder.item_start = request.item_stop

    def _start_final_when_blocks_done(self) -> None:
        if self._final is None and all(block.done for block in self._blocks):
            self._final = _Ladder([block.incumbent for block in self._blocks])


@implements("round-robin")
class RoundRobin(_Procedure):
    """Every pair once on all items; ranked by Bradley-Terry strength."""

    def __init__(self, n_configs: int) -> None:
        super().__init__(n_configs)
        pairs = itertools.combinations(range(n_configs), 2)
        self._unrecorded = dict.fromkeys(Comparison(a, b) for a, b in pairs)
        self._strengths: np.ndarray | None = None

    @property
    def done(self) -> bool:
        return not self._unrecorded

    def best(self) -> int | None:
        return self.ranking()[0] if self.done else None

    def ranking(self) -> list[int]:
        """By strength, then comparisons won minus lost, then lower index. Strengths are compared
        to 6 decimals, the precision the fit reaches, so symmetric records tie exactly."""
        strengths = np.round(self.strengths(), 6)
        net = self.net_wins()
        return sorted(range(self.n_configs), key=lambda i: (-strengths[i], -net[i], i))

    def strengths(self) -> np.ndarray:
        """Bradley-Terry log-strengths of the configs from the comparisons recorded so far."""
        if self._strengths is None:
            self._strengths = bradley_terry(self.n_configs, self._decided)
        return self._strengths.copy()

    def _askable(self) -> dict[Comparison, None]:
        return self._unrecorded

    def _apply(self, request: Comparison, tally: Tally) -> None:
        del self._unrecorded[request]
        self._decide(request.a, request.b, tally)
        self._strengths = None


@implements("adaptive", blocks="blocks", chunk_items="chunk_items", max_items="validation_items")
class AdaptiveProcedure(PaperProcedure):
    """The paper's blocks, each comparison asked chunk by chunk until the SPRT is decided."""

    def __init__(
        self,
        n_configs: int,
        blocks: int = 4,
        chunk_items: int = 4,
        delta: float = 0.1,
        alpha: float = 0.01,
        max_items: int | None = None,
    ) -> None:
        if chunk_items < 1:
            raise ValueError(f"chunk_items must be at least 1, got {chunk_items}")
        if not 0 < delta < 0.5 or not 0 < alpha < 0.5:
            raise ValueError(f"need 0 < delta < 0.5 and 0 < alpha < 0.5, got {delta}, {alpha}")
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.chunk_items = chunk_items
        self.max_items = max_items
        self.decisive_lead = math.ceil(
            math.log((1 - alpha) / alpha) / math.log((1 + 2 * delta) / (1 - 2 * delta))
        )
        super().__init__(n_configs, blocks)

    def _request(self, ladder: _Ladder) -> Comparison:
        stop = ladder.item_start + self.chunk_items
        if self.max_items is not None:
            stop = min(stop, self.max_items)
        return Comparison(ladder.incumbent, ladder.challenger, ladder.item_start, stop)

    def _settled(self, request: Comparison, ladder: _Ladder, chunk: Tally) -> bool:
        return (
            chunk.items == 0
            or request.item_stop == self.max_items
            or abs(ladder.total.win - ladder.total.loss) >= self.decisive_lead
        )


@implements("racing", items_per_site="validation_items", budget="budget")
class RacingProcedure(_Procedure):
    """Sequential halving over Bradley-Terry strengths with confidence-bound elimination and a
    final playoff, within a fixed judging budget (see the module docstring)."""

    def __init__(
        self,
        n_configs: int,
        items_per_site: int,
        budget: float = 1.0,
        opponents: int = 6,
        keep: float = 0.5,
        playoff: int = 3,
        z: float = 3.0,
    ) -> None:
        super().__init__(n_configs)
        if items_per_site < 1:
            raise ValueError(f"items_per_site must be at least 1, got {items_per_site}")
        if budget <= 0 or opponents < 1 or not 0 < keep < 1 or playoff < 2 or z <= 0:
            raise ValueError(
                "need budget > 0, opponents >= 1, 0 < keep < 1, playoff >= 2 and z > 0, got "
                f"{budget}, {opponents}, {keep}, {playoff}, {z}"
            )
        self.items_per_site = items_per_site
        self.budget_items = max(1, round(budget * max(n_configs - 1, 1) * items_per_site))
        self.opponents, self.keep, self.playoff, self.z = opponents, keep, playoff, z
        self.spent_items = 0
        self.batches = 0
        self.survivors = list(range(n_configs))
        self._last_batch = [0] * n_configs  # per config: the last batch it survived
        self._totals: dict[tuple[int, int], Tally] = {}
        self._cursor: dict[tuple[int, int], int] = {}
        self._exhausted: set[tuple[int, int]] = set()
        self._batch: dict[Comparison, None] = {}
        self._strengths = np.zeros(n_configs)
        self._finished = False
        self._playoff_held = False
        self._plan()

    @property
    def done(self) -> bool:
        return self._finished

    def best(self) -> int | None:
        return self.ranking()[0] if self._finished else None

    def ranking(self) -> list[int]:
        """Survivors first, then by the batch a config was eliminated after (later is better),
        then by Bradley-Terry strength, then lower index."""
        strengths = np.round(self._strengths, 6)
        return sorted(range(self.n_configs), key=lambda i: (-self._last_batch[i], -strengths[i], i))

    def _askable(self) -> dict[Comparison, None]:
        return self._batch

    def _apply(self, request: Comparison, tally: Tally) -> None:
        del self._batch[request]
        pair = (request.a, request.b)
        self._totals[pair] = self._totals.get(pair, Tally()) + tally
        self._cursor[pair] = request.item_stop
        if tally.items == 0:
            self._exhausted.add(pair)
        if not self._batch:
            self._eliminate()
            self._plan()

    def _remaining(self, pair: tuple[int, int]) -> int:
        if pair in self._exhausted:
            return 0
        return self.items_per_site - self._cursor.get(pair, 0)

    def _eliminate(self) -> None:
        """Refit on everything recorded; drop the survivors clearly behind the leader, then (but
        after the playoff) keep the strongest `keep` share of them, at least `playoff`."""
        was_playoff = len(self.survivors) <= self.playoff
        alive = self._not_clearly_behind(self.survivors)
        strengths = self._strengths
        if not was_playoff:
            alive.sort(key=lambda i: (-strengths[i], i))
            alive = alive[: max(self.playoff, math.ceil(len(self.survivors) * self.keep))]
        self.survivors = sorted(alive)
        for i in self.survivors:
            self._last_batch[i] = self.batches

    def _not_clearly_behind(self, candidates: Sequence[int]) -> list[int]:
        """Refit on everything recorded; the candidates whose strength is no more than `z`
        standard errors below the strongest candidate's."""
        strengths, covariance = bradley_terry_with_covariance(self.n_configs, self._totals)
        self._strengths = strengths
        leader = max(candidates, key=lambda i: (strengths[i], -i))

        def clearly_behind(i: int) -> bool:
            variance = covariance[leader, leader] + covariance[i, i] - 2 * covariance[leader, i]
            return strengths[leader] - strengths[i] > self.z * math.sqrt(max(variance, 0.0))

        return [i for i in candidates if not clearly_behind(i)]

    def _plan(self) -> None:
        """The next batch of requests, all askable at once; none: the procedure is done."""
        left = self.budget_items - self.spent_items
        contenders = len(self.survivors)
        if self._playoff_held:
            self._finished = True
            return
        if contenders <= self.playoff:
            self._playoff_held = True
            pairs = self._playoff_pairs(left)
            share = left
        else:
            halvings = math.ceil(math.log(contenders / self.playoff) / math.log(1 / self.keep))
            share = left // (halvings + 1)
            count = min(self.opponents, max(1, share // math.ceil(contenders / 2)))
            if count >= contenders - 1:
                pairs = dict.fromkeys(itertools.combinations(self.survivors, 2), 1)
            else:
                pairs = self._matchings(count)
        matches = max(1, sum(pairs.values()))
        chunk = share // matches if share >= matches else left // matches
        batch = {}
        for pair, count in pairs.items():
            size = min(chunk * count, self._remaining(pair))
            if size >= 1:
                start = self._cursor.get(pair, 0)
                batch[Comparison(*pair, start, start + size)] = None
        if contenders <= 1 or not batch:
            self._finished = True
            return
        self.batches += 1
        self.spent_items += sum(r.item_stop - r.item_start for r in batch)
        self._batch = batch

    def _playoff_pairs(self, left: int) -> dict[tuple[int, int], int]:
        """Every pair of contenders, and each contender against the strongest eliminated configs
        (common opponents: a near-tie is also told apart by how each fares against them), as
        many of those as the remaining budget can fill with fresh items."""
        pairs = dict.fromkeys(itertools.combinations(self.survivors, 2), 1)
        capacity = sum(self._remaining(pair) for pair in pairs)
        others = sorted(
            (i for i in self._pool() if i not in self.survivors),
            key=lambda i: (-self._strengths[i], i),
        )
        for other in others:
            if capacity >= left:
                break
            for contender in self.survivors:
                pair = (min(contender, other), max(contender, other))
                pairs[pair] = 1
                capacity += self._remaining(pair)
        return pairs

    def _pool(self) -> Collection[int]:
        """The configs racing may compare: all of them."""
        return range(self.n_configs)

    def _matchings(self, count: int) -> dict[tuple[int, int], int]:
        """`count` random perfect matchings of the survivors (seeded by the batch number,
        so a replay draws the same); an odd one out meets a random other survivor."""
        pairs: dict[tuple[int, int], int] = {}
        for matching in range(count):
            rng = np.random.default_rng([self.batches, matching])
            order = [self.survivors[i] for i in rng.permutation(len(self.survivors))]
            if len(order) % 2:
                order.append(order[int(rng.integers(len(order) - 1))])
            for a, b in zip(order[::2], order[1::2], strict=True):
                pair = (min(a, b), max(a, b))
                pairs[pair] = pairs.get(pair, 0) + 1
        return pairs


@implements("halving", trains=True, items_per_site="validation_items", budget="budget", eta="eta")
class HalvingProcedure(RacingProcedure):
    """Successive halving over the space's training runs with epochs as the fidelity, then
    racing among every checkpoint trained (see the module docstring)."""

    def __init__(
        self,
        n_configs: int,
        items_per_site: int,
        training_runs: Sequence[Sequence[int]] = (),
        budget: float = 1.0,
        eta: int = 2,
        finalists: float = 0.25,
        rung_share: float = 0.3,
        rung_opponents: int = 3,
        **racing: float,
    ) -> None:
        self.runs = [tuple(run) for run in training_runs] or [(i,) for i in range(n_configs)]
        if sorted(i for run in self.runs for i in run) != list(range(n_configs)):
            raise ValueError("training_runs must hold every config index exactly once")
        if eta < 2 or not 0 < finalists <= 1 or not 0 <= rung_share <= 1 or rung_opponents < 1:
            raise ValueError(
                "need eta >= 2, 0 < finalists <= 1, 0 <= rung_share <= 1 and rung_opponents "
                f">= 1, got {eta}, {finalists}, {rung_share}, {rung_opponents}"
            )
        self.eta = eta
        self.min_runs = max(2, math.ceil(finalists * len(self.runs)))
        """Halving stops at this many runs (a `finalists` share, at least 2), which the next
        rung trains to their last epoch."""
        self.rung_share, self.rung_opponents = rung_share, rung_opponents
        self.longest = max(len(run) for run in self.runs)
        self.rung = 0
        self.position = 0
        """The checkpoint (1-based, within a run) the current rung trains the survivors to."""
        self.alive = list(range(len(self.runs)))
        """Runs still trained further: every run at first, then the best 1/eta of each rung."""
        self.trained: set[int] = set()
        self._training: TrainRequest | None = None
        self._racing = n_configs == 1  # nothing to train: racing finishes at once
        self._rung_spent = 0
        super().__init__(n_configs, items_per_site, budget, **racing)  # type: ignore[arg-type]

    def _pool(self) -> Collection[int]:
        """Racing compares only configs trained."""
        return self.trained

    def ranking(self) -> list[int]:
        """Racing's order among the configs trained, then the configs never trained."""
        order = super().ranking()
        return sorted(order, key=lambda i: i not in self.trained and self.n_configs > 1)

    def training(self) -> list[TrainRequest]:
        """The train request to complete before the next comparisons, if any."""
        return [] if self._training is None else [self._training]

    def record_training(self, request: TrainRequest) -> None:
        """Every active site has trained `request`'s configs: compare them now."""
        if request != self._training:
            raise ValueError(f"{request} is not a training this procedure is waiting for")
        self.trained.update(request.configs)
        self._training = None
        if self.position == self.longest:
            self._start_racing()
        else:
            self._ask_rung(self._rung_pairs(list(request.configs)))

    def _newest(self, run: int, position: int | None = None) -> int:
        """The run's config at `position` (default: the current rung's), or its last."""
        checkpoints = self.runs[run]
        return checkpoints[min(position or self.position, len(checkpoints)) - 1]

    def _next_position(self, position: int, runs: int) -> int:
        """Rung positions grow by eta (1, eta, eta^2, ...); once no more than `min_runs` runs
        are left, the next rung trains them to their end."""
        if position == 0:
            return 1
        return self.longest if runs <= self.min_runs else min(position * self.eta, self.longest)

    def _rungs_left(self) -> int:
        """Rungs still to compare, this one included (the last one's comparisons are racing's)."""
        position, runs, count = self.position, len(self.alive), 0
        while position < self.longest:
            count += 1
            runs = max(self.min_runs, math.ceil(runs / self.eta))
            position = self._next_position(position, runs)
        return max(count, 1)

    def _plan(self) -> None:
        """The next rung's training, or (past the last rung) racing's next batch."""
        if self._racing:
            super()._plan()
            return
        self.rung += 1
        self.position = self._next_position(self.position, len(self.alive))
        wanted = {
            config
            for r in self.alive
            for config in self.runs[r][: self.position]
            if config not in self.trained
        }
        if not wanted:
            self._start_racing()
            return
        # the rung's checkpoints; those between two rungs are trained on the way and asked too
        self._training = TrainRequest(tuple(sorted(wanted)))

    def _eliminate(self) -> None:
        """After racing's batches, racing's elimination; after a rung, its best 1/eta runs (at
        least `min_runs`) go on, by their newest checkpoint: whether training further pays."""
        if self._racing:
            super()._eliminate()
            return
        self._strengths = bradley_terry_with_covariance(self.n_configs, self._totals)[0]
        ranked = sorted(self.alive, key=lambda r: (-self._strengths[self._newest(r)], r))
        keep = max(self.min_runs, math.ceil(len(ranked) / self.eta))
        self.alive = sorted(ranked[:keep])

    def _rung_pairs(self, trained_now: list[int]) -> dict[tuple[int, int], int]:
        """`rung_opponents` random perfect matchings of the runs' newest checkpoints (seeded by
        the rung, so a replay draws the same), and each checkpoint trained now against its
        run's previous one: whether one more epoch helped."""
        entrants = [self._newest(r) for r in self.alive]
        pairs: dict[tuple[int, int], int] = {}
        for matching in range(min(self.rung_opponents, len(entrants) - 1)):
            rng = np.random.default_rng([self.rung, matching, 1])
            order = [entrants[i] for i in rng.permutation(len(entrants))]
            if len(order) % 2:
                order.append(order[int(rng.integers(len(order) - 1))])
            for a, b in zip(order[::2], order[1::2], strict=True):
                pair = (min(a, b), max(a, b))
                pairs[pair] = pairs.get(pair, 0) + 1
        for run in self.runs:
            for earlier, later in itertools.pairwise(run):
                if later in trained_now and earlier in self.trained:
                    pairs[earlier, later] = pairs.get((earlier, later), 0) + 1
        return pairs

    def _ask_rung(self, pairs: Mapping[tuple[int, int], int]) -> None:
        """Ask `pairs` on fresh items with an equal share of the rungs' budget left."""
        rung_budget = round(self.rung_share * self.budget_items) - self._rung_spent
        share = rung_budget // self._rungs_left()
        matches = max(1, sum(pairs.values()))
        batch = {}
        for pair, count in pairs.items():
            size = min(share // matches * count, self._remaining(pair))
            if size >= 1:
                start = self._cursor.get(pair, 0)
                batch[Comparison(*pair, start, start + size)] = None
        spent = sum(r.item_stop - r.item_start for r in batch)
        self.spent_items += spent
        self._rung_spent += spent
        self._batch = batch
        if not batch:
            self._eliminate()
            self._plan()

    def _start_racing(self) -> None:
        """Racing among the checkpoints trained, its fits using the rungs' tallies too: those
        the rungs already put more than `z` standard errors behind the leader start out
        eliminated, as racing's own batches would drop them, so the budget left goes to the
        contenders; the checkpoints the last rung trained, not compared yet, all race."""
        self._racing = True
        compared = {i for pair in self._totals for i in pair}
        if compared:
            kept = self._not_clearly_behind(sorted(compared & self.trained))
            self.survivors = sorted(set(kept) | (self.trained - compared))
        else:
            self.survivors = sorted(self.trained)
        super()._plan()


def bradley_terry_with_covariance(
    n_configs: int, totals: Mapping[tuple[int, int], Tally]
) -> tuple[np.ndarray, np.ndarray]:
    """Bradley-Terry strengths and their approximate covariance from per-pair totals.

    The maximum of the penalized log-likelihood in which each side scores its wins plus half
    the ties, with an L2 penalty 1/4 |theta|^2 (what a logistic regression with C = 1 on
    mirrored +1/-1 pair rows amounts to), found by Newton's method, which also gives the
    covariance: the inverse of the penalized observed information (a Laplace approximation).
    Newton on the 80-odd strengths takes milliseconds where a general solver takes a hundred
    times longer, and racing refits after every batch."""
    pairs = [(a, b, t.win + t.tie / 2, t.loss + t.tie / 2) for (a, b), t in totals.items()]
    penalty = 0.5
    strengths = np.zeros(n_configs)
    information = penalty * np.eye(n_configs)
    if not pairs:
        return strengths, np.linalg.inv(information)
    a, b, a_points, b_points = (np.array(column) for column in zip(*pairs, strict=True))
    a, b = a.astype(int), b.astype(int)
    for _ in range(100):
        p = 1 / (1 + np.exp(strengths[b] - strengths[a]))
        pair_gradient = a_points - (a_points + b_points) * p
        gradient = -penalty * strengths
        np.add.at(gradient, a, pair_gradient)
        np.add.at(gradient, b, -pair_gradient)
        weight = (a_points + b_points) * p * (1 - p)
        information = penalty * np.eye(n_configs)
        np.add.at(information, (a, a), weight)
        np.add.at(information, (b, b), weight)
        np.add.at(information, (a, b), -weight)
        np.add.at(information, (b, a), -weight)
        step = np.linalg.solve(information, gradient)
        strengths += step
        if np.abs(step).max() < 1e-10:
            break
    return strengths, np.linalg.inv(information)


def bradley_terry(n_configs: int, comparisons: list[DecidedComparison]) -> np.ndarray:
    """Bradley-Terry log-strengths from recorded comparisons: each side scores its wins plus
    half the ties, invalid items are left out (the fit of `bradley_terry_with_covariance`)."""
    totals: dict[tuple[int, int], Tally] = {}
    for comparison in comparisons:
        pair = (comparison.a, comparison.b)
        totals[pair] = totals.get(pair, Tally()) + comparison.tally
    return bradley_terry_with_covariance(n_configs, totals)[0]


def auto_mode(pointwise_judges: Sequence[bool]) -> str:
    """What `auto` runs: round robin when every active site's judge is pointwise (a comparison
    then costs no forward pass once both configs' responses are scored, so the exhaustive
    procedure costs what any other does), racing otherwise (and with no site at all)."""
    return "round-robin" if pointwise_judges and all(pointwise_judges) else "racing"


def describe_mode(requested: str, mode: str) -> str:
    """The mode a run uses, and under `auto` why, for the console, report and summary."""
    if requested != AUTO:
        return mode
    if mode == AUTO:
        return "auto: not chosen yet (waiting for the sites' replies to the space)"
    why = (
        "every active site's judge is pointwise"
        if mode == "round-robin"
        else "not every active site's judge is pointwise"
    )
    return f"{mode} (auto: {why})"


def make_procedure(
    mode: str, n_configs: int, **arguments: int | float | None
) -> SelectionProcedure:
    """A fresh procedure for `mode`; `arguments` go to its class's constructor."""
    return _registered(mode).procedure(n_configs, **arguments)


def procedure_for_run(
    mode: str,
    n_configs: int,
    settings: RunSettings,
    training_runs: Sequence[Sequence[int]] = (),
) -> SelectionProcedure:
    """A fresh procedure for `mode` (the run's, or the one `auto` chose), its arguments read from
    the run's settings as the mode's registration says (and, for a mode that trains, the
    space's training runs)."""
    return _registered(mode).build(n_configs, settings, training_runs)


def trains_on_request(mode: str) -> bool:
    """Whether `mode` asks the sites for training (they then train nothing up front)."""
    return mode in SELECTION_MODES and SELECTION_MODES[mode].trains


def _registered(mode: str) -> SelectionMode:
    if mode not in SELECTION_MODES:
        choices = ", ".join(SELECTION_MODES)
        raise ValueError(f"unknown selection mode {mode!r}; choose one of {choices}")
    return SELECTION_MODES[mode]
