"""`pandalm-coordinator demo`: a whole federation on loopback with the embedded defaults.

A SuperLink over TLS that admits registered sites only (each site enrolled and registered under
its name, as in a real deployment, so results name the sites), one agent per site (each with its
own shard of the builtin data and its own validation items), LoRA candidates on the SmolLM2-135M
base, the builtin judge and a reduced grid of the paper's shape (`DemoSettings`), which names a
baseline (alpaca-lora's recipe) that the coordinator measures the choice against. Each site also
checks its candidates against the known answers of its validation items without the judge (the
answers' per-token NLL under each candidate, and exact match); the demo, which owns every site,
averages those checks into summary.json to show whether the judge's choice is right.
Everything stays under `--out`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from agent.config import load_site_config
from agent.db import open_database as open_site_database
from agent.db import reference_scores
from agent.identity import enroll
from agent.results import site_result
from common.processes import free_port, stop_process
from coordinator.certs import init_certificates
from coordinator.config import FederationConfig, load_federation_config
from coordinator.db import open_database, registered_site
from coordinator.launch import run_federation, start_superlink
from coordinator.report import ReferenceMetric, write_report
from coordinator.results import run_result
from coordinator.sites import register_site
from demo.export_check import export_and_load
from demo.settings import DEMO, DemoSettings
from trainer.generate import read_responses
from trainer.reference import ANSWER_NLL, EXACT_MATCH


def enroll_demo_sites(federation: FederationConfig, site_configs: list[Path]) -> None:
    """Each site's key pair, registered under the site's name as an operator would (`pandalm-agent
    enroll`, `pandalm-coordinator sites add`): the SuperLink admits these sites only, and
    results name them. A site registered by an earlier demo in the same folder stays."""
    engine = open_database(federation.database_url)
    for path in site_configs:
        site = load_site_config(path)
        public_key = enroll(site.keys_dir, comment=site.name)
        if registered_site(engine, site.name) is None:
            register_site(federation, site.name, public_key)


def demo_references(site_dirs: list[Path], run_key: str) -> list[ReferenceMetric]:
    """The sites' reference metrics per config, each averaged over sites: the dense answer NLL
    first (every token of every reference answer counts), then exact match where the answers
    are checkable. Only the demo can do this: it owns every site, whereas in a real federation
    each site keeps its own."""
    values: dict[str, dict[str, list[float]]] = {}
    for folder in site_dirs:
        engine = open_site_database(f"sqlite:///{folder / 'agent.sqlite'}")
        for row in reference_scores(engine, run_key):
            values.setdefault(row.metric, {}).setdefault(row.config_id, []).append(row.value)
        engine.dispose()
    return [
        ReferenceMetric(
            name,
            {config_id: statistics.fmean(v) for config_id, v in values[name].items()},
            higher_is_better=name == EXACT_MATCH,
        )
        for name in sorted(values, key=lambda name: name != ANSWER_NLL)
    ]


def responses_differ(site_dirs: list[Path], comparisons: list[dict]) -> list[dict]:
    """Per recorded comparison, the share of (site, item) responses in which the two configs
    wrote different text: a comparison of identical answers can only be a tie."""
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


def write_demo_files(
    out: Path, n_sites: int, selection_mode: str, settings: DemoSettings
) -> tuple[FederationConfig, list[Path]]:
    """The coordinator's federation.toml and space.toml, its certificates and each site's
    folder with its site.toml under `out`; the federation and the site folders."""
    superlink = f"127.0.0.1:{free_port()}"
    (out / "space.toml").write_text(settings.space_toml())
    (out / "federation.toml").write_text(
        settings.federation_toml(selection_mode, n_sites, superlink)
    )
    federation = load_federation_config(out / "federation.toml")
    if not (out / "certs" / "server.pem").is_file():
        init_certificates(out / "certs", ["127.0.0.1"])
    site_dirs = [out / "sites" / f"site-{i + 1}" for i in range(n_sites)]
    for seed, folder in enumerate(site_dirs, start=1):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "site.toml").write_text(
            settings.site_toml(folder.name, seed, superlink, free_port(), out / "certs" / "ca.crt")
        )
    return federation, site_dirs


def run_loopback_federation(
    federation: FederationConfig, site_dirs: list[Path], console: Console
) -> dict:
    """Start the SuperLink and one agent per site, run the selection to its end, stop them all;
    the Flower run's status."""
    link = start_superlink(federation.superlink, federation.state_dir)
    agents = []
    try:
        enroll_demo_sites(federation, [folder / "site.toml" for folder in site_dirs])
        for folder in site_dirs:
            log = (folder / "agent.log").open("ab")
            agents.append(
                subprocess.Popen(
                    [sys.executable, "-m", "agent", "start", "--config", str(folder / "site.toml")],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            )  # fmt: skip
            log.close()
        return run_federation(federation, console)
    finally:
        for agent in agents:
            stop_process(agent)
        stop_process(link)


def print_outcome(
    console: Console, summary: dict[str, Any], references: list[ReferenceMetric], out: Path
) -> None:
    """The chosen config, how it fares against the sites' reference checks and the baseline,
    where the report is."""
    best = summary["best_config"]
    if not summary.get("decided", True):
        console.print(f"[yellow]{summary['conclusion']}[/yellow]")
    console.print(
        f"best config: {best['id']} {json.dumps(best['params'])} "
        f"(decided by evidence in {best['decided_by_evidence']} of {best['comparisons']} "
        "comparisons)"
    )
    checks = [summary, *summary.get("other_reference_checks", [])] if references else []
    for check in checks:
        tau = check["kendall_tau"]
        agreement = (
            "undefined (the reference gives every config the same value)"
            if tau is None
            else f"{tau:.2f}"
        )
        metric = check["reference_metric"]
        console.print(
            f"reference check ({metric['name']}): the chosen config ranks "
            f"{check['reference_rank_of_best']} of {len(metric['values'])}; Kendall tau "
            f"between judge and reference rankings {agreement}"
        )
    versus = summary.get("versus_baseline")
    if versus is not None:
        console.print(versus_baseline_text(versus))
    print_sites_and_export(console, summary)
    console.print(f"report: {out / 'report' / 'report.html'}; summary: {out / 'summary.json'}")


def versus_baseline_text(versus: dict[str, Any]) -> str:
    """The line `chosen vs baseline: W wins, T ties, L losses; reference X vs Y` from the
    summary's `versus_baseline`, with each reference as chosen vs baseline."""
    if versus["chosen_is_baseline"]:
        return (
            f"chosen vs baseline: the chosen config is the baseline ({versus['baseline']}), "
            "no comparison needed"
        )
    line = (
        f"chosen vs baseline: {versus['win']} wins, {versus['tie']} ties, {versus['loss']} "
        f"losses (baseline {versus['baseline']}, {versus['items']} items, margin "
        f"{versus['margin']:+.3f})"
    )
    for name, values in versus["reference"].items():
        line += f"; reference {name} {values['chosen']:.4g} vs {values['baseline']:.4g}"
    return line


def run_demo(
    n_sites: int,
    out: Path,
    selection_mode: str,
    console: Console,
    settings: DemoSettings = DEMO,
) -> dict[str, Any]:
    """Run the demo under `out` and write its report and summary.json; the summary."""
    started = time.monotonic()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    federation, site_dirs = write_demo_files(out, n_sites, selection_mode, settings)
    console.print(
        f"demo: {n_sites} sites, {settings.configs} LoRA configs, {selection_mode} selection, "
        "tallies summed by SecAgg+ (in the clear below 3 sites); judge: builtin (a pointwise "
        "Bradley-Terry-Davidson score on response measures); reference checks: the reference "
        "answers' NLL and exact match on the sites' checkable items"
    )
    flower_status = run_loopback_federation(federation, site_dirs, console)
    engine = open_database(federation.database_url)
    result = run_result(engine, federation.run.run_key)
    references = demo_references(site_dirs, federation.run.run_key)
    summary = write_report(
        result,
        out / "report",
        reference=references[0] if references else None,
        other_references=references[1:],
    )
    differ = responses_differ(site_dirs, summary["comparisons"])
    summary = {
        **summary,
        "responses_differ": differ,
        "min_share_of_items_that_differ": min((d["differ"] for d in differ), default=None),
        "flower_traffic": flower_status.get("network-traffic", {}),
    }
    summary["sites_learned"] = sites_learned(site_dirs, federation.run.run_key)
    summary["export"] = export_and_load(
        site_dirs[0], federation.run.run_key, out / "export" / site_dirs[0].name
    )
    summary["wall_seconds"] = time.monotonic() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_outcome(console, summary, references, out)
    return summary


def sites_learned(site_dirs: list[Path], run_key: str) -> dict[str, str | None]:
    """Per site, the chosen config id its own database holds (what `pandalm-agent status`
    shows there), or None where the result never arrived."""
    learned: dict[str, str | None] = {}
    for folder in site_dirs:
        site = load_site_config(folder / "site.toml")
        outcome = site_result(open_site_database(site.database_url), run_key)
        learned[site.name] = None if outcome is None else outcome.best_id
    return learned


def print_sites_and_export(console: Console, summary: dict[str, Any]) -> None:
    """Which sites learned the choice, and the exported model answering a validation prompt."""
    learned = summary["sites_learned"]
    told = [name for name, best in learned.items() if best == summary["best_config"]["id"]]
    console.print(
        f"the sites learned the choice: {len(told)} of {len(learned)} "
        f"({', '.join(told) or 'none'}; `pandalm-agent status` shows it at each)"
    )
    export = summary["export"]
    console.print(
        f"export: {export['site']} wrote the chosen model ({export['form']}, "
        f"{export['mib']} MiB) to {export['directory']}; transformers answers "
        f"{export['transformers_answer']!r}, its GGUF in llama.cpp {export['llama_cpp_answer']!r}"
    )
