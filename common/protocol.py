"""The wire protocol between coordinator and sites: message types, fields, bounds, validation.

Both sides import this module (standard library only). Every message is a flat mapping of
typed values that travels as one Flower ConfigRecord. Decoders are strict: an unknown field, a
wrong type or an out-of-range value raises `ProtocolError` with a numeric code, which a site
answers as a refusal. No free text crosses the wire: the coordinator sends config ids, enumerated
parameter values and integers; a site answers with integers only.

Coordinator -> site
- `space` (Flower message type `query.space`): the run key, the configs of the search space
  (ids and parameters as typed columns), how many validation items to use and the judge mode.
- `compare` (`query.compare`): comparisons as parallel lists of config indices and item slices,
  and `secure` (1: the tallies will be collected by secure aggregation, not in this reply).
- `train` (Flower's SecAgg+ stages): the same compare fields as the fit config; in its masked
  vectors a site sends the tallies of that request (see `coordinator/secure_sum.py`).
- `training` (`query.train`; not Flower's `train`, which carries SecAgg+): the indices of the
  configs whose checkpoints the coordinator wants now (a `TrainRequest`). The site trains each
  config's training run up to that config's epoch (resuming from its last finished epoch, the
  schedule still spanning the run's epochs) and generates those checkpoints' responses. Only
  for a space sent with `train_on_request` = 1 (the `halving` selection mode): such a site
  trains nothing up front, and the coordinator compares only configs it asked to be trained.
  A config index, not a run index, so the message means the same whatever the site's
  schedule horizon groups into one run.
- `result` (`query.result`): once the selection ended, the chosen config's index (`best`), the
  standings as config indices (`ranking`), how many sites took part, the evidence (comparisons
  decided by evidence and by the tie-break, the chosen config's record of comparisons won,
  undecided and lost, and its tallies summed over its comparisons, from its point of view) and,
  where the run named a baseline, its index and the chosen config's tally against it. The site
  stores it and answers a plain `ok` (its acknowledgement); the coordinator sends it again
  until every site acknowledged or the run's `result_timeout` passed.

Site -> coordinator
- a reply with `status` (ok, pending, refused, failed), a numeric `code`, `progress` in permille
  (for `training`: of the requested configs trained and generated) and, for an answered
  `compare`, `tallies`: five integers per comparison (win, tie, loss,
  invalid, items) from config a's point of view; empty when the request was `secure`.
- a reply to `space` may carry the capability flag `pointwise_judge` (1: the site's judge scores
  each response on its own, so once every config's responses are scored any comparison costs no
  further forward pass; 0: a pairwise judge). Absent counts as 0; any value but the integers 0
  and 1, or the flag on another reply, is refused by both `encode_reply` and the decoders.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from common.space import PARAMETERS
from common.tally import TALLY_FIELDS, Tally

PROTOCOL_VERSION = 1
SPACE_MESSAGE = "query.space"
COMPARE_MESSAGE = "query.compare"
TRAIN_MESSAGE = "query.train"
TRAIN_ON_REQUEST_FIELD = "train_on_request"
RESULT_MESSAGE = "query.result"
RECORD_KEY = "pandalm"

MAX_CONFIGS = 512
MAX_COMPARISONS = 256
MAX_ITEMS = 100_000
MAX_SITES = 100_000
NO_BASELINE = -1

# SecAgg+ quantizes values in [-SECAGG_CLIP, SECAGG_CLIP] onto 2 * SECAGG_CLIP integer steps, so
# integer tallies pass exactly; masks live modulo 2**32, which bounds the sites at 2**9 (512).
SECAGG_MIN_SITES = 3
SUMS_SHARED_FROM_SITES = 3
"""A result carries item counts summed over sites only when at least this many took part: with
two, each site could subtract its own counts from the sum and read the other site's."""
SECAGG_CLIP = 2**21
SECAGG_MODULUS = 2**32
SECAGG_MAX_SITES = SECAGG_MODULUS // (4 * SECAGG_CLIP)
JUDGE_MODES = ("generate", "score")

_RUN_KEY = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_CONFIG_ID = re.compile(r"[0-9a-f]{12}")


class Status(IntEnum):
    OK = 0
    PENDING = 1
    REFUSED = 2
    FAILED = 3


