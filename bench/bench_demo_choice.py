"""Does the demo's judge choose well? The demo's candidates, responses and judge over N site-data
seeds, checked against the sites' two judge-free references (issue 20's benchmark).

    python bench/bench_demo_choice.py --seeds 5 [--first-seed 1] [--sites 3] [--out DIR]

No Flower: each seed is the demo's federation without the network. Seed k holds `--sites` sites
with builtin data seeds (k-1)*sites+1 ... k*sites (seed 1 is `pandalm-coordinator demo`'s own
sites); each site trains the demo grid's candidates (trainer.candidates, with the worker's
settings from the demo's site.toml), generates their validation responses (trainer.generate)
and judges each comparison with the worker's judge (agent.worker.LocalJudge: judge.engine's
PairJudge on the builtin judge, both orders). The comparisons' tallies, summed over sites, drive
the paper procedure (coordinator.selection) as the coordinator would. The references are the
sites' own, averaged over sites as the demo does: exact match of the greedy responses, and the
dense one, the mean per-token NLL of the items' reference answers under each candidate
(trainer.reference.answer_nll, the worker's `_reference_nll`).

Per seed it prints the chosen config's rank of 8 by each reference (1 = strictly the best;
configs with an equal value count against it, as in the demo's summary) and Kendall's tau-b
between the judge's ranking (Bradley-Terry strengths over the procedure's comparisons, as the
demo's report fits them) and the dense reference's ranking; with every pair judged too (a round
robin, for comparison), and the chosen config against the demo's baseline (alpaca-lora's
recipe), as the coordinator asks it. Then the figures against the target: the chosen config
ranks <= 2 by the dense reference in at least 4 of 5 seeds, and the median tau >= 0.4.

Everything a seed computes stays under `--out`/<settings hash>/seed-k (candidates, responses,
the judgment cache, the references), so a rerun trains nothing it has trained and a changed
DemoSettings starts afresh.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from agent.config import SiteConfig, load_site_config
from agent.job_store import tally_of_verdicts
from agent.worker import (
    LocalJudge,
    candidate_arguments,
    reference_answers,
    training_records,
    validation_items,
)
from common.protocol import Comparison
from common.space import SearchSpace, parse_space
from common.tally import Tally
from coordinator.selection import bradley_terry, bradley_terry_with_covariance, make_procedure
from demo.settings import DEMO, DemoSettings
from judge.prompt import Pair
from trainer.reference import ANSWER_NLL, EXACT_MATCH

TARGET_RANK, TARGET_SHARE, TARGET_TAU = 2, 0.8, 0.4


@dataclass
class Site:
    """One site of a seed: its settings, items, answers, and its candidates' responses."""

    config: SiteConfig
    responses: dict[tuple[str, str], str]
    references: dict[str, dict[str, float]]  # config id -> metric -> value


def _settings_hash(settings: DemoSettings) -> str:
    """The settings that shape the candidates, responses and verdicts (the baseline does not)."""
    shaping = ", ".join(
        f"{f.name}={getattr(settings, f.name)!r}" for f in fields(settings) if f.name != "baseline"
    )
    return hashlib.sha256(f"DemoSettings({shaping})".encode()).hexdigest()[:10]


def _site_config(folder: Path, site_seed: int, settings: DemoSettings) -> SiteConfig:
    """The demo's site.toml for this seed (its [flower] table is never used here)."""
    folder.mkdir(parents=True, exist_ok=True)
    toml = settings.site_toml(
        f"site-{site_seed}", site_seed, "127.0.0.1:9092", 9094, folder / "unused-ca.crt"
    )
    (folder / "site.toml").write_text(toml)
    return load_site_config(folder / "site.toml")


