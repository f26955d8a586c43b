"""Training the builtin judge (judge/backends/builtin.py) on human preference pairs from several
sources, and measuring it the way it will be used: on sources it never saw.

Sources disagree about length (LLMBar's adversarial sets punish the longer answer, hh-rlhf's
harmless set prefers refusals, PandaLM and Open-Assistant reward length), so pooling them
naively teaches "shorter is better". The fit therefore gives each source in `length_nuisance`
its own length coefficients (a fixed effect that absorbs its length preference; the shipped
score keeps the length weight learned from the other sources), and each source with Tie labels
its own Davidson tie intercept (annotation conventions differ; the shipped judge keeps the one
of `tie_reference`, PandaLM's). Sources without Tie labels enter through the Bradley-Terry
likelihood of their decisive choice only. Every source weighs the same in total.

Every figure is held out: PandaLM's dev split out-of-fold (folds by instruction), each training
source left out in turn (leave-one-source-out), and the `use = "eval"` rows as pure tests, each
next to the rules (judge.metrics.BASELINE_RULES) with bootstrap standard errors.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import numpy as np
from rich.console import Console
from scipy.optimize import minimize
from sklearn.model_selection import GroupKFold

from common.cli import progress_bar
from common.records import InputError
from judge.backends.builtin import BuiltinModel, tie_inputs
from judge.features import RESPONSE_FEATURES, pair_similarity, response_features
from judge.io import read_testset
from judge.metrics import judge_metrics, versus_rules
from judge.verdict import argmax_verdict
from trainer.arguments import BuiltinJudgeArguments

DEV_SOURCE = "pandalm-dev"
LENGTH_FEATURES = ("log_tokens", "log_effective_tokens")


@dataclass
class PreferencePairs:
    """Labelled pairs with their measures: source, gold label, grouping key, both responses'
    judge.features rows, the pair's similarity, and the texts the rules read."""

    sources: np.ndarray
    gold: np.ndarray
    groups: np.ndarray
    trainable: np.ndarray
    first: np.ndarray
    second: np.ndarray
    similarity: np.ndarray
    texts: list[tuple[str, str]]

    def rows(self, mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask)


def load_pairs(args: BuiltinJudgeArguments, console: Console) -> PreferencePairs:
    """PandaLM's dev split (trainable) and every preference file's rows: `use = "train"` rows
    under the file's name, `use = "eval"` rows under NAME-eval, never trained on; every
    response measured once, with progress."""
    rows = [(DEV_SOURCE, item) for item in read_testset(args.testset).items]
    for path in args.preferences:
        for item in read_testset(path).items:
            if item.use is None:
                raise InputError(f"{path}: row {item.idx}: field 'use' (train or eval) is missing")
            rows.append((path.stem if item.use == "train" else f"{path.stem}-eval", item))
    first, second, similarity = [], [], []
    with progress_bar(console) as progress:
        task = progress.add_task("measuring responses", total=len(rows))
        for _, item in rows:
            pair = item.pair
            first.append(response_features(pair.instruction, pair.input, pair.response1))
            second.append(response_features(pair.instruction, pair.input, pair.response2))
            similarity.append(pair_similarity(pair.response1, pair.response2))
            progress.advance(task)
    return PreferencePairs(
        sources=np.array([source for source, _ in rows]),
        gold=np.array([item.gold for _, item in rows]),
        groups=np.array([item.pair.instruction for _, item in rows]),
        trainable=np.array([item.use != "eval" for _, item in rows]),
        first=np.array(first),
        second=np.array(second),
        similarity=np.array(similarity),
        texts=[(item.pair.response1, item.pair.response2) for _, item in rows],
    )


LABELS = ("1", "2", "Tie")


def _source_weights(sources: np.ndarray) -> np.ndarray:
    """Every source weighs the same in total, whatever its size."""
    names, inverse, counts = np.unique(sources, return_inverse=True, return_counts=True)
    return len(sources) / len(names) / counts[inverse]


def _one_hot(values: np.ndarray, levels: list[str]) -> np.ndarray:
    return np.column_stack([values == level for level in levels] or [np.zeros((len(values), 0))])


def _tie_sources(data: PreferencePairs, idx: np.ndarray, reference: str) -> list[str]:
    """Sources with Tie labels among `idx`, the reference first when it is there."""
    found = sorted(set(data.sources[idx][data.gold[idx] == "Tie"]))
    return sorted(found, key=lambda s: s != reference)


