"""Judge throughput on this machine, in one process (issue 2's benchmark).

(a) PandaLM's reference style: transformers, batch 1, beam 4, repetition penalty 1.2, up to 512
    new tokens, one order; (b) our generate mode, both orders (llama.cpp, greedy, early stop);
(c) our score mode, both orders (llama.cpp, prefix reuse); (d) the pointwise CPU judges on the
same pairs, both orders, from an empty score memory: `builtin` (judge/backends/builtin.py; the
issue-19 target is >= 4 pairs/s) and the rule `rule:length-repetition`; (e) a `reward:`
judge (issue 21) on a reward model the bench builds in a temp dir from the builtin SmolLM2-135M
(the model (c) runs, with a random one-output head: same size, so the ratio to (c) is the
pointwise design's, not a smaller model's), transformers, batch 16. Each order counts as one
judgment. The bound for (c) is the judgments/s reached if every prompt token of
every order were prefilled once at the backend's raw prefill rate, measured in the same run.

Then a full round robin of 8 configs x 40 items (28 comparisons, both orders) with the builtin
judge: with per-response caching (each response scored once) against without (every pair's
responses scored afresh, as a pairwise judge must), the latter timed on the first
`--uncached-comparisons` comparisons and scaled to 28 (each comparison costs the same).
The 8 "configs" are the 7 self-instruct prediction files plus text-davinci-003 cut in half.

The first lines name the llama.cpp build it runs (judge/cpu.py): the portable x86-64-v3 one by
default; `make setup LLAMA_CPU=native` switches the venv to a native build for a comparison.

    python bench/bench_judge.py [--threads 2] [--reference-pairs 10] [--generate-pairs 20]
        [--skip-reference] [--round-robin-items 40] [--uncached-comparisons 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from judge.backends import load_backend
from judge.backends.base import GenerationSettings
from judge.backends.hf import TransformersBackend
from judge.backends.llamacpp import LlamaCppBackend
from judge.cpu import baseline_name, required_flags, system_info
from judge.engine import PairJudge
from judge.models import builtin_base_gguf, builtin_base_hf_dir
from judge.prompt import Pair

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_pairs(source: str, count: int) -> list[Pair]:
    """Real response pairs: PandaLM's dev test split, or two self-instruct models' responses."""
    if source == "testset":
        items = json.loads((SHARED / "pandalm" / "testset-dev.json").read_text())
        pairs = [Pair(i["instruction"], i["input"], i["response1"], i["response2"]) for i in items]
    else:
        folder = SHARED / "self-instruct" / "predictions"
        a = [json.loads(x) for x in (folder / "text-davinci-003.jsonl").read_text().splitlines()]
        b = [
            json.loads(x) for x in (folder / "davinci-self-instruct.jsonl").read_text().splitlines()
        ]
        pairs = [
            Pair(x["instruction"], x["input"], x["response"], y["response"])
            for x, y in zip(a, b, strict=True)
        ]
    return pairs[:count]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(judge: PairJudge, pairs: list[Pair]) -> tuple[float, int]:
    start = time.perf_counter()
    judgments = judge.judge(pairs)
    elapsed = time.perf_counter() - start
    orders = 2 if judge.both_orders else 1
    assert len(judgments) == len(pairs)
    return elapsed, orders * len(pairs)


def prefill_rate(backend: LlamaCppBackend, prompts: list[str]) -> float:
    """Raw prefill tokens/s: each prompt evaluated from an empty KV cache."""
    tokens = 0
    start = time.perf_counter()
    for prompt in prompts:
        ids = backend._tokens(prompt)
        backend.llm.reset()
        backend.llm.eval(ids)
        tokens += len(ids)
    return tokens / (time.perf_counter() - start)


def reward_model_dir(folder: Path) -> Path:
    """A reward model on the builtin base, SmolLM2-135M-Instruct (its chat template kept), with
    a random one-output head: a `reward:` judge the size of the score mode's model."""
    base = builtin_base_hf_dir()
    AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=1, local_files_only=True
    ).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base, local_files_only=True).save_pretrained(folder)
    return folder


def reward_run(pairs: list[Pair]) -> tuple[str, int, float, float]:
    """(e): the reward judge's row, both orders, from an empty score memory."""
    with tempfile.TemporaryDirectory() as folder:
        judge = load_backend(f"reward:{reward_model_dir(Path(folder))}?batch=16")
        e_time, e_count = timed(PairJudge(judge, "score", chunk_pairs=32), pairs)
    return ("e reward pointwise (both orders)", e_count, e_time, peak_rss_mib())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("testset", "self-instruct"), default="testset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference-pairs", type=int, default=10)
    parser.add_argument("--generate-pairs", type=int, default=20)
    parser.add_argument("--score-pairs", type=int, default=100)
    parser.add_argument("--skip-reference", action="store_true", help="skip (a) and (b)")
    parser.add_argument("--round-robin-items", type=int, default=40)
    parser.add_argument("--uncached-comparisons", type=int, default=2)
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"needs the shared data folder {SHARED}, absent on this machine")
    torch.set_num_threads(args.threads)
    rows = []

    if not args.skip_reference:
        hf = TransformersBackend(builtin_base_hf_dir(), batch_size=1)
        pairs = load_pairs(args.source, args.reference_pairs)
        reference = PairJudge(hf, "generate", GenerationSettings.reference(), both_orders=False)
        a_time, a_count = timed(reference, pairs)
        rows.append(("a reference (hf, beam 4, one order)", a_count, a_time, peak_rss_mib()))
        del hf, reference

    gguf = LlamaCppBackend(builtin_base_gguf(), n_threads=args.threads)
    if not args.skip_reference:
        pairs = load_pairs(args.source, args.generate_pairs)
        b_time, b_count = timed(PairJudge(gguf, "generate", GenerationSettings()), pairs)
        rows.append(("b generate (llama.cpp, greedy, both)", b_count, b_time, peak_rss_mib()))

    pairs = load_pairs(args.source, args.score_pairs)
    gguf.llm.reset()
    c_time, c_count = timed(PairJudge(gguf, "score"), pairs)
    rows.append(("c score (llama.cpp, both orders)", c_count, c_time, peak_rss_mib()))

    prompts = [p.prompt(swapped) for p in pairs for swapped in (False, True)]
    rate = prefill_rate(gguf, prompts[:40])
    mean_tokens = sum(gguf.count_tokens(p) for p in prompts) / len(prompts)
    del gguf

    for spec in ("builtin", "rule:length-repetition"):
        d_time, d_count = timed(PairJudge(load_backend(spec), "score"), pairs)
        rows.append((f"d {spec} pointwise (both orders)", d_count, d_time, peak_rss_mib()))
    rows.append(reward_run(pairs))

    report(args, rows, rate, mean_tokens)
    round_robin(args, load_backend("builtin"))


