"""The site's Flower ClientApp: a thin shim over the installed agent.

It answers every message type itself (an unknown one is refused with a code rather than
Flower's error text), reads and writes only the agent's database, and returns integers only.
`train` messages are the SecAgg+ stages: Flower's `secaggplus_mod` runs the protocol and masks
the tallies this site holds for the coordinator's compare request, so only their sum over the
sites can be recovered. Every reply is written to the egress ledger before it leaves.
The SuperNode passes the site config's path as node config `site-config`.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code as FlowerCode
from flwr.common import FitRes, ndarrays_to_parameters
from flwr.common import Status as FlowerStatus
from sqlalchemy import Engine

from agent.config import load_site_config
from agent.db import open_database, record_egress
from agent.flower_internals import RECORD_KEY_CONFIGS, SecAggPlusKey, fitres_to_recorddict
from agent.site import handle_message, secure_tallies
from common.protocol import (
    RECORD_KEY,
    SECAGG_CLIP,
    Code,
    ProtocolError,
    Reply,
    Status,
    encode_reply,
)
from judge.backends import BACKENDS, check_spec_form

log = logging.getLogger(__name__)
FIT_CONFIG = "fitins.config"
RUN_KEY_STATE = "pandalm.run"
"""Node state (kept by Flower per run) naming the run key, for SecAgg+ stages without one."""


@cache
def _site_engine(config_path: str) -> Engine:
    return open_database(load_site_config(Path(config_path)).database_url)


@cache
def _pointwise_judge(config_path: str) -> bool:
    """Whether the site's judge spec names a pointwise judge; read from the spec's form, not
    loaded: a judge model missing is the worker's to report (BAD_JUDGE, with its path in
    `pandalm-agent status`), not a failure to answer the space."""
    kind, _location, _options = check_spec_form(load_site_config(Path(config_path)).judge.spec)
    return BACKENDS[kind].pointwise


def _remember_run_key(context: Context, record: dict[str, Any]) -> str:
    if isinstance(record.get("run_key"), str):
        context.state.config_records[RUN_KEY_STATE] = ConfigRecord({"run_key": record["run_key"]})
    remembered = context.state.config_records.get(RUN_KEY_STATE)
    return str(remembered["run_key"]) if remembered else ""


def answer(message: Message, context: Context) -> Message:
    """The reply to any coordinator message, built from the local database."""
    if message.metadata.message_type == MessageType.TRAIN:
        return answer_secure_aggregation(message, context)
    try:
        config_path = str(context.node_config["site-config"])
        content = message.content
        record = dict(content[RECORD_KEY]) if RECORD_KEY in content.config_records else {}
        _remember_run_key(context, record)
        payload = handle_message(
            _site_engine(config_path),
            message.metadata.message_type,
            record,
            pointwise_judge=_pointwise_judge(config_path),
        )
    except Exception:
        log.exception("cannot answer %s", message.metadata.message_type)
        payload = encode_reply(Reply(Status.FAILED, Code.INTERNAL_ERROR))
    return Message(RecordDict({RECORD_KEY: ConfigRecord(payload)}), reply_to=message)


def _masked_tallies(message: Message, context: Context) -> Message:
    """The innermost step of the SecAgg+ stage that collects masked vectors: this site's tallies
    as the one array the mod quantizes and masks (weight 1, no metrics)."""
    engine = _site_engine(str(context.node_config["site-config"]))
    request = dict(message.content.config_records[FIT_CONFIG])
    tallies = secure_tallies(engine, request)
    if any(abs(value) > SECAGG_CLIP for value in tallies):
        raise ProtocolError(Code.OUT_OF_RANGE, "a tally is beyond the secure aggregation range")
    vector = ndarrays_to_parameters([np.asarray(tallies, dtype=np.float64)])
    fit_result = FitRes(FlowerStatus(FlowerCode.OK, ""), vector, 1, {})
    return Message(fitres_to_recorddict(fit_result, keep_input=True), reply_to=message)


def _ledger_content(reply: Message) -> dict[str, Any]:
    """What a SecAgg+ reply carries, record by record, bytes as hex."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.hex()
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return {
        name: {key: plain(value) for key, value in record.items()}
        for name, record in reply.content.items()
    }


def answer_secure_aggregation(message: Message, context: Context) -> Message:
    """One SecAgg+ stage. A failure (say, tallies not judged yet) drops this site from the sum;
    Flower then sends back the exception's type and this fixed text, nothing of the data."""
    engine = _site_engine(str(context.node_config["site-config"]))
    run_key = _remember_run_key(context, {})
    configs = message.content.config_records.get(RECORD_KEY_CONFIGS, {})
    stage = configs.get(SecAggPlusKey.STAGE, "unknown")
    try:
        reply = secaggplus_mod(message, context, _masked_tallies)
    except Exception as exc:
        code = exc.code if isinstance(exc, ProtocolError) else Code.INTERNAL_ERROR
        log.warning("secure aggregation stage %s refused: %r", stage, exc)
        error = f"secure aggregation refused: code {int(code)}"
        record_egress(engine, run_key, f"secagg.{stage}", {"error": error})
        raise RuntimeError(error) from None
    record_egress(engine, run_key, f"secagg.{stage}", _ledger_content(reply))
    return reply


class SiteClientApp(ClientApp):
    """A ClientApp whose one handler answers every message type."""

    def __call__(self, message: Message, context: Context) -> Message:
        return answer(message, context)


app = SiteClientApp()
