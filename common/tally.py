"""A comparison's tally: the one form counts take on the wire, in both databases and in the
selection procedures (standard library only, like the protocol that carries it)."""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Any

TALLY_FIELDS = ("win", "tie", "loss", "invalid", "items")
"""The order of a tally's five integers on the wire and in SecAgg+ vectors."""


@dataclass(frozen=True)
class Tally:
    """Reconciled verdicts from config a's point of view; `items` = validation items judged."""

    win: int = 0
    """Items whose verdict, reconciled over both orders (judge/verdict.py: conflicts are ties),
    prefers config a's response."""
    tie: int = 0
    loss: int = 0
    invalid: int = 0
    """Items where neither order's judgment could be read (one readable order stands alone)."""
    items: int = 0

    def __post_init__(self) -> None:
        if min(self.win, self.tie, self.loss, self.invalid) < 0:
            raise ValueError(f"negative count in {self}")
        if self.win + self.tie + self.loss + self.invalid != self.items:
            raise ValueError(f"win + tie + loss + invalid != items in {self}")

    @classmethod
    def of(cls, row: Any) -> Tally:
        """The tally held in a row's win, tie, loss, invalid and items columns."""
        return cls(*(getattr(row, name) for name in TALLY_FIELDS))

    def values(self) -> tuple[int, int, int, int, int]:
        """The five integers in `TALLY_FIELDS` order."""
        return astuple(self)

    def __add__(self, other: Tally) -> Tally:
        if not isinstance(other, Tally):
            return NotImplemented
        return Tally(*(x + y for x, y in zip(self.values(), other.values(), strict=True)))

    def reversed(self) -> Tally:
        """The same outcomes from config b's point of view."""
        return Tally(self.loss, self.tie, self.win, self.invalid, self.items)

    @property
    def margin(self) -> float:
        """(wins - losses) / items: how clearly a beat b; 0.0 when nothing was judged."""
        return (self.win - self.loss) / self.items if self.items else 0.0