def _references(config: SiteConfig, checkpoints: list[Any], responses: dict) -> dict:
    """Per config: exact match of its responses and the NLL of the reference answers, cached in
    the site's folder (the NLL loads each candidate once)."""
    import torch

    from trainer.candidates import load_tokenizer
    from trainer.generate import load_candidate_model
    from trainer.reference import answer_nll, exact_match_accuracy

    path = config.data_dir / "references.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    answers = reference_answers(config)
    items = [item for item in validation_items(config) if item.id in answers]
    for checkpoint in checkpoints:
        config_id = checkpoint.config.id
        if config_id in cached:
            continue
        mine = {item: text for (c, item), text in responses.items() if c == config_id}
        model = load_candidate_model(checkpoint)
        with torch.inference_mode():
            nll = answer_nll(
                model, load_tokenizer(checkpoint.path), items, [answers[i.id].text for i in items]
            )
        cached[config_id] = {EXACT_MATCH: exact_match_accuracy(mine, answers), ANSWER_NLL: nll}
        path.write_text(json.dumps(cached, indent=2))
        del model
    return cached


def prepare_site(folder: Path, site_seed: int, space: SearchSpace, settings: DemoSettings) -> Site:
    """Train, generate and score one site's candidates (each step skipped where cached)."""
    from trainer.candidates import train_candidates
    from trainer.generate import generate_responses, read_responses

    config = _site_config(folder, site_seed, settings)
    report = train_candidates(
        list(space.configs), training_records(config), candidate_arguments(config)
    )
    model = config.model
    generate_responses(
        report.checkpoints,
        validation_items(config),
        config.responses_file,
        max_new_tokens=model.max_new_tokens,
        batch_size=model.generation_batch_size,
    )
    responses = {
        (r["config_id"], r["item_id"]): r["response"]
        for r in read_responses(config.responses_file)
        if r["max_new_tokens"] == model.max_new_tokens
    }
    return Site(config, responses, _references(config, report.checkpoints, responses))


def site_tally(site: Site, judge: LocalJudge, space: SearchSpace, request: Comparison) -> Tally:
    """The site's tally of a compare request, judged as the worker judges a job."""
    a_id, b_id = space.configs[request.a].id, space.configs[request.b].id
    items = validation_items(site.config)[request.item_start : request.item_stop]
    pairs = [
        Pair(i.instruction, i.input, site.responses[(a_id, i.id)], site.responses[(b_id, i.id)])
        for i in items
    ]
    return tally_of_verdicts(j.verdict for j in judge.judge_comparison(a_id, b_id, pairs))


def rank_of(values: dict[str, float], chosen: str, higher_is_better: bool) -> int:
    """1 = strictly the best; configs with an equal value count against the chosen one."""
    sign = 1.0 if higher_is_better else -1.0
    return sum(sign * value >= sign * values[chosen] for value in values.values())


def tau(strengths: np.ndarray, values: list[float], higher_is_better: bool) -> float | None:
    """Kendall's tau-b between the judge's strengths and the reference, +1 = same order."""
    sign = 1.0 if higher_is_better else -1.0
    oriented = [sign * value for value in values]
    if len(set(np.round(strengths, 6))) < 2 or len(set(oriented)) < 2:
        return None
    return float(kendalltau(np.round(strengths, 6), oriented).statistic)


