"""Training the builtin judge: a logistic head on frozen SmolLM2 encodings (judge/pointwise.py).

The only labelled data here from the distribution the product judges is PandaLM's dev split, so
the head trains on it, and every dev figure is out-of-fold: folds split by instruction
(`GroupKFold`), the regularisation chosen inside each training fold. Preference pairs whose
licence allows training (`use = "train"`) can be added; `use = "eval"` pairs are refused.
Encodings go into a cache first, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from common.cli import progress_bar
from judge.io import InputError, read_records, read_testset
from judge.metrics import bias_diagnostics, judge_metrics
from judge.pointwise import (
    CLASSES,
    LOG_WORDS,
    LlamaEmbeddingEncoder,
    PreferenceHead,
    ResponseFeaturizer,
    builtin_encoder,
    encoder_text,
    pair_similarities,
    tie_inputs,
)
from judge.verdict import argmax_verdict
from trainer.arguments import BuiltinJudgeArguments


@dataclass(frozen=True)
class TrainingPair:
    pair: object  # judge.engine.Pair
    gold: str
    group: str
    source: str
    weight: float = 1.0


SYNTHETIC_MAX_ANSWER_CHARS = 150
"""Seed tasks with short answers only: 99 of 175, 775 pairs, about 6 minutes to encode here."""


def synthetic_pairs(seed_tasks: Path, exclude: list[str], weight: float) -> list[TrainingPair]:
    """Seed-task pairs with verdicts known by construction (trainer/judge_builtin_data.py)."""
    from judge.engine import Pair
    from trainer.judge_builtin_data import build_builtin_judge_records, load_seed_tasks

    tasks = [t for t in load_seed_tasks(seed_tasks) if len(t.output) <= SYNTHETIC_MAX_ANSWER_CHARS]
    records = build_builtin_judge_records(tasks, 0, exclude)
    return [
        TrainingPair(
            Pair(r.instruction, r.input, r.response1, r.response2),
            r.result,
            "seed:" + r.instruction,
            "alpaca-seed-synthetic",
            weight,
        )
        for r in records
    ]


def read_training_preferences(path: Path) -> tuple[list[TrainingPair], int]:
    """`use = "train"` pairs of a preference file, and how many `eval` rows were left out."""
    from judge.io import pair_from_record

    pairs, skipped = [], 0
    for where, record in read_records(path):
        if record.get("use") != "train":
            if record.get("use") != "eval":
                raise InputError(f"{where}: field 'use' must be train or eval")
            skipped += 1
            continue
        label = str(record.get("label"))
        if label not in ("1", "2", "Tie"):
            raise InputError(f"{where}: field 'label' must be 1, 2 or Tie, got {label!r}")
        pair = pair_from_record(where, record)
        source = f"{path.stem}/{record.get('subset', '')}"
        pairs.append(TrainingPair(pair, label, "pref:" + pair.instruction, source))
    return pairs, skipped


def _fit_scores(
    first: np.ndarray, second: np.ndarray, gold: list[str], c: float, weight: np.ndarray
):
    """The response score (no intercept) from decisive pairs, each also entered swapped, so
    s(A) - s(B) is antisymmetric by construction; features scaled by their spread."""
    diff = first - second
    x = np.vstack([diff, -diff])
    y = np.array([g == "1" for g in gold] + [g == "2" for g in gold], dtype=int)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=c, fit_intercept=False, max_iter=5000)
    model.fit(x / scale, y, sample_weight=np.concatenate([weight, weight]))
    return scale, model.coef_[0]


def _fit_heads(
    first: np.ndarray,
    second: np.ndarray,
    similarity: np.ndarray,
    gold: list[str],
    groups: np.ndarray,
    weight: np.ndarray,
    c: float,
    tie_weights: tuple[float, ...],
) -> list[PreferenceHead]:
    """One head per tie weight, sharing the score. The tie model learns from margins the score
    gives pairs it was not fitted on (grouped cross-fitting), as it will see at judging time."""
    decisive = np.array([g != "Tie" for g in gold])
    if decisive.all() or not decisive.any():
        raise InputError("the training pairs need decisive labels (1 or 2) and Tie labels")
    labels = [gold[i] for i in np.flatnonzero(decisive)]
    scale, weights = _fit_scores(first[decisive], second[decisive], labels, c, weight[decisive])
    margins = np.zeros(len(gold))
    splits = GroupKFold(n_splits=min(4, len(set(groups))))
    for train, held in splits.split(first, groups=groups):
        train = train[decisive[train]]
        s, w = _fit_scores(first[train], second[train], [gold[i] for i in train], c, weight[train])
        margins[held] = (first[held] / s) @ w - (second[held] / s) @ w
    inputs = tie_inputs(margins, first[:, LOG_WORDS] - second[:, LOG_WORDS], similarity)
    # standardized for the fit, then folded back into plain coefficients of the raw inputs
    center, spread = inputs.mean(axis=0), inputs.std(axis=0) + 1e-9
    heads = []
    for tie_weight in tie_weights:
        tie = LogisticRegression(class_weight={0: 1.0, 1: tie_weight}, max_iter=1000)
        tie.fit((inputs - center) / spread, (~decisive).astype(int), sample_weight=weight)
        coef = tie.coef_[0] / spread
        intercept = float(tie.intercept_[0] - coef @ center)
        meta = {"C": c, "tie_weight": tie_weight}
        heads.append(PreferenceHead(scale, weights, coef, intercept, meta))
    return heads


def _predict(
    head: PreferenceHead, first: np.ndarray, second: np.ndarray, similarity: np.ndarray
) -> list[str]:
    margin = head.scores(first) - head.scores(second)
    rows = head.probabilities(margin, first[:, LOG_WORDS] - second[:, LOG_WORDS], similarity)
    return [argmax_verdict(dict(zip(CLASSES, row, strict=True))) for row in rows]


def _select(
    first, second, similarity, gold, groups, weight, idx, args: BuiltinJudgeArguments
) -> tuple[float, float]:
    """(C, tie weight) with the best inner grouped-CV macro F1, on rows `idx` only."""
    inner = GroupKFold(n_splits=min(4, len(set(groups[idx]))))
    scores = {}
    for c in args.c_grid:
        gold_all, predicted = [], {w: [] for w in args.tie_weights}
        for train, held in inner.split(idx, groups=groups[idx]):
            train, held = idx[train], idx[held]
            held = held[weight[held] == 1.0]  # scored on human labels only
            heads = _fit_heads(
                first[train], second[train], similarity[train], [gold[i] for i in train],
                groups[train], weight[train], c, args.tie_weights,
            )  # fmt: skip
            for tie_weight, head in zip(args.tie_weights, heads, strict=True):
                predicted[tie_weight] += _predict(head, first[held], second[held], similarity[held])
            gold_all += [gold[i] for i in held]
        for tie_weight in args.tie_weights:
            scores[(c, tie_weight)] = judge_metrics(gold_all, predicted[tie_weight])["f1_macro"]
    return max(scores, key=scores.__getitem__)


def train_builtin_judge(args: BuiltinJudgeArguments, console: Console | None = None) -> dict:
    """Encode, cross-validate on the dev split, fit on everything, write head.json and README."""
    from judge.cache import JudgmentCache

    console = console or Console(stderr=True)
    started = time.monotonic()
    dev = read_testset(args.testset).items
    extra: list[TrainingPair] = []
    skipped_eval = 0
    for path in args.preferences:
        pairs, skipped = read_training_preferences(path)
        extra += pairs
        skipped_eval += skipped
    if args.seed_tasks is not None:
        exclude = [i.pair.instruction for i in dev]
        extra += synthetic_pairs(args.seed_tasks, exclude, args.synthetic_weight)
    dev_pairs = [
        TrainingPair(i.pair, i.gold, "dev:" + i.pair.instruction, "pandalm-dev") for i in dev
    ]
    everything = dev_pairs + extra

    encoder = (
        builtin_encoder(args.threads)
        if args.encoder_gguf is None
        else LlamaEmbeddingEncoder(args.encoder_gguf, args.threads)
    )
    featurizer = ResponseFeaturizer(encoder, JudgmentCache(args.cache))
    texts = list(
        dict.fromkeys(
            encoder_text(t.pair.instruction, t.pair.input, r)
            for t in everything
            for r in (t.pair.response1, t.pair.response2)
        )
    )
    with progress_bar(console) as progress:
        task = progress.add_task("encoding responses", total=len(texts))
        featurizer.encodings.get(texts, on_encoded=lambda n: progress.advance(task, n))
        progress.update(task, completed=len(texts))

    tasks = [(t.pair.instruction, t.pair.input) for t in everything]
    first = featurizer.features(tasks, [t.pair.response1 for t in everything])
    second = featurizer.features(tasks, [t.pair.response2 for t in everything])
    similarity = pair_similarities([(t.pair.response1, t.pair.response2) for t in everything])
    gold = [t.gold for t in everything]
    groups = np.array([t.group for t in everything])
    weight = np.array([t.weight for t in everything])
    n_dev = len(dev_pairs)
    dev_idx = np.arange(n_dev)
    extra_idx = np.arange(n_dev, len(everything))

    # Out-of-fold on the dev split: each fold's head never saw that fold's instructions.
    predicted = [""] * n_dev
    chosen = []
    outer = GroupKFold(n_splits=args.folds)
    for fold, (tr, te) in enumerate(outer.split(dev_idx, groups=groups[:n_dev])):
        train_idx = np.concatenate([dev_idx[tr], extra_idx])
        c, tie_weight = _select(first, second, similarity, gold, groups, weight, train_idx, args)
        chosen.append([c, tie_weight])
        (head,) = _fit_heads(
            first[train_idx], second[train_idx], similarity[train_idx],
            [gold[i] for i in train_idx], groups[train_idx], weight[train_idx], c, (tie_weight,),
        )  # fmt: skip
        verdicts = _predict(head, first[te], second[te], similarity[te])
        for i, verdict in zip(te, verdicts, strict=True):
            predicted[i] = verdict
        console.print(f"fold {fold + 1}/{args.folds}: C={c}, tie weight {tie_weight}")
    dev_gold = gold[:n_dev]
    oof = judge_metrics(dev_gold, predicted, consistency=1.0)
    pairs_text = [(t.pair.response1, t.pair.response2) for t in dev_pairs]
    oof.update(bias_diagnostics(pairs_text, dev_gold, predicted))

    everything_idx = np.arange(len(gold))
    final_c, final_weight = _select(
        first, second, similarity, gold, groups, weight, everything_idx, args
    )
    (head,) = _fit_heads(first, second, similarity, gold, groups, weight, final_c, (final_weight,))
    sources = Counter(t.source for t in everything)
    meta = {
        **head.meta,
        "encoder": featurizer.encodings.encoder.identity,
        "training_pairs": dict(sources),
    }
    head = PreferenceHead(head.scale, head.weights, head.tie_coef, head.tie_intercept, meta)
    head.save(args.out / "head.json")
    record = {
        "settings": json.loads(json.dumps(asdict(args), default=str)),
        "data": {
            "sources": dict(sources),
            "eval_rows_refused": skipped_eval,
            "unique_texts": len(texts),
        },
        "fold_settings": chosen,
        "final_settings": [final_c, final_weight],
        "dev_out_of_fold": oof,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    (args.out / "training.json").write_text(
        json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8"
    )
    (args.out / "README.md").write_text(model_card(record), encoding="utf-8")
    return record


LICENCES = {
    "pandalm-dev": "Apache-2.0 (PandaLM's repository); instructions from self-instruct's "
    "user-oriented set, whose authors ask that it not be used for training",
    "alpaca-seed-synthetic": "Apache-2.0 (Stanford Alpaca's seed tasks); the human answer "
    "against a variant built by trainer/judge_builtin_data.py, weighted below human labels",
}


def _row(name: str, metrics: dict) -> str:
    def show(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    return (
        f"| {name} | {show(metrics.get('accuracy'))} | {show(metrics.get('f1_macro'))} | "
        f"{show(metrics.get('decisive_accuracy'))} |"
    )


def model_card(record: dict) -> str:
    """The README next to the weights: data, settings and out-of-fold dev metrics."""
    oof = record["dev_out_of_fold"]
    sources = record["data"]["sources"]
    lines = [
        "# builtin judge: a pointwise score on frozen SmolLM2-135M encodings",
        "",
        "Built by `pandalm-train builtin-judge` (`make builtin-judge`); code in",
        "`judge/pointwise.py` and `trainer/builtin_judge.py`. Each task + response is encoded",
        "once (llama.cpp embedding mode, mean pooling, the first 12 of the 30 layers of the",
        "embedded SmolLM2-135M-Instruct, q8_0) and described by surface features; a linear",
        "score s(response) on them gives the margin z = s(A) - s(B), a small logistic model of",
        "|z|, the length gap and how alike the two responses are (shared words, shared",
        "characters) gives p(Tie), and the rest is split sigmoid(z) : sigmoid(-z).",
        "Swapping A and B swaps p(1) and p(2) exactly: both orders always agree. It cannot",
        "write PandaLM's reason or reference: generate mode needs a PandaLM judge (gguf:/hf:).",
        "",
        "## Training data",
        "",
        "| source | pairs | licence | use |",
        "|---|---|---|---|",
    ]
    for source, count in sorted(sources.items()):
        licence = LICENCES.get(source, "see ../shared/data/preferences/README.md (use = train)")
        lines.append(f"| {source} | {count} | {licence} | training, both orders |")
    lines += [
        "",
        f'`use = "eval"` rows refused: {record["data"]["eval_rows_refused"]}. '
        f"Unique texts encoded: {record['data']['unique_texts']}.",
        "",
        "PandaLM's dev split (536 human-labelled pairs) is trained on, so every dev figure",
        "below is **out-of-fold**: 5 folds split by instruction (GroupKFold), the",
        "score's regularisation C and the tie weight chosen by an inner grouped CV inside each",
        "training fold. The dev",
        "split's instructions come from self-instruct's user-oriented set, whose authors ask",
        "that it not be used for training; the labels and responses are PandaLM's (Apache-2.0).",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(record["settings"], indent=2),
        "```",
        "",
        f"(C, tie weight) per fold: {record['fold_settings']}; final: "
        f"{record['final_settings']}; "
        f"wall: {record['wall_seconds']} s.",
        "",
        "## Dev split, out-of-fold (both orders)",
        "",
        "| rule | accuracy | macro F1 | accuracy on decisive pairs |",
        "|---|---|---|---|",
        _row("this judge", oof),
        _row("longer wins, Tie within 10%", oof["length_baseline"]),
        "",
        f"Consistency: {oof['consistency']} (by construction). Kappa: {oof['kappa']:.3f}.",
        f"Length-controlled accuracy (decisive pairs within 10% of each other's word count): "
        f"{oof['length_controlled']['accuracy']} on {oof['length_controlled']['n']} pairs.",
        f"Picks the longer response in {oof['length_preference']['judge']['share']:.3f} of its "
        f"decisive verdicts; humans in {oof['length_preference']['human']['share']:.3f}.",
        "",
    ]
    return "\n".join(lines)