class Code(IntEnum):
    """Why a message was refused or failed; `NONE` for ok and pending replies."""

    NONE = 0
    UNKNOWN_MESSAGE = 10
    UNKNOWN_FIELD = 11
    MISSING_FIELD = 12
    WRONG_TYPE = 13
    OUT_OF_RANGE = 14
    TOO_LARGE = 15
    UNSUPPORTED_VERSION = 16
    UNKNOWN_RUN = 17
    SPACE_CHANGED = 18
    CONFIG_ID_MISMATCH = 19
    UNTRUSTED_APP = 20
    NOT_READY = 21
    RESULT_CHANGED = 22
    TRAINING_FAILED = 30
    GENERATION_FAILED = 31
    JUDGING_FAILED = 32
    INTERNAL_ERROR = 39
    PRIVACY_BUDGET = 33
    BAD_DATA = 34
    BAD_JUDGE = 35
    NO_DISK = 36
    BAD_BASE_MODEL = 37
    IMPOSSIBLE_TALLY = 40


CODE_MEANINGS: dict[Code, str] = {
    Code.NONE: "no error",
    Code.UNKNOWN_MESSAGE: "the site does not know this message type",
    Code.UNKNOWN_FIELD: "a message carried a field the protocol does not have",
    Code.MISSING_FIELD: "a message lacked a required field",
    Code.WRONG_TYPE: "a message field had the wrong type",
    Code.OUT_OF_RANGE: "a message field was out of range",
    Code.TOO_LARGE: "a message was larger than the protocol allows",
    Code.UNSUPPORTED_VERSION: "the two sides speak different protocol versions",
    Code.UNKNOWN_RUN: "the site has not received this run's search space",
    Code.SPACE_CHANGED: "the run's search space differs from the one the site accepted",
    Code.CONFIG_ID_MISMATCH: "a config id does not match its parameters",
    Code.UNTRUSTED_APP: "the site refused an app bundle it did not install",
    Code.NOT_READY: "the site has not judged the comparisons yet",
    Code.RESULT_CHANGED: "the run's result differs from the one the site stored",
    Code.TRAINING_FAILED: "training the candidates failed at the site",
    Code.GENERATION_FAILED: "generating the candidates' responses failed at the site",
    Code.JUDGING_FAILED: "judging a comparison failed at the site",
    Code.INTERNAL_ERROR: "an unexpected error at the site (see its logs)",
    Code.PRIVACY_BUDGET: "the site's privacy budget for the run is spent",
    Code.BAD_DATA: "the site's training or validation data is invalid",
    Code.BAD_JUDGE: "the site's judge model or server is missing or unusable",
    Code.NO_DISK: "the site cannot write its data directory or lacks disk space",
    Code.BAD_BASE_MODEL: "the site's base model is missing or unusable",
    Code.IMPOSSIBLE_TALLY: "the tallies sent are impossible for the request",
}
"""What each code means, in words: the coordinator's console and summary name it per site;
the site keeps the detailed text (`pandalm-agent status`), which never crosses the wire."""


def code_name(code: int) -> str:
    """A code received as an integer, by name (an unknown one as its number)."""
    try:
        return Code(code).name
    except ValueError:
        return str(code)


def code_meaning(code: int) -> str:
    """The meaning of a code received as an integer (an unknown one is named as such)."""
    try:
        return CODE_MEANINGS[Code(code)]
    except ValueError:
        return f"unknown code {code}"


class ProtocolError(ValueError):
    """A message that breaks the protocol; `code` is what travels back, never the text."""

    def __init__(self, code: Code, detail: str) -> None:
        super().__init__(f"{code.name}: {detail}")
        self.code = code


@dataclass(frozen=True)
class SpaceMessage:
    run_key: str
    config_ids: tuple[str, ...]
    params: tuple[dict[str, Any], ...]
    validation_items: int
    judge_mode: str
    train_on_request: bool = False
    """True: train nothing up front, only the configs that `query.train` messages ask for.
    On the wire only when set (absent counts as 0), so other modes' messages are unchanged."""


@dataclass(frozen=True)
class TrainRequest:
    """Config indices whose checkpoints are wanted (each config's run trained up to its epoch),
    distinct and ascending. The one form in a train message, in the `halving` procedure and in
    the coordinator's database."""

    configs: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.configs or min(self.configs) < 0:
            raise ProtocolError(Code.OUT_OF_RANGE, f"config indices needed, got {self.configs}")
        if list(self.configs) != sorted(set(self.configs)):
            raise ProtocolError(Code.OUT_OF_RANGE, "config indices must be distinct, ascending")


