"""What a site knows of its runs' outcomes: the result the coordinator sent (`query.result`,
stored by agent/site.py), read back with the chosen config's parameters, and the disk its
candidates take. `pandalm-agent status` and `pandalm-agent export` read them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from agent.db import SiteResult, SiteRun
from common.protocol import SUMS_SHARED_FROM_SITES, ResultMessage, decode_result

WITHHELD = (
    "summed item counts withheld (fewer than 3 sites: each could subtract its own and read "
    "the other's)"
)
WEIGHT_FILES = ("model*.safetensors", "pytorch_model*.bin", "adapter_model.*")
"""A checkpoint's weights or adapter (trainer.candidates.WEIGHT_FILES; that module loads torch,
which `status` does not need)."""


@dataclass(frozen=True)
class SiteOutcome:
    """A run's result at this site: the message as received, with the configs it names."""

    run_key: str
    message: ResultMessage
    config_ids: list[str]
    params: list[dict[str, Any]]

    @property
    def best_id(self) -> str:
        return self.config_ids[self.message.best]

    @property
    def best_params(self) -> dict[str, Any]:
        return self.params[self.message.best]

    @property
    def baseline_id(self) -> str | None:
        baseline = self.message.baseline
        return self.config_ids[baseline] if baseline >= 0 else None

    def describe_params(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in sorted(self.best_params.items()))

    def describe_evidence(self) -> str:
        m = self.message
        wins, ties, losses = m.best_record
        return (
            f"{m.decided} comparisons decided by evidence, {m.tie_breaks} by the tie-break; "
            f"chosen: {wins} won, {ties} undecided, {losses} lost; {self.describe_items()}; "
            f"{m.sites} sites"
        )

    def describe_items(self) -> str:
        tally = self.message.best_tally
        if tally is None:
            return WITHHELD
        return (
            f"items {tally.win} wins, {tally.tie} ties, {tally.loss} losses, {tally.invalid} "
            f"invalid (margin {tally.margin:+.3f})"
        )

    def describe_baseline(self) -> str:
        versus = self.message.versus_baseline
        if self.baseline_id is None:
            return "no baseline"
        if self.message.sums_withheld:
            return f"baseline {self.baseline_id}: {WITHHELD}"
        if versus is None:
            return f"baseline {self.baseline_id}: not compared"
        return (
            f"vs {self.baseline_id}: {versus.win} wins, {versus.tie} ties, {versus.loss} "
            f"losses (margin {versus.margin:+.3f})"
        )


def _outcome(result: SiteResult, run: SiteRun) -> SiteOutcome:
    ids = run.ids()
    record = json.loads(result.message)
    if record.get("sites", 0) < SUMS_SHARED_FROM_SITES:  # stored before sums were withheld
        record.update(best_tally=[], versus_baseline=[])
    message = decode_result(record, n_configs=len(ids))
    return SiteOutcome(result.run_key, message, ids, run.param_list())


def site_results(engine: Engine) -> list[SiteOutcome]:
    """Every run's result this site received, oldest run first."""
    with Session(engine) as session:
        rows = session.exec(
            select(SiteResult, SiteRun)
            .join(SiteRun, SiteRun.run_key == SiteResult.run_key)  # type: ignore[arg-type]
            .order_by(SiteRun.created)
        ).all()
    return [_outcome(result, run) for result, run in rows]


def site_result(engine: Engine, run_key: str) -> SiteOutcome | None:
    """The run's result, or None while the coordinator has not sent one."""
    with Session(engine) as session:
        result, run = session.get(SiteResult, run_key), session.get(SiteRun, run_key)
    return _outcome(result, run) if result is not None and run is not None else None


@dataclass(frozen=True)
class DiskUse:
    bytes: int
    with_weights: int
    without_weights: int


def disk_use(candidates_dir: Path) -> DiskUse:
    """Bytes under the candidates directory, and its checkpoints with and without weights (a
    full fine-tuning candidate's are deleted once its responses exist, unless keep_weights)."""
    if not candidates_dir.is_dir():
        return DiskUse(0, 0, 0)
    size = sum(p.stat().st_size for p in candidates_dir.rglob("*") if p.is_file())
    checkpoints = [p for p in candidates_dir.glob("runs/*/checkpoint-*") if p.is_dir()]
    weighted = sum(
        any(any(checkpoint.glob(pattern)) for pattern in WEIGHT_FILES) for checkpoint in checkpoints
    )
    return DiskUse(size, weighted, len(checkpoints) - weighted)
