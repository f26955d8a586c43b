"""Judge quality metrics against human labels (scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from judge.backends.rules import DEFAULT_BANDS, RULES, rule_verdicts
from judge.features import length_score
from judge.verdict import INVALID, Verdict

CLASSES: tuple[str, ...] = ("Tie", "1", "2")
PREDICTED: tuple[str, ...] = (*CLASSES, INVALID)


def judge_metrics(
    gold: Sequence[Verdict], predicted: Sequence[Verdict], consistency: float | None = None
) -> dict:
    """Accuracy, macro/weighted precision-recall-F1 over tie/1/2, kappa, confusion, invalid count.

    An invalid prediction is a wrong answer: it lowers accuracy and the gold class's recall, and
    is no class's prediction for precision. Confusion rows are gold Tie/1/2, columns predicted
    Tie/1/2/invalid.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    if not gold:
        raise ValueError("no items to evaluate")
    metrics: dict = {"n": len(gold), "accuracy": float(accuracy_score(gold, predicted))}
    metrics["decisive_accuracy"] = decisive_accuracy(gold, predicted)
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            gold, predicted, labels=list(CLASSES), average=average, zero_division=0
        )
        metrics[f"precision_{average}"] = float(precision)
        metrics[f"recall_{average}"] = float(recall)
        metrics[f"f1_{average}"] = float(f1)
    kappa = cohen_kappa_score(gold, predicted, labels=list(PREDICTED))
    metrics["kappa"] = None if kappa != kappa else float(kappa)  # NaN when one rater is constant
    metrics["invalid"] = sum(p == INVALID for p in predicted)
    metrics["consistency"] = consistency
    matrix = confusion_matrix(gold, predicted, labels=list(PREDICTED))[: len(CLASSES)]
    metrics["confusion"] = {
        "rows": list(CLASSES),
        "columns": list(PREDICTED),
        "matrix": matrix.tolist(),
    }
    return metrics


LENGTH_TIE_BAND = DEFAULT_BANDS["length"]
"""Word counts within 10% of each other count as equally long (the length rule's Tie)."""


def length_verdict(response1: str, response2: str) -> Verdict:
    """The length rule, `rule:length?band=0.1`: the longer response wins, Tie when the word
    counts are within 10%."""
    first, second = np.array([length_score(response1)]), np.array([length_score(response2)])
    return rule_verdicts(first, second, LENGTH_TIE_BAND)[0]  # type: ignore[return-value]


def _longer_share(verdicts: Sequence[Verdict], pairs: Sequence[tuple[str, str]]) -> dict:
    picks = [
        (v == "1") == (length_score(a) > length_score(b))
        for v, (a, b) in zip(verdicts, pairs, strict=True)
        if v in ("1", "2") and length_score(a) != length_score(b)
    ]
    return {"share": sum(picks) / len(picks) if picks else None, "n": len(picks)}


def bias_diagnostics(
    pairs: Sequence[tuple[str, str]],
    gold: Sequence[Verdict] | None,
    predicted: Sequence[Verdict],
    orders: Sequence[Sequence[Verdict]] | None = None,
) -> dict:
    """How a judge leans: position, length, and its accuracy where length cannot help.

    - `position_bias`: among two-order pairs whose orders disagree, the share where both orders
      chose the same position (in the pair's terms, one order said `1` and the other `2`);
    - `length_preference`: among decisive verdicts on pairs of unequal word counts, the share
      that picked the longer response, next to the same share of the human labels;
    - `length_controlled`: accuracy on decisive human-labelled pairs whose word counts are within
      10% of each other;
    - `length_baseline`: the length rule's metrics on the same items.
    `pairs` are (response1, response2); `orders` each pair's per-order verdicts in its terms.
    """
    result: dict = {}
    if orders is not None:
        two = [tuple(o) for o in orders if len(o) == 2]
        disagreeing = [o for o in two if o[0] != o[1]]
        same_position = sum(o in (("1", "2"), ("2", "1")) for o in disagreeing)
        result["position_bias"] = {
            "share": same_position / len(disagreeing) if disagreeing else None,
            "n": len(disagreeing),
        }
    preference = {"judge": _longer_share(predicted, pairs)}
    if gold is not None:
        preference["human"] = _longer_share(gold, pairs)
        controlled = [
            g == p
            for g, p, (a, b) in zip(gold, predicted, pairs, strict=True)
            if g in ("1", "2") and length_verdict(a, b) == "Tie"
        ]
        result["length_controlled"] = {
            "accuracy": sum(controlled) / len(controlled) if controlled else None,
            "n": len(controlled),
        }
        rule = [length_verdict(a, b) for a, b in pairs]
        baseline = judge_metrics(gold, rule)
        result["length_baseline"] = {k: baseline[k] for k in ("accuracy", "f1_macro", "kappa")} | {
            "decisive_accuracy": decisive_accuracy(gold, rule)
        }
    result["length_preference"] = preference
    return result


def decisive_accuracy(gold: Sequence[Verdict], predicted: Sequence[Verdict]) -> float | None:
    """Accuracy on the pairs that humans did not call a tie."""
    decisive = [g == p for g, p in zip(gold, predicted, strict=True) if g in ("1", "2")]
    return sum(decisive) / len(decisive) if decisive else None


