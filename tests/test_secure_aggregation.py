"""SecAgg+ over the sites' real ClientApp and databases (Flower's grid replaced by an in-process
double): the coordinator gets the exact sum of the tallies, never one site's; a site that fails
while masking drops out of the sum; every stage is in the site's egress ledger."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common import bytes_to_ndarray
from sqlmodel import Session

from agent.config import load_site_config
from agent.db import ComparisonJob, ledger, open_database
from agent.flower_internals import RECORD_KEY_CONFIGS
from agent.flower_internals import SecAggPlusKey as Key
from agent.site import handle_message
from common.protocol import (
    COMPARE_MESSAGE,
    RECORD_KEY,
    SECAGG_CLIP,
    SECAGG_MAX_SITES,
    SPACE_MESSAGE,
    CompareMessage,
    Comparison,
    Status,
    decode_reply,
    encode_compare,
)
from coordinator.secure_sum import aggregation, secure_sum
from tests.doubles import InProcessGrid
from tests.test_agent_site import CONFIGS, space_record, write_site_config

COMPARISONS = (Comparison(0, 1, 0, 6), Comparison(2, 3, 0, 6))
SITE_TALLIES = {  # per site, per comparison: win, tie, loss, invalid, items
    1: [(6, 0, 0, 0, 6), (0, 5, 1, 0, 6)],
    2: [(4, 1, 1, 0, 6), (2, 2, 2, 0, 6)],
    3: [(0, 0, 5, 1, 6), (1, 0, 0, 0, 1)],
}


def _request(secure: bool = True) -> dict:
    return encode_compare(CompareMessage("run-1", COMPARISONS, secure))


@pytest.fixture
def sites(tmp_path: Path, new_database_url) -> dict[int, str]:
    """Three sites that joined run-1 and have judged both comparisons (planted tallies); their
    databases on SQLite, then on PostgreSQL."""
    paths = {}
    for node_id, tallies in SITE_TALLIES.items():
        name = f"site-{node_id}"
        path = write_site_config(
            tmp_path, tmp_path, name=name, seed=node_id, database=new_database_url(name)
        )
        engine = open_database(load_site_config(path).database_url)
        assert handle_message(engine, SPACE_MESSAGE, space_record())["status"] == Status.OK
        with Session(engine) as session:
            for comparison, tally in zip(COMPARISONS, tallies, strict=True):
                win, tie, loss, invalid, items = tally
                session.add(
                    ComparisonJob(
                        run_key="run-1",
                        a_id=CONFIGS[comparison.a].id,
                        b_id=CONFIGS[comparison.b].id,
                        item_start=0,
                        item_stop=6,
                        status="done",
                        win=win,
                        tie=tie,
                        loss=loss,
                        invalid=invalid,
                        items=items,
                    )
                )
            session.commit()
        paths[node_id] = str(path)
    return paths


def _flat(node_id: int) -> list[int]:
    return [v for tally in SITE_TALLIES[node_id] for v in tally]


def _ask_compare(grid: InProcessGrid) -> list[dict]:
    """The round before SecAgg+: each site says it is ready (a secure request gets no tallies)."""
    messages = [
        Message(
            RecordDict({RECORD_KEY: ConfigRecord(_request())}),
            dst_node_id=node_id,
            message_type=COMPARE_MESSAGE,
        )
        for node_id in grid.get_node_ids()
    ]
    return [dict(reply.content[RECORD_KEY]) for reply in grid.send_and_receive(messages)]


def test_the_coordinator_gets_the_exact_sum_and_no_site_tally(sites: dict[int, str]) -> None:
    grid = InProcessGrid(sites)
    for reply in _ask_compare(grid):
        assert (reply["status"], reply["tallies"]) == (Status.OK, [])
    result = secure_sum(grid, _request(), [1, 2, 3], round_number=1, timeout=10)
    assert result is not None and result.contributors == [1, 2, 3]
    assert result.values == list(np.sum([_flat(n) for n in (1, 2, 3)], axis=0))

    masked_stage = [
        reply
        for reply in grid.received
        if Key.MASKED_PARAMETERS in reply.content.config_records.get(RECORD_KEY_CONFIGS, {})
    ]
    assert len(masked_stage) == 3
    for reply in grid.received:  # no error text, no clear array, no metrics, weight 1
        assert not reply.has_error()
        assert all(len(record) == 0 for record in reply.content.array_records.values())
    for reply in masked_stage:
        assert dict(reply.content.config_records["fitres.metrics"]) == {}
        assert dict(reply.content.metric_records["fitres.num_examples"]) == {"num_examples": 1}
        node_id = reply.metadata.src_node_id
        _weight, masked = (
            bytes_to_ndarray(b)
            for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
        )
        plain = np.array(_flat(node_id))
        # what arrived is neither the tallies nor their quantized form
        assert masked.shape == plain.shape
        assert not np.array_equal(masked, plain)
        assert not np.array_equal(masked, plain + SECAGG_CLIP)
        site_ledger = ledger(open_database(_url(sites[node_id])))
        entries = [e for e in site_ledger if e.message_type.startswith("secagg.")]
        assert [e.message_type for e in entries] == [
            "secagg.setup",
            "secagg.share_keys",
            "secagg.collect_masked_vectors",
            "secagg.unmask",
        ]
        assert all(e.run_key == "run-1" for e in entries)
        sent = json.loads(entries[2].content)[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
        arrived = reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
        assert sent == [b.hex() for b in arrived]


def _url(config_path: str) -> str:
    return load_site_config(Path(config_path)).database_url


def test_a_site_failing_while_masking_drops_out_of_the_sum(sites: dict[int, str]) -> None:
    with Session(open_database(_url(sites[3]))) as session:
        for job in session.query(ComparisonJob).all():
            job.status = "pending"  # not judged: the site cannot give its tallies
        session.commit()
    grid = InProcessGrid(sites)
    result = secure_sum(grid, _request(), [1, 2, 3], round_number=1, timeout=10)
    assert result is not None and result.contributors == [1, 2]
    assert result.values == list(np.sum([_flat(n) for n in (1, 2)], axis=0))
    refused = [
        e for e in ledger(open_database(_url(sites[3])))
        if e.message_type == "secagg.collect_masked_vectors"
    ]  # fmt: skip
    assert json.loads(refused[0].content) == {"error": "secure aggregation refused: code 21"}


def test_the_protocol_halts_when_too_few_sites_take_part(sites: dict[int, str]) -> None:
    grid = InProcessGrid(sites, failing=frozenset({2, 3}))
    assert secure_sum(grid, _request(), [1, 2, 3], round_number=1, timeout=10) is None


def test_a_secure_compare_is_answered_without_tallies(sites: dict[int, str]) -> None:
    engine = open_database(_url(sites[1]))
    secure = handle_message(engine, COMPARE_MESSAGE, _request(secure=True))
    assert secure["status"] == Status.OK and secure["tallies"] == []
    decode_reply(secure, CompareMessage("run-1", COMPARISONS, True))
    clear = handle_message(engine, COMPARE_MESSAGE, _request(secure=False))
    assert clear["tallies"] == _flat(1)


def test_tallies_are_sent_masked_only_for_a_secure_request(sites: dict[int, str]) -> None:
    grid = InProcessGrid(sites)
    assert secure_sum(grid, _request(secure=False), [1, 2, 3], 1, timeout=10) is None


def test_a_malformed_secure_aggregation_message_is_refused_with_a_code(
    sites: dict[int, str],
) -> None:
    grid = InProcessGrid(sites)
    junk = Message(
        RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({"stage": "unmask", "x": 1})}),
        dst_node_id=1,
        message_type="train",
    )
    (reply,) = grid.send_and_receive([junk])
    assert reply.has_error() and reply.error.reason == "secure aggregation refused: code 39"
    entries = ledger(open_database(_url(sites[1])))
    assert json.loads(entries[-1].content) == {"error": "secure aggregation refused: code 39"}
    # the site still answers the protocol afterwards
    assert _ask_compare(grid)[0]["status"] == Status.OK


@pytest.mark.parametrize(
    ("setting", "sites", "secure"),
    [
        ("off", 3, False),
        ("required", 3, True),
        ("when-possible", 3, True),
        ("when-possible", 2, False),
        ("when-possible", SECAGG_MAX_SITES + 1, False),
        ("required", 2, None),
        ("required", SECAGG_MAX_SITES + 1, None),
    ],
)
def test_the_aggregation_follows_the_setting_and_the_number_of_sites(
    setting: str, sites: int, secure: bool | None
) -> None:
    """SecAgg+ needs 3 to SECAGG_MAX_SITES sites; `required` stops rather than send in the clear."""
    if secure is None:
        with pytest.raises(RuntimeError, match="stopped before any tally"):
            aggregation(setting, sites)
        return
    decision, uses_secagg = aggregation(setting, sites)
    assert uses_secagg is secure
    assert decision.startswith("SecAgg+" if secure else "tallies in the clear")
