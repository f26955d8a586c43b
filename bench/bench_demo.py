"""The federated demo's wall time with a breakdown, bytes per site per round, and the
coordination time per round against Flower's own polling floor (issue 5's benchmark).

    python bench/bench_demo.py [--sites 3] [--out DIR] [--reuse DIR]

`--reuse DIR` reads a finished `pandalm-coordinator demo --out DIR` instead of running one.
Training, generation and judging are the sites' own busy seconds (their agent databases);
coordination is the rest of the wall time. Flower's traffic figures come from `flwr ls`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rich.console import Console
from sqlmodel import Session, select

from agent.db import ComparisonJob, LedgerEntry, SiteRun
from agent.db import open_database as open_site_database
from coordinator.config import load_federation_config
from coordinator.db import RoundLog
from coordinator.db import open_database as open_coordinator_database

# Measured here for flwr 1.42 with grid.send_and_receive on 2 nodes (trivial query): two
# hard-coded 3 s polls, the SuperNode's and the Grid's.
FLOWER_ROUND_FLOOR_SECONDS = 6.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-demo"))
    parser.add_argument("--reuse", type=Path)
    args = parser.parse_args()
    out = args.reuse
    if out is None:
        from demo.launcher import run_demo

        run_demo(args.sites, args.out, "paper", Console(stderr=True))
        out = args.out
    summary = json.loads((out / "summary.json").read_text())
    federation = load_federation_config(out / "federation.toml")
    with Session(open_coordinator_database(federation.database_url)) as session:
        rounds = list(session.exec(select(RoundLog)))
    site_rows = []
    reply_bytes = []
    for site in sorted((out / "sites").iterdir()):
        engine = open_site_database(f"sqlite:///{site / 'agent.sqlite'}")
        with Session(engine) as session:
            run = session.exec(select(SiteRun)).one()
            judging = sum(j.judging_seconds for j in session.exec(select(ComparisonJob)))
            reply_bytes += [e.bytes for e in session.exec(select(LedgerEntry))]
        site_rows.append((site.name, run.training_seconds, run.generation_seconds, judging))

    wall = summary["wall_seconds"]
    busiest = max(t + g + j for _, t, g, j in site_rows)
    n_sites = len(site_rows)
    traffic = summary.get("flower_traffic", {})
    print(
        f"demo: {n_sites} sites, {len(summary['comparisons'])} comparisons, "
        f"{summary['judgments']} judgments, {len(rounds)} rounds"
    )
    print(f"wall {wall:.0f} s (target <= 600 s)")
    print(f"{'site':10} {'training s':>11} {'generation s':>13} {'judging s':>10}")
    for name, training, generation, judging in site_rows:
        print(f"{name:10} {training:11.0f} {generation:13.0f} {judging:10.0f}")
    print(
        f"coordination and start-up (wall - busiest site): {wall - busiest:.0f} s "
        f"({(wall - busiest) / wall:.0%} of wall)"
    )
    round_seconds = [r.seconds for r in rounds]
    print(
        f"round seconds: mean {statistics.mean(round_seconds):.2f}, median "
        f"{statistics.median(round_seconds):.2f}, min {min(round_seconds):.2f}; against "
        f"Flower's send_and_receive floor of {FLOWER_ROUND_FLOOR_SECONDS} s: "
        f"{statistics.median(round_seconds) / FLOWER_ROUND_FLOOR_SECONDS:.2f}x"
    )
    print(
        f"site reply payload: mean {statistics.mean(reply_bytes):.0f} B, max "
        f"{max(reply_bytes)} B (ledger, decoded JSON)"
    )
    if traffic:
        per_site_round = traffic["inbound-bytes"] / (n_sites * len(rounds))
        print(
            f"Flower traffic: inbound {traffic['inbound-bytes']} B, outbound "
            f"{traffic['outbound-bytes']} B; inbound per site per round "
            f"{per_site_round:.0f} B (target <= 2048 B)"
        )


if __name__ == "__main__":
    main()