def report(args: argparse.Namespace, rows: list, rate: float, mean_tokens: float) -> None:
    """The table of runs and the ratios the targets name."""
    print(f"judge throughput, builtin SmolLM2-135M, {args.threads} threads, {args.source} pairs")
    flags = required_flags(system_info())
    print(f"llama.cpp build: {baseline_name(flags)} ({' '.join(flags)}); {system_info()}")
    print(f"{'run':40} {'judgments':>9} {'seconds':>8} {'judg/s':>8} {'s/judg':>7} {'peak RSS':>9}")
    rates = {}
    for name, count, seconds, rss in rows:
        rates[name.split(" (")[0].removesuffix(" pointwise")] = count / seconds
        print(
            f"{name:40} {count:9d} {seconds:8.1f} {count / seconds:8.3f} "
            f"{seconds / count:7.3f} {rss:7.0f}MiB"
        )
    print(f"raw prefill: {rate:.0f} tokens/s; mean prompt {mean_tokens:.0f} tokens")
    bound = rate / mean_tokens
    print(f"bound (every prompt token prefilled once): {bound:.3f} judgments/s")
    c = rates["c score"]
    if "a reference" in rates:
        print(f"b/a = {rates['b generate'] / rates['a reference']:.1f}  (target >= 5)")
        print(f"c/a = {c / rates['a reference']:.1f}  (target >= 20)")
    print(f"c/bound = {c / bound:.2f}  (target >= 0.85)")
    for spec in ("builtin", "rule:length-repetition"):
        pairs_per_s = rates[f"d {spec}"] / 2  # two orders a pair
        print(f"d {spec}/c = {2 * pairs_per_s / c:.1f}  ({pairs_per_s:.0f} pairs/s)")
    reward = rates["e reward"] / 2
    print(f"e reward/c = {2 * reward / c:.1f}  ({reward:.2f} pairs/s; c: {c / 2:.2f} pairs/s)")


def round_robin_responses(items: int) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """Tasks and, per "config", its responses: 7 self-instruct prediction files and a cut one."""
    folder = SHARED / "self-instruct" / "predictions"
    files = sorted(folder.glob("*.jsonl"))
    rows = [[json.loads(x) for x in f.read_text().splitlines()[:items]] for f in files]
    tasks = [(r["instruction"], r["input"]) for r in rows[0]]
    configs = [[r["response"] for r in model] for model in rows]
    configs.append([text[: len(text) // 2] for text in configs[-1]])
    return tasks, configs


def round_robin(args: argparse.Namespace, builtin) -> None:
    from itertools import combinations

    tasks, configs = round_robin_responses(args.round_robin_items)
    comparisons = list(combinations(range(len(configs)), 2))

    def pairs_of(a: int, b: int) -> list[Pair]:
        return [Pair(*t, x, y) for t, x, y in zip(tasks, configs[a], configs[b], strict=True)]

    builtin.memory.clear()
    judge = PairJudge(builtin, "score")
    start = time.perf_counter()
    for a, b in comparisons:
        judge.judge(pairs_of(a, b))
    cached_seconds, cached_encodes = time.perf_counter() - start, builtin.scored

    encodes_before = builtin.scored
    start = time.perf_counter()
    for a, b in comparisons[: args.uncached_comparisons]:
        for pair in pairs_of(a, b):  # a pairwise judge sees each pair afresh, in both orders
            builtin.memory.clear()
            judge.judge([pair])
    measured = time.perf_counter() - start
    per_comparison_encodes = (builtin.scored - encodes_before) / args.uncached_comparisons
    uncached_seconds = measured / args.uncached_comparisons * len(comparisons)
    n = len(configs)
    print(
        f"round robin, builtin judge: {n} configs x {len(tasks)} items, {len(comparisons)} "
        f"comparisons, both orders"
    )
    print(f"  per-response caching: {cached_encodes} responses scored, {cached_seconds:.1f} s")
    print(
        f"  without (measured on {args.uncached_comparisons} comparisons, x{len(comparisons)}"
        f"/{args.uncached_comparisons}): {per_comparison_encodes * len(comparisons):.0f} responses "
        f"scored, {uncached_seconds:.1f} s"
    )
    print(f"  speed-up: {uncached_seconds / cached_seconds:.1f}x")


if __name__ == "__main__":
    main()