BASELINE_RULES: tuple[tuple[str, float], ...] = (
    ("length", 0.10),
    ("length", 0.0),
    ("length-repetition", 0.0),
    ("length-repetition", 0.10),
)
"""The rules every judge is reported next to (judge/backends/rules.py), as (rule, band)."""


def rule_predictions(pairs: Sequence[tuple[str, str]]) -> dict[str, list[Verdict]]:
    """Each baseline rule's verdicts on (response1, response2) pairs, keyed by its spec."""
    predictions = {}
    for rule, band in BASELINE_RULES:
        first = np.array([RULES[rule](a) for a, _ in pairs], dtype=float)
        second = np.array([RULES[rule](b) for _, b in pairs], dtype=float)
        predictions[f"rule:{rule}?band={band:g}"] = rule_verdicts(first, second, band)
    return predictions  # type: ignore[return-value]


def verdict_codes(verdicts: Sequence[Verdict]) -> np.ndarray:
    """Tie/1/2 as 0/1/2 (CLASSES' order), anything else (invalid) as 3."""
    index = {c: i for i, c in enumerate(PREDICTED)}
    return np.array([index.get(v, len(CLASSES)) for v in verdicts], dtype=int)


def accuracy_and_macro_f1(gold: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(rows, 2): accuracy and macro F1 for each row of verdict codes in `predicted` against
    `gold` (one row, or one per row of `predicted`), as `judge_metrics` computes them: the three
    classes are codes 0, 1 and 2 in any fixed order, any other code is an invalid answer, and a
    class neither predicted nor gold scores 0. Vectorised for resamples and band searches."""
    g, p = np.broadcast_arrays(np.atleast_2d(gold), np.atleast_2d(predicted))
    f1 = np.zeros(len(p))
    for c in range(len(CLASSES)):
        tp = ((g == c) & (p == c)).sum(axis=1)
        wrong = ((g == c) != (p == c)).sum(axis=1)  # false positives + false negatives
        denominator = 2 * tp + wrong
        f1 += np.divide(2 * tp, denominator, out=np.zeros(len(p)), where=denominator > 0)
    return np.column_stack([(g == p).mean(axis=1), f1 / len(CLASSES)])


def bootstrap_errors(
    gold: Sequence[Verdict],
    predicted: Sequence[Verdict],
    baselines: dict[str, Sequence[Verdict]],
    rounds: int = 1000,
    seed: int = 0,
) -> dict:
    """Bootstrap standard errors (items resampled with replacement, B. Efron & R. Tibshirani,
    "An Introduction to the Bootstrap", 1993) of accuracy and macro F1 for the judge and each
    baseline (which also get their values on all items), and of the judge-minus-best-rule
    difference (the best rule by each metric on all items, the same resamples for both, so
    shared item difficulty cancels)."""
    g = verdict_codes(gold)
    samples = np.random.default_rng(seed).integers(0, len(g), size=(rounds, len(g)))
    codes = {name: verdict_codes(v) for name, v in baselines.items()}
    full = {name: accuracy_and_macro_f1(g, c)[0] for name, c in codes.items()}
    rules = {name: accuracy_and_macro_f1(g[samples], c[samples]) for name, c in codes.items()}
    own_codes = verdict_codes(predicted)
    own, judge = (
        accuracy_and_macro_f1(g, own_codes)[0],
        accuracy_and_macro_f1(g[samples], own_codes[samples]),
    )
    result: dict = {
        "rounds": rounds,
        "accuracy_se": float(judge[:, 0].std(ddof=1)),
        "f1_macro_se": float(judge[:, 1].std(ddof=1)),
        "baselines": {
            name: {
                "accuracy": float(full[name][0]),
                "f1_macro": float(full[name][1]),
                "accuracy_se": float(r[:, 0].std(ddof=1)),
                "f1_macro_se": float(r[:, 1].std(ddof=1)),
            }
            for name, r in rules.items()
        },
    }
    for column, metric in enumerate(("accuracy", "f1_macro")):
        best = max(full, key=lambda name: full[name][column])
        result[f"{metric}_versus_best_rule"] = {
            "rule": best,
            "difference": float(own[column] - full[best][column]),
            "se": float((judge[:, column] - rules[best][:, column]).std(ddof=1)),
        }
    return result


def versus_rules(
    pairs: Sequence[tuple[str, str]],
    gold: Sequence[Verdict],
    predicted: Sequence[Verdict],
    rounds: int = 1000,
    seed: int = 0,
) -> dict:
    """What `evaluate` reports next to a judge: `baselines` (each rule's accuracy, macro F1 and
    decisive accuracy on the same items, with standard errors) and `standard_errors` (the
    judge's, and of its difference to the best rule)."""
    rules = rule_predictions(pairs)
    errors = bootstrap_errors(gold, predicted, rules, rounds, seed)
    baselines = errors.pop("baselines")
    for name, verdicts in rules.items():
        baselines[name]["decisive_accuracy"] = decisive_accuracy(gold, verdicts)
    return {"baselines": baselines, "standard_errors": errors}
