"""The wire protocol: round trips, strict validation, impossible tallies, fuzzed messages."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.protocol import (
    MAX_COMPARISONS,
    NO_BASELINE,
    Code,
    CompareMessage,
    Comparison,
    ProtocolError,
    Reply,
    ResultMessage,
    SpaceMessage,
    Status,
    TrainMessage,
    TrainRequest,
    decode_compare,
    decode_reply,
    decode_result,
    decode_space,
    decode_space_reply,
    decode_train,
    encode_compare,
    encode_reply,
    encode_result,
    encode_space,
    encode_train,
)
from common.space import CandidateConfig
from common.tally import Tally

CONFIGS = [
    CandidateConfig.from_params(
        {"optimizer": o, "learning_rate": lr, "scheduler": "cosine", "epochs": 2}
    )
    for o in ("sgd", "adamw")
    for lr in (2e-5, 2e-4)
]
LORA = CandidateConfig.from_params(
    {
        "optimizer": "adamw",
        "learning_rate": 1e-4,
        "scheduler": "linear",
        "epochs": 1,
        "finetune": "lora",
        "lora_rank": 16,
        "data_fraction": 0.5,
    }
)


def _space(configs=(*CONFIGS, LORA)) -> SpaceMessage:
    return SpaceMessage(
        run_key="run-1",
        config_ids=tuple(c.id for c in configs),
        params=tuple(dict(c.params) for c in configs),
        validation_items=16,
        judge_mode="score",
    )


def test_space_round_trip_keeps_ids_and_parameters() -> None:
    decoded = decode_space(encode_space(_space()))
    assert decoded == _space()
    for config_id, params in zip(decoded.config_ids, decoded.params, strict=True):
        assert CandidateConfig.from_params(params).id == config_id


def test_compare_and_reply_round_trip() -> None:
    message = CompareMessage("run-1", (Comparison(0, 1), Comparison(2, 3, 8, 16)))
    assert decode_compare(encode_compare(message), n_configs=4) == message
    reply = Reply(Status.OK, tallies=(Tally(3, 1, 4, 0, 8), Tally(1, 0, 0, 1, 2)))
    assert decode_reply(encode_reply(reply), message, item_limit=16) == reply


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda r: r.update(extra=1), Code.UNKNOWN_FIELD),
        (lambda r: r.pop("run_key"), Code.MISSING_FIELD),
        (lambda r: r.update(a=["0"]), Code.WRONG_TYPE),
        (lambda r: r.update(a=[True]), Code.WRONG_TYPE),
        (lambda r: r.update(a=[9]), Code.OUT_OF_RANGE),
        (lambda r: r.update(a=[1], b=[1]), Code.OUT_OF_RANGE),
        (lambda r: r.update(item_start=[5], item_stop=[5]), Code.OUT_OF_RANGE),
        (lambda r: r.update(run_key="Robert'); DROP"), Code.OUT_OF_RANGE),
        (lambda r: r.update(version=2), Code.UNSUPPORTED_VERSION),
        (
            lambda r: r.update(
                a=[0] * (MAX_COMPARISONS + 1),
                b=[1] * (MAX_COMPARISONS + 1),
                item_start=[0] * (MAX_COMPARISONS + 1),
                item_stop=[8] * (MAX_COMPARISONS + 1),
            ),
            Code.TOO_LARGE,
        ),
        (lambda r: r.update(secure=2), Code.OUT_OF_RANGE),
        (lambda r: r.pop("secure"), Code.MISSING_FIELD),
    ],
)
def test_bad_compare_requests_are_refused_with_a_code(change, code: Code) -> None:
    record = encode_compare(CompareMessage("run-1", (Comparison(0, 1, 0, 8),)))
    change(record)
    with pytest.raises(ProtocolError) as raised:
        decode_compare(record, n_configs=4)
    assert raised.value.code == code


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda r: r["param.optimizer"].__setitem__(0, "lion"), Code.OUT_OF_RANGE),
        (lambda r: r["config_ids"].__setitem__(0, "not-an-id"), Code.OUT_OF_RANGE),
        (lambda r: r["param.epochs"].pop(), Code.OUT_OF_RANGE),
        (lambda r: r.update(judge_mode=7), Code.OUT_OF_RANGE),
        (lambda r: r.update({"param.secret": ["x"]}), Code.UNKNOWN_FIELD),
    ],
)
def test_bad_spaces_are_refused(change, code: Code) -> None:
    record = encode_space(_space())
    change(record)
    with pytest.raises(ProtocolError) as raised:
        decode_space(record)
    assert raised.value.code == code


@pytest.mark.parametrize(
    "tallies",
    [
        [1, 1, 1, 0, 4],  # does not add up
        [-1, 2, 0, 0, 1],  # negative
        [9, 0, 0, 0, 9],  # more items than the slice holds
        [1, 0, 0, 0, 1, 0, 0, 0, 0, 0],  # wrong number of comparisons
    ],
)
def test_impossible_tallies_are_rejected(tallies: list[int]) -> None:
    request = CompareMessage("run-1", (Comparison(0, 1, 0, 8),))
    record = {"status": 0, "code": 0, "progress": 1000, "tallies": tallies}
    with pytest.raises(ProtocolError) as raised:
        decode_reply(record, request, item_limit=16)
    assert raised.value.code == Code.IMPOSSIBLE_TALLY


wire_values = st.one_of(
    st.integers(-(2**40), 2**40),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.lists(st.one_of(st.integers(-5, 600), st.text(max_size=5), st.floats()), max_size=6),
)
wire_records = st.dictionaries(
    st.sampled_from(
        [
            "version",
            "run_key",
            "a",
            "b",
            "item_start",
            "item_stop",
            "config_ids",
            "validation_items",
            "judge_mode",
            "train_on_request",
            "configs",
            "param.optimizer",
            "param.epochs",
            "status",
            "code",
            "progress",
            "tallies",
            "pointwise_judge",
            "best",
            "ranking",
            "sites",
            "baseline",
            "best_tally",
            "versus_baseline",
            "other",
        ]
    ),
    wire_values,
)


# no deadline: on a busy 2-core machine one example can take longer than 200 ms without a bug
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire_records)
def test_decoders_never_fail_other_than_with_a_protocol_error(record: dict) -> None:
    request = CompareMessage("run-1", (Comparison(0, 1, 0, 8),))
    for decode in (
        lambda r: decode_compare(r, n_configs=4),
        decode_space,
        decode_space_reply,
        lambda r: decode_reply(r, request),
        lambda r: decode_train(r, n_configs=4),
        lambda r: decode_result(r, n_configs=4),
    ):
        try:
            decode(record)
        except ProtocolError as exc:
            assert isinstance(exc.code, Code)


def test_the_pointwise_judge_flag_travels_on_the_space_reply_only() -> None:
    for flag in (0, 1):
        record = encode_reply(Reply(Status.OK, pointwise_judge=flag))
        assert record["pointwise_judge"] == flag
        assert decode_space_reply(record).pointwise_judge == flag
    plain = encode_reply(Reply(Status.OK))
    assert "pointwise_judge" not in plain and decode_space_reply(plain).pointwise_judge is None
    refused = encode_reply(Reply(Status.REFUSED, Code.SPACE_CHANGED))
    assert decode_space_reply(refused).code == Code.SPACE_CHANGED


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (2, Code.OUT_OF_RANGE),
        (-1, Code.OUT_OF_RANGE),
        (True, Code.WRONG_TYPE),
        ("1", Code.WRONG_TYPE),
        (1.0, Code.WRONG_TYPE),
        ([1], Code.WRONG_TYPE),
    ],
)
def test_a_malformed_pointwise_judge_flag_is_refused_both_ways(value: object, code: Code) -> None:
    with pytest.raises(ProtocolError) as raised:
        encode_reply(Reply(Status.OK, pointwise_judge=value))  # type: ignore[arg-type]
    assert raised.value.code == code
    record = {**encode_reply(Reply(Status.OK)), "pointwise_judge": value}
    with pytest.raises(ProtocolError) as raised:
        decode_space_reply(record)
    assert raised.value.code == code


def test_the_pointwise_judge_flag_is_refused_on_a_compare_reply() -> None:
    request = CompareMessage("run-1", (Comparison(0, 1, 0, 8),))
    record = {
        **encode_reply(Reply(Status.OK, tallies=(Tally(8, 0, 0, 0, 8),))),
        "pointwise_judge": 1,
    }
    with pytest.raises(ProtocolError) as raised:
        decode_reply(record, request)
    assert raised.value.code == Code.UNKNOWN_FIELD
    with pytest.raises(ProtocolError) as raised:
        encode_reply(Reply(Status.OK, tallies=(Tally(8, 0, 0, 0, 8),), pointwise_judge=1))
    assert raised.value.code == Code.UNKNOWN_FIELD


def test_a_secure_request_is_answered_without_tallies() -> None:
    request = CompareMessage("run-1", (Comparison(0, 1, 0, 8),), secure=True)
    assert decode_compare(encode_compare(request)).secure
    ready = encode_reply(Reply(Status.OK))
    assert decode_reply(ready, request).tallies == ()
    leaked = encode_reply(Reply(Status.OK, tallies=(Tally(8, 0, 0, 0, 8),)))
    with pytest.raises(ProtocolError) as raised:
        decode_reply(leaked, request)
    assert raised.value.code == Code.IMPOSSIBLE_TALLY


def test_train_on_request_travels_on_the_space_only_when_set() -> None:
    plain = encode_space(_space())
    assert "train_on_request" not in plain and not decode_space(plain).train_on_request
    flagged = SpaceMessage(**{**_space().__dict__, "train_on_request": True})
    record = encode_space(flagged)
    assert record["train_on_request"] == 1 and decode_space(record) == flagged
    for value, code in ((2, Code.OUT_OF_RANGE), (True, Code.WRONG_TYPE), ("1", Code.WRONG_TYPE)):
        with pytest.raises(ProtocolError) as raised:
            decode_space({**plain, "train_on_request": value})
        assert raised.value.code == code


def test_train_request_round_trip() -> None:
    message = TrainMessage("run-1", TrainRequest((0, 2, 3)))
    record = encode_train(message)
    assert record == {"version": 1, "run_key": "run-1", "configs": [0, 2, 3]}
    assert decode_train(record, n_configs=4) == message
    assert decode_reply(encode_reply(Reply(Status.PENDING, progress=333))).progress == 333


RESULT = ResultMessage(
    run_key="run-1",
    best=2,
    ranking=(2, 0, 1, 3),
    sites=3,
    decided=4,
    tie_breaks=1,
    best_record=(3, 0, 0),
    best_tally=Tally(30, 4, 2, 0, 36),
    baseline=0,
    versus_baseline=Tally(9, 2, 1, 0, 12),
)


def test_result_round_trip_with_and_without_a_baseline() -> None:
    record = encode_result(RESULT)
    assert set(record) == {
        "version", "run_key", "best", "ranking", "sites", "decided", "tie_breaks",
        "best_record", "best_tally", "baseline", "versus_baseline",
    }  # fmt: skip
    values = [v for k, v in record.items() if k != "run_key"]
    flat = [x for v in values for x in (v if isinstance(v, list) else [v])]
    assert all(type(x) is int for x in flat)
    assert decode_result(record, n_configs=4) == RESULT
    plain = ResultMessage("run-1", 1, (), 1, 0, 0, (0, 0, 0), None)
    record = encode_result(plain)
    assert record["baseline"] == NO_BASELINE and record["versus_baseline"] == []
    assert record["best_tally"] == [] and decode_result(record, n_configs=2) == plain
    assert plain.sums_withheld and not RESULT.sums_withheld


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda r: r.update(extra=1), Code.UNKNOWN_FIELD),
        (lambda r: r.pop("configs"), Code.MISSING_FIELD),
        (lambda r: r.update(configs=["0"]), Code.WRONG_TYPE),
        (lambda r: r.update(configs=[True]), Code.WRONG_TYPE),
        (lambda r: r.update(configs=[4]), Code.OUT_OF_RANGE),
        (lambda r: r.update(configs=[-1, 0]), Code.OUT_OF_RANGE),
        (lambda r: r.update(configs=[1, 1]), Code.OUT_OF_RANGE),
        (lambda r: r.update(configs=[2, 1]), Code.OUT_OF_RANGE),
        (lambda r: r.update(configs=[]), Code.TOO_LARGE),
        (lambda r: r.update(run_key="Robert'); DROP"), Code.OUT_OF_RANGE),
        (lambda r: r.update(version=2), Code.UNSUPPORTED_VERSION),
    ],
)
def test_bad_train_requests_are_refused_with_a_code(change, code: Code) -> None:
    record = encode_train(TrainMessage("run-1", TrainRequest((0, 1))))
    change(record)
    with pytest.raises(ProtocolError) as raised:
        decode_train(record, n_configs=4)
    assert raised.value.code == code


def test_a_bad_train_request_is_refused_when_encoded_too() -> None:
    for configs in ((), (1, 0), (0, 0), (-1,)):
        with pytest.raises(ProtocolError):
            TrainRequest(configs)
    with pytest.raises(ProtocolError) as raised:
        encode_train(TrainMessage("Bad Key", TrainRequest((0,))))
    assert raised.value.code == Code.OUT_OF_RANGE


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda r: r.update(extra=1), Code.UNKNOWN_FIELD),
        (lambda r: r.pop("best"), Code.MISSING_FIELD),
        (lambda r: r.update(best="2"), Code.WRONG_TYPE),
        (lambda r: r.update(best=True), Code.WRONG_TYPE),
        (lambda r: r.update(ranking=[2, 0.5]), Code.WRONG_TYPE),
        (lambda r: r.update(version=2), Code.UNSUPPORTED_VERSION),
        (lambda r: r.update(best=4), Code.OUT_OF_RANGE),  # the space holds 4 configs
        (lambda r: r.update(best=-1), Code.OUT_OF_RANGE),
        (lambda r: r.update(ranking=[2, 2]), Code.OUT_OF_RANGE),
        (lambda r: r.update(ranking=[0, 1, 2, 3, 0]), Code.TOO_LARGE),
        (lambda r: r.update(baseline=7), Code.OUT_OF_RANGE),
        (lambda r: r.update(baseline=-2), Code.OUT_OF_RANGE),
        (lambda r: r.update(sites=0), Code.OUT_OF_RANGE),
        (lambda r: r.update(decided=-1), Code.OUT_OF_RANGE),
        (lambda r: r.update(best_record=[3, 0]), Code.OUT_OF_RANGE),
        (lambda r: r.update(best_record=[9, 0, 0]), Code.OUT_OF_RANGE),
        (lambda r: r.update(best_tally=[30, 4, 2, 0, 99]), Code.IMPOSSIBLE_TALLY),
        (lambda r: r.update(best_tally=[1, 0, 0, 0]), Code.IMPOSSIBLE_TALLY),
        (lambda r: r.update(versus_baseline=[-1, 1, 0, 0, 0]), Code.IMPOSSIBLE_TALLY),
        (lambda r: r.update(baseline=NO_BASELINE), Code.OUT_OF_RANGE),  # a tally, no baseline
        (lambda r: r.update(run_key="../etc"), Code.OUT_OF_RANGE),
        (lambda r: r.update(sites=2), Code.OUT_OF_RANGE),  # a site could read the other's
        (lambda r: r.update(sites=2, best_tally=[]), Code.OUT_OF_RANGE),  # versus_baseline
    ],
)
def test_bad_results_are_refused_with_a_code(change, code: Code) -> None:
    record = encode_result(RESULT)
    change(record)
    with pytest.raises(ProtocolError) as raised:
        decode_result(record, n_configs=4)
    assert raised.value.code == code


def test_a_result_that_breaks_the_protocol_is_not_encoded() -> None:
    forged = ResultMessage("run-1", 1, (1, 1), 1, 0, 0, (0, 0, 0), Tally())
    with pytest.raises(ProtocolError) as raised:
        encode_result(forged)
    assert raised.value.code == Code.OUT_OF_RANGE
