"""A finished (or running) run as the report sees it, read from the coordinator database."""

from __future__ import annotations

import json
from collections.abc import Mapping

from sqlalchemy import Engine
from sqlmodel import Session

from coordinator.db import FederatedRun, comparisons, sites
from coordinator.report import RunResult
from coordinator.selection import Tally


def run_result(
    engine: Engine, run_name: str, site_names: Mapping[int, str] | None = None
) -> RunResult:
    """The run's configs, summed comparisons and sites; sites are named by node id unless
    `site_names` (node id -> name, known to whoever started the sites) says otherwise."""
    with Session(engine) as session:
        run = session.get(FederatedRun, run_name)
    if run is None:
        raise FileNotFoundError(f"no run named {run_name!r} in {engine.url}")
    names = dict(site_names or {})

    def name(node_id: str) -> str:
        return names.get(int(node_id), f"node-{node_id}")

    rows = comparisons(engine, run_name)
    run_sites = sites(engine, run_name)
    started, finished = run.started, run.finished or run.started
    return RunResult(
        run_name=run.name,
        selection_mode=run.mode,
        configs=list(zip(run.ids(), run.param_list(), strict=True)),
        comparisons=[(r.a, r.b, Tally(r.win, r.tie, r.loss, r.invalid, r.items)) for r in rows],
        best=run.best_index,
        sites=[name(s.node_id) for s in run_sites if s.status == "active"],
        sites_left_out=[name(s.node_id) for s in run_sites if s.status == "left_out"],
        judgments=sum(2 * r.items for r in rows),
        wall_seconds=(finished - started).total_seconds(),
        aggregation=run.aggregation,
        requested_mode=json.loads(run.settings).get("mode", run.mode),
    )