@dataclass(frozen=True)
class TrainMessage:
    run_key: str
    request: TrainRequest


@dataclass(frozen=True)
class Comparison:
    """Config indices a and b (a: the incumbent where that matters), judged on each site's
    validation items [item_start, item_stop). The default item_stop, MAX_ITEMS, lies past the
    end of any site's items: all of them. The one form of a comparison: in a compare message,
    in the selection procedures and in the coordinator's database."""

    a: int
    b: int
    item_start: int = 0
    item_stop: int = MAX_ITEMS

    def __post_init__(self) -> None:
        if min(self.a, self.b) < 0 or self.a == self.b:
            raise ProtocolError(Code.OUT_OF_RANGE, f"two distinct config indices, got {self}")
        if not 0 <= self.item_start < self.item_stop:
            raise ProtocolError(Code.OUT_OF_RANGE, f"empty or negative item slice in {self}")


@dataclass(frozen=True)
class CompareMessage:
    run_key: str
    comparisons: tuple[Comparison, ...]
    secure: bool = False


@dataclass(frozen=True)
class ResultMessage:
    """The run's outcome as each site learns it: config indices and integers only."""

    run_key: str
    best: int
    ranking: tuple[int, ...]
    sites: int
    """Sites that took part to the end (those whose tallies make the final comparisons)."""
    decided: int
    """Comparisons decided by evidence (wins != losses)."""
    tie_breaks: int
    """Comparisons where the incumbent stayed by the tie-break alone."""
    best_record: tuple[int, int, int]
    """The chosen config's comparisons won, left undecided and lost."""
    best_tally: Tally | None
    """The chosen config's tallies summed over all its comparisons, from its point of view;
    None where withheld (fewer than SUMS_SHARED_FROM_SITES sites)."""
    baseline: int = NO_BASELINE
    """The run's baseline config, or NO_BASELINE."""
    versus_baseline: Tally | None = None
    """The chosen config against the baseline (its point of view); None where not compared or
    withheld."""

    @property
    def sums_withheld(self) -> bool:
        """Whether the summed item counts were left out (too few sites to hide one site's)."""
        return self.best_tally is None


@dataclass(frozen=True)
class Reply:
    status: Status
    code: Code = Code.NONE
    progress: int = 0
    tallies: tuple[Tally, ...] = ()
    pointwise_judge: int | None = None
    """Only on a reply to `space`: 1 when the site's judge is pointwise, else 0."""


def _check_fields(message: Mapping[str, Any], required: dict[str, type]) -> None:
    unknown = set(message) - set(required)
    if unknown:
        raise ProtocolError(Code.UNKNOWN_FIELD, f"unknown field(s) {sorted(unknown)}")
    for name, kind in required.items():
        if name not in message:
            raise ProtocolError(Code.MISSING_FIELD, f"field {name!r} is missing")
        _check_type(name, message[name], kind)


def _check_type(name: str, value: Any, kind: Any) -> None:
    if isinstance(kind, list):
        if not isinstance(value, list):
            raise ProtocolError(Code.WRONG_TYPE, f"field {name!r} must be a list")
        for item in value:
            _check_type(name, item, kind[0])
        return
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ProtocolError(Code.WRONG_TYPE, f"field {name!r} must be {kind.__name__}")


def _check_version(message: Mapping[str, Any]) -> None:
    if message.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(Code.UNSUPPORTED_VERSION, f"version {message.get('version')!r}")


def _check_run_key(run_key: str) -> None:
    if not _RUN_KEY.fullmatch(run_key):
        raise ProtocolError(Code.OUT_OF_RANGE, "run_key must be 1-64 of [a-z0-9-]")


def encode_space(message: SpaceMessage) -> dict[str, Any]:
    record: dict[str, Any] = {
        "version": PROTOCOL_VERSION,
        "run_key": message.run_key,
        "config_ids": list(message.config_ids),
        "validation_items": message.validation_items,
        "judge_mode": JUDGE_MODES.index(message.judge_mode),
    }
    if message.train_on_request:
        record[TRAIN_ON_REQUEST_FIELD] = 1
    # a column per parameter of common.space.PARAMETERS; its `unset` value stands for "not set"
    for name, parameter in PARAMETERS.items():
        record[f"param.{name}"] = [
            parameter.kind(p.get(name, parameter.unset)) for p in message.params
        ]
    return record


