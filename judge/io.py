"""Reading judge inputs with errors that name the file, line and field."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from common.records import InputError, read_records
from judge.prompt import Pair
from judge.verdict import INVALID, Verdict

PAIR_FIELDS = ("instruction", "input", "response1", "response2")
_GOLD_NAMES = {0: "Tie", 1: "1", 2: "2"}
USES = ("train", "eval")
"""A preference row's `use`: may train a shipped model, or may only be evaluated on."""


@dataclass(frozen=True)
class LabelledPair:
    """A test-set item: the pair and its gold verdict (majority of the annotators), and for a
    preference file's row its `use` (`train` or `eval`)."""

    idx: int
    pair: Pair
    gold: Verdict
    use: str | None = None


_SCALARS = (bool, int, float)


def pair_from_record(where: str, record: dict, coerced: list[str] | None = None) -> Pair:
    """The pair of a record. With `coerced` given, a scalar response (PandaLM's released test set
    has six `true` ones) is taken as PandaLM's code takes it, Python's `str`, and its location is
    appended to `coerced`; without it, or for a list or an object, the record is refused."""
    values = {}
    for name in PAIR_FIELDS:
        if name not in record:
            raise InputError(f"{where}: field '{name}' is missing")
        value = record[name]
        if coerced is not None and name.startswith("response") and isinstance(value, _SCALARS):
            coerced.append(f"{where}.{name}")
            value = str(value)
        if not isinstance(value, str):
            kind = type(value).__name__
            raise InputError(f"{where}: field '{name}' must be a string, not {kind}")
        values[name] = value
    return Pair(**values)


def read_pairs(path: Path) -> list[tuple[dict, Pair]]:
    """All pairs of a file, validated before any judging starts."""
    return [(record, pair_from_record(where, record)) for where, record in read_records(path)]


@dataclass(frozen=True)
class Testset:
    """Labelled pairs and the locations of responses that were not strings (see
    `pair_from_record`)."""

    items: list[LabelledPair]
    coerced: list[str]


def read_testset(path: Path, use: str | None = None) -> Testset:
    """Labelled pairs: PandaLM's test-set format, `annotator1..3` (0 = tie, 1, 2), whose gold
    label is the annotators' majority (Tie when all three differ), or the preference-pair format
    of a `label` field (`1`, `2` or `Tie`). With `use`, only records whose `use` field says so
    (a preference file's `train` or `eval` rows)."""
    items: list[LabelledPair] = []
    coerced: list[str] = []
    for index, (where, record) in enumerate(read_records(path)):
        if "use" in record and record["use"] not in USES:
            raise InputError(f"{where}: field 'use' must be train or eval")
        if use is not None and record.get("use") != use:
            continue
        pair = pair_from_record(where, record, coerced)
        idx = int(record.get("idx", index))
        if "label" in record:
            label = str(record["label"])
            if label not in ("1", "2", "Tie"):
                raise InputError(f"{where}: field 'label' must be 1, 2 or Tie, got {label!r}")
            items.append(LabelledPair(idx, pair, label, record.get("use")))  # type: ignore[arg-type]
            continue
        votes = []
        for name in ("annotator1", "annotator2", "annotator3"):
            vote = record.get(name)
            if vote not in _GOLD_NAMES or isinstance(vote, bool):
                raise InputError(f"{where}: field '{name}' must be 0, 1 or 2, got {vote!r}")
            votes.append(vote)
        label, count = Counter(votes).most_common(1)[0]
        gold: Verdict = _GOLD_NAMES[label] if count > 1 else "Tie"  # type: ignore[assignment]
        items.append(LabelledPair(idx, pair, gold))
    return Testset(items, coerced)


def prediction_verdict(where: str, record: dict) -> Verdict:
    """A verdict from a prediction record: ours (`verdict`), PandaLM's or GPT's released files."""
    if "verdict" in record:
        value = record["verdict"]
    elif "pandalm_result" in record:
        value = record["pandalm_result"]
        if value not in _GOLD_NAMES or isinstance(value, bool):
            raise InputError(f"{where}: field 'pandalm_result' must be 0, 1 or 2, got {value!r}")
        return _GOLD_NAMES[value]  # type: ignore[return-value]
    elif "gpt_result" in record:
        value = record["gpt_result"]
    else:
        raise InputError(f"{where}: no 'verdict', 'pandalm_result' or 'gpt_result' field")
    text = str(value).strip()
    if text in ("1", "2", "Tie"):
        return text  # type: ignore[return-value]
    return "Tie" if text.lower() == "tie" else INVALID


@dataclass(frozen=True)
class Prediction:
    """A predicted verdict and, for `compare` output, each order's verdict in the pair's terms."""

    verdict: Verdict
    orders: tuple[Verdict, ...] = ()


def read_predictions(path: Path) -> dict[int, Prediction]:
    """Predictions keyed by `idx` (by position where a record has none)."""
    predictions = {}
    for index, (where, record) in enumerate(read_records(path)):
        orders = tuple(
            prediction_verdict(where, order)
            for order in record.get("orders", ())
            if isinstance(order, dict)
        )
        predictions[int(record.get("idx", index))] = Prediction(
            prediction_verdict(where, record), orders
        )
    return predictions
