"""A run's results, computed in one place for the console, the report and summary.json.

A pair's tallies are summed over all its recorded chunks and over both orientations
(`pair_tallies`) before anything is computed from them. The selection keeps the incumbent
(config a) when a comparison ends with as many wins as losses (`comparison_winner`); such a
comparison is decided by "tie-break" and counts as undecided for both sides, never as a win. Only
comparisons with wins != losses are "decided by evidence"; the standings rank configs by those
won minus lost. `run_result` reads a run from the coordinator database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Engine
from sqlmodel import Session

from common.protocol import code_meaning, code_name
from common.tally import Tally
from coordinator.db import (
    FederatedRun,
    baseline_comparison,
    comparisons,
    judgments,
    node_label,
    site_names,
    sites,
    trainings,
)
from coordinator.selection import comparison_winner, describe_mode, trains_on_request
from coordinator.training_cost import TrainingCost, training_cost

ParamValue = str | int | float
DecidedBy = Literal["evidence", "tie-break"]
CANNOT_TELL = (
    "The run could not tell the configs apart: no comparison had more wins than losses on "
    "either side, so every incumbent stayed by the tie-break alone."
)


@dataclass(frozen=True)
class Summing:
    """How one recorded comparison was summed: by SecAgg+ or in the clear, over which sites."""

    secure: bool
    count: int
    sites: tuple[str, ...] = ()
    """The contributing sites' names; empty for comparisons recorded before they were kept."""

    def describe(self) -> str:
        """`SecAgg+ over 3 sites` or `in the clear over 2 sites`."""
        return f"{'SecAgg+' if self.secure else 'in the clear'} over {self.count} sites"


@dataclass(frozen=True)
class LeftOut:
    """A site left out of the run: why, and the protocol code of its refusal (0: silence)."""

    site: str
    reason: str
    code: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "site": self.site,
            "reason": self.reason,
            "code": code_name(self.code) if self.code else None,
            "meaning": code_meaning(self.code) if self.code else None,
        }


@dataclass(frozen=True)
class RunResult:
    """What a finished (or stopped) run leaves for its report; comparisons may hold one entry
    per chunk of a pair."""

    run_key: str
    selection_mode: str
    configs: Sequence[tuple[str, Mapping[str, ParamValue]]]
    comparisons: Sequence[tuple[int, int, Tally]]
    best: int | None
    sites: Sequence[str]
    sites_left_out: Sequence[str]
    judgments: int
    wall_seconds: float
    aggregation: str = ""
    """How the tallies were summed (SecAgg+ or in the clear, and why)."""
    requested_mode: str = ""
    """The mode the operator set (`auto`, say); equal to `selection_mode` unless `auto` chose."""
    training: TrainingCost | None = None
    """What the sites trained for the run (None where not known)."""
    summing: Sequence[Summing] = ()
    """Per entry of `comparisons`, how it was summed (empty: not known)."""
    left_out: Sequence[LeftOut] = ()
    status: str = ""
    """running, done, failed or stopped (`reason` says why a run failed or stopped)."""
    reason: str = ""
    baseline: int | None = None
    """The run's baseline config, once the chosen one was measured against it (or is it)."""
    versus_baseline: Tally | None = None
    """Chosen vs baseline on every item, from the chosen config's side; None when the chosen
    config is the baseline, or without a baseline."""

    @property
    def selection(self) -> str:
        """The mode used and, under `auto`, why it was chosen."""
        return describe_mode(self.requested_mode or self.selection_mode, self.selection_mode)

    def __post_init__(self) -> None:
        if self.summing and len(self.summing) != len(self.comparisons):
            raise ValueError("one summing per comparison")
        indices = {i for a, b, _ in self.comparisons for i in (a, b)}
        indices |= {i for i in (self.best, self.baseline) if i is not None}
        if indices and not (min(indices) >= 0 and max(indices) < len(self.configs)):
            raise ValueError(f"config index out of range 0..{len(self.configs) - 1}")

    def config_id(self, index: int) -> str:
        return self.configs[index][0]


