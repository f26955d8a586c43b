"""The coordinator's Flower ServerApp: runs the federated selection over the connected sites.

Its settings come from the run config (`pandalm-coordinator start` fills them from
federation.toml). It talks to sites through Flower's Grid and keeps its state in the
coordinator database, so a restarted run resumes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from common.protocol import RECORD_KEY
from common.settings import RunConfig
from common.space import load_space
from coordinator.db import open_database
from coordinator.federation import FederatedSelection
from coordinator.secure_sum import SecureSum, secure_sum
from coordinator.selection import describe_mode

log = logging.getLogger(__name__)
app = ServerApp()
POLL_SECONDS = 0.2


def _bytes_as_hex(value: object) -> str:
    return value.hex() if isinstance(value, bytes) else repr(value)


def _wire_content(reply: Message) -> dict:
    """Everything a reply carried, record by record, as the coordinator received it."""
    if reply.has_error():
        return {"error": {"code": reply.error.code, "reason": reply.error.reason}}
    return {
        name: {"type": type(record).__name__, "fields": dict(record)}
        for name, record in reply.content.items()
    }


class GridTransport:
    """Pushes messages and polls for the replies every POLL_SECONDS (Flower's own
    send_and_receive waits 3 s between pulls), for the protocol's queries and for the SecAgg+
    stages alike.

    With `wire_log`, every reply is appended to that JSONL file exactly as it arrived, so an
    operator (or a test) can check what the sites sent.
    """

    def __init__(self, grid: Grid, wire_log: Path | None = None) -> None:
        self.grid = grid
        self.wire_log = wire_log

    def node_ids(self) -> list[int]:
        return sorted(self.grid.get_node_ids())

    def send_and_receive(
        self, messages: list[Message], *, timeout: float | None = None
    ) -> list[Message]:
        ids = list(self.grid.push_messages(messages))
        node_of = {i: m.metadata.dst_node_id for i, m in zip(ids, messages, strict=True)}
        type_of = {i: m.metadata.message_type for i, m in zip(ids, messages, strict=True)}
        replies: list[Message] = []
        waiting = set(ids)
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        while waiting and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(waiting):
                message_id = reply.metadata.reply_to_message_id
                waiting.discard(message_id)
                self._log_wire(node_of[message_id], type_of[message_id], reply)
                replies.append(reply)
            if waiting:
                time.sleep(POLL_SECONDS)
        return replies

    def exchange(
        self, message_type: str, records: Mapping[int, dict], timeout: float
    ) -> dict[int, dict | None]:
        messages = [
            Message(
                RecordDict({RECORD_KEY: ConfigRecord(record)}),
                dst_node_id=node_id,
                message_type=message_type,
            )
            for node_id, record in records.items()
        ]
        replies: dict[int, dict | None] = dict.fromkeys(records)
        for reply in self.send_and_receive(messages, timeout=timeout):
            node_id = reply.metadata.src_node_id
            if reply.has_error() or RECORD_KEY not in reply.content.config_records:
                log.warning("site %s answered with an error", node_id)
                continue
            replies[node_id] = dict(reply.content[RECORD_KEY])
        return replies

    def secure_sum(
        self, request: Mapping[str, object], node_ids: list[int], round_number: int, timeout: float
    ) -> SecureSum | None:
        return secure_sum(self, request, node_ids, round_number, timeout)

    def _log_wire(self, node_id: int, message_type: str, reply: Message) -> None:
        if self.wire_log is None:
            return
        entry = {"node": node_id, "message_type": message_type, "content": _wire_content(reply)}
        with self.wire_log.open("a", encoding="utf-8") as sink:
            sink.write(json.dumps(entry, default=_bytes_as_hex) + "\n")


@app.main()
def main(grid: Grid, context: Context) -> None:
    run = RunConfig.from_flower_config(context.run_config)
    space = load_space(Path(run.space) if run.space else None)
    engine = open_database(run.database)
    selection = FederatedSelection(
        engine,
        GridTransport(grid, Path(run.wire_log) if run.wire_log else None),
        run.settings,
        [c.id for c in space.configs],
        [dict(c.params) for c in space.configs],
        baseline=space.index_of(run.settings.baseline) if run.settings.baseline else None,
    )
    outcome = selection.run()
    best = space.configs[outcome.best_index] if outcome.best_index is not None else None
    print(
        json.dumps(
            {
                "run": run.settings.run_key,
                "selection": describe_mode(run.settings.selection_mode, selection.selection_mode),
                "best_config": best.to_json() if best else None,
                "sites": outcome.sites,
                "left_out": outcome.left_out,
                "judgments": outcome.judgments,
                "aggregation": outcome.aggregation,
            }
        ),
        flush=True,
    )
