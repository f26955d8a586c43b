"""A finished (or running) run as the report sees it, read from the coordinator database."""

from __future__ import annotations

import json

from sqlalchemy import Engine
from sqlmodel import Session

from coordinator.db import FederatedRun, comparisons, node_label, site_names, sites
from coordinator.report import RunResult
from coordinator.selection import Tally


def run_result(engine: Engine, run_name: str) -> RunResult:
    """The run's configs, summed comparisons and sites; registered sites by the name they were
    registered under (`sites add`), others (insecure demo nodes) as `node-<id>`."""
    with Session(engine) as session:
        run = session.get(FederatedRun, run_name)
    if run is None:
        raise FileNotFoundError(f"no run named {run_name!r} in {engine.url}")
    names = site_names(engine)

    def name(node_id: str) -> str:
        return node_label(node_id, names)

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
