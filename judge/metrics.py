"""Judge quality metrics against human labels (scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

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