def fit_model(data: PreferencePairs, idx: np.ndarray, args: BuiltinJudgeArguments) -> BuiltinModel:
    """Maximum (penalised) likelihood of the labels of rows `idx` under Davidson's model with
    the per-source length and tie terms of the module docstring."""
    columns = [RESPONSE_FEATURES.index(name) for name in args.features]
    sources = data.sources[idx]
    scale = np.vstack([data.first[idx], data.second[idx]])[:, columns].std(axis=0) + 1e-6
    diff = (data.first[idx] - data.second[idx])[:, columns] / scale
    length = diff[:, [i for i, n in enumerate(args.features) if n in LENGTH_FEATURES]]
    nuisance = _one_hot(sources, sorted(set(sources) & set(args.length_nuisance)))
    ties = _tie_sources(data, idx, args.tie_reference)
    tie_x = tie_inputs(data.similarity[idx])
    tie_source = _one_hot(sources, ties[1:])
    with_ties = np.isin(sources, ties)
    label = np.array([LABELS.index(g) for g in data.gold[idx]])
    weight = _source_weights(sources)
    k, m, s = diff.shape[1], length.shape[1], nuisance.shape[1]

    def loss(theta: np.ndarray) -> float:
        beta, delta = theta[:k], theta[k : k + s * m].reshape(s, m)
        tau, eta = theta[k + s * m : k + s * m + 2], theta[k + s * m + 2 :]
        margin = diff @ beta + ((length @ delta.T) * nuisance).sum(axis=1)
        logits = np.column_stack([margin / 2, -margin / 2, tie_x @ tau + tie_source @ eta])
        decisive = np.logaddexp(logits[:, 0], logits[:, 1])
        normaliser = np.where(with_ties, np.logaddexp(decisive, logits[:, 2]), decisive)
        picked = logits[np.arange(len(label)), label] - normaliser
        penalty = args.l2 * (beta @ beta) / len(label) + 1e-3 * (delta**2).sum()
        return float(-(weight * picked).sum() / weight.sum() + penalty)

    start = np.zeros(k + s * m + 2 + tie_source.shape[1])
    start[k + s * m] = -2.0
    theta = minimize(loss, start, method="L-BFGS-B").x
    tie = theta[k + s * m : k + s * m + 2] if ties else np.array([-30.0, 0.0])
    meta = {
        "tie_source": ties[0] if ties else None,
        "length_nuisance": sorted(set(sources) & set(args.length_nuisance)),
    }
    return BuiltinModel(tuple(args.features), scale, theta[:k], tie, meta)


def predict(model: BuiltinModel, data: PreferencePairs, idx: np.ndarray) -> list[str]:
    """The judge's verdicts on rows `idx` (argmax of p(1), p(2), p(Tie))."""
    margin = model.score_rows(data.first[idx]) - model.score_rows(data.second[idx])
    rows = model.probabilities(margin, data.similarity[idx])
    return [argmax_verdict(dict(zip(LABELS, row, strict=True))) for row in rows]


def _dev_folds(data: PreferencePairs, folds: int):
    """(train rows, held rows) of PandaLM's dev split, split by instruction."""
    dev = data.rows(data.sources == DEV_SOURCE)
    for train, held in GroupKFold(n_splits=folds).split(dev, groups=data.groups[dev]):
        yield dev[train], dev[held]


def held_out(data: PreferencePairs, args: BuiltinJudgeArguments, console: Console) -> dict:
    """Verdicts on rows no fit saw: {name: (rows, verdicts)} for the dev split out-of-fold,
    each training source left out, and each eval source (the model fitted on every training
    source)."""
    trainable = data.trainable
    others = data.rows(trainable & (data.sources != DEV_SOURCE))
    verdicts: dict[int, str] = {}
    for train, held in _dev_folds(data, args.folds):
        model = fit_model(data, np.concatenate([train, others]), args)
        verdicts.update(zip(held.tolist(), predict(model, data, held), strict=True))
    dev = np.array(sorted(verdicts))
    result = {"dev out-of-fold": (dev, [verdicts[i] for i in dev])}
    for source in sorted(set(data.sources[trainable])):
        held = data.rows(data.sources == source)
        model = fit_model(data, data.rows(trainable & (data.sources != source)), args)
        result[f"left out: {source}"] = (held, predict(model, data, held))
        console.print(f"left out {source}: fitted on the other sources")
    final = fit_model(data, data.rows(trainable), args)
    for source in sorted(set(data.sources[~trainable])):
        held = data.rows(data.sources == source)
        result[f"eval: {source}"] = (held, predict(final, data, held))
    return result


def _held_out_table(data: PreferencePairs, predictions: dict, rounds: int) -> dict:
    """Each held-out set: the judge's and every rule's accuracy and macro F1, with standard
    errors, the judge's position bias (none: one score per response) and its difference to
    the best rule."""
    table = {}
    for name, (rows, verdicts) in predictions.items():
        gold = list(data.gold[rows])
        pairs = [data.texts[i] for i in rows]
        metrics = judge_metrics(gold, verdicts, consistency=1.0)
        table[name] = {
            "n": len(rows),
            "ties": int(sum(g == "Tie" for g in gold)),
            "accuracy": metrics["accuracy"],
            "f1_macro": metrics["f1_macro"],
            **versus_rules(pairs, gold, verdicts, rounds),
        }
    return table


