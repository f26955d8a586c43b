"""The sites of a run: which are active, how many rounds each has been silent, and why one was
left out. A site that refuses, fails, or gives no valid answer for `patience` rounds in a row is
left out for the rest of the run; its row keeps the reason, which the result names."""

from __future__ import annotations

import logging

from coordinator.run_store import RunStore

log = logging.getLogger(__name__)


class SitePool:
    """The run's sites as its store records them, plus what the loop learns per round."""

    def __init__(self, store: RunStore, patience: int) -> None:
        self.store = store
        self.patience = patience
        self.pointwise: dict[int, bool] = {}
        """Per site, from its reply to the space: whether its judge is pointwise."""
        self._silent_rounds: dict[int, int] = {}

    def active(self) -> list[int]:
        return [int(s.node_id) for s in self.store.sites() if s.status == "active"]

    def left_out(self) -> dict[int, str]:
        """The sites left out, with the reason."""
        return {int(s.node_id): s.reason for s in self.store.sites() if s.status == "left_out"}

    def join(self, node_ids: list[int]) -> None:
        """Add the sites this run has not met yet (one left out stays out)."""
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
        self.store.site_seen(node_id, progress)

    def note(self, node_id: int, reason: str) -> None:
        """Why the site's last answer did not count (named if it is left out)."""
        self.store.update_site(node_id, reason=reason)

    def silent(self, node_id: int) -> None:
        """No valid answer this round; the `patience`-th in a row leaves the site out."""
        self._silent_rounds[node_id] = self._silent_rounds.get(node_id, 0) + 1
        if self._silent_rounds[node_id] >= self.patience:
            reason = f"no valid answer in {self.patience} rounds"
            last = self.store.site(node_id).reason
            self.leave_out(node_id, f"{reason} (last: {last})" if last else reason)

    def pointwise_flags(self) -> list[bool]:
        """Per active site, whether its judge is pointwise (False when it did not say)."""
        return [self.pointwise.get(node_id, False) for node_id in self.active()]
