"""Telling the sites the run's outcome (`query.result`) once the selection is done.

The message carries config indices and integers only: the chosen config, the standings, how many
sites took part and the evidence for the choice (computed by results.py, as the console and the
report show it), plus the chosen config's tally against the run's baseline where there is one.
Every site of the run gets it, left-out ones included, and it is sent again to those that have not
acknowledged it (offline, or not answering) until all have or `result_timeout` passed. Each
acknowledgement is recorded on the site's row, so a restarted coordinator sends it only to sites
still without it, and a run whose sites all acknowledged sends nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Protocol

from common.protocol import (
    NO_BASELINE,
    RESULT_MESSAGE,
    SUMS_SHARED_FROM_SITES,
    ProtocolError,
    ResultMessage,
    Status,
    decode_reply,
    encode_result,
)
from common.settings import RunSettings
from common.tally import Tally
from coordinator.results import RunResult, config_records, decided_by, pair_tallies, run_result
from coordinator.run_store import RunStore
from dbschema.columns import utc_now

log = logging.getLogger(__name__)


class ResultTransport(Protocol):
    """What announcing needs of federation.py's Transport."""

    def node_ids(self) -> list[int]: ...

    def exchange(
        self, message_type: str, records: Mapping[int, dict], timeout: float
    ) -> dict[int, dict | None]: ...


def announce_run(
    store: RunStore,
    transport: ResultTransport,
    settings: RunSettings,
    ranking: list[int],
    sites: int,
    baseline: int | None = None,
    versus_baseline: Tally | None = None,
) -> dict[int, bool]:
    """Send a finished run's result (read from the database) to its sites; per site, whether
    it has acknowledged. A run without a chosen config sends nothing."""
    result = run_result(store.engine, store.run_key)
    if result.best is None:
        return {}
    message = result_message(result, ranking, sites, baseline, versus_baseline)
    return announce_result(store, transport, settings, message)


def result_message(
    result: RunResult,
    ranking: list[int],
    sites: int,
    baseline: int | None = None,
    versus_baseline: Tally | None = None,
) -> ResultMessage:
    """The outcome of a finished run as the sites learn it; `versus_baseline` is the chosen
    config's summed tally against `baseline`, from its point of view. Summed item counts go
    out only from SUMS_SHARED_FROM_SITES sites up: with two, each could subtract its own."""
    if result.best is None:
        raise ValueError(f"run {result.run_key!r} has no chosen config")
    pairs = pair_tallies(result)
    evidence = sum(decided_by(tally) == "evidence" for tally in pairs.values())
    best_tally = Tally()
    for (a, b), tally in pairs.items():
        if result.best in (a, b):
            best_tally += tally if a == result.best else tally.reversed()
    shared = sites >= SUMS_SHARED_FROM_SITES
    record = config_records(result)[result.best]
    return ResultMessage(
        run_key=result.run_key,
        best=result.best,
        ranking=tuple(ranking),
        sites=max(sites, 1),
        decided=evidence,
        tie_breaks=len(pairs) - evidence,
        best_record=(record.wins, record.ties, record.losses),
        best_tally=best_tally if shared else None,
        baseline=NO_BASELINE if baseline is None else baseline,
        versus_baseline=versus_baseline if shared else None,
    )


def announce_result(
    store: RunStore, transport: ResultTransport, settings: RunSettings, message: ResultMessage
) -> dict[int, bool]:
    """Send the result to every site of the run that has not acknowledged it, again each
    `retry_seconds` (doubling up to `max_retry_seconds`) until all have or `result_timeout`
    passed (no round starts after it; one started before runs its `round_timeout`); per site,
    whether it has acknowledged. A site that refuses it is not asked again in this call."""
    record = encode_result(message)
    waiting = {int(s.node_id) for s in store.sites() if s.result_acknowledged is None}
    deadline = time.monotonic() + settings.result_timeout
    pause = settings.retry_seconds
    refused: set[int] = set()
    while waiting - refused:
        reachable = sorted((waiting - refused) & set(transport.node_ids()))
        if reachable:  # a round started in time gets its round_timeout, as every round does
            records = dict.fromkeys(reachable, record)
            replies = transport.exchange(RESULT_MESSAGE, records, settings.round_timeout)
            for node_id, reply in replies.items():
                status = _reply_status(node_id, reply)
                if status == Status.OK:
                    store.update_site(node_id, result_acknowledged=utc_now())
                    waiting.discard(node_id)
                elif status is not None:
                    refused.add(node_id)
        remaining = deadline - time.monotonic()
        if not waiting - refused or remaining <= 0:
            break
        time.sleep(min(pause, remaining))
        pause = min(2 * pause, settings.max_retry_seconds)
    if waiting:
        log.warning("result of run %s not acknowledged by sites %s", message.run_key, waiting)
    return {int(s.node_id): s.result_acknowledged is not None for s in store.sites()}


def _reply_status(node_id: int, record: dict | None) -> Status | None:
    """The status of a site's reply to the result; None for no reply or a malformed one."""
    if record is None:
        return None
    try:
        reply = decode_reply(record)
    except ProtocolError as exc:
        log.warning("site %s: reply to the result rejected: %s", node_id, exc.code.name)
        return None
    if reply.status != Status.OK:
        log.warning("site %s refused the result: %s", node_id, reply.code.name)
    return reply.status
