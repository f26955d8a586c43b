"""`pandalm-coordinator demo`: a whole federation on loopback with the embedded defaults.

A SuperLink over TLS that admits registered sites only (each site enrolled and registered under
its name, as in a real deployment, so results name the sites), one agent per site (each with its
own shard of the builtin data and its own validation items), LoRA candidates on the SmolLM2-135M
base, the builtin judge and a reduced grid of the paper's shape (`DemoSettings`). Each site also
checks its candidates against the known answers of its validation items (exact match), without
the judge; the demo, which owns every site, averages that check into summary.json to show
whether the judge's choice is right.
Everything stays under `--out`.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from rich.console import Console

from agent.config import site_toml
from common.processes import stop_process
from coordinator.certs import init_certificates
from coordinator.config import FederationConfig, load_federation_config
from coordinator.db import open_database, registered_site
from coordinator.launch import run_federation, start_superlink
from coordinator.sites import register_site


@dataclass(frozen=True)
class DemoSettings:
    """Everything that shapes the demo's choice, in one place (the tests read it).

    LoRA candidates (adapters of a few MB) on short checkable tasks, learning rates two orders
    of magnitude apart and enough optimizer steps per epoch that the hyperparameters change what
    the candidates write, inside ten minutes on two CPU cores with three sites.
    """

    optimizers: tuple[str, ...] = ("sgd", "adamw")
    learning_rates: tuple[float, ...] = (3e-4, 3e-1)
    schedulers: tuple[str, ...] = ("cosine",)
    epochs: tuple[int, ...] = (1, 2)
    lora_rank: int = 8
    lora_top_layers: int = 8
    """LoRA on the last 8 of 30 layers: backpropagation stops there, a step costs half."""
    train_examples: int = 64
    steps_per_epoch: int = 6
    batch_size: int = 1
    """One example a step: more updates for the same compute (the demo's CPU is the limit)."""
    max_length: int = 96
    validation_items: int = 8
    max_new_tokens: int = 12
    blocks: int = 2
    chunk_items: int = 4

    @property
    def configs(self) -> int:
        return (
            len(self.optimizers) * len(self.learning_rates) * len(self.schedulers)
            * len(self.epochs)
        )  # fmt: skip

    def space_toml(self) -> str:
        return tomli_w.dumps(
            {
                "grid": {  # epochs first: a paper block holds one epoch count, all optimizers
                    "epochs": list(self.epochs),
                    "optimizer": list(self.optimizers),
                    "learning_rate": list(self.learning_rates),
                    "scheduler": list(self.schedulers),
                    "finetune": ["lora"],
                    "lora_rank": [self.lora_rank],
                }
            }
        )

    def site_toml(self, name: str, seed: int, superlink: str, port: int, ca_file: Path) -> str:
        return site_toml(
            name,
            seed,
            {
                "site": {"data_dir": "."},
                "data": {
                    "train_examples": self.train_examples,
                    "validation_items": self.validation_items,
                },
                "model": {
                    "max_length": self.max_length,
                    "batch_size": self.batch_size,
                    "max_steps_per_epoch": self.steps_per_epoch,
                    "lora_top_layers": self.lora_top_layers,
                    "max_new_tokens": self.max_new_tokens,
                },
                "judge": {"spec": "builtin"},
                "flower": {
                    "superlink": superlink,
                    "clientappio_port": port,
                    "root_certificates": str(ca_file),
                },
            },
        )

    def federation_toml(self, selection_mode: str, sites: int, superlink: str) -> str:
        return tomli_w.dumps(
            {
                "run": {
                    "name": f"demo-{selection_mode}",
                    "space": "space.toml",
                    "state_dir": "coordinator",
                    "database": "coordinator.sqlite",
                },
                "selection": {
                    "selection_mode": selection_mode,
                    "min_sites": sites,
                    "wait_for_sites": 120.0,
                    "round_timeout": 30.0,
                    # every poll starts a ClientApp process per site: poll sparingly while the
                    # sites train, as their CPU is the demo's bottleneck
                    "retry_seconds": 2.0,
                    "max_retry_seconds": 30.0,
                    "patience": 5,
                    "validation_items": self.validation_items,
                    "judge_mode": "score",
                    "blocks": self.blocks,
                    "chunk_items": self.chunk_items,
                    "secure_aggregation": "when-possible",
                },
                "superlink": {"address": superlink, "certificates": "certs"},
            }
        )


DEMO = DemoSettings()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def enroll_demo_sites(federation: FederationConfig, site_configs: list[Path]) -> None:
    """Each site's key pair, registered under the site's name as an operator would (`pandalm-agent
    enroll`, `pandalm-coordinator sites add`): the SuperLink admits these sites only, and
    results name them. A site registered by an earlier demo in the same folder stays."""
    from agent.config import load_site_config
    from agent.identity import enroll

    engine = open_database(federation.database_url)
    for path in site_configs:
        site = load_site_config(path)
        public_key = enroll(site.keys_dir, comment=site.name)
        if registered_site(engine, site.name) is None:
            register_site(federation, site.name, public_key)


def demo_reference(site_dirs: list[Path], run_key: str):
    """The sites' reference metric per config, averaged over sites. Only the demo can do this:
    it owns every site, whereas in a real federation each site keeps its own."""
    from agent.db import open_database as open_site_database
    from agent.db import reference_scores
    from coordinator.report import ReferenceMetric
    from trainer.reference import EXACT_MATCH

    values: dict[str, list[float]] = {}
    names = set()
    for folder in site_dirs:
        engine = open_site_database(f"sqlite:///{folder / 'agent.sqlite'}")
        for row in reference_scores(engine, run_key):
            values.setdefault(row.config_id, []).append(row.value)
            names.add(row.metric)
        engine.dispose()
    if len(names) != 1:
        return None
    name = names.pop()
    mean = {config_id: statistics.fmean(v) for config_id, v in values.items()}
    return ReferenceMetric(name, mean, higher_is_better=name == EXACT_MATCH)


def responses_differ(site_dirs: list[Path], comparisons: list[dict]) -> list[dict]:
    """Per recorded comparison, the share of (site, item) responses in which the two configs
    wrote different text: a comparison of identical answers can only be a tie."""
    from trainer.generate import read_responses

    responses: dict[tuple[str, str, str], str] = {}
    for folder in site_dirs:
        for record in read_responses(folder / "responses.jsonl"):
            responses[(folder.name, record["config_id"], record["item_id"])] = record["response"]
    items = {(site, item) for site, _config, item in responses}
    shares = []
    for comparison in comparisons:
        a, b = comparison["a"], comparison["b"]
        both = [(s, i) for s, i in items if (s, a, i) in responses and (s, b, i) in responses]
        differ = sum(responses[(s, a, i)] != responses[(s, b, i)] for s, i in both)
        shares.append({"a": a, "b": b, "items": len(both), "differ": differ / len(both)})
    return shares


def run_demo(
    n_sites: int,
    out: Path,
    selection_mode: str,
    console: Console,
    settings: DemoSettings = DEMO,
) -> dict:
    from coordinator.report import write_report
    from coordinator.results import run_result

    started = time.monotonic()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    superlink = f"127.0.0.1:{free_port()}"
    (out / "space.toml").write_text(settings.space_toml())
    (out / "federation.toml").write_text(
        settings.federation_toml(selection_mode, n_sites, superlink)
    )
    federation = load_federation_config(out / "federation.toml")
    if not (out / "certs" / "server.pem").is_file():
        init_certificates(out / "certs", ["127.0.0.1"])
    names = [f"site-{i + 1}" for i in range(n_sites)]
    for seed, name in enumerate(names, start=1):
        folder = out / "sites" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "site.toml").write_text(
            settings.site_toml(name, seed, superlink, free_port(), out / "certs" / "ca.crt")
        )
    console.print(
        f"demo: {n_sites} sites, {settings.configs} LoRA configs, {selection_mode} selection, "
        "tallies summed by SecAgg+ (in the clear below 3 sites); judge: builtin (a pointwise "
        "head on SmolLM2 encodings); reference check: exact match on the sites' checkable items"
    )
    link = start_superlink(federation.superlink, federation.state_dir)
    agents = []
    try:
        enroll_demo_sites(federation, [out / "sites" / name / "site.toml" for name in names])
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
        flower_status = run_federation(federation, console)
    finally:
        for agent in agents:
            stop_process(agent)
        stop_process(link)
    engine = open_database(federation.database_url)
    result = run_result(engine, federation.run.run_key)
    reference = demo_reference([out / "sites" / name for name in names], federation.run.run_key)
    summary = write_report(result, out / "report", reference=reference)
    sites_dirs = [out / "sites" / name for name in names]
    differ = responses_differ(sites_dirs, summary["comparisons"])
    summary = {
        **summary,
        "responses_differ": differ,
        "min_share_of_items_that_differ": min((d["differ"] for d in differ), default=None),
        "wall_seconds": time.monotonic() - started,
        "flower_traffic": flower_status.get("network-traffic", {}),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    best = summary["best_config"]
    if not summary.get("decided", True):
        console.print(f"[yellow]{summary['conclusion']}[/yellow]")
    console.print(
        f"best config: {best['id']} {json.dumps(best['params'])} "
        f"(decided by evidence in {best['decided_by_evidence']} of {best['comparisons']} "
        "comparisons)"
    )
    if reference is not None:
        tau = summary["kendall_tau"]
        agreement = (
            "undefined (the reference gives every config the same value)"
            if tau is None
            else f"{tau:.2f}"
        )
        console.print(
            f"reference check ({reference.name}): the chosen config ranks "
            f"{summary['reference_rank_of_best']} of {len(reference.values)}; Kendall tau "
            f"between judge and reference rankings {agreement}"
        )
    console.print(f"report: {out / 'report' / 'report.html'}; summary: {out / 'summary.json'}")
    return summary