def decode_space(record: Mapping[str, Any]) -> SpaceMessage:
    """Decode a space; the optional flag `train_on_request` must be the integer 0 or 1."""
    _check_version(record)
    on_request = TRAIN_ON_REQUEST_FIELD in record
    flag = record.get(TRAIN_ON_REQUEST_FIELD, 0)
    record = {k: v for k, v in record.items() if k != TRAIN_ON_REQUEST_FIELD}
    fields: dict[str, Any] = {
        "version": int,
        "run_key": str,
        "config_ids": [str],
        "validation_items": int,
        "judge_mode": int,
    }
    fields.update({f"param.{name}": [p.kind] for name, p in PARAMETERS.items()})
    _check_fields(record, fields)
    _check_run_key(record["run_key"])
    ids = record["config_ids"]
    if not 1 <= len(ids) <= MAX_CONFIGS:
        raise ProtocolError(Code.TOO_LARGE, f"1 to {MAX_CONFIGS} configs, got {len(ids)}")
    if any(not _CONFIG_ID.fullmatch(i) for i in ids) or len(set(ids)) != len(ids):
        raise ProtocolError(Code.OUT_OF_RANGE, "config ids must be distinct 12-digit hex")
    if not 1 <= record["validation_items"] <= MAX_ITEMS:
        raise ProtocolError(Code.OUT_OF_RANGE, "validation_items out of range")
    if not 0 <= record["judge_mode"] < len(JUDGE_MODES):
        raise ProtocolError(Code.OUT_OF_RANGE, "judge_mode out of range")
    params: list[dict[str, Any]] = [{} for _ in ids]
    for name, parameter in PARAMETERS.items():
        column = record[f"param.{name}"]
        if len(column) != len(ids):
            raise ProtocolError(Code.OUT_OF_RANGE, f"param.{name} has {len(column)} values")
        for row, value in zip(params, column, strict=True):
            if parameter.choices and value not in parameter.choices:
                raise ProtocolError(Code.OUT_OF_RANGE, f"param.{name} value not allowed")
            if parameter.kind is not str and not 0 <= value <= 1_000_000:
                raise ProtocolError(Code.OUT_OF_RANGE, f"param.{name} value out of range")
            if value != parameter.unset:
                row[name] = parameter.kind(value)
    if on_request:
        _check_flag(TRAIN_ON_REQUEST_FIELD, flag)
    return SpaceMessage(
        run_key=record["run_key"],
        config_ids=tuple(ids),
        params=tuple(params),
        validation_items=record["validation_items"],
        judge_mode=JUDGE_MODES[record["judge_mode"]],
        train_on_request=bool(flag),
    )


def _check_flag(name: str, value: Any) -> int:
    _check_type(name, value, int)
    if value not in (0, 1):
        raise ProtocolError(Code.OUT_OF_RANGE, f"{name} must be 0 or 1")
    return value


def encode_train(message: TrainMessage) -> dict[str, Any]:
    _check_run_key(message.run_key)
    if len(message.request.configs) > MAX_CONFIGS:
        raise ProtocolError(Code.TOO_LARGE, f"at most {MAX_CONFIGS} configs")
    return {
        "version": PROTOCOL_VERSION,
        "run_key": message.run_key,
        "configs": list(message.request.configs),
    }


def decode_train(record: Mapping[str, Any], n_configs: int | None = None) -> TrainMessage:
    """Decode a train request; with `n_configs`, indices are checked against the space."""
    _check_version(record)
    _check_fields(record, {"version": int, "run_key": str, "configs": [int]})
    _check_run_key(record["run_key"])
    configs = record["configs"]
    if not 1 <= len(configs) <= MAX_CONFIGS:
        raise ProtocolError(Code.TOO_LARGE, f"1 to {MAX_CONFIGS} configs, got {len(configs)}")
    limit = n_configs if n_configs is not None else MAX_CONFIGS
    if max(configs) >= limit:
        raise ProtocolError(Code.OUT_OF_RANGE, "config index out of range")
    # TrainRequest refuses negative, repeated or unordered indices as OUT_OF_RANGE
    return TrainMessage(record["run_key"], TrainRequest(tuple(configs)))


def encode_compare(message: CompareMessage) -> dict[str, Any]:
    return {
        "version": PROTOCOL_VERSION,
        "run_key": message.run_key,
        "a": [c.a for c in message.comparisons],
        "b": [c.b for c in message.comparisons],
        "item_start": [c.item_start for c in message.comparisons],
        "item_stop": [c.item_stop for c in message.comparisons],
        "secure": int(message.secure),
    }


