"""`pandalm-coordinator console`: a live view of a run, read from the coordinator database.

It needs nothing from the sites: sites and their progress, the current round and comparisons,
running tallies, the leaderboard and the best config so far. Pair tallies, winners and standings
come from `coordinator/results.py`, as the report's do, so the two never disagree: a comparison
left at equal wins and losses counts as undecided, not as a win for the incumbent.
"""

from __future__ import annotations

import json

from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import Session, select

from coordinator.db import FederatedRun, RoundLog, node_label, site_names, sites
from coordinator.results import (
    CANNOT_TELL,
    PairOutcome,
    Record,
    RunResult,
    Summing,
    aggregation_mix,
    describe_summing,
    pair_outcomes,
    pair_summing,
    run_result,
    standings,
    summed_sites,
)
from dbschema.columns import utc_now


def latest_run(engine: Engine) -> str | None:
    with Session(engine) as session:
        run = session.exec(select(FederatedRun).order_by(FederatedRun.started.desc())).first()
        return run.run_key if run else None


def _label(index: int, ids: list[str], params: list[dict]) -> str:
    p = params[index]
    return (
        f"#{index} {ids[index][:8]} {p['optimizer']} lr={p['learning_rate']:g} "
        f"{p['scheduler']} ep={p['epochs']}"
    )


def render(engine: Engine, run_key: str) -> Panel:
    """One frame of the console: the run's state from its rows, its results from `run_result`
    (the report's computation)."""
    with Session(engine) as session:
        run = session.get(FederatedRun, run_key)
        if run is None:
            return Panel(f"no run named {run_key!r} yet")
        last_round = session.exec(
            select(RoundLog).where(RoundLog.run_key == run_key).order_by(RoundLog.id.desc())
        ).first()
    result = run_result(engine, run_key)
    ids = [config_id for config_id, _ in result.configs]
    params = [dict(config_params) for _, config_params in result.configs]
    pairs = pair_outcomes(result)
    ranked = standings(result)
    best = run.best_index
    footer = (
        f"best config: {_label(best, ids, params)}  {json.dumps(params[best])}"
        if best is not None
        else "best config: not decided yet"
    )
    if pairs and not any(record.decided for _, record in ranked):
        footer = f"[bold]{CANNOT_TELL}[/bold]\n{footer}"
    versus = versus_baseline_line(result)
    if versus is not None:
        footer += f"\n{versus}"
    parts = (
        _header(run, result, last_round),
        _site_table(engine, run_key),
        _comparison_table(pairs, pair_summing(result)),
        _leaderboard(ranked, ids, params),
        footer,
    )
    return Panel(Group(*parts), title="pandalm-fed")


def versus_baseline_line(result: RunResult) -> str | None:
    """How the chosen config fared against the run's baseline, once it was asked."""
    if result.baseline is None or result.best is None:
        return None
    baseline = f"#{result.baseline} {result.config_id(result.baseline)[:8]}"
    tally = result.versus_baseline
    if tally is None:
        return f"chosen vs baseline {baseline}: the baseline was chosen (no comparison needed)"
    return (
        f"chosen vs baseline {baseline}: {tally.win} wins, {tally.tie} ties, {tally.loss} "
        f"losses, {tally.invalid} invalid of {tally.items} items (margin {tally.margin:+.3f})"
    )


def _header(run: FederatedRun, result: RunResult, last_round: RoundLog | None) -> str:
    """The run's mode, status, size and age; how its tallies are summed; its last round."""
    end = run.finished or utc_now()
    header = (
        f"run [bold]{run.run_key}[/bold]  selection {result.selection}  "
        f"status {run.status}  "
        f"configs {len(result.configs)}  elapsed {(end - run.started).total_seconds():.0f}s"
    )
    if run.aggregation:
        header += f"\naggregation: {aggregation_mix(result)} (now: {run.aggregation})"
    if result.training is not None and result.training.requests:
        cost = result.training
        header += (
            f"\ntraining: rung {cost.requests}, {cost.runs_alive} of {cost.runs} runs alive, "
            f"{cost.epoch_trainings} of {cost.grid_epoch_trainings} epoch-trainings per site "
            f"({cost.ratio_to_grid:.0%} of the grid)"
        )
    if run.reason:
        header += f"\n[bold]{run.status}: {escape(run.reason)}[/bold]"
    if last_round is not None:
        header += (
            f"\nround {last_round.number}: {last_round.message_type}, "
            f"{last_round.comparisons} comparisons, {last_round.answered} answers "
            f"({last_round.pending} pending) in {last_round.seconds:.1f}s"
        )
    return header


def _site_table(engine: Engine, run_key: str) -> Table:
    """The run's sites by name: status (with why one was left out), progress, last seen and
    when it acknowledged the run's result."""
    names = site_names(engine)
    table = Table(title="sites")
    for column in ("site", "status", "progress", "last seen", "result acknowledged"):
        table.add_column(column)
    for site in sites(engine, run_key):
        seen = site.last_seen.isoformat(timespec="seconds") if site.last_seen else "-"
        told = site.result_acknowledged
        status = site.status if not site.reason else f"{site.status}: {escape(site.reason)}"
        label = node_label(site.node_id, names)
        table.add_row(
            label,
            status,
            f"{site.progress / 10:.0f}%",
            seen,
            told.isoformat(timespec="seconds") if told else "-",
        )
    return table


def _comparison_table(
    pairs: list[PairOutcome], summing: dict[tuple[int, int], list[Summing]]
) -> Table:
    """The last 12 compared pairs, their summed tallies and winners, and how each was summed
    over which sites."""
    table = Table(title="comparisons (summed over sites and orientations)")
    for column in ("a", "b", "win", "tie", "loss", "invalid", "items", "winner", "summed"):
        table.add_column(column)
    for pair in pairs[-12:]:
        winner = "-" if pair.winner is None else f"#{pair.winner}"
        if pair.decided_by == "tie-break":
            winner += " (tie-break)"
        t = pair.tally
        counts = (pair.a, pair.b, t.win, t.tie, t.loss, t.invalid, t.items)
        ways = summing.get((pair.a, pair.b), [])
        summed = describe_summing(ways)
        if summed_sites(ways):
            summed += f": {', '.join(summed_sites(ways))}"
        table.add_row(*(str(v) for v in counts), winner, escape(summed))
    return table


def _leaderboard(ranked: list[tuple[int, Record]], ids: list[str], params: list[dict]) -> Table:
    """The top 8 configs by comparisons won minus lost by evidence."""
    board = Table(title="leaderboard (comparisons won - lost by evidence)")
    for column in ("config", "net", "won", "lost", "undecided"):
        board.add_column(column, justify="left" if column == "config" else "right")
    for index, record in ranked[:8]:
        row = (f"{record.net:+d}", str(record.wins), str(record.losses), str(record.ties))
        board.add_row(_label(index, ids, params), *row)
    return board
