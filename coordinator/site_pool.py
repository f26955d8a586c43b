"""The sites of a run: which are active, how long each has been silent, and why one was left
out. A site that refuses or fails is left out for the rest of the run. A site that gives no
valid answer for `site_timeout` seconds (and at least `patience` rounds) is left out too, but
may come back: a left-out silent site (not one whose reports were rejected) that the transport
lists again is offered the space, and
once it accepts it is active again (`rejoin`). Its row keeps the reason, which the result
names."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from coordinator.run_store import RunStore

log = logging.getLogger(__name__)

SILENCE = "no valid answer for"
"""How the reason of a site left out for silence starts: only such a site may rejoin..."""
REJECTED = "report rejected"
"""...unless its last answers broke the protocol (impossible tallies, say): it stays out."""


class SitePool:
    """The run's sites as its store records them, plus what the loop learns per round."""

    def __init__(
        self,
        store: RunStore,
        patience: int,
        site_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.patience = patience
        self.site_timeout = site_timeout
        self.clock = clock
        self.pointwise: dict[int, bool] = {}
        """Per site, from its reply to the space: whether its judge is pointwise."""
        self._silent_rounds: dict[int, int] = {}
        self._heard: dict[int, float] = {}
        """Per site, when it last answered validly (or joined, or this pool started)."""
        self._started = clock()

    def active(self) -> list[int]:
        return [int(s.node_id) for s in self.store.sites() if s.status == "active"]

    def left_out(self) -> dict[int, str]:
        """The sites left out, with the reason."""
        return {int(s.node_id): s.reason for s in self.store.sites() if s.status == "left_out"}

    def join(self, node_ids: list[int]) -> None:
        """Add the sites this run has not met yet (one left out stays out until it rejoins)."""
        known = {int(s.node_id) for s in self.store.sites()}
        self.store.add_sites([n for n in node_ids if n not in known])

    def leave_out(self, node_id: int, reason: str, code: int = 0) -> None:
        """Leave the site out of the rest of the run; `code`: the protocol code of its refusal
        or failure (0: silence)."""
        log.warning("site %s left out: %s", node_id, reason)
        self.store.update_site(node_id, status="left_out", reason=reason, code=code)

    def seen(self, node_id: int, progress: int) -> None:
        """A valid answer: the site's silence ends."""
        self._silent_rounds[node_id] = 0
        self._heard[node_id] = self.clock()
        self.store.site_seen(node_id, progress)

    def note(self, node_id: int, reason: str) -> None:
        """Why the active site's last answer did not count (named if it is left out); a
        left-out site keeps the reason it was left out for."""
        if self.store.site(node_id).status == "active":
            self.store.update_site(node_id, reason=reason)

    def silent(self, node_id: int) -> None:
        """No valid answer this round. An active site silent for `site_timeout` seconds and at
        least `patience` rounds is left out; a left-out site asked whether it is back stays out."""
        if self.store.site(node_id).status != "active":
            return
        self._silent_rounds[node_id] = self._silent_rounds.get(node_id, 0) + 1
        seconds = self.clock() - self._heard.get(node_id, self._started)
        if self._silent_rounds[node_id] >= self.patience and seconds >= self.site_timeout:
            reason = f"{SILENCE} {seconds:.0f} s ({self._silent_rounds[node_id]} rounds)"
            last = self.store.site(node_id).reason
            self.leave_out(node_id, f"{reason} (last: {last})" if last else reason)

    def returning(self, listed: Iterable[int]) -> list[int]:
        """The sites left out for silence (not for rejected reports) that the transport lists
        now: they may be back."""
        listed = set(listed)
        return [
            node_id
            for node_id, reason in self.left_out().items()
            if node_id in listed and reason.startswith(SILENCE) and REJECTED not in reason
        ]

    def rejoin(self, node_id: int) -> None:
        """A site left out for silence accepted the space again: active from now on."""
        log.warning("site %s rejoined the run", node_id)
        self._silent_rounds[node_id] = 0
        self._heard[node_id] = self.clock()
        self.store.update_site(node_id, status="active", reason="")

    def pointwise_flags(self) -> list[bool]:
        """Per active site, whether its judge is pointwise (False when it did not say)."""
        return [self.pointwise.get(node_id, False) for node_id in self.active()]