def decode_compare(record: Mapping[str, Any], n_configs: int | None = None) -> CompareMessage:
    """Decode a compare request; with `n_configs`, indices are checked against the space."""
    _check_version(record)
    columns = ("a", "b", "item_start", "item_stop")
    _check_fields(
        record, {"version": int, "run_key": str, "secure": int, **{c: [int] for c in columns}}
    )
    _check_run_key(record["run_key"])
    if record["secure"] not in (0, 1):
        raise ProtocolError(Code.OUT_OF_RANGE, "secure must be 0 or 1")
    count = len(record["a"])
    if any(len(record[c]) != count for c in columns):
        raise ProtocolError(Code.OUT_OF_RANGE, "comparison columns differ in length")
    if not 1 <= count <= MAX_COMPARISONS:
        raise ProtocolError(Code.TOO_LARGE, f"1 to {MAX_COMPARISONS} comparisons, got {count}")
    limit = n_configs if n_configs is not None else MAX_CONFIGS
    comparisons = []
    for a, b, start, stop in zip(*(record[c] for c in columns), strict=True):
        if a >= limit or b >= limit or stop > MAX_ITEMS:
            raise ProtocolError(Code.OUT_OF_RANGE, "config index or item slice out of range")
        # Comparison refuses negative or equal indices and an empty slice, as OUT_OF_RANGE
        comparisons.append(Comparison(a, b, start, stop))
    return CompareMessage(record["run_key"], tuple(comparisons), bool(record["secure"]))


REPLY_FIELDS: dict[str, Any] = {"status": int, "code": int, "progress": int, "tallies": [int]}
POINTWISE_FIELD = "pointwise_judge"


def _check_pointwise(value: Any) -> int:
    _check_type(POINTWISE_FIELD, value, int)
    if value not in (0, 1):
        raise ProtocolError(Code.OUT_OF_RANGE, f"{POINTWISE_FIELD} must be 0 or 1")
    return value


def encode_reply(reply: Reply) -> dict[str, Any]:
    record: dict[str, Any] = {
        "status": int(reply.status),
        "code": int(reply.code),
        "progress": reply.progress,
        "tallies": [value for tally in reply.tallies for value in tally.values()],
    }
    if reply.pointwise_judge is not None:
        if reply.tallies:
            raise ProtocolError(Code.UNKNOWN_FIELD, f"{POINTWISE_FIELD} on a reply with tallies")
        record[POINTWISE_FIELD] = _check_pointwise(reply.pointwise_judge)
    return record


def decode_space_reply(record: Mapping[str, Any]) -> Reply:
    """Decode a site's reply to `space`: no tallies, and the optional capability flag."""
    flag = record.get(POINTWISE_FIELD)
    reply = decode_reply({k: v for k, v in record.items() if k != POINTWISE_FIELD})
    if flag is None:
        return reply
    return Reply(reply.status, reply.code, reply.progress, (), _check_pointwise(flag))


def decode_reply(
    record: Mapping[str, Any], request: CompareMessage | None = None, item_limit: int = MAX_ITEMS
) -> Reply:
    """Decode a site's reply; for a compare request, reject impossible tallies."""
    _check_fields(record, REPLY_FIELDS)
    try:
        status, code = Status(record["status"]), Code(record["code"])
    except ValueError as exc:
        raise ProtocolError(Code.OUT_OF_RANGE, "unknown status or code") from exc
    if not 0 <= record["progress"] <= 1000:
        raise ProtocolError(Code.OUT_OF_RANGE, "progress must be 0-1000 permille")
    answered = request is not None and status == Status.OK and not request.secure
    tallies = check_tallies(record["tallies"], request.comparisons if answered else (), item_limit)
    return Reply(status, code, record["progress"], tallies)


def check_tallies(
    flat: list[int], comparisons: tuple[Comparison, ...], item_limit: int, sites: int = 1
) -> tuple[Tally, ...]:
    """Tallies (one site's, or the sum over `sites`) for these comparisons, or
    `IMPOSSIBLE_TALLY`: a wrong count, a negative value, or more items than the slice holds."""
    if len(flat) != len(comparisons) * len(TALLY_FIELDS):
        raise ProtocolError(
            Code.IMPOSSIBLE_TALLY, f"{len(flat)} tally values for {len(comparisons)}"
        )
    width = len(TALLY_FIELDS)
    tallies = []
    for start, comparison in zip(range(0, len(flat), width), comparisons, strict=True):
        try:
            tally = Tally(*flat[start : start + width])  # refuses negatives and a wrong sum
        except ValueError as exc:
            raise ProtocolError(Code.IMPOSSIBLE_TALLY, f"tally does not add up ({exc})") from None
        span = min(comparison.item_stop, item_limit) - comparison.item_start
        if tally.items > sites * max(span, 0):
            raise ProtocolError(Code.IMPOSSIBLE_TALLY, "more items than the slice holds")
        tallies.append(tally)
    return tuple(tallies)