def run_seed(seed: int, args: argparse.Namespace, settings: DemoSettings) -> dict[str, Any]:
    """One seed's federation without the network: the paper procedure's choice and the checks."""
    started = time.monotonic()
    space = parse_space(settings.space_toml(), "<demo space>")
    folder = args.out / _settings_hash(settings) / f"seed-{seed}"
    site_seeds = [(seed - 1) * args.sites + i + 1 for i in range(args.sites)]
    sites = [prepare_site(folder / f"site-{s}", s, space, settings) for s in site_seeds]
    judges = [LocalJudge(site.config, "score") for site in sites]

    def summed(request: Comparison) -> Tally:
        tallies = [site_tally(s, j, space, request) for s, j in zip(sites, judges, strict=True)]
        return sum(tallies, Tally())

    n = len(space.configs)
    procedure = make_procedure("paper", n, blocks=settings.blocks)
    while not procedure.done:
        for request in procedure.pending():
            procedure.record(request, summed(request))
    all_pairs = {(a, b): summed(Comparison(a, b)) for a in range(n) for b in range(a + 1, n)}
    ids = [config.id for config in space.configs]
    mean = {
        metric: {i: statistics.fmean(s.references[i][metric] for s in sites) for i in ids}
        for metric in (EXACT_MATCH, ANSWER_NLL)
    }
    nll, exact = list(mean[ANSWER_NLL].values()), list(mean[EXACT_MATCH].values())
    best, baseline = procedure.best(), space.index_of(settings.baseline)
    chosen = ids[best]
    strengths = bradley_terry(n, procedure.comparisons)
    versus = None if best == baseline else summed(Comparison(best, baseline))
    return {
        "seed": seed,
        "site_seeds": site_seeds,
        "chosen": chosen,
        "chosen_params": dict(space.configs[best].params),
        "rank_exact_match": rank_of(mean[EXACT_MATCH], chosen, True),
        "rank_answer_nll": rank_of(mean[ANSWER_NLL], chosen, False),
        "tau_answer_nll": tau(strengths, nll, False),
        "tau_exact_match": tau(strengths, exact, True),
        "tau_answer_nll_all_pairs": tau(bradley_terry_with_covariance(n, all_pairs)[0], nll, False),
        "baseline": ids[baseline],
        "versus_baseline": None if versus is None else asdict(versus),
        **mean,
        "seconds": time.monotonic() - started,
    }


def _figure(value: float | None) -> str:
    return "undefined" if value is None else f"{value:+.2f}"


def print_seed(row: dict[str, Any], n_configs: int) -> None:
    print(
        f"seed {row['seed']} (sites {row['site_seeds']}): chosen {row['chosen']} "
        f"{json.dumps(row['chosen_params'])}; rank by exact match {row['rank_exact_match']} of "
        f"{n_configs}, by answer NLL {row['rank_answer_nll']} of {n_configs}; tau judge vs NLL "
        f"{_figure(row['tau_answer_nll'])} (all pairs judged: "
        f"{_figure(row['tau_answer_nll_all_pairs'])}), vs exact match "
        f"{_figure(row['tau_exact_match'])}; {row['seconds']:.0f} s",
        flush=True,
    )
    versus, nll = row["versus_baseline"], row[ANSWER_NLL]
    against = (
        "the chosen config is the baseline"
        if versus is None
        else f"{versus['win']} wins, {versus['tie']} ties, {versus['loss']} losses"
    )
    print(
        f"  chosen vs baseline {row['baseline']}: {against}; answer NLL "
        f"{nll[row['chosen']]:.4f} vs {nll[row['baseline']]:.4f}",
        flush=True,
    )


def print_target(rows: list[dict[str, Any]], n_configs: int) -> bool:
    """The figures against the target; True when it is met."""
    top = sum(row["rank_answer_nll"] <= TARGET_RANK for row in rows)
    taus = [math.nan if row["tau_answer_nll"] is None else row["tau_answer_nll"] for row in rows]
    median = statistics.median(taus)
    rank_met = top >= math.ceil(TARGET_SHARE * len(rows))
    tau_met = median >= TARGET_TAU
    print(
        f"chosen rank <= {TARGET_RANK} of {n_configs} by answer NLL in {top} of {len(rows)} seeds "
        f"(target >= {math.ceil(TARGET_SHARE * len(rows))}): {'met' if rank_met else 'MISSED'}; "
        f"median tau {median:+.2f} (target >= {TARGET_TAU}): {'met' if tau_met else 'MISSED'}"
    )
    return rank_met and tau_met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--first-seed", type=int, default=1, help="start here (run seeds in parallel processes)"
    )
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-demo-choice"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the worker: 1)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    n_configs = DEMO.configs
    print(f"demo settings {_settings_hash(DEMO)}: {DEMO}", flush=True)
    rows = []
    for seed in range(args.first_seed, args.seeds + 1):
        rows.append(run_seed(seed, args, DEMO))
        print_seed(rows[-1], n_configs)
    met = print_target(rows, n_configs)
    out = args.out / _settings_hash(DEMO) / f"results-{args.first_seed}-{args.seeds}.json"
    out.write_text(json.dumps({"settings": repr(DEMO), "seeds": rows, "met": met}, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