def train_builtin_judge(args: BuiltinJudgeArguments, console: Console | None = None) -> dict:
    """Measure held out, fit on every training row, write head.json, training.json, README."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    data = load_pairs(args, console)
    table = _held_out_table(data, held_out(data, args, console), args.bootstrap_rounds)
    model = fit_model(data, data.rows(data.trainable), args)
    sources = dict(zip(*np.unique(data.sources, return_counts=True), strict=True))
    trained = sorted(set(data.sources[data.trainable]))
    model = BuiltinModel(
        model.features, model.scale, model.weights, model.tie, {**model.meta, "trained_on": trained}
    )
    model.save(args.out / "head.json")
    record = {
        "settings": json.loads(json.dumps(asdict(args), default=str)),
        "data": {name: int(count) for name, count in sources.items()},
        "trained_on": trained,
        "weights": dict(zip(model.features, model.weights.round(4).tolist(), strict=True)),
        "tie": model.tie.round(4).tolist(),
        "held_out": table,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    (args.out / "README.md").write_text(model_card(record), encoding="utf-8")
    return record


def _cell(entry: dict, ties: bool) -> str:
    text = f"{entry['accuracy']:.3f} ± {entry['accuracy_se']:.3f}"
    return text + (f" / {entry['f1_macro']:.3f} ± {entry['f1_macro_se']:.3f}" if ties else "")


def held_out_rows(table: dict) -> list[str]:
    """The model card's table: each held-out set x {this judge, each rule}."""
    rules = list(next(iter(table.values()))["baselines"])
    lines = [
        "| held out | n (ties) | this judge | "
        + " | ".join(f"`{r}`" for r in rules)
        + " | judge - best rule (accuracy) |",
        "|---|---|---|" + "---|" * len(rules) + "---|",
    ]
    for name, entry in table.items():
        ties = entry["ties"] > 0
        errors = entry["standard_errors"]
        judge = {**entry, **errors}
        versus = errors["accuracy_versus_best_rule"]
        cells = [_cell(judge, ties)] + [_cell(entry["baselines"][r], ties) for r in rules]
        lines.append(
            f"| {name} | {entry['n']} ({entry['ties']}) | "
            + " | ".join(cells)
            + f" | {versus['difference']:+.3f} ± {versus['se']:.3f} |"
        )
    return lines


def model_card(record: dict) -> str:
    """The README next to the weights: data, method, and the held-out table."""
    lines = [
        "# builtin judge: Bradley-Terry-Davidson on response measures",
        "",
        "Built by `pandalm-train builtin-judge` (`make builtin-judge`); code in",
        "`judge/features.py`, `judge/backends/builtin.py` and `trainer/judges/builtin.py`.",
        "Each response gets a score s = w . measures (length with diminishing returns, copying",
        "of the task, a script that does not match the task's, ...); a pair gets",
        "p(1) : p(2) : p(Tie) = exp(z/2) : exp(-z/2) : nu with z = s(A) - s(B) and a tie weight",
        "nu that grows as the two responses match character for character (Davidson, 1970).",
        "Swapping A and B swaps p(1) and p(2) exactly: both orders always agree (consistency",
        "1.00, no position bias). No model file: it runs anywhere, instantly.",
        "It cannot write PandaLM's reason or reference: generate mode needs a PandaLM judge.",
        "",
        "## Data",
        "",
        "| source | pairs | used for |",
        "|---|---|---|",
    ]
    for source, count in record["data"].items():
        use = "training and held-out tests" if source in record["trained_on"] else "tests only"
        lines.append(f"| {source} | {count} | {use} |")
    lines += [
        "",
        "Licences: PandaLM's dev split is Apache-2.0 (its instructions come from self-instruct's",
        'user-oriented set); the preference files\' `use = "train"` rows carry licences that',
        'allow training a shipped model (../shared/data/preferences/README.md); `use = "eval"`',
        "rows are never trained on.",
        "",
        f"Weights (on measures divided by their spread): `{json.dumps(record['weights'])}`; "
        f"tie model log nu = {record['tie'][0]} + {record['tie'][1]} r^16.",
        "",
        "## Held out (both orders; accuracy ± bootstrap SE / macro F1 ± SE where there are ties)",
        "",
        "`dev out-of-fold`: PandaLM's dev split in 5 folds by instruction, each fold judged by a",
        "fit on the other folds and every other training source. `left out: S`: fitted on every",
        "training source but S (S's tie convention and length preference unseen). `eval: S`:",
        'the shipped fit on `use = "eval"` rows.',
        "",
        *held_out_rows(record["held_out"]),
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(record["settings"], indent=1),
        "```",
        f"Wall time: {record['wall_seconds']} s.",
        "",
    ]
    return "\n".join(lines)