RESULT_FIELDS: dict[str, Any] = {
    "version": int,
    "run_key": str,
    "best": int,
    "ranking": [int],
    "sites": int,
    "decided": int,
    "tie_breaks": int,
    "best_record": [int],
    "best_tally": [int],
    "baseline": int,
    "versus_baseline": [int],
}


def encode_result(message: ResultMessage) -> dict[str, Any]:
    """The result as a record; checked by the decoder first, so a bad one never leaves."""
    versus, best_tally = message.versus_baseline, message.best_tally
    record = {
        "version": PROTOCOL_VERSION,
        "run_key": message.run_key,
        "best": message.best,
        "ranking": list(message.ranking),
        "sites": message.sites,
        "decided": message.decided,
        "tie_breaks": message.tie_breaks,
        "best_record": list(message.best_record),
        "best_tally": list(best_tally.values()) if best_tally is not None else [],
        "baseline": message.baseline,
        "versus_baseline": list(versus.values()) if versus is not None else [],
    }
    decode_result(record)
    return record


def _tally_field(name: str, values: list[int]) -> Tally:
    if len(values) != len(TALLY_FIELDS):
        raise ProtocolError(Code.IMPOSSIBLE_TALLY, f"{name} needs {len(TALLY_FIELDS)} values")
    try:
        return Tally(*values)
    except ValueError as exc:
        raise ProtocolError(Code.IMPOSSIBLE_TALLY, f"{name} does not add up ({exc})") from None


def decode_result(record: Mapping[str, Any], n_configs: int | None = None) -> ResultMessage:
    """Decode a result; with `n_configs`, every index is checked against the stored space."""
    _check_version(record)
    _check_fields(record, RESULT_FIELDS)
    _check_run_key(record["run_key"])
    limit = n_configs if n_configs is not None else MAX_CONFIGS
    ranking, baseline = record["ranking"], record["baseline"]
    if len(ranking) > limit:
        raise ProtocolError(Code.TOO_LARGE, f"at most {limit} configs in the ranking")
    indices = [record["best"], *ranking] + ([baseline] if baseline != NO_BASELINE else [])
    if any(not 0 <= index < limit for index in indices) or len(set(ranking)) != len(ranking):
        raise ProtocolError(Code.OUT_OF_RANGE, "config index out of range or repeated")
    if not 1 <= record["sites"] <= MAX_SITES:
        raise ProtocolError(Code.OUT_OF_RANGE, "sites out of range")
    counts = (record["decided"], record["tie_breaks"], *record["best_record"])
    if len(record["best_record"]) != 3 or min(counts) < 0:
        raise ProtocolError(Code.OUT_OF_RANGE, "best_record needs 3 counts; no count below 0")
    if sum(record["best_record"]) > record["decided"] + record["tie_breaks"]:
        raise ProtocolError(Code.OUT_OF_RANGE, "best_record holds more comparisons than made")
    versus, best_tally = record["versus_baseline"], record["best_tally"]
    if versus and baseline == NO_BASELINE:
        raise ProtocolError(Code.OUT_OF_RANGE, "versus_baseline without a baseline")
    if (best_tally or versus) and record["sites"] < SUMS_SHARED_FROM_SITES:
        raise ProtocolError(
            Code.OUT_OF_RANGE,
            f"summed counts with {record['sites']} sites: a site could read another's",
        )
    return ResultMessage(
        run_key=record["run_key"],
        best=record["best"],
        ranking=tuple(ranking),
        sites=record["sites"],
        decided=record["decided"],
        tie_breaks=record["tie_breaks"],
        best_record=tuple(record["best_record"]),  # type: ignore[arg-type]
        best_tally=_tally_field("best_tally", best_tally) if best_tally else None,
        baseline=baseline,
        versus_baseline=_tally_field("versus_baseline", versus) if versus else None,
    )
