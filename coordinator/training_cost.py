"""What a run had its sites train: the configs its train requests asked for and the
epoch-trainings that cost each site, against the full grid's (every run to its last epoch, as
the modes that train up front do). The console, the report and summary.json read it.

An epoch-training is one epoch of one training run at one site; a run asked up to epoch k costs
k of them once, whatever the requests in between (a site resumes a run where it stopped). The
runs are the space's runs of horizon `run` (`common.space.training_run_indices`); a site that
trains with horizon `config` trains more than this counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.space import training_run_indices


@dataclass(frozen=True)
class TrainingCost:
    """Per site: epoch-trainings done and the full grid's; the train requests completed (the
    rungs of `halving`), the configs they made ready and the runs the last one trained on."""

    epoch_trainings: int
    grid_epoch_trainings: int
    requests: int
    configs_trained: int
    runs: int
    runs_alive: int

    @property
    def ratio_to_grid(self) -> float:
        return self.epoch_trainings / self.grid_epoch_trainings

    def as_summary(self) -> dict[str, Any]:
        return {
            "epoch_trainings": self.epoch_trainings,
            "grid_epoch_trainings": self.grid_epoch_trainings,
            "ratio_training_to_grid": round(self.ratio_to_grid, 4),
            "train_requests": self.requests,
            "configs_trained": self.configs_trained,
            "training_runs": self.runs,
            "runs_alive": self.runs_alive,
        }


def training_cost(
    params: Sequence[Mapping[str, Any]], requests: Sequence[Sequence[int]] | None
) -> TrainingCost:
    """The cost of these completed train requests (config indices); None: the mode trains
    every config up front, the full grid."""
    runs = training_run_indices(params)
    grid = sum(params[run[-1]]["epochs"] for run in runs)
    if requests is None:
        return TrainingCost(grid, grid, 0, len(params), len(runs), len(runs))
    trained = {index for request in requests for index in request}
    epochs = sum(max((params[i]["epochs"] for i in run if i in trained), default=0) for run in runs)
    last = set(requests[-1]) if requests else set()
    alive = sum(any(i in last for i in run) for run in runs) if requests else len(runs)
    return TrainingCost(epochs, grid, len(requests), len(trained), len(runs), alive)
