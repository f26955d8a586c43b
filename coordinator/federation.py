"""The coordinator's run loop: send the space, ask for comparisons, sum the sites' tallies, feed
the selection procedure, until it names the best config.

The loop talks to sites through a small `Transport` (Flower's Grid in `server_app.py`), keeps
everything in its database through a `RunStore` (run_store.py) so a restarted coordinator
replays what was recorded and goes on, and tracks its sites in a `SitePool` (site_pool.py).
Sites answer `pending` while they train, generate or judge; they are asked again after
`retry_seconds`, doubling up to `max_retry_seconds`. A site that refuses or fails is left out of
the rest of the run and named in the result. A site that gives no valid answer for `site_timeout`
seconds (and at least `patience` rounds) is left out too, but rejoins if it comes back before the
run ends: once the transport lists it again it is offered the space, and after it accepts it is
active and asked the comparisons in flight and every later one. The comparisons recorded while it
was out stay as they were summed, over the sites that answered then (each row's `sites` says how
many): the procedure has already acted on them, and under SecAgg+ one site's tally can never be
added to a sum afterwards. Its answers from before it left were counted when they came.

With `selection_mode = "auto"` the mode is chosen once the sites have accepted the space, from the
capability flag of their replies: round robin when every active site's judge is pointwise (any
comparison is then nearly free once each response is scored), racing otherwise. The choice is
stored as the run's selection mode, so a restarted coordinator replays the same procedure.

With `secure_aggregation` on and at least 3 active sites, a compare round only asks whether the
sites are ready; the tallies then travel through SecAgg+ (`secure_sum.py`) and the coordinator
records only their sum. With fewer sites the setting decides: `required` stops the run,
`when-possible` goes on with tallies in the clear; the run's `aggregation` says which.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sqlalchemy import Engine

from common.protocol import (
    COMPARE_MESSAGE,
    MAX_COMPARISONS,
    SECAGG_MIN_SITES,
    SPACE_MESSAGE,
    TRAIN_MESSAGE,
    CompareMessage,
    Comparison,
    ProtocolError,
    Reply,
    SpaceMessage,
    Status,
    TrainMessage,
    TrainRequest,
    check_tallies,
    code_meaning,
    decode_reply,
    decode_space_reply,
    encode_compare,
    encode_space,
    encode_train,
)
from common.settings import AUTO, RunSettings
from common.space import training_run_indices
from common.tally import Tally
from coordinator.announce import announce_run
from coordinator.db import RoundLog, judgments
from coordinator.run_store import RunStore
from coordinator.secure_sum import SecureSum, aggregation
from coordinator.selection import (
    SelectionProcedure,
    TrainingProcedure,
    auto_mode,
    procedure_for_run,
    trains_on_request,
)
from coordinator.site_pool import REJECTED, SitePool

log = logging.getLogger(__name__)


PREPARED_PROGRESS = 500
"""A pending compare reply below this permille is from a site still training or generating
(agent.site: half the progress is preparation, half the run's judging)."""


class Transport(Protocol):
    """Sends one message to each of some sites and collects the replies that come in time."""

    def node_ids(self) -> list[int]: ...

    def exchange(
        self, message_type: str, records: Mapping[int, dict], timeout: float
    ) -> dict[int, dict | None]:
        """Replies by node id; None where a site sent none or an error in time."""
        ...

    def secure_sum(
        self, request: Mapping[str, Any], node_ids: list[int], round_number: int, timeout: float
    ) -> SecureSum | None:
        """The sum of the sites' tallies for this compare request through SecAgg+."""
        ...


@dataclass(frozen=True)
class RunOutcome:
    best_index: int | None
    ranking: list[int]
    sites: list[int]
    left_out: dict[int, str]
    judgments: int
    wall_seconds: float
    aggregation: str = ""
    baseline_index: int | None = None
    """The run's baseline config (federation.toml's `[selection] baseline`), if it names one."""
    versus_baseline: Tally | None = None
    """The chosen config against the baseline on every validation item of every site, from
    the chosen config's side; None without a baseline, or when the baseline was chosen."""


def refusal(message_type: str, reply: Reply) -> str:
    """Why a site's reply leaves it out: the message, status and code, and what the code means
    (the site keeps the details: `pandalm-agent status`)."""
    return f"{message_type} {reply.status.name} code {reply.code.name}: {code_meaning(reply.code)}"


class Backoff:
    """The pause before asking again: `retry_seconds`, doubling after each wait up to
    `max_retry_seconds` (every message costs a site a fresh ClientApp process)."""

    def __init__(self, settings: RunSettings) -> None:
        self.first, self.most = settings.retry_seconds, settings.max_retry_seconds
        self.pause = self.first

    def wait(self) -> None:
        time.sleep(self.pause)
        self.pause = min(2 * self.pause, self.most)

    def reset(self) -> None:
        self.pause = self.first


class FederatedSelection:
    """One run of the selection over the sites a transport reaches: what to ask and when, and
    feeding the answers to the selection procedure."""

    def __init__(
        self,
        engine: Engine,
        transport: Transport,
        settings: RunSettings,
        config_ids: list[str],
        params: list[dict[str, Any]],
        on_round: Callable[[], None] | None = None,
        baseline: int | None = None,
    ) -> None:
        self.transport = transport
        self.baseline = baseline
        """The index of the run's baseline config, which the chosen one is compared with."""
        self.settings = settings
        self.config_ids = config_ids
        self.params = params
        self.on_round = on_round or (lambda: None)
        self.store = RunStore(engine, settings.run_key)
        self.sites = SitePool(self.store, settings.patience, settings.site_timeout)
        self.selection_mode = settings.selection_mode
        """The procedure run: the setting, or under `auto` the one chosen once the sites
        answered."""
        self._procedure: SelectionProcedure | None = None
        self.round = 0
        self._outstanding: list[Comparison] = []  # handed out, not recorded yet
        self._space: dict = {}  # the space message, offered again to a site that comes back

    @property
    def procedure(self) -> SelectionProcedure:
        if self._procedure is None:
            self._procedure = procedure_for_run(
                self.selection_mode,
                len(self.config_ids),
                self.settings,
                training_run_indices(self.params),
            )
        return self._procedure

    # -- resume ------------------------------------------------------------------------------
    def _resume(self) -> None:
        """Open the run; feed a recorded run's comparisons to a fresh procedure, in order."""
        self.selection_mode = self.store.open(self.settings, self.config_ids, self.params)
        if self.selection_mode == AUTO:
            return  # nothing was compared before the mode was chosen
        trained = self.store.trainings()
        for result in self.store.recorded():
            request = Comparison(result.a, result.b, result.item_start, result.item_stop)
            self._replay_trainings(trained)
            self._replay(request, Tally.of(result))
        self._replay_trainings(trained)
        # the round log, not the last comparison: rounds that recorded nothing (sites pending,
        # a halted secure sum, train requests) come after it, and a restart must not number
        # them again
        self.round = self.store.last_round()

    def _replay_trainings(self, trained: list[TrainRequest]) -> None:
        """Feed the procedure the recorded trainings it asks for next (a procedure that trains
        asks for a training before the comparisons that need it, in a fixed order)."""
        while isinstance(self.procedure, TrainingProcedure):
            wanted = [request for request in self.procedure.training() if request in trained]
            if not wanted:
                return
            for request in wanted:
                trained.remove(request)
                self.procedure.record_training(request)

    def _replay(self, request: Comparison, tally: Tally) -> None:
        if request not in self._outstanding:
            self._outstanding.extend(self.procedure.pending())
        if request not in self._outstanding:
            raise ValueError(f"stored comparison {request} does not follow the procedure")
        self._outstanding.remove(request)
        self.procedure.record(request, tally)

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> RunOutcome:
        """Run (or resume) the selection to its end; a run that fails is recorded `failed`
        with the reason and time, and a later start resumes it."""
        started = time.monotonic()
        self._resume()
        try:
            self._select()
            versus_baseline = self._compare_with_baseline()
        except Exception as exc:
            self.store.end("failed", str(exc) or type(exc).__name__)
            raise
        outcome = replace(
            self._finish(time.monotonic() - started),
            baseline_index=self.baseline,
            versus_baseline=versus_baseline,
        )
        announce_run(
            self.store, self.transport, self.settings, outcome.ranking, len(outcome.sites),
            baseline=self.baseline, versus_baseline=versus_baseline,
        )  # fmt: skip
        return outcome

    def _select(self) -> None:
        self._join_sites()
        while not self.procedure.done:
            if self._train_requested():
                continue
            self._outstanding.extend(self.procedure.pending())
            requests, self._outstanding = (
                self._outstanding[:MAX_COMPARISONS],
                self._outstanding[MAX_COMPARISONS:],
            )
            if not requests:
                raise RuntimeError("the selection procedure is stuck: nothing to ask")
            self._compare(requests)

    def _join_sites(self) -> None:
        """Wait for enough sites, then send the space to every new one."""
        deadline = time.monotonic() + self.settings.wait_for_sites
        while len(self.transport.node_ids()) < self.settings.min_sites:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(self.transport.node_ids())} of {self.settings.min_sites} "
                    "sites connected"
                )
            time.sleep(1.0)
        self.sites.join(self.transport.node_ids())
        self._space = space = encode_space(
            SpaceMessage(
                run_key=self.settings.run_key,
                config_ids=tuple(self.config_ids),
                params=tuple(self.params),
                validation_items=self.settings.validation_items,
                judge_mode=self.settings.judge_mode,
                train_on_request=trains_on_request(self.selection_mode),
            )
        )
        todo = set(self.sites.active())
        backoff = Backoff(self.settings)
        while todo := todo & set(self.sites.active()):  # a silent site leaves by site_timeout
            replies = self._exchange(SPACE_MESSAGE, {n: space for n in todo}, 0)
            for node_id, record in replies.items():
                reply = self._decode(node_id, record, None)
                if reply is None:
                    continue
                if reply.status == Status.OK:
                    self.sites.pointwise[node_id] = bool(reply.pointwise_judge)
                else:
                    self.sites.leave_out(node_id, refusal("space", reply), int(reply.code))
                todo.discard(node_id)
            if todo:
                backoff.wait()
        if len(self.sites.active()) < self.settings.min_sites:
            raise RuntimeError(f"fewer than {self.settings.min_sites} sites accepted the space")
        if self.selection_mode == AUTO:
            self._choose_mode()

    def _choose_mode(self) -> None:
        """Under `auto`: round robin when every active site's judge is pointwise, else racing;
        stored as the run's mode (the settings keep `auto`)."""
        flags = self.sites.pointwise_flags()
        self.selection_mode = auto_mode(flags)
        log.warning(
            "selection mode auto: %s (%d of %d active sites have a pointwise judge)",
            self.selection_mode, sum(flags), len(flags),
        )  # fmt: skip
        self.store.set_selection_mode(self.selection_mode)

    def _exchange(
        self, message_type: str, records: dict[int, dict], comparisons: int
    ) -> dict[int, dict | None]:
        self.round += 1
        started = time.monotonic()
        replies = self.transport.exchange(message_type, records, self.settings.round_timeout)
        answered = {n: r for n, r in replies.items() if r is not None}
        self.store.log_round(
            RoundLog(
                number=self.round,
                message_type=message_type,
                comparisons=comparisons,
                answered=len(answered),
                pending=sum(r.get("status") == int(Status.PENDING) for r in answered.values()),
                seconds=time.monotonic() - started,
                bytes_in=sum(len(json.dumps(r)) for r in answered.values()),
            )
        )
        for node_id in records:
            if replies.get(node_id) is None:
                self.sites.silent(node_id)
        self.on_round()
        return replies

    def _decode(
        self,
        node_id: int,
        record: dict | None,
        request: CompareMessage | None,
        train: bool = False,
    ):
        """A site's reply, or None; a report that breaks the protocol (impossible tallies, say)
        is rejected for this round and counts as no answer, so a site that keeps sending them
        is left out after `site_timeout`. `train`: a reply to a train request."""
        if record is None:
            return None
        try:
            if train:
                reply = decode_reply(record)
            elif request is None:
                reply = decode_space_reply(record)
            else:
                reply = decode_reply(record, request, self.settings.validation_items)
        except ProtocolError as exc:
            log.warning("rejected the report of site %s this round: %s", node_id, exc.code.name)
            self.sites.note(node_id, f"{REJECTED}: {exc.code.name}")
            self.sites.silent(node_id)
            return None
        self.sites.seen(node_id, reply.progress if reply.status == Status.PENDING else 1000)
        return reply

    def _train_requested(self) -> bool:
        """Have every active site complete the trainings the procedure asks for now (a mode
        that trains on request); whether there were any."""
        procedure = self.procedure
        if not isinstance(procedure, TrainingProcedure):
            return False
        requests = procedure.training()
        for request in requests:
            contributors = self._train(request)
            procedure.record_training(request)
            self.store.record_training(request, len(contributors), self.round)
        return bool(requests)

    def _train(self, request: TrainRequest) -> list[int]:
        """Ask the active sites to train `request` until each has answered `ok` (trained and
        generated) or is left out; the sites that did (every site left: it waits for one to
        come back, `_await_a_site`). Training takes minutes to hours, so the pause between asks
        keeps doubling up to `max_retry_seconds`."""
        record = encode_train(TrainMessage(self.settings.run_key, request))
        done: set[int] = set()
        backoff = Backoff(self.settings)
        while True:
            self._await_a_site()
            waiting = [n for n in self.sites.active() if n not in done]
            if not waiting:
                return [n for n in self.sites.active() if n in done]
            replies = self._exchange(TRAIN_MESSAGE, {n: record for n in waiting}, 0)
            for node_id in waiting:
                reply = self._decode(node_id, replies.get(node_id), None, train=True)
                if reply is None:
                    continue
                if reply.status == Status.OK:
                    done.add(node_id)
                elif reply.status != Status.PENDING:
                    self.sites.leave_out(
                        node_id, f"train {reply.status.name} code {reply.code.name}"
                    )
            if any(n not in done for n in self.sites.active()):
                backoff.wait()

    def _use_secure_aggregation(self) -> bool:
        """Whether this round's tallies go through SecAgg+; records the decision on the run."""
        decision, secure = aggregation(self.settings.secure_aggregation, len(self.sites.active()))
        if self.store.set_aggregation(decision):
            log.warning("aggregation: %s", decision)
        return secure

    def _compare(self, requests: list[Comparison]) -> None:
        """The summed tallies of these comparisons, recorded and fed to the procedure."""
        contributors, totals, secure = self._sum_over_sites(requests)
        for comparison, total in zip(requests, totals, strict=True):
            self.procedure.record(comparison, total)
            self.store.record_comparison(comparison, total, contributors, secure, self.round)

    def _compare_with_baseline(self) -> Tally | None:
        """Chosen vs baseline on every validation item, asked like any comparison (both orders
        at every site, summed in the clear or by SecAgg+) once the procedure named its best, and
        recorded apart from the selection's comparisons; asked once, even across restarts.
        None without a baseline, or when the best is the baseline (recorded with no items:
        there is nothing to compare)."""
        best = self.procedure.best()
        if self.baseline is None or best is None:
            return None
        recorded = self.store.versus_baseline()
        if recorded is None:
            if best == self.baseline:
                self.store.record_versus_baseline(best, best, Tally(), 0, False, self.round)
                return None
            self._train_baseline()
            request = Comparison(best, self.baseline)
            contributors, (total,), secure = self._sum_over_sites([request])
            self.store.record_versus_baseline(
                best, self.baseline, total, len(contributors), secure, self.round
            )
            log.warning("chosen vs baseline: %s", total)
            return total
        if (recorded.chosen, recorded.baseline) != (best, self.baseline):
            raise ValueError(
                f"run {self.settings.run_key!r} compared config {recorded.chosen} with baseline "
                f"{recorded.baseline}, not {best} with {self.baseline}: choose another run name"
            )
        return None if best == self.baseline else Tally.of(recorded)

    def _train_baseline(self) -> None:
        """A mode that trains on request may have left the baseline untrained (its run stopped
        before the baseline's epoch): the sites train it first, recorded like a rung so the
        run's training cost counts it. One the selection trained is not asked again."""
        if self.baseline is None or not trains_on_request(self.selection_mode):
            return
        if any(self.baseline in request.configs for request in self.store.trainings()):
            return
        request = TrainRequest((self.baseline,))
        contributors = self._train(request)
        self.store.record_training(request, len(contributors), self.round)

    def _sum_over_sites(self, requests: list[Comparison]) -> tuple[list[int], list[Tally], bool]:
        """Ask every active site for these comparisons until each has answered or is left out,
        then sum their tallies (in the clear, or through SecAgg+): the contributing sites, the
        totals in request order, and whether SecAgg+ summed them."""
        backoff = Backoff(self.settings)
        failed_sums = 0
        while True:
            self._await_a_site()
            secure = self._use_secure_aggregation()
            message = CompareMessage(self.settings.run_key, tuple(requests), secure)
            record = encode_compare(message)
            answers = self._collect(message, record)
            if not secure:
                contributors = [n for n in self.sites.active() if n in answers]
                if not contributors:
                    continue  # every site left while it was asked
                totals = [
                    sum((answers[n][i] for n in contributors), Tally())
                    for i in range(len(requests))
                ]
                break
            if len(self.sites.active()) < SECAGG_MIN_SITES:
                continue  # sites left while it waited: decide again
            summed = self._secure_sum(message, record)
            if summed is not None:
                contributors, totals = summed
                break
            failed_sums += 1
            if failed_sums >= self.settings.patience:
                raise RuntimeError(f"secure aggregation failed {failed_sums} times in a row")
            backoff.wait()
        return contributors, totals, secure

    def _await_a_site(self) -> None:
        """Return once a site is active. When every site has left the run, wait up to
        `site_timeout` for one left out for silence to come back (offered the space again by
        `_welcome_back`, as any returning site is); none: the run fails, and a later `start`
        resumes it."""
        deadline = time.monotonic() + self.settings.site_timeout
        backoff = Backoff(self.settings)
        while not self.sites.active():
            self._welcome_back()
            if self.sites.active():
                return
            silent = self.sites.returning(self.sites.left_out())
            if not silent or time.monotonic() >= deadline:
                raise RuntimeError("every site has left the run")
            log.warning("every site has left the run: waiting for one to come back")
            backoff.wait()

    def _collect(self, message: CompareMessage, record: dict) -> dict[int, tuple[Tally, ...]]:
        """Ask the active sites until each has answered `ok` (with its tallies, or, for a
        secure request, ready to send them masked) or is left out."""
        answers: dict[int, tuple[Tally, ...]] = {}
        backoff = Backoff(self.settings)
        while True:
            self._welcome_back()
            waiting = [n for n in self.sites.active() if n not in answers]
            if not waiting:
                return answers
            replies = self._exchange(
                COMPARE_MESSAGE, {n: record for n in waiting}, len(message.comparisons)
            )
            preparing = False
            for node_id in waiting:
                reply = self._decode(node_id, replies.get(node_id), message)
                if reply is None:
                    continue
                if reply.status == Status.OK:
                    answers[node_id] = reply.tallies
                elif reply.status != Status.PENDING:
                    self.sites.leave_out(node_id, refusal("compare", reply), int(reply.code))
                else:
                    preparing |= reply.progress < PREPARED_PROGRESS
            if any(n not in answers for n in self.sites.active()):
                backoff.wait()
                # back off while a site still trains (minutes; every ask costs it CPU), not
                # while the sites only judge (seconds)
                if not preparing:
                    backoff.reset()

    def _welcome_back(self) -> None:
        """Offer the space again to the sites left out for silence that are back online; each
        that accepts is active from now on, so it is asked the comparisons in flight."""
        returning = self.sites.returning(self.transport.node_ids())
        if not returning:
            return
        replies = self._exchange(SPACE_MESSAGE, {n: self._space for n in returning}, 0)
        for node_id in returning:
            reply = self._decode(node_id, replies.get(node_id), None)
            if reply is not None and reply.status == Status.OK:
                self.sites.pointwise[node_id] = bool(reply.pointwise_judge)
                self.sites.rejoin(node_id)

    def _secure_sum(
        self, message: CompareMessage, record: dict
    ) -> tuple[list[int], list[Tally]] | None:
        """The tallies summed over the active sites through SecAgg+, or None for this try: the
        protocol halted, or the sum is impossible (which site sent what cannot be known)."""
        active = self.sites.active()
        self.round += 1
        started = time.monotonic()
        result = self.transport.secure_sum(record, active, self.round, self.settings.round_timeout)
        contributors = result.contributors if result else []
        self.store.log_round(
            RoundLog(
                number=self.round,
                message_type="secagg+",
                comparisons=len(message.comparisons),
                answered=len(contributors),
                pending=0,
                seconds=time.monotonic() - started,
                bytes_in=0,
            )
        )
        self.on_round()
        for node_id in active:
            if node_id not in contributors:
                self.sites.note(node_id, "no masked tallies in the secure sum")
                self.sites.silent(node_id)
        if result is None:
            log.warning("secure aggregation halted this round: too few sites took part")
            return None
        try:
            tallies = check_tallies(
                result.values, message.comparisons, self.settings.validation_items,
                sites=len(contributors),
            )  # fmt: skip
        except ProtocolError as exc:
            log.warning(
                "rejected the secure sum of sites %s this round: %s (under SecAgg+ no single "
                "site can be named)", contributors, exc.code.name,
            )  # fmt: skip
            return None
        return contributors, list(tallies)

    def _finish(self, wall_seconds: float) -> RunOutcome:
        best = self.procedure.best()
        aggregation = self.store.finish(best)
        return RunOutcome(
            best_index=best,
            ranking=self.procedure.ranking(),
            sites=self.sites.active(),
            left_out=self.sites.left_out(),
            judgments=judgments(self.store.recorded()),
            wall_seconds=wall_seconds,
            aggregation=aggregation,
        )
