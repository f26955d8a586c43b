"""Columns that tables of both the agent's and the coordinator's schema have, with the helpers
that read them, declared once (sqlmodel mixins: each table still gets its own columns)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlmodel import SQLModel


def utc_now() -> datetime:
    """The default of every timestamp column: now, in UTC."""
    return datetime.now(UTC)


class SpaceColumns(SQLModel):
    """A run's search space as sent and stored: config ids and their parameters, as JSON."""

    config_ids: str  # JSON list, in the coordinator's order
    params: str  # JSON list of parameter dicts

    def ids(self) -> list[str]:
        return json.loads(self.config_ids)

    def param_list(self) -> list[dict[str, Any]]:
        return json.loads(self.params)


class SliceTallyColumns(SQLModel):
    """A comparison on validation items [item_start, item_stop) and its tally's counts."""

    item_start: int
    item_stop: int
    win: int = 0
    tie: int = 0
    loss: int = 0
    invalid: int = 0
    items: int = 0
