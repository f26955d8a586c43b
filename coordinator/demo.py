"""`pandalm-coordinator demo`: a whole federation on loopback with the embedded defaults.

A SuperLink, one agent per site (each with its own shard of the builtin data and its own
validation items), the SmolLM2-135M base for candidates, the builtin judge and a reduced grid
(2 optimizers x 2 learning rates x 2 epochs). To fit about ten minutes on two CPU cores every
epoch is a single optimizer step on 8 examples: enough to run the whole pipeline, not to learn
much. Everything stays under `--out`.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from coordinator.config import load_federation_config
from coordinator.launch import start_superlink, stop_process

DEMO_SPACE = """\
# The demo's reduced grid: 2 optimizers x 2 learning rates x 2 epochs = 8 configs, 4 runs.
[grid]
optimizer = ["sgd", "adamw"]
learning_rate = [2e-5, 2e-4]
scheduler = ["cosine"]
epochs = [1, 2]
"""

SITE_TOML = """\
[site]
name = "{name}"
data_dir = "."

[data]
train = "builtin"
validation = "builtin"
builtin_seed = {seed}
train_examples = 16
validation_items = 4

[model]
base = "builtin"
max_length = 128
batch_size = 8
max_steps_per_epoch = 1
max_new_tokens = 24
torch_threads = 1

[judge]
spec = "builtin"
max_new_tokens = 64

[flower]
superlink = "{superlink}"
clientappio_port = {port}
insecure = true
"""

FEDERATION_TOML = """\
[run]
name = "demo-{mode}"
space = "space.toml"
state_dir = "coordinator"
database = "coordinator.sqlite"

[selection]
mode = "{mode}"
min_sites = {sites}
wait_for_sites = 120.0
round_timeout = 30.0
retry_seconds = 1.0
max_retry_seconds = 8.0
patience = 5
validation_items = 4
judge_mode = "score"
blocks = 2
chunk_items = 2
secure_aggregation = "when-possible"

[superlink]
address = "{superlink}"
insecure = true
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _node_id(log: Path) -> int | None:
    if not log.is_file():
        return None
    found = re.findall(r"SuperNode ID: (\d+)", log.read_text(errors="replace"))
    return int(found[-1]) if found else None


def run_demo(n_sites: int, out: Path, mode: str, console: Console) -> dict:
    from coordinator.cli import run_federation
    from coordinator.db import open_database
    from coordinator.report import write_report
    from coordinator.results import run_result

    started = time.monotonic()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    superlink = f"127.0.0.1:{free_port()}"
    (out / "space.toml").write_text(DEMO_SPACE)
    (out / "federation.toml").write_text(
        FEDERATION_TOML.format(mode=mode, sites=n_sites, superlink=superlink)
    )
    federation = load_federation_config(out / "federation.toml")
    names = [f"site-{i + 1}" for i in range(n_sites)]
    for seed, name in enumerate(names, start=1):
        folder = out / "sites" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "site.toml").write_text(
            SITE_TOML.format(name=name, seed=seed, superlink=superlink, port=free_port())
        )
    console.print(
        f"demo: {n_sites} sites, 8 configs, {mode} selection, tallies summed by SecAgg+ "
        "(in the clear below 3 sites); judge: builtin pandalm-mini, a 135M demo judge"
    )
    link = start_superlink(federation.superlink, federation.state_dir)
    agents = []
    try:
        for name in names:
            folder = out / "sites" / name
            log = (folder / "agent.log").open("ab")
            agents.append(
                subprocess.Popen(
                    [sys.executable, "-m", "agent", "start", "--config", str(folder / "site.toml")],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            )  # fmt: skip
            log.close()
        flower_status = run_federation(federation)
    finally:
        for agent in agents:
            stop_process(agent)
        stop_process(link)
    engine = open_database(federation.database_url)
    node_names = {_node_id(out / "sites" / name / "logs" / "supernode.log"): name for name in names}
    result = run_result(engine, federation.run.name, node_names)
    summary = write_report(result, out / "report")
    summary = {
        **summary,
        "wall_seconds": time.monotonic() - started,
        "flower_traffic": flower_status.get("network-traffic", {}),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    best = summary["best_config"]
    console.print(f"best config: {best['id']} {json.dumps(best['params'])}")
    console.print(f"report: {out / 'report' / 'report.html'}; summary: {out / 'summary.json'}")
    return summary