@dataclass(frozen=True)
class Record:
    """Comparisons from one side's point of view: won and lost by evidence (wins != losses), and
    ties, the undecided ones, where the incumbent stayed by the tie-break alone."""

    wins: int = 0
    ties: int = 0
    losses: int = 0

    def __add__(self, other: Record) -> Record:
        if not isinstance(other, Record):
            return NotImplemented
        return Record(self.wins + other.wins, self.ties + other.ties, self.losses + other.losses)

    @property
    def comparisons(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def decided(self) -> int:
        """Comparisons decided by evidence."""
        return self.wins + self.losses

    @property
    def net(self) -> int:
        """Comparisons won minus lost by evidence: a tie-break moves it neither way."""
        return self.wins - self.losses


def pair_tallies(result: RunResult) -> dict[tuple[int, int], Tally]:
    """Each compared pair once, in the orientation first recorded, its tallies summed."""
    totals: dict[tuple[int, int], Tally] = {}
    for a, b, tally in result.comparisons:
        if (b, a) in totals:
            totals[b, a] += tally.reversed()
        else:
            totals[a, b] = totals.get((a, b), Tally()) + tally
    return totals


def pair_summing(result: RunResult) -> dict[tuple[int, int], list[Summing]]:
    """Each compared pair (as `pair_tallies` orients it) and how its chunks were summed, each
    different way once, in the order recorded."""
    ways: dict[tuple[int, int], list[Summing]] = {}
    if not result.summing:
        return ways
    for (a, b, _tally), summing in zip(result.comparisons, result.summing, strict=True):
        pair = (b, a) if (b, a) in ways else (a, b)
        if summing not in ways.setdefault(pair, []):
            ways[pair].append(summing)
    return ways


def describe_summing(ways: Sequence[Summing]) -> str:
    """How a pair was summed, e.g. `SecAgg+ over 3 sites` (ways joined by `; `)."""
    return "; ".join(dict.fromkeys(way.describe() for way in ways)) or "-"


def summed_sites(ways: Sequence[Summing]) -> list[str]:
    """The sites whose tallies are in a pair's sum, by name."""
    return sorted({site for way in ways for site in way.sites})


def aggregation_mix(result: RunResult) -> str:
    """How the run's comparisons were summed, all told: `SecAgg+ over 3 sites for 5
    comparisons; in the clear over 2 sites for 2 comparisons`; the recorded decision when
    nothing was compared (or the comparisons predate this record)."""
    counts: dict[str, int] = {}
    for ways in pair_summing(result).values():
        described = describe_summing(ways)
        counts[described] = counts.get(described, 0) + 1
    if not counts:
        return result.aggregation
    return "; ".join(
        f"{how} for {n} comparison{'s' if n != 1 else ''}" for how, n in counts.items()
    )


def decided_by(tally: Tally) -> DecidedBy:
    """By evidence when one side has more wins than the other; else by the tie-break: the
    incumbent stays only because nothing told the two apart."""
    return "evidence" if tally.win != tally.loss else "tie-break"


def config_records(result: RunResult) -> list[Record]:
    """Per config index, its summed comparisons won, left undecided and lost."""
    records = [Record()] * len(result.configs)
    for (a, b), tally in pair_tallies(result).items():
        if decided_by(tally) == "tie-break":
            records[a] += Record(ties=1)
            records[b] += Record(ties=1)
        else:
            winner = comparison_winner(a, b, tally)
            records[winner] += Record(wins=1)
            records[b if winner == a else a] += Record(losses=1)
    return records


@dataclass(frozen=True)
class PairOutcome:
    """A compared pair, its tallies summed over chunks and orientations, and who won how."""

    a: int
    b: int
    tally: Tally
    winner: int | None
    """None when no item of the pair was judged."""
    decided_by: DecidedBy


def pair_outcomes(result: RunResult) -> list[PairOutcome]:
    """Every compared pair once, in the order first recorded."""
    return [
        PairOutcome(a, b, t, comparison_winner(a, b, t) if t.items else None, decided_by(t))
        for (a, b), t in pair_tallies(result).items()
    ]


def standings(result: RunResult) -> list[tuple[int, Record]]:
    """The leaderboard: (config index, record) of every compared config, by comparisons won
    minus lost by evidence, then by index."""
    records = config_records(result)
    compared = [(index, record) for index, record in enumerate(records) if record.comparisons]
    return sorted(compared, key=lambda entry: (-entry[1].net, entry[0]))


def run_result(engine: Engine, run_key: str) -> RunResult:
    """The run's configs, summed comparisons and sites; registered sites by the name they were
    registered under (`sites add`), others (insecure demo nodes) as `node-<id>`."""
    with Session(engine) as session:
        run = session.get(FederatedRun, run_key)
    if run is None:
        raise FileNotFoundError(f"no run named {run_key!r} in {engine.url}")
    names = site_names(engine)

    def name(node_id: str) -> str:
        return node_label(node_id, names)

    rows = comparisons(engine, run_key)
    run_sites = sites(engine, run_key)
    summing = [
        Summing(r.secure, r.sites, tuple(sorted(name(n) for n in r.contributor_ids())))
        for r in rows
    ]
    versus = baseline_comparison(engine, run_key)
    started, finished = run.started, run.finished or run.started
    return RunResult(
        run_key=run.run_key,
        selection_mode=run.selection_mode,
        configs=list(zip(run.ids(), run.param_list(), strict=True)),
        comparisons=[(r.a, r.b, Tally.of(r)) for r in rows],
        best=run.best_index,
        sites=[name(s.node_id) for s in run_sites if s.status == "active"],
        sites_left_out=[name(s.node_id) for s in run_sites if s.status == "left_out"],
        judgments=judgments(rows),
        wall_seconds=(finished - started).total_seconds(),
        aggregation=run.aggregation,
        requested_mode=run.requested_selection_mode(),
        training=_training(engine, run),
        summing=summing,
        left_out=[
            LeftOut(name(s.node_id), s.reason, s.code) for s in run_sites if s.status == "left_out"
        ],
        status=run.status,
        reason=run.reason,
        baseline=None if versus is None else versus.baseline,
        versus_baseline=None if versus is None or not versus.items else Tally.of(versus),
    )


def _training(engine: Engine, run: FederatedRun) -> TrainingCost | None:
    """What the run's sites trained: its completed train requests (a mode that trains on
    request), else the full grid; None for a space without epochs."""
    params = run.param_list()
    if not all("epochs" in p for p in params):
        return None
    if not trains_on_request(run.selection_mode):
        return training_cost(params, None)
    return training_cost(params, [row.indices() for row in trainings(engine, run.run_key)])
